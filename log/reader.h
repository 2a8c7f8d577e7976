// Reading the system log: batches (LogScanner) and records (LogReader), and
// the decision where a log ends.
//
// How the end is decided (docs/log-format.md, "Where the log ends"):
//   Batches form a chain: each names the LSN of the batch before it. The chain
//   goes on at the next block boundary after a batch, or, when the writer
//   moved to the next segment, at that segment's first batch. Where the chain
//   stops at position P:
//   | bytes at and after P                               | verdict     |
//   |----------------------------------------------------|-------------|
//   | zeros (preallocated), no valid later batch header   | clean end   |
//   | non-zero, no later batch claiming P durable         | torn tail   |
//   | a later valid batch header with durable LSN > P     | corruption  |
//   A torn tail is the unsynced end of a write cut by a crash: nobody was told
//   it was durable, so it is truncated. Corruption is damage to bytes that were
//   acknowledged: refused, naming segment and offset.
#ifndef QMGR_LOG_READER_H_
#define QMGR_LOG_READER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "log/file.h"
#include "log/format.h"
#include "log/segment.h"

namespace qmgr::log {

struct Batch {
  Lsn lsn = 0;
  Lsn prev_lsn = kNoLsn;
  Lsn durable_lsn = 0;
  uint32_t record_count = 0;
  std::string records;  // the records' bytes, every checksum verified

  Lsn records_lsn() const { return lsn + kBatchHeaderBytes; }
  Lsn end_lsn() const { return records_lsn() + records.size(); }
};

enum class TailKind { kClean, kTorn, kCorrupt };
absl::string_view TailKindName(TailKind kind);

struct LogTail {
  TailKind kind = TailKind::kClean;
  Lsn end_lsn = 0;  // end of the last valid batch: where the next one goes
  // kTorn, kCorrupt: where the chain broke, and why.
  Lsn damage_lsn = kNoLsn;
  std::string damage_segment;
  uint64_t damage_file_offset = 0;
  std::string damage_reason;
  // Non-zero bytes beyond end_lsn extend to here (block-aligned; = end_lsn if none).
  Lsn garbage_end_lsn = 0;
  // kCorrupt: the first later batch that says damage_lsn was durable.
  Lsn claimed_by_lsn = kNoLsn;
  Lsn claimed_durable_lsn = 0;
  // Valid batches found beyond the damage (what truncating there would lose).
  uint64_t lost_batches = 0;
  uint64_t lost_records = 0;
  Lsn lost_end_lsn = 0;

  std::string ToString() const;
};

// Walks valid batches from the segment holding `from_lsn` (or the first).
class LogScanner {
 public:
  // `stop_lsn`: read nothing at or beyond it (a live log's durable LSN); the
  // tail there is reported clean.
  LogScanner(FileSystem* fs, std::vector<SegmentFile> segments, Lsn from_lsn,
             Lsn stop_lsn = kNoLsn);

  // The next valid batch, or false at the end of the log; then tail() says
  // how it ended. I/O errors are returned; corruption is reported in tail(),
  // not as an error, so callers decide.
  absl::StatusOr<bool> Next(Batch* batch);
  const LogTail& tail() const { return tail_; }
  const std::vector<SegmentFile>& segments() const { return segments_; }

  // Tailing a live log: where no valid batch follows, Next returns false
  // without judging the end (the writer may be in the middle of it), and a
  // later Next looks again. Resume gives it the segments listed since, so
  // that it goes on into a new segment; NotFound when the segment it reads
  // was retired meanwhile.
  void Follow() { follow_ = true; }
  absl::Status Resume(std::vector<SegmentFile> segments);

 private:
  enum class Probe { kValid, kZero, kInvalid };
  absl::StatusOr<Probe> ReadBatch(size_t segment, Lsn lsn, Batch* batch, std::string* reason);
  absl::Status Finish(size_t segment, Lsn lsn, std::string reason);
  absl::Status ScanBeyond(size_t segment, Lsn lsn);
  absl::StatusOr<File*> FileOf(size_t segment);

  FileSystem* const fs_;
  std::vector<SegmentFile> segments_;
  const Lsn stop_lsn_;
  std::vector<std::unique_ptr<File>> files_;
  size_t segment_ = 0;
  Lsn next_lsn_ = 0;
  Lsn last_batch_lsn_ = kNoLsn;
  bool done_ = false;
  bool follow_ = false;
  LogTail tail_;
};

struct LogEntry {
  Lsn lsn = 0;
  uint8_t type = 0;  // LogRecord.body case number
  std::string payload;
};

// Records in LSN order from `from_lsn`, across segments.
class LogReader {
 public:
  // Lists and checks the segments of `dir` (a foreign or gapped log fails).
  static absl::StatusOr<std::unique_ptr<LogReader>> Open(FileSystem* fs, const std::string& dir,
                                                         Lsn from_lsn = 0, Lsn stop_lsn = kNoLsn);

  // False at the end of the log. Corruption is a DataLoss error naming the
  // segment and offset; a torn tail is an end (see tail()).
  absl::StatusOr<bool> Next(LogEntry* entry);
  const LogTail& tail() const { return scanner_.tail(); }
  const std::vector<SegmentFile>& segments() const { return scanner_.segments(); }
  uint64_t batches_read() const { return batches_read_; }

  // Tailing a live log (LogScanner::Follow): Next returns false at the
  // current end and finds later records on a later call; Refresh lists the
  // directory's segments again so that it goes on into new ones.
  void Follow() { scanner_.Follow(); }
  absl::Status Refresh(FileSystem* fs, const std::string& dir);

 private:
  LogReader(FileSystem* fs, std::vector<SegmentFile> segments, Lsn from_lsn, Lsn stop_lsn);

  LogScanner scanner_;
  const Lsn from_lsn_;
  Batch batch_;
  size_t offset_ = 0;  // next record's offset in batch_.records
  uint64_t batches_read_ = 0;
};

// Parses one batch's records region; used by the reader and the fuzzer.
// Calls `fn(lsn, type, payload)` for each record. DataLoss on any violation.
absl::Status ForEachRecord(Lsn records_lsn, absl::string_view records, uint32_t record_count,
                           const std::function<void(Lsn, uint8_t, absl::string_view)>& fn);

}  // namespace qmgr::log

#endif  // QMGR_LOG_READER_H_
