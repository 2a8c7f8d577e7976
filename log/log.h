// The system log: append, group commit, durability waits, retirement.
//
// Every recoverable change is appended here before it is acknowledged.
// Appends do not wait; one writer thread takes whatever is pending, writes it
// as one batch with one fdatasync, then wakes every waiter whose record is now
// durable. No caller waits for an fsync it does not need; none is told
// "durable" early.
//
// Failure policy (DESIGN.md, "I/O errors"):
//  - ENOSPC from a write is retried a few times (a preallocated segment should
//    never see it; copy-on-write file systems might).
//  - Any other write error, or any fdatasync error, fails every waiter and stops
//    intake: the log answers Unavailable until it is reopened, and the failed
//    descriptor is never fsynced again (the kernel may have dropped its dirty
//    pages, so a later success would lie). Reopening (emergency restart)
//    decides from the disk what is durable.
//  - A full disk shows up when a segment is preallocated: an Append that would
//    need a segment that could not be created answers ResourceExhausted, and
//    intake resumes once the background allocator succeeds.
#ifndef QMGR_LOG_LOG_H_
#define QMGR_LOG_LOG_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "log/file.h"
#include "log/format.h"
#include "log/histogram.h"
#include "log/reader.h"
#include "log/segment.h"
#include "qmgr/v1/log.pb.h"

namespace qmgr::log {

struct LogOptions {
  // Size of each segment file, header included (a multiple of 4 KiB).
  uint64_t segment_bytes = kSegmentBytesDefault;
  // Segments kept preallocated beyond the one being written.
  int segments_ahead = 1;
  // Where retired segments go; empty: they are deleted.
  std::string archive_dir;
  // Refuse a log whose id differs (the store's copy of the id).
  std::optional<LogId> expected_log_id;
  bool create_if_missing = true;
  // First LSN of a new log (a cold start keeps the LSN running). Block-aligned.
  Lsn first_lsn_if_new = 0;
  // At open, corruption is refused unless this is set; then the log is cut
  // at the damage and the loss is reported in the open report.
  bool truncate_at_corruption = false;
  int enospc_write_retries = 5;
  std::chrono::milliseconds enospc_retry_delay{20};
  // How often the allocator retries after failing to create a segment.
  std::chrono::milliseconds allocation_retry_interval{200};
  // A seam for the seeded crash simulation: the writer writes only once a
  // caller waits for durability (or at Close), not as soon as a record is
  // appended. Which records share a batch, and so every LSN after them, then
  // follows from the order of calls alone, not from when the writer thread
  // happened to run. Off in qmgrd: a record nobody waits for would sit in
  // memory.
  bool write_only_for_waiters = false;
};

// What Open found and did.
struct LogOpenReport {
  bool created = false;
  LogId log_id;
  Lsn first_lsn = 0;  // oldest LSN still in the log
  Lsn end_lsn = 0;    // where appending resumes
  uint64_t segments = 0;
  LogTail tail;  // how the log ended; torn/corrupt tails were truncated
  bool truncated = false;
};

// Buckets of LogStats' histograms.
inline const std::vector<double> kSyncSecondsBuckets = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1};
inline const std::vector<double> kCommitRecordsBuckets = {1,  2,   4,   8,   16,  32,
                                                          64, 128, 256, 512, 1024};

struct LogStats {
  uint64_t appends = 0;
  uint64_t append_bytes = 0;   // record bytes, headers included
  uint64_t commits = 0;        // group-commit writes
  uint64_t commit_syncs = 0;   // fdatasyncs on the commit path
  uint64_t written_bytes = 0;  // batch bytes written, headers included
  uint64_t segments_created = 0;
  uint64_t segments_retired = 0;
  uint64_t segments = 0;  // segment files now (preallocated ones included)
  // Each commit-path fdatasync's duration, in seconds.
  Histogram sync_seconds{kSyncSecondsBuckets};
  // Records made durable by each group commit.
  Histogram commit_records{kCommitRecordsBuckets};
};

class Log {
 public:
  // Opens (or creates) the log in `dir`: checks every segment header,
  // finds the end, truncates a torn tail (reported), refuses corruption
  // (DataLoss naming segment and offset) unless truncate_at_corruption,
  // preallocates ahead, and starts the writer. `fs` must outlive the log.
  static absl::StatusOr<std::unique_ptr<Log>> Open(FileSystem* fs, std::string dir,
                                                   LogOptions options = {});
  // Close()s.
  ~Log();
  Log(const Log&) = delete;
  Log& operator=(const Log&) = delete;

  // Appends a record and returns its LSN without waiting for durability.
  // InvalidArgument for an oversized or empty record; ResourceExhausted when
  // the disk has no room for a segment it needs; Unavailable after a failure.
  absl::StatusOr<Lsn> Append(const qmgr::v1::LogRecord& record);
  absl::StatusOr<Lsn> Append(uint8_t type, absl::string_view payload);
  // Returns once the record at `lsn` is durable, or the log failed before.
  absl::Status WaitDurable(Lsn lsn);
  absl::StatusOr<Lsn> AppendDurable(const qmgr::v1::LogRecord& record);
  // Returns once every record appended before the call is durable (a
  // checkpoint's WaitDurable(redo_lsn)).
  absl::Status WaitAllDurable();

  // Every record below this LSN is durable.
  Lsn DurableLsn() const;
  // Every record appended so far is below this LSN.
  Lsn NextLsn() const;
  // The oldest LSN the log still holds (retirement moves it).
  Lsn FirstLsn() const;

  // Deletes (or archives) every whole segment below `lsn`, never the one
  // being written or anything not yet durable.
  absl::Status RetireBefore(Lsn lsn);

  // Writes what is pending, waits for it, stops the threads, and waits for
  // woken callers to leave. Later appends answer FailedPrecondition; a later
  // (or concurrent) Close returns what the first one returned.
  absl::Status Close();

  const LogOpenReport& open_report() const { return report_; }
  const LogId& id() const { return report_.log_id; }
  const std::string& dir() const { return dir_; }
  // The largest payload Append takes (derived from the segment sizes).
  uint64_t record_payload_bytes_max() const { return record_payload_bytes_max_; }
  LogStats stats() const;

 private:
  // A batch being filled by appenders, then written by the writer.
  struct PendingBatch {
    Lsn lsn = 0;
    Lsn prev_lsn = kNoLsn;
    uint32_t record_count = 0;
    std::string bytes;  // header (filled in when written) and records
    Lsn end_lsn() const { return lsn + bytes.size(); }
  };

  Log(FileSystem* fs, std::string dir, LogOptions options);
  // Frames a record whose payload `write_payload` writes (exactly
  // payload_size bytes) into the open batch.
  absl::StatusOr<Lsn> AppendFrame(uint8_t type, size_t payload_size,
                                  absl::FunctionRef<void(char*)> write_payload);
  absl::Status Recover();
  absl::Status ZeroRange(const std::vector<SegmentFile>& segments, Lsn from, Lsn to);
  void WriterLoop();
  void AllocatorLoop();
  // Writer thread: writes the batches, then fdatasyncs each segment touched.
  // The fdatasyncs of one group commit and how long each took (seconds).
  using SyncTimes = std::vector<double>;
  absl::Status WriteBatches(std::vector<PendingBatch>& batches, Lsn durable_before,
                            SyncTimes* syncs);
  absl::StatusOr<File*> SegmentForWrite(Lsn lsn, SyncTimes* syncs);
  absl::Status SyncWriteFile(SyncTimes* syncs);
  // End of the segment holding `lsn`, whether it exists yet or not.
  Lsn SegmentEnd(Lsn lsn) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t body_bytes() const;
  void WakeDurableWaiters() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddPreparedSegment(const SegmentHeader& header) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  FileSystem* const fs_;
  const std::string dir_;
  const LogOptions options_;
  LogOpenReport report_;
  uint64_t record_payload_bytes_max_ = 0;  // set by Recover, then constant

  absl::Mutex retire_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  PendingBatch open_batch_ ABSL_GUARDED_BY(mu_);
  // The largest written batch's buffer (up to kSpareBytesMax), for the next
  // batch to fill.
  static constexpr size_t kSpareBytesMax = size_t{4} << 20;
  std::string spare_bytes_ ABSL_GUARDED_BY(mu_);
  std::vector<PendingBatch> sealed_ ABSL_GUARDED_BY(mu_);  // full segments' batches
  Lsn next_batch_lsn_ ABSL_GUARDED_BY(mu_) = 0;            // where a new batch starts
  Lsn last_batch_lsn_ ABSL_GUARDED_BY(mu_) = kNoLsn;
  Lsn last_record_lsn_ ABSL_GUARDED_BY(mu_) = kNoLsn;
  Lsn durable_lsn_ ABSL_GUARDED_BY(mu_) = 0;
  // durable_lsn_ for readers without the mutex (it only grows).
  std::atomic<Lsn> durable_published_{0};
  // WaitDurable callers by the LSN they wait for; woken (and removed) when it
  // is durable, or when the log fails or closes.
  struct DurableWaiter {
    absl::CondVar cv;
    bool woken = false;
  };
  std::multimap<Lsn, DurableWaiter*> durable_waiters_ ABSL_GUARDED_BY(mu_);
  Lsn first_lsn_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status failed_ ABSL_GUARDED_BY(mu_);
  bool closing_ ABSL_GUARDED_BY(mu_) = false;         // the writer drains, then stops
  bool stop_allocator_ ABSL_GUARDED_BY(mu_) = false;  // after the writer stopped
  int callers_inside_ ABSL_GUARDED_BY(mu_) = 0;       // waiting in WaitDurable or Append
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  // Segments exist (preallocated) for every LSN below prepared_end_; the
  // allocator keeps it ahead of needed_end_.
  Lsn prepared_end_ ABSL_GUARDED_BY(mu_) = 0;
  Lsn needed_end_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status allocation_error_ ABSL_GUARDED_BY(mu_);
  std::map<Lsn, SegmentFile> segment_paths_ ABSL_GUARDED_BY(mu_);  // by first LSN
  LogStats stats_ ABSL_GUARDED_BY(mu_);

  // Held from Open to Close: one Log per directory, across processes too.
  std::unique_ptr<FileLock> lock_;

  // Writer thread only.
  SegmentHeader write_segment_;
  std::unique_ptr<File> write_file_;
  bool write_file_dirty_ = false;
  Lsn write_file_end_ = 0;  // end of the last batch written to write_file_
  Lsn synced_end_ = 0;      // end of the last batch made durable

  std::thread writer_;
  std::thread allocator_;
};

}  // namespace qmgr::log

#endif  // QMGR_LOG_LOG_H_
