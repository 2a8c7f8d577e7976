// The crash load's reports and its checker, on the case a SIGKILL run once
// called a loss: a coordinated unit backed out, a consumer took the message
// it returned and committed, and the kill came before the consumer's 'C'.
// The coordinator's 'S' had come after the consumer's 'P', settling it.
#include "tests/support/crash_workload.h"

#include <set>

#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "restart/restart.h"
#include "tests/support/temp_dir.h"

namespace qmgr::testing {
namespace {

bool LockedInDoubt(Engine* engine, uint64_t id) {
  for (const InDoubtUnit& unit :
       engine->InDoubtUnits(CrashWorkload::kCoordinator, CrashWorkload::kQualifier)) {
    for (uint64_t locked : unit.locked_messages) {
      if (locked == id) return true;
    }
  }
  return false;
}

// 'S' must come while no other unit can take the message yet: while the
// unit that took it is still in doubt.
TEST(CrashWorkloadTest, ACoordinatorReportsABackoutBeforeTheMessageIsBack) {
  TempDir tmp;
  restart::RestartOptions options;
  options.data_dir = tmp.path() + "/qm";
  options.qmgr_name = CrashWorkload::kQualifier;
  absl::StatusOr<std::unique_ptr<restart::QueueManager>> qm = restart::Restart(options);
  ASSERT_TRUE(qm.ok()) << qm.status();
  Engine* engine = (*qm)->engine();
  absl::Mutex mu;
  std::set<uint64_t> coordinated;  // ids a coordinated unit took ('P' with its XID)
  int settled = 0;
  std::vector<uint64_t> back_too_early;
  CrashWorkload workload(engine, "t", [&](const Event& e) {
    absl::MutexLock lock(&mu);
    if (e.kind == 'P' && e.marker.find("-x") != std::string::npos) coordinated.insert(e.id);
    if (e.kind != 'S' || !coordinated.count(e.id)) return;
    ++settled;
    if (!LockedInDoubt(engine, e.id)) back_too_early.push_back(e.id);
  });
  ASSERT_TRUE(workload.Start().ok());
  for (int i = 0; i < 200; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
    absl::MutexLock lock(&mu);
    if (settled >= 10) break;
  }
  workload.Stop();
  EXPECT_GE(settled, 10) << "coordinated backouts";
  EXPECT_TRUE(back_too_early.empty())
      << "'S' reported after the message was back: " << absl::StrJoin(back_too_early, ",");
}

TEST(CrashWorkloadTest, AMessageLockedByAUnitInDoubtIsNotLost) {
  // The coordinator's reports up to its Resolve, which the kill preceded.
  const std::vector<Event> events = {
      {'E', 7, "m7"}, {'P', 7, "x1"}, {'Q', 7, "x1"}, {'S', 7, ""}, {'R', 0, "x1"}};
  ObservedState state;
  state.in_doubt["x1"] = {7};
  state.next_id = 8;
  EXPECT_TRUE(CheckInvariants(events, state).empty())
      << absl::StrJoin(CheckInvariants(events, state), "\n");
  state.in_doubt.clear();  // neither locked nor on a queue: lost
  const std::vector<std::string> broken = CheckInvariants(events, state);
  ASSERT_EQ(broken.size(), 1u) << absl::StrJoin(broken, "\n");
  EXPECT_EQ(broken[0], "acknowledged message 7 (m7) is lost; its events: E P:x1 Q:x1 S");
}

}  // namespace
}  // namespace qmgr::testing
