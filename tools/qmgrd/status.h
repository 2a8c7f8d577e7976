// One snapshot of a running queue manager: what Admin Status answers
// (qmgrctl status) and what the metrics' gauges read at each scrape
// (tools/qmgrd/metrics.h), so both say the same.
#ifndef QMGR_TOOLS_QMGRD_STATUS_H_
#define QMGR_TOOLS_QMGRD_STATUS_H_

#include "qmgr/v1/qmgr.pb.h"
#include "tools/qmgrd/queue_manager.h"

namespace qmgr::server {

// Reads the restart report, the log's and the checkpointer's statistics,
// the engine's memory, units and sessions, and the data directory's disk
// (a statvfs: may touch the disk).
qmgr::v1::StatusResponse QueueManagerStatus(const QueueManagerInstance& qm);

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_STATUS_H_
