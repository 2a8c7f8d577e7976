// The seeded crash simulation (tests/support/seeded_sim.h) in the default
// suite: a short run on a fresh seed (printed; QMGR_SIM_SEED replays it),
// the same seed twice with the same trace, and every seed that once failed.
#include <cstdlib>
#include <random>

#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/support/seeded_sim.h"
#include "tests/support/temp_dir.h"

namespace qmgr::testing {
namespace {

SimResult Run(uint64_t seed, int crashes) {
  TempDir tmp;
  SimOptions options;
  options.seed = seed;
  options.crashes = crashes;
  options.dir = tmp.path();
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
  const SimResult result = Run(seed, 200);
  EXPECT_TRUE(result.broken.empty()) << "seed " << seed << ":\n"
                                     << absl::StrJoin(result.broken, "\n");
  EXPECT_EQ(result.crash_points, 200);
  EXPECT_GT(result.events, 1000u) << "the operations did something";
}

TEST(CrashSeededTest, TheSameSeedReplaysTheSameTrace) {
  const SimResult first = Run(20261201, 25);
  const SimResult second = Run(20261201, 25);
  ASSERT_TRUE(first.broken.empty()) << absl::StrJoin(first.broken, "\n");
  EXPECT_EQ(first.trace_hash, second.trace_hash);
  EXPECT_EQ(first.operations, second.operations);
  EXPECT_EQ(first.events, second.events);
  EXPECT_NE(Run(20261202, 25).trace_hash, first.trace_hash) << "the seed decides the run";
}

}  // namespace
}  // namespace qmgr::testing
