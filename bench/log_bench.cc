// log_bench: how close the system log comes to the disk under it.
//
// One run measures, in the file system of --dir:
//  1. the raw disk with the log's own pattern, through POSIX directly: a
//     preallocated (zero-written, fdatasync'd) file overwritten sequentially,
//     one fdatasync after every write, for several write sizes;
//  2. durable 1 KiB appends (Log::Append + Log::WaitDurable) with 1, 8 and 64
//     appender threads, each on a fresh log;
//  3. the ratios against the goals (BENCHMARKS.md), PASS or MISS.
//
// The table goes to stdout; with --json, the JSON document goes to stdout and
// the table to stderr. Progress goes to stderr. MB is 10^6 bytes.
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "bench/bench_support.h"
#include "log/file.h"
#include "log/format.h"
#include "log/log.h"

namespace {

using namespace qmgr::bench;

using Clock = std::chrono::steady_clock;
using qmgr::log::Log;
using qmgr::log::LogOptions;
using qmgr::log::LogStats;
using qmgr::log::Lsn;

constexpr uint64_t kRawFileBytes = 256ull << 20;
constexpr size_t kRawSizes[] = {512, 4096, 64 << 10, 1 << 20};
constexpr int kAppenderCountsDefault[] = {1, 8, 64};
constexpr size_t kPayloadBytes = 1024;
constexpr uint8_t kRecordType = qmgr::v1::LogRecord::kEnqueue;
constexpr double kGoalLatencyRatio = 1.3;      // at most
constexpr double kGoalThroughputRatio = 0.70;  // at least

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string SizeName(uint64_t bytes) {
  if (bytes >= (1u << 20) && bytes % (1u << 20) == 0) return absl::StrCat(bytes >> 20, " MiB");
  if (bytes >= 1024 && bytes % 1024 == 0) return absl::StrCat(bytes >> 10, " KiB");
  return absl::StrCat(bytes, " B");
}

// Process CPU time (user + system, all threads) since construction.
class CpuClock {
 public:
  CpuClock() : start_(Now()), start_switches_(Switches()) {}
  // CPU seconds used per wall second: 2.0 means two cores busy throughout.
  double Cores(double wall_seconds) const { return (Now() - start_) / wall_seconds; }
  // Context switches (voluntary + involuntary) of all threads since construction.
  uint64_t SwitchesSince() const { return Switches() - start_switches_; }

 private:
  static double Now() {
    struct rusage ru;
    ::getrusage(RUSAGE_SELF, &ru);
    auto s = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) + tv.tv_usec / 1e6; };
    return s(ru.ru_utime) + s(ru.ru_stime);
  }
  static uint64_t Switches() {
    struct rusage ru;
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<uint64_t>(ru.ru_nvcsw + ru.ru_nivcsw);
  }
  const double start_;
  const uint64_t start_switches_;
};

// --- 1. The raw disk -----------------------------------------------------

struct RawResult {
  size_t write_bytes = 0;
  uint64_t syncs = 0;
  double seconds = 0;
  double syncs_per_s = 0;
  double mb_per_s = 0;
  double p50_us = 0;
  double p99_us = 0;
  double cpu_cores = 0;
};

void PwriteAll(int fd, const char* data, size_t n, uint64_t offset, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, data, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      DieErrno("pwrite", path);
    }
    data += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
}

// A preallocated file written the way the log writes a segment: each write
// starts on a 4 KiB boundary after the previous one (the log never rewrites a
// block holding durable bytes), fdatasync after each. For sizes that are
// multiples of 4 KiB this is a plain sequential overwrite.
class RawDisk {
 public:
  explicit RawDisk(const std::string& dir) : path_(dir + "/raw.dat") {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) DieErrno("open", path_);
    // Preallocate the way the log does: zeros written, then fdatasync, so an
    // overwrite's fdatasync has data only to write, no block allocation.
    std::fprintf(stderr, "raw: preallocating %s ...\n", SizeName(kRawFileBytes).c_str());
    const std::string zeros(1 << 20, '\0');
    for (uint64_t off = 0; off < kRawFileBytes; off += zeros.size()) {
      PwriteAll(fd_, zeros.data(), zeros.size(), off, path_);
    }
    if (::fdatasync(fd_) != 0) DieErrno("fdatasync", path_);
    data_.resize(kRawSizes[std::size(kRawSizes) - 1]);
    for (size_t i = 0; i < data_.size(); ++i) data_[i] = static_cast<char>(i * 131 + 7);
  }
  ~RawDisk() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  RawDisk(const RawDisk&) = delete;
  RawDisk& operator=(const RawDisk&) = delete;

  RawResult Measure(size_t size, double seconds) {
    std::fprintf(stderr, "raw: %s writes + fdatasync for %.1f s ...\n", SizeName(size).c_str(),
                 seconds);
    if (size > data_.size()) Die("raw write size too large");
    const uint64_t step = qmgr::log::AlignUp(size);
    std::vector<Clock::duration> lat;
    lat.reserve(1 << 16);
    uint64_t offset = 0;
    const CpuClock cpu;
    const Clock::time_point start = Clock::now();
    const Clock::time_point deadline =
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    Clock::time_point now = start;
    while (now < deadline) {
      if (offset + size > kRawFileBytes) offset = 0;
      const Clock::time_point t0 = Clock::now();
      PwriteAll(fd_, data_.data(), size, offset, path_);
      if (::fdatasync(fd_) != 0) DieErrno("fdatasync", path_);
      now = Clock::now();
      lat.push_back(now - t0);
      offset += step;
    }
    RawResult r;
    r.write_bytes = size;
    r.syncs = lat.size();
    r.seconds = Seconds(now - start);
    r.syncs_per_s = static_cast<double>(r.syncs) / r.seconds;
    r.mb_per_s = static_cast<double>(r.syncs * size) / r.seconds / 1e6;
    r.p50_us = Percentile(lat, 50);
    r.p99_us = Percentile(lat, 99);
    r.cpu_cores = cpu.Cores(r.seconds);
    return r;
  }

 private:
  const std::string path_;
  int fd_ = -1;
  std::string data_;
};

// --- 2. Durable appends --------------------------------------------------

struct AppendResult {
  int threads = 0;
  uint64_t records = 0;
  double seconds = 0;
  double records_per_s = 0;
  double payload_mb_per_s = 0;  // payload bytes of durable records
  double written_mb_per_s = 0;  // LogStats::written_bytes: batch bytes incl. headers
  double lsn_mb_per_s = 0;      // LSN advance: written bytes plus 4 KiB alignment padding
  uint64_t commits = 0;
  uint64_t commit_syncs = 0;
  double syncs_per_s = 0;
  double bytes_per_sync = 0;
  double records_per_sync = 0;
  double p50_us = 0;
  double p99_us = 0;
  uint64_t segments_created = 0;  // during the measurement (background allocator)
  double cpu_cores = 0;
  double switches_per_record = 0;  // context switches of the process per record
};

// A serialized ENQUEUE LogRecord of exactly `bytes` bytes, so that the log
// the benchmark leaves (--keep-logs) is a real one that qmgrctl can read.
std::string EnqueueRecordOfSize(size_t bytes) {
  qmgr::v1::LogRecord record;
  qmgr::v1::Message* message = record.mutable_enqueue()->add_messages();
  message->set_id(1);
  message->set_queue("BENCH");
  message->set_class_(qmgr::v1::RECOVERABLE);
  std::string body(bytes, '\0');
  for (size_t i = 0; i < body.size(); ++i) body[i] = static_cast<char>('a' + i % 26);
  message->set_payload(body);
  const size_t overhead = record.ByteSizeLong() - bytes;
  body.resize(bytes - overhead);
  message->set_payload(body);
  if (record.ByteSizeLong() != bytes) body.pop_back();  // a varint length shrank by a byte
  message->set_payload(body);
  return record.SerializeAsString();
}

AppendResult MeasureAppends(const std::string& dir, int threads, double seconds, bool keep_log,
                            uint64_t segment_bytes) {
  std::fprintf(stderr, "log: %d appender(s) for %.1f s ...\n", threads, seconds);
  LogOptions options;
  options.segment_bytes = segment_bytes;
  // Open preallocates the first segment and the one ahead before returning.
  absl::StatusOr<std::unique_ptr<Log>> opened =
      Log::Open(qmgr::log::PosixFileSystem(), dir, options);
  if (!opened.ok()) Die(absl::StrCat("Log::Open ", dir, ": ", opened.status().ToString()));
  Log& log = **opened;

  const std::string payload = EnqueueRecordOfSize(kPayloadBytes);

  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  Clock::time_point deadline;
  std::vector<std::vector<Clock::duration>> lats(threads);
  std::vector<Clock::time_point> ends(threads);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::vector<Clock::duration>& lat = lats[t];
      lat.reserve(1 << 15);
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      Clock::time_point now = Clock::now();
      while (now < deadline) {
        const Clock::time_point t0 = now;
        absl::StatusOr<Lsn> lsn = log.Append(kRecordType, payload);
        if (!lsn.ok()) Die(absl::StrCat("Append: ", lsn.status().ToString()));
        if (absl::Status s = log.WaitDurable(*lsn); !s.ok()) {
          Die(absl::StrCat("WaitDurable: ", s.ToString()));
        }
        now = Clock::now();
        lat.push_back(now - t0);
      }
      ends[t] = now;
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  const LogStats s0 = log.stats();
  const Lsn lsn0 = log.NextLsn();
  const CpuClock cpu;
  const Clock::time_point start = Clock::now();
  deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  go.store(true, std::memory_order_release);
  for (std::thread& w : workers) w.join();
  const double cpu_wall = Seconds(Clock::now() - start);
  const double cpu_cores = cpu.Cores(cpu_wall);
  const uint64_t switches = cpu.SwitchesSince();
  const LogStats s1 = log.stats();
  const Lsn lsn1 = log.DurableLsn();
  if (absl::Status s = log.Close(); !s.ok()) Die(absl::StrCat("Close: ", s.ToString()));

  std::vector<Clock::duration> all;
  for (const auto& v : lats) all.insert(all.end(), v.begin(), v.end());
  AppendResult r;
  r.threads = threads;
  r.records = all.size();
  r.seconds = Seconds(*std::max_element(ends.begin(), ends.end()) - start);
  r.records_per_s = static_cast<double>(r.records) / r.seconds;
  r.payload_mb_per_s = static_cast<double>(r.records * kPayloadBytes) / r.seconds / 1e6;
  r.written_mb_per_s = static_cast<double>(s1.written_bytes - s0.written_bytes) / r.seconds / 1e6;
  r.lsn_mb_per_s = static_cast<double>(lsn1 - lsn0) / r.seconds / 1e6;
  r.commits = s1.commits - s0.commits;
  r.commit_syncs = s1.commit_syncs - s0.commit_syncs;
  r.syncs_per_s = static_cast<double>(r.commit_syncs) / r.seconds;
  if (r.commit_syncs > 0) {
    r.bytes_per_sync = static_cast<double>(s1.written_bytes - s0.written_bytes) /
                       static_cast<double>(r.commit_syncs);
    r.records_per_sync =
        static_cast<double>(s1.appends - s0.appends) / static_cast<double>(r.commit_syncs);
  }
  r.p50_us = Percentile(all, 50);
  r.p99_us = Percentile(all, 99);
  r.segments_created = s1.segments_created - s0.segments_created;
  r.cpu_cores = cpu_cores;
  r.switches_per_record = static_cast<double>(switches) / static_cast<double>(r.records);
  opened->reset();
  if (!keep_log) {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  return r;
}

// --- 3. Ratios -----------------------------------------------------------

struct Ratios {
  double latency = 0;  // 1 appender p50 / raw 4 KiB p50
  bool latency_pass = false;
  double raw_ref_mb_per_s = 0;  // raw MB/s at the 64-appender bytes per fdatasync
  std::string raw_ref_method;
  double throughput = 0;  // 64-appender written MB/s / raw_ref_mb_per_s
  bool throughput_pass = false;
  // A check on the interpolation: the raw disk measured at exactly the
  // 64-appender bytes per fdatasync (same pattern: each write 4 KiB-aligned).
  RawResult raw_direct;
  double throughput_direct = 0;
};

// Raw MB/s at `bytes` per write. The time of one write + fdatasync is
// interpolated linearly in the write size between the two measured sizes
// around `bytes` (a sync costs a fixed latency plus the transfer), and
// MB/s = bytes / that time. Clamped to the smallest or largest size measured.
double RawMbPerSAt(const std::vector<RawResult>& raw, double bytes, std::string* method) {
  if (bytes <= static_cast<double>(raw.front().write_bytes)) {
    *method = absl::StrCat("nearest measured size (", SizeName(raw.front().write_bytes), ")");
    return raw.front().mb_per_s;
  }
  if (bytes >= static_cast<double>(raw.back().write_bytes)) {
    *method = absl::StrCat("nearest measured size (", SizeName(raw.back().write_bytes), ")");
    return raw.back().mb_per_s;
  }
  for (size_t i = 0; i + 1 < raw.size(); ++i) {
    const double lo = static_cast<double>(raw[i].write_bytes);
    const double hi = static_cast<double>(raw[i + 1].write_bytes);
    if (bytes >= lo && bytes <= hi) {
      const double f = (bytes - lo) / (hi - lo);
      const double t_lo = 1 / raw[i].syncs_per_s;
      const double t_hi = 1 / raw[i + 1].syncs_per_s;
      const double t = t_lo + f * (t_hi - t_lo);
      *method = absl::StrFormat(
          "interpolated: time per write+fdatasync linear in size between %s (%.1f us) and "
          "%s (%.1f us) -> %.1f us per %.0f bytes",
          SizeName(raw[i].write_bytes), t_lo * 1e6, SizeName(raw[i + 1].write_bytes), t_hi * 1e6,
          t * 1e6, bytes);
      return bytes / t / 1e6;
    }
  }
  *method = "unreachable";
  return raw.back().mb_per_s;
}

Ratios ComputeRatios(const std::vector<RawResult>& raw, const std::vector<AppendResult>& appends,
                     RawDisk& disk, double seconds) {
  Ratios q;
  const RawResult* raw4k = nullptr;
  for (const RawResult& r : raw) {
    if (r.write_bytes == 4096) raw4k = &r;
  }
  const AppendResult& one = appends.front();
  const AppendResult& many = appends.back();
  q.latency = one.p50_us / raw4k->p50_us;
  q.latency_pass = q.latency <= kGoalLatencyRatio;
  q.raw_ref_mb_per_s = RawMbPerSAt(raw, many.bytes_per_sync, &q.raw_ref_method);
  q.throughput = many.written_mb_per_s / q.raw_ref_mb_per_s;
  q.throughput_pass = q.throughput >= kGoalThroughputRatio;
  const size_t direct = std::clamp<size_t>(static_cast<size_t>(std::llround(many.bytes_per_sync)),
                                           1, kRawSizes[std::size(kRawSizes) - 1]);
  q.raw_direct = disk.Measure(direct, seconds);
  q.throughput_direct = many.written_mb_per_s / q.raw_direct.mb_per_s;
  return q;
}

// --- Output --------------------------------------------------------------

std::string Table(const std::string& dir, uint64_t segment_bytes, double seconds, const Machine& m,
                  const std::vector<RawResult>& raw, const std::vector<AppendResult>& appends,
                  const Ratios& q) {
  std::string out;
  absl::StrAppendFormat(&out, "machine: nproc=%u kernel=%s fs=%s date=%s\n", m.nproc, m.kernel,
                        m.fs_type, m.date);
  absl::StrAppendFormat(&out, "dir: %s  seconds/measurement: %g  segment: %s\n\n", dir, seconds,
                        SizeName(segment_bytes));
  absl::StrAppendFormat(&out,
                        "Raw disk: preallocated %s file overwritten in ascending order, each "
                        "write 4 KiB-aligned, pwrite + fdatasync per write\n",
                        SizeName(kRawFileBytes));
  absl::StrAppendFormat(&out, "%-9s %9s %9s %9s %9s %5s\n", "write", "syncs/s", "MB/s", "p50 us",
                        "p99 us", "cpu");
  auto raw_row = [&out](const RawResult& r) {
    absl::StrAppendFormat(&out, "%-9s %9.0f %9.2f %9.1f %9.1f %5.2f\n", SizeName(r.write_bytes),
                          r.syncs_per_s, r.mb_per_s, r.p50_us, r.p99_us, r.cpu_cores);
  };
  for (const RawResult& r : raw) raw_row(r);
  out += "(cpu = process CPU seconds per wall second)\n";
  absl::StrAppendFormat(&out,
                        "\nDurable appends: %zu-byte payload, Append(type=%d) + WaitDurable per "
                        "call, fresh log per row\n",
                        kPayloadBytes, kRecordType);
  absl::StrAppendFormat(&out, "%-7s %9s %8s %8s %8s %8s %10s %8s %8s %8s %5s %6s %4s\n", "threads",
                        "records/s", "pay MB/s", "wrt MB/s", "LSN MB/s", "syncs/s", "bytes/sync",
                        "rec/sync", "p50 us", "p99 us", "cpu", "csw/r", "segs");
  for (const AppendResult& a : appends) {
    absl::StrAppendFormat(
        &out, "%-7d %9.0f %8.2f %8.2f %8.2f %8.0f %10.0f %8.2f %8.1f %8.1f %5.2f %6.2f %4d\n",
        a.threads, a.records_per_s, a.payload_mb_per_s, a.written_mb_per_s, a.lsn_mb_per_s,
        a.syncs_per_s, a.bytes_per_sync, a.records_per_sync, a.p50_us, a.p99_us, a.cpu_cores,
        a.switches_per_record, static_cast<int>(a.segments_created));
  }
  out +=
      "(pay = record payload bytes; wrt = LogStats::written_bytes, batch and record headers "
      "included;\n LSN = log space used, incl. padding of each batch to 4 KiB; cpu = process CPU "
      "seconds per wall second;\n csw/r = context switches per record; segs = segments "
      "preallocated during the run)\n\n";
  absl::StrAppendFormat(&out,
                        "Goal (a) %d-appender p50 / raw 4 KiB p50 = %.1f / %.1f us = %.2f "
                        "(goal <= %.2f, for 1 appender): %s\n",
                        appends.front().threads, appends.front().p50_us, raw[1].p50_us, q.latency,
                        kGoalLatencyRatio, q.latency_pass ? "PASS" : "MISS");
  absl::StrAppendFormat(&out,
                        "Goal (b) %d-appender written MB/s / raw MB/s at %.0f bytes per write = "
                        "%.2f / %.2f = %.2f (goal >= %.2f, for 64 appenders): %s\n",
                        appends.back().threads, appends.back().bytes_per_sync,
                        appends.back().written_mb_per_s, q.raw_ref_mb_per_s, q.throughput,
                        kGoalThroughputRatio, q.throughput_pass ? "PASS" : "MISS");
  absl::StrAppendFormat(&out, "  raw reference %s\n", q.raw_ref_method);
  absl::StrAppendFormat(
      &out, "  check: raw measured at exactly %s per write: %.2f MB/s -> ratio %.2f\n",
      SizeName(q.raw_direct.write_bytes), q.raw_direct.mb_per_s, q.throughput_direct);
  raw_row(q.raw_direct);
  return out;
}

std::string Json(const std::string& dir, uint64_t segment_bytes, double seconds, const Machine& m,
                 const std::vector<RawResult>& raw, const std::vector<AppendResult>& appends,
                 const Ratios& q) {
  std::string out = "{\n";
  absl::StrAppend(&out, "  \"machine\": ", MachineJson(m), ",\n");
  absl::StrAppendFormat(&out,
                        "  \"config\": {\"dir\": %s, \"seconds\": %g, \"segment_bytes\": %d, "
                        "\"raw_file_bytes\": %d, \"payload_bytes\": %d},\n",
                        JsonString(dir), seconds, segment_bytes, kRawFileBytes, kPayloadBytes);
  out += "  \"raw\": [\n";
  for (size_t i = 0; i < raw.size(); ++i) {
    const RawResult& r = raw[i];
    absl::StrAppendFormat(&out,
                          "    {\"write_bytes\": %d, \"syncs\": %d, \"seconds\": %.3f, "
                          "\"syncs_per_s\": %.1f, \"mb_per_s\": %.3f, \"p50_us\": %.1f, "
                          "\"p99_us\": %.1f, \"cpu_cores\": %.3f}%s\n",
                          r.write_bytes, r.syncs, r.seconds, r.syncs_per_s, r.mb_per_s, r.p50_us,
                          r.p99_us, r.cpu_cores, i + 1 < raw.size() ? "," : "");
  }
  out += "  ],\n  \"appends\": [\n";
  for (size_t i = 0; i < appends.size(); ++i) {
    const AppendResult& a = appends[i];
    absl::StrAppendFormat(
        &out,
        "    {\"threads\": %d, \"records\": %d, \"seconds\": %.3f, \"records_per_s\": %.1f, "
        "\"payload_mb_per_s\": %.3f, \"written_mb_per_s\": %.3f, \"lsn_mb_per_s\": %.3f, "
        "\"commits\": %d, \"commit_syncs\": %d, \"syncs_per_s\": %.1f, \"bytes_per_sync\": %.1f, "
        "\"records_per_sync\": %.3f, \"p50_us\": %.1f, \"p99_us\": %.1f, "
        "\"segments_created\": %d, \"cpu_cores\": %.3f, \"switches_per_record\": %.3f}%s\n",
        a.threads, a.records, a.seconds, a.records_per_s, a.payload_mb_per_s, a.written_mb_per_s,
        a.lsn_mb_per_s, a.commits, a.commit_syncs, a.syncs_per_s, a.bytes_per_sync,
        a.records_per_sync, a.p50_us, a.p99_us, a.segments_created, a.cpu_cores,
        a.switches_per_record, i + 1 < appends.size() ? "," : "");
  }
  out += "  ],\n";
  absl::StrAppendFormat(&out,
                        "  \"goals\": {\n"
                        "    \"latency_ratio\": {\"value\": %.3f, \"goal_max\": %.2f, "
                        "\"pass\": %s},\n"
                        "    \"throughput_ratio\": {\"value\": %.3f, \"goal_min\": %.2f, "
                        "\"pass\": %s, \"raw_reference_mb_per_s\": %.3f, "
                        "\"raw_reference_method\": %s, \"raw_direct_write_bytes\": %d, "
                        "\"raw_direct_mb_per_s\": %.3f, \"raw_direct_syncs_per_s\": %.1f, "
                        "\"raw_direct_p50_us\": %.1f, \"throughput_ratio_direct\": %.3f}\n  }\n",
                        q.latency, kGoalLatencyRatio, q.latency_pass ? "true" : "false",
                        q.throughput, kGoalThroughputRatio, q.throughput_pass ? "true" : "false",
                        q.raw_ref_mb_per_s, JsonString(q.raw_ref_method), q.raw_direct.write_bytes,
                        q.raw_direct.mb_per_s, q.raw_direct.syncs_per_s, q.raw_direct.p50_us,
                        q.throughput_direct);
  out += "}\n";
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"log_bench: the system log's durable appends against the raw disk"};
  std::string dir;
  double seconds = 3;
  uint64_t segment_bytes = qmgr::log::kSegmentBytesDefault;
  bool keep = false;
  bool json = false;
  app.add_option("--dir", dir,
                 "directory to measure in (created if missing); default: a fresh directory "
                 "under $TMPDIR or ./bench-data, removed at the end unless --keep");
  app.add_option("--seconds", seconds, "seconds per measurement")->check(CLI::PositiveNumber);
  app.add_option("--segment-bytes", segment_bytes, "log segment size (multiple of 4096)");
  app.add_flag("--keep", keep, "keep the directory (each row's log is removed unless --keep-logs)");
  app.add_flag("--json", json, "JSON on stdout, the table on stderr");
  std::vector<int> appender_counts(std::begin(kAppenderCountsDefault),
                                   std::end(kAppenderCountsDefault));
  app.add_option("--appenders", appender_counts, "appender thread counts, comma-separated")
      ->delimiter(',')
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  bool keep_logs = false;
  app.add_flag("--keep-logs", keep_logs,
               "keep each row's log (DIR/log-N) for qmgrctl; implies --keep");
  CLI11_PARSE(app, argc, argv);

  const WorkDir work_dir(dir, keep || keep_logs);
  dir = work_dir.path();

  const Machine machine = DescribeMachine(dir);
  auto disk = std::make_unique<RawDisk>(dir);
  std::vector<RawResult> raw;
  for (const size_t size : kRawSizes) raw.push_back(disk->Measure(size, seconds));
  std::vector<AppendResult> appends;
  std::sort(appender_counts.begin(), appender_counts.end());
  for (const int threads : appender_counts) {
    const std::string log_dir = absl::StrCat(dir, "/log-", threads);
    std::error_code ec;
    std::filesystem::remove_all(log_dir, ec);  // a fresh log per row
    appends.push_back(MeasureAppends(log_dir, threads, seconds, keep_logs, segment_bytes));
  }
  const Ratios ratios = ComputeRatios(raw, appends, *disk, seconds);
  disk.reset();

  const std::string table = Table(dir, segment_bytes, seconds, machine, raw, appends, ratios);
  if (json) {
    std::fputs(table.c_str(), stderr);
    std::fputs(Json(dir, segment_bytes, seconds, machine, raw, appends, ratios).c_str(), stdout);
  } else {
    std::fputs(table.c_str(), stdout);
  }

  return 0;
}
