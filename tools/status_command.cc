#include "tools/status_command.h"

#include <iterator>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "tools/admin_commands.h"
#include "tools/log_commands.h"

namespace qmgr::tools {
namespace {

std::string Millis(uint64_t us) { return absl::StrFormat("%.1f ms", us / 1e3); }

// 3 s, 4 min 10 s, 2 h 5 min, 3 d 1 h: precise enough for an age.
std::string Age(uint64_t ms) {
  const uint64_t s = ms / 1000;
  if (s < 60) return absl::StrFormat("%.1f s", ms / 1e3);
  if (s < 3600) return absl::StrCat(s / 60, " min ", s % 60, " s");
  if (s < 86400) return absl::StrCat(s / 3600, " h ", s % 3600 / 60, " min");
  return absl::StrCat(s / 86400, " d ", s % 86400 / 3600, " h");
}

void PrintTable(const v1::StatusResponse& s, std::ostream& out) {
  const auto row = [&out](absl::string_view label, const std::string& text) {
    out << absl::StrFormat("%-11s %s\n", label, text);
  };
  row("qmgr", absl::StrCat(s.qmgr_name(), s.group_name().empty() ? "" : " of group ",
                           s.group_name(), ", up ", Age(s.uptime_ms())));

  const v1::RestartStatus& r = s.restart();
  row("restart",
      absl::StrCat(r.mode(), " at ",
                   absl::FormatTime("%Y-%m-%d %H:%M:%S UTC",
                                    absl::FromUnixMicros(r.started_time_us()), absl::UTCTimeZone()),
                   ", open after ", Millis(r.elapsed_us())));
  row("",
      absl::StrCat(r.records_redone(), " record(s) redone (LSN ", r.redo_from_lsn(), "..",
                   r.redo_to_lsn(), "), ", r.units_backed_out(), " unit(s) backed out (",
                   r.messages_backed_out(), " message(s), ", r.messages_moved_to_backout_queues(),
                   " to backout queues), ", r.units_in_doubt(), " in doubt"));
  row("",
      absl::StrCat("phases: ",
                   absl::StrJoin(r.phases(), ", ", [](std::string* o, const v1::RestartPhase& p) {
                     absl::StrAppend(o, p.name(), " ", Millis(p.elapsed_us()));
                   })));
  if (!r.log_tail().empty()) row("", absl::StrCat("log tail: ", r.log_tail()));

  const v1::LogStatus& l = s.log();
  row("log", absl::StrCat(l.segments(), " segment(s) of ", Bytes(l.segment_bytes()), ", ",
                          Bytes(l.bytes_on_disk()), " on disk; LSN ", l.first_lsn(), "..",
                          l.next_lsn(), ", durable below ", l.durable_lsn()));

  const v1::CheckpointStatus& c = s.checkpoint();
  row("checkpoint",
      c.written_time_us() == 0
          ? std::string("none yet")
          : absl::StrCat(c.checkpoint_number(), ", redo LSN ", c.redo_lsn(), ", ", Age(c.age_ms()),
                         " ago; ", c.taken(), " taken since start, ", c.failed(), " failed"));
  row("estimate",
      absl::StrFormat("emergency restart %.2f s now (%s of log since the checkpoint at %s/s)%s",
                      c.estimated_restart_seconds(), Bytes(l.bytes_since_checkpoint()),
                      Bytes(static_cast<uint64_t>(c.replay_bytes_per_second())),
                      c.max_restart_seconds() > 0
                          ? absl::StrFormat("; checkpoint beyond %g s", c.max_restart_seconds())
                          : ""));

  const v1::MemoryInfo& m = s.memory();
  row("memory",
      absl::StrCat(
          Bytes(m.payload_bytes_in_memory()), " of ",
          m.budget_bytes() == 0 ? "no" : Bytes(m.budget_bytes()), " budget",
          m.budget_bytes() == 0 ? ""
                                : absl::StrFormat(" (%.0f%%)", 100.0 * m.payload_bytes_in_memory() /
                                                                   m.budget_bytes()),
          ", ", m.spilled_messages(), " message(s) spilled (", Bytes(m.spilled_bytes()), ")"));
  const v1::DiskStatus& d = s.disk();
  row("disk", absl::StrCat(Bytes(d.free_bytes()), " free of ", Bytes(d.total_bytes()), " (",
                           d.data_dir(), ")"));
  row("units", absl::StrCat(s.open_units(), " open, ", s.units_in_doubt(), " in doubt; ",
                            s.sessions_resync_required(), " session(s) need resync"));
}

}  // namespace

int Status(client::Client& client, bool json, std::ostream& out, std::ostream& err) {
  v1::StatusResponse response;
  const grpc::Status status =
      client.admin()->Status(client.NewContext().get(), v1::StatusRequest(), &response);
  if (!status.ok()) {
    err << "qmgrctl: status refused: " << status.error_message() << "\n";
    return kExitRefused;
  }
  if (json) {
    std::string text;
    google::protobuf::util::JsonPrintOptions options;
    options.preserve_proto_field_names = true;
    options.always_print_primitive_fields = true;
    (void)google::protobuf::util::MessageToJsonString(response, &text, options);
    out << text << "\n";
    return kExitOk;
  }
  PrintTable(response, out);
  return kExitOk;
}

}  // namespace qmgr::tools
