// qmgrctl: the queue manager's admin tool. Offline verbs read a data
// directory read-only; online verbs talk to qmgrd's Admin service.
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "log/segment.h"
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
  if (checkpoint_cmd->parsed() || list_cmd->parsed() || resolve_cmd->parsed()) {
    std::unique_ptr<qmgr::client::Client> client = server.Connect();
    if (client == nullptr) return kExitUnreachable;
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
