// restart_bench: how fast the queue manager comes back, and what a
// checkpoint costs the traffic around it (BENCHMARKS.md, issue 4).
//
//  1. Fills a queue with --messages 1 KiB RECOVERABLE messages, checkpoints
//     (automatic checkpoints off), shuts down normally, and times a normal
//     restart until the queue manager accepts traffic.
//  2. Writes about --log-mib more of log past that checkpoint (more
//     messages), crashes (no shutdown), optionally drops the page cache, and
//     times the emergency restart: replay MB/s beside the disk's sequential
//     read rate measured in the same run on the same log files.
//  3. Runs --producers durable enqueuers and takes a checkpoint of a large
//     delta in the middle: p99 enqueue latency during the checkpoint against
//     outside it.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "bench/bench_support.h"
#include "log/segment.h"
#include "restart/restart.h"

namespace qmgr::bench {
namespace {

struct Config {
  std::string dir;
  bool keep = false;
  uint64_t messages = 1'000'000;
  uint64_t log_mib = 1024;
  uint64_t payload = 1024;
  int producers = 8;
  double during_seconds = 3;
};

restart::RestartOptions Options(const std::string& data_dir) {
  restart::RestartOptions options;
  options.data_dir = data_dir;
  // Only the restart's own checkpoint, taken in the background as in
  // production; every other one is asked for.
  options.checkpoint.log_bytes = 0;
  options.checkpoint.interval = absl::ZeroDuration();
  options.checkpoint.max_restart_seconds = 0;
  // Every message of the benchmark in memory: the restore, not the spill, is
  // what is measured.
  options.engine.memory_budget_bytes = 8ull << 30;
  options.progress = [](absl::string_view line) { std::printf("  %s\n", std::string(line).c_str()); };
  return options;
}

std::unique_ptr<restart::QueueManager> OpenOrDie(const std::string& data_dir) {
  absl::StatusOr<std::unique_ptr<restart::QueueManager>> qm = restart::Restart(Options(data_dir));
  if (!qm.ok()) Die(absl::StrCat("restart: ", qm.status().ToString()));
  return *std::move(qm);
}

void Fill(Engine* engine, uint64_t count, uint64_t payload_bytes) {
  const std::string payload(payload_bytes, 'q');
  constexpr uint64_t kBatch = 100;
  for (uint64_t done = 0; done < count; done += kBatch) {
    std::vector<MessageSpec> batch(std::min(kBatch, count - done));
    for (MessageSpec& spec : batch) {
      spec.queue = "Q";
      spec.payload = payload;
    }
    absl::StatusOr<std::vector<EnqueueResult>> r = engine->EnqueueBatch(std::move(batch));
    if (!r.ok()) Die(absl::StrCat("enqueue: ", r.status().ToString()));
  }
}

bool DropPageCache() {
  ::sync();
  std::ofstream drop("/proc/sys/vm/drop_caches");
  if (!drop) return false;
  drop << "3\n";
  drop.flush();
  return static_cast<bool>(drop);
}

// Sequential read of every segment of the log, 1 MiB at a time: the disk's
// (or the page cache's) read rate for the same bytes the replay reads.
double ReadRate(const std::string& log_dir) {
  absl::StatusOr<std::vector<log::SegmentFile>> segments =
      log::ListSegments(log::PosixFileSystem(), log_dir, nullptr);
  if (!segments.ok()) Die(segments.status().ToString());
  std::vector<char> buffer(1 << 20);
  uint64_t bytes = 0;
  const Clock::time_point start = Clock::now();
  for (const log::SegmentFile& segment : *segments) {
    const int fd = ::open(segment.path.c_str(), O_RDONLY);
    if (fd < 0) DieErrno("open", segment.path);
    ssize_t n;
    while ((n = ::read(fd, buffer.data(), buffer.size())) > 0) bytes += n;
    ::close(fd);
  }
  return static_cast<double>(bytes) / std::chrono::duration<double>(Clock::now() - start).count();
}

void Run(const Config& config) {
  WorkDir work(config.dir, config.keep);
  const std::string data_dir = work.path() + "/qm";
  const Machine machine = DescribeMachine(work.path());
  std::printf("restart_bench: %u cores, %s, %s, %s\n", machine.nproc, machine.kernel.c_str(),
              machine.fs_type.c_str(), machine.date.c_str());

  // 1. A normal restart with the queue in the checkpoint.
  {
    std::unique_ptr<restart::QueueManager> qm = OpenOrDie(data_dir);
    if (!qm->engine()->DefineQueue("Q", {}).ok()) Die("define");
    const Clock::time_point start = Clock::now();
    Fill(qm->engine(), config.messages, config.payload);
    std::printf("filled %lu messages in %.1f s\n", static_cast<unsigned long>(config.messages),
                std::chrono::duration<double>(Clock::now() - start).count());
    absl::StatusOr<checkpoint::CheckpointReport> checkpoint =
        qm->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested);
    if (!checkpoint.ok()) Die(checkpoint.status().ToString());
    std::printf("checkpoint of the filled queue: %s\n", checkpoint->ToString().c_str());
    if (absl::Status s = qm->Shutdown(); !s.ok()) Die(s.ToString());
  }
  double normal_seconds = 0;
  {
    const Clock::time_point start = Clock::now();
    std::unique_ptr<restart::QueueManager> qm = OpenOrDie(data_dir);
    normal_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("NORMAL restart with %lu queued: accepting traffic after %.3f s (goal < 3 s)\n",
                static_cast<unsigned long>(config.messages), normal_seconds);

    // 2. Log past the checkpoint, then a crash.
    const uint64_t more = (config.log_mib << 20) / (config.payload + 64);
    const Clock::time_point fill = Clock::now();
    Fill(qm->engine(), more, config.payload);
    std::printf("wrote %lu more messages (%lu MiB of log) in %.1f s; crashing\n",
                static_cast<unsigned long>(more),
                static_cast<unsigned long>(
                    (qm->log()->NextLsn() - qm->checkpointer()->redo_lsn()) >> 20),
                std::chrono::duration<double>(Clock::now() - fill).count());
  }
  const bool dropped = DropPageCache();
  const double read_rate = ReadRate(data_dir + "/log");
  const bool dropped_again = dropped && DropPageCache();
  std::printf("page cache %s; sequential read of the log files: %.0f MB/s\n",
              dropped_again ? "dropped before the read and before the restart"
                            : "NOT dropped (no permission): both figures are from memory",
              read_rate / 1e6);
  double replay_rate = 0;
  double emergency_seconds = 0;
  {
    const Clock::time_point start = Clock::now();
    std::unique_ptr<restart::QueueManager> qm = OpenOrDie(data_dir);
    emergency_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const restart::RestartReport& report = qm->restart_report();
    replay_rate = report.replay_bytes_per_second;
    std::printf(
        "EMERGENCY restart: replay %.0f MB/s = %.2f of the read rate (goal >= 0.5); "
        "accepting traffic after %.2f s\n",
        replay_rate / 1e6, replay_rate / read_rate, emergency_seconds);

    // The restart's checkpoint, written while the queue manager was open.
    const Clock::time_point cp0 = Clock::now();
    absl::StatusOr<checkpoint::CheckpointReport> settled =
        qm->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested);
    if (!settled.ok()) Die(settled.status().ToString());
    std::printf("the restart's background checkpoint finished %.1f s after open\n",
                std::chrono::duration<double>(Clock::now() - cp0).count());

    // 3. Latency during a checkpoint of a large delta.
    Fill(qm->engine(), config.messages / 4, config.payload);  // the delta
    std::atomic<bool> stop{false};
    absl::Mutex mu;
    struct Op {
      Clock::time_point start;
      Clock::duration latency;
    };
    std::vector<Op> ops;
    std::vector<std::thread> producers;
    for (int p = 0; p < config.producers; ++p) {
      producers.emplace_back([&] {
        std::vector<Op> mine;
        const std::string payload(config.payload, 'l');
        while (!stop) {
          MessageSpec spec;
          spec.queue = "Q";
          spec.payload = payload;
          const Clock::time_point t = Clock::now();
          if (!qm->engine()->Enqueue(std::move(spec)).ok()) Die("enqueue");
          mine.push_back({t, Clock::now() - t});
        }
        absl::MutexLock lock(&mu);
        ops.insert(ops.end(), mine.begin(), mine.end());
      });
    }
    absl::SleepFor(absl::Seconds(config.during_seconds));
    const Clock::time_point cp_start = Clock::now();
    absl::StatusOr<checkpoint::CheckpointReport> cp =
        qm->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested);
    const Clock::time_point cp_end = Clock::now();
    if (!cp.ok()) Die(cp.status().ToString());
    absl::SleepFor(absl::Seconds(config.during_seconds));
    stop = true;
    for (std::thread& t : producers) t.join();
    std::vector<Clock::duration> during, outside;
    for (const Op& op : ops) {
      const bool overlaps = op.start < cp_end && op.start + op.latency > cp_start;
      (overlaps ? during : outside).push_back(op.latency);
    }
    const double p99_during = Percentile(during, 99);
    const double p99_outside = Percentile(outside, 99);
    std::printf("checkpoint under load: %s\n", cp->ToString().c_str());
    std::printf(
        "enqueue p99 during the checkpoint %.0f us (%zu ops), outside %.0f us (%zu ops): "
        "ratio %.2f (goal <= 2)\n",
        p99_during, during.size(), p99_outside, outside.size(), p99_during / p99_outside);
    std::printf(
        "{\"bench\":\"restart\",\"machine\":%s,\"messages\":%lu,\"normal_restart_s\":%.3f,"
        "\"emergency_restart_s\":%.2f,\"replay_MBps\":%.0f,\"read_MBps\":%.0f,"
        "\"page_cache_dropped\":%s,\"p99_during_us\":%.0f,\"p99_outside_us\":%.0f}\n",
        MachineJson(machine).c_str(), static_cast<unsigned long>(config.messages), normal_seconds,
        emergency_seconds, replay_rate / 1e6, read_rate / 1e6, dropped_again ? "true" : "false",
        p99_during, p99_outside);
  }
}

}  // namespace
}  // namespace qmgr::bench

int main(int argc, char** argv) {
  qmgr::bench::Config config;
  CLI::App app{"restart_bench: restart times, replay rate, latency during a checkpoint"};
  app.add_option("--dir", config.dir, "directory to measure in (default: a fresh one)");
  app.add_flag("--keep", config.keep, "keep the data directory");
  app.add_option("--messages", config.messages, "messages queued in the checkpoint");
  app.add_option("--log-mib", config.log_mib, "MiB of log to replay");
  app.add_option("--payload", config.payload, "payload bytes");
  app.add_option("--producers", config.producers, "enqueuers during the checkpoint");
  app.add_option("--seconds", config.during_seconds, "load before and after the checkpoint");
  CLI11_PARSE(app, argc, argv);
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  qmgr::bench::Run(config);
  return 0;
}
