// The real qmgrd binary as a child process, for integration tests: started
// on a free loopback port (it binds port 0 and prints the port), in a data
// directory the test owns, with its stderr in a file.
#ifndef QMGR_TESTS_SUPPORT_QMGRD_PROCESS_H_
#define QMGR_TESTS_SUPPORT_QMGRD_PROCESS_H_

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace qmgr::testing {

class QmgrdProcess {
 public:
  // `binary`: the qmgrd path; `args`: flags beyond --data-dir and --listen.
  QmgrdProcess(std::string binary, std::string data_dir, std::vector<std::string> args = {});
  // Kills (SIGKILL) a child still running.
  ~QmgrdProcess();
  QmgrdProcess(const QmgrdProcess&) = delete;
  QmgrdProcess& operator=(const QmgrdProcess&) = delete;

  // Before Start: listen there instead of 127.0.0.1:0.
  void set_listen(std::string address) { listen_ = std::move(address); }
  // Before Start: the health check's channel credentials (a TLS qmgrd).
  void set_health_credentials(std::shared_ptr<grpc::ChannelCredentials> credentials) {
    health_credentials_ = std::move(credentials);
  }

  // Starts the child and waits until it listens and its health service
  // answers SERVING. An error names what went wrong and includes its stderr.
  absl::Status Start(absl::Duration timeout = absl::Seconds(20));
  // Starts the child and waits for it to exit (for refusals at startup).
  std::optional<int> RunToExit(absl::Duration timeout = absl::Seconds(20));

  void Signal(int signal);
  // The exit code, or nullopt if it did not exit within `timeout` (or died
  // of a signal).
  std::optional<int> WaitExit(absl::Duration timeout);

  const std::string& target() const { return target_; }
  pid_t pid() const { return pid_; }  // -1 before Start
  std::string Stderr() const;

 private:
  void Spawn();

  const std::string binary_;
  const std::string data_dir_;
  const std::vector<std::string> args_;
  const std::string stderr_path_;
  std::string listen_ = "127.0.0.1:0";
  std::shared_ptr<grpc::ChannelCredentials> health_credentials_ =
      grpc::InsecureChannelCredentials();
  pid_t pid_ = -1;
  std::string target_;
};

// qmgrd killed and started again on one data directory, as crash tests do.
// Each start listens on a new port: target() is the current one, safe to
// read from other threads (a client library's resolve_target).
class RestartedQmgrd {
 public:
  RestartedQmgrd(std::string binary, std::string data_dir, std::vector<std::string> args)
      : binary_(std::move(binary)), data_dir_(std::move(data_dir)), args_(std::move(args)) {}

  absl::Status Start();
  // SIGKILL, then waits for the process to be gone.
  void Kill();
  std::string target() const;
  std::string Stderr() const { return process_->Stderr(); }

 private:
  const std::string binary_;
  const std::string data_dir_;
  const std::vector<std::string> args_;
  std::unique_ptr<QmgrdProcess> process_;
  mutable absl::Mutex mu_;
  std::string target_ ABSL_GUARDED_BY(mu_);
};

}  // namespace qmgr::testing

#endif  // QMGR_TESTS_SUPPORT_QMGRD_PROCESS_H_
