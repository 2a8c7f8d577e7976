// How refusals travel over gRPC (DESIGN.md, "Errors"), in one place so that
// qmgrd and the client library agree: the absl::StatusCode is the gRPC code
// (the same numbers), the message is kept, and a reason (qmgr/status.h)
// travels as a google.rpc.ErrorInfo {reason, domain "qmgr"} in the details of
// a google.rpc.Status: in the grpc-status-details-bin trailer of a call, or
// in the `error` field of a stream's response.
#ifndef QMGR_CLIENT_RPC_STATUS_H_
#define QMGR_CLIENT_RPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/rpc/status.pb.h"

namespace qmgr::rpc {

inline constexpr absl::string_view kErrorDomain = "qmgr";
// A Get with commit_previous that committed its previous unit and then
// failed: ErrorInfo metadata names that unit (with this reason when the
// error has none of its own).
inline constexpr absl::string_view kPreviousUnitCommittedKey = "previous_unit_committed";
inline constexpr absl::string_view kPreviousUnitCommitted = "PREVIOUS_UNIT_COMMITTED";

// With an ErrorInfo in its details when `status` carries a reason.
google::rpc::Status ToRpcStatus(const absl::Status& status);
// The reason comes back from the first ErrorInfo of domain "qmgr".
absl::Status FromRpcStatus(const google::rpc::Status& status);

// Details are attached only when there is a reason to carry.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace qmgr::rpc

#endif  // QMGR_CLIENT_RPC_STATUS_H_
