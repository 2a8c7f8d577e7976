// Runs a libFuzzer target without libFuzzer (g++ builds and the default
// suite): each iteration mutates one of the target's seeds (FuzzSeeds: real
// values the code under test wrote) with bit flips, byte runs, splices and
// truncation, from a printed seed, so a failure replays with --seed.
//   TARGET [--iterations N] [--seconds S] [--seed S]
//   TARGET --write-seeds DIR   (a seed corpus for libFuzzer)
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
// The target's seeds, defined next to LLVMFuzzerTestOneInput.
std::vector<std::string> FuzzSeeds();

namespace {

void Mutate(std::mt19937_64& rng, const std::vector<std::string>& seeds, std::string& input) {
  const int mutations = 1 + static_cast<int>(rng() % 4);
  for (int m = 0; m < mutations && !input.empty(); ++m) {
    const size_t at = rng() % input.size();
    switch (rng() % 6) {
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
        if (other.empty()) break;
        const size_t from = rng() % other.size();
        const size_t n = std::min({other.size() - from, input.size() - at, size_t{4096}});
        input.replace(at, n, other, from, n);
        break;
      }
      case 5:
        input.insert(at, std::string(1 + rng() % 16, static_cast<char>(rng())));
        break;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t iterations = 1000;
  double seconds = 0;
  uint64_t seed = std::random_device{}();
  const char* seeds_dir = nullptr;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--write-seeds") == 0) {
      seeds_dir = argv[i + 1];
    } else if (std::strcmp(argv[i], "--iterations") == 0) {
      iterations = std::strtoull(argv[i + 1], nullptr, 10);
    } else if (std::strcmp(argv[i], "--seconds") == 0) {
      seconds = std::strtod(argv[i + 1], nullptr);
    } else if (std::strcmp(argv[i], "--seed") == 0) {
      seed = std::strtoull(argv[i + 1], nullptr, 10);
    } else {
      std::fprintf(stderr, "unknown argument %s\n", argv[i]);
      return 64;
    }
  }
  const std::vector<std::string> seeds = FuzzSeeds();
  if (seeds.empty()) {
    std::fprintf(stderr, "the target has no seeds\n");
    return 1;
  }
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
  std::printf("%s: seed %llu, %llu iterations%s\n", argv[0], static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(iterations), seconds > 0 ? " or the time given" : "");
  std::fflush(stdout);
  const auto start = std::chrono::steady_clock::now();
  std::mt19937_64 rng(seed);
  uint64_t done = 0;
  for (; done < iterations || seconds > 0; ++done) {
    if (seconds > 0 &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > seconds) {
      break;
    }
    std::string input = seeds[rng() % seeds.size()];
    if (done % 8 != 0) Mutate(rng, seeds, input);  // the seeds themselves too, now and then
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
  }
  std::printf("%llu executions in %.0f s, 0 failed\n", static_cast<unsigned long long>(done),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return 0;
}
