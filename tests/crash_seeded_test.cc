// The seeded crash simulation (tests/support/seeded_sim.h) in the default
// suite: a short run on a fresh seed (printed; QMGR_SIM_SEED replays it),
// the same seed twice with the same trace, and every seed that once failed.
#include <algorithm>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/support/seeded_sim.h"
#include "tests/support/temp_dir.h"

namespace qmgr::testing {
namespace {

SimResult Simulate(uint64_t seed, int crashes, std::vector<std::string>* trace = nullptr) {
  TempDir tmp;
  SimOptions options;
  options.seed = seed;
  options.crashes = crashes;
  options.dir = tmp.path();
  if (trace != nullptr) {
    options.trace = [trace](absl::string_view line) { trace->emplace_back(line); };
  }
  SimResult result = RunSeededSimulation(options);
  std::printf("%s\n", result.Summary().c_str());
  return result;
}

uint64_t SeedForThisRun() {
  if (const char* env = std::getenv("QMGR_SIM_SEED")) return std::strtoull(env, nullptr, 10);
  return std::random_device()();
}

TEST(CrashSeededTest, NothingAcknowledgedIsLostAcrossTwoHundredCrashes) {
  const uint64_t seed = SeedForThisRun();
  std::printf("seed %llu (replay: QMGR_SIM_SEED=%llu, or crash_sim --seed %llu)\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  const SimResult result = Simulate(seed, 200);
  EXPECT_TRUE(result.broken.empty()) << "seed " << seed << ":\n"
                                     << absl::StrJoin(result.broken, "\n");
  EXPECT_EQ(result.crash_points, 200);
  EXPECT_GT(result.events, 1000u) << "the operations did something";
}

// 100 crash points by default (runs once parted at the 86th, when the log
// writer's timing still decided its batches); QMGR_REPLAY_CRASHES for more
// (the `long` run: 3000).
TEST(CrashSeededTest, TheSameSeedReplaysTheSameTrace) {
  const char* env = std::getenv("QMGR_REPLAY_CRASHES");
  const int crashes = env != nullptr ? std::atoi(env) : 100;
  std::vector<std::string> first_trace, second_trace;
  const SimResult first = Simulate(20261201, crashes, &first_trace);
  const SimResult second = Simulate(20261201, crashes, &second_trace);
  ASSERT_TRUE(first.broken.empty()) << absl::StrJoin(first.broken, "\n");
  EXPECT_EQ(first.trace_hash, second.trace_hash);
  for (size_t i = 0; i < std::min(first_trace.size(), second_trace.size()); ++i) {
    ASSERT_EQ(first_trace[i], second_trace[i])
        << "the traces part at line " << i << " after:\n"
        << absl::StrJoin(first_trace.begin() + std::max<int>(0, static_cast<int>(i) - 30),
                         first_trace.begin() + i, "\n");
  }
  EXPECT_EQ(first.operations, second.operations);
  EXPECT_EQ(first.events, second.events);
  EXPECT_NE(Simulate(20261202, 5).trace_hash, first.trace_hash) << "the seed decides the run";
}

// Seeds that once failed. 2082549044: a coordinated unit whose Get found
// no message was prepared, then a crash; the checker wanted its message 0
// locked in doubt (the checker's fault: a unit that took nothing locks
// nothing).
TEST(CrashSeededTest, SeedsThatOnceFailed) {
  for (uint64_t seed : {2082549044ull}) {
    const SimResult result = Simulate(seed, 5);
    EXPECT_TRUE(result.broken.empty()) << "seed " << seed << ":\n"
                                       << absl::StrJoin(result.broken, "\n");
  }
}

TEST(CrashSeededTest, TheChecksSeeTheLossThatALyingFsyncCauses) {
  TempDir tmp;
  SimOptions options;
  options.seed = 7;
  options.crashes = 12;
  options.lying_fsync_from_crash = 2;
  options.dir = tmp.path();
  const SimResult result = RunSeededSimulation(options);
  EXPECT_FALSE(result.broken.empty())
      << "fsyncs kept nothing, yet every check held: " << result.Summary();
}

}  // namespace
}  // namespace qmgr::testing
