// Two-phase commit with external coordinators, as qmgrd serves it
// (docs/in-doubt.md is the contract; docs/server.md, "Coordinators"): the
// Coordinator service's and Admin's in-doubt calls, apart from gRPC. The
// engine (qmgr/coordinated.cc) decides; this checks identities and input,
// keeps the server's unit bookkeeping (Operations) in step, and writes the
// resync lines an operator reads (like the CICS-MQ adapter's DFHMQ0313I and
// DFHMQ0402I/0408I).
//
// A coordinator's unit before Prepare is held by a lease, like a unit opened
// by a unary Get or Insert (Operations, kLeaseOwner): unary Get and Insert
// may use it, no ProgramStream can, and the engine's idle reaper backs it out
// when no call touched it for the lease. Prepare takes it out of that
// bookkeeping: a unit in doubt has no lease, and no shutdown or departed
// caller ends it.
//
// Thread-safe.
#ifndef QMGR_TOOLS_QMGRD_COORDINATION_H_
#define QMGR_TOOLS_QMGRD_COORDINATION_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "qmgr/engine.h"
#include "qmgr/v1/qmgr.pb.h"
#include "tools/qmgrd/operations.h"

namespace qmgr::server {

// XIDs one Resolve or Forget may name: the engine decides them all under its
// latch, so a bound keeps other calls' wait short.
inline constexpr size_t kResolveXidsMax = 10000;

struct CoordinationOptions {
  // The resync qualifiers this queue manager answers to (--qmgr-name,
  // --group-name; the group's may be empty: none).
  std::string qmgr_name;
  std::string group_name;
  // The largest answer qmgrd sends: ListInDoubt stops short of it.
  uint64_t max_send_bytes = 16u << 20;
  // One line per resync event (Connect, Resolve, an operator's decision);
  // null: none.
  std::function<void(absl::string_view line)> progress;
};

class Coordination {
 public:
  // `engine` and `operations` must outlive this.
  Coordination(Engine* engine, Operations* operations, CoordinationOptions options);

  // Coordinator service. Every call checks its names (INVALID_ARGUMENT) and
  // that the qualifier is this queue manager's name or its group's
  // (FAILED_PRECONDITION). Those that wait for the log: Prepare, Commit,
  // Backout, Resolve, Forget.
  absl::StatusOr<qmgr::v1::ConnectResponse> Connect(const qmgr::v1::ConnectRequest& request);
  // The unit belongs to `identity` (Operations): only it can Get and Insert
  // in it.
  absl::StatusOr<qmgr::v1::BeginResponse> Begin(const qmgr::v1::BeginRequest& request,
                                                absl::string_view identity = "");
  absl::Status Prepare(const qmgr::v1::PrepareRequest& request);
  absl::Status Commit(const qmgr::v1::CommitRequest& request);
  absl::Status Backout(const qmgr::v1::CoordinatorBackoutRequest& request);
  absl::StatusOr<qmgr::v1::ResolveResponse> Resolve(const qmgr::v1::ResolveRequest& request);
  absl::Status Forget(const qmgr::v1::ForgetRequest& request);

  // Admin: units in doubt under any names (after a forced restart under new
  // names only an operator can still reach the old ones), and a decision by
  // hand, recorded as "operator:<name>" (waits for the log).
  absl::StatusOr<qmgr::v1::ListInDoubtResponse> ListInDoubt(
      const qmgr::v1::ListInDoubtRequest& request) const;
  absl::StatusOr<qmgr::v1::ResolveInDoubtResponse> ResolveInDoubt(
      const qmgr::v1::ResolveInDoubtRequest& request);

 private:
  // INVALID_ARGUMENT for malformed names; FAILED_PRECONDITION for a
  // qualifier that names neither this queue manager nor its group.
  absl::Status CheckIdentity(const std::string& coordinator, const std::string& qualifier) const;
  // One outcome for one XID through the engine's Resolve, the server's
  // bookkeeping updated; its status.
  absl::Status Decide(const CoordinatedKey& key, qmgr::v1::Outcome outcome);
  // A unit that the engine no longer holds open under `key` leaves the
  // server's bookkeeping.
  void Settle(const CoordinatedKey& key, UowId uow);
  void Progress(absl::string_view line) const;

  Engine* const engine_;
  Operations* const operations_;
  const CoordinationOptions options_;
};

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_COORDINATION_H_
