// What qmgrd serves: the queue manager that restart/ brings back from the
// store and the log, and the one function that opens it (OpenQueueManager);
// nothing else in qmgrd knows how the engine came to be.
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
#include "qmgr/v1/qmgr.pb.h"
#include "restart/restart.h"

namespace qmgr::server {

// Everything qmgrd is told on its command line (tools/qmgrd/qmgrd.cc
// documents each flag; docs/server.md explains the bounds).
struct ServerOptions {
  std::string data_dir = "./qmgr-data";
  std::string listen_address = "127.0.0.1:7430";
  // This queue manager's name and its group's (empty: none): the resync
  // qualifiers coordinators connect with (docs/in-doubt.md).
  std::string queue_manager_name = "QM1";
  std::string group_name;
  uint64_t memory_budget_bytes = 1ull << 30;
  uint64_t spill_limit_bytes = 16ull << 30;  // EngineOptions::spill_limit_bytes
  // Size of each log segment file (LogOptions::segment_bytes).
  uint64_t log_segment_bytes = log::kSegmentBytesDefault;
  // Engine limits (EngineOptions).
  uint64_t max_message_bytes = 4u << 20;
  uint64_t unit_messages_max = 10000;
  uint64_t unit_bytes_max = 8u << 20;
  // A unit with no call for this long is backed out (the lease of units held
  // by unary calls; a stream's units live as long as the stream).
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
  uint64_t stream_window_bytes = 8u << 20;
  uint64_t grpc_memory_bytes = 512u << 20;
  // Normal shutdown: how long open units get to end before being backed out.
  absl::Duration shutdown_grace = absl::Seconds(10);
  // Checkpoint triggers (checkpoint::CheckpointOptions; 0 turns one off).
  uint64_t checkpoint_log_bytes = 64ull << 20;
  absl::Duration checkpoint_interval = absl::Seconds(60);
  double max_restart_seconds = 10;
  // Retired log segments go to DATA/archive instead of being deleted.
  bool archive = false;
  // Restart (restart::RestartOptions).
  bool cold = false;
  bool cold_keep_definitions = false;
  // With cold: discard units in doubt; or start under changed names while
  // units are in doubt.
  bool force = false;
  bool truncate_log_at_corruption = false;
};

// The largest gRPC message qmgrd accepts: an EnqueueBatch carries at most
// unit_bytes_max of record, plus protobuf framing per message.
uint64_t MaxReceiveBytes(const ServerOptions& options);

struct CheckpointInfo {
  uint64_t checkpoint_number = 0;
  uint64_t redo_lsn = 0;
};

// The restarted queue manager (store, log, engine, checkpointer). Not
// thread-safe itself; the engine and the log are.
class QueueManagerInstance {
 public:
  // `restart_began`: when OpenQueueManager called restart.
  QueueManagerInstance(std::unique_ptr<restart::QueueManager> qm, const ServerOptions& options,
                       absl::Time restart_began);
  // Close(IMMEDIATE)s.
  ~QueueManagerInstance();
  QueueManagerInstance(const QueueManagerInstance&) = delete;
  QueueManagerInstance& operator=(const QueueManagerInstance&) = delete;

  Engine* engine() const { return qm_->engine(); }
  log::Log* log() const { return qm_->log(); }
  checkpoint::Checkpointer* checkpointer() const { return qm_->checkpointer(); }
  const restart::RestartReport& restart_report() const { return qm_->restart_report(); }
  absl::Time restart_began() const { return restart_began_; }
  // The options it was opened with (names, data directory, log segment size).
  const ServerOptions& options() const { return options_; }
  // The restart's emergency-restart estimate, for the admin tool.
  double EstimatedRestartSeconds() const { return qm_->checkpointer()->EstimatedRestartSeconds(); }

  // Takes a checkpoint (Admin Checkpoint).
  std::function<absl::StatusOr<CheckpointInfo>()> checkpoint;

  // REQUIRES: no call into the engine is running or will come. NORMAL: the
  // shutdown checkpoint and SHUTDOWN (the next restart is a normal one).
  // IMMEDIATE: the log is closed without them (the next restart is an
  // emergency restart; nothing acknowledged is lost either way).
  absl::Status Close(qmgr::v1::ShutdownMode mode);

 private:
  std::unique_ptr<restart::QueueManager> qm_;
  const ServerOptions options_;
  const absl::Time restart_began_;
  bool closed_ = false;
  absl::Status close_status_;
};

// Restarts the queue manager in options.data_dir (created with its parents
// if missing): restart::Restart, its progress and summary on stderr, with a
// restart.phase event per step and restart.done at the end; from then on a
// checkpoint.done (or checkpoint.failed) event per checkpoint. A second
// qmgrd on the same directory is refused.
absl::StatusOr<std::unique_ptr<QueueManagerInstance>> OpenQueueManager(
    const ServerOptions& options);

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_QUEUE_MANAGER_H_
