// Runs a libFuzzer target without libFuzzer (for g++ builds and the default
// test suite): seeds are real logs written by the log itself; each iteration
// mutates one (bit flips, byte runs, splices, truncation) from a printed seed,
// so a failure replays with --seed.
//   log_reader_fuzz --iterations N [--seed S]
//   log_reader_fuzz --write-seeds DIR   (a seed corpus for libFuzzer)
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "log/log.h"
#include "tests/support/fault_file_system.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

// Bodies of a real two-segment log of 4-block segments: what the target takes.
std::string SeedLog(int records, size_t payload_bytes) {
  using namespace qmgr::log;
  qmgr::testing::FaultFileSystem fs;
  if (!fs.CreateDir("/log").ok()) std::abort();
  LogOptions options;
  options.segment_bytes = 4 * kBlockBytes;
  options.segments_ahead = 1;
  {
    absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(&fs, "/log", options);
    if (!log.ok()) std::abort();
    for (int i = 0; i < records; ++i) {
      absl::StatusOr<Lsn> lsn = (*log)->Append(3, std::string(payload_bytes + i, 'a' + i % 26));
      if (!lsn.ok() || !(*log)->WaitDurable(*lsn).ok()) std::abort();
    }
  }
  std::string bodies;
  for (Lsn first : {Lsn{0}, Lsn{3 * kBlockBytes}}) {
    absl::StatusOr<std::string> file = fs.ReadWholeFile("/log/" + SegmentFileName(first));
    if (!file.ok()) std::abort();
    bodies += file->substr(kSegmentHeaderBytes);
  }
  return bodies;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t iterations = 1000;
  uint64_t seed = std::random_device{}();
  const char* seeds_dir = nullptr;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--write-seeds") == 0) seeds_dir = argv[i + 1];
    if (std::strcmp(argv[i], "--iterations") == 0)
      iterations = std::strtoull(argv[i + 1], nullptr, 10);
    if (std::strcmp(argv[i], "--seed") == 0) seed = std::strtoull(argv[i + 1], nullptr, 10);
  }
  std::printf("log reader fuzz: seed %llu, %llu iterations\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(iterations));
  std::fflush(stdout);
  const std::vector<std::string> seeds = {SeedLog(3, 40), SeedLog(9, 900), SeedLog(2, 5000)};
  if (seeds_dir != nullptr) {
    for (size_t i = 0; i < seeds.size(); ++i) {
      const std::string path = std::string(seeds_dir) + "/seed-" + std::to_string(i);
      FILE* f = std::fopen(path.c_str(), "wb");
      if (f == nullptr || std::fwrite(seeds[i].data(), 1, seeds[i].size(), f) != seeds[i].size()) {
        std::perror(path.c_str());
        return 1;
      }
      std::fclose(f);
    }
    return 0;
  }
  std::mt19937_64 rng(seed);
  for (uint64_t it = 0; it < iterations; ++it) {
    std::string input = seeds[rng() % seeds.size()];
    const int mutations = 1 + static_cast<int>(rng() % 4);
    for (int m = 0; m < mutations && !input.empty(); ++m) {
      const size_t at = rng() % input.size();
      switch (rng() % 5) {
        case 0:
          input[at] ^= static_cast<char>(1u << (rng() % 8));
          break;
        case 1:
          input[at] = static_cast<char>(rng());
          break;
        case 2: {
          const size_t n = std::min<size_t>(input.size() - at, 1 + rng() % 64);
          std::memset(input.data() + at, static_cast<int>(rng() % 2 ? 0 : 0xff), n);
          break;
        }
        case 3:
          input.resize(at);
          break;
        case 4: {
          const std::string& other = seeds[rng() % seeds.size()];
          const size_t from = rng() % other.size();
          const size_t n = std::min({other.size() - from, input.size() - at, size_t{4096}});
          input.replace(at, n, other, from, n);
          break;
        }
      }
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
  }
  std::printf("%llu passed, 0 failed\n", static_cast<unsigned long long>(iterations));
  return 0;
}
