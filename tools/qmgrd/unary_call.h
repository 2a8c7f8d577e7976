// How qmgrd's unary RPCs run (docs/server.md, "Threads"): on a WorkerPool
// when the call may wait (for durability, for a message), inline on gRPC's
// thread when it only touches memory. Shared by the services' files.
#ifndef QMGR_TOOLS_QMGRD_UNARY_CALL_H_
#define QMGR_TOOLS_QMGRD_UNARY_CALL_H_

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <utility>

#include "absl/status/statusor.h"
#include "client/rpc_status.h"
#include "tools/qmgrd/durable_completions.h"
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

// The later of two LSNs to wait for (kNoLsn: none).
inline log::Lsn LaterLsn(log::Lsn a, log::Lsn b) {
  if (a == log::kNoLsn) return b;
  if (b == log::kNoLsn) return a;
  return std::max(a, b);
}

// Finishes the call with `status` once `lsn` is durable (with the log's
// failure if it failed first).
inline void FinishWhenDurable(DurableCompletions* completions, grpc::ServerUnaryReactor* reactor,
                              log::Lsn lsn, absl::Status status) {
  completions->After(lsn, [reactor, status = std::move(status)](absl::Status durable) {
    reactor->Finish(qmgr::rpc::ToGrpcStatus(durable.ok() ? status : durable));
  });
}

// Runs `work` (returning absl::Status, filling the response, and setting the
// LSN its answer depends on) on `pool`, and finishes the call once that LSN
// is durable (DurableCompletions): the worker does not wait for the fsync.
template <typename Work>
grpc::ServerUnaryReactor* OnPoolThenDurable(WorkerPool* pool, DurableCompletions* completions,
                                            grpc::CallbackServerContext* ctx, Work work) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (!pool->Submit([reactor, completions, work = std::move(work)]() mutable {
        log::Lsn lsn = log::kNoLsn;
        absl::Status status = work(&lsn);
        FinishWhenDurable(completions, reactor, lsn, std::move(status));
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
