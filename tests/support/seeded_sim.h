// The seeded crash simulation (RELIABILITY.md): one thread drives the queue
// manager in process, on FaultFileSystem (the log) and FaultRocksFileSystem
// (the store) with a ManualClock, through a random mix of every operation:
// enqueues of every class and batches, Get/Insert/SyncPoint/Backout, units of
// a coordinator with Prepare and outcomes, a session's numbered input
// (recoverable and deferred), output, acknowledgement and resync, explicit
// checkpoints, segment switches (small segments) and idle timeouts (the
// clock jumps, the reaper runs).
//
// At random points it crashes: in the middle of an operation (its group
// commit held at the segment's fdatasync), in the middle of a checkpoint (at
// one of its steps), or between operations. The log's file system then keeps
// a random subset of the unsynced blocks, one of them torn at a random byte
// (or another CrashMode), and forgets the files created since their
// directory's last sync; the store drops what it never synced. The queue
// manager restarts; the checker (crash_workload.h) holds it to everything
// acknowledged before, and the session's client resynchronizes and checks
// that its input counts exactly once and that every output it sees a
// second time is flagged possibly duplicate.
//
// Every random choice comes from the seed, and the single driver thread
// makes each operation's outcome a function of it: the trace (operations,
// answers, crash points, what each restart found) hashes the same for the
// same seed.
#ifndef QMGR_TESTS_SUPPORT_SEEDED_SIM_H_
#define QMGR_TESTS_SUPPORT_SEEDED_SIM_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace qmgr::testing {

struct SimResult;

struct SimOptions {
  uint64_t seed = 1;
  int crashes = 200;
  // Operations between two crashes: uniform in [1, ops_per_life_max].
  int ops_per_life_max = 40;
  // A directory of the real file system for the store's files (the log
  // lives in memory).
  std::string dir;
  // From this crash on (-1: never) the log's fdatasync lies: it returns OK
  // and keeps nothing. For proving that the checks see a loss.
  int lying_fsync_from_crash = -1;
  // Hears every trace line (may be empty).
  std::function<void(absl::string_view line)> trace;
  // Hears the figures so far every `progress_every` crash points (0: never).
  int progress_every = 0;
  std::function<void(const SimResult& so_far)> progress;
};

struct SimResult {
  uint64_t seed = 0;
  uint64_t trace_hash = 0;  // FNV-1a over the trace lines
  int crash_points = 0;
  std::map<std::string, int> crash_kinds;  // mid-operation, mid-checkpoint, between
  std::map<std::string, int> crash_modes;  // what the log's disk kept
  uint64_t operations = 0;
  uint64_t events = 0;            // acknowledgements the model recorded
  uint64_t invariant_checks = 0;  // restarts checked against the model
  uint64_t checkpoints = 0;
  uint64_t outputs_received = 0;
  uint64_t inputs_resent = 0;
  // Messages on each queue at the last check: what a check costs grows
  // with them.
  std::map<std::string, int> queued_at_last_check;
  // Every invariant broken at the first check that failed (the run stops
  // there), each line prefixed with the crash number; empty: all held.
  std::vector<std::string> broken;
  std::string Summary() const;  // one line of the figures
};

SimResult RunSeededSimulation(const SimOptions& options);

}  // namespace qmgr::testing

#endif  // QMGR_TESTS_SUPPORT_SEEDED_SIM_H_
