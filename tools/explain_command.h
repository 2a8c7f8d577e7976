// `qmgrctl explain MSGID`: the life of one message, told from the system log
// and the checkpoint store, both read read-only (so it works beside a running
// qmgrd and after it stopped), and whether a restart now would bring it back.
//
// The log holds the records since the oldest segment not yet retired; the
// store holds the state as of its checkpoint's redo LSN. The story is the
// log's records in order, with the checkpoint's image of the message placed
// at its redo LSN: where the two differ the checkpoint holds (it reflects
// what the log no longer shows, such as retired records or a cold start).
#ifndef QMGR_TOOLS_EXPLAIN_COMMAND_H_
#define QMGR_TOOLS_EXPLAIN_COMMAND_H_

#include <cstdint>
#include <ostream>
#include <string>

#include "absl/status/statusor.h"

namespace qmgr::tools {

struct ExplainOptions {
  std::string log_dir;
  std::string store_dir;  // <data>/store; a missing store means no checkpoint yet
  uint64_t message_id = 0;
  bool json = false;
};

// A message id as given on the command line: a whole number from 1.
absl::StatusOr<uint64_t> ParseMessageId(const std::string& text);

// Returns the exit code: kExitOk, kExitUnknownMessage when nothing mentions
// the message, kExitUnreadable / kExitCorrupt when the log or store cannot be
// read.
int Explain(const ExplainOptions& options, std::ostream& out, std::ostream& err);

}  // namespace qmgr::tools

#endif  // QMGR_TOOLS_EXPLAIN_COMMAND_H_
