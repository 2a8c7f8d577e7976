#include "log/segment.h"

#include <algorithm>
#include <charconv>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace qmgr::log {

LogId LogId::Random() {
  absl::BitGen gen;
  LogId id;
  for (auto& b : id.bytes) b = absl::Uniform<uint8_t>(gen);
  id.bytes[6] = (id.bytes[6] & 0x0f) | 0x40;  // UUID version 4
  id.bytes[8] = (id.bytes[8] & 0x3f) | 0x80;  // RFC 4122 variant
  return id;
}

std::string LogId::ToString() const {
  std::string out;
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    absl::StrAppendFormat(&out, "%02x", bytes[i]);
  }
  return out;
}

absl::StatusOr<LogId> LogId::Parse(absl::string_view text) {
  LogId id;
  size_t i = 0;
  for (size_t pos = 0; pos < text.size();) {
    if (text[pos] == '-') {
      ++pos;
      continue;
    }
    if (i == id.bytes.size() || pos + 2 > text.size()) break;
    uint8_t value = 0;
    const auto [end, ec] = std::from_chars(text.data() + pos, text.data() + pos + 2, value, 16);
    if (ec != std::errc() || end != text.data() + pos + 2) break;
    id.bytes[i++] = value;
    pos += 2;
    if (i == id.bytes.size() && pos == text.size()) return id;
  }
  return absl::InvalidArgumentError(absl::StrCat("not a log id (a UUID): '", text, "'"));
}

std::string EncodeSegmentHeader(const SegmentHeader& header) {
  std::string block(kSegmentHeaderBytes, '\0');
  char* p = block.data();
  std::memcpy(p + kSegmentMagicOffset, kSegmentMagic, sizeof(kSegmentMagic));
  PutFixed32(p + kSegmentVersionOffset, kFormatVersion);
  PutFixed32(p + kSegmentBlockBytesOffset, static_cast<uint32_t>(kBlockBytes));
  std::memcpy(p + kSegmentLogIdOffset, header.log_id.bytes.data(), kLogIdBytes);
  PutFixed64(p + kSegmentFirstLsnOffset, header.first_lsn);
  PutFixed64(p + kSegmentBytesOffset, header.segment_bytes);
  PutFixed64(p + kSegmentChecksumOffset, Checksum(0, absl::string_view(p, kSegmentChecksumOffset)));
  return block;
}

absl::StatusOr<SegmentHeader> DecodeSegmentHeader(absl::string_view block, absl::string_view path) {
  auto bad = [&](absl::string_view what) {
    return absl::DataLossError(absl::StrCat("segment ", path, ": ", what));
  };
  if (block.size() < kSegmentHeaderUsedBytes) return bad("shorter than a segment header");
  const char* p = block.data();
  if (std::memcmp(p + kSegmentMagicOffset, kSegmentMagic, sizeof(kSegmentMagic)) != 0) {
    return bad("not a qmgr log segment (bad magic)");
  }
  if (GetFixed64(p + kSegmentChecksumOffset) !=
      Checksum(0, absl::string_view(p, kSegmentChecksumOffset))) {
    return bad("segment header checksum mismatch");
  }
  if (const uint32_t version = GetFixed32(p + kSegmentVersionOffset); version != kFormatVersion) {
    return bad(absl::StrCat("format version ", version, ", this build reads ", kFormatVersion));
  }
  if (GetFixed32(p + kSegmentBlockBytesOffset) != kBlockBytes) return bad("block size mismatch");
  SegmentHeader header;
  std::memcpy(header.log_id.bytes.data(), p + kSegmentLogIdOffset, kLogIdBytes);
  header.first_lsn = GetFixed64(p + kSegmentFirstLsnOffset);
  header.segment_bytes = GetFixed64(p + kSegmentBytesOffset);
  if (header.segment_bytes < kSegmentBytesMin || header.segment_bytes > kSegmentBytesMax ||
      header.segment_bytes % kBlockBytes != 0) {
    return bad(absl::StrCat("segment size ", header.segment_bytes, " out of range"));
  }
  if (header.first_lsn % kBlockBytes != 0 || header.first_lsn > kNoLsn - header.segment_bytes) {
    return bad(absl::StrCat("first LSN ", header.first_lsn, " invalid"));
  }
  return header;
}

std::string SegmentFileName(Lsn first_lsn) {
  return absl::StrFormat("%0*u%s", kSegmentNameDigits, first_lsn, kSegmentSuffix);
}

bool ParseSegmentFileName(absl::string_view name, Lsn* first_lsn) {
  if (name.size() != kSegmentNameDigits + kSegmentSuffix.size() ||
      !absl::EndsWith(name, kSegmentSuffix)) {
    return false;
  }
  const char* end = name.data() + kSegmentNameDigits;
  const auto [ptr, ec] = std::from_chars(name.data(), end, *first_lsn);
  return ec == std::errc() && ptr == end;
}

std::string JoinPath(absl::string_view dir, absl::string_view name) {
  if (dir.empty() || dir.back() == '/') return absl::StrCat(dir, name);
  return absl::StrCat(dir, "/", name);
}

absl::StatusOr<std::vector<SegmentFile>> ListSegments(FileSystem* fs, const std::string& dir,
                                                      const LogId* expected_log_id) {
  absl::StatusOr<std::vector<std::string>> names = fs->ListDir(dir);
  if (!names.ok()) return names.status();
  std::vector<SegmentFile> segments;
  for (const std::string& name : *names) {
    Lsn first_lsn = 0;
    if (!ParseSegmentFileName(name, &first_lsn)) continue;
    SegmentFile segment{JoinPath(dir, name), {}};
    absl::StatusOr<std::unique_ptr<File>> file = fs->Open(segment.path, OpenMode::kRead);
    if (!file.ok()) return file.status();
    std::string block(kSegmentHeaderBytes, '\0');
    absl::StatusOr<size_t> n = (*file)->Read(0, block.size(), block.data());
    if (!n.ok()) return n.status();
    block.resize(*n);
    absl::StatusOr<SegmentHeader> header = DecodeSegmentHeader(block, segment.path);
    if (!header.ok()) return header.status();
    if (header->first_lsn != first_lsn) {
      return absl::DataLossError(absl::StrCat("segment ", segment.path, ": header says first LSN ",
                                              header->first_lsn, ", its name does not"));
    }
    absl::StatusOr<uint64_t> size = (*file)->Size();
    if (!size.ok()) return size.status();
    if (*size != header->segment_bytes) {
      return absl::DataLossError(absl::StrCat("segment ", segment.path, ": ", *size,
                                              " bytes, its header says ", header->segment_bytes));
    }
    segment.header = *header;
    segments.push_back(std::move(segment));
  }
  std::sort(segments.begin(), segments.end(), [](const SegmentFile& a, const SegmentFile& b) {
    return a.header.first_lsn < b.header.first_lsn;
  });
  for (size_t i = 0; i < segments.size(); ++i) {
    const SegmentFile& s = segments[i];
    const LogId& want = expected_log_id != nullptr ? *expected_log_id : segments[0].header.log_id;
    if (!(s.header.log_id == want)) {
      return absl::FailedPreconditionError(
          absl::StrCat("segment ", s.path, " belongs to log ", s.header.log_id.ToString(),
                       ", expected log ", want.ToString(), ": refusing a foreign log"));
    }
    if (i > 0 && segments[i - 1].header.end_lsn() != s.header.first_lsn) {
      return absl::DataLossError(absl::StrCat("log has a gap or overlap: ", segments[i - 1].path,
                                              " ends at LSN ", segments[i - 1].header.end_lsn(),
                                              " but the next segment ", s.path, " starts at LSN ",
                                              s.header.first_lsn));
    }
  }
  return segments;
}

absl::Status CreateSegment(FileSystem* fs, const std::string& dir, const SegmentHeader& header) {
  const std::string path = JoinPath(dir, SegmentFileName(header.first_lsn));
  const std::string tmp = absl::StrCat(path, ".tmp");
  absl::Status status = [&]() -> absl::Status {
    absl::StatusOr<std::unique_ptr<File>> file = fs->Open(tmp, OpenMode::kCreateTruncate);
    if (!file.ok()) return file.status();
    if (absl::Status s = (*file)->Write(0, EncodeSegmentHeader(header)); !s.ok()) return s;
    // Zeros written, not fallocated: overwriting written blocks needs no
    // metadata update, so a commit's fdatasync writes data only, and a full
    // disk shows up here instead of in the middle of a commit.
    constexpr uint64_t kChunkBytes = 1 << 20;
    const std::string zeros(kChunkBytes, '\0');
    for (uint64_t offset = kSegmentHeaderBytes; offset < header.segment_bytes;) {
      const uint64_t n = std::min(kChunkBytes, header.segment_bytes - offset);
      if (absl::Status s = (*file)->Write(offset, absl::string_view(zeros.data(), n)); !s.ok()) {
        return s;
      }
      offset += n;
    }
    if (absl::Status s = (*file)->Sync(); !s.ok()) return s;
    if (absl::Status s = fs->Rename(tmp, path); !s.ok()) return s;
    return fs->SyncDir(dir);
  }();
  if (!status.ok()) {
    fs->Remove(tmp).IgnoreError();  // best effort: a leftover .tmp is ignored and replaced
  }
  return status;
}

}  // namespace qmgr::log
