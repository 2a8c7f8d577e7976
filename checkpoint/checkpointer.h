// Fuzzy, incremental checkpoints (DESIGN.md, "Checkpoints"), and what
// triggers them.
//
// The five steps, each a line of Checkpointer::Checkpoint:
//   1-2. Engine::BeginCheckpoint: under the engine latch, redo_lsn (the log's
//        next LSN: every record below it is applied, none at or above) and
//        the changes since the last checkpoint.
//   3.   Log::WaitAllDurable: the store never holds an effect the log lost.
//   4.   Store::Write: one synced WriteBatch, the delta plus the meta. A crash
//        before it leaves the previous checkpoint whole; after it, this one.
//   5.   CHECKPOINT_END appended (for tools), then the segments wholly below
//        redo_lsn retired (deleted, or archived by the log's archive_dir).
//
// A failed step 3 or 4 is final for this process: the engine's change sets
// were handed over, so a later delta would miss them. Checkpoints then answer
// the first error; the log keeps everything since the last good checkpoint,
// so an emergency restart recovers.
#ifndef QMGR_CHECKPOINT_CHECKPOINTER_H_
#define QMGR_CHECKPOINT_CHECKPOINTER_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "checkpoint/store.h"
#include "log/histogram.h"
#include "log/log.h"
#include "qmgr/engine.h"

namespace qmgr::checkpoint {

enum class Trigger { kLogBytes, kTime, kRestartTarget, kRequested, kShutdown, kRestart };
absl::string_view TriggerName(Trigger trigger);

// Where a checkpoint is, for the test hook.
enum class Step { kDeltaTaken, kLogDurable, kStoreWritten, kEndAppended };

struct CheckpointReport;

struct CheckpointOptions {
  // Automatic triggers; 0 turns one off.
  uint64_t log_bytes = 64ull << 20;  // log written since redo_lsn
  absl::Duration interval = absl::Seconds(60);
  double max_restart_seconds = 10;  // the emergency-restart estimate
  // How often the trigger thread looks.
  absl::Duration poll_interval = absl::Milliseconds(100);
  // Replay rate assumed until a restart has measured one (bytes/s).
  double assumed_replay_bytes_per_second = 100e6;
  // A unit of work open longer than this is named in the checkpoint report.
  absl::Duration report_units_open_over = absl::Seconds(30);
  // A checkpoint starts only while the store's file system has this much
  // free, and twice the last checkpoint's batch: RocksDB must never meet a
  // full disk in the middle of the store write (after a failed write to its
  // WAL, Debian's build asserts, and the process dies). Below it the
  // checkpoint is refused (RESOURCE_EXHAUSTED) before step 1, and a later
  // one may run. 0: no check.
  uint64_t store_free_bytes_min = 8 << 20;
  // Test seam: called after each step, on the checkpointing thread.
  std::function<void(Step)> step_hook;
  // Hears the outcome of every checkpoint, whatever triggered it, on the
  // thread that took it (the server's log lines); may be empty.
  std::function<void(Trigger, const absl::StatusOr<CheckpointReport>&)> on_checkpoint;
};

struct CheckpointReport {
  uint64_t checkpoint_number = 0;
  Trigger trigger = Trigger::kRequested;
  log::Lsn redo_lsn = 0;
  WriteCounts counts;
  absl::Duration elapsed;
  absl::Duration latch_held;  // steps 1-2
  std::vector<OpenUnit> long_open_units;
  std::string ToString() const;
};

// Buckets of CheckpointStats::seconds.
inline const std::vector<double> kCheckpointSecondsBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                              0.5,   1,    2.5,   5,    10,  30};

struct CheckpointStats {
  uint64_t taken = 0;   // completed since start
  uint64_t failed = 0;  // attempts that failed (the first failure is final)
  log::Histogram seconds{kCheckpointSecondsBuckets};  // each completed checkpoint's duration
  qmgr::v1::CheckpointMeta last;  // the last completed (before any: the one restart read)
  // The replay rate EstimatedRestartSeconds uses (measured, else assumed).
  double replay_bytes_per_second = 0;
};

class Checkpointer {
 public:
  // `last`: the meta of the checkpoint the store holds (restart read it).
  // Nothing starts until Start().
  Checkpointer(log::Log* log, Engine* engine, Store* store, CheckpointOptions options,
               qmgr::v1::CheckpointMeta last);
  // Stop()s.
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // Starts the trigger thread; `on_report` hears of each automatic checkpoint
  // and of failures (may be empty). `first`: a checkpoint the thread takes
  // at once (a restart's).
  void Start(std::function<void(const absl::StatusOr<CheckpointReport>&)> on_report,
             std::optional<Trigger> first = std::nullopt);
  void Stop();

  // Takes a checkpoint now (one at a time; a concurrent call waits).
  absl::StatusOr<CheckpointReport> Checkpoint(Trigger trigger);
  CheckpointStats stats() const;
  const CheckpointOptions& options() const { return options_; }

  // Emergency-restart estimate: log bytes since redo_lsn over the replay
  // rate (measured by the last restart, else assumed).
  double EstimatedRestartSeconds() const;
  // A restart measured this replay rate; it goes into the next meta.
  void SetReplayRate(double bytes_per_second);
  uint64_t checkpoint_number() const;
  log::Lsn redo_lsn() const;

 private:
  void TriggerLoop(std::function<void(const absl::StatusOr<CheckpointReport>&)> on_report,
                   std::optional<Trigger> first);
  absl::StatusOr<CheckpointReport> TakeCheckpoint(Trigger trigger)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(checkpoint_mu_);
  // RESOURCE_EXHAUSTED while the store's file system is short of room.
  absl::Status CheckStoreRoom() const;
  void Hook(Step step) const {
    if (options_.step_hook) options_.step_hook(step);
  }

  log::Log* const log_;
  Engine* const engine_;
  Store* const store_;
  const CheckpointOptions options_;

  absl::Mutex checkpoint_mu_;  // one checkpoint at a time
  mutable absl::Mutex mu_ ABSL_ACQUIRED_AFTER(checkpoint_mu_);
  qmgr::v1::CheckpointMeta last_ ABSL_GUARDED_BY(mu_);
  uint64_t last_batch_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_time_ ABSL_GUARDED_BY(mu_);
  // The log's next LSN after the last CHECKPOINT_END: the time trigger does
  // not checkpoint a log that has not moved since.
  log::Lsn quiet_lsn_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status failed_ ABSL_GUARDED_BY(mu_);
  uint64_t taken_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t failures_ ABSL_GUARDED_BY(mu_) = 0;
  log::Histogram seconds_ ABSL_GUARDED_BY(mu_){kCheckpointSecondsBuckets};
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace qmgr::checkpoint

#endif  // QMGR_CHECKPOINT_CHECKPOINTER_H_
