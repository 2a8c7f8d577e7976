// Refusals with a reason a client must act on (DESIGN.md, "Errors"). The
// reason travels as a payload of the absl::Status; the gRPC layer turns it
// into an ErrorInfo.
#ifndef QMGR_QMGR_STATUS_H_
#define QMGR_QMGR_STATUS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace qmgr {

namespace reason {
inline constexpr absl::string_view kResyncRequired = "RESYNC_REQUIRED";
inline constexpr absl::string_view kSequenceGap = "SEQUENCE_GAP";
inline constexpr absl::string_view kAlreadyHardened = "ALREADY_HARDENED";
inline constexpr absl::string_view kResponseOutstanding = "RESPONSE_OUTSTANDING";
inline constexpr absl::string_view kQueueFull = "QUEUE_FULL";
inline constexpr absl::string_view kPutInhibited = "PUT_INHIBITED";
inline constexpr absl::string_view kGetInhibited = "GET_INHIBITED";
inline constexpr absl::string_view kHeuristicMismatch = "HEURISTIC_MISMATCH";
// Input or Receive on a session that no OpenSession bound.
inline constexpr absl::string_view kSessionNotOpen = "SESSION_NOT_OPEN";
// OpenSession of a session another client has bound.
inline constexpr absl::string_view kSessionBound = "SESSION_BOUND";
// Refused while the session's sent output waits for its acknowledgement.
inline constexpr absl::string_view kOutputUnacknowledged = "OUTPUT_UNACKNOWLEDGED";
}  // namespace reason

// `status` with `reason` attached.
absl::Status WithReason(absl::Status status, absl::string_view reason);
// The attached reason, or "" when there is none.
std::string ReasonOf(const absl::Status& status);

// Get with commit_previous committed unit `uow` and then failed: the error
// says so (its message too), since the caller must not back that unit out
// or commit it again.
absl::Status WithPreviousUnitCommitted(const absl::Status& status, uint64_t uow);
// That unit, or 0.
uint64_t PreviousUnitCommitted(const absl::Status& status);

}  // namespace qmgr

#endif  // QMGR_QMGR_STATUS_H_
