// The common set-up of engine-level tests: a fresh log on the in-memory fault
// file system and an engine on it.
#ifndef QMGR_TESTS_SUPPORT_ENGINE_ON_LOG_H_
#define QMGR_TESTS_SUPPORT_ENGINE_ON_LOG_H_

#include <memory>

#include "absl/status/status.h"
#include "log/log.h"
#include "qmgr/engine.h"
#include "tests/support/fault_file_system.h"

namespace qmgr::testing {

// Engine options with no reaper thread.
inline EngineOptions NoReaper() {
  EngineOptions options;
  options.reaper_interval = absl::ZeroDuration();
  return options;
}

// Creates /data, opens a log at /data/log (1 MiB segments) and an engine on
// it with `options`.
absl::Status OpenEngineOnLog(FaultFileSystem& fs, std::unique_ptr<log::Log>* log,
                             std::unique_ptr<Engine>* engine, EngineOptions options = NoReaper());

}  // namespace qmgr::testing

#endif  // QMGR_TESTS_SUPPORT_ENGINE_ON_LOG_H_
