// qmgrd's gRPC services over Operations, on gRPC's callback API. gRPC's own
// threads only read, dispatch and write; every engine call that can block
// (a durability wait, a Get waiting for a message) runs on a WorkerPool, so a
// slow disk or a long Get never holds a gRPC thread (docs/server.md,
// "Threads").
#ifndef QMGR_TOOLS_QMGRD_SERVICES_H_
#define QMGR_TOOLS_QMGRD_SERVICES_H_

#include <functional>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "qmgr/v1/qmgr.grpc.pb.h"
#include "tools/qmgrd/authorization.h"
#include "tools/qmgrd/coordination.h"
#include "tools/qmgrd/durable_completions.h"
#include "tools/qmgrd/operations.h"
#include "tools/qmgrd/queue_manager.h"
#include "tools/qmgrd/refusals.h"
#include "tools/qmgrd/worker_pool.h"

namespace qmgr::server {

struct ServiceContext {
  Operations* operations = nullptr;
  // The Coordinator service and Admin's in-doubt calls.
  Coordination* coordination = nullptr;
  // Engine calls that wait for durability (or for nothing).
  WorkerPool* io_pool = nullptr;
  // Gets that may wait for a message (wait_ms > 0), and Receive streams.
  WorkerPool* wait_pool = nullptr;
  // Enqueue and Get calls are answered from here once durable.
  DurableCompletions* completions = nullptr;
  // A Receive stream waits for output in slices this long, one wait-pool
  // task each, so that a cancelled stream or a shutdown ends it within a
  // slice; below qmgrd's call drain, so that a shutdown answers UNAVAILABLE.
  absl::Duration receive_wait_slice = absl::Milliseconds(200);
  // EnqueueStream: requests read ahead of their answers, per stream; and
  // the most messages and payload bytes written as one group (one record).
  int stream_window = 64;
  // ... and at most this many payload bytes read but not yet taken into a
  // group, so that large messages cannot pile up in memory per stream.
  uint64_t stream_window_bytes = 8u << 20;
  int group_messages_max = 64;
  uint64_t group_bytes_max = 1u << 20;
  // Admin Checkpoint; empty: UNIMPLEMENTED.
  std::function<absl::StatusOr<CheckpointInfo>()> checkpoint;
  // Admin Shutdown: called after the RPC is answered; must not block.
  std::function<void(qmgr::v1::ShutdownMode)> request_shutdown;
  // Admin Status; empty: UNIMPLEMENTED.
  std::function<absl::StatusOr<qmgr::v1::StatusResponse>()> status;
  // Where refusals answered inside streams are counted (null: nowhere).
  Refusals* refusals = nullptr;
  // Who may call what (docs/security.md); null: every caller is the
  // identity "" and may do everything.
  const Security* security = nullptr;
  // Admin is served on its own listener (--admin-listen) and the main one
  // refuses it (PERMISSION_DENIED).
  bool admin_only_on_admin_listener = false;
};

// Calls authenticated and checked before they run: the caller's identity,
// or the refusal (UNAUTHENTICATED, PERMISSION_DENIED), logged.
absl::StatusOr<std::string> Admit(const ServiceContext* c, const grpc::ServerContextBase& ctx,
                                  Listener listener, absl::string_view rpc);
// Session calls: the terminal role for `session` and the session bound by
// this identity (or by none).
absl::Status AllowSession(const ServiceContext* c, absl::string_view identity,
                          absl::string_view rpc, const std::string& session);

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

  // Sessions.
  grpc::ServerUnaryReactor* OpenSession(grpc::CallbackServerContext* ctx,
                                        const qmgr::v1::OpenSessionRequest* request,
                                        qmgr::v1::OpenSessionResponse* response) override;
  grpc::ServerUnaryReactor* SetAndTestSequenceNumbers(
      grpc::CallbackServerContext* ctx, const qmgr::v1::SetAndTestSequenceNumbersRequest* request,
      qmgr::v1::SetAndTestSequenceNumbersResponse* response) override;
  grpc::ServerUnaryReactor* StartDataTraffic(grpc::CallbackServerContext* ctx,
                                             const qmgr::v1::StartDataTrafficRequest* request,
                                             qmgr::v1::StartDataTrafficResponse* response) override;
  grpc::ServerUnaryReactor* RequestRecovery(grpc::CallbackServerContext* ctx,
                                            const qmgr::v1::RequestRecoveryRequest* request,
                                            qmgr::v1::RequestRecoveryResponse* response) override;
  grpc::ServerUnaryReactor* Clear(grpc::CallbackServerContext* ctx,
                                  const qmgr::v1::ClearRequest* request,
                                  qmgr::v1::ClearResponse* response) override;
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* ctx,
                                         const qmgr::v1::CloseSessionRequest* request,
                                         qmgr::v1::CloseSessionResponse* response) override;
  grpc::ServerWriteReactor<qmgr::v1::ReceiveResponse>* Receive(
      grpc::CallbackServerContext* ctx, const qmgr::v1::ReceiveRequest* request) override;
  grpc::ServerUnaryReactor* Acknowledge(grpc::CallbackServerContext* ctx,
                                        const qmgr::v1::AcknowledgeRequest* request,
                                        qmgr::v1::AcknowledgeResponse* response) override;

 private:
  const ServiceContext* const c_;
};

class AdminService final : public qmgr::v1::Admin::CallbackService {
 public:
  // One per listener that serves Admin.
  AdminService(const ServiceContext* context, Listener listener)
      : c_(context), listener_(listener) {}

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
  grpc::ServerUnaryReactor* Assign(grpc::CallbackServerContext* ctx,
                                   const qmgr::v1::AssignRequest* request,
                                   qmgr::v1::AssignResponse* response) override;
  grpc::ServerUnaryReactor* DisplayUnits(grpc::CallbackServerContext* ctx,
                                         const qmgr::v1::DisplayUnitsRequest* request,
                                         qmgr::v1::DisplayUnitsResponse* response) override;
  grpc::ServerUnaryReactor* DisplaySessions(grpc::CallbackServerContext* ctx,
                                            const qmgr::v1::DisplaySessionsRequest* request,
                                            qmgr::v1::DisplaySessionsResponse* response) override;
  grpc::ServerUnaryReactor* ListInDoubt(grpc::CallbackServerContext* ctx,
                                        const qmgr::v1::ListInDoubtRequest* request,
                                        qmgr::v1::ListInDoubtResponse* response) override;
  grpc::ServerUnaryReactor* ResolveInDoubt(grpc::CallbackServerContext* ctx,
                                           const qmgr::v1::ResolveInDoubtRequest* request,
                                           qmgr::v1::ResolveInDoubtResponse* response) override;
  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* ctx,
                                   const qmgr::v1::StatusRequest* request,
                                   qmgr::v1::StatusResponse* response) override;

 private:
  // The caller's identity when it may call Admin `rpc` here.
  absl::StatusOr<std::string> AdmitAdmin(const grpc::CallbackServerContext& ctx,
                                         absl::string_view rpc) const;

  const ServiceContext* const c_;
  const Listener listener_;
};

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_SERVICES_H_
