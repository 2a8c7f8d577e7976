// The process a crash test kills: restarts the queue manager on a data
// directory, prints what it holds, then runs a load of every message class
// and prints each acknowledgement, until it is killed (SIGKILL, by the test,
// or by itself at a chosen checkpoint step).
//
//   crash_driver <data dir> <marker prefix> <seed> <kill probability at store written>
//
// Output, one line per write(2) so that a kill never leaves half a line:
//   R <restart summary>
//   M <id> <queue> <backout count> <payload>   every message held after the restart
//   D <xid> <id,id,...>                         every unit in doubt, the messages it locks
//   S <session in_seq>
//   N <next id>
//   READY
//   <events>                     see tests/support/crash_workload.h
//   KILLED at store-written      when it kills itself inside a checkpoint (also
//                                the restart's own, before READY)
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "restart/restart.h"
#include "tests/support/crash_workload.h"

namespace {

void Say(const std::string& line) {
  const std::string out = line + "\n";
  if (::write(STDOUT_FILENO, out.data(), out.size()) != static_cast<ssize_t>(out.size())) {
    std::_Exit(4);  // the test went away
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s <data dir> <prefix> <seed> <kill probability>\n", argv[0]);
    return 64;
  }
  const std::string prefix = argv[2];
  std::mt19937_64 random(std::strtoull(argv[3], nullptr, 10));
  const double kill_probability = std::strtod(argv[4], nullptr);

  qmgr::restart::RestartOptions options;
  options.data_dir = argv[1];
  // The name the workload's coordinator prepares its units under.
  options.qmgr_name = qmgr::testing::CrashWorkload::kQualifier;
  options.log.segment_bytes = 256 << 10;  // segment switches all the time
  options.engine.id_block = 256;
  options.archive = std::getenv("QMGR_ARCHIVE") != nullptr;
  options.checkpoint.log_bytes = 256 << 10;
  options.checkpoint.poll_interval = absl::Milliseconds(10);
  options.checkpoint.step_hook = [&](qmgr::checkpoint::Step step) {
    // Between the store's sync and CHECKPOINT_END.
    if (step == qmgr::checkpoint::Step::kStoreWritten &&
        std::uniform_real_distribution<double>(0, 1)(random) < kill_probability) {
      Say("KILLED at store-written");
      ::raise(SIGKILL);
    }
  };
  absl::StatusOr<std::unique_ptr<qmgr::restart::QueueManager>> qm = qmgr::restart::Restart(options);
  if (!qm.ok()) {
    Say(absl::StrCat("FAILED ", qm.status().ToString()));
    return 1;
  }
  Say(absl::StrCat("R ", (*qm)->restart_report().ToString()));
  absl::StatusOr<qmgr::testing::ObservedState> state = qmgr::testing::Observe((*qm)->engine());
  if (!state.ok()) {
    Say(absl::StrCat("FAILED ", state.status().ToString()));
    return 1;
  }
  for (const auto& m : state->messages) {
    Say(absl::StrCat("M ", m.id, " ", m.queue, " ", m.backout_count, " ", m.marker));
  }
  for (const auto& [xid, locked] : state->in_doubt) {
    Say(absl::StrCat("D ", xid, " ", absl::StrJoin(locked, ",")));
  }
  Say(absl::StrCat("S ", state->session_in_seq));
  Say(absl::StrCat("N ", state->next_id));
  Say("READY");

  qmgr::testing::CrashWorkload workload((*qm)->engine(), prefix,
                                        [](const qmgr::testing::Event& e) { Say(e.ToLine()); });
  if (absl::Status s = workload.Start(); !s.ok()) {
    Say(absl::StrCat("FAILED ", s.ToString()));
    return 1;
  }
  // The test kills long before this; a driver left alone ends by itself.
  absl::SleepFor(absl::Seconds(60));
  return 3;
}
