#include "tools/indoubt_commands.h"

#include <algorithm>
#include <cctype>
#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "qmgr/engine.h"
#include "tools/log_commands.h"

namespace qmgr::tools {
namespace {

namespace v1 = qmgr::v1;

// Message ids shown per unit; the count is always shown.
constexpr int kIdsShownMax = 8;

std::string Age(uint64_t age_ms) {
  if (age_ms < 1000) return absl::StrCat(age_ms, "ms");
  return absl::FormatDuration(absl::Trunc(absl::Milliseconds(age_ms), absl::Seconds(1)));
}

std::string Locked(const v1::InDoubtInfo& unit) {
  std::vector<uint64_t> shown(
      unit.locked_message_ids().begin(),
      unit.locked_message_ids().begin() + std::min(unit.locked_message_ids_size(), kIdsShownMax));
  std::string out = absl::StrCat(unit.locked_message_ids_size());
  if (!shown.empty()) {
    absl::StrAppend(&out, " (", absl::StrJoin(shown, ","),
                    unit.locked_message_ids_size() > kIdsShownMax ? ",..." : "", ")");
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> ParseXidHex(const std::string& hex) {
  absl::string_view digits = hex;
  if (absl::StartsWithIgnoreCase(digits, "0x")) digits.remove_prefix(2);
  if (digits.empty() || digits.size() % 2 != 0 || digits.size() > 2 * kXidBytesMax ||
      !std::all_of(digits.begin(), digits.end(),
                   [](char c) { return absl::ascii_isxdigit(static_cast<unsigned char>(c)); })) {
    return absl::InvalidArgumentError(
        absl::StrCat("XID '", hex, "' is not 1..", kXidBytesMax,
                     " bytes in hex (an even number of hex digits, as `indoubt list` shows)"));
  }
  return absl::HexStringToBytes(digits);
}

int InDoubtList(client::Client& client, const InDoubtListOptions& options, std::ostream& out,
                std::ostream& err) {
  v1::ListInDoubtRequest request;
  request.set_coordinator(options.coordinator);
  request.set_qualifier(options.qualifier);
  v1::ListInDoubtResponse response;
  const grpc::Status status =
      client.admin()->ListInDoubt(client.NewContext().get(), request, &response);
  if (!status.ok()) {
    err << "qmgrctl: indoubt list refused: " << status.error_message() << "\n";
    return kExitRefused;
  }
  if (response.units().empty()) {
    out << "no units in doubt\n";
    return kExitOk;
  }
  out << absl::StrFormat("%-16s %-16s %-32s %8s  %-20s %-20s %s\n", "COORDINATOR", "QUALIFIER",
                         "XID", "AGE", "LOCKED", "QUEUES", "INSERTS");
  for (const v1::InDoubtInfo& unit : response.units()) {
    out << absl::StrFormat(
        "%-16s %-16s %-32s %8s  %-20s %-20s %d\n", unit.coordinator(), unit.qualifier(),
        absl::BytesToHexString(unit.xid()), Age(unit.age_ms()), Locked(unit),
        unit.queues().empty() ? "-" : absl::StrJoin(unit.queues(), ","), unit.inserted());
  }
  out << response.units_size() << " unit(s) in doubt\n";
  if (response.truncated()) {
    out << "more units are in doubt than fit in one answer: list one coordinator's with "
           "--coordinator\n";
  }
  return kExitOk;
}

int InDoubtResolve(client::Client& client, const InDoubtResolveOptions& options, std::ostream& out,
                   std::ostream& err) {
  v1::ResolveInDoubtRequest request;
  request.set_xid(options.xid);
  request.set_coordinator(options.coordinator);
  request.set_qualifier(options.qualifier);
  request.set_outcome(options.commit ? v1::COMMIT : v1::BACKOUT);
  request.set_operator_name(options.operator_name);
  v1::ResolveInDoubtResponse response;
  const grpc::Status status =
      client.admin()->ResolveInDoubt(client.NewContext().get(), request, &response);
  if (!status.ok()) {
    err << "qmgrctl: indoubt resolve refused: " << status.error_message() << "\n";
    return kExitRefused;
  }
  out << "XID " << absl::BytesToHexString(options.xid) << " of coordinator '"
      << response.coordinator() << "' (qualifier '" << response.qualifier() << "') "
      << (options.commit ? "committed" : "backed out") << " by operator:" << options.operator_name
      << "\n";
  return kExitOk;
}

}  // namespace qmgr::tools
