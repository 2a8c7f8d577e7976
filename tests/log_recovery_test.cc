// Where a log ends after a crash or damage: torn tails are truncated, zeros
// are the end, and damage that a later batch says was durable is corruption.
// Each case is made by byte surgery on real segment files.
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "log/log.h"
#include "log/reader.h"
#include "tests/support/temp_dir.h"

namespace qmgr::log {
namespace {

constexpr uint64_t kSegmentBytes = 64 * 1024;

LogOptions Small() {
  LogOptions options;
  options.segment_bytes = kSegmentBytes;
  return options;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Batches of a closed log, in order.
std::vector<Batch> BatchesOf(const std::string& dir) {
  absl::StatusOr<std::vector<SegmentFile>> segments = ListSegments(PosixFileSystem(), dir, nullptr);
  EXPECT_TRUE(segments.ok()) << segments.status();
  LogScanner scanner(PosixFileSystem(), *segments, 0);
  std::vector<Batch> batches;
  Batch batch;
  while (true) {
    absl::StatusOr<bool> more = scanner.Next(&batch);
    EXPECT_TRUE(more.ok());
    if (!more.ok() || !*more) break;
    batches.push_back(batch);
  }
  return batches;
}

struct Where {
  std::string path;
  uint64_t offset;
};

Where Locate(const std::string& dir, Lsn lsn) {
  absl::StatusOr<std::vector<SegmentFile>> segments = ListSegments(PosixFileSystem(), dir, nullptr);
  for (const SegmentFile& s : *segments) {
    if (s.header.Contains(lsn)) return {s.path, s.header.FileOffset(lsn)};
  }
  ADD_FAILURE() << "no segment holds LSN " << lsn;
  return {};
}

size_t CountRecords(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<LogReader>> reader = LogReader::Open(PosixFileSystem(), dir);
  EXPECT_TRUE(reader.ok());
  size_t n = 0;
  LogEntry entry;
  while (true) {
    absl::StatusOr<bool> more = (*reader)->Next(&entry);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    ++n;
  }
  return n;
}

// Writes `durable_batches` batches of one record each, then `last_records`
// records of `last_bytes` payload each (one or more batches).
void WriteLog(const std::string& dir, int durable_batches, int last_records, size_t last_bytes) {
  absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, Small());
  ASSERT_TRUE(log.ok()) << log.status();
  for (int i = 0; i < durable_batches; ++i) {
    ASSERT_TRUE((*log)->WaitDurable(*(*log)->Append(7, absl::StrCat("durable-", i))).ok());
  }
  Lsn last = 0;
  for (int i = 0; i < last_records; ++i) last = *(*log)->Append(7, std::string(last_bytes, 'z'));
  ASSERT_TRUE((*log)->WaitDurable(last).ok());
  ASSERT_TRUE((*log)->Close().ok());
}

// A write cut at every byte offset of the last batch: the log opens, ends
// where the previous batch ended, keeps every earlier record, zeroes the
// garbage, and takes new appends after it.
TEST(LogRecoveryTest, TornTailAtEveryByteOfTheLastBatchIsTruncated) {
  qmgr::testing::TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  WriteLog(dir, 4, 1, 150);
  std::vector<Batch> batches = BatchesOf(dir);
  ASSERT_EQ(batches.size(), 5u);
  const Batch last = batches.back();
  const Where where = Locate(dir, last.lsn);
  const std::string original = ReadFile(where.path);
  const uint64_t length = last.end_lsn() - last.lsn;
  for (uint64_t kept = 0; kept < length; ++kept) {
    SCOPED_TRACE(absl::StrCat("bytes of the last batch on disk: ", kept));
    std::string torn = original;
    std::fill(torn.begin() + where.offset + kept, torn.begin() + where.offset + length, '\0');
    WriteFile(where.path, torn);
    {
      absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, Small());
      ASSERT_TRUE(log.ok()) << log.status();
      const LogOpenReport& report = (*log)->open_report();
      EXPECT_EQ(report.tail.kind, kept == 0 ? TailKind::kClean : TailKind::kTorn);
      EXPECT_EQ(report.end_lsn, batches[3].end_lsn());
      if (kept > 0) {
        EXPECT_EQ(report.tail.damage_lsn, last.lsn);
        EXPECT_EQ(report.tail.damage_file_offset, where.offset);
      }
    }
    EXPECT_EQ(CountRecords(dir), 4u);
    absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, Small());
    ASSERT_TRUE(log.ok());
    EXPECT_EQ((*log)->open_report().tail.kind, TailKind::kClean) << "garbage was zeroed";
    ASSERT_TRUE((*log)->WaitDurable(*(*log)->Append(7, "after")).ok());
    ASSERT_TRUE((*log)->Close().ok());
    EXPECT_EQ(CountRecords(dir), 5u);
    WriteFile(where.path, original);
  }
}

// The same for a batch of many records spanning several blocks, with blocks
// of it missing in the middle (written out of order by the disk).
TEST(LogRecoveryTest, TornMultiBlockBatchIsTruncated) {
  qmgr::testing::TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  WriteLog(dir, 3, 1, 14000);
  std::vector<Batch> batches = BatchesOf(dir);
  const Batch last = batches.back();
  ASSERT_GT(last.end_lsn() - last.lsn, 3 * kBlockBytes);
  const Where where = Locate(dir, last.lsn);
  const std::string original = ReadFile(where.path);
  const uint64_t length = last.end_lsn() - last.lsn;
  for (uint64_t cut = 1; cut < length; cut += 97) {
    for (bool hole : {false, true}) {
      SCOPED_TRACE(absl::StrCat("cut at ", cut, hole ? " as a one-block hole" : " as a prefix"));
      std::string torn = original;
      const uint64_t end = hole ? std::min(length, (cut / kBlockBytes + 1) * kBlockBytes) : length;
      std::fill(torn.begin() + where.offset + cut, torn.begin() + where.offset + end, '\0');
      WriteFile(where.path, torn);
      absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, Small());
      ASSERT_TRUE(log.ok()) << log.status();
      EXPECT_EQ((*log)->open_report().tail.kind, TailKind::kTorn);
      EXPECT_EQ((*log)->open_report().end_lsn, batches[batches.size() - 2].end_lsn());
      log->reset();
      EXPECT_EQ(CountRecords(dir), batches.size() - 1);
      WriteFile(where.path, original);
    }
  }
}

// Damage inside a batch that a later valid batch says was durable is
// corruption: Open refuses, naming the segment and offset; the reader fails
// the same way. With truncation allowed, the log opens and reports the loss.
TEST(LogRecoveryTest, DamageBeforeADurableBatchIsCorruption) {
  qmgr::testing::TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  WriteLog(dir, 9, 1, 10);
  std::vector<Batch> batches = BatchesOf(dir);
  ASSERT_EQ(batches.size(), 10u);
  const Where where = Locate(dir, batches[4].records_lsn() + kRecordHeaderBytes);
  std::string bytes = ReadFile(where.path);
  bytes[where.offset] ^= 0x40;
  WriteFile(where.path, bytes);

  absl::StatusOr<std::unique_ptr<Log>> refused = Log::Open(PosixFileSystem(), dir, Small());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);
  const Where batch_where = Locate(dir, batches[4].lsn);
  EXPECT_NE(refused.status().message().find(batch_where.path), absl::string_view::npos)
      << refused.status();
  EXPECT_NE(refused.status().message().find(absl::StrCat("offset ", batch_where.offset)),
            absl::string_view::npos)
      << refused.status();

  absl::StatusOr<std::unique_ptr<LogReader>> reader = LogReader::Open(PosixFileSystem(), dir);
  ASSERT_TRUE(reader.ok());
  LogEntry entry;
  absl::StatusOr<bool> more = true;
  int read = 0;
  while (more.ok() && *more) {
    more = (*reader)->Next(&entry);
    read += more.ok() && *more;
  }
  EXPECT_EQ(read, 4);
  EXPECT_EQ(more.status().code(), absl::StatusCode::kDataLoss);

  LogOptions truncate = Small();
  truncate.truncate_at_corruption = true;
  absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, truncate);
  ASSERT_TRUE(log.ok()) << log.status();
  const LogTail& tail = (*log)->open_report().tail;
  EXPECT_EQ(tail.kind, TailKind::kCorrupt);
  EXPECT_TRUE((*log)->open_report().truncated);
  EXPECT_EQ(tail.damage_lsn, batches[4].lsn);
  // The damaged batch itself (its header is intact) and the five after it.
  EXPECT_EQ(tail.lost_batches, 6u);
  EXPECT_EQ(tail.lost_records, 6u);
  EXPECT_EQ(tail.lost_end_lsn, batches[9].end_lsn());
  log->reset();
  EXPECT_EQ(CountRecords(dir), 4u);
}

// Regression (review): a lost acknowledged batch at the end of a segment,
// followed by a torn first batch in the next segment that claims it durable,
// is corruption decided at the lost batch, not a torn tail at the next one.
TEST(LogRecoveryTest, LostBatchBeforeASegmentSwitchIsCorruption) {
  qmgr::testing::TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  {
    absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, Small());
    ASSERT_TRUE(log.ok());
    ASSERT_TRUE((*log)->WaitDurable(*(*log)->Append(7, "first")).ok());
    ASSERT_TRUE((*log)->WaitDurable(*(*log)->Append(7, "acknowledged")).ok());
    // Does not fit the rest of the first segment: goes to the next one.
    ASSERT_TRUE((*log)->WaitDurable(*(*log)->Append(7, std::string(55000, 'y'))).ok());
  }
  std::vector<Batch> batches = BatchesOf(dir);
  ASSERT_EQ(batches.size(), 3u);
  ASSERT_EQ(batches[2].lsn, kSegmentBytes - kSegmentHeaderBytes) << "third batch opens segment 2";
  const Where lost = Locate(dir, batches[1].lsn);
  std::string bytes = ReadFile(lost.path);
  std::fill(bytes.begin() + lost.offset, bytes.begin() + lost.offset + kBlockBytes, '\0');
  WriteFile(lost.path, bytes);
  const Where torn = Locate(dir, batches[2].records_lsn() + 5000);
  bytes = ReadFile(torn.path);
  bytes[torn.offset] ^= 1;
  WriteFile(torn.path, bytes);
  absl::StatusOr<std::unique_ptr<Log>> refused = Log::Open(PosixFileSystem(), dir, Small());
  ASSERT_FALSE(refused.ok()) << "an acknowledged batch would be cut off";
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(refused.status().message().find(absl::StrCat("offset ", lost.offset)),
            absl::string_view::npos)
      << refused.status();
}

// Damage in a middle segment, with later segments full of durable batches.
TEST(LogRecoveryTest, CorruptionInAMiddleSegmentIsRefused) {
  qmgr::testing::TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  {
    absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, Small());
    ASSERT_TRUE(log.ok());
    for (int i = 0; i < 200; ++i) {
      ASSERT_TRUE((*log)->WaitDurable(*(*log)->Append(3, std::string(1000, 'm'))).ok());
    }
  }
  absl::StatusOr<std::vector<SegmentFile>> segments = ListSegments(PosixFileSystem(), dir, nullptr);
  ASSERT_GE(segments->size(), 4u);
  const SegmentFile& middle = (*segments)[1];
  std::string bytes = ReadFile(middle.path);
  bytes[kSegmentHeaderBytes + 3 * kBlockBytes + 40] ^= 1;
  WriteFile(middle.path, bytes);
  absl::StatusOr<std::unique_ptr<Log>> refused = Log::Open(PosixFileSystem(), dir, Small());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(refused.status().message().find(middle.path), absl::string_view::npos)
      << refused.status();
}

// A damaged segment header is refused, naming the file.
TEST(LogRecoveryTest, DamagedSegmentHeaderIsRefused) {
  qmgr::testing::TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  WriteLog(dir, 2, 1, 10);
  absl::StatusOr<std::vector<SegmentFile>> segments = ListSegments(PosixFileSystem(), dir, nullptr);
  std::string bytes = ReadFile(segments->front().path);
  bytes[kSegmentFirstLsnOffset] ^= 1;
  WriteFile(segments->front().path, bytes);
  absl::StatusOr<std::unique_ptr<Log>> refused = Log::Open(PosixFileSystem(), dir, Small());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(refused.status().message().find(segments->front().path), absl::string_view::npos);
}

// Preallocated zeros are the end of the log, never records: a new log, and
// one whose last batch ends in the middle of a zeroed segment, read cleanly.
TEST(LogRecoveryTest, ZeroFilledTailIsNotRecords) {
  qmgr::testing::TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  { ASSERT_TRUE(Log::Open(PosixFileSystem(), dir, Small()).ok()); }
  EXPECT_EQ(CountRecords(dir), 0u);
  absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, Small());
  ASSERT_TRUE(log.ok());
  EXPECT_EQ((*log)->open_report().tail.kind, TailKind::kClean);
  EXPECT_EQ((*log)->open_report().end_lsn, 0u);
  EXPECT_GE((*log)->open_report().segments, 2u) << "a segment preallocated ahead";
  ASSERT_TRUE((*log)->WaitDurable(*(*log)->Append(5, "one")).ok());
  log->reset();
  EXPECT_EQ(CountRecords(dir), 1u);
  absl::StatusOr<std::unique_ptr<LogReader>> reader = LogReader::Open(PosixFileSystem(), dir);
  LogEntry entry;
  ASSERT_TRUE(*(*reader)->Next(&entry));
  ASSERT_FALSE(*(*reader)->Next(&entry));
  EXPECT_EQ((*reader)->tail().kind, TailKind::kClean);
}

// A preallocation cut by a crash leaves a .tmp file that Open removes.
TEST(LogRecoveryTest, InterruptedPreallocationIsCleanedUp) {
  qmgr::testing::TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  WriteLog(dir, 1, 1, 10);
  const std::string leftover = dir + "/" + SegmentFileName(10 * kSegmentBytes) + ".tmp";
  WriteFile(leftover, "partial");
  ASSERT_TRUE(Log::Open(PosixFileSystem(), dir, Small()).ok());
  EXPECT_FALSE(std::filesystem::exists(leftover));
}

// A missing middle segment is a gap, refused.
TEST(LogRecoveryTest, MissingMiddleSegmentIsRefused) {
  qmgr::testing::TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  {
    absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(PosixFileSystem(), dir, Small());
    for (int i = 0; i < 100; ++i) {
      ASSERT_TRUE((*log)->WaitDurable(*(*log)->Append(3, std::string(2000, 'g'))).ok());
    }
  }
  absl::StatusOr<std::vector<SegmentFile>> segments = ListSegments(PosixFileSystem(), dir, nullptr);
  ASSERT_GE(segments->size(), 3u);
  std::filesystem::remove((*segments)[1].path);
  absl::StatusOr<std::unique_ptr<Log>> refused = Log::Open(PosixFileSystem(), dir, Small());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(refused.status().message().find("gap"), absl::string_view::npos);
}

}  // namespace
}  // namespace qmgr::log
