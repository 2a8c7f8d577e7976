#include "qmgr/status.h"

#include "absl/strings/cord.h"

namespace qmgr {
namespace {
constexpr absl::string_view kReasonUrl = "type.qmgr/qmgr.v1.Reason";
}

absl::Status WithReason(absl::Status status, absl::string_view reason) {
  status.SetPayload(kReasonUrl, absl::Cord(reason));
  return status;
}

std::string ReasonOf(const absl::Status& status) {
  auto payload = status.GetPayload(kReasonUrl);
  return payload ? std::string(*payload) : std::string();
}

}  // namespace qmgr
