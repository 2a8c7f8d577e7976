// Fuzz target for the log reader: arbitrary bytes as the bodies of two
// segments with valid headers. The reader must end (clean, torn or corrupt)
// without crashing, hanging or allocating beyond its bounds, and Log::Open
// must agree with it.
#include <cstddef>
#include <cstdint>
#include <string>

#include "log/log.h"
#include "log/reader.h"
#include "tests/support/fault_file_system.h"

namespace {

constexpr uint64_t kSegmentBytes = 4 * qmgr::log::kBlockBytes;
constexpr uint64_t kBodyBytes = kSegmentBytes - qmgr::log::kSegmentHeaderBytes;

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qmgr::log;
  qmgr::testing::FaultFileSystem fs;
  Check(fs.CreateDir("/log").ok());
  const LogId id = LogId::Random();
  const std::string input(reinterpret_cast<const char*>(data), size);
  for (uint64_t s = 0; s < 2; ++s) {
    const SegmentHeader header{id, s * kBodyBytes, kSegmentBytes};
    std::string file = EncodeSegmentHeader(header);
    if (input.size() > s * kBodyBytes) file += input.substr(s * kBodyBytes, kBodyBytes);
    file.resize(kSegmentBytes, '\0');
    Check(fs.WriteWholeFileDurably("/log/" + SegmentFileName(header.first_lsn), file).ok());
  }
  absl::StatusOr<std::unique_ptr<LogReader>> reader = LogReader::Open(&fs, "/log");
  Check(reader.ok());
  LogEntry entry;
  Lsn last = 0;
  uint64_t records = 0;
  while (true) {
    absl::StatusOr<bool> more = (*reader)->Next(&entry);
    if (!more.ok()) {
      Check(more.status().code() == absl::StatusCode::kDataLoss);
      break;
    }
    if (!*more) break;
    Check(records == 0 || entry.lsn > last);
    Check(entry.payload.size() <= kRecordPayloadBytesMax);
    last = entry.lsn;
    ++records;
  }
  const LogTail tail = (*reader)->tail();
  Check(tail.end_lsn <= 2 * kBodyBytes);
  LogOptions options;
  options.segment_bytes = kSegmentBytes;
  options.segments_ahead = 0;
  absl::StatusOr<std::unique_ptr<Log>> log = Log::Open(&fs, "/log", options);
  if (tail.kind == TailKind::kCorrupt) {
    Check(!log.ok() && log.status().code() == absl::StatusCode::kDataLoss);
  } else {
    Check(log.ok());
    Check((*log)->open_report().end_lsn == tail.end_lsn);
  }
  return 0;
}
