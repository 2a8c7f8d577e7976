// How qmgrd's unary RPCs run (docs/server.md, "Threads"): on a WorkerPool
// when the call may wait (for durability, for a message), inline on gRPC's
// thread when it only touches memory. Shared by the services' files.
#ifndef QMGR_TOOLS_QMGRD_UNARY_CALL_H_
#define QMGR_TOOLS_QMGRD_UNARY_CALL_H_

#include <grpcpp/grpcpp.h>

#include <utility>

#include "absl/status/statusor.h"
#include "client/rpc_status.h"
#include "tools/qmgrd/worker_pool.h"

namespace qmgr::server {

inline const grpc::Status kPoolFull(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                    "too many calls in progress on the queue manager; retry later");

// Runs `work` (returning absl::Status, filling the response) on `pool` and
// finishes the call with its status.
template <typename Work>
grpc::ServerUnaryReactor* OnPool(WorkerPool* pool, grpc::CallbackServerContext* ctx, Work work) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (!pool->Submit([reactor, work = std::move(work)]() mutable {
        reactor->Finish(qmgr::rpc::ToGrpcStatus(work()));
      })) {
    reactor->Finish(kPoolFull);
  }
  return reactor;
}

// For calls that never block: runs `work` on the gRPC thread.
template <typename Work>
grpc::ServerUnaryReactor* Inline(grpc::CallbackServerContext* ctx, Work work) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(qmgr::rpc::ToGrpcStatus(work()));
  return reactor;
}

// Finishes a call refused before it ran.
inline grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* ctx,
                                        const absl::Status& refusal) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(qmgr::rpc::ToGrpcStatus(refusal));
  return reactor;
}

template <typename T>
absl::Status Fill(absl::StatusOr<T> result, T* response) {
  if (!result.ok()) return result.status();
  *response = *std::move(result);
  return absl::OkStatus();
}

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_UNARY_CALL_H_
