#include "log/log.h"

#include <algorithm>
#include <cassert>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace qmgr::log {

Log::Log(FileSystem* fs, std::string dir, LogOptions options)
    : fs_(fs), dir_(std::move(dir)), options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<Log>> Log::Open(FileSystem* fs, std::string dir,
                                               LogOptions options) {
  if (options.segment_bytes < kSegmentBytesMin || options.segment_bytes > kSegmentBytesMax ||
      options.segment_bytes % kBlockBytes != 0) {
    return absl::InvalidArgumentError(absl::StrCat("segment size ", options.segment_bytes,
                                                   " must be a multiple of ", kBlockBytes, " in [",
                                                   kSegmentBytesMin, ", ", kSegmentBytesMax, "]"));
  }
  if (options.first_lsn_if_new % kBlockBytes != 0) {
    return absl::InvalidArgumentError("first LSN of a new log must be a multiple of 4096");
  }
  if (options.segments_ahead < 0) {
    return absl::InvalidArgumentError("segments_ahead must not be negative");
  }
  if (options.enospc_write_retries < 0 ||
      options.allocation_retry_interval <= std::chrono::milliseconds(0) ||
      options.enospc_retry_delay < std::chrono::milliseconds(0)) {
    return absl::InvalidArgumentError(
        "enospc_write_retries must not be negative and the retry intervals must be positive");
  }
  if (options.first_lsn_if_new > (kNoLsn >> 1)) {
    return absl::InvalidArgumentError("first LSN of a new log leaves no room for the log");
  }
  std::unique_ptr<Log> log(new Log(fs, std::move(dir), std::move(options)));
  if (absl::Status s = log->Recover(); !s.ok()) return s;
  log->writer_ = std::thread([raw = log.get()] { raw->WriterLoop(); });
  log->allocator_ = std::thread([raw = log.get()] { raw->AllocatorLoop(); });
  return log;
}

Log::~Log() { Close().IgnoreError(); }

absl::Status Log::Recover() {
  if (options_.create_if_missing) {
    if (absl::Status s = fs_->CreateDir(dir_); !s.ok()) return s;
    // The directory's own entry must be durable before anything in it is.
    const size_t slash = dir_.find_last_of('/');
    const std::string parent =
        slash == std::string::npos ? "." : (slash == 0 ? "/" : dir_.substr(0, slash));
    if (absl::Status s = fs_->SyncDir(parent); !s.ok()) return s;
  }
  absl::StatusOr<std::unique_ptr<FileLock>> dir_lock = fs_->Lock(JoinPath(dir_, kLockFileName));
  if (!dir_lock.ok()) return dir_lock.status();
  lock_ = *std::move(dir_lock);
  absl::StatusOr<std::vector<std::string>> names = fs_->ListDir(dir_);
  if (!names.ok()) return names.status();
  for (const std::string& name : *names) {
    if (absl::EndsWith(name, ".qlog.tmp")) {  // an interrupted preallocation
      if (absl::Status s = fs_->Remove(JoinPath(dir_, name)); !s.ok()) return s;
    }
  }
  const LogId* expected = options_.expected_log_id ? &*options_.expected_log_id : nullptr;
  absl::StatusOr<std::vector<SegmentFile>> segments = ListSegments(fs_, dir_, expected);
  if (!segments.ok()) return segments.status();

  if (segments->empty()) {
    if (expected != nullptr) {
      return absl::NotFoundError(absl::StrCat("log directory ", dir_,
                                              " holds no segments, but log ", expected->ToString(),
                                              " is expected"));
    }
    if (!options_.create_if_missing) {
      return absl::NotFoundError(absl::StrCat("log directory ", dir_, " holds no segments"));
    }
    const SegmentHeader header{LogId::Random(), options_.first_lsn_if_new, options_.segment_bytes};
    if (absl::Status s = CreateSegment(fs_, dir_, header); !s.ok()) return s;
    segments->push_back({JoinPath(dir_, SegmentFileName(header.first_lsn)), header});
    report_.created = true;
  }

  LogScanner scanner(fs_, *segments, 0);
  Batch batch;
  Lsn last_batch_lsn = kNoLsn;
  while (true) {
    absl::StatusOr<bool> more = scanner.Next(&batch);
    if (!more.ok()) return more.status();
    if (!*more) break;
    last_batch_lsn = batch.lsn;
  }
  report_.tail = scanner.tail();
  if (report_.tail.kind == TailKind::kCorrupt && !options_.truncate_at_corruption) {
    return absl::DataLossError(absl::StrCat(
        report_.tail.ToString(), "; refusing to open (truncating there would lose those records)"));
  }
  if (report_.tail.kind != TailKind::kClean) {
    if (absl::Status s =
            ZeroRange(*segments, report_.tail.damage_lsn, report_.tail.garbage_end_lsn);
        !s.ok()) {
      return s;
    }
    report_.truncated = true;
  }

  // What was read may be only in the page cache (a process killed before its
  // fdatasync): make it durable before anything claims it is.
  for (const SegmentFile& segment : *segments) {
    if (segment.header.first_lsn >= report_.tail.end_lsn ||
        segment.header.end_lsn() < report_.tail.end_lsn) {
      continue;
    }
    absl::StatusOr<std::unique_ptr<File>> file = fs_->Open(segment.path, OpenMode::kReadWrite);
    if (!file.ok()) return file.status();
    if (absl::Status s = (*file)->Sync(); !s.ok()) return s;
  }

  report_.log_id = segments->front().header.log_id;
  report_.first_lsn = segments->front().header.first_lsn;
  report_.end_lsn = report_.tail.end_lsn;
  report_.segments = segments->size();
  absl::MutexLock lock(&mu_);
  for (const SegmentFile& segment : *segments) segment_paths_[segment.header.first_lsn] = segment;
  first_lsn_ = report_.first_lsn;
  durable_lsn_ = report_.end_lsn;
  durable_published_.store(durable_lsn_, std::memory_order_release);
  next_batch_lsn_ = AlignUp(report_.end_lsn);
  last_batch_lsn_ = last_batch_lsn;
  prepared_end_ = segments->back().header.end_lsn();
  record_payload_bytes_max_ = RecordPayloadBytesMax(options_.segment_bytes);
  for (const SegmentFile& segment : *segments) {
    record_payload_bytes_max_ =
        std::min(record_payload_bytes_max_, RecordPayloadBytesMax(segment.header.segment_bytes));
  }
  needed_end_ = SegmentEnd(next_batch_lsn_) + options_.segments_ahead * body_bytes();
  // Preallocate before taking traffic. Only the segment appends go to first
  // is required; a full disk for the ones ahead is retried by the allocator.
  while (prepared_end_ < needed_end_) {
    const SegmentHeader header{report_.log_id, prepared_end_, options_.segment_bytes};
    if (absl::Status s = CreateSegment(fs_, dir_, header); !s.ok()) {
      if (prepared_end_ <= next_batch_lsn_) return s;
      allocation_error_ = s;
      break;
    }
    AddPreparedSegment(header);
    ++report_.segments;
  }
  return absl::OkStatus();
}

absl::Status Log::ZeroRange(const std::vector<SegmentFile>& segments, Lsn from, Lsn to) {
  constexpr uint64_t kChunkBytes = 1 << 20;
  std::string chunk(kChunkBytes, '\0');
  const std::string zeros(kChunkBytes, '\0');
  for (const SegmentFile& segment : segments) {
    const Lsn begin = std::max(from, segment.header.first_lsn);
    const Lsn end = std::min(to, segment.header.end_lsn());
    if (begin >= end) continue;
    absl::StatusOr<std::unique_ptr<File>> file = fs_->Open(segment.path, OpenMode::kReadWrite);
    if (!file.ok()) return file.status();
    for (Lsn at = begin; at < end; at += kChunkBytes) {
      const uint64_t n = std::min(kChunkBytes, end - at);
      const uint64_t offset = segment.header.FileOffset(at);
      absl::StatusOr<size_t> got = (*file)->Read(offset, n, chunk.data());
      if (!got.ok()) return got.status();
      if (AllZero(absl::string_view(chunk.data(), *got))) continue;
      if (absl::Status s = (*file)->Write(offset, absl::string_view(zeros.data(), n)); !s.ok()) {
        return s;
      }
    }
    if (absl::Status s = (*file)->Sync(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void Log::AddPreparedSegment(const SegmentHeader& header) {
  assert(header.first_lsn == prepared_end_);
  segment_paths_[header.first_lsn] = {JoinPath(dir_, SegmentFileName(header.first_lsn)), header};
  prepared_end_ = header.end_lsn();
  ++stats_.segments_created;
}

uint64_t Log::body_bytes() const { return options_.segment_bytes - kSegmentHeaderBytes; }

Lsn Log::SegmentEnd(Lsn lsn) const {
  auto it = segment_paths_.upper_bound(lsn);
  if (it != segment_paths_.begin()) {
    --it;
    if (it->second.header.Contains(lsn)) return it->second.header.end_lsn();
  }
  assert(lsn >= prepared_end_);
  return prepared_end_ + ((lsn - prepared_end_) / body_bytes() + 1) * body_bytes();
}

absl::StatusOr<Lsn> Log::Append(const qmgr::v1::LogRecord& record) {
  const int type = record.body_case();
  if (type == qmgr::v1::LogRecord::BODY_NOT_SET) {
    return absl::InvalidArgumentError("log record has no body");
  }
  if (type > 255) {
    return absl::InvalidArgumentError(absl::StrCat("record type ", type, " does not fit a byte"));
  }
  // Serialized straight into the batch: no intermediate copy of the payload.
  const size_t payload_size = record.ByteSizeLong();
  return AppendFrame(static_cast<uint8_t>(type), payload_size, [&record](char* out) {
    record.SerializeWithCachedSizesToArray(reinterpret_cast<uint8_t*>(out));
  });
}

absl::StatusOr<Lsn> Log::Append(uint8_t type, absl::string_view payload) {
  return AppendFrame(type, payload.size(),
                     [payload](char* out) { std::memcpy(out, payload.data(), payload.size()); });
}

absl::StatusOr<Lsn> Log::AppendFrame(uint8_t type, size_t payload_size,
                                     absl::FunctionRef<void(char*)> write_payload) {
  if (type == 0) return absl::InvalidArgumentError("record type 0 is reserved");
  const uint64_t size = kRecordHeaderBytes + payload_size;
  absl::MutexLock lock(&mu_);
  if (payload_size > record_payload_bytes_max_) {
    return absl::InvalidArgumentError(absl::StrCat("log record of ", payload_size,
                                                   " bytes exceeds the log's maximum of ",
                                                   record_payload_bytes_max_));
  }
  // Place the record: in the open batch if it fits its segment, else in a new
  // batch at the next block boundary, or at the next segment's start. A new
  // batch needs its segment preallocated; when the allocator is behind, wait
  // for its attempt (never for durability), so a full disk refuses the record
  // here with nothing assigned, instead of stranding it in an unwritable batch.
  bool new_batch = false;
  bool seal = false;
  Lsn batch_lsn = 0;
  while (true) {
    if (!failed_.ok()) return failed_;
    if (closing_) return absl::FailedPreconditionError("the system log is closed");
    new_batch = open_batch_.bytes.empty();
    seal = false;
    batch_lsn = new_batch ? next_batch_lsn_ : open_batch_.lsn;
    if (!new_batch && open_batch_.end_lsn() + size > SegmentEnd(open_batch_.lsn)) {
      seal = new_batch = true;
      batch_lsn = SegmentEnd(open_batch_.lsn);
    } else if (new_batch && batch_lsn + kBatchHeaderBytes + size > SegmentEnd(batch_lsn)) {
      batch_lsn = SegmentEnd(batch_lsn);
    }
    if (!new_batch || batch_lsn < prepared_end_) break;
    if (!allocation_error_.ok()) {
      // ENOSPC keeps its ResourceExhausted; other causes keep their own code.
      return absl::Status(allocation_error_.code(),
                          absl::StrCat("system log cannot preallocate the segment at LSN ",
                                       prepared_end_, ": ", allocation_error_.message()));
    }
    needed_end_ =
        std::max(needed_end_, SegmentEnd(batch_lsn) + options_.segments_ahead * body_bytes());
    const Lsn prepared = prepared_end_;
    auto allocator_moved = [this, prepared]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return prepared_end_ != prepared || !allocation_error_.ok() || !failed_.ok() || closing_;
    };
    ++callers_inside_;
    mu_.Await(absl::Condition(&allocator_moved));
    --callers_inside_;
  }
  if (seal) {
    sealed_.push_back(std::move(open_batch_));
    open_batch_ = PendingBatch{};
  }
  if (new_batch) {
    open_batch_.lsn = batch_lsn;
    open_batch_.prev_lsn = last_batch_lsn_;
    // A buffer the writer is done with: no regrowing (and copying) the batch
    // from empty at every group commit.
    if (open_batch_.bytes.capacity() < spare_bytes_.capacity())
      open_batch_.bytes.swap(spare_bytes_);
    open_batch_.bytes.assign(kBatchHeaderBytes, '\0');
    last_batch_lsn_ = batch_lsn;
    next_batch_lsn_ = batch_lsn;
    needed_end_ =
        std::max(needed_end_, SegmentEnd(batch_lsn) + options_.segments_ahead * body_bytes());
  }
  const Lsn lsn = open_batch_.end_lsn();
  std::string& bytes = open_batch_.bytes;
  const size_t at = bytes.size();
  bytes.resize(at + size);
  char* p = bytes.data() + at;
  PutFixed32(p + kRecordLengthOffset, static_cast<uint32_t>(payload_size));
  p[kRecordTypeOffset] = static_cast<char>(type);
  write_payload(p + kRecordHeaderBytes);
  PutFixed64(p + kRecordChecksumOffset,
             Checksum(lsn, absl::string_view(p + kRecordLengthOffset, size - kRecordLengthOffset)));
  ++open_batch_.record_count;
  last_record_lsn_ = lsn;
  ++stats_.appends;
  stats_.append_bytes += size;
  return lsn;
}

absl::Status Log::WaitDurable(Lsn lsn) {
  if (durable_published_.load(std::memory_order_acquire) > lsn) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  if (durable_lsn_ <= lsn && failed_.ok() && !closed_) {
    ++callers_inside_;
    // Each waiter sleeps on its own condition variable, woken only when its
    // record is durable: a shared one woke every waiter at every commit, and
    // with many waiters the wake-ups cost more CPU than the work.
    DurableWaiter waiter;
    durable_waiters_.emplace(lsn, &waiter);
    while (!waiter.woken) waiter.cv.Wait(&mu_);
    --callers_inside_;
  }
  if (durable_lsn_ > lsn) return absl::OkStatus();
  if (!failed_.ok()) return failed_;
  return absl::FailedPreconditionError(
      absl::StrCat("the system log closed before LSN ", lsn, " was durable"));
}

void Log::WakeDurableWaiters() {
  const bool all = !failed_.ok() || closed_;
  auto it = durable_waiters_.begin();
  while (it != durable_waiters_.end() && (all || it->first < durable_lsn_)) {
    it->second->woken = true;
    it->second->cv.Signal();
    it = durable_waiters_.erase(it);
  }
}

absl::Status Log::WaitAllDurable() {
  Lsn last;
  {
    absl::MutexLock lock(&mu_);
    if (last_record_lsn_ == kNoLsn || durable_lsn_ > last_record_lsn_) return absl::OkStatus();
    last = last_record_lsn_;
  }
  return WaitDurable(last);
}

absl::StatusOr<Lsn> Log::AppendDurable(const qmgr::v1::LogRecord& record) {
  absl::StatusOr<Lsn> lsn = Append(record);
  if (!lsn.ok()) return lsn;
  if (absl::Status s = WaitDurable(*lsn); !s.ok()) return s;
  return lsn;
}

Lsn Log::DurableLsn() const { return durable_published_.load(std::memory_order_acquire); }

Lsn Log::NextLsn() const {
  absl::MutexLock lock(&mu_);
  return open_batch_.bytes.empty() ? next_batch_lsn_ : open_batch_.end_lsn();
}

Lsn Log::FirstLsn() const {
  absl::MutexLock lock(&mu_);
  return first_lsn_;
}

LogStats Log::stats() const {
  absl::MutexLock lock(&mu_);
  LogStats stats = stats_;
  stats.segments = segment_paths_.size();
  return stats;
}

void Log::WriterLoop() {
  SyncTimes syncs;  // reused: no allocation per commit
  while (true) {
    std::vector<PendingBatch> batches;
    Lsn durable_before = 0;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        const bool pending = !sealed_.empty() || !open_batch_.bytes.empty();
        const bool wanted = !options_.write_only_for_waiters || !durable_waiters_.empty();
        return (pending && wanted) || closing_ || !failed_.ok();
      };
      mu_.Await(absl::Condition(&ready));
      if (!failed_.ok() || (sealed_.empty() && open_batch_.bytes.empty())) return;
      batches = std::move(sealed_);
      sealed_.clear();
      if (!open_batch_.bytes.empty()) {
        next_batch_lsn_ = AlignUp(open_batch_.end_lsn());
        batches.push_back(std::move(open_batch_));
        open_batch_ = PendingBatch{};
      }
      durable_before = durable_lsn_;
    }
    syncs.clear();
    const absl::Status status = WriteBatches(batches, durable_before, &syncs);
    absl::MutexLock lock(&mu_);
    stats_.commit_syncs += syncs.size();
    for (const double seconds : syncs) stats_.sync_seconds.Observe(seconds);
    if (!status.ok()) {
      // A group that spans segments may have made its first part durable.
      durable_lsn_ = std::max(durable_lsn_, synced_end_);
      durable_published_.store(durable_lsn_, std::memory_order_release);
      failed_ = absl::UnavailableError(
          absl::StrCat("system log write failed, intake stopped until restart (records from LSN ",
                       batches.front().lsn, " may or may not be on disk): ", status.message()));
      WakeDurableWaiters();
      return;
    }
    ++stats_.commits;
    uint32_t records = 0;
    for (const PendingBatch& batch : batches) {
      stats_.written_bytes += batch.bytes.size();
      records += batch.record_count;
    }
    stats_.commit_records.Observe(records);
    durable_lsn_ = batches.back().end_lsn();
    durable_published_.store(durable_lsn_, std::memory_order_release);
    WakeDurableWaiters();
    for (PendingBatch& batch : batches) {
      if (batch.bytes.capacity() > spare_bytes_.capacity() &&
          batch.bytes.capacity() <= kSpareBytesMax) {
        spare_bytes_.swap(batch.bytes);
      }
    }
  }
}

absl::Status Log::WriteBatches(std::vector<PendingBatch>& batches, Lsn durable_before,
                               SyncTimes* syncs) {
  for (PendingBatch& batch : batches) {
    // First the segment (switching syncs the previous one), so that the
    // header can claim what this group already made durable there.
    absl::StatusOr<File*> file = SegmentForWrite(batch.lsn, syncs);
    if (!file.ok()) return file.status();
    assert(synced_end_ <= batch.lsn);
    char* h = batch.bytes.data();
    PutFixed64(h + kBatchPrevLsnOffset, batch.prev_lsn);
    PutFixed64(h + kBatchDurableLsnOffset, std::max(durable_before, synced_end_));
    PutFixed32(h + kBatchRecordsBytesOffset,
               static_cast<uint32_t>(batch.bytes.size() - kBatchHeaderBytes));
    PutFixed32(h + kBatchRecordCountOffset, batch.record_count);
    PutFixed64(h + kBatchChecksumOffset,
               Checksum(batch.lsn, absl::string_view(h + kBatchPrevLsnOffset,
                                                     kBatchHeaderBytes - kBatchPrevLsnOffset)));
    const uint64_t offset = write_segment_.FileOffset(batch.lsn);
    for (int attempt = 0;; ++attempt) {
      absl::Status s = (*file)->Write(offset, batch.bytes);
      if (s.ok()) break;
      if (!absl::IsResourceExhausted(s) || attempt == options_.enospc_write_retries) return s;
      std::this_thread::sleep_for(options_.enospc_retry_delay);
    }
    write_file_dirty_ = true;
    write_file_end_ = batch.end_lsn();
  }
  return SyncWriteFile(syncs);
}

absl::Status Log::SyncWriteFile(SyncTimes* syncs) {
  if (!write_file_dirty_) return absl::OkStatus();
  const auto start = std::chrono::steady_clock::now();
  absl::Status s = write_file_->Sync();
  syncs->push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  // After a failed fdatasync this descriptor is never synced again: the
  // writer stops, and only a reopen (which rereads the disk) goes on.
  if (s.ok()) {
    write_file_dirty_ = false;
    synced_end_ = write_file_end_;
  }
  return s;
}

absl::StatusOr<File*> Log::SegmentForWrite(Lsn lsn, SyncTimes* syncs) {
  if (write_file_ != nullptr && write_segment_.Contains(lsn)) return write_file_.get();
  if (write_file_ != nullptr) {
    if (absl::Status s = SyncWriteFile(syncs); !s.ok()) return s;
    write_file_.reset();
  }
  SegmentFile segment;
  {
    absl::MutexLock lock(&mu_);
    assert(prepared_end_ > lsn && "Append places batches in preallocated segments only");
    auto it = std::prev(segment_paths_.upper_bound(lsn));
    assert(it->second.header.Contains(lsn));
    segment = it->second;
  }
  absl::StatusOr<std::unique_ptr<File>> file = fs_->Open(segment.path, OpenMode::kReadWrite);
  if (!file.ok()) return file.status();
  write_file_ = *std::move(file);
  write_segment_ = segment.header;
  return write_file_.get();
}

void Log::AllocatorLoop() {
  absl::MutexLock lock(&mu_);
  while (true) {
    auto work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stop_allocator_ || prepared_end_ < needed_end_;
    };
    mu_.Await(absl::Condition(&work));
    if (stop_allocator_) return;
    const SegmentHeader header{report_.log_id, prepared_end_, options_.segment_bytes};
    mu_.Unlock();
    const absl::Status status = CreateSegment(fs_, dir_, header);
    mu_.Lock();
    if (status.ok()) {
      AddPreparedSegment(header);
      allocation_error_ = absl::OkStatus();
      continue;
    }
    allocation_error_ = status;
    auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_allocator_; };
    mu_.AwaitWithTimeout(absl::Condition(&stop),
                         absl::FromChrono(options_.allocation_retry_interval));
  }
}

absl::Status Log::RetireBefore(Lsn lsn) {
  absl::MutexLock retiring(&retire_mu_);  // one retirement at a time
  std::vector<Lsn> firsts;
  std::vector<std::string> paths;
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::FailedPreconditionError("the system log is closed");
    const Lsn limit = std::min(lsn, durable_lsn_);
    for (auto it = segment_paths_.begin();
         it != segment_paths_.end() && it->second.header.end_lsn() <= limit &&
         std::next(it) != segment_paths_.end();
         ++it) {
      firsts.push_back(it->first);
      paths.push_back(it->second.path);
    }
  }
  if (paths.empty()) return absl::OkStatus();
  if (!options_.archive_dir.empty()) {
    if (absl::Status s = fs_->CreateDir(options_.archive_dir); !s.ok()) return s;
  }
  // Oldest first, each removal made durable before the next, so that a crash
  // never leaves a gap below segments that remain. A segment leaves the map
  // only once its file is gone: a failure leaves the log as it says it is.
  for (size_t i = 0; i < paths.size(); ++i) {
    const std::string& path = paths[i];
    absl::Status s;
    if (options_.archive_dir.empty()) {
      s = fs_->Remove(path);
    } else {
      s = fs_->Rename(path, JoinPath(options_.archive_dir, path.substr(path.rfind('/') + 1)));
      if (s.ok()) s = fs_->SyncDir(options_.archive_dir);
    }
    if (s.ok()) s = fs_->SyncDir(dir_);
    if (!s.ok()) return s;
    absl::MutexLock lock(&mu_);
    segment_paths_.erase(firsts[i]);
    first_lsn_ = segment_paths_.begin()->first;
    ++stats_.segments_retired;
  }
  return absl::OkStatus();
}

absl::Status Log::Close() {
  {
    absl::MutexLock lock(&mu_);
    if (closing_) {  // closed, or another thread is closing: wait for it
      auto closed = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_; };
      mu_.Await(absl::Condition(&closed));
      return failed_;
    }
    closing_ = true;
  }
  if (writer_.joinable()) writer_.join();
  {
    absl::MutexLock lock(&mu_);
    stop_allocator_ = true;
  }
  if (allocator_.joinable()) allocator_.join();
  write_file_.reset();
  absl::MutexLock lock(&mu_);
  lock_.reset();
  closed_ = true;
  WakeDurableWaiters();
  // The destructor follows: let woken callers leave before the members go.
  auto left = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return callers_inside_ == 0; };
  mu_.Await(absl::Condition(&left));
  return failed_;
}

}  // namespace qmgr::log
