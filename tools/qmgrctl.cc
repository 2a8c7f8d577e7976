// qmgrctl: the queue manager's admin tool. Offline verbs read a data
// directory read-only; online verbs talk to qmgrd's Admin service.
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "log/segment.h"
#include "tools/log_commands.h"

namespace {
// Online verbs.
constexpr int kExitRefused = 4;       // qmgrd answered with an error
constexpr int kExitUnreachable = 69;  // no qmgrd at --server (EX_UNAVAILABLE)
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

  std::string server = "127.0.0.1:7430";
  CLI::App* checkpoint_cmd =
      app.add_subcommand("checkpoint", "Ask qmgrd for a checkpoint now (Admin.Checkpoint)");
  checkpoint_cmd->add_option("--server", server, "qmgrd's address (HOST:PORT)")
      ->capture_default_str();
  int connect_timeout_ms = 3000;
  checkpoint_cmd
      ->add_option("--connect-timeout-ms", connect_timeout_ms, "How long to try to connect")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();

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

  if (checkpoint_cmd->parsed()) {
    qmgr::client::ClientOptions options;
    options.target = server;
    options.connect_timeout = absl::Milliseconds(connect_timeout_ms);
    absl::StatusOr<std::unique_ptr<qmgr::client::Client>> client =
        qmgr::client::Client::Connect(options);
    if (!client.ok()) {
      std::cerr << "qmgrctl: cannot reach qmgrd at " << server << ": " << client.status().message()
                << "\n";
      return kExitUnreachable;
    }
    qmgr::v1::CheckpointRequest request;
    qmgr::v1::CheckpointResponse response;
    const grpc::Status status =
        (*client)->admin()->Checkpoint((*client)->NewContext().get(), request, &response);
    if (!status.ok()) {
      std::cerr << "qmgrctl: checkpoint refused: " << status.error_message() << "\n";
      return kExitRefused;
    }
    std::cout << "checkpoint " << response.checkpoint_number() << " taken, redo LSN "
              << response.redo_lsn() << "\n";
    return 0;
  }
  if (print_cmd->parsed()) return LogPrint(log_dir, print, std::cout, std::cerr);
  if (stats_cmd->parsed()) return LogStats(log_dir, json, std::cout, std::cerr);
  if (verify_cmd->parsed()) return LogVerify(log_dir, json, std::cout, std::cerr);
  return kExitUsage;
}
