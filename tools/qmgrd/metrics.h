// qmgrd's Prometheus endpoint (--metrics-listen; docs/observability.md
// lists every metric). The engine, the log and the checkpointer only keep
// plain counters under the locks they already take (Engine::Traffic,
// LogStats, CheckpointStats) and know nothing of Prometheus; at each scrape
// QueueManagerCollector reads them and builds the metric families, so the
// hot path pays nothing for metrics nobody scrapes.
#ifndef QMGR_TOOLS_QMGRD_METRICS_H_
#define QMGR_TOOLS_QMGRD_METRICS_H_

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tools/qmgrd/queue_manager.h"
#include "tools/qmgrd/refusals.h"

namespace prometheus {
class Exposer;
}

namespace qmgr::server {

class QueueManagerCollector final : public prometheus::Collectable {
 public:
  // Both must outlive the collector's last Collect.
  QueueManagerCollector(const QueueManagerInstance* qm, const Refusals* refusals)
      : qm_(qm), refusals_(refusals) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const QueueManagerInstance* const qm_;
  const Refusals* const refusals_;
};

// The HTTP server of the endpoint (prometheus-cpp's Exposer) serving
// GET /metrics. Destroy it before the queue manager closes: a scrape reads
// the engine.
class MetricsServer {
 public:
  // Listens on `address` (HOST:PORT; port 0: any). UNAVAILABLE when it
  // cannot.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& address,
                                                              const QueueManagerInstance* qm,
                                                              const Refusals* refusals);
  ~MetricsServer();
  int port() const { return port_; }

 private:
  MetricsServer() = default;
  std::shared_ptr<QueueManagerCollector> collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_METRICS_H_
