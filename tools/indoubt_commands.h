// `qmgrctl indoubt list|resolve`: units in doubt and their resolution by
// hand (Admin ListInDoubt, ResolveInDoubt; docs/in-doubt.md), the IBM MQ
// DISPLAY CONN / RESOLVE INDOUBT of this queue manager. Each returns the
// process exit code (log_commands.h), having written its report to `out`
// and any error to `err`.
#ifndef QMGR_TOOLS_INDOUBT_COMMANDS_H_
#define QMGR_TOOLS_INDOUBT_COMMANDS_H_

#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "client/client.h"

namespace qmgr::tools {

struct InDoubtListOptions {
  std::string coordinator;  // empty: every coordinator
  std::string qualifier;    // empty: every qualifier
};

struct InDoubtResolveOptions {
  std::string xid;      // bytes (ParseXidHex)
  bool commit = false;  // else backout
  std::string coordinator;
  std::string qualifier;
  std::string operator_name = "qmgrctl";  // recorded as operator:<name>
};

// An XID written in hex (2..2 * kXidBytesMax digits, any case, an optional
// 0x) as its bytes.
absl::StatusOr<std::string> ParseXidHex(const std::string& hex);

int InDoubtList(client::Client& client, const InDoubtListOptions& options, std::ostream& out,
                std::ostream& err);
int InDoubtResolve(client::Client& client, const InDoubtResolveOptions& options, std::ostream& out,
                   std::ostream& err);

}  // namespace qmgr::tools

#endif  // QMGR_TOOLS_INDOUBT_COMMANDS_H_
