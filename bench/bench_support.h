// What the benchmark programs share: dying with a message, percentiles, the
// machine line, JSON strings, a fresh directory to measure in.
#ifndef QMGR_BENCH_BENCH_SUPPORT_H_
#define QMGR_BENCH_BENCH_SUPPORT_H_

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace qmgr::bench {

using Clock = std::chrono::steady_clock;

// Prints "<program>: <what>" and exits 1.
[[noreturn]] void Die(absl::string_view what);
// The same, with `path` and errno's text.
[[noreturn]] void DieErrno(absl::string_view what, const std::string& path);

double Micros(Clock::duration d);
// Nearest-rank percentile of `v` (sorted here), in microseconds.
double Percentile(std::vector<Clock::duration>& v, double p);

struct Machine {
  unsigned nproc = 0;
  std::string kernel;
  std::string fs_type;  // of the directory measured in
  std::string date;
};
std::string FsTypeName(const std::string& dir);
Machine DescribeMachine(const std::string& dir);
// {"nproc": ..., "kernel": ..., "fs_type": ..., "date": ...}
std::string MachineJson(const Machine& m);

// The whole machine's CPU time, all CPUs summed, in clock ticks, from the
// "cpu" line of /proc/stat. Compared over a measuring window it says whether
// the benchmark had the machine: a figure taken while the hypervisor stole a
// fifth of the CPU time is not the engine's.
struct MachineCpu {
  uint64_t total = 0;
  uint64_t idle = 0;   // idle and iowait: the kernel had nothing to run
  uint64_t steal = 0;  // the hypervisor ran something else on a virtual CPU
};
// All zero when /proc/stat cannot be read; the shares are then 0 too.
MachineCpu ReadMachineCpu();

// Idle and steal as fractions of the machine's CPU time between two reads.
struct MachineShares {
  double idle = 0;
  double steal = 0;
};
MachineShares SharesBetween(const MachineCpu& from, const MachineCpu& to);

// `s` as a JSON string literal, quotes included.
std::string JsonString(absl::string_view s);

// The directory a benchmark measures in: `dir` (made if missing), or a fresh
// "<program>-XXXXXX" under $TMPDIR, else under ./bench-data. Removed at the
// end if this made it, unless `keep`.
class WorkDir {
 public:
  WorkDir(const std::string& dir, bool keep);
  ~WorkDir();
  WorkDir(const WorkDir&) = delete;
  WorkDir& operator=(const WorkDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::string made_parent_;  // ./bench-data when this made it
  bool remove_ = false;
};

}  // namespace qmgr::bench

#endif  // QMGR_BENCH_BENCH_SUPPORT_H_
