#include "tools/qmgrd/queue_manager.h"

#include <filesystem>
#include <iostream>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "checkpoint/checkpointer.h"

namespace qmgr::server {

uint64_t MaxReceiveBytes(const ServerOptions& options) {
  // Room for field tags and lengths of up to unit_messages_max messages.
  constexpr uint64_t kFramingBytesPerMessage = 64;
  return std::max(options.unit_bytes_max, options.max_message_bytes) +
         options.unit_messages_max * kFramingBytesPerMessage;
}

QueueManagerInstance::QueueManagerInstance(std::unique_ptr<restart::QueueManager> qm)
    : qm_(std::move(qm)) {
  checkpoint = [this]() -> absl::StatusOr<CheckpointInfo> {
    absl::StatusOr<checkpoint::CheckpointReport> report =
        qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested);
    if (!report.ok()) return report.status();
    std::cerr << absl::StrCat("qmgrd: ", report->ToString(), "\n") << std::flush;
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
  r.checkpoint.log_bytes = options.checkpoint_log_bytes;
  r.checkpoint.interval = options.checkpoint_interval;
  r.checkpoint.max_restart_seconds = options.max_restart_seconds;
  // One write per line: progress comes from the checkpointer's thread too.
  r.progress = [](absl::string_view line) {
    std::cerr << absl::StrCat("qmgrd: ", line, "\n") << std::flush;
  };
  std::cerr << absl::StrCat("qmgrd: restarting queue manager ", options.queue_manager_name,
                            options.group_name.empty() ? "" : " of group " + options.group_name,
                            " in ", options.data_dir, "\n")
            << std::flush;
  absl::StatusOr<std::unique_ptr<restart::QueueManager>> qm = restart::Restart(std::move(r));
  if (!qm.ok()) {
    return absl::Status(qm.status().code(), absl::StrCat("restart in ", options.data_dir,
                                                         " refused: ", qm.status().message()));
  }
  return std::make_unique<QueueManagerInstance>(*std::move(qm));
}

}  // namespace qmgr::server
