// What qmgrd serves: the log, the spill store and the engine over them, and
// the one function that opens them (OpenQueueManager). Restart from store +
// log (restart/) replaces the body of OpenQueueManager; nothing else in
// qmgrd knows how the engine came to be.
#ifndef QMGR_TOOLS_QMGRD_QUEUE_MANAGER_H_
#define QMGR_TOOLS_QMGRD_QUEUE_MANAGER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "log/log.h"
#include "qmgr/engine.h"
#include "qmgr/spill_store.h"

namespace qmgr::server {

// Everything qmgrd is told on its command line (tools/qmgrd/qmgrd.cc
// documents each flag; docs/server.md explains the bounds).
struct ServerOptions {
  std::string data_dir = "./qmgr-data";
  std::string listen_address = "127.0.0.1:7430";
  std::string queue_manager_name = "QM1";
  uint64_t memory_budget_bytes = 1ull << 30;
  // Size of each log segment file (LogOptions::segment_bytes).
  uint64_t log_segment_bytes = log::kSegmentBytesDefault;
  // Engine limits (EngineOptions).
  uint64_t max_message_bytes = 4u << 20;
  uint64_t unit_messages_max = 10000;
  uint64_t unit_bytes_max = 8u << 20;
  // A unit with no call for this long is backed out (the lease of units held
  // by unary calls; also applies to stream-held units, see docs/server.md).
  absl::Duration unit_lease = absl::Seconds(60);
  // Threads that run engine calls waiting for durability, and threads that
  // run Gets waiting for a message; and how many calls may queue for either.
  int io_threads = 32;
  int wait_threads = 64;
  int queued_calls_max = 4096;
  // The longest a Get may wait for a message (a longer wait_ms is cut).
  absl::Duration get_wait_max = absl::Seconds(60);
  // EnqueueStream: requests read ahead of their answers, per stream.
  int stream_window = 64;
  // Normal shutdown: how long open units get to end before being backed out.
  absl::Duration shutdown_grace = absl::Seconds(10);
};

// The largest gRPC message qmgrd accepts: an EnqueueBatch carries at most
// unit_bytes_max of record, plus protobuf framing per message.
uint64_t MaxReceiveBytes(const ServerOptions& options);

struct CheckpointInfo {
  uint64_t checkpoint_number = 0;
  uint64_t redo_lsn = 0;
};

// Owns the log, the spill store and the engine, destroyed in that reverse
// order. Not thread-safe itself; the engine and log are.
class QueueManagerInstance {
 public:
  QueueManagerInstance(std::unique_ptr<log::Log> log, std::unique_ptr<SpillStore> spill,
                       std::unique_ptr<Engine> engine);
  // Close()s.
  ~QueueManagerInstance();
  QueueManagerInstance(const QueueManagerInstance&) = delete;
  QueueManagerInstance& operator=(const QueueManagerInstance&) = delete;

  Engine* engine() const { return engine_.get(); }
  log::Log* log() const { return log_.get(); }

  // Takes a checkpoint (Admin Checkpoint). Empty until qmgrd starts through
  // restart/ (Checkpointer::Checkpoint(Trigger::kRequested));
  // the Admin service then answers UNIMPLEMENTED.
  std::function<absl::StatusOr<CheckpointInfo>()> checkpoint;

  // Destroys the engine (REQUIRES: no call into it is running or will come),
  // then closes the log: every appended record is durable once it returns OK.
  absl::Status Close();

 private:
  std::unique_ptr<log::Log> log_;
  std::unique_ptr<SpillStore> spill_;
  std::unique_ptr<Engine> engine_;
  bool closed_ = false;
  absl::Status close_status_;
};

// Opens <data>/log (creating it, and the data directory, if missing; the log
// takes a flock on <data>/log/LOCK, so a second qmgrd on the same directory
// is refused), the spill store at <data>/store, and builds the engine.
// Progress goes to stderr.
//
// It does not call restart::Restart yet, so it is a cold start only: a log that already holds
// records is refused (FailedPrecondition), because an engine built over it
// would not see its messages and would reuse its message ids.
absl::StatusOr<std::unique_ptr<QueueManagerInstance>> OpenQueueManager(
    const ServerOptions& options);

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_QUEUE_MANAGER_H_
