// The system log's on-disk format: the one place that defines its bytes.
// docs/log-format.md has the same layout with a grammar, a worked example and
// the derivation of every limit. All integers are little-endian.
//
// The log is a stream of bytes addressed by LSN (the byte offset in the
// stream; never reset). The stream is cut into segment files named
// "<first LSN, 20 decimal digits>.qlog", each preallocated to segment_bytes:
//
//   segment file = segment header block | body (segment_bytes - 4096 bytes)
//   LSN of body byte i = first_lsn + i
//
// The body holds batches, one per group-commit write, each starting on a
// 4096-byte boundary of the stream so that no write ever rewrites a block that
// holds durable bytes. A batch never spans segments. The rest of a batch's
// last block is zeros.
//
// Segment header (block 0 of the file; bytes 56..4095 are zero):
//   0      8      12     16                     32         40              48         56
//   +------+------+------+----------------------+----------+---------------+----------+
//   |magic |format|block |log id (16 bytes,     |first LSN |segment bytes  |checksum  |
//   |"QMGRLOG\0"  |bytes |a UUID)               |          |(whole file)   |XXH3 [0,48)|
//   +------+------+------+----------------------+----------+---------------+----------+
//
// Batch header (32 bytes, at the batch's LSN):
//   0          8                16             24              28             32
//   +----------+----------------+--------------+---------------+--------------+
//   | checksum | prev batch LSN | durable LSN  | records bytes | record count |
//   +----------+----------------+--------------+---------------+--------------+
//   checksum     = XXH3-64 of bytes [8, 32), seeded with the batch's LSN
//   prev batch   = LSN of the batch written just before (kNoLsn for the first)
//   durable LSN  = every byte below it was durable before this batch was written
//
// Record (13-byte header + payload, packed one after another in a batch):
//   0          8        12     13
//   +----------+--------+------+----------------------+
//   | checksum | length | type | payload (length bytes) |
//   +----------+--------+------+----------------------+
//   checksum = XXH3-64 of bytes [8, 13 + length), seeded with the record's LSN
//   type     = the LogRecord.body case number (proto/qmgr/v1/log.proto)
//   payload  = a serialized qmgr.v1.LogRecord
//
// Seeding with the LSN makes the checksum cover the LSN: a stale record or
// batch left at another position never validates.
#ifndef QMGR_LOG_FORMAT_H_
#define QMGR_LOG_FORMAT_H_

#include <xxhash.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <limits>

#include "absl/strings/string_view.h"

namespace qmgr::log {

using Lsn = uint64_t;
inline constexpr Lsn kNoLsn = std::numeric_limits<Lsn>::max();

inline constexpr uint64_t kBlockBytes = 4096;
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr char kSegmentMagic[8] = {'Q', 'M', 'G', 'R', 'L', 'O', 'G', '\0'};
inline constexpr absl::string_view kSegmentSuffix = ".qlog";
inline constexpr int kSegmentNameDigits = 20;  // digits of UINT64_MAX
// Held (flock) by the process that has the log open.
inline constexpr char kLockFileName[] = "LOCK";

// Segment header.
inline constexpr uint64_t kSegmentHeaderBytes = kBlockBytes;  // a whole block
inline constexpr size_t kSegmentMagicOffset = 0;
inline constexpr size_t kSegmentVersionOffset = 8;
inline constexpr size_t kSegmentBlockBytesOffset = 12;
inline constexpr size_t kSegmentLogIdOffset = 16;
inline constexpr size_t kLogIdBytes = 16;
inline constexpr size_t kSegmentFirstLsnOffset = 32;
inline constexpr size_t kSegmentBytesOffset = 40;
inline constexpr size_t kSegmentChecksumOffset = 48;
inline constexpr size_t kSegmentHeaderUsedBytes = 56;

// Batch header.
inline constexpr size_t kBatchChecksumOffset = 0;
inline constexpr size_t kBatchPrevLsnOffset = 8;
inline constexpr size_t kBatchDurableLsnOffset = 16;
inline constexpr size_t kBatchRecordsBytesOffset = 24;
inline constexpr size_t kBatchRecordCountOffset = 28;
inline constexpr size_t kBatchHeaderBytes = 32;

// Record header.
inline constexpr size_t kRecordChecksumOffset = 0;
inline constexpr size_t kRecordLengthOffset = 8;
inline constexpr size_t kRecordTypeOffset = 12;
inline constexpr size_t kRecordHeaderBytes = 13;

// Limits (docs/log-format.md derives each).
// A record is handed to its reader whole, in memory: 16 MiB bounds one
// record (the engine's per-unit limits keep every record under it). A batch's
// size is bounded by its segment and protected by the batch header checksum.
inline constexpr uint32_t kRecordPayloadBytesMax = 16u << 20;
// A segment holds its header block and at least one block of body.
inline constexpr uint64_t kSegmentBytesMin = 2 * kBlockBytes;
// records bytes is a u32, and a batch fills at most one segment's body.
inline constexpr uint64_t kSegmentBytesMax = 1ull << 30;
inline constexpr uint64_t kSegmentBytesDefault = 64ull << 20;

static_assert(sizeof(kSegmentMagic) == 8);
static_assert(kSegmentVersionOffset == kSegmentMagicOffset + sizeof(kSegmentMagic));
static_assert(kSegmentBlockBytesOffset == kSegmentVersionOffset + sizeof(uint32_t));
static_assert(kSegmentLogIdOffset == kSegmentBlockBytesOffset + sizeof(uint32_t));
static_assert(kSegmentFirstLsnOffset == kSegmentLogIdOffset + kLogIdBytes);
static_assert(kSegmentBytesOffset == kSegmentFirstLsnOffset + sizeof(uint64_t));
static_assert(kSegmentChecksumOffset == kSegmentBytesOffset + sizeof(uint64_t));
static_assert(kSegmentHeaderUsedBytes == kSegmentChecksumOffset + sizeof(uint64_t));
static_assert(kSegmentHeaderUsedBytes <= kSegmentHeaderBytes);
static_assert(kBatchPrevLsnOffset == kBatchChecksumOffset + sizeof(uint64_t));
static_assert(kBatchDurableLsnOffset == kBatchPrevLsnOffset + sizeof(uint64_t));
static_assert(kBatchRecordsBytesOffset == kBatchDurableLsnOffset + sizeof(uint64_t));
static_assert(kBatchRecordCountOffset == kBatchRecordsBytesOffset + sizeof(uint32_t));
static_assert(kBatchHeaderBytes == kBatchRecordCountOffset + sizeof(uint32_t));
static_assert(kRecordLengthOffset == kRecordChecksumOffset + sizeof(uint64_t));
static_assert(kRecordTypeOffset == kRecordLengthOffset + sizeof(uint32_t));
static_assert(kRecordHeaderBytes == kRecordTypeOffset + sizeof(uint8_t));
static_assert((kBlockBytes & (kBlockBytes - 1)) == 0, "block size is a power of two");
static_assert(kSegmentBytesMin % kBlockBytes == 0 && kSegmentBytesMax % kBlockBytes == 0);
static_assert(kSegmentBytesMax - kSegmentHeaderBytes <= std::numeric_limits<uint32_t>::max(),
              "a batch's records bytes fits its u32 field");
static_assert(kSegmentBytesMin - kSegmentHeaderBytes >= kBatchHeaderBytes + kRecordHeaderBytes,
              "the smallest segment holds a batch with one empty record");
static_assert(kRecordPayloadBytesMax + kRecordHeaderBytes + kBatchHeaderBytes <=
                  kSegmentBytesDefault - kSegmentHeaderBytes,
              "the largest record fits a default segment");
static_assert(kSegmentNameDigits == std::numeric_limits<uint64_t>::digits10 + 1);

// The largest payload a log with this segment size can hold.
constexpr uint64_t RecordPayloadBytesMax(uint64_t segment_bytes) {
  const uint64_t body = segment_bytes - kSegmentHeaderBytes;
  const uint64_t fit = body - kBatchHeaderBytes - kRecordHeaderBytes;
  return fit < kRecordPayloadBytesMax ? fit : kRecordPayloadBytesMax;
}

constexpr uint64_t AlignUp(uint64_t n) { return (n + kBlockBytes - 1) & ~(kBlockBytes - 1); }

// The checksum of every header and record: XXH3-64, seeded as the layout says.
inline uint64_t Checksum(uint64_t seed, absl::string_view bytes) {
  return XXH3_64bits_withSeed(bytes.data(), bytes.size(), seed);
}

// Whether `bytes` are all zero, as never-written log space is. Recovery
// checks every block of the preallocated tail at each open: memcmp of the
// range against itself shifted by one byte runs vectorized, where a byte loop
// cost about 3 instructions a byte (some 190 million for a fresh log's two
// 64 MiB segments).
inline bool AllZero(absl::string_view bytes) {
  return bytes.empty() ||
         (bytes[0] == 0 && std::memcmp(bytes.data(), bytes.data() + 1, bytes.size() - 1) == 0);
}

// Little-endian fixed-width integers.
inline void PutFixed32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
inline void PutFixed64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
inline uint32_t GetFixed32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return v;
}
inline uint64_t GetFixed64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return v;
}

}  // namespace qmgr::log

#endif  // QMGR_LOG_FORMAT_H_
