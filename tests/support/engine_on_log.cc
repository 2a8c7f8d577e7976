#include "tests/support/engine_on_log.h"

namespace qmgr::testing {

absl::Status OpenEngineOnLog(FaultFileSystem& fs, std::unique_ptr<log::Log>* log,
                             std::unique_ptr<Engine>* engine, EngineOptions options) {
  if (absl::Status s = fs.CreateDir("/data"); !s.ok()) return s;
  log::LogOptions log_options;
  log_options.segment_bytes = 1 << 20;
  absl::StatusOr<std::unique_ptr<log::Log>> opened = log::Log::Open(&fs, "/data/log", log_options);
  if (!opened.ok()) return opened.status();
  *log = *std::move(opened);
  *engine = std::make_unique<Engine>(log->get(), std::move(options));
  return absl::OkStatus();
}

}  // namespace qmgr::testing
