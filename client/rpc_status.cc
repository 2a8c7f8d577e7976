#include "client/rpc_status.h"

#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "google/rpc/error_details.pb.h"
#include "qmgr/status.h"

namespace qmgr::rpc {

google::rpc::Status ToRpcStatus(const absl::Status& status) {
  google::rpc::Status out;
  out.set_code(static_cast<int>(status.code()));
  out.set_message(std::string(status.message()));
  const std::string reason = ReasonOf(status);
  const uint64_t committed = PreviousUnitCommitted(status);
  if (!reason.empty() || committed != 0) {
    google::rpc::ErrorInfo info;
    info.set_reason(reason.empty() ? std::string(kPreviousUnitCommitted) : reason);
    info.set_domain(std::string(kErrorDomain));
    if (committed != 0) {
      (*info.mutable_metadata())[std::string(kPreviousUnitCommittedKey)] = absl::StrCat(committed);
    }
    out.add_details()->PackFrom(info);
  }
  return out;
}

absl::Status FromRpcStatus(const google::rpc::Status& status) {
  // gRPC and absl share the code numbers; anything beyond them is UNKNOWN.
  const int code = status.code();
  absl::Status out(code >= 0 && code <= static_cast<int>(absl::StatusCode::kUnauthenticated)
                       ? static_cast<absl::StatusCode>(code)
                       : absl::StatusCode::kUnknown,
                   status.message());
  for (const google::protobuf::Any& any : status.details()) {
    google::rpc::ErrorInfo info;
    if (any.UnpackTo(&info) && info.domain() == kErrorDomain && !info.reason().empty()) {
      uint64_t committed = 0;
      if (auto it = info.metadata().find(std::string(kPreviousUnitCommittedKey));
          it != info.metadata().end() && absl::SimpleAtoi(it->second, &committed)) {
        out = WithPreviousUnitCommitted(out, committed);
      }
      if (info.reason() == kPreviousUnitCommitted) return out;
      return WithReason(std::move(out), info.reason());
    }
  }
  return out;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const auto code = static_cast<grpc::StatusCode>(status.code());
  if (ReasonOf(status).empty() && PreviousUnitCommitted(status) == 0) {
    return grpc::Status(code, std::string(status.message()));
  }
  return grpc::Status(code, std::string(status.message()), ToRpcStatus(status).SerializeAsString());
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  google::rpc::Status details;
  if (!status.error_details().empty() && details.ParseFromString(status.error_details())) {
    // The trailer's code and message are the call's own; details add the reason.
    details.set_code(status.error_code());
    details.set_message(status.error_message());
    return FromRpcStatus(details);
  }
  google::rpc::Status plain;
  plain.set_code(status.error_code());
  plain.set_message(status.error_message());
  return FromRpcStatus(plain);
}

}  // namespace qmgr::rpc
