// qmgrd: the queue manager's gRPC server (docs/server.md).
//
// Restarts the queue manager (OpenQueueManager: restart/), serves
// QueueManager, Coordinator, Admin, grpc.health.v1 and server reflection
// (Admin also, or only, on --admin-listen), with the protection of
// docs/security.md (TLS, tokens, the authorization file, reloaded on SIGHUP),
// and on SIGTERM, SIGINT or Admin Shutdown stops: intake first, then open units
// and sessions' unacknowledged output get the grace period, the rest are
// backed out (units in doubt stay), calls still running are cancelled; then a
// normal shutdown takes the shutdown checkpoint and logs SHUTDOWN, an
// immediate one just closes the log.
//
// With --metrics-listen it also serves Prometheus metrics over HTTP
// (tools/qmgrd/metrics.h). Everything it reports goes to stderr through one
// path (tools/qmgrd/server_log.h): lines for people, key=value events for
// programs (docs/observability.md).
//
// Exit codes: 0 after a shutdown; 64 bad flags (a listener beyond loopback
// without protection, an unreadable or malformed security file); 3 the data directory cannot
// be used (another qmgrd holds it, unreadable log, ...); 4 cannot listen
// (gRPC or metrics); 1 the log failed to close cleanly.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tools/qmgrd/authorization.h"
#include "tools/qmgrd/coordination.h"
#include "tools/qmgrd/coordinator_service.h"
#include "tools/qmgrd/durable_completions.h"
#include "tools/qmgrd/listeners.h"
#include "tools/qmgrd/metrics.h"
#include "tools/qmgrd/operations.h"
#include "tools/qmgrd/queue_manager.h"
#include "tools/qmgrd/refusals.h"
#include "tools/qmgrd/server_log.h"
#include "tools/qmgrd/services.h"
#include "tools/qmgrd/status.h"
#include "tools/qmgrd/worker_pool.h"

namespace {

using qmgr::server::LogLine;
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

void AddSecurityFlags(CLI::App& app, qmgr::server::ListenerOptions* l) {
  app.add_option("--tls-cert", l->tls_cert_file, "TLS: this server's certificate chain (PEM)");
  app.add_option("--tls-key", l->tls_key_file, "TLS: its private key (PEM)");
  app.add_option("--tls-client-ca", l->tls_client_ca_file,
                 "mTLS: verify client certificates against this CA (PEM); a certificate's "
                 "subject CN is the caller's identity");
  app.add_flag("--tls-require-client-cert", l->tls_require_client_cert,
               "mTLS: refuse connections without a client certificate");
  app.add_option("--token-file", l->token_file,
                 "Tokens: lines 'TOKEN IDENTITY'; callers send 'authorization: Bearer TOKEN' "
                 "(reloaded on SIGHUP)");
  app.add_option("--authz-file", l->authz_file,
                 "Authorization: lines 'IDENTITY ROLE [PATTERN...]'; what it does not grant is "
                 "denied (reloaded on SIGHUP)");
  app.add_flag("--insecure", l->insecure,
               "Listen beyond loopback without TLS or tokens (every caller trusted)");
  app.add_option("--admin-listen", l->admin_listen,
                 "Serve Admin on this address too (unix:/path, mode 0600, or HOST:PORT); the "
                 "main listener then refuses Admin");
  app.add_flag("--admin-on-main", l->admin_on_main,
               "With --admin-listen: the main listener serves Admin as well");
  app.add_option("--connection-streams-max", l->connection_streams_max,
                 "Calls in progress at once on one connection (more wait in the client)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--stream-lookahead-bytes", l->stream_lookahead_bytes,
                 "HTTP/2 bytes one stream may receive ahead of its reader (0: gRPC's default)")
      ->transform(CLI::AsSizeValue(false))
      ->check(CLI::Range(0, 1 << 30))
      ->capture_default_str();
}

int ParseFlags(int argc, char** argv, ServerOptions* o, qmgr::server::ListenerOptions* l,
               std::string* metrics_listen) {
  CLI::App app{
      "qmgrd: the queue manager's gRPC server (QueueManager, Coordinator, Admin, health, "
      "reflection)"};
  app.set_config("--config", "", "Read flags from this TOML/INI file (command line wins)");
  app.add_option("--data-dir", o->data_dir,
                 "Data directory: the log in DIR/log, the store in DIR/store")
      ->capture_default_str();
  app.add_option("--listen", o->listen_address, "Address to serve on (HOST:PORT; port 0: any)")
      ->capture_default_str();
  app.add_option("--metrics-listen", *metrics_listen,
                 "Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any; empty: off)")
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
  app.add_option("--spill-limit", o->spill_limit_bytes,
                 "Payload bytes the spill store may hold beyond the memory budget; past it "
                 "(and 5/4 of the budget in memory) Enqueue answers RESOURCE_EXHAUSTED (0: no "
                 "limit; units like 4GiB accepted)")
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
  AddSecurityFlags(app, l);
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
  l->listen_address = o->listen_address;
  return -1;
}

// The listeners' protection, checked before anything starts: the refusal
// on stderr, or the warnings printed and the Security to use.
std::unique_ptr<qmgr::server::Security> CheckSecurity(const qmgr::server::ListenerOptions& l) {
  absl::StatusOr<std::vector<std::string>> warnings = qmgr::server::CheckListeners(l);
  if (!warnings.ok()) {
    LogLine(warnings.status().message());
    return nullptr;
  }
  for (const std::string& w : *warnings) LogLine(w);
  qmgr::server::SecurityOptions security;
  security.token_file = l.token_file;
  security.authz_file = l.authz_file;
  security.client_certificates = !l.tls_client_ca_file.empty();
  security.admin_unix_socket = qmgr::server::IsUnixSocket(l.admin_listen);
  security.log = [](absl::string_view line) { LogLine(line); };
  absl::StatusOr<std::unique_ptr<qmgr::server::Security>> created =
      qmgr::server::Security::Create(std::move(security));
  if (!created.ok()) {
    LogLine(created.status().message());
    return nullptr;
  }
  return *std::move(created);
}

const char* ModeName(qmgr::v1::ShutdownMode mode) {
  return mode == qmgr::v1::IMMEDIATE ? "immediate" : "normal";
}

}  // namespace

int main(int argc, char** argv) {
  ServerOptions options;
  qmgr::server::ListenerOptions listeners;
  std::string metrics_listen;
  if (int code = ParseFlags(argc, argv, &options, &listeners, &metrics_listen); code >= 0) {
    return code;
  }
  // Lock-order cycle detection costs every Mutex acquisition a graph lookup
  // (about 3% of qmgrd's CPU under load); the tests keep it on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // Blocked before any thread starts (gRPC starts its own when credentials
  // are made), so only the signal thread sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // Leaked: the signal thread reloads it until the process exits.
  qmgr::server::Security* security = CheckSecurity(listeners).release();
  if (security == nullptr) return kExitUsage;
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> main_credentials =
      qmgr::server::MainCredentials(listeners);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> admin_credentials =
      qmgr::server::AdminCredentials(listeners);
  for (const absl::Status& s : {main_credentials.status(), admin_credentials.status()}) {
    if (!s.ok()) {
      LogLine(s.message());
      return kExitUsage;
    }
  }
  // Lock-order cycle detection costs every Mutex acquisition a graph lookup
  // (about 3% of qmgrd's CPU under load); the tests keep it on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  absl::StatusOr<std::unique_ptr<qmgr::server::QueueManagerInstance>> qm =
      qmgr::server::OpenQueueManager(options);
  if (!qm.ok()) {
    LogLine(qm.status().message());
    return kExitDataDir;
  }

  qmgr::server::WorkerPool io_pool(options.io_threads, options.queued_calls_max);
  qmgr::server::WorkerPool wait_pool(options.wait_threads, options.queued_calls_max);
  qmgr::server::OperationsOptions ops_options;
  ops_options.unit_lease = options.unit_lease;
  ops_options.get_wait_max = options.get_wait_max;
  ops_options.max_send_bytes = qmgr::server::MaxReceiveBytes(options);
  ops_options.progress = [](absl::string_view line) { LogLine(line); };
  qmgr::server::Operations operations((*qm)->engine(), ops_options);
  qmgr::server::DurableCompletions completions((*qm)->engine());
  // Leaked: the signal thread may still hold it while the process exits.
  auto* shutdown = new ShutdownRequest;

  qmgr::server::CoordinationOptions coordination_options;
  coordination_options.qmgr_name = options.queue_manager_name;
  coordination_options.group_name = options.group_name;
  coordination_options.max_send_bytes = ops_options.max_send_bytes;
  coordination_options.progress = [](absl::string_view line) { LogLine(line); };
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
  const qmgr::server::QueueManagerInstance* instance = qm->get();
  context.status = [instance]() -> absl::StatusOr<qmgr::v1::StatusResponse> {
    return qmgr::server::QueueManagerStatus(*instance);
  };
  qmgr::server::Refusals refusals;
  context.refusals = &refusals;
  context.security = security;
  context.admin_only_on_admin_listener =
      !listeners.admin_listen.empty() && !listeners.admin_on_main;
  qmgr::server::QueueManagerService queue_manager_service(&context);
  qmgr::server::AdminService admin_service(&context, qmgr::server::Listener::kMain);
  qmgr::server::AdminService admin_listener_service(&context, qmgr::server::Listener::kAdmin);
  qmgr::server::CoordinatorService coordinator_service(&context);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ResourceQuota quota("qmgrd");
  quota.Resize(options.grpc_memory_bytes);
  const auto max_bytes =
      static_cast<int>(std::min<uint64_t>(qmgr::server::MaxReceiveBytes(options), INT32_MAX));
  // Both listeners' transport settings.
  const auto configure = [&](grpc::ServerBuilder& builder) {
    // Refusals are counted on every listener (refusals.h).
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
        interceptors;
    interceptors.push_back(qmgr::server::RefusalInterceptorFactory(&refusals));
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
    builder.SetMaxReceiveMessageSize(max_bytes);
    builder.SetMaxSendMessageSize(max_bytes);
    // gRPC's own buffers (reads in progress on every connection) within a
    // bound: beyond it gRPC stops reading rather than growing without limit.
    builder.SetResourceQuota(quota);
    // A client whose host or network died sends nothing more: without pings
    // a stream (and the units it holds, which no lease ends) would wait
    // forever.
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    // One connection cannot hold more calls than this, so one client
    // cannot starve the others of threads and memory.
    qmgr::server::ApplyConnectionLimits(listeners, &builder);
  };
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen_address, *main_credentials, &port);
  builder.RegisterService(&queue_manager_service);
  builder.RegisterService(&admin_service);
  builder.RegisterService(&coordinator_service);
  configure(builder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    LogLine(absl::StrCat("cannot listen on ", options.listen_address));
    return kExitListen;
  }
  std::unique_ptr<qmgr::server::MetricsServer> metrics;
  if (!metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<qmgr::server::MetricsServer>> started =
        qmgr::server::MetricsServer::Start(metrics_listen, instance, &refusals);
    if (!started.ok()) {
      LogLine(started.status().message());
      return kExitListen;
    }
    metrics = *std::move(started);
    // Tests parse this line for the port.
    LogLine(absl::StrCat("metrics on http://", metrics_listen.substr(0, metrics_listen.rfind(':')),
                         ":", metrics->port(), "/metrics"));
  }
  std::unique_ptr<grpc::Server> admin_server;
  std::string admin_address = listeners.admin_listen;
  if (!listeners.admin_listen.empty()) {
    grpc::ServerBuilder admin_builder;
    int admin_port = 0;
    admin_builder.AddListeningPort(listeners.admin_listen, *admin_credentials, &admin_port);
    admin_builder.RegisterService(&admin_listener_service);
    configure(admin_builder);
    admin_server = admin_builder.BuildAndStart();
    if (admin_server == nullptr || admin_port == 0) {
      LogLine(absl::StrCat("cannot listen on ", listeners.admin_listen, " (--admin-listen)"));
      return kExitListen;
    }
    if (qmgr::server::IsUnixSocket(admin_address)) {
      // The socket's mode is its protection: only this user (and root)
      // may connect.
      if (::chmod(qmgr::server::UnixSocketPath(admin_address).c_str(), 0600) != 0) {
        LogLine(absl::StrCat("cannot restrict ", admin_address, " to mode 0600"));
        return kExitListen;
      }
    } else {
      admin_address =
          absl::StrCat(admin_address.substr(0, admin_address.rfind(':')), ":", admin_port);
    }
  }
  // The server as a whole ("") and each service by its full name.
  server->GetHealthCheckService()->SetServingStatus(true);
  for (const char* service :
       {qmgr::v1::QueueManager::service_full_name(), qmgr::v1::Coordinator::service_full_name(),
        qmgr::v1::Admin::service_full_name()}) {
    server->GetHealthCheckService()->SetServingStatus(service, true);
  }
  if (admin_server != nullptr) admin_server->GetHealthCheckService()->SetServingStatus(true);
  const std::string host = options.listen_address.substr(0, options.listen_address.rfind(':'));
  // Tests parse this line for the port.
  LogLine(absl::StrCat("queue manager ", options.queue_manager_name, " listening on ", host, ":",
                       port));
  if (admin_server != nullptr) LogLine(absl::StrCat("Admin served on ", admin_address));

  std::thread([stop_signals, shutdown, security] {
    while (true) {
      int signal = 0;
      if (sigwait(&stop_signals, &signal) != 0) return;
      if (signal != SIGHUP) {
        shutdown->Request(qmgr::v1::NORMAL);
        continue;
      }
      if (absl::Status s = security->Reload(); !s.ok()) {
        LogLine(absl::StrCat("SIGHUP: not reloaded, the previous rules stay: ", s.message()));
      }
    }
  }).detach();

  const qmgr::v1::ShutdownMode mode = shutdown->Wait();
  LogLine(absl::StrCat(ModeName(mode), " shutdown: intake stopped"));
  operations.StopIntake();
  server->GetHealthCheckService()->SetServingStatus(false);
  if (admin_server != nullptr) admin_server->GetHealthCheckService()->SetServingStatus(false);
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
  const auto drain_end =
      std::chrono::system_clock::now() +
      (mode == qmgr::v1::NORMAL ? absl::ToChronoSeconds(kCallDrain) : std::chrono::seconds(0));
  if (admin_server != nullptr) admin_server->Shutdown(drain_end);
  server->Shutdown(drain_end);
  io_pool.Stop();
  wait_pool.Stop();
  completions.Stop();
  // Units opened by calls that completed during the above.
  backed_out += operations.BackoutAll(qmgr::v1::BACKOUT_SHUTDOWN);
  LogLine(absl::StrCat(backed_out, " open unit(s) of work backed out"));
  metrics.reset();  // a scrape reads the engine, which Close ends
  if (absl::Status s = (*qm)->Close(mode); !s.ok()) {
    LogLine(absl::StrCat(ModeName(mode), " shutdown failed: ", s.message()));
    return kExitCloseFailed;
  }
  LogLine("stopped");
  return kExitOk;
}
