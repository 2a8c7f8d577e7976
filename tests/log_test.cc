// The system log on the real file system: appends, reading, reopening,
// concurrency, retirement and identity.
#include "log/log.h"

#include <atomic>
#include <filesystem>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "log/reader.h"
#include "tests/support/temp_dir.h"

namespace qmgr::log {
namespace {

constexpr uint64_t kSmallSegmentBytes = 64 * 1024;

qmgr::v1::LogRecord EnqueueOf(uint64_t id, size_t payload_bytes) {
  qmgr::v1::LogRecord record;
  qmgr::v1::Message* m = record.mutable_enqueue()->add_messages();
  m->set_id(id);
  m->set_queue("Q1");
  m->set_class_(qmgr::v1::RECOVERABLE);
  m->set_payload(std::string(payload_bytes, static_cast<char>('a' + id % 26)));
  return record;
}

LogOptions Small() {
  LogOptions options;
  options.segment_bytes = kSmallSegmentBytes;
  return options;
}

std::vector<LogEntry> ReadAll(const std::string& dir, Lsn from = 0) {
  absl::StatusOr<std::unique_ptr<LogReader>> reader = LogReader::Open(PosixFileSystem(), dir, from);
  EXPECT_TRUE(reader.ok()) << reader.status();
  std::vector<LogEntry> entries;
  if (!reader.ok()) return entries;
  LogEntry entry;
  while (true) {
    absl::StatusOr<bool> more = (*reader)->Next(&entry);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    entries.push_back(entry);
  }
  return entries;
}

uint64_t IdOf(const LogEntry& entry) {
  qmgr::v1::LogRecord record;
  EXPECT_TRUE(record.ParseFromString(entry.payload));
  return record.enqueue().messages(0).id();
}

// Records written across many segments come back in order, byte for byte,
// also after reopening, and appending goes on where it stopped.
// Recovery reads the preallocated tail as unwritten only where it is all zero:
// one non-zero byte anywhere in a block (first, last, or between) counts.
TEST(LogTest, AllZeroSeesEveryNonZeroByte) {
  EXPECT_TRUE(AllZero(""));
  std::string block(kBlockBytes, '\0');
  EXPECT_TRUE(AllZero(block));
  for (size_t at : {size_t{0}, size_t{1}, size_t{31}, kBlockBytes / 2, kBlockBytes - 1}) {
    std::string dirty = block;
    dirty[at] = '\x01';
    EXPECT_FALSE(AllZero(dirty)) << "non-zero byte at " << at;
    EXPECT_FALSE(AllZero(absl::string_view(dirty).substr(at, 1))) << at;
  }
  EXPECT_FALSE(AllZero(std::string(7, '\xff')));
}

TEST(LogTest, RoundTripAcrossManySegmentsAndReopen) {
  qmgr::testing::TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  std::vector<Lsn> lsns;
  {
    absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, Small());
    ASSERT_TRUE(log.ok()) << log.status();
    EXPECT_TRUE((*log)->open_report().created);
    for (uint64_t id = 1; id <= 300; ++id) {
      absl::StatusOr<Lsn> lsn = (*log)->Append(EnqueueOf(id, 100 + id * 13 % 3000));
      ASSERT_TRUE(lsn.ok()) << lsn.status();
      if (!lsns.empty()) {
        ASSERT_GT(*lsn, lsns.back());
      }
      lsns.push_back(*lsn);
      if (id % 7 == 0) {
        ASSERT_TRUE((*log)->WaitDurable(*lsn).ok());
      }
    }
    ASSERT_TRUE((*log)->Close().ok());
  }
  std::vector<LogEntry> entries = ReadAll(dir);
  ASSERT_EQ(entries.size(), 300u);
  for (size_t i = 0; i < entries.size(); ++i) {
    EXPECT_EQ(entries[i].lsn, lsns[i]);
    EXPECT_EQ(entries[i].type, qmgr::v1::LogRecord::kEnqueue);
    EXPECT_EQ(IdOf(entries[i]), i + 1);
  }
  size_t segment_files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() == ".qlog") ++segment_files;
  }
  EXPECT_GT(segment_files, 5u) << "the test should span many segments";

  absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, Small());
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_FALSE((*log)->open_report().created);
  EXPECT_EQ((*log)->open_report().tail.kind, TailKind::kClean);
  absl::StatusOr<Lsn> next = (*log)->AppendDurable(EnqueueOf(301, 10));
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_GT(*next, lsns.back());
  ASSERT_TRUE((*log)->Close().ok());
  entries = ReadAll(dir);
  ASSERT_EQ(entries.size(), 301u);
  EXPECT_EQ(IdOf(entries.back()), 301u);
}

// A reader started at any record's LSN, or between records, yields exactly
// the records from there on.
TEST(LogTest, ReadsFromAnyLsn) {
  qmgr::testing::TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  std::vector<Lsn> lsns;
  {
    absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, Small());
    ASSERT_TRUE(log.ok()) << log.status();
    for (uint64_t id = 1; id <= 120; ++id) {
      absl::StatusOr<Lsn> lsn = (*log)->AppendDurable(EnqueueOf(id, 900));
      ASSERT_TRUE(lsn.ok());
      lsns.push_back(*lsn);
    }
  }
  for (size_t i = 0; i < lsns.size(); i += 9) {
    std::vector<LogEntry> from_record = ReadAll(dir, lsns[i]);
    ASSERT_EQ(from_record.size(), lsns.size() - i);
    EXPECT_EQ(from_record.front().lsn, lsns[i]);
    std::vector<LogEntry> from_between = ReadAll(dir, lsns[i] + 1);
    ASSERT_EQ(from_between.size(), lsns.size() - i - 1);
  }
  EXPECT_TRUE(ReadAll(dir, lsns.back() + 1).empty());
}

// Many threads appending at once: every acknowledged LSN is readable, in LSN
// order, each record exactly once, and each thread's records in its order.
TEST(LogTest, ConcurrentAppendersLoseNothing) {
  qmgr::testing::TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  constexpr int kThreads = 16;
  constexpr int kPerThread = 200;
  std::vector<std::vector<Lsn>> acked(kThreads);
  {
    absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, Small());
    ASSERT_TRUE(log.ok()) << log.status();
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kPerThread; ++i) {
          absl::StatusOr<Lsn> lsn =
              (*log)->AppendDurable(EnqueueOf(uint64_t(t) * kPerThread + i + 1, 200));
          ASSERT_TRUE(lsn.ok()) << lsn.status();
          ASSERT_LT(*lsn, (*log)->DurableLsn());
          acked[t].push_back(*lsn);
        }
      });
    }
    for (auto& th : threads) th.join();
    const LogStats stats = (*log)->stats();
    EXPECT_EQ(stats.appends, uint64_t{kThreads * kPerThread});
    EXPECT_LT(stats.commit_syncs, stats.appends) << "group commit shares fdatasyncs";
    // The histograms the metrics export account for every fdatasync and record.
    EXPECT_EQ(stats.sync_seconds.count(), stats.commit_syncs);
    EXPECT_GT(stats.sync_seconds.sum(), 0);
    EXPECT_EQ(stats.commit_records.count(), stats.commits);
    EXPECT_EQ(stats.commit_records.sum(), static_cast<double>(stats.appends));
    EXPECT_GE(stats.segments, 1u);
  }
  std::vector<LogEntry> entries = ReadAll(dir);
  ASSERT_EQ(entries.size(), size_t{kThreads * kPerThread});
  std::set<Lsn> read_lsns;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (i > 0) {
      EXPECT_LT(entries[i - 1].lsn, entries[i].lsn);
    }
    read_lsns.insert(entries[i].lsn);
  }
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      EXPECT_TRUE(read_lsns.count(acked[t][i])) << "acknowledged LSN " << acked[t][i] << " lost";
      if (i > 0) {
        EXPECT_LT(acked[t][i - 1], acked[t][i]);
      }
    }
  }
}

// Retirement removes whole segments below the LSN (or archives them) and
// never the segment being written; the reader then starts at the new first.
// A following reader sees the live end without judging it, goes on when
// records come (after Refresh, into new segments too), and says NotFound when
// the segment it reads is retired under it.
TEST(LogTest, FollowingReaderTailsALiveLog) {
  qmgr::testing::TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, Small());
  ASSERT_TRUE(log.ok()) << log.status();
  ASSERT_TRUE((*log)->AppendDurable(EnqueueOf(1, 100)).ok());
  absl::StatusOr<std::unique_ptr<LogReader>> reader = LogReader::Open(PosixFileSystem(), dir);
  ASSERT_TRUE(reader.ok()) << reader.status();
  (*reader)->Follow();
  auto next_ids = [&] {
    std::vector<uint64_t> ids;
    LogEntry entry;
    while (true) {
      absl::StatusOr<bool> more = (*reader)->Next(&entry);
      EXPECT_TRUE(more.ok()) << more.status();
      if (!more.ok() || !*more) break;
      ids.push_back(IdOf(entry));
    }
    return ids;
  };
  EXPECT_EQ(next_ids(), (std::vector<uint64_t>{1}));
  EXPECT_TRUE(next_ids().empty()) << "nothing new yet";
  ASSERT_TRUE((*log)->AppendDurable(EnqueueOf(2, 100)).ok());
  EXPECT_EQ(next_ids(), (std::vector<uint64_t>{2}));
  // Beyond the segments listed at Open, records appear after Refresh.
  std::vector<uint64_t> expected;
  for (uint64_t id = 3; id <= 60; ++id) {
    ASSERT_TRUE((*log)->AppendDurable(EnqueueOf(id, 2000)).ok());
    expected.push_back(id);
  }
  ASSERT_TRUE((*reader)->Refresh(PosixFileSystem(), dir).ok());
  EXPECT_EQ(next_ids(), expected);
  EXPECT_EQ((*reader)->tail().kind, TailKind::kClean);
  // Retire everything below the end: the segment the reader is in goes.
  for (uint64_t id = 61; id <= 120; ++id) {
    ASSERT_TRUE((*log)->AppendDurable(EnqueueOf(id, 2000)).ok());
  }
  ASSERT_TRUE((*log)->RetireBefore((*log)->NextLsn()).ok());
  EXPECT_EQ((*reader)->Refresh(PosixFileSystem(), dir).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE((*log)->Close().ok());
}

TEST(LogTest, RetireDeletesOrArchivesWholeSegments) {
  for (bool archive : {false, true}) {
    qmgr::testing::TempDir tmp;
    const std::string dir = tmp.path() + "/log";
    LogOptions options = Small();
    if (archive) options.archive_dir = tmp.path() + "/archive";
    absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, options);
    ASSERT_TRUE(log.ok()) << log.status();
    std::vector<Lsn> lsns;
    for (uint64_t id = 1; id <= 100; ++id) {
      absl::StatusOr<Lsn> lsn = (*log)->AppendDurable(EnqueueOf(id, 2000));
      ASSERT_TRUE(lsn.ok());
      lsns.push_back(*lsn);
    }
    const Lsn cut = lsns[60];
    ASSERT_TRUE((*log)->RetireBefore(cut).ok());
    EXPECT_GT((*log)->FirstLsn(), 0u);
    EXPECT_LE((*log)->FirstLsn(), cut);
    EXPECT_TRUE((*log)->RetireBefore(kNoLsn - 1).ok()) << "retiring everything keeps the tail";
    EXPECT_LE((*log)->FirstLsn(), lsns.back());
    ASSERT_TRUE((*log)->AppendDurable(EnqueueOf(101, 10)).ok());
    const Lsn first = (*log)->FirstLsn();
    ASSERT_TRUE((*log)->Close().ok());
    std::vector<LogEntry> entries = ReadAll(dir);
    ASSERT_FALSE(entries.empty());
    EXPECT_GE(entries.front().lsn, first);
    EXPECT_EQ(IdOf(entries.back()), 101u);
    size_t archived = 0;
    if (archive) {
      for (const auto& e : std::filesystem::directory_iterator(tmp.path() + "/archive")) {
        archived += e.path().extension() == ".qlog";
      }
      EXPECT_GT(archived, 0u);
      EXPECT_FALSE(ReadAll(tmp.path() + "/archive").empty()) << "archived segments stay readable";
    }
    absl::StatusOr<std::unique_ptr<Log>> reopened = Log::Open(PosixFileSystem(), dir, options);
    ASSERT_TRUE(reopened.ok()) << reopened.status();
    EXPECT_EQ((*reopened)->FirstLsn(), first);
  }
}

// A log is refused when the caller expects another log id, and a directory
// mixing segments of two logs is refused.
TEST(LogTest, ForeignLogIdRefused) {
  qmgr::testing::TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  LogId id;
  {
    absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, Small());
    ASSERT_TRUE(log.ok());
    id = (*log)->id();
    ASSERT_TRUE((*log)->AppendDurable(EnqueueOf(1, 10)).ok());
  }
  LogOptions options = Small();
  options.expected_log_id = id;
  EXPECT_TRUE(Log::Open(PosixFileSystem(), dir, options).ok());
  options.expected_log_id = LogId::Random();
  absl::StatusOr<std::unique_ptr<Log>> refused = Log::Open(PosixFileSystem(), dir, options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("foreign"), absl::string_view::npos);

  // A segment of another log dropped into the directory.
  const std::string other = tmp.path() + "/other";
  {
    LogOptions far = Small();
    far.first_lsn_if_new = 100 * kSmallSegmentBytes;
    absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), other, far);
    ASSERT_TRUE(log.ok());
  }
  for (const auto& e : std::filesystem::directory_iterator(other)) {
    if (e.path().extension() != ".qlog") continue;
    std::filesystem::copy_file(e.path(), dir + "/" + e.path().filename().string());
  }
  refused = Log::Open(PosixFileSystem(), dir, Small());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);

  // The store expects a log but the directory is empty: refused, not recreated.
  options.expected_log_id = id;
  refused = Log::Open(PosixFileSystem(), tmp.path() + "/empty", options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kNotFound);
}

// Bad input to Append gets a clear error and changes nothing.
TEST(LogTest, BadAppendsRefused) {
  qmgr::testing::TempDir tmp;
  absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), tmp.path(), Small());
  ASSERT_TRUE(log.ok());
  const Lsn before = (*log)->NextLsn();
  EXPECT_EQ((*log)->Append(qmgr::v1::LogRecord()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*log)->Append(0, "x").status().code(), absl::StatusCode::kInvalidArgument);
  const std::string huge((*log)->record_payload_bytes_max() + 1, 'x');
  absl::StatusOr<Lsn> too_big = (*log)->Append(1, huge);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_big.status().message().find("exceeds"), absl::string_view::npos);
  EXPECT_EQ((*log)->NextLsn(), before);
  const std::string largest((*log)->record_payload_bytes_max(), 'y');
  ASSERT_TRUE((*log)->AppendDurable(EnqueueOf(1, 10)).ok());
  absl::StatusOr<Lsn> fits = (*log)->Append(1, largest);
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_TRUE((*log)->WaitDurable(*fits).ok());
  ASSERT_TRUE((*log)->Close().ok());
  EXPECT_EQ((*log)->Append(EnqueueOf(2, 1)).status().code(), absl::StatusCode::kFailedPrecondition);

  LogOptions bad;
  bad.segment_bytes = 5000;
  EXPECT_EQ(Log::Open(PosixFileSystem(), tmp.path() + "/b", bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A new log may start at a given LSN (a cold start keeps LSNs running).
TEST(LogTest, NewLogStartsAtGivenLsn) {
  qmgr::testing::TempDir tmp;
  LogOptions options = Small();
  options.first_lsn_if_new = 1 << 20;
  absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), tmp.path(), options);
  ASSERT_TRUE(log.ok());
  absl::StatusOr<Lsn> lsn = (*log)->AppendDurable(EnqueueOf(1, 1));
  ASSERT_TRUE(lsn.ok());
  EXPECT_EQ(*lsn, (1u << 20) + kBatchHeaderBytes);
}

// The simulation's seam: records appended without a waiter stay in memory,
// however long the writer has, and the first wait writes them all as one
// batch, so their LSNs do not depend on the writer thread's timing.
TEST(LogTest, WriteOnlyForWaitersBatchesEverythingAppendedBeforeTheWait) {
  qmgr::testing::TempDir tmp;
  LogOptions options = Small();
  options.write_only_for_waiters = true;
  absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), tmp.path(), options);
  ASSERT_TRUE(log.ok());
  std::vector<Lsn> lsns;
  for (uint64_t id = 1; id <= 3; ++id) {
    absl::StatusOr<Lsn> lsn = (*log)->Append(EnqueueOf(id, 100));
    ASSERT_TRUE(lsn.ok());
    lsns.push_back(*lsn);
    absl::SleepFor(absl::Milliseconds(20));  // time the writer would have used
  }
  EXPECT_LE((*log)->DurableLsn(), lsns.front()) << "written with nobody waiting";
  EXPECT_EQ((*log)->stats().commits, 0u);
  ASSERT_TRUE((*log)->WaitDurable(lsns.front()).ok());
  EXPECT_GT((*log)->DurableLsn(), lsns.back());
  const LogStats stats = (*log)->stats();
  EXPECT_EQ(stats.commits, 1u);
  EXPECT_EQ(stats.commit_records.sum(), 3.0);
  ASSERT_TRUE((*log)->Append(EnqueueOf(4, 100)).ok());
  ASSERT_TRUE((*log)->Close().ok()) << "Close writes what no one waited for";
  EXPECT_EQ(ReadAll(tmp.path()).size(), 4u);
}

// One Log per directory: a second Open (here, or from another process) is
// refused while the first holds the directory's LOCK, and works after it
// closes.
TEST(LogTest, SecondOpenOfADirectoryIsRefused) {
  qmgr::testing::TempDir tmp;
  absl::StatusOr<std::unique_ptr<Log>> first = Log::Open(PosixFileSystem(), tmp.path(), Small());
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::unique_ptr<Log>> second = Log::Open(PosixFileSystem(), tmp.path(), Small());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("LOCK"), absl::string_view::npos) << second.status();
  ASSERT_TRUE((*first)->Close().ok());
  EXPECT_TRUE(Log::Open(PosixFileSystem(), tmp.path(), Small()).ok());
}

}  // namespace
}  // namespace qmgr::log
