// The system log under faults, through the fault-injecting file layer: group
// commit, failed fdatasync, failed writes, a full disk, and crashes that drop,
// tear or scramble unsynced writes. Nothing acknowledged is ever lost.
#include <atomic>
#include <cerrno>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "log/log.h"
#include "log/reader.h"
#include "tests/support/fault_file_system.h"

namespace qmgr::log {
namespace {

using qmgr::testing::CrashMode;
using qmgr::testing::FaultFileSystem;

constexpr char kDir[] = "/data/log";
constexpr uint64_t kSegmentBytes = 64 * 1024;

LogOptions Small() {
  LogOptions options;
  options.segment_bytes = kSegmentBytes;
  options.allocation_retry_interval = std::chrono::milliseconds(5);
  return options;
}

std::unique_ptr<FaultFileSystem> NewFs() {
  auto fs = std::make_unique<FaultFileSystem>();
  EXPECT_TRUE(fs->CreateDir("/data").ok());
  EXPECT_TRUE(fs->SyncDir("/").ok());
  return fs;
}

std::vector<std::string> Payloads(FileSystem* fs) {
  absl::StatusOr<std::unique_ptr<LogReader>> reader = LogReader::Open(fs, kDir);
  EXPECT_TRUE(reader.ok()) << reader.status();
  std::vector<std::string> payloads;
  LogEntry entry;
  while (reader.ok()) {
    absl::StatusOr<bool> more = (*reader)->Next(&entry);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    payloads.push_back(entry.payload);
  }
  return payloads;
}

// Group commit is real: while the first fdatasync is held at a gate, 31 more
// AppendDurable calls pile up; none returns while the gate is closed, and all
// 32 are made durable by at most 2 fdatasyncs.
TEST(LogFaultTest, GroupCommitSharesFdatasyncs) {
  auto fs = NewFs();
  absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(fs.get(), kDir, Small());
  ASSERT_TRUE(log.ok()) << log.status();
  const int64_t syncs_before = fs->SyncCount();
  fs->CloseSyncGate();
  constexpr int kCallers = 32;
  std::atomic<int> returned{0};
  std::vector<std::thread> callers;
  callers.emplace_back([&] {
    EXPECT_TRUE((*log)->WaitDurable(*(*log)->Append(3, "first")).ok());
    ++returned;
  });
  ASSERT_TRUE(fs->AwaitSyncsAtGate(1, absl::Seconds(10)));
  for (int i = 1; i < kCallers; ++i) {
    callers.emplace_back([&, i] {
      qmgr::v1::LogRecord record;
      record.mutable_id_reserve()->set_first_id(uint64_t(i) * 1000);
      record.mutable_id_reserve()->set_count(1000);
      EXPECT_TRUE((*log)->AppendDurable(record).ok());
      ++returned;
    });
  }
  while ((*log)->stats().appends < kCallers) absl::SleepFor(absl::Milliseconds(1));
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(returned.load(), 0) << "nobody is told durable while the fdatasync is held";
  EXPECT_EQ(fs->SyncsWaitingAtGate(), 1);
  fs->OpenSyncGate();
  for (auto& t : callers) t.join();
  EXPECT_EQ(returned.load(), kCallers);
  EXPECT_LE(fs->SyncCount() - syncs_before, 2);
  EXPECT_LE((*log)->stats().commit_syncs, 2u);
  EXPECT_EQ(Payloads(fs.get()).size(), size_t{kCallers});
}

// A failed fdatasync fails every waiter and all later appends, and the
// descriptor is never fsynced again. What was acknowledged before survives.
TEST(LogFaultTest, FailedFdatasyncStopsIntakeAndNeverResyncs) {
  auto fs = NewFs();
  absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(fs.get(), kDir, Small());
  ASSERT_TRUE(log.ok());
  ASSERT_TRUE((*log)->WaitDurable(*(*log)->Append(3, "acknowledged")).ok());
  fs->FailSyncAfter(0, EIO);
  absl::StatusOr<Lsn> lsn = (*log)->Append(3, "unlucky");
  ASSERT_TRUE(lsn.ok());
  absl::Status waited = (*log)->WaitDurable(*lsn);
  EXPECT_EQ(waited.code(), absl::StatusCode::kUnavailable) << waited;
  EXPECT_NE(waited.message().find("intake stopped"), absl::string_view::npos) << waited;
  EXPECT_EQ((*log)->Append(3, "refused").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*log)->Close().code(), absl::StatusCode::kUnavailable);
  log->reset();
  EXPECT_EQ(fs->SyncsAfterFailure(), 0);

  fs->SimulateCrash(CrashMode::kDropUnsynced, 1);
  absl::StatusOr<std::unique_ptr<Log>> reopened = Log::Open(fs.get(), kDir, Small());
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  reopened->reset();
  std::vector<std::string> payloads = Payloads(fs.get());
  ASSERT_FALSE(payloads.empty());
  EXPECT_EQ(payloads[0], "acknowledged");
  EXPECT_LE(payloads.size(), 2u);
}

// A write that keeps failing (not ENOSPC) fails the batch and stops intake; a
// transient ENOSPC on write is retried and nobody notices.
TEST(LogFaultTest, WriteErrors) {
  auto fs = NewFs();
  absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(fs.get(), kDir, Small());
  ASSERT_TRUE(log.ok());
  fs->FailWriteAfter(0, ENOSPC);
  EXPECT_TRUE((*log)->WaitDurable(*(*log)->Append(3, "retried")).ok());
  fs->FailWritesWithErrno(EIO);
  absl::StatusOr<Lsn> lsn = (*log)->Append(3, "lost");
  ASSERT_TRUE(lsn.ok());
  EXPECT_EQ((*log)->WaitDurable(*lsn).code(), absl::StatusCode::kUnavailable);
  fs->ClearWriteFailures();
  log->reset();
  fs->SimulateCrash(CrashMode::kDropUnsynced, 1);
  ASSERT_TRUE(Log::Open(fs.get(), kDir, Small()).ok());
  std::vector<std::string> payloads = Payloads(fs.get());
  ASSERT_EQ(payloads.size(), 1u);
  EXPECT_EQ(payloads[0], "retried");
}

// A full disk shows up when a segment is preallocated: appends that need it
// answer ResourceExhausted, nothing acknowledged is lost, and appends resume
// by themselves once space returns.
TEST(LogFaultTest, EnospcAtSegmentCreation) {
  auto fs = NewFs();
  LogOptions options = Small();
  fs->SetSpaceLimit(2 * kSegmentBytes + 100);  // the first two segments only
  absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(fs.get(), kDir, options);
  ASSERT_TRUE(log.ok()) << log.status();
  std::vector<std::string> acked;
  absl::Status refusal;
  for (int i = 0; i < 1000 && refusal.ok(); ++i) {
    const std::string payload = absl::StrCat("m", i, std::string(3000, 'x'));
    absl::StatusOr<Lsn> lsn = (*log)->Append(3, payload);
    if (!lsn.ok()) {
      refusal = lsn.status();
      break;
    }
    ASSERT_TRUE((*log)->WaitDurable(*lsn).ok());
    acked.push_back(payload);
  }
  ASSERT_EQ(refusal.code(), absl::StatusCode::kResourceExhausted) << refusal;
  EXPECT_NE(refusal.message().find("preallocate"), absl::string_view::npos) << refusal;
  EXPECT_GT(acked.size(), 20u);
  fs->ClearSpaceLimit();
  absl::StatusOr<Lsn> lsn;
  for (int attempt = 0; attempt < 2000; ++attempt) {
    lsn = (*log)->Append(3, "after space returned");
    if (lsn.ok()) break;
    absl::SleepFor(absl::Milliseconds(2));
  }
  ASSERT_TRUE(lsn.ok()) << lsn.status();
  ASSERT_TRUE((*log)->WaitDurable(*lsn).ok());
  acked.push_back("after space returned");
  log->reset();
  EXPECT_EQ(Payloads(fs.get()), acked);
}

// Opening on a disk too full for the first segment is a clear error.
TEST(LogFaultTest, EnospcCreatingTheFirstSegment) {
  auto fs = NewFs();
  fs->SetSpaceLimit(kSegmentBytes / 2);
  absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(fs.get(), kDir, Small());
  ASSERT_FALSE(log.ok());
  EXPECT_EQ(log.status().code(), absl::StatusCode::kResourceExhausted) << log.status();
  fs->ClearSpaceLimit();
  EXPECT_TRUE(Log::Open(fs.get(), kDir, Small()).ok()) << "the leftover .tmp is cleaned up";
}

// Crashes at random moments under concurrent appends, each mode of losing
// unsynced writes: every acknowledged record survives, in order, and the log
// opens (torn tails truncated), over and over on the same file system.
TEST(LogFaultTest, CrashesNeverLoseAcknowledgedRecords) {
  for (CrashMode mode :
       {CrashMode::kDropUnsynced, CrashMode::kKeepRandomBlocks, CrashMode::kTearLastWrite}) {
    auto fs = NewFs();
    std::vector<std::string> acked_all;  // acknowledged, in acknowledgement order per round
    std::mt19937_64 rng(42 + static_cast<int>(mode));
    for (int round = 0; round < 25; ++round) {
      SCOPED_TRACE(absl::StrCat("mode ", static_cast<int>(mode), " round ", round));
      absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(fs.get(), kDir, Small());
      ASSERT_TRUE(log.ok()) << log.status();
      absl::Mutex mu;
      std::vector<std::pair<Lsn, std::string>> acked;
      std::vector<std::thread> threads;
      std::atomic<bool> stop{false};
      for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
          for (int i = 0; !stop; ++i) {
            std::string payload =
                absl::StrCat("r", round, "t", t, "i", i, std::string(i * 37 % 2500, 'p'));
            absl::StatusOr<Lsn> lsn = (*log)->Append(3, payload);
            if (!lsn.ok() || !(*log)->WaitDurable(*lsn).ok()) return;
            absl::MutexLock lock(&mu);
            acked.emplace_back(*lsn, std::move(payload));
          }
        });
      }
      absl::SleepFor(absl::Microseconds(rng() % 20000));
      // Power fails now, while threads run: the process is dead from here on.
      fs->Freeze();
      stop = true;
      for (auto& t : threads) t.join();
      log->reset();
      fs->SimulateCrash(mode, rng());
      fs->Thaw();
      std::sort(acked.begin(), acked.end());
      for (auto& [lsn, payload] : acked) acked_all.push_back(payload);
      // Every acknowledged record is read back, in order; unacknowledged ones
      // may be present only after the last acknowledged one of that round.
      std::vector<std::string> read = Payloads(fs.get());
      size_t at = 0;
      for (const std::string& payload : read) {
        if (at < acked_all.size() && payload == acked_all[at]) ++at;
      }
      ASSERT_EQ(at, acked_all.size()) << "an acknowledged record was lost";
      // Carry what survived forward as the new baseline.
      acked_all = read;
    }
  }
}

}  // namespace
}  // namespace qmgr::log
