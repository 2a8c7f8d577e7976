// `qmgrctl log print|stats|verify`: offline, read-only views of a log
// directory. Each returns the process exit code (kExit*), having written its
// report to `out` and any error to `err`.
#ifndef QMGR_TOOLS_LOG_COMMANDS_H_
#define QMGR_TOOLS_LOG_COMMANDS_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "log/format.h"

namespace qmgr::tools {

// Exit codes of qmgrctl (documented in docs/qmgrctl.md).
inline constexpr int kExitOk = 0;
inline constexpr int kExitTornTail = 1;        // verify: unacknowledged bytes at the end
inline constexpr int kExitCorrupt = 2;         // damage to durable records
inline constexpr int kExitUnreadable = 3;      // no log there, foreign files, I/O errors
inline constexpr int kExitRefused = 4;         // online verbs: qmgrd answered with an error
inline constexpr int kExitUnknownMessage = 5;  // explain: nothing mentions the message
inline constexpr int kExitUsage = 64;          // bad arguments (EX_USAGE)
inline constexpr int kExitUnreachable = 69;  // online verbs: no qmgrd at --server (EX_UNAVAILABLE)

struct LogPrintOptions {
  log::Lsn from_lsn = 0;
  log::Lsn to_lsn = log::kNoLsn;  // inclusive
  std::vector<uint8_t> types;     // empty: every type
  bool json = false;
  bool full = false;  // whole bytes fields instead of abbreviated ones
  // Only records that mention one of these (each list that is not empty
  // must match): a queue, a unit of work, a session, a message id.
  std::vector<std::string> queues;
  std::vector<uint64_t> units;
  std::vector<std::string> sessions;
  std::vector<uint64_t> messages;
  // At the end of the log, wait for more (new records in the segment, new
  // segments) until SIGINT or SIGTERM; never takes the log's LOCK.
  bool follow = false;
  absl::Duration follow_poll = absl::Milliseconds(200);
};

int LogPrint(const std::string& log_dir, const LogPrintOptions& options, std::ostream& out,
             std::ostream& err);
int LogStats(const std::string& log_dir, bool json, std::ostream& out, std::ostream& err);
int LogVerify(const std::string& log_dir, bool json, std::ostream& out, std::ostream& err);

// A record type by name (ENQUEUE, syncpoint, ...) or number; 0 if unknown.
uint8_t RecordTypeByName(const std::string& name);
// The type's name as DESIGN.md spells it (ENQUEUE, SYNCPOINT, ...).
std::string RecordTypeName(uint8_t type);

}  // namespace qmgr::tools

#endif  // QMGR_TOOLS_LOG_COMMANDS_H_
