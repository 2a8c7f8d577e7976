// Restart: rebuilds the queue manager from the checkpoint store and the
// system log (DESIGN.md, "Restart"). The algorithm is in restart.cc, as a
// list of named steps, and its decision table is written out there once.
//
// Modes: normal (the log ends in SHUTDOWN and nothing follows the last
// checkpoint), emergency (anything else: redo from redo_lsn, back out units
// with no outcome), cold (explicit: messages and sessions discarded, queue
// definitions kept if asked, the LSN and message ids keep running), and new
// (an empty data directory).
#ifndef QMGR_RESTART_RESTART_H_
#define QMGR_RESTART_RESTART_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "checkpoint/checkpointer.h"
#include "checkpoint/store.h"
#include "log/file.h"
#include "log/log.h"
#include "qmgr/engine.h"

namespace qmgr::restart {

enum class Mode { kNew, kNormal, kEmergency, kCold };
absl::string_view ModeName(Mode mode);

struct RestartOptions {
  std::string data_dir;  // created if missing (not its parents)
  log::FileSystem* fs = log::PosixFileSystem();
  // The store's RocksDB environment (null: the default); tests pass one over
  // a fault-injecting file system.
  rocksdb::Env* store_env = nullptr;
  std::shared_ptr<rocksdb::Statistics> store_statistics;
  uint64_t store_write_buffer_bytes = 64 << 20;
  // Pace of the store's writes (checkpoints, flushes): below the disk's, so
  // that the log's fdatasyncs keep their latency during a checkpoint.
  uint64_t store_write_bytes_per_second = 64 << 20;
  bool cold = false;
  bool cold_keep_definitions = false;
  // This queue manager's name and its group's (resync qualifiers of units
  // in doubt). A restart under other names than those the units in doubt
  // were prepared under is refused unless forced.
  std::string qmgr_name;
  std::string group_name;
  // Cold start although units are in doubt; or start under changed names.
  bool force = false;
  bool truncate_log_at_corruption = false;
  // Retired segments are moved to <data>/archive instead of deleted.
  bool archive = false;
  // Segment size, preallocation, ENOSPC handling; the directory, log id,
  // archive and corruption fields are set by Restart.
  log::LogOptions log;
  // The engine's options; log, spill and stored payloads are set by Restart.
  EngineOptions engine;
  checkpoint::CheckpointOptions checkpoint;
  // Start the automatic checkpoint triggers once open.
  bool automatic_checkpoints = true;
  // Progress lines (each second during a long replay) and the summary.
  std::function<void(absl::string_view line)> progress;
  // Hears each step of the restart as it ends (RestartReport::steps), with
  // how long it took; may be empty.
  std::function<void(absl::string_view step, absl::Duration took)> on_step;
};

struct RestartReport {
  Mode mode = Mode::kNew;
  log::Lsn redo_from = 0;
  log::Lsn redo_to = 0;
  uint64_t records_redone = 0;
  uint64_t units_backed_out = 0;
  uint64_t messages_backed_out = 0;
  uint64_t units_in_doubt = 0;
  uint64_t messages_moved_to_backout_queues = 0;
  std::map<std::string, uint64_t> messages_per_queue;
  std::string log_tail;  // how the log ended (torn / corrupt tails and what was cut)
  bool log_truncated = false;
  absl::Duration replay_elapsed;
  double replay_bytes_per_second = 0;  // 0: too little replayed to measure
  absl::Duration elapsed;              // until open for traffic
  // Time spent in each step, in order.
  std::vector<std::pair<std::string, absl::Duration>> steps;
  std::string ToString() const;
};

// A running queue manager: store, log, engine and checkpointer, opened by
// Restart. Destroying it without Shutdown leaves the data directory as a
// crash would (the next restart is an emergency restart).
class QueueManager {
 public:
  ~QueueManager();
  QueueManager(const QueueManager&) = delete;
  QueueManager& operator=(const QueueManager&) = delete;

  Engine* engine() { return engine_.get(); }
  checkpoint::Checkpointer* checkpointer() { return checkpointer_.get(); }
  log::Log* log() { return log_.get(); }
  checkpoint::Store* store() { return store_.get(); }
  const RestartReport& restart_report() const { return report_; }

  // Normal shutdown: backs out the units still open (BACKOUT_SHUTDOWN),
  // takes the shutdown checkpoint, appends SHUTDOWN durably and closes the
  // log. The next restart is a normal one. Callers stop intake first.
  absl::Status Shutdown();

 private:
  friend absl::StatusOr<std::unique_ptr<QueueManager>> Restart(RestartOptions options);
  QueueManager() = default;

  // Declared in the order they are built; destroyed in reverse.
  std::unique_ptr<log::FileLock> lock_;
  std::unique_ptr<checkpoint::Store> store_;
  std::unique_ptr<log::Log> log_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<checkpoint::Checkpointer> checkpointer_;
  RestartReport report_;
  bool shut_down_ = false;
};

// Locks the data directory (a second queue manager on it is refused), then
// restarts in the mode the store, the log and the options decide.
absl::StatusOr<std::unique_ptr<QueueManager>> Restart(RestartOptions options);

// The decision table's code (restart.cc), exposed for its test.
namespace internal {
enum class LogAction { kCreate, kRedoFromStart, kRedoFromCheckpoint, kRefuse };
struct LogOnDisk {
  bool has_segments = false;
  log::Lsn first_lsn = 0;
};
// Rows 1-4. `new_log_lsn`: where a new log starts (0, or a cold start's LSN).
LogAction DecideLogAction(bool has_meta, log::Lsn new_log_lsn, const LogOnDisk& disk,
                          std::string* why);
// Rows 7 and 8.
absl::Status CheckRedoRange(log::Lsn redo_lsn, log::Lsn first_lsn, log::Lsn end_lsn);
// Rows 9-11.
Mode DecideMode(bool clean_tail, bool only_markers, bool ends_in_shutdown);
}  // namespace internal

}  // namespace qmgr::restart

#endif  // QMGR_RESTART_RESTART_H_
