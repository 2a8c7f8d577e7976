#include "tools/qmgrd/queue_manager.h"

#include <filesystem>
#include <iostream>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "log/file.h"
#include "log/segment.h"

namespace qmgr::server {

uint64_t MaxReceiveBytes(const ServerOptions& options) {
  // Room for field tags and lengths of up to unit_messages_max messages.
  constexpr uint64_t kFramingBytesPerMessage = 64;
  return std::max(options.unit_bytes_max, options.max_message_bytes) +
         options.unit_messages_max * kFramingBytesPerMessage;
}

QueueManagerInstance::QueueManagerInstance(std::unique_ptr<log::Log> log,
                                           std::unique_ptr<SpillStore> spill,
                                           std::unique_ptr<Engine> engine)
    : log_(std::move(log)), spill_(std::move(spill)), engine_(std::move(engine)) {}

QueueManagerInstance::~QueueManagerInstance() { Close().IgnoreError(); }

absl::Status QueueManagerInstance::Close() {
  if (closed_) return close_status_;
  closed_ = true;
  engine_.reset();  // uses the spill store and the log
  close_status_ = log_->Close();
  spill_.reset();
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
  const std::string log_dir = log::JoinPath(options.data_dir, "log");
  std::cerr << "qmgrd: opening the log in " << log_dir << "\n";
  log::LogOptions log_options;
  log_options.segment_bytes = options.log_segment_bytes;
  absl::StatusOr<std::unique_ptr<log::Log>> log =
      log::Log::Open(log::PosixFileSystem(), log_dir, log_options);
  if (!log.ok()) {
    return absl::Status(log.status().code(), absl::StrCat("cannot open the log in ", log_dir, ": ",
                                                          log.status().message()));
  }
  const log::LogOpenReport& report = (*log)->open_report();
  if (report.end_lsn != report.first_lsn) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the log in ", log_dir, " holds records (LSN ", report.first_lsn, "..", report.end_lsn,
        "): restart from an existing log is not implemented yet; start on an empty data "
        "directory"));
  }
  std::cerr << "qmgrd: log " << (report.created ? "created" : "opened (empty)") << ", "
            << report.segments << " segment(s)\n";

  SpillOptions spill_options;
  spill_options.path = log::JoinPath(options.data_dir, "store");
  absl::StatusOr<std::unique_ptr<SpillStore>> spill = SpillStore::Open(spill_options);
  if (!spill.ok()) {
    return absl::Status(spill.status().code(),
                        absl::StrCat("cannot open the store in ", spill_options.path, ": ",
                                     spill.status().message()));
  }

  EngineOptions engine_options;
  engine_options.unit_messages_max = options.unit_messages_max;
  engine_options.unit_bytes_max = options.unit_bytes_max;
  engine_options.unit_idle_timeout = options.unit_lease;
  // The reaper looks often enough that a lease ends within a quarter of its
  // length after it expires, and at least once a second.
  engine_options.reaper_interval =
      std::clamp(options.unit_lease / 4, absl::Milliseconds(10), absl::Seconds(1));
  engine_options.default_max_message_bytes = options.max_message_bytes;
  engine_options.memory_budget_bytes = options.memory_budget_bytes;
  engine_options.spill = spill->get();
  auto engine = std::make_unique<Engine>(log->get(), engine_options);
  std::cerr << "qmgrd: queue manager " << options.queue_manager_name << " cold-started\n";
  return std::make_unique<QueueManagerInstance>(*std::move(log), *std::move(spill),
                                                std::move(engine));
}

}  // namespace qmgr::server
