#include "qmgr/status.h"

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace qmgr {
namespace {
constexpr absl::string_view kReasonUrl = "type.qmgr/qmgr.v1.Reason";
constexpr absl::string_view kPreviousUnitUrl = "type.qmgr/qmgr.v1.PreviousUnitCommitted";
}  // namespace

absl::Status WithReason(absl::Status status, absl::string_view reason) {
  status.SetPayload(kReasonUrl, absl::Cord(reason));
  return status;
}

std::string ReasonOf(const absl::Status& status) {
  auto payload = status.GetPayload(kReasonUrl);
  return payload ? std::string(*payload) : std::string();
}

absl::Status WithPreviousUnitCommitted(const absl::Status& status, uint64_t uow) {
  absl::Status out(status.code(), absl::StrCat(status.message(), " (the previous unit of work ",
                                               uow, " was committed)"));
  status.ForEachPayload(
      [&](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  out.SetPayload(kPreviousUnitUrl, absl::Cord(absl::StrCat(uow)));
  return out;
}

uint64_t PreviousUnitCommitted(const absl::Status& status) {
  auto payload = status.GetPayload(kPreviousUnitUrl);
  uint64_t uow = 0;
  if (!payload || !absl::SimpleAtoi(std::string(*payload), &uow)) return 0;
  return uow;
}

}  // namespace qmgr
