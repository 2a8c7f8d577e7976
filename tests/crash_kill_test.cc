// Real kills: crash_driver (the queue manager with a load of every class)
// is SIGKILLed at random moments, some of them inside checkpoints (the
// driver kills itself between the store's sync and CHECKPOINT_END), with
// segments switching all the time; each restart is held to every
// acknowledgement printed before. QMGR_KILL_ROUNDS sets the number of
// crash points (50 by default; 2,000 in the `long` run).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <random>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/support/crash_workload.h"
#include "tests/support/temp_dir.h"

namespace qmgr::testing {
namespace {

int Rounds() {
  const char* env = std::getenv("QMGR_KILL_ROUNDS");
  return env != nullptr ? std::atoi(env) : 50;
}

// A running driver and the lines it printed.
class Driver {
 public:
  Driver(const std::string& data_dir, const std::string& prefix, uint64_t seed) {
    int fds[2];
    EXPECT_EQ(::pipe(fds), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], STDOUT_FILENO);
      ::close(fds[0]);
      ::close(fds[1]);
      const std::string seed_text = absl::StrCat(seed);
      ::execl(CRASH_DRIVER_PATH, "crash_driver", data_dir.c_str(), prefix.c_str(),
              seed_text.c_str(), "0.05", static_cast<char*>(nullptr));
      std::_Exit(127);
    }
    ::close(fds[1]);
    out_ = ::fdopen(fds[0], "r");
  }

  ~Driver() {
    Kill();
    if (out_ != nullptr) std::fclose(out_);
  }

  // Reads a line; false at end of output.
  bool ReadLine(std::string* line) {
    char* buffer = nullptr;
    size_t capacity = 0;
    const ssize_t n = ::getline(&buffer, &capacity, out_);
    if (n > 0) line->assign(buffer, buffer[n - 1] == '\n' ? n - 1 : n);
    std::free(buffer);
    return n > 0;
  }

  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
};

enum class Startup { kReady, kKilled, kFailed };

// Reads the driver's report of what it holds after its restart. kKilled:
// it killed itself in the restart's checkpoint, before READY.
Startup ReadState(Driver& driver, ObservedState* state, std::string* summary) {
  std::string line;
  while (driver.ReadLine(&line)) {
    if (line == "READY") return Startup::kReady;
    if (line == "KILLED at store-written") return Startup::kKilled;
    std::vector<std::string> parts = absl::StrSplit(line, absl::MaxSplits(' ', 4));
    if (parts[0] == "R") {
      *summary = line;
    } else if (parts[0] == "M" && parts.size() == 5) {
      ObservedState::Message m;
      EXPECT_TRUE(absl::SimpleAtoi(parts[1], &m.id));
      m.queue = parts[2];
      EXPECT_TRUE(absl::SimpleAtoi(parts[3], &m.backout_count));
      m.marker = parts[4];
      state->messages.push_back(std::move(m));
    } else if (parts[0] == "D" && parts.size() == 3) {
      std::vector<uint64_t>& locked = state->in_doubt[parts[1]];
      for (absl::string_view id : absl::StrSplit(parts[2], ',', absl::SkipEmpty())) {
        EXPECT_TRUE(absl::SimpleAtoi(id, &locked.emplace_back()));
      }
    } else if (parts[0] == "S") {
      EXPECT_TRUE(absl::SimpleAtoi(parts[1], &state->session_in_seq));
    } else if (parts[0] == "N") {
      EXPECT_TRUE(absl::SimpleAtoi(parts[1], &state->next_id));
    } else {
      ADD_FAILURE() << "driver: " << line;
      return Startup::kFailed;
    }
  }
  return Startup::kFailed;
}

TEST(CrashKillTest, NothingAcknowledgedIsLostAcrossSigkills) {
  TempDir tmp;
  const std::string data_dir = tmp.path() + "/qm";
  std::mt19937_64 random(2026);
  std::vector<Event> events;
  int restarts_seen = 0;
  int killed_in_checkpoint = 0;
  for (int round = 0; round <= Rounds(); ++round) {
    Driver driver(data_dir, absl::StrCat("k", round), random());
    ObservedState state;
    std::string summary;
    const Startup startup = ReadState(driver, &state, &summary);
    ASSERT_NE(startup, Startup::kFailed) << "round " << round;
    if (startup == Startup::kKilled) {  // a crash point too; the next start checks
      ++killed_in_checkpoint;
      continue;
    }
    const std::vector<std::string> broken = CheckInvariants(events, state);
    ASSERT_TRUE(broken.empty()) << "round " << round << ", " << summary << ":\n"
                                << absl::StrJoin(broken, "\n");
    for (const Event& e : Settle(events, state)) events.push_back(e);
    if (summary.find("emergency") != std::string::npos) ++restarts_seen;
    if (round == Rounds()) break;
    // Collect acknowledgements while the load runs, then kill at random.
    std::thread reader([&] {
      std::string line;
      Event e;
      while (driver.ReadLine(&line)) {
        if (Event::FromLine(line, &e)) events.push_back(e);
        if (line == "KILLED at store-written") ++killed_in_checkpoint;
      }
    });
    absl::SleepFor(absl::Milliseconds(20 + random() % 300));
    driver.Kill();
    reader.join();
  }
  EXPECT_GE(restarts_seen, Rounds() / 2) << "emergency restarts";
  EXPECT_GE(killed_in_checkpoint, 1) << "kills between the store's sync and CHECKPOINT_END";
  std::printf("%d rounds, %d killed inside a checkpoint, %zu acknowledgements\n", Rounds(),
              killed_in_checkpoint, events.size());
  EXPECT_GT(events.size(), 1000u) << "the load did something";
}

}  // namespace
}  // namespace qmgr::testing
