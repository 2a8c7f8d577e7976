#include "bench/bench_support.h"

#include <errno.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace qmgr::bench {

[[noreturn]] void Die(absl::string_view what) {
  std::fprintf(stderr, "%s: %.*s\n", program_invocation_short_name, static_cast<int>(what.size()),
               what.data());
  std::exit(1);
}

[[noreturn]] void DieErrno(absl::string_view what, const std::string& path) {
  Die(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

double Micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

// Nearest-rank percentile of `v` (sorted here), in microseconds.
double Percentile(std::vector<Clock::duration>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  rank = std::clamp<size_t>(rank, 1, v.size());
  return Micros(v[rank - 1]);
}

std::string FsTypeName(const std::string& dir) {
  struct statfs st;
  if (::statfs(dir.c_str(), &st) != 0) DieErrno("statfs", dir);
  switch (static_cast<unsigned long>(st.f_type)) {
    case EXT4_SUPER_MAGIC:  // also ext2/ext3
      return "ext4";
    case XFS_SUPER_MAGIC:
      return "xfs";
    case TMPFS_MAGIC:
      return "tmpfs";
    case BTRFS_SUPER_MAGIC:
      return "btrfs";
    case OVERLAYFS_SUPER_MAGIC:
      return "overlay";
    default:
      return absl::StrFormat("0x%x", static_cast<unsigned long>(st.f_type));
  }
}

MachineCpu ReadMachineCpu() {
  MachineCpu cpu;
  std::FILE* f = std::fopen("/proc/stat", "r");
  if (f == nullptr) return cpu;
  // cpu  user nice system idle iowait irq softirq steal [guest guest_nice]:
  // guest time is already inside user and nice, so it is not added again.
  unsigned long long v[8] = {};
  const int read = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
                               &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
  std::fclose(f);
  if (read != 8) return cpu;
  for (unsigned long long x : v) cpu.total += x;
  cpu.idle = v[3] + v[4];
  cpu.steal = v[7];
  return cpu;
}

MachineShares SharesBetween(const MachineCpu& from, const MachineCpu& to) {
  MachineShares shares;
  if (to.total <= from.total) return shares;
  const double total = static_cast<double>(to.total - from.total);
  shares.idle = static_cast<double>(to.idle - from.idle) / total;
  shares.steal = static_cast<double>(to.steal - from.steal) / total;
  return shares;
}

Machine DescribeMachine(const std::string& dir) {
  Machine m;
  m.nproc = std::thread::hardware_concurrency();
  struct utsname u;
  m.kernel = ::uname(&u) == 0 ? u.release : "unknown";
  m.fs_type = FsTypeName(dir);
  const std::time_t now = std::time(nullptr);
  struct tm tm;
  char buf[64];
  ::gmtime_r(&now, &tm);
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  m.date = buf;
  return m;
}

std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      absl::StrAppendFormat(&out, "\\u%04x", static_cast<int>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string MachineJson(const Machine& m) {
  return absl::StrFormat(R"({"nproc": %u, "kernel": %s, "fs_type": %s, "date": %s})", m.nproc,
                         JsonString(m.kernel), JsonString(m.fs_type), JsonString(m.date));
}

WorkDir::WorkDir(const std::string& dir, bool keep) {
  if (!dir.empty()) {
    if (::mkdir(dir.c_str(), 0755) == 0) {
      remove_ = !keep;
    } else if (errno != EEXIST) {
      DieErrno("mkdir", dir);
    }
    path_ = std::filesystem::absolute(dir).string();
    return;
  }
  const char* tmpdir = std::getenv("TMPDIR");
  const std::string parent = (tmpdir != nullptr && *tmpdir != '\0') ? tmpdir : "bench-data";
  if (::mkdir(parent.c_str(), 0755) == 0) {
    made_parent_ = parent;
  } else if (errno != EEXIST) {
    DieErrno("mkdir", parent);
  }
  std::string tmpl = absl::StrCat(parent, "/", program_invocation_short_name, "-XXXXXX");
  if (::mkdtemp(tmpl.data()) == nullptr) DieErrno("mkdtemp", tmpl);
  path_ = std::filesystem::absolute(tmpl).string();
  remove_ = !keep;
}

WorkDir::~WorkDir() {
  if (!remove_) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
  if (!made_parent_.empty()) ::rmdir(made_parent_.c_str());  // only if empty
}

}  // namespace qmgr::bench
