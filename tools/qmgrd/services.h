// qmgrd's gRPC services over Operations, on gRPC's callback API. gRPC's own
// threads only read, dispatch and write; every engine call that can block
// (a durability wait, a Get waiting for a message) runs on a WorkerPool, so a
// slow disk or a long Get never holds a gRPC thread (docs/server.md,
// "Threads").
#ifndef QMGR_TOOLS_QMGRD_SERVICES_H_
#define QMGR_TOOLS_QMGRD_SERVICES_H_

#include <functional>

#include "absl/status/statusor.h"
#include "qmgr/v1/qmgr.grpc.pb.h"
#include "tools/qmgrd/operations.h"
#include "tools/qmgrd/queue_manager.h"
#include "tools/qmgrd/worker_pool.h"

namespace qmgr::server {

struct ServiceContext {
  Operations* operations = nullptr;
  // Engine calls that wait for durability (or for nothing).
  WorkerPool* io_pool = nullptr;
  // Gets that may wait for a message (wait_ms > 0).
  WorkerPool* wait_pool = nullptr;
  // EnqueueStream: requests read ahead of their answers, per stream; and
  // the most messages and payload bytes written as one group (one record).
  int stream_window = 64;
  int group_messages_max = 64;
  uint64_t group_bytes_max = 1u << 20;
  // Admin Checkpoint; empty: UNIMPLEMENTED.
  std::function<absl::StatusOr<CheckpointInfo>()> checkpoint;
  // Admin Shutdown: called after the RPC is answered; must not block.
  std::function<void(qmgr::v1::ShutdownMode)> request_shutdown;
};

class QueueManagerService final : public qmgr::v1::QueueManager::CallbackService {
 public:
  // `context` and what it points to must outlive the server.
  explicit QueueManagerService(const ServiceContext* context) : c_(context) {}

  grpc::ServerUnaryReactor* Enqueue(grpc::CallbackServerContext* ctx,
                                    const qmgr::v1::EnqueueRequest* request,
                                    qmgr::v1::EnqueueResponse* response) override;
  grpc::ServerUnaryReactor* EnqueueBatch(grpc::CallbackServerContext* ctx,
                                         const qmgr::v1::EnqueueBatchRequest* request,
                                         qmgr::v1::EnqueueBatchResponse* response) override;
  grpc::ServerBidiReactor<qmgr::v1::EnqueueRequest, qmgr::v1::EnqueueStreamResponse>* EnqueueStream(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* ctx,
                                const qmgr::v1::GetRequest* request,
                                qmgr::v1::GetResponse* response) override;
  grpc::ServerUnaryReactor* Insert(grpc::CallbackServerContext* ctx,
                                   const qmgr::v1::InsertRequest* request,
                                   qmgr::v1::InsertResponse* response) override;
  grpc::ServerUnaryReactor* SyncPoint(grpc::CallbackServerContext* ctx,
                                      const qmgr::v1::SyncPointRequest* request,
                                      qmgr::v1::SyncPointResponse* response) override;
  grpc::ServerUnaryReactor* Backout(grpc::CallbackServerContext* ctx,
                                    const qmgr::v1::BackoutRequest* request,
                                    qmgr::v1::BackoutResponse* response) override;
  grpc::ServerBidiReactor<qmgr::v1::ProgramRequest, qmgr::v1::ProgramResponse>* ProgramStream(
      grpc::CallbackServerContext* ctx) override;

 private:
  const ServiceContext* const c_;
};

class AdminService final : public qmgr::v1::Admin::CallbackService {
 public:
  explicit AdminService(const ServiceContext* context) : c_(context) {}

  grpc::ServerUnaryReactor* DefineQueue(grpc::CallbackServerContext* ctx,
                                        const qmgr::v1::DefineQueueRequest* request,
                                        qmgr::v1::DefineQueueResponse* response) override;
  grpc::ServerUnaryReactor* AlterQueue(grpc::CallbackServerContext* ctx,
                                       const qmgr::v1::AlterQueueRequest* request,
                                       qmgr::v1::AlterQueueResponse* response) override;
  grpc::ServerUnaryReactor* DeleteQueue(grpc::CallbackServerContext* ctx,
                                        const qmgr::v1::DeleteQueueRequest* request,
                                        qmgr::v1::DeleteQueueResponse* response) override;
  grpc::ServerUnaryReactor* DisplayQueues(grpc::CallbackServerContext* ctx,
                                          const qmgr::v1::DisplayQueuesRequest* request,
                                          qmgr::v1::DisplayQueuesResponse* response) override;
  grpc::ServerUnaryReactor* Browse(grpc::CallbackServerContext* ctx,
                                   const qmgr::v1::BrowseRequest* request,
                                   qmgr::v1::BrowseResponse* response) override;
  grpc::ServerUnaryReactor* Checkpoint(grpc::CallbackServerContext* ctx,
                                       const qmgr::v1::CheckpointRequest* request,
                                       qmgr::v1::CheckpointResponse* response) override;
  grpc::ServerUnaryReactor* Shutdown(grpc::CallbackServerContext* ctx,
                                     const qmgr::v1::ShutdownRequest* request,
                                     qmgr::v1::ShutdownResponse* response) override;

 private:
  const ServiceContext* const c_;
};

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_SERVICES_H_
