// qmgrd: the queue manager's gRPC server (docs/server.md).
//
// Restarts the queue manager (OpenQueueManager: restart/), serves
// QueueManager, Coordinator, Admin, grpc.health.v1 and server reflection, and
// on SIGTERM, SIGINT or Admin Shutdown stops: intake first, then open units
// and sessions' unacknowledged output get the grace period, the rest are
// backed out (units in doubt stay), calls still running are cancelled; then a
// normal shutdown takes the shutdown checkpoint and logs SHUTDOWN, an
// immediate one just closes the log.
//
// Exit codes: 0 after a shutdown; 64 bad flags; 3 the data directory cannot
// be used (another qmgrd holds it, unreadable log, ...); 4 cannot listen;
// 1 the log failed to close cleanly.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tools/qmgrd/coordination.h"
#include "tools/qmgrd/coordinator_service.h"
#include "tools/qmgrd/durable_completions.h"
#include "tools/qmgrd/operations.h"
#include "tools/qmgrd/queue_manager.h"
#include "tools/qmgrd/services.h"
#include "tools/qmgrd/worker_pool.h"

namespace {

using qmgr::server::ServerOptions;

constexpr int kExitOk = 0;
// Keepalive pings to clients: every 20 s, the connection dropped when one
// is not answered within 10 s.
constexpr int kKeepaliveTimeMs = 20000;
constexpr int kKeepaliveTimeoutMs = 10000;
constexpr int kExitCloseFailed = 1;
constexpr int kExitDataDir = 3;
constexpr int kExitListen = 4;
constexpr int kExitUsage = 64;

// How long calls still running at the end of a normal shutdown get before
// they are cancelled. By then intake is stopped and the units are backed
// out, so all that can still run is a durability wait (milliseconds) or a
// Get's current slice (OperationsOptions::get_wait_slice). gRPC's Shutdown
// waits out the whole deadline while clients keep connections open, so it
// is short.
constexpr absl::Duration kCallDrain = absl::Milliseconds(500);

// The first shutdown request wins; later ones (a second SIGTERM) are ignored.
class ShutdownRequest {
 public:
  void Request(qmgr::v1::ShutdownMode mode) {
    absl::MutexLock lock(&mu_);
    if (!mode_.has_value()) mode_ = mode;
  }
  qmgr::v1::ShutdownMode Wait() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &ShutdownRequest::Requested));
    return *mode_;
  }

 private:
  bool Requested() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return mode_.has_value(); }
  mutable absl::Mutex mu_;
  std::optional<qmgr::v1::ShutdownMode> mode_ ABSL_GUARDED_BY(mu_);
};

int ParseFlags(int argc, char** argv, ServerOptions* o) {
  CLI::App app{
      "qmgrd: the queue manager's gRPC server (QueueManager, Coordinator, Admin, health, "
      "reflection)"};
  app.set_config("--config", "", "Read flags from this TOML/INI file (command line wins)");
  app.add_option("--data-dir", o->data_dir,
                 "Data directory: the log in DIR/log, the store in DIR/store")
      ->capture_default_str();
  app.add_option("--listen", o->listen_address, "Address to serve on (HOST:PORT; port 0: any)")
      ->capture_default_str();
  // Names are resync qualifiers of units in doubt: a restart under others
  // while units are in doubt is refused unless --force.
  const auto name_bytes = [](const std::string& name) -> std::string {
    if (name.size() <= qmgr::kCoordinatorNameBytesMax) return "";
    return absl::StrCat("a name is at most ", qmgr::kCoordinatorNameBytesMax, " bytes");
  };
  app.add_option("--qmgr-name,--name", o->queue_manager_name,
                 "This queue manager's name: a resync qualifier for coordinators")
      ->check([name_bytes](const std::string& name) {
        return name.empty() ? std::string("may not be empty") : name_bytes(name);
      })
      ->capture_default_str();
  app.add_option("--group-name", o->group_name,
                 "Its group's name (empty: none): the other resync qualifier it answers to")
      ->check(name_bytes)
      ->capture_default_str();
  app.add_option("--memory-budget", o->memory_budget_bytes,
                 "Payload bytes held in memory before spilling to the store (0: no budget; "
                 "units like 512MiB accepted)")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  app.add_option("--log-segment-bytes", o->log_segment_bytes,
                 "Size of each preallocated log segment file (a multiple of 4 KiB)")
      ->transform(CLI::AsSizeValue(false))
      ->check(CLI::Range(qmgr::log::kSegmentBytesMin, qmgr::log::kSegmentBytesMax))
      ->capture_default_str();
  app.add_option("--max-message-bytes", o->max_message_bytes,
                 "Largest payload of a queue that does not set its own")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  app.add_option("--unit-messages-max", o->unit_messages_max,
                 "Messages one unit of work (or one EnqueueBatch) may hold")
      ->capture_default_str();
  app.add_option("--unit-bytes-max", o->unit_bytes_max,
                 "Bytes one unit's sync point (or one EnqueueBatch) may carry; also sets the "
                 "largest request accepted")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  int64_t lease_ms = absl::ToInt64Milliseconds(o->unit_lease);
  app.add_option("--unit-lease-ms", lease_ms,
                 "A unit of work with no call for this long is backed out")
      ->check(CLI::Range(int64_t{1}, int64_t{24 * 3600 * 1000}))
      ->capture_default_str();
  int64_t get_wait_max_ms = absl::ToInt64Milliseconds(o->get_wait_max);
  app.add_option("--get-wait-max-ms", get_wait_max_ms, "Longest wait a Get may ask for")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--io-threads", o->io_threads,
                 "Threads running engine calls that wait for the disk")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--wait-threads", o->wait_threads,
                 "Threads running Gets that wait for a message (one each)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--queued-calls-max", o->queued_calls_max,
                 "Calls that may queue for a thread before RESOURCE_EXHAUSTED")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--stream-window", o->stream_window,
                 "EnqueueStream: requests in progress per stream before reading pauses")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--grpc-memory-bytes", o->grpc_memory_bytes,
                 "Memory gRPC may use for its buffers across all connections")
      ->check(CLI::Range(uint64_t{16} << 20, uint64_t{1} << 40))
      ->capture_default_str();
  app.add_option("--stream-window-bytes", o->stream_window_bytes,
                 "EnqueueStream: payload bytes read ahead per stream before reading pauses")
      ->check(CLI::Range(uint64_t{1} << 10, uint64_t{1} << 32))
      ->capture_default_str();
  int64_t grace_ms = absl::ToInt64Milliseconds(o->shutdown_grace);
  app.add_option("--shutdown-grace-ms", grace_ms,
                 "Normal shutdown: how long open units get to end before being backed out")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--checkpoint-log-bytes", o->checkpoint_log_bytes,
                 "Checkpoint after this much log since the last one (0: never for this reason)")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  int64_t checkpoint_interval_s = absl::ToInt64Seconds(o->checkpoint_interval);
  app.add_option("--checkpoint-interval-s", checkpoint_interval_s,
                 "Checkpoint this often while the log moves (0: never for this reason)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--max-restart-seconds", o->max_restart_seconds,
                 "Checkpoint when the emergency-restart estimate passes this (0: off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_flag("--archive", o->archive,
               "Move retired log segments to DATA/archive instead of deleting them");
  app.add_flag("--cold", o->cold,
               "Cold start: discard every message and session (the LSN and ids keep running)");
  app.add_flag("--cold-keep-definitions", o->cold_keep_definitions,
               "With --cold: keep the queue definitions");
  app.add_flag("--force", o->force,
               "With --cold: discard units in doubt too; without: start under another "
               "--qmgr-name/--group-name although units are in doubt under the old ones");
  app.add_flag("--truncate-log-at-corruption", o->truncate_log_at_corruption,
               "Start although the log is corrupt: cut it at the damage and report the loss");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitUsage;
  }
  o->unit_lease = absl::Milliseconds(lease_ms);
  o->get_wait_max = absl::Milliseconds(get_wait_max_ms);
  o->shutdown_grace = absl::Milliseconds(grace_ms);
  o->checkpoint_interval = absl::Seconds(checkpoint_interval_s);
  return -1;
}

const char* ModeName(qmgr::v1::ShutdownMode mode) {
  return mode == qmgr::v1::IMMEDIATE ? "immediate" : "normal";
}

}  // namespace

int main(int argc, char** argv) {
  ServerOptions options;
  if (int code = ParseFlags(argc, argv, &options); code >= 0) return code;
  // Lock-order cycle detection costs every Mutex acquisition a graph lookup
  // (about 3% of qmgrd's CPU under load); the tests keep it on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // Blocked before any thread starts, so only the signal thread sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  absl::StatusOr<std::unique_ptr<qmgr::server::QueueManagerInstance>> qm =
      qmgr::server::OpenQueueManager(options);
  if (!qm.ok()) {
    std::cerr << "qmgrd: " << qm.status().message() << "\n";
    return kExitDataDir;
  }

  qmgr::server::WorkerPool io_pool(options.io_threads, options.queued_calls_max);
  qmgr::server::WorkerPool wait_pool(options.wait_threads, options.queued_calls_max);
  qmgr::server::OperationsOptions ops_options;
  ops_options.unit_lease = options.unit_lease;
  ops_options.get_wait_max = options.get_wait_max;
  ops_options.max_send_bytes = qmgr::server::MaxReceiveBytes(options);
  qmgr::server::Operations operations((*qm)->engine(), ops_options);
  qmgr::server::DurableCompletions completions((*qm)->engine());
  // Leaked: the signal thread may still hold it while the process exits.
  auto* shutdown = new ShutdownRequest;

  qmgr::server::CoordinationOptions coordination_options;
  coordination_options.qmgr_name = options.queue_manager_name;
  coordination_options.group_name = options.group_name;
  coordination_options.max_send_bytes = ops_options.max_send_bytes;
  coordination_options.progress = [](absl::string_view line) {
    std::cerr << absl::StrCat("qmgrd: ", line, "\n") << std::flush;
  };
  qmgr::server::Coordination coordination((*qm)->engine(), &operations,
                                          std::move(coordination_options));

  qmgr::server::ServiceContext context;
  context.operations = &operations;
  context.coordination = &coordination;
  context.io_pool = &io_pool;
  context.wait_pool = &wait_pool;
  context.completions = &completions;
  context.stream_window = options.stream_window;
  context.stream_window_bytes = options.stream_window_bytes;
  // Well inside what one record may carry, so that a group is refused for
  // its own messages, not for its size.
  context.group_messages_max = static_cast<int>(
      std::min<uint64_t>(64, std::max<uint64_t>(1, options.unit_messages_max / 2)));
  context.group_bytes_max = std::min<uint64_t>(1u << 20, options.unit_bytes_max / 2);
  context.checkpoint = (*qm)->checkpoint;
  context.request_shutdown = [shutdown](qmgr::v1::ShutdownMode mode) { shutdown->Request(mode); };
  qmgr::server::QueueManagerService queue_manager_service(&context);
  qmgr::server::AdminService admin_service(&context);
  qmgr::server::CoordinatorService coordinator_service(&context);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen_address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&queue_manager_service);
  builder.RegisterService(&admin_service);
  builder.RegisterService(&coordinator_service);
  const auto max_bytes =
      static_cast<int>(std::min<uint64_t>(qmgr::server::MaxReceiveBytes(options), INT32_MAX));
  builder.SetMaxReceiveMessageSize(max_bytes);
  builder.SetMaxSendMessageSize(max_bytes);
  // gRPC's own buffers (reads in progress on every connection) within a
  // bound: beyond it gRPC stops reading rather than growing without limit.
  grpc::ResourceQuota quota("qmgrd");
  quota.Resize(options.grpc_memory_bytes);
  builder.SetResourceQuota(quota);
  // A client whose host or network died sends nothing more: without pings a
  // stream (and the units it holds, which no lease ends) would wait forever.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "qmgrd: cannot listen on " << options.listen_address << "\n";
    return kExitListen;
  }
  // The server as a whole ("") and each service by its full name.
  server->GetHealthCheckService()->SetServingStatus(true);
  for (const char* service :
       {qmgr::v1::QueueManager::service_full_name(), qmgr::v1::Coordinator::service_full_name(),
        qmgr::v1::Admin::service_full_name()}) {
    server->GetHealthCheckService()->SetServingStatus(service, true);
  }
  const std::string host = options.listen_address.substr(0, options.listen_address.rfind(':'));
  // One write: the checkpointer's thread writes to stderr too, and tests
  // parse this line for the port.
  std::cerr << absl::StrCat("qmgrd: queue manager ", options.queue_manager_name, " listening on ",
                            host, ":", port, "\n")
            << std::flush;

  std::thread([stop_signals, shutdown] {
    int signal = 0;
    if (sigwait(&stop_signals, &signal) == 0) shutdown->Request(qmgr::v1::NORMAL);
  }).detach();

  const qmgr::v1::ShutdownMode mode = shutdown->Wait();
  std::cerr << "qmgrd: " << ModeName(mode) << " shutdown: intake stopped" << std::endl;
  operations.StopIntake();
  server->GetHealthCheckService()->SetServingStatus(false);
  if (mode == qmgr::v1::NORMAL) {
    const absl::Time grace_end = absl::Now() + options.shutdown_grace;
    while ((operations.LiveUnits() > 0 || operations.OutputsUnacknowledged() > 0) &&
           absl::Now() < grace_end) {
      absl::SleepFor(absl::Milliseconds(10));
    }
  }
  int backed_out = operations.BackoutAll(qmgr::v1::BACKOUT_SHUTDOWN);
  // Calls still running end here: streams are cancelled (their units backed
  // out as their callers are gone), waiting Gets stop within a slice.
  server->Shutdown(std::chrono::system_clock::now() + (mode == qmgr::v1::NORMAL
                                                           ? absl::ToChronoSeconds(kCallDrain)
                                                           : std::chrono::seconds(0)));
  io_pool.Stop();
  wait_pool.Stop();
  completions.Stop();
  // Units opened by calls that completed during the above.
  backed_out += operations.BackoutAll(qmgr::v1::BACKOUT_SHUTDOWN);
  std::cerr << "qmgrd: " << backed_out << " open unit(s) of work backed out" << std::endl;
  if (absl::Status s = (*qm)->Close(mode); !s.ok()) {
    std::cerr << "qmgrd: " << ModeName(mode) << " shutdown failed: " << s.message() << "\n";
    return kExitCloseFailed;
  }
  std::cerr << "qmgrd: stopped" << std::endl;
  return kExitOk;
}
