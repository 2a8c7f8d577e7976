// The queue manager's RPC semantics, apart from gRPC: proto requests in,
// proto responses or absl::Status out. The gRPC services (services.h) only
// move calls onto threads and statuses onto the wire.
//
// Units of work opened through the server have an owner: a ProgramStream
// (its id), or a lease (unary calls). A stream's units can be used only on
// that stream and are backed out when it ends (ReleaseOwner); leased units
// can be used by any unary call and are backed out by the engine's idle
// reaper when no call touched them for the lease (EngineOptions::
// unit_idle_timeout). A coordinator's unit is leased from its Begin to its
// Prepare (Coordination adds and removes it): unary Get and Insert use it.
//
// A unit also belongs to the identity that opened it (docs/security.md):
// a call of another identity on it is PERMISSION_DENIED and changes
// nothing. Without authentication every caller is the same identity.
//
// Thread-safe.
#ifndef QMGR_TOOLS_QMGRD_OPERATIONS_H_
#define QMGR_TOOLS_QMGRD_OPERATIONS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "qmgr/engine.h"
#include "qmgr/v1/qmgr.pb.h"

namespace qmgr::server {

// Who holds a unit: kLeaseOwner, or a ProgramStream's id from NewStreamOwner.
using Owner = uint64_t;
inline constexpr Owner kLeaseOwner = 0;

struct OperationsOptions {
  // The engine's unit_idle_timeout: reported to callers as lease_ms.
  absl::Duration unit_lease = absl::Seconds(60);
  absl::Duration get_wait_max = absl::Seconds(60);
  // A Get waits in slices this long, checking between them whether its
  // caller is gone or the server is shutting down.
  absl::Duration get_wait_slice = absl::Milliseconds(100);
  // The largest response the server sends (Browse stops short of it).
  uint64_t max_send_bytes = 16u << 20;
  // One line per session takeover; null: none.
  std::function<void(absl::string_view line)> progress;
};

class Operations {
 public:
  // `engine` must outlive this.
  Operations(Engine* engine, OperationsOptions options);

  // Producers. Intake: Unavailable once StopIntake was called.
  // `durable_lsn` (Enqueue and Get): null, the call returns once its answer
  // is durable; else it returns without that wait and sets *durable_lsn to
  // the LSN that must be durable before the answer is given (kNoLsn: none;
  // DurableCompletions waits for it).
  absl::StatusOr<qmgr::v1::EnqueueResponse> Enqueue(qmgr::v1::NewMessage message,
                                                    log::Lsn* durable_lsn = nullptr);
  absl::StatusOr<qmgr::v1::EnqueueBatchResponse> EnqueueBatch(
      const qmgr::v1::EnqueueBatchRequest& request);
  // Independent messages (an EnqueueStream's pending requests), each
  // answered as if enqueued alone and in this order, but written as one
  // ENQUEUE record with one durability wait when all are accepted. When the
  // group is refused before anything was logged, each message is enqueued
  // alone for its own answer; after a log failure every message gets it.
  std::vector<absl::StatusOr<qmgr::v1::EnqueueResponse>> EnqueueGroup(
      std::vector<qmgr::v1::NewMessage> messages);

  // Programs. `stop_waiting` is polled while the Get waits (the caller went
  // away); the wait also ends at `call_deadline`, the caller's own deadline.
  // No message within the wait is not an error: the response has none.
  // max_messages > 1: the rest (response.more) are those there at once,
  // within what one answer carries (max_send_bytes).
  // `identity`: the caller's; a unit opened here belongs to it.
  absl::StatusOr<qmgr::v1::GetResponse> Get(const qmgr::v1::GetRequest& request, Owner owner,
                                            absl::Time call_deadline,
                                            absl::FunctionRef<bool()> stop_waiting,
                                            absl::string_view identity = "",
                                            log::Lsn* durable_lsn = nullptr);
  absl::StatusOr<qmgr::v1::InsertResponse> Insert(const qmgr::v1::InsertRequest& request,
                                                  Owner owner, absl::string_view identity = "");
  absl::StatusOr<qmgr::v1::SyncPointResponse> SyncPoint(const qmgr::v1::SyncPointRequest& request,
                                                        Owner owner,
                                                        absl::string_view identity = "");
  absl::StatusOr<qmgr::v1::BackoutResponse> Backout(const qmgr::v1::BackoutRequest& request,
                                                    Owner owner, absl::string_view identity = "");

  // Sessions (docs/sessions.md): the engine decides; these translate.
  // OpenSession binds the session to `identity`: a session bound by another
  // identity is FAILED_PRECONDITION (SESSION_BOUND) unless
  // `may_take_over_others` (an administrator); a takeover is reported on
  // `progress`.
  absl::StatusOr<qmgr::v1::OpenSessionResponse> OpenSession(
      const qmgr::v1::OpenSessionRequest& request, absl::string_view identity = "",
      bool may_take_over_others = true);
  // PERMISSION_DENIED when `session` is bound by an identity other than
  // `identity`: only the client that bound a session may use it.
  absl::Status CheckSessionClient(const std::string& session, absl::string_view identity) const;
  // `by_admin`: STSN SET is allowed on a session not opened cold.
  absl::StatusOr<qmgr::v1::SetAndTestSequenceNumbersResponse> SetAndTestSequenceNumbers(
      const qmgr::v1::SetAndTestSequenceNumbersRequest& request, bool by_admin = false);
  absl::Status StartDataTraffic(const qmgr::v1::StartDataTrafficRequest& request);
  absl::Status RequestRecovery(const qmgr::v1::RequestRecoveryRequest& request);
  absl::StatusOr<qmgr::v1::ClearResponse> Clear(const qmgr::v1::ClearRequest& request);
  absl::Status CloseSession(const qmgr::v1::CloseSessionRequest& request);
  // One slice of a Receive stream: the session's next output for this
  // stream (`cursor` is the stream's), or nullopt when none came within
  // `wait`. Unavailable once StopIntake was called: a shutdown ends streams.
  absl::StatusOr<std::optional<qmgr::v1::ReceiveResponse>> Receive(
      const qmgr::v1::ReceiveRequest& request, absl::Duration wait, ReceiveCursor* cursor);
  absl::StatusOr<qmgr::v1::AcknowledgeResponse> Acknowledge(
      const qmgr::v1::AcknowledgeRequest& request);

  Owner NewStreamOwner() { return next_stream_owner_.fetch_add(1, std::memory_order_relaxed); }
  // A unit opened elsewhere (Coordinator Begin) is held by `owner` like the
  // units opened here; RemoveUnit drops it from the server's bookkeeping
  // (ended, or in doubt: a unit in doubt has no owner, only its coordinator).
  void AddUnit(UowId uow, Owner owner, absl::string_view identity = "");
  void RemoveUnit(UowId uow);
  // Backs out every unit `owner` still holds. REQUIRES: no call of that
  // owner is running (a stream calls it once its last operation answered).
  void ReleaseOwner(Owner owner, qmgr::v1::BackoutReason reason);

  // Admin.
  absl::Status DefineQueue(const qmgr::v1::DefineQueueRequest& request);
  absl::Status AlterQueue(const qmgr::v1::AlterQueueRequest& request);
  absl::Status DeleteQueue(const qmgr::v1::DeleteQueueRequest& request);
  absl::StatusOr<qmgr::v1::DisplayQueuesResponse> DisplayQueues(
      const qmgr::v1::DisplayQueuesRequest& request) const;
  absl::StatusOr<qmgr::v1::BrowseResponse> Browse(const qmgr::v1::BrowseRequest& request) const;
  absl::StatusOr<qmgr::v1::AssignResponse> Assign(const qmgr::v1::AssignRequest& request);
  absl::StatusOr<qmgr::v1::DisplaySessionsResponse> DisplaySessions(
      const qmgr::v1::DisplaySessionsRequest& request) const;
  qmgr::v1::DisplayUnitsResponse DisplayUnits() const;

  // Shutdown. After StopIntake, new messages and new units are refused
  // (Unavailable) while open units may still insert, commit and back out.
  void StopIntake();
  bool intake_stopped() const { return intake_stopped_.load(std::memory_order_acquire); }
  // The lease of units held by unary calls, as answered to callers.
  uint32_t lease_ms() const;
  // Units that may still be open: not ended through the server, and touched
  // within a lease (an older one has been, or is about to be, reaped).
  size_t LiveUnits() const;
  // Sessions whose sent output waits for its acknowledgement: a normal
  // shutdown gives them its grace, so that they can close without resync.
  size_t OutputsUnacknowledged() const;
  // Backs out every unit the server knows of, with `reason`; a unit whose
  // Get is still waiting is left to its caller. Returns how many it ended.
  int BackoutAll(qmgr::v1::BackoutReason reason);

 private:
  struct UnitEntry {
    Owner owner = kLeaseOwner;
    std::string identity;  // who opened it
    absl::Time last_used;
  };

  absl::Status CheckIntake() const;
  // OK when `owner` and `identity` may use `uow` (and marks it used).
  absl::Status CheckOwner(UowId uow, Owner owner, absl::string_view identity);

  Engine* const engine_;
  const OperationsOptions options_;
  std::atomic<bool> intake_stopped_{false};
  std::atomic<Owner> next_stream_owner_{1};
  mutable absl::Mutex mu_;
  absl::flat_hash_map<UowId, UnitEntry> units_ ABSL_GUARDED_BY(mu_);
  // Leased units the engine's reaper ended stay in units_ until a prune,
  // every kPruneEvery additions.
  int adds_since_prune_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_OPERATIONS_H_
