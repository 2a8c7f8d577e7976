// Segment files: naming, headers, listing and preallocation.
#ifndef QMGR_LOG_SEGMENT_H_
#define QMGR_LOG_SEGMENT_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "log/file.h"
#include "log/format.h"

namespace qmgr::log {

// A log's identity, written in every segment header and kept by the store, so
// that a log and a store that do not belong together are refused.
struct LogId {
  std::array<uint8_t, kLogIdBytes> bytes{};

  static LogId Random();
  // "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx".
  static absl::StatusOr<LogId> Parse(absl::string_view text);
  std::string ToString() const;
  friend bool operator==(const LogId&, const LogId&) = default;
};

struct SegmentHeader {
  LogId log_id;
  Lsn first_lsn = 0;
  uint64_t segment_bytes = 0;

  uint64_t body_bytes() const { return segment_bytes - kSegmentHeaderBytes; }
  Lsn end_lsn() const { return first_lsn + body_bytes(); }
  bool Contains(Lsn lsn) const { return lsn >= first_lsn && lsn < end_lsn(); }
  // File offset of a stream position inside this segment.
  uint64_t FileOffset(Lsn lsn) const { return kSegmentHeaderBytes + (lsn - first_lsn); }
};

// The header block (kSegmentHeaderBytes long).
std::string EncodeSegmentHeader(const SegmentHeader& header);
// Checks magic, version, block size, checksum and limits; `path` only names
// the file in errors (DataLoss for a bad header).
absl::StatusOr<SegmentHeader> DecodeSegmentHeader(absl::string_view block, absl::string_view path);

std::string SegmentFileName(Lsn first_lsn);
// The first LSN a segment file's name gives, or false when it is not one.
bool ParseSegmentFileName(absl::string_view name, Lsn* first_lsn);
std::string JoinPath(absl::string_view dir, absl::string_view name);

struct SegmentFile {
  std::string path;
  SegmentHeader header;
};

// The segments of a log directory, in LSN order, headers checked: one log id
// (and `expected_log_id` if given), each file's name matching its first LSN,
// and no gap or overlap between neighbours. Leftover "*.tmp" files are
// ignored. Any violation is DataLoss naming the file.
absl::StatusOr<std::vector<SegmentFile>> ListSegments(FileSystem* fs, const std::string& dir,
                                                      const LogId* expected_log_id);

// Creates a preallocated segment: header then zeros to segment_bytes,
// fdatasync, rename from a temporary name, fsync of the directory. A crash
// leaves either no segment or a whole one. ENOSPC is ResourceExhausted.
absl::Status CreateSegment(FileSystem* fs, const std::string& dir, const SegmentHeader& header);

}  // namespace qmgr::log

#endif  // QMGR_LOG_SEGMENT_H_
