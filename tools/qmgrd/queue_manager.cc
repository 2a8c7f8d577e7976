#include "tools/qmgrd/queue_manager.h"

#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "checkpoint/checkpointer.h"
#include "tools/qmgrd/server_log.h"

namespace qmgr::server {

uint64_t MaxReceiveBytes(const ServerOptions& options) {
  // Room for field tags and lengths of up to unit_messages_max messages.
  constexpr uint64_t kFramingBytesPerMessage = 64;
  return std::max(options.unit_bytes_max, options.max_message_bytes) +
         options.unit_messages_max * kFramingBytesPerMessage;
}

QueueManagerInstance::QueueManagerInstance(std::unique_ptr<restart::QueueManager> qm,
                                           const ServerOptions& options, absl::Time restart_began)
    : qm_(std::move(qm)), options_(options), restart_began_(restart_began) {
  checkpoint = [this]() -> absl::StatusOr<CheckpointInfo> {
    // Logged by the checkpointer's observer (LogCheckpoint).
    absl::StatusOr<checkpoint::CheckpointReport> report =
        qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested);
    if (!report.ok()) return report.status();
    return CheckpointInfo{report->checkpoint_number, report->redo_lsn};
  };
}

QueueManagerInstance::~QueueManagerInstance() { Close(qmgr::v1::IMMEDIATE).IgnoreError(); }

absl::Status QueueManagerInstance::Close(qmgr::v1::ShutdownMode mode) {
  if (closed_) return close_status_;
  closed_ = true;
  if (mode == qmgr::v1::IMMEDIATE) {
    close_status_ = qm_->log()->Close();
  } else {
    close_status_ = qm_->Shutdown();
  }
  qm_.reset();
  return close_status_;
}

namespace {

void LogCheckpoint(checkpoint::Trigger trigger,
                   const absl::StatusOr<checkpoint::CheckpointReport>& report) {
  if (!report.ok()) {
    LogEvent("checkpoint.failed")
        .Add("trigger", checkpoint::TriggerName(trigger))
        .Add("error", report.status().message());
    return;
  }
  const checkpoint::WriteCounts& c = report->counts;
  LogEvent("checkpoint.done")
      .Add("number", report->checkpoint_number)
      .Add("trigger", checkpoint::TriggerName(trigger))
      .Add("redo_lsn", report->redo_lsn)
      .Add("messages_written", c.messages_written)
      .Add("payloads_written", c.payloads_written)
      .Add("messages_deleted", c.messages_deleted)
      .Add("queue_changes", c.queues_written + c.queues_deleted)
      .Add("sessions_written", c.sessions_written)
      .Add("bytes", c.batch_bytes)
      .Add("units_open_long", static_cast<uint64_t>(report->long_open_units.size()))
      .Add("latch_held", report->latch_held)
      .Add("took", report->elapsed);
}

void LogRestartDone(const restart::RestartReport& r) {
  LogEvent("restart.done")
      .Add("mode", restart::ModeName(r.mode))
      .Add("redo_from", r.redo_from)
      .Add("redo_to", r.redo_to)
      .Add("records_redone", r.records_redone)
      .Add("units_backed_out", r.units_backed_out)
      .Add("messages_backed_out", r.messages_backed_out)
      .Add("units_in_doubt", r.units_in_doubt)
      .Add("moved_to_backout_queues", r.messages_moved_to_backout_queues)
      .Add("log_tail", r.log_tail.empty() ? "clean" : r.log_tail)
      .Add("took", r.elapsed);
}

}  // namespace

absl::StatusOr<std::unique_ptr<QueueManagerInstance>> OpenQueueManager(
    const ServerOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create data directory ", options.data_dir, ": ", ec.message()));
  }
  restart::RestartOptions r;
  r.data_dir = options.data_dir;
  r.log.segment_bytes = options.log_segment_bytes;
  r.cold = options.cold;
  r.cold_keep_definitions = options.cold_keep_definitions;
  r.qmgr_name = options.queue_manager_name;
  r.group_name = options.group_name;
  r.force = options.force;
  r.truncate_log_at_corruption = options.truncate_log_at_corruption;
  r.archive = options.archive;
  r.engine.unit_messages_max = options.unit_messages_max;
  r.engine.unit_bytes_max = options.unit_bytes_max;
  r.engine.unit_idle_timeout = options.unit_lease;
  // The reaper looks often enough that a lease ends within a quarter of its
  // length after it expires, and at least once a second.
  r.engine.reaper_interval =
      std::clamp(options.unit_lease / 4, absl::Milliseconds(10), absl::Seconds(1));
  r.engine.default_max_message_bytes = options.max_message_bytes;
  r.engine.memory_budget_bytes = options.memory_budget_bytes;
  r.engine.spill_limit_bytes = options.spill_limit_bytes;
  r.checkpoint.log_bytes = options.checkpoint_log_bytes;
  r.checkpoint.interval = options.checkpoint_interval;
  r.checkpoint.max_restart_seconds = options.max_restart_seconds;
  r.progress = [](absl::string_view line) { LogLine(line); };
  r.on_step = [](absl::string_view step, absl::Duration took) {
    LogEvent("restart.phase")
        .Add("phase", absl::StrReplaceAll(step, {{" ", "_"}}))
        .Add("took", took);
  };
  r.checkpoint.on_checkpoint = LogCheckpoint;
  LogLine(absl::StrCat("restarting queue manager ", options.queue_manager_name,
                       options.group_name.empty() ? "" : " of group " + options.group_name, " in ",
                       options.data_dir));
  const absl::Time began = absl::Now();
  absl::StatusOr<std::unique_ptr<restart::QueueManager>> qm = restart::Restart(std::move(r));
  if (!qm.ok()) {
    LogEvent("restart.refused").Add("error", qm.status().message());
    return absl::Status(qm.status().code(), absl::StrCat("restart in ", options.data_dir,
                                                         " refused: ", qm.status().message()));
  }
  LogRestartDone((*qm)->restart_report());
  return std::make_unique<QueueManagerInstance>(*std::move(qm), options, began);
}

}  // namespace qmgr::server
