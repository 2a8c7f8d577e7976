// qmgrctl: the queue manager's admin tool. Offline verbs read a data
// directory read-only; online verbs talk to qmgrd's Admin service.
#include <algorithm>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/client.h"
#include "log/segment.h"
#include "tools/admin_commands.h"
#include "tools/explain_command.h"
#include "tools/indoubt_commands.h"
#include "tools/log_commands.h"
#include "tools/status_command.h"

namespace {

using namespace qmgr::tools;

// Online verbs: --server, --connect-timeout-ms and the credentials
// (docs/security.md).
struct ServerFlags {
  std::string address = "127.0.0.1:7430";
  int connect_timeout_ms = 3000;
  qmgr::client::Credentials credentials;
  std::string token_file;
  void AddTo(CLI::App* verb) {
    verb->add_option("--server", address,
                     "qmgrd's address (HOST:PORT, or unix:/path of its --admin-listen)")
        ->capture_default_str();
    verb->add_option("--connect-timeout-ms", connect_timeout_ms, "How long to try to connect")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    verb->add_option("--tls-ca", credentials.tls_ca_file,
                     "TLS: the CA certificate (PEM) that signed qmgrd's certificate");
    verb->add_option("--tls-cert", credentials.tls_cert_file,
                     "mTLS: this operator's certificate (PEM)");
    verb->add_option("--tls-key", credentials.tls_key_file, "mTLS: its private key (PEM)");
    verb->add_option("--tls-server-name", credentials.tls_server_name,
                     "TLS: the name to expect in qmgrd's certificate (default: --server's host)");
    verb->add_option("--token-file", token_file,
                     "A file whose first line is this operator's token (sent as 'authorization: "
                     "Bearer TOKEN')");
  }
  // Null (the reason on stderr) when no qmgrd answers.
  std::unique_ptr<qmgr::client::Client> Connect() const {
    qmgr::client::ClientOptions options;
    options.target = address;
    options.connect_timeout = absl::Milliseconds(connect_timeout_ms);
    options.credentials = credentials;
    if (!token_file.empty()) {
      std::ifstream in(token_file);
      if (!in || !std::getline(in, options.credentials.token) ||
          absl::StripAsciiWhitespace(options.credentials.token).empty()) {
        std::cerr << "qmgrctl: cannot read a token from " << token_file << "\n";
        return nullptr;
      }
      options.credentials.token =
          std::string(absl::StripAsciiWhitespace(options.credentials.token));
    }
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

void AddQueueAttributeOptions(CLI::App* verb, QueueAttributeFlags* flags) {
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

// The online display and operation verbs (tools/admin_commands.h): their
// options, and the run of the one parsed.
class AdminVerbs {
 public:
  void AddTo(CLI::App* app, ServerFlags* server) {
    CLI::App* display = app->add_subcommand("display", "What a running qmgrd holds (/DISPLAY)");
    display->require_subcommand(1);
    display_queues_ = display->add_subcommand(
        "queues", "Queues: depth, taken, attributes, inhibit state; memory and open units");
    display_queues_->add_option("NAME", names_, "Only these queues");
    display_queues_->add_flag("--json", json_, "A qmgr.v1.DisplayQueuesResponse in JSON");
    display_sessions_ = display->add_subcommand(
        "sessions", "Sessions: sequence numbers, acknowledgement, resync, output queue");
    display_sessions_->add_option("NAME", names_, "Only these sessions");
    display_sessions_->add_flag("--json", json_, "A qmgr.v1.DisplaySessionsResponse in JSON");
    display_uow_ = display->add_subcommand(
        "uow", "Open units of work: owner, age, idle time, messages held, in doubt");
    display_uow_->add_flag("--json", json_, "A qmgr.v1.DisplayUnitsResponse in JSON");

    CLI::App* queue = app->add_subcommand("queue", "Define, alter, delete, stop, start a queue");
    queue->require_subcommand(1);
    define_ = queue->add_subcommand("define", "Define a queue");
    alter_ = queue->add_subcommand("alter", "Change the attributes given, keep the others");
    for (CLI::App* verb : {define_, alter_}) AddQueueAttributeOptions(verb, &queue_flags_);
    delete_ = queue->add_subcommand("delete", "Delete a queue");
    delete_->add_flag("--purge", purge_, "Delete its messages too (else refused unless empty)");
    stop_ = queue->add_subcommand("stop", "Inhibit puts and/or gets (both unless one is named)");
    start_ = queue->add_subcommand("start", "Allow puts and/or gets (both unless one is named)");
    for (CLI::App* verb : {stop_, start_}) {
      verb->add_flag("--put", put_only_, "Only puts");
      verb->add_flag("--get", get_only_, "Only gets");
    }
    for (CLI::App* verb : {define_, alter_, delete_, stop_, start_}) {
      verb->add_option("NAME", queue_, "The queue")->required();
      verb->add_flag("--json", json_, "The request qmgrd accepted, in JSON");
    }

    shutdown_ = app->add_subcommand("shutdown", "Shut qmgrd down (Admin.Shutdown)");
    shutdown_->add_flag("--immediate", immediate_,
                        "Back out every open unit now instead of granting the grace period");
    shutdown_->add_flag("--json", json_, "The request qmgrd accepted, in JSON");

    assign_ = app->add_subcommand(
        "assign", "Move a session's queued output to another session's output queue (/ASSIGN)");
    assign_->add_option("SESSION", from_session_, "The session whose output moves")->required();
    assign_->add_option("--to", to_session_, "The session it moves to")->required();
    assign_->add_flag("--force", force_,
                      "Also move output sent but not acknowledged (marked possibly duplicate)");
    assign_->add_flag("--json", json_, "A qmgr.v1.AssignResponse in JSON");

    for (CLI::App* verb : Verbs()) server->AddTo(verb);
  }

  bool parsed() const {
    const std::vector<CLI::App*> verbs = Verbs();
    return std::any_of(verbs.begin(), verbs.end(), [](CLI::App* verb) { return verb->parsed(); });
  }

  // What CLI11 does not check, before qmgrd is asked: kExitOk or kExitUsage.
  int Check(std::ostream& err) const {
    if (queue_flags_.message_class.has_value()) {
      if (absl::Status s = MessageClassByName(*queue_flags_.message_class).status(); !s.ok()) {
        err << "qmgrctl: " << s.message() << "\n";
        return kExitUsage;
      }
    }
    return kExitOk;
  }

  int Run(qmgr::client::Client& client, std::ostream& out, std::ostream& err) const {
    if (display_queues_->parsed()) return DisplayQueues(client, names_, json_, out, err);
    if (display_sessions_->parsed()) return DisplaySessions(client, names_, json_, out, err);
    if (display_uow_->parsed()) return DisplayUnits(client, json_, out, err);
    if (define_->parsed()) return QueueDefine(client, queue_, queue_flags_, json_, out, err);
    if (alter_->parsed()) return QueueAlter(client, queue_, queue_flags_, json_, out, err);
    if (delete_->parsed()) return QueueDelete(client, queue_, purge_, json_, out, err);
    if (stop_->parsed() || start_->parsed()) {
      InhibitChange change;
      change.inhibit = stop_->parsed();
      if (put_only_ || get_only_) {
        change.put = put_only_;
        change.get = get_only_;
      }
      return QueueInhibit(client, queue_, change, json_, out, err);
    }
    if (shutdown_->parsed()) return Shutdown(client, immediate_, json_, out, err);
    return Assign(client, from_session_, to_session_, force_, json_, out, err);
  }

 private:
  std::vector<CLI::App*> Verbs() const {
    return {display_queues_, display_sessions_, display_uow_, define_, alter_, delete_, stop_,
            start_,          shutdown_,         assign_};
  }

  CLI::App* display_queues_ = nullptr;
  CLI::App* display_sessions_ = nullptr;
  CLI::App* display_uow_ = nullptr;
  CLI::App* define_ = nullptr;
  CLI::App* alter_ = nullptr;
  CLI::App* delete_ = nullptr;
  CLI::App* stop_ = nullptr;
  CLI::App* start_ = nullptr;
  CLI::App* shutdown_ = nullptr;
  CLI::App* assign_ = nullptr;

  bool json_ = false;
  std::vector<std::string> names_;  // display
  std::string queue_;
  QueueAttributeFlags queue_flags_;  // define, alter
  bool purge_ = false;
  bool put_only_ = false;  // stop, start
  bool get_only_ = false;
  bool immediate_ = false;
  std::string from_session_;  // assign
  std::string to_session_;
  bool force_ = false;
};

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
  print_cmd->add_option("--queue", print.queues, "Only records that mention this queue");
  print_cmd->add_option("--uow", print.units, "Only records of this unit of work")
      ->check(kWholeNumber);
  print_cmd->add_option("--session", print.sessions, "Only records that mention this session");
  print_cmd->add_option("--msg", print.messages, "Only records that mention this message id")
      ->check(kWholeNumber);
  print_cmd->add_flag("--follow", print.follow,
                      "After the last record, wait for new ones (read-only; Ctrl-C stops)");

  bool json = false;
  CLI::App* stats_cmd = log_cmd->add_subcommand("stats", "Records and bytes per type, segments");
  stats_cmd->add_flag("--json", json, "JSON output");
  CLI::App* verify_cmd = log_cmd->add_subcommand(
      "verify", "Check every checksum and the LSN chain (exit 0 clean, 1 torn tail, 2 corrupt)");
  verify_cmd->add_flag("--json", json, "JSON output");

  ExplainOptions explain;
  std::string message_id;
  CLI::App* explain_cmd = app.add_subcommand(
      "explain",
      "The life of one message from the log and the checkpoint store (offline, read-only)");
  explain_cmd->add_option("MSGID", message_id, "The message id")->required();
  explain_cmd->add_flag("--json", explain.json, "A qmgr.v1.MessageExplanation in JSON");

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

  AdminVerbs admin;
  admin.AddTo(&app, &server);

  bool status_json = false;
  CLI::App* status_cmd = app.add_subcommand(
      "status", "qmgrd's state: last restart, log, checkpoint age, restart estimate, memory, disk");
  status_cmd->add_flag("--json", status_json, "A qmgr.v1.StatusResponse in JSON");
  server.AddTo(status_cmd);

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
  if (admin.parsed()) {
    if (const int code = admin.Check(std::cerr); code != kExitOk) return code;
  }
  if (admin.parsed() || checkpoint_cmd->parsed() || list_cmd->parsed() || resolve_cmd->parsed() ||
      status_cmd->parsed()) {
    std::unique_ptr<qmgr::client::Client> client = server.Connect();
    if (client == nullptr) return kExitUnreachable;
    if (status_cmd->parsed()) return Status(*client, status_json, std::cout, std::cerr);
    if (admin.parsed()) return admin.Run(*client, std::cout, std::cerr);
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
  if (explain_cmd->parsed()) {
    absl::StatusOr<uint64_t> id = ParseMessageId(message_id);
    if (!id.ok()) {
      std::cerr << "qmgrctl: " << id.status().message() << "\n";
      return kExitUsage;
    }
    explain.message_id = *id;
    explain.log_dir = log_dir;
    explain.store_dir = qmgr::log::JoinPath(data_dir, "store");
    return Explain(explain, std::cout, std::cerr);
  }
  if (print_cmd->parsed()) return LogPrint(log_dir, print, std::cout, std::cerr);
  if (stats_cmd->parsed()) return LogStats(log_dir, json, std::cout, std::cerr);
  if (verify_cmd->parsed()) return LogVerify(log_dir, json, std::cout, std::cerr);
  return kExitUsage;
}
