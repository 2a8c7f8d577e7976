// `qmgrctl status`: what a running qmgrd says of itself (Admin Status): the
// last restart's mode and summary, the log's size and segments, the
// checkpoint's age, the live emergency-restart estimate, memory against its
// budget, and the data directory's free disk. Returns the process exit code
// (log_commands.h), its report on `out` (a table, or with `json` one
// qmgr.v1.StatusResponse in proto3 JSON with every field), errors on `err`.
#ifndef QMGR_TOOLS_STATUS_COMMAND_H_
#define QMGR_TOOLS_STATUS_COMMAND_H_

#include <ostream>

#include "client/client.h"

namespace qmgr::tools {

int Status(client::Client& client, bool json, std::ostream& out, std::ostream& err);

}  // namespace qmgr::tools

#endif  // QMGR_TOOLS_STATUS_COMMAND_H_
