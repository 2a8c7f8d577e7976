#include "tests/support/qmgrd_process.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace qmgr::testing {
namespace {
constexpr char kListening[] = "listening on ";
std::atomic<int> instances{0};
}  // namespace

QmgrdProcess::QmgrdProcess(std::string binary, std::string data_dir, std::vector<std::string> args)
    : binary_(std::move(binary)),
      data_dir_(std::move(data_dir)),
      args_(std::move(args)),
      stderr_path_(absl::StrCat(data_dir_, ".stderr.", instances.fetch_add(1))) {}

QmgrdProcess::~QmgrdProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
}

void QmgrdProcess::Spawn() {
  std::vector<std::string> argv = {binary_, "--data-dir", data_dir_, "--listen", listen_};
  argv.insert(argv.end(), args_.begin(), args_.end());
  pid_ = ::fork();
  if (pid_ == 0) {
    const int fd = ::open(stderr_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 2);
    ::dup2(fd, 1);
    std::vector<char*> raw;
    for (std::string& a : argv) raw.push_back(a.data());
    raw.push_back(nullptr);
    ::execv(binary_.c_str(), raw.data());
    ::_exit(127);
  }
}

std::string QmgrdProcess::Stderr() const {
  std::ifstream in(stderr_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status QmgrdProcess::Start(absl::Duration timeout) {
  Spawn();
  const absl::Time deadline = absl::Now() + timeout;
  while (target_.empty()) {
    const std::string err = Stderr();
    if (size_t at = err.find(kListening); at != std::string::npos) {
      const size_t end = err.find('\n', at);
      if (end != std::string::npos)
        target_ = err.substr(at + sizeof(kListening) - 1, end - at - sizeof(kListening) + 1);
    }
    if (target_.empty()) {
      if (WaitExit(absl::ZeroDuration()).has_value() || pid_ <= 0 || absl::Now() > deadline) {
        return absl::UnavailableError(absl::StrCat("qmgrd did not start; its stderr:\n", err));
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
  }
  auto channel = grpc::CreateChannel(target_, health_credentials_);
  auto health = grpc::health::v1::Health::NewStub(channel);
  while (true) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status s = health->Check(&context, request, &response);
    if (s.ok() && response.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
      return absl::OkStatus();
    }
    if (absl::Now() > deadline) {
      return absl::UnavailableError(
          absl::StrCat("qmgrd is not SERVING: ", s.error_message(), "; stderr:\n", Stderr()));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

std::optional<int> QmgrdProcess::RunToExit(absl::Duration timeout) {
  Spawn();
  return WaitExit(timeout);
}

void QmgrdProcess::Signal(int signal) {
  if (pid_ > 0) ::kill(pid_, signal);
}

std::optional<int> QmgrdProcess::WaitExit(absl::Duration timeout) {
  if (pid_ <= 0) return std::nullopt;
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      return std::nullopt;
    }
    if (absl::Now() >= deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

absl::Status RestartedQmgrd::Start() {
  auto process = std::make_unique<QmgrdProcess>(binary_, data_dir_, args_);
  if (absl::Status s = process->Start(); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  target_ = process->target();
  process_ = std::move(process);
  return absl::OkStatus();
}

void RestartedQmgrd::Kill() {
  process_->Signal(SIGKILL);
  process_->WaitExit(absl::Seconds(10));
}

std::string RestartedQmgrd::target() const {
  absl::MutexLock lock(&mu_);
  return target_;
}

}  // namespace qmgr::testing
