// engine_bench: the queue engine in process, on a real log, against the log.
//
// One run measures, in the file system of --dir, each on a fresh log:
//  0. the reference: durable 1 KiB appends with 8 appender threads
//     (Log::Append of an ENQUEUE record + Log::WaitDurable per call), what
//     log_bench measures for its 8-appender row;
//  1. RECOVERABLE, IRRECOVERABLE and FASTPATH scenarios: 8 producer threads
//     looping Engine::Enqueue of 1 KiB messages onto queue BENCH, 8 consumer
//     threads looping Engine::Get(commit_previous) (one call per message, the
//     IMS single-mode shape);
//  2. the goals (BENCHMARKS.md), PASS or MISS.
//
// --pipeline W (W > 1) drives the engine as qmgrd does: callers that do not
// block per message. A producer calls EnqueueBatchNoWait (one message per
// call) and a consumer GetNoWait(commit_previous), each keeping up to W
// answers pending and waiting for durability once per W (WaitDurable of the
// latest LSN: the log is durable in LSN order). A message counts once its LSN
// is durable (the consumer's: its unit's commit, returned by the next Get).
// W = 1 is the blocking calls, Enqueue and Get.
//
// Every figure covers exactly --seconds of wall time per scenario: operations
// completing after the deadline are not counted, and process CPU and log
// statistics are sampled at the deadline.
//
// The table goes to stdout; with --json, the JSON document goes to stdout and
// the table to stderr. Progress goes to stderr.
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
#include "absl/synchronization/mutex.h"
#include "bench/bench_support.h"
#include "log/file.h"
#include "log/log.h"
#include "qmgr/engine.h"
#include "qmgr/status.h"

namespace {

using namespace qmgr::bench;

using Clock = std::chrono::steady_clock;
using qmgr::log::Log;
using qmgr::log::LogStats;
using qmgr::log::Lsn;

constexpr size_t kPayloadBytes = 1024;
constexpr int kReferenceAppenders = 8;
constexpr double kGoalRecoverableRatio = 0.50;  // of the 8-appender durable append rate
constexpr double kGoalIrrecoverableRate = 500000;
constexpr double kGoalCpuMicros = 5.0;  // per recoverable message
constexpr char kQueue[] = "BENCH";
// FASTPATH: a producer that found every one of its sessions in flight sleeps
// this long, doubling per consecutive round, reset by an accepted Enqueue.
constexpr int64_t kRefusalBackoffMinUs = 50;
constexpr int64_t kRefusalBackoffMaxUs = 1000;

// Process CPU seconds (user + system, all threads).
double ProcessCpuSeconds() {
  struct rusage ru;
  ::getrusage(RUSAGE_SELF, &ru);
  auto s = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) + tv.tv_usec / 1e6; };
  return s(ru.ru_utime) + s(ru.ru_stime);
}

std::unique_ptr<Log> OpenFreshLog(const std::string& dir) {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  // Open preallocates the first segment and the one ahead before returning.
  absl::StatusOr<std::unique_ptr<Log>> opened = Log::Open(qmgr::log::PosixFileSystem(), dir, {});
  if (!opened.ok()) Die(absl::StrCat("Log::Open ", dir, ": ", opened.status().ToString()));
  return std::move(*opened);
}

void CloseLog(std::unique_ptr<Log> log, const std::string& dir) {
  if (absl::Status s = log->Close(); !s.ok()) Die(absl::StrCat("Close: ", s.ToString()));
  log.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

// The log-side part of a window: deltas of LogStats.
struct LogDelta {
  uint64_t appends = 0;
  uint64_t commit_syncs = 0;
  uint64_t written_bytes = 0;
};

LogDelta Delta(const LogStats& a, const LogStats& b) {
  return {b.appends - a.appends, b.commit_syncs - a.commit_syncs,
          b.written_bytes - a.written_bytes};
}

// What a measuring window took: the process's CPU, the log's work, and the
// machine's idle and steal shares over the same interval.
struct Window {
  double cpu_seconds = 0;
  LogDelta log;
  MachineShares machine;
};

// Starts `n` workers, releases them together, sleeps until the deadline and
// samples CPU and log statistics there, then joins. A worker runs
// body(index, deadline) and must stop counting work that completes after it.
template <typename Body>
Window RunWindow(int n, double seconds, Log& log, Body body) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  Clock::time_point deadline;
  std::vector<std::thread> workers;
  for (int i = 0; i < n; ++i) {
    workers.emplace_back([&, i] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      body(i, deadline);
    });
  }
  while (ready.load() < n) std::this_thread::yield();
  const LogStats s0 = log.stats();
  const double cpu0 = ProcessCpuSeconds();
  const MachineCpu machine0 = ReadMachineCpu();
  const Clock::time_point start = Clock::now();
  deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  go.store(true, std::memory_order_release);
  std::this_thread::sleep_until(deadline);
  Window window;
  window.cpu_seconds = ProcessCpuSeconds() - cpu0;
  window.machine = SharesBetween(machine0, ReadMachineCpu());
  window.log = Delta(s0, log.stats());
  for (std::thread& w : workers) w.join();
  return window;
}

// --- 0. The reference: durable appends ------------------------------------

struct ReferenceResult {
  uint64_t records = 0;
  double records_per_s = 0;
  double syncs_per_s = 0;
  double records_per_sync = 0;
  double cpu_us_per_record = 0;
  MachineShares machine;
};

// The record an engine writes for one RECOVERABLE Enqueue (near enough: no
// enqueue time or session), so the reference writes the same bytes.
qmgr::v1::LogRecord EnqueueRecord(const std::string& payload) {
  qmgr::v1::LogRecord record;
  qmgr::v1::Message* message = record.mutable_enqueue()->add_messages();
  message->set_id(1);
  message->set_queue(kQueue);
  message->set_class_(qmgr::v1::RECOVERABLE);
  message->set_payload(payload);
  return record;
}

ReferenceResult MeasureReference(const std::string& dir, double seconds,
                                 const std::string& payload) {
  std::fprintf(stderr, "reference: %d durable appenders for %.1f s ...\n", kReferenceAppenders,
               seconds);
  std::unique_ptr<Log> log = OpenFreshLog(dir);
  const qmgr::v1::LogRecord record = EnqueueRecord(payload);
  std::vector<uint64_t> counts(kReferenceAppenders);
  const Window window =
      RunWindow(kReferenceAppenders, seconds, *log, [&](int t, Clock::time_point deadline) {
        uint64_t n = 0;
        while (true) {
          absl::StatusOr<Lsn> lsn = log->Append(record);
          if (!lsn.ok()) Die(absl::StrCat("Append: ", lsn.status().ToString()));
          if (absl::Status s = log->WaitDurable(*lsn); !s.ok()) {
            Die(absl::StrCat("WaitDurable: ", s.ToString()));
          }
          if (Clock::now() > deadline) break;
          ++n;
        }
        counts[t] = n;
      });
  const LogDelta& delta = window.log;
  CloseLog(std::move(log), dir);
  ReferenceResult r;
  for (uint64_t c : counts) r.records += c;
  r.records_per_s = static_cast<double>(r.records) / seconds;
  r.syncs_per_s = static_cast<double>(delta.commit_syncs) / seconds;
  if (delta.commit_syncs > 0) {
    r.records_per_sync =
        static_cast<double>(delta.appends) / static_cast<double>(delta.commit_syncs);
  }
  if (r.records > 0) {
    r.cpu_us_per_record = window.cpu_seconds * 1e6 / static_cast<double>(r.records);
  }
  r.machine = window.machine;
  return r;
}

// --- 1. Engine scenarios -------------------------------------------------

struct ScenarioResult {
  std::string name;
  int pipeline = 1;  // answers pending per caller (1: the blocking calls)
  int producers = 0;
  int consumers = 0;
  uint64_t enqueued = 0;
  uint64_t consumed = 0;
  double enq_per_s = 0;
  double cons_per_s = 0;
  double cpu_cores = 0;
  double cpu_us_per_msg = 0;  // process CPU / consumed
  double caller_cpu_s = 0;    // CPU of the producer and consumer threads
  double caller_user_s = 0;   // the user-space part of it
  double caller_user_us_per_msg = 0;
  double caller_cpu_us_per_msg = 0;
  double work_cpu_us_per_msg = 0;  // the same without the CPU spent in durability waits
  uint64_t log_appends = 0;
  uint64_t commit_syncs = 0;
  double syncs_per_s = 0;
  double syncs_per_msg = 0;
  double records_per_sync = 0;
  double written_bytes_per_msg = 0;
  double enq_p50_us = 0;
  double enq_p99_us = 0;
  double get_p50_us = 0;  // Get(commit_previous): includes the previous unit's durable wait
  double get_p99_us = 0;
  uint64_t get_timeouts = 0;  // DeadlineExceeded: the queue was empty for the whole wait
  uint64_t refusals = 0;      // FASTPATH: RESPONSE_OUTSTANDING
  uint64_t throttled = 0;     // producer pauses because the backlog was at --max-backlog
  uint64_t backoffs = 0;      // FASTPATH: producer sleeps after a whole round of refusals
  uint64_t backlog_end = 0;   // enqueued - consumed at the deadline
  MachineShares machine;      // the whole machine's idle and steal over the window
};

struct ScenarioConfig {
  qmgr::MessageClass cls = qmgr::v1::RECOVERABLE;
  int producers = 8;
  int consumers = 8;
  int sessions = 64;         // FASTPATH: sessions per producer
  uint64_t max_backlog = 0;  // producers pause while enqueued - consumed exceeds it
  int pipeline = 1;          // answers pending per caller before it waits (1: blocking calls)
  absl::Duration get_wait = absl::Milliseconds(100);
};

struct WorkerStats {
  uint64_t ops = 0;
  uint64_t refusals = 0;
  uint64_t timeouts = 0;
  uint64_t throttled = 0;
  uint64_t backoffs = 0;
  double thread_cpu_s = 0;   // CPU of this caller thread (engine calls and the bench loop)
  double thread_user_s = 0;  // the user-space part of it
  std::vector<Clock::duration> lat;
};

double ThreadUserSeconds() {
  struct rusage ru;
  ::getrusage(RUSAGE_THREAD, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec) + ru.ru_utime.tv_usec / 1e6;
}

double ThreadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// A pipelined caller's answers not yet counted: each call's start time, and
// the latest LSN that must be durable before they count (the log is durable
// in LSN order, so the latest covers them all).
class PendingAnswers {
 public:
  explicit PendingAnswers(size_t window) : window_(window) { starts_.reserve(window); }
  void Add(Clock::time_point start, Lsn lsn) {
    starts_.push_back(start);
    if (lsn != qmgr::log::kNoLsn)
      latest_ = latest_ == qmgr::log::kNoLsn ? lsn : std::max(latest_, lsn);
  }
  // Counts what is pending if it is durable already (no wait); when the
  // window is full, waits for it first. False once past the deadline: then
  // nothing more counts.
  bool Settle(qmgr::Engine& engine, Clock::time_point deadline, WorkerStats& w,
              std::atomic<uint64_t>& done) {
    if (starts_.empty()) return true;
    if (latest_ != qmgr::log::kNoLsn && engine.DurableLsn() <= latest_) {
      if (starts_.size() < window_) return true;
      if (absl::Status s = engine.WaitDurable(latest_); !s.ok()) {
        Die(absl::StrCat("WaitDurable: ", s.ToString()));
      }
    }
    const Clock::time_point now = Clock::now();
    if (now > deadline) return false;
    for (const Clock::time_point start : starts_) w.lat.push_back(now - start);
    w.ops += starts_.size();
    done.fetch_add(starts_.size(), std::memory_order_relaxed);
    starts_.clear();
    latest_ = qmgr::log::kNoLsn;
    return true;
  }

 private:
  const size_t window_;
  std::vector<Clock::time_point> starts_;
  Lsn latest_ = qmgr::log::kNoLsn;
};

ScenarioResult MeasureScenario(const std::string& dir, double seconds, const std::string& payload,
                               const ScenarioConfig& config) {
  const std::string name = qmgr::v1::MessageClass_Name(config.cls);
  std::fprintf(stderr, "engine: %s, %d producers + %d consumers, pipeline %d, for %.1f s ...\n",
               name.c_str(), config.producers, config.consumers, config.pipeline, seconds);
  const bool pipelined = config.pipeline > 1;
  std::unique_ptr<Log> log = OpenFreshLog(dir);
  ScenarioResult r;
  {
    qmgr::EngineOptions options;
    options.reaper_interval = absl::ZeroDuration();
    options.measure_wait_cpu = true;  // for goal (c): CPU with the durability waits taken out
    qmgr::Engine engine(log.get(), options);
    if (absl::Status s = engine.DefineQueue(kQueue, {}); !s.ok()) {
      Die(absl::StrCat("DefineQueue: ", s.ToString()));
    }
    std::atomic<uint64_t> enqueued{0};
    std::atomic<uint64_t> consumed{0};
    const int n = config.producers + config.consumers;
    std::vector<WorkerStats> stats(n);

    auto producer = [&](int p, Clock::time_point deadline) {
      WorkerStats& w = stats[p];
      w.lat.reserve(1 << 16);
      qmgr::MessageSpec spec;
      spec.queue = kQueue;
      spec.payload = payload;
      spec.message_class = config.cls;
      const bool fastpath = config.cls == qmgr::v1::FASTPATH;
      std::vector<std::string> sessions;
      std::vector<uint64_t> next_seq;
      if (fastpath) {
        for (int k = 0; k < config.sessions; ++k) {
          sessions.push_back(absl::StrCat("P", p, "-S", k));
          if (absl::Status s = engine.OpenSession(sessions.back(), false).status(); !s.ok()) {
            std::fprintf(stderr, "OpenSession: %s\n", s.ToString().c_str());
            std::exit(1);
          }
        }
        next_seq.assign(sessions.size(), 1);
      }
      PendingAnswers pending(config.pipeline);
      size_t k = 0;
      int refused_in_a_row = 0;
      int64_t backoff_us = kRefusalBackoffMinUs;
      while (true) {
        // Signed: a message is visible (and may be consumed) before its
        // Enqueue returns, so `consumed` can run ahead of `enqueued`.
        if (config.max_backlog > 0 &&
            static_cast<int64_t>(enqueued.load(std::memory_order_relaxed)) -
                    static_cast<int64_t>(consumed.load(std::memory_order_relaxed)) >=
                static_cast<int64_t>(config.max_backlog)) {
          ++w.throttled;
          std::this_thread::sleep_for(std::chrono::microseconds(100));
          if (Clock::now() > deadline) break;
          continue;
        }
        if (fastpath) {
          k = (k + 1) % sessions.size();
          spec.origin_session = sessions[k];
          spec.input_seq = next_seq[k];
        }
        const Clock::time_point t0 = Clock::now();
        absl::Status status;
        Lsn lsn = qmgr::log::kNoLsn;
        if (pipelined) {
          std::vector<qmgr::MessageSpec> one(1, spec);
          status = engine.EnqueueBatchNoWait(std::move(one), &lsn).status();
        } else {
          status = engine.Enqueue(spec).status();
        }
        const Clock::time_point t1 = Clock::now();
        if (t1 > deadline) break;
        if (!status.ok()) {
          if (fastpath && qmgr::ReasonOf(status) == qmgr::reason::kResponseOutstanding) {
            ++w.refusals;
            // Every session of this producer is in flight: back off (doubling
            // up to a cap) so that retries do not take the CPU from consumers.
            if (++refused_in_a_row >= config.sessions) {
              refused_in_a_row = 0;
              ++w.backoffs;
              std::this_thread::sleep_for(std::chrono::microseconds(backoff_us));
              backoff_us = std::min(2 * backoff_us, kRefusalBackoffMaxUs);
            }
            continue;
          }
          Die(absl::StrCat("Enqueue: ", status.ToString()));
        }
        refused_in_a_row = 0;
        backoff_us = kRefusalBackoffMinUs;
        if (fastpath) ++next_seq[k];
        if (pipelined) {
          pending.Add(t0, lsn);
          if (!pending.Settle(engine, deadline, w, enqueued)) break;
          continue;
        }
        enqueued.fetch_add(1, std::memory_order_relaxed);
        ++w.ops;
        w.lat.push_back(t1 - t0);
      }
    };

    auto consumer = [&](int c, Clock::time_point deadline) {
      WorkerStats& w = stats[config.producers + c];
      w.lat.reserve(1 << 16);
      qmgr::GetOptions get;
      get.queue = kQueue;
      get.wait = config.get_wait;
      get.commit_previous = true;
      qmgr::UowId uow = 0;
      PendingAnswers pending(config.pipeline);
      // Pipelined: the start of the Get whose message the open unit holds; it
      // is consumed once the next Get's commit of that unit is durable.
      Clock::time_point held_since;
      while (true) {
        get.uow = uow;
        const Clock::time_point t0 = Clock::now();
        Lsn lsn = qmgr::log::kNoLsn;
        absl::StatusOr<qmgr::GetResult> result =
            pipelined ? engine.GetNoWait(get, &lsn) : engine.Get(get);
        const Clock::time_point t1 = Clock::now();
        if (pipelined && uow != 0 && (result.ok() || absl::IsDeadlineExceeded(result.status()))) {
          pending.Add(held_since, lsn);  // the previous unit is committed at `lsn`
        }
        if (!result.ok()) {
          if (!absl::IsDeadlineExceeded(result.status())) {
            Die(absl::StrCat("Get: ", result.status().ToString()));
          }
          uow = 0;  // the previous unit was committed; no new one is open
          if (t1 > deadline) break;
          ++w.timeouts;
          if (pipelined && !pending.Settle(engine, deadline, w, consumed)) break;
          continue;
        }
        uow = result->uow;
        if (t1 > deadline) break;
        if (pipelined) {
          held_since = t0;
          if (!pending.Settle(engine, deadline, w, consumed)) break;
          continue;
        }
        consumed.fetch_add(1, std::memory_order_relaxed);
        ++w.ops;
        w.lat.push_back(t1 - t0);
      }
      if (uow != 0) {
        if (absl::StatusOr<qmgr::SyncPointResult> s = engine.SyncPoint(uow); !s.ok()) {
          Die(absl::StrCat("SyncPoint: ", s.status().ToString()));
        }
      }
    };

    const Window window = RunWindow(n, seconds, *log, [&](int i, Clock::time_point deadline) {
      const double cpu0 = ThreadCpuSeconds();
      const double user0 = ThreadUserSeconds();
      if (i < config.producers) {
        producer(i, deadline);
      } else {
        consumer(i - config.producers, deadline);
      }
      stats[i].thread_cpu_s = ThreadCpuSeconds() - cpu0;
      stats[i].thread_user_s = ThreadUserSeconds() - user0;
    });
    const double cpu = window.cpu_seconds;
    const LogDelta& delta = window.log;
    r.machine = window.machine;
    std::vector<Clock::duration> enq_lat;
    std::vector<Clock::duration> get_lat;
    for (int i = 0; i < n; ++i) {
      const WorkerStats& w = stats[i];
      const bool is_producer = i < config.producers;
      (is_producer ? r.enqueued : r.consumed) += w.ops;
      r.caller_cpu_s += w.thread_cpu_s;
      r.caller_user_s += w.thread_user_s;
      std::vector<Clock::duration>& lat = is_producer ? enq_lat : get_lat;
      lat.insert(lat.end(), w.lat.begin(), w.lat.end());
      r.refusals += w.refusals;
      r.get_timeouts += w.timeouts;
      r.throttled += w.throttled;
      r.backoffs += w.backoffs;
    }
    r.name = name;
    r.pipeline = config.pipeline;
    r.producers = config.producers;
    r.consumers = config.consumers;
    r.enq_per_s = static_cast<double>(r.enqueued) / seconds;
    r.cons_per_s = static_cast<double>(r.consumed) / seconds;
    r.cpu_cores = cpu / seconds;
    if (r.consumed > 0) {
      r.cpu_us_per_msg = cpu * 1e6 / static_cast<double>(r.consumed);
      r.caller_cpu_us_per_msg = r.caller_cpu_s * 1e6 / static_cast<double>(r.consumed);
      r.caller_user_us_per_msg = r.caller_user_s * 1e6 / static_cast<double>(r.consumed);
      r.work_cpu_us_per_msg =
          (r.caller_cpu_s - static_cast<double>(engine.wait_cpu_nanos()) / 1e9) * 1e6 /
          static_cast<double>(r.consumed);
      r.syncs_per_msg = static_cast<double>(delta.commit_syncs) / static_cast<double>(r.consumed);
      r.written_bytes_per_msg =
          static_cast<double>(delta.written_bytes) / static_cast<double>(r.consumed);
    }
    r.log_appends = delta.appends;
    r.commit_syncs = delta.commit_syncs;
    r.syncs_per_s = static_cast<double>(delta.commit_syncs) / seconds;
    if (delta.commit_syncs > 0) {
      r.records_per_sync =
          static_cast<double>(delta.appends) / static_cast<double>(delta.commit_syncs);
    }
    r.enq_p50_us = Percentile(enq_lat, 50);
    r.enq_p99_us = Percentile(enq_lat, 99);
    r.get_p50_us = Percentile(get_lat, 50);
    r.get_p99_us = Percentile(get_lat, 99);
    r.backlog_end = r.enqueued > r.consumed ? r.enqueued - r.consumed : 0;
  }  // the engine goes before its log
  CloseLog(std::move(log), dir);
  return r;
}

// --- 2. Output -----------------------------------------------------------

struct Goals {
  bool have_recoverable = false;  // goals (a) and (c) need the reference and RECOVERABLE
  bool have_irrecoverable = false;
  double recoverable_ratio = 0;
  bool recoverable_pass = false;
  double irrecoverable_rate = 0;
  bool irrecoverable_pass = false;
  double irrecoverable_idle = 0;  // the machine's shares over that window
  double irrecoverable_steal = 0;
  double cpu_us = 0;
  bool cpu_pass = false;
  // Goal (c) again with pipelined callers (the largest --pipeline W), as
  // qmgrd drives the engine; 0: not measured.
  int pipelined_w = 0;
  double pipelined_cpu_us = 0;
  double pipelined_process_cpu_us = 0;
  bool pipelined_cpu_pass = false;
};

const char* Verdict(bool measured, bool pass) {
  return !measured ? "n/a (not measured)" : pass ? "PASS" : "MISS";
}

const char* JsonPass(bool measured, bool pass) {
  return !measured ? "null" : pass ? "true" : "false";
}

// The row of a class with blocking callers (pipeline 1), or else the first.
const ScenarioResult* Find(const std::vector<ScenarioResult>& rs, absl::string_view name) {
  const ScenarioResult* found = nullptr;
  for (const ScenarioResult& r : rs) {
    if (r.name != name) continue;
    if (r.pipeline == 1) return &r;
    if (found == nullptr) found = &r;
  }
  return found;
}

Goals ComputeGoals(const ReferenceResult& ref, const std::vector<ScenarioResult>& rs) {
  Goals g;
  if (const ScenarioResult* r = Find(rs, "RECOVERABLE"); r != nullptr && ref.records > 0) {
    g.have_recoverable = true;
    g.recoverable_ratio = r->cons_per_s / ref.records_per_s;
    g.recoverable_pass = g.recoverable_ratio >= kGoalRecoverableRatio;
    g.cpu_us = r->work_cpu_us_per_msg;
    g.cpu_pass = g.cpu_us < kGoalCpuMicros;
  }
  for (const ScenarioResult& r : rs) {
    if (r.name != "RECOVERABLE" || r.pipeline <= 1 || r.pipeline < g.pipelined_w) continue;
    g.pipelined_w = r.pipeline;
    g.pipelined_cpu_us = r.work_cpu_us_per_msg;
    g.pipelined_process_cpu_us = r.cpu_us_per_msg;
    g.pipelined_cpu_pass = g.pipelined_cpu_us < kGoalCpuMicros;
  }
  if (const ScenarioResult* r = Find(rs, "IRRECOVERABLE")) {
    g.have_irrecoverable = true;
    g.irrecoverable_rate = r->cons_per_s;
    g.irrecoverable_pass = g.irrecoverable_rate >= kGoalIrrecoverableRate;
    g.irrecoverable_idle = r->machine.idle;
    g.irrecoverable_steal = r->machine.steal;
  }
  return g;
}

std::string Table(const std::string& dir, double seconds, uint64_t max_backlog, const Machine& m,
                  const ReferenceResult& ref, const std::vector<ScenarioResult>& rs,
                  const Goals& g) {
  std::string out;
  absl::StrAppendFormat(&out, "machine: nproc=%u kernel=%s fs=%s date=%s\n", m.nproc, m.kernel,
                        m.fs_type, m.date);
  absl::StrAppendFormat(&out, "dir: %s  seconds/scenario: %g  payload: %zu B  max backlog: %d\n\n",
                        dir, seconds, kPayloadBytes, max_backlog);
  absl::StrAppendFormat(&out,
                        "Reference: %d threads, Log::Append(ENQUEUE record, %zu-byte payload) + "
                        "WaitDurable per call, fresh log\n",
                        kReferenceAppenders, kPayloadBytes);
  absl::StrAppendFormat(
      &out,
      "  %.0f records/s, %.0f syncs/s, %.2f records/sync, %.2f CPU us/rec; machine idle %.0f%%, "
      "steal %.0f%%\n\n",
      ref.records_per_s, ref.syncs_per_s, ref.records_per_sync, ref.cpu_us_per_record,
      100 * ref.machine.idle, 100 * ref.machine.steal);
  out +=
      "Engine: producers loop Enqueue, consumers loop Get(commit_previous), queue BENCH, fresh log "
      "per row;\n W > 1: EnqueueBatchNoWait / GetNoWait with up to W answers pending per caller\n";
  absl::StrAppendFormat(
      &out,
      "%-13s %3s %5s %9s %9s %5s %8s %9s %9s %9s %8s %9s %8s %8s %8s %8s %8s %6s %9s %5s %5s\n",
      "class", "W", "p+c", "enq/s", "cons/s", "cpu", "cpu us/m", "call us/m", "work us/m",
      "user us/m", "syncs/s", "syncs/msg", "rec/sync", "enq p50", "enq p99", "get p50", "get p99",
      "get to", "refusals", "idle%", "steal%");
  for (const ScenarioResult& r : rs) {
    absl::StrAppendFormat(&out,
                          "%-13s %3d %2d+%-2d %9.0f %9.0f %5.2f %8.2f %9.2f %9.2f %9.2f %8.0f "
                          "%9.3f %8.2f %8.1f %8.1f "
                          "%8.1f %8.1f %6d %9d %5.0f %5.0f\n",
                          r.name, r.pipeline, r.producers, r.consumers, r.enq_per_s, r.cons_per_s,
                          r.cpu_cores, r.cpu_us_per_msg, r.caller_cpu_us_per_msg,
                          r.work_cpu_us_per_msg, r.caller_user_us_per_msg, r.syncs_per_s,
                          r.syncs_per_msg, r.records_per_sync, r.enq_p50_us, r.enq_p99_us,
                          r.get_p50_us, r.get_p99_us, r.get_timeouts, r.refusals,
                          100 * r.machine.idle, 100 * r.machine.steal);
  }
  out +=
      "(cpu = process CPU seconds per wall second; cpu us/m = process CPU (all threads: "
      "producers,\n"
      " consumers, log writer) per consumed message; call us/m = CPU of the producer and\n"
      " consumer threads only per consumed message; work us/m = the same less their CPU\n"
      " inside durability waits (futex sleeps and wake-ups); user us/m = the user-space part\n"
      " of call us/m; syncs = the log's commit fdatasyncs; "
      "rec/sync\n"
      " = log records per fdatasync; latencies in us; get = Get(commit_previous), which includes\n"
      " the durable wait of the previous unit's SYNCPOINT (W > 1: from the call until the caller\n"
      " saw the ENQUEUE, or the commit of the unit that got the message, durable); get to = Gets\n"
      " that found the queue empty for the whole wait; refusals = FASTPATH Enqueues refused\n"
      " RESPONSE_OUTSTANDING; idle%, steal% = the whole machine's CPU time over the window\n"
      " that was idle (nothing to run) or stolen by the hypervisor, from /proc/stat)\n";
  for (const ScenarioResult& r : rs) {
    if (r.throttled > 0 || r.backoffs > 0) {
      absl::StrAppendFormat(&out,
                            "  %s: producer pauses: %d at the backlog cap, %d after a round of "
                            "refusals; backlog at the deadline %d\n",
                            r.name, r.throttled, r.backoffs, r.backlog_end);
    }
  }
  out += "\n";
  absl::StrAppendFormat(&out,
                        "Goal (a) RECOVERABLE cons/s / %d-appender durable records/s = %.0f / "
                        "%.0f = %.2f (goal >= %.2f): %s\n",
                        kReferenceAppenders, g.recoverable_ratio * ref.records_per_s,
                        ref.records_per_s, g.recoverable_ratio, kGoalRecoverableRatio,
                        Verdict(g.have_recoverable, g.recoverable_pass));
  absl::StrAppendFormat(&out,
                        "Goal (b) IRRECOVERABLE cons/s = %.0f (goal >= %.0f; machine idle %.0f%%, "
                        "steal %.0f%%): %s\n",
                        g.irrecoverable_rate, kGoalIrrecoverableRate, 100 * g.irrecoverable_idle,
                        100 * g.irrecoverable_steal,
                        Verdict(g.have_irrecoverable, g.irrecoverable_pass));
  absl::StrAppendFormat(&out,
                        "Goal (c) CPU per RECOVERABLE message = %.2f us (goal < %.1f us; CPU of "
                        "the producer and consumer threads per consumed message, less what they "
                        "spent inside durability waits; the log writer thread and its fdatasync "
                        "not counted): %s\n",
                        g.cpu_us, kGoalCpuMicros, Verdict(g.have_recoverable, g.cpu_pass));
  if (g.pipelined_w > 0) {
    absl::StrAppendFormat(&out,
                          "Goal (c) with pipelined callers (W = %d, as qmgrd's completions drive "
                          "the engine) = %.2f us (process CPU, log writer included: %.2f us): %s\n",
                          g.pipelined_w, g.pipelined_cpu_us, g.pipelined_process_cpu_us,
                          g.pipelined_cpu_pass ? "PASS" : "MISS");
  }
  return out;
}

std::string Json(const std::string& dir, double seconds, uint64_t max_backlog, const Machine& m,
                 const ReferenceResult& ref, const std::vector<ScenarioResult>& rs,
                 const Goals& g) {
  std::string out = "{\n";
  absl::StrAppend(&out, "  \"machine\": ", MachineJson(m), ",\n");
  absl::StrAppendFormat(&out,
                        "  \"config\": {\"dir\": %s, \"seconds\": %g, \"payload_bytes\": %d, "
                        "\"max_backlog\": %d},\n",
                        JsonString(dir), seconds, kPayloadBytes, max_backlog);
  absl::StrAppendFormat(
      &out,
      "  \"reference\": {\"threads\": %d, \"records\": %d, \"records_per_s\": "
      "%.1f, \"syncs_per_s\": %.1f, \"records_per_sync\": %.3f, "
      "\"cpu_us_per_record\": %.3f, \"machine_idle\": %.3f, \"machine_steal\": %.3f},\n",
      kReferenceAppenders, ref.records, ref.records_per_s, ref.syncs_per_s, ref.records_per_sync,
      ref.cpu_us_per_record, ref.machine.idle, ref.machine.steal);
  out += "  \"scenarios\": [\n";
  for (size_t i = 0; i < rs.size(); ++i) {
    const ScenarioResult& r = rs[i];
    absl::StrAppendFormat(
        &out,
        "    {\"class\": %s, \"pipeline\": %d, \"producers\": %d, \"consumers\": %d, \"enqueued\": "
        "%d, "
        "\"consumed\": %d, \"enq_per_s\": %.1f, \"cons_per_s\": %.1f, \"cpu_cores\": %.3f, "
        "\"cpu_us_per_msg\": %.3f, \"log_appends\": %d, \"commit_syncs\": %d, "
        "\"syncs_per_s\": %.1f, \"syncs_per_msg\": %.4f, \"records_per_sync\": %.3f, "
        "\"caller_cpu_us_per_msg\": %.3f, \"work_cpu_us_per_msg\": %.3f, "
        "\"written_bytes_per_msg\": %.1f, \"enq_p50_us\": %.1f, \"enq_p99_us\": %.1f, "
        "\"get_p50_us\": %.1f, \"get_p99_us\": %.1f, \"get_timeouts\": %d, \"refusals\": %d, "
        "\"throttled\": %d, \"backoffs\": %d, \"backlog_end\": %d, \"machine_idle\": %.3f, "
        "\"machine_steal\": %.3f}%s\n",
        JsonString(r.name), r.pipeline, r.producers, r.consumers, r.enqueued, r.consumed,
        r.enq_per_s, r.cons_per_s, r.cpu_cores, r.cpu_us_per_msg, r.log_appends, r.commit_syncs,
        r.syncs_per_s, r.syncs_per_msg, r.records_per_sync, r.caller_cpu_us_per_msg,
        r.work_cpu_us_per_msg, r.written_bytes_per_msg, r.enq_p50_us, r.enq_p99_us, r.get_p50_us,
        r.get_p99_us, r.get_timeouts, r.refusals, r.throttled, r.backoffs, r.backlog_end,
        r.machine.idle, r.machine.steal, i + 1 < rs.size() ? "," : "");
  }
  out += "  ],\n";
  absl::StrAppendFormat(
      &out,
      "  \"goals\": {\n"
      "    \"recoverable_ratio\": {\"value\": %.3f, \"goal_min\": %.2f, \"pass\": %s},\n"
      "    \"irrecoverable_msgs_per_s\": {\"value\": %.1f, \"goal_min\": %.0f, \"pass\": %s},\n"
      "    \"recoverable_cpu_us_per_msg\": {\"value\": %.3f, \"goal_max\": %.1f, \"pass\": %s, "
      "\"method\": \"caller CPU less durability waits / consumed messages\"},\n"
      "    \"recoverable_cpu_us_per_msg_pipelined\": {\"pipeline\": %d, \"value\": %.3f, "
      "\"process_cpu_us_per_msg\": %.3f, \"goal_max\": %.1f, \"pass\": %s}\n  }\n",
      g.recoverable_ratio, kGoalRecoverableRatio, JsonPass(g.have_recoverable, g.recoverable_pass),
      g.irrecoverable_rate, kGoalIrrecoverableRate,
      JsonPass(g.have_irrecoverable, g.irrecoverable_pass), g.cpu_us, kGoalCpuMicros,
      JsonPass(g.have_recoverable, g.cpu_pass), g.pipelined_w, g.pipelined_cpu_us,
      g.pipelined_process_cpu_us, kGoalCpuMicros,
      JsonPass(g.pipelined_w > 0, g.pipelined_cpu_pass));
  out += "}\n";
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  // absl's Mutex deadlock detection is on in Debian's build; a server does not
  // pay for it (the tests keep it).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  CLI::App app{"engine_bench: the queue engine on a real log, against durable log appends"};
  std::string dir;
  double seconds = 3;
  bool keep = false;
  bool json = false;
  ScenarioConfig base;
  base.max_backlog = 100000;
  std::vector<std::string> classes = {"RECOVERABLE", "IRRECOVERABLE", "FASTPATH"};
  app.add_option("--dir", dir,
                 "directory to measure in (created if missing); default: a fresh directory "
                 "under $TMPDIR or ./bench-data, removed at the end unless --keep");
  app.add_option("--seconds", seconds, "seconds per scenario")->check(CLI::PositiveNumber);
  app.add_flag("--keep", keep, "keep the directory (the log directories are always removed)");
  app.add_flag("--json", json, "JSON on stdout, the table on stderr");
  app.add_option("--classes", classes, "scenarios to run, comma-separated")
      ->delimiter(',')
      ->check(CLI::IsMember({"RECOVERABLE", "IRRECOVERABLE", "FASTPATH"}))
      ->capture_default_str();
  app.add_option("--producers", base.producers, "producer threads per scenario")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--consumers", base.consumers, "consumer threads per scenario")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--sessions", base.sessions, "FASTPATH: sessions per producer")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-backlog", base.max_backlog,
                 "producers pause while enqueued - consumed reaches this (0: never)")
      ->capture_default_str();
  std::vector<int> pipelines = {1};
  app.add_option("--pipeline", pipelines,
                 "answers pending per caller, comma-separated, one row per class and W; 1: the "
                 "blocking Enqueue and Get; W > 1: EnqueueBatchNoWait / GetNoWait, one "
                 "WaitDurable per W")
      ->delimiter(',')
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  bool no_reference = false;
  app.add_flag("--no-reference", no_reference, "skip the durable-append reference (profiling)");
  CLI11_PARSE(app, argc, argv);

  const WorkDir work_dir(dir, keep);
  dir = work_dir.path();

  const Machine machine = DescribeMachine(dir);
  const std::string payload = [] {
    std::string p(kPayloadBytes, '\0');
    for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<char>('a' + i % 26);
    return p;
  }();
  ReferenceResult ref;
  if (!no_reference) ref = MeasureReference(dir + "/log-reference", seconds, payload);
  std::vector<ScenarioResult> results;
  for (const std::string& cls_name : classes) {
    for (const int w : pipelines) {
      ScenarioConfig config = base;
      config.pipeline = w;
      if (!qmgr::v1::MessageClass_Parse(cls_name, &config.cls)) Die("unknown class " + cls_name);
      results.push_back(
          MeasureScenario(absl::StrCat(dir, "/log-", cls_name), seconds, payload, config));
    }
  }
  const Goals goals = ComputeGoals(ref, results);

  const std::string table = Table(dir, seconds, base.max_backlog, machine, ref, results, goals);
  if (json) {
    std::fputs(table.c_str(), stderr);
    std::fputs(Json(dir, seconds, base.max_backlog, machine, ref, results, goals).c_str(), stdout);
  } else {
    std::fputs(table.c_str(), stdout);
  }

  return 0;
}
