// qmgrctl: the queue manager's admin tool. Offline verbs read a data
// directory read-only; online verbs talk to qmgrd's Admin service.
#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "log/segment.h"
#include "tools/admin_commands.h"
#include "tools/indoubt_commands.h"
#include "tools/log_commands.h"

namespace {

// Online verbs: --server and --connect-timeout-ms.
struct ServerFlags {
  std::string address = "127.0.0.1:7430";
  int connect_timeout_ms = 3000;
  void AddTo(CLI::App* verb) {
    verb->add_option("--server", address, "qmgrd's address (HOST:PORT)")->capture_default_str();
    verb->add_option("--connect-timeout-ms", connect_timeout_ms, "How long to try to connect")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
  }
  // Null (the reason on stderr) when no qmgrd answers.
  std::unique_ptr<qmgr::client::Client> Connect() const {
    qmgr::client::ClientOptions options;
    options.target = address;
    options.connect_timeout = absl::Milliseconds(connect_timeout_ms);
    absl::StatusOr<std::unique_ptr<qmgr::client::Client>> client =
        qmgr::client::Client::Connect(options);
    if (!client.ok()) {
      std::cerr << "qmgrctl: cannot reach qmgrd at " << address << ": " << client.status().message()
                << "\n";
      return nullptr;
    }
    return *std::move(client);
  }
};

// CLI11 reads "-1" into an unsigned option as its two's complement.
const CLI::Validator kWholeNumber(
    [](std::string& value) -> std::string {
      if (!value.empty() && std::all_of(value.begin(), value.end(), absl::ascii_isdigit)) return "";
      return "'" + value + "' is not a whole number (0, 1, 2, ...)";
    },
    "N");

void AddQueueAttributeOptions(CLI::App* verb, qmgr::tools::QueueAttributeFlags* flags) {
  verb->add_option("--class", flags->message_class,
                   "Default message class: RECOVERABLE, RESPONSE, CONVERSATIONAL, FASTPATH, "
                   "IRRECOVERABLE");
  verb->add_option("--max-depth", flags->max_depth, "Most messages held (0: no limit)")
      ->check(kWholeNumber);
  verb->add_option("--max-message-bytes", flags->max_message_bytes,
                   "Largest payload (0: qmgrd's --max-message-bytes)")
      ->check(kWholeNumber);
  verb->add_option("--backout-threshold", flags->backout_threshold,
                   "Backouts after which a message moves to the backout queue (0: never)")
      ->check(kWholeNumber);
  verb->add_option("--backout-queue", flags->backout_queue, "Where poison messages go");
  verb->add_option("--output-of-session", flags->output_of_session,
                   "Make it this session's output queue");
}

}  // namespace

int main(int argc, char** argv) {
  using namespace qmgr::tools;
  CLI::App app{"qmgrctl: administer an IMS-style queue manager"};
  app.require_subcommand(1);
  std::string data_dir = "./qmgr-data";
  std::string log_dir;
  app.add_option("--data-dir", data_dir, "The queue manager's data directory")
      ->capture_default_str();
  app.add_option("--log-dir", log_dir, "The log directory (default: DATA_DIR/log)");

  CLI::App* log_cmd = app.add_subcommand("log", "Offline, read-only views of the system log");
  log_cmd->require_subcommand(1);

  LogPrintOptions print;
  std::vector<std::string> type_names;
  CLI::App* print_cmd = log_cmd->add_subcommand("print", "Print records, decoded");
  print_cmd->add_option("--from", print.from_lsn, "First LSN to print");
  print_cmd->add_option("--to", print.to_lsn, "Last LSN to print (inclusive)");
  print_cmd->add_option("--type", type_names, "Record types (name or number), comma-separated")
      ->delimiter(',');
  print_cmd->add_flag("--json", print.json, "One JSON object per record");
  print_cmd->add_flag("--full", print.full, "Show bytes fields whole, not abbreviated");

  bool json = false;
  CLI::App* stats_cmd = log_cmd->add_subcommand("stats", "Records and bytes per type, segments");
  stats_cmd->add_flag("--json", json, "JSON output");
  CLI::App* verify_cmd = log_cmd->add_subcommand(
      "verify", "Check every checksum and the LSN chain (exit 0 clean, 1 torn tail, 2 corrupt)");
  verify_cmd->add_flag("--json", json, "JSON output");

  ServerFlags server;
  CLI::App* checkpoint_cmd =
      app.add_subcommand("checkpoint", "Ask qmgrd for a checkpoint now (Admin.Checkpoint)");
  server.AddTo(checkpoint_cmd);

  CLI::App* indoubt_cmd =
      app.add_subcommand("indoubt", "Units of work in doubt (two-phase commit) on a running qmgrd");
  indoubt_cmd->require_subcommand(1);
  InDoubtListOptions list;
  CLI::App* list_cmd = indoubt_cmd->add_subcommand(
      "list", "Units in doubt, oldest first: coordinator, qualifier, XID, age, what they lock");
  list_cmd->add_option("--coordinator", list.coordinator, "Only this coordinator's");
  list_cmd->add_option("--qualifier", list.qualifier, "Only those under this resync qualifier");
  server.AddTo(list_cmd);
  InDoubtResolveOptions resolve;
  std::string xid_hex;
  bool backout = false;
  CLI::App* resolve_cmd = indoubt_cmd->add_subcommand(
      "resolve", "Decide a unit in doubt by hand (its coordinator cannot come back)");
  resolve_cmd->add_option("XID", xid_hex, "The unit's XID in hex, as `indoubt list` shows it")
      ->required();
  CLI::Option* commit_flag =
      resolve_cmd->add_flag("--commit", resolve.commit, "Commit: consume, make inserts visible");
  CLI::Option* backout_flag = resolve_cmd->add_flag(
      "--backout", backout, "Back out: return its messages (backout count + 1), drop inserts");
  commit_flag->excludes(backout_flag);
  resolve_cmd->add_option("--coordinator", resolve.coordinator,
                          "The coordinator, when several have units in doubt with this XID");
  resolve_cmd->add_option("--qualifier", resolve.qualifier, "Its resync qualifier, likewise");
  resolve_cmd->add_option("--operator", resolve.operator_name, "Who decides (recorded)")
      ->capture_default_str();
  server.AddTo(resolve_cmd);

  CLI::App* display_cmd = app.add_subcommand("display", "What a running qmgrd holds (/DISPLAY)");
  display_cmd->require_subcommand(1);
  std::vector<std::string> names;
  CLI::App* display_queues_cmd = display_cmd->add_subcommand(
      "queues", "Queues: depth, taken, attributes, inhibit state; memory and open units");
  display_queues_cmd->add_option("NAME", names, "Only these queues");
  display_queues_cmd->add_flag("--json", json, "A qmgr.v1.DisplayQueuesResponse in JSON");
  server.AddTo(display_queues_cmd);
  CLI::App* display_sessions_cmd = display_cmd->add_subcommand(
      "sessions", "Sessions: sequence numbers, acknowledgement, resync, output queue");
  display_sessions_cmd->add_option("NAME", names, "Only these sessions");
  display_sessions_cmd->add_flag("--json", json, "A qmgr.v1.DisplaySessionsResponse in JSON");
  server.AddTo(display_sessions_cmd);

  CLI::App* queue_cmd = app.add_subcommand("queue", "Define, alter, delete, stop, start a queue");
  queue_cmd->require_subcommand(1);
  std::string queue;
  QueueAttributeFlags queue_flags;
  CLI::App* define_cmd = queue_cmd->add_subcommand("define", "Define a queue");
  CLI::App* alter_cmd =
      queue_cmd->add_subcommand("alter", "Change the attributes given, keep the others");
  for (CLI::App* verb : {define_cmd, alter_cmd}) AddQueueAttributeOptions(verb, &queue_flags);
  bool purge = false;
  CLI::App* delete_cmd = queue_cmd->add_subcommand("delete", "Delete a queue");
  delete_cmd->add_flag("--purge", purge, "Delete its messages too (else refused unless empty)");
  InhibitChange inhibit;
  bool put_only = false;
  bool get_only = false;
  CLI::App* stop_cmd =
      queue_cmd->add_subcommand("stop", "Inhibit puts and/or gets (both unless one is named)");
  CLI::App* start_cmd =
      queue_cmd->add_subcommand("start", "Allow puts and/or gets (both unless one is named)");
  for (CLI::App* verb : {stop_cmd, start_cmd}) {
    verb->add_flag("--put", put_only, "Only puts");
    verb->add_flag("--get", get_only, "Only gets");
  }
  for (CLI::App* verb : {define_cmd, alter_cmd, delete_cmd, stop_cmd, start_cmd}) {
    verb->add_option("NAME", queue, "The queue")->required();
    verb->add_flag("--json", json, "The request qmgrd accepted, in JSON");
    server.AddTo(verb);
  }

  bool immediate = false;
  CLI::App* shutdown_cmd = app.add_subcommand("shutdown", "Shut qmgrd down (Admin.Shutdown)");
  shutdown_cmd->add_flag("--immediate", immediate,
                         "Back out every open unit now instead of granting the grace period");
  shutdown_cmd->add_flag("--json", json, "The request qmgrd accepted, in JSON");
  server.AddTo(shutdown_cmd);

  std::string from_session;
  std::string to_session;
  bool force = false;
  CLI::App* assign_cmd = app.add_subcommand(
      "assign", "Move a session's queued output to another session's output queue (/ASSIGN)");
  assign_cmd->add_option("SESSION", from_session, "The session whose output moves")->required();
  assign_cmd->add_option("--to", to_session, "The session it moves to")->required();
  assign_cmd->add_flag("--force", force,
                       "Also move output sent but not acknowledged (marked possibly duplicate)");
  assign_cmd->add_flag("--json", json, "A qmgr.v1.AssignResponse in JSON");
  server.AddTo(assign_cmd);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitUsage;
  }
  for (const std::string& name : type_names) {
    const uint8_t type = RecordTypeByName(name);
    if (type == 0) {
      std::cerr << "qmgrctl: unknown record type '" << name << "'\n";
      return kExitUsage;
    }
    print.types.push_back(type);
  }
  if (print.from_lsn > print.to_lsn) {
    std::cerr << "qmgrctl: --from " << print.from_lsn << " is beyond --to " << print.to_lsn << "\n";
    return kExitUsage;
  }
  if (log_dir.empty()) log_dir = qmgr::log::JoinPath(data_dir, "log");

  if (resolve_cmd->parsed()) {
    if (resolve.commit == backout) {
      std::cerr << "qmgrctl: indoubt resolve needs --commit or --backout\n";
      return kExitUsage;
    }
    absl::StatusOr<std::string> xid = ParseXidHex(xid_hex);
    if (!xid.ok()) {
      std::cerr << "qmgrctl: " << xid.status().message() << "\n";
      return kExitUsage;
    }
    resolve.xid = *std::move(xid);
  }
  if (queue_flags.message_class.has_value()) {
    if (absl::Status s = MessageClassByName(*queue_flags.message_class).status(); !s.ok()) {
      std::cerr << "qmgrctl: " << s.message() << "\n";
      return kExitUsage;
    }
  }
  if (put_only || get_only) {
    inhibit.put = put_only;
    inhibit.get = get_only;
  }
  inhibit.inhibit = stop_cmd->parsed();
  const bool admin_verb = display_queues_cmd->parsed() || display_sessions_cmd->parsed() ||
                          define_cmd->parsed() || alter_cmd->parsed() || delete_cmd->parsed() ||
                          stop_cmd->parsed() || start_cmd->parsed() || shutdown_cmd->parsed() ||
                          assign_cmd->parsed();
  if (admin_verb || checkpoint_cmd->parsed() || list_cmd->parsed() || resolve_cmd->parsed()) {
    std::unique_ptr<qmgr::client::Client> client = server.Connect();
    if (client == nullptr) return kExitUnreachable;
    std::ostream& out = std::cout;
    std::ostream& err = std::cerr;
    if (display_queues_cmd->parsed()) return DisplayQueues(*client, names, json, out, err);
    if (display_sessions_cmd->parsed()) return DisplaySessions(*client, names, json, out, err);
    if (define_cmd->parsed()) return QueueDefine(*client, queue, queue_flags, json, out, err);
    if (alter_cmd->parsed()) return QueueAlter(*client, queue, queue_flags, json, out, err);
    if (delete_cmd->parsed()) return QueueDelete(*client, queue, purge, json, out, err);
    if (stop_cmd->parsed() || start_cmd->parsed()) {
      return QueueInhibit(*client, queue, inhibit, json, out, err);
    }
    if (shutdown_cmd->parsed()) return Shutdown(*client, immediate, json, out, err);
    if (assign_cmd->parsed())
      return Assign(*client, from_session, to_session, force, json, out, err);
    if (list_cmd->parsed()) return InDoubtList(*client, list, std::cout, std::cerr);
    if (resolve_cmd->parsed()) return InDoubtResolve(*client, resolve, std::cout, std::cerr);
    qmgr::v1::CheckpointRequest request;
    qmgr::v1::CheckpointResponse response;
    const grpc::Status status =
        client->admin()->Checkpoint(client->NewContext().get(), request, &response);
    if (!status.ok()) {
      std::cerr << "qmgrctl: checkpoint refused: " << status.error_message() << "\n";
      return kExitRefused;
    }
    std::cout << "checkpoint " << response.checkpoint_number() << " taken, redo LSN "
              << response.redo_lsn() << "\n";
    return kExitOk;
  }
  if (print_cmd->parsed()) return LogPrint(log_dir, print, std::cout, std::cerr);
  if (stats_cmd->parsed()) return LogStats(log_dir, json, std::cout, std::cerr);
  if (verify_cmd->parsed()) return LogVerify(log_dir, json, std::cout, std::cerr);
  return kExitUsage;
}
