// crash_sim: the seeded crash simulation as a program (RELIABILITY.md).
//   crash_sim [--seed N] [--crashes N] [--ops N] [--progress N] [--trace]
// (--progress N: the figures so far every N crash points)
// Prints the seed first, then the figures; exits 1 when an invariant broke
// (printing each), 64 for bad arguments.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "tests/support/seeded_sim.h"
#include "tests/support/temp_dir.h"

int main(int argc, char** argv) {
  qmgr::testing::SimOptions options;
  options.seed = std::random_device()();
  bool trace = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--seed" && has_value) {
      options.seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--crashes" && has_value) {
      options.crashes = std::atoi(argv[++i]);
    } else if (arg == "--ops" && has_value) {
      options.ops_per_life_max = std::atoi(argv[++i]);
    } else if (arg == "--progress" && has_value) {
      options.progress_every = std::atoi(argv[++i]);
    } else if (arg == "--trace") {
      trace = true;
    } else {
      std::fprintf(
          stderr, "usage: crash_sim [--seed N] [--crashes N] [--ops N] [--progress N] [--trace]\n");
      return 64;
    }
  }
  if (options.crashes < 0 || options.ops_per_life_max < 1) {
    std::fprintf(stderr, "crash_sim: --crashes must be >= 0 and --ops >= 1\n");
    return 64;
  }
  std::printf("seed %llu\n", static_cast<unsigned long long>(options.seed));
  std::fflush(stdout);
  options.progress = [](const qmgr::testing::SimResult& so_far) {
    std::printf("progress %s\n", so_far.Summary().c_str());
    std::fflush(stdout);
  };
  if (trace) {
    options.trace = [](absl::string_view line) {
      std::printf("%.*s\n", static_cast<int>(line.size()), line.data());
      std::fflush(stdout);
    };
  }
  qmgr::testing::TempDir tmp;
  options.dir = tmp.path();
  const qmgr::testing::SimResult result = qmgr::testing::RunSeededSimulation(options);
  std::printf("%s\n", result.Summary().c_str());
  for (const std::string& line : result.broken) std::printf("BROKEN %s\n", line.c_str());
  return result.broken.empty() ? 0 : 1;
}
