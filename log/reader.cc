#include "log/reader.h"

#include <algorithm>
#include <cassert>

#include "absl/strings/str_cat.h"

namespace qmgr::log {

absl::string_view TailKindName(TailKind kind) {
  switch (kind) {
    case TailKind::kClean:
      return "clean";
    case TailKind::kTorn:
      return "torn";
    case TailKind::kCorrupt:
      return "corrupt";
  }
  return "?";
}

std::string LogTail::ToString() const {
  switch (kind) {
    case TailKind::kClean:
      return absl::StrCat("log ends cleanly at LSN ", end_lsn);
    case TailKind::kTorn:
      return absl::StrCat("torn tail at LSN ", damage_lsn, " (segment ", damage_segment,
                          ", offset ", damage_file_offset, "): ", damage_reason, "; ",
                          garbage_end_lsn - damage_lsn,
                          " bytes of unacknowledged writes; the log ends at LSN ", end_lsn);
    case TailKind::kCorrupt:
      return absl::StrCat(
          "log corruption at LSN ", damage_lsn, " (segment ", damage_segment, ", offset ",
          damage_file_offset, "): ", damage_reason, "; the batch at LSN ", claimed_by_lsn,
          " says everything below LSN ", claimed_durable_lsn, " was durable; beyond the damage ",
          lost_batches, " valid batches hold ", lost_records, " records up to LSN ", lost_end_lsn);
  }
  return "?";
}

absl::Status ForEachRecord(Lsn records_lsn, absl::string_view records, uint32_t record_count,
                           const std::function<void(Lsn, uint8_t, absl::string_view)>& fn) {
  size_t offset = 0;
  for (uint32_t i = 0; i < record_count; ++i) {
    const Lsn lsn = records_lsn + offset;
    if (records.size() - offset < kRecordHeaderBytes) {
      return absl::DataLossError(absl::StrCat("record ", i, " at LSN ", lsn, " truncated"));
    }
    const char* p = records.data() + offset;
    const uint32_t length = GetFixed32(p + kRecordLengthOffset);
    const uint8_t type = static_cast<uint8_t>(p[kRecordTypeOffset]);
    if (length > kRecordPayloadBytesMax || length > records.size() - offset - kRecordHeaderBytes) {
      return absl::DataLossError(
          absl::StrCat("record at LSN ", lsn, " has length ", length, " beyond its batch"));
    }
    const absl::string_view covered(p + kRecordLengthOffset,
                                    kRecordHeaderBytes - kRecordLengthOffset + length);
    if (GetFixed64(p + kRecordChecksumOffset) != Checksum(lsn, covered)) {
      return absl::DataLossError(absl::StrCat("record at LSN ", lsn, " checksum mismatch"));
    }
    if (type == 0) return absl::DataLossError(absl::StrCat("record at LSN ", lsn, " has type 0"));
    fn(lsn, type, absl::string_view(p + kRecordHeaderBytes, length));
    offset += kRecordHeaderBytes + length;
  }
  if (offset != records.size()) {
    return absl::DataLossError(absl::StrCat("batch at LSN ", records_lsn - kBatchHeaderBytes,
                                            " has ", records.size() - offset,
                                            " bytes after its last record"));
  }
  return absl::OkStatus();
}

LogScanner::LogScanner(FileSystem* fs, std::vector<SegmentFile> segments, Lsn from_lsn,
                       Lsn stop_lsn)
    : fs_(fs), segments_(std::move(segments)), stop_lsn_(stop_lsn) {
  files_.resize(segments_.size());
  // Every segment that holds data starts with a batch, so reading starts at
  // the first LSN of the segment holding from_lsn.
  while (segment_ + 1 < segments_.size() && segments_[segment_].header.end_lsn() <= from_lsn) {
    ++segment_;
  }
  if (segments_.empty()) {
    done_ = true;
  } else {
    next_lsn_ = segments_[segment_].header.first_lsn;
    tail_.end_lsn = tail_.garbage_end_lsn = next_lsn_;
  }
}

absl::StatusOr<File*> LogScanner::FileOf(size_t segment) {
  if (files_[segment] == nullptr) {
    absl::StatusOr<std::unique_ptr<File>> file =
        fs_->Open(segments_[segment].path, OpenMode::kRead);
    if (!file.ok()) return file.status();
    files_[segment] = *std::move(file);
  }
  return files_[segment].get();
}

absl::StatusOr<LogScanner::Probe> LogScanner::ReadBatch(size_t segment, Lsn lsn, Batch* batch,
                                                        std::string* reason) {
  const SegmentHeader& header = segments_[segment].header;
  assert(header.Contains(lsn) && lsn % kBlockBytes == 0);
  absl::StatusOr<File*> file = FileOf(segment);
  if (!file.ok()) return file.status();
  char head[kBatchHeaderBytes];
  absl::StatusOr<size_t> n = (*file)->Read(header.FileOffset(lsn), sizeof(head), head);
  if (!n.ok()) return n.status();
  if (*n != sizeof(head)) {
    *reason = "segment file shorter than its header says";
    return Probe::kInvalid;
  }
  if (AllZero(absl::string_view(head, sizeof(head)))) return Probe::kZero;
  if (GetFixed64(head + kBatchChecksumOffset) !=
      Checksum(lsn, absl::string_view(head + kBatchPrevLsnOffset,
                                      kBatchHeaderBytes - kBatchPrevLsnOffset))) {
    *reason = "batch header checksum mismatch";
    return Probe::kInvalid;
  }
  batch->lsn = lsn;
  batch->prev_lsn = GetFixed64(head + kBatchPrevLsnOffset);
  batch->durable_lsn = GetFixed64(head + kBatchDurableLsnOffset);
  batch->record_count = GetFixed32(head + kBatchRecordCountOffset);
  const uint32_t records_bytes = GetFixed32(head + kBatchRecordsBytesOffset);
  if (batch->durable_lsn > lsn) {
    *reason = absl::StrCat("batch claims durable LSN ", batch->durable_lsn, " beyond itself");
    return Probe::kInvalid;
  }
  if (records_bytes > header.end_lsn() - batch->records_lsn() ||
      batch->record_count > records_bytes / kRecordHeaderBytes) {
    *reason = absl::StrCat("batch of ", records_bytes, " bytes / ", batch->record_count,
                           " records does not fit its segment");
    return Probe::kInvalid;
  }
  batch->records.resize(records_bytes);
  n = (*file)->Read(header.FileOffset(batch->records_lsn()), records_bytes, batch->records.data());
  if (!n.ok()) return n.status();
  if (*n != records_bytes) {
    *reason = "segment file shorter than its header says";
    return Probe::kInvalid;
  }
  absl::Status records = ForEachRecord(batch->records_lsn(), batch->records, batch->record_count,
                                       [](Lsn, uint8_t, absl::string_view) {});
  if (!records.ok()) {
    *reason = std::string(records.message());
    return Probe::kInvalid;
  }
  return Probe::kValid;
}

absl::StatusOr<bool> LogScanner::Next(Batch* batch) {
  while (!done_) {
    const SegmentHeader& header = segments_[segment_].header;
    if (next_lsn_ >= stop_lsn_) {
      done_ = true;
      break;
    }
    if (next_lsn_ == header.end_lsn()) {  // the last batch filled the segment
      if (segment_ + 1 == segments_.size()) {
        if (follow_) return false;  // the next segment may come
        done_ = true;
        break;
      }
      files_[segment_].reset();  // done with it: a long log must not hold every file open
      next_lsn_ = segments_[++segment_].header.first_lsn;
      continue;
    }
    std::string reason;
    absl::StatusOr<Probe> probe = ReadBatch(segment_, next_lsn_, batch, &reason);
    if (!probe.ok()) return probe.status();
    if (*probe == Probe::kValid && last_batch_lsn_ != kNoLsn &&
        batch->prev_lsn != last_batch_lsn_) {
      *probe = Probe::kInvalid;
      reason = absl::StrCat("batch names LSN ", batch->prev_lsn, " as its predecessor, not ",
                            last_batch_lsn_);
    }
    if (*probe != Probe::kValid && last_batch_lsn_ != kNoLsn && segment_ + 1 < segments_.size()) {
      // The writer moves to the next segment when a record does not fit this
      // one; the next segment's first batch then names our last as its
      // predecessor.
      std::string next_reason;
      Batch next;
      const Lsn next_first = segments_[segment_ + 1].header.first_lsn;
      absl::StatusOr<Probe> continued = ReadBatch(segment_ + 1, next_first, &next, &next_reason);
      if (!continued.ok()) return continued.status();
      if (*continued == Probe::kValid && next.prev_lsn == last_batch_lsn_ &&
          next_first < stop_lsn_) {
        files_[segment_].reset();
        ++segment_;
        *probe = Probe::kValid;
        *batch = std::move(next);
      } else if (*probe == Probe::kZero && *continued == Probe::kInvalid) {
        // The damage is decided at the zeros (a later batch may claim them
        // durable); the next segment's state goes into the reason.
        reason = absl::StrCat("zeros where a batch should be; the next segment's first batch: ",
                              next_reason);
      }
    }
    if (*probe != Probe::kValid && follow_) return false;  // not written yet, or being written
    if (*probe != Probe::kValid) {
      done_ = true;
      if (absl::Status s = Finish(segment_, next_lsn_, std::move(reason)); !s.ok()) {
        return s;
      }
      return false;
    }
    last_batch_lsn_ = batch->lsn;
    next_lsn_ = AlignUp(batch->end_lsn());
    tail_.end_lsn = tail_.garbage_end_lsn = batch->end_lsn();
    return true;
  }
  return false;
}

absl::Status LogScanner::Resume(std::vector<SegmentFile> segments) {
  if (segments_.empty()) {
    segments_ = std::move(segments);
    files_.resize(segments_.size());
    done_ = segments_.empty();
    if (!done_)
      next_lsn_ = tail_.end_lsn = tail_.garbage_end_lsn = segments_.front().header.first_lsn;
    return absl::OkStatus();
  }
  const Lsn current = segments_[segment_].header.first_lsn;
  auto it = std::find_if(segments.begin(), segments.end(),
                         [&](const SegmentFile& s) { return s.header.first_lsn == current; });
  if (it == segments.end()) {
    return absl::NotFoundError(
        absl::StrCat("segment ", segments_[segment_].path, " was retired while it was being read"));
  }
  std::unique_ptr<File> file = std::move(files_[segment_]);
  segment_ = static_cast<size_t>(it - segments.begin());
  segments_ = std::move(segments);
  files_.clear();
  files_.resize(segments_.size());
  files_[segment_] = std::move(file);
  return absl::OkStatus();
}

absl::Status LogScanner::Finish(size_t segment, Lsn lsn, std::string reason) {
  tail_.damage_lsn = lsn;
  tail_.damage_segment = segments_[segment].path;
  tail_.damage_file_offset = segments_[segment].header.FileOffset(lsn);
  tail_.damage_reason = reason.empty() ? "zeros where a batch should be" : reason;
  if (absl::Status s = ScanBeyond(segment, lsn); !s.ok()) return s;
  if (tail_.claimed_by_lsn != kNoLsn) {
    tail_.kind = TailKind::kCorrupt;
  } else if (tail_.garbage_end_lsn > tail_.end_lsn) {
    tail_.kind = TailKind::kTorn;
  } else {
    tail_.kind = TailKind::kClean;
    tail_.damage_lsn = kNoLsn;
    tail_.damage_segment.clear();
    tail_.damage_file_offset = 0;
    tail_.damage_reason.clear();
  }
  return absl::OkStatus();
}

// Reads everything from `lsn` to the end of the last segment: where non-zero
// bytes end, and whether any valid batch header there claims `lsn` durable.
absl::Status LogScanner::ScanBeyond(size_t first_segment, Lsn lsn) {
  constexpr uint64_t kChunkBytes = 1 << 20;
  static_assert(kChunkBytes % kBlockBytes == 0);
  std::string chunk(kChunkBytes, '\0');
  for (size_t s = first_segment; s < segments_.size(); ++s) {
    const SegmentHeader& header = segments_[s].header;
    absl::StatusOr<File*> file = FileOf(s);
    if (!file.ok()) return file.status();
    for (Lsn at = s == first_segment ? lsn : header.first_lsn; at < header.end_lsn();) {
      const uint64_t want = std::min(kChunkBytes, header.end_lsn() - at);
      absl::StatusOr<size_t> n = (*file)->Read(header.FileOffset(at), want, chunk.data());
      if (!n.ok()) return n.status();
      for (size_t block = 0; block < *n; block += kBlockBytes) {
        const char* p = chunk.data() + block;
        const size_t len = std::min<size_t>(kBlockBytes, *n - block);
        if (AllZero(absl::string_view(p, len))) continue;
        const Lsn block_lsn = at + block;
        tail_.garbage_end_lsn = std::max(tail_.garbage_end_lsn, block_lsn + kBlockBytes);
        if (len < kBatchHeaderBytes ||
            GetFixed64(p) !=
                Checksum(block_lsn, absl::string_view(p + kBatchPrevLsnOffset,
                                                      kBatchHeaderBytes - kBatchPrevLsnOffset))) {
          continue;
        }
        const Lsn durable = GetFixed64(p + kBatchDurableLsnOffset);
        const uint32_t records_bytes = GetFixed32(p + kBatchRecordsBytesOffset);
        if (durable > block_lsn) continue;
        ++tail_.lost_batches;
        tail_.lost_records += GetFixed32(p + kBatchRecordCountOffset);
        tail_.lost_end_lsn =
            std::max(tail_.lost_end_lsn, block_lsn + kBatchHeaderBytes + records_bytes);
        if (durable > lsn && tail_.claimed_by_lsn == kNoLsn) {
          tail_.claimed_by_lsn = block_lsn;
          tail_.claimed_durable_lsn = durable;
        }
      }
      if (*n < want) break;
      at += want;
    }
    files_[s].reset();
  }
  return absl::OkStatus();
}

LogReader::LogReader(FileSystem* fs, std::vector<SegmentFile> segments, Lsn from_lsn, Lsn stop_lsn)
    : scanner_(fs, std::move(segments), from_lsn, stop_lsn), from_lsn_(from_lsn) {}

absl::StatusOr<std::unique_ptr<LogReader>> LogReader::Open(FileSystem* fs, const std::string& dir,
                                                           Lsn from_lsn, Lsn stop_lsn) {
  absl::StatusOr<std::vector<SegmentFile>> segments = ListSegments(fs, dir, nullptr);
  if (!segments.ok()) return segments.status();
  return std::unique_ptr<LogReader>(new LogReader(fs, *std::move(segments), from_lsn, stop_lsn));
}

absl::Status LogReader::Refresh(FileSystem* fs, const std::string& dir) {
  absl::StatusOr<std::vector<SegmentFile>> segments = ListSegments(fs, dir, nullptr);
  if (!segments.ok()) return segments.status();
  return scanner_.Resume(*std::move(segments));
}

absl::StatusOr<bool> LogReader::Next(LogEntry* entry) {
  while (true) {
    while (offset_ < batch_.records.size()) {
      const char* p = batch_.records.data() + offset_;
      const uint32_t length = GetFixed32(p + kRecordLengthOffset);
      entry->lsn = batch_.records_lsn() + offset_;
      entry->type = static_cast<uint8_t>(p[kRecordTypeOffset]);
      offset_ += kRecordHeaderBytes + length;
      if (entry->lsn < from_lsn_) continue;
      entry->payload.assign(p + kRecordHeaderBytes, length);
      return true;
    }
    absl::StatusOr<bool> more = scanner_.Next(&batch_);
    if (!more.ok()) return more.status();
    if (!*more) {
      batch_.records.clear();
      offset_ = 0;
      if (scanner_.tail().kind == TailKind::kCorrupt) {
        return absl::DataLossError(scanner_.tail().ToString());
      }
      return false;
    }
    ++batches_read_;
    offset_ = 0;
  }
}

}  // namespace qmgr::log
