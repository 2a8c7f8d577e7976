#include "tools/qmgrd/metrics.h"

#include <gperftools/malloc_extension_c.h>
#include <prometheus/exposer.h>

#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "tools/qmgrd/status.h"

// Weak: qmgrd links tcmalloc, but tests and fuzzers that link this library
// may run on another allocator, and then there are no heap figures.
#pragma weak MallocExtension_GetNumericProperty

namespace qmgr::server {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily Family(std::string name, std::string help, MetricType type) {
  MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  return family;
}

ClientMetric Labelled(std::vector<ClientMetric::Label> labels) {
  ClientMetric metric;
  metric.label = std::move(labels);
  return metric;
}

void AddValue(MetricFamily& family, double value, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric metric = Labelled(std::move(labels));
  if (family.type == MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
}

MetricFamily Single(std::string name, std::string help, MetricType type, double value,
                    std::vector<ClientMetric::Label> labels = {}) {
  MetricFamily family = Family(std::move(name), std::move(help), type);
  AddValue(family, value, std::move(labels));
  return family;
}

MetricFamily HistogramFamily(std::string name, std::string help, const log::Histogram& h) {
  MetricFamily family = Family(std::move(name), std::move(help), MetricType::Histogram);
  ClientMetric metric;
  metric.histogram.sample_count = h.count();
  metric.histogram.sample_sum = h.sum();
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.counts().size(); ++i) {
    cumulative += h.counts()[i];
    metric.histogram.bucket.push_back({cumulative, i < h.upper_bounds().size()
                                                       ? h.upper_bounds()[i]
                                                       : std::numeric_limits<double>::infinity()});
  }
  family.metric.push_back(std::move(metric));
  return family;
}

// Per queue and class: one family per ClassTraffic field, classes that
// never saw a message left out.
void AddTraffic(const EngineTraffic& traffic, std::vector<MetricFamily>& out) {
  struct Field {
    const char* name;
    const char* help;
    uint64_t ClassTraffic::*count;
  };
  static constexpr Field kFields[] = {
      {"qmgr_enqueues_total",
       "Messages put on the queue: by Enqueue, or inserted by a unit that committed",
       &ClassTraffic::enqueued},
      {"qmgr_gets_total", "Messages taken off the queue: by a unit's Get, or sent to a session",
       &ClassTraffic::got},
      {"qmgr_commits_total",
       "Messages consumed for good: by a unit's commit, or a session's positive acknowledgement",
       &ClassTraffic::committed},
      {"qmgr_backouts_total",
       "Messages returned by a backout or a session's negative acknowledgement",
       &ClassTraffic::backed_out},
  };
  for (const Field& field : kFields) {
    MetricFamily family = Family(field.name, field.help, MetricType::Counter);
    for (const QueueTraffic& queue : traffic.queues) {
      for (size_t c = 1; c < kMessageClassSlots; ++c) {
        const ClassTraffic& t = queue.by_class[c];
        if (t.enqueued + t.got + t.committed + t.backed_out == 0) continue;
        AddValue(family, static_cast<double>(t.*field.count),
                 {{"queue", queue.name},
                  {"class", qmgr::v1::MessageClass_Name(static_cast<qmgr::v1::MessageClass>(c))}});
      }
    }
    out.push_back(std::move(family));
  }
  MetricFamily depth =
      Family("qmgr_queue_depth", "Messages visible on the queue", MetricType::Gauge);
  MetricFamily taken =
      Family("qmgr_queue_taken", "Messages of the queue held by open units", MetricType::Gauge);
  for (const QueueTraffic& queue : traffic.queues) {
    AddValue(depth, static_cast<double>(queue.depth), {{"queue", queue.name}});
    AddValue(taken, static_cast<double>(queue.taken), {{"queue", queue.name}});
  }
  out.push_back(std::move(depth));
  out.push_back(std::move(taken));
  out.push_back(Single("qmgr_units_committed_total", "Units of work committed", MetricType::Counter,
                       static_cast<double>(traffic.units_committed)));
  out.push_back(Single("qmgr_units_backed_out_total", "Units of work holding messages backed out",
                       MetricType::Counter, static_cast<double>(traffic.units_backed_out)));
}

void AddLog(const log::LogStats& s, std::vector<MetricFamily>& out) {
  out.push_back(Single("qmgr_log_fsyncs_total", "fdatasyncs of the system log's group commits",
                       MetricType::Counter, static_cast<double>(s.commit_syncs)));
  out.push_back(HistogramFamily("qmgr_log_fsync_seconds",
                                "Duration of each fdatasync of a group commit", s.sync_seconds));
  out.push_back(HistogramFamily("qmgr_log_group_commit_records",
                                "Records made durable by each group commit", s.commit_records));
  out.push_back(Single("qmgr_log_written_bytes_total",
                       "Bytes written to the system log (batches, headers included)",
                       MetricType::Counter, static_cast<double>(s.written_bytes)));
  out.push_back(Single("qmgr_log_appended_records_total", "Records appended to the system log",
                       MetricType::Counter, static_cast<double>(s.appends)));
  out.push_back(Single("qmgr_log_segments", "Segment files of the system log", MetricType::Gauge,
                       static_cast<double>(s.segments)));
}

void AddStatus(const qmgr::v1::StatusResponse& s, const checkpoint::CheckpointStats& cp,
               std::vector<MetricFamily>& out) {
  out.push_back(Single("qmgr_log_bytes_since_checkpoint",
                       "Log bytes an emergency restart would replay now", MetricType::Gauge,
                       static_cast<double>(s.log().bytes_since_checkpoint())));
  out.push_back(Single("qmgr_checkpoints_total", "Checkpoints completed", MetricType::Counter,
                       static_cast<double>(cp.taken)));
  out.push_back(Single("qmgr_checkpoint_failures_total", "Checkpoints that failed",
                       MetricType::Counter, static_cast<double>(cp.failed)));
  out.push_back(HistogramFamily("qmgr_checkpoint_duration_seconds",
                                "Duration of each completed checkpoint", cp.seconds));
  if (s.checkpoint().written_time_us() > 0) {
    out.push_back(Single("qmgr_checkpoint_age_seconds", "Time since the last checkpoint",
                         MetricType::Gauge, s.checkpoint().age_ms() / 1e3));
  }
  out.push_back(Single("qmgr_restart_estimate_seconds",
                       "Emergency-restart estimate: log since the checkpoint over the replay rate",
                       MetricType::Gauge, s.checkpoint().estimated_restart_seconds()));
  out.push_back(Single("qmgr_restart_duration_seconds",
                       "How long this qmgrd's restart took, by its mode", MetricType::Gauge,
                       s.restart().elapsed_us() / 1e6, {{"mode", s.restart().mode()}}));
  out.push_back(Single("qmgr_restart_records_redone", "Log records this qmgrd's restart redid",
                       MetricType::Gauge, static_cast<double>(s.restart().records_redone())));
  out.push_back(Single("qmgr_restart_units_backed_out",
                       "Units of work this qmgrd's restart backed out", MetricType::Gauge,
                       static_cast<double>(s.restart().units_backed_out())));
  out.push_back(Single("qmgr_units_in_doubt", "Units of work prepared and waiting for an outcome",
                       MetricType::Gauge, static_cast<double>(s.units_in_doubt())));
  out.push_back(Single("qmgr_open_units", "Units of work open (in doubt included)",
                       MetricType::Gauge, static_cast<double>(s.open_units())));
  out.push_back(Single("qmgr_sessions_resync_required",
                       "Sessions that need STSN before data traffic", MetricType::Gauge,
                       static_cast<double>(s.sessions_resync_required())));
  const qmgr::v1::MemoryInfo& m = s.memory();
  out.push_back(Single("qmgr_memory_payload_bytes", "Payload bytes held in memory",
                       MetricType::Gauge, static_cast<double>(m.payload_bytes_in_memory())));
  out.push_back(Single("qmgr_memory_budget_bytes", "The memory budget (0: none)", MetricType::Gauge,
                       static_cast<double>(m.budget_bytes())));
  out.push_back(Single("qmgr_spilled_messages", "Messages whose payload is in the spill store",
                       MetricType::Gauge, static_cast<double>(m.spilled_messages())));
  out.push_back(Single("qmgr_spilled_bytes", "Payload bytes in the spill store", MetricType::Gauge,
                       static_cast<double>(m.spilled_bytes())));
  out.push_back(Single("qmgr_disk_free_bytes", "Bytes free for qmgrd on the data directory's disk",
                       MetricType::Gauge, static_cast<double>(s.disk().free_bytes())));
}

void AddRefusals(const Refusals& refusals, std::vector<MetricFamily>& out) {
  MetricFamily family = Family("qmgr_requests_refused_total",
                               "Requests answered with an error, by RPC, status code and reason",
                               MetricType::Counter);
  for (const Refusals::Count& c : refusals.Counts()) {
    AddValue(family, static_cast<double>(c.count),
             {{"rpc", c.rpc}, {"code", c.code}, {"reason", c.reason}});
  }
  out.push_back(std::move(family));
}

// tcmalloc's own accounts: RSS alone cannot tell a leak from the pages the
// allocator keeps in its caches after a burst.
void AddHeap(std::vector<MetricFamily>& out) {
  if (MallocExtension_GetNumericProperty == nullptr) return;
  static constexpr struct {
    const char* property;
    const char* name;
    const char* help;
  } kHeap[] = {
      {"generic.current_allocated_bytes", "qmgr_heap_allocated_bytes",
       "Bytes the program has allocated and not yet freed (tcmalloc)"},
      {"tcmalloc.current_total_thread_cache_bytes", "qmgr_heap_thread_cache_bytes",
       "Freed bytes tcmalloc keeps in its per-thread caches"},
      {"tcmalloc.central_cache_free_bytes", "qmgr_heap_central_cache_bytes",
       "Freed bytes tcmalloc keeps in its central cache"},
      {"tcmalloc.pageheap_free_bytes", "qmgr_heap_page_free_bytes",
       "Free bytes in tcmalloc's page heap, still mapped"},
  };
  for (const auto& heap : kHeap) {
    size_t value = 0;
    if (MallocExtension_GetNumericProperty(heap.property, &value) == 0) continue;
    out.push_back(Single(heap.name, heap.help, MetricType::Gauge, static_cast<double>(value)));
  }
}

}  // namespace

std::vector<MetricFamily> QueueManagerCollector::Collect() const {
  std::vector<MetricFamily> out;
  AddTraffic(qm_->engine()->Traffic(), out);
  AddLog(qm_->log()->stats(), out);
  AddStatus(QueueManagerStatus(*qm_), qm_->checkpointer()->stats(), out);
  if (refusals_ != nullptr) AddRefusals(*refusals_, out);
  AddHeap(out);
  return out;
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& address,
                                                                    const QueueManagerInstance* qm,
                                                                    const Refusals* refusals) {
  auto server = std::unique_ptr<MetricsServer>(new MetricsServer());
  server->collector_ = std::make_shared<QueueManagerCollector>(qm, refusals);
  // prometheus-cpp (civetweb) reports a failure to listen by throwing.
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/1);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, ": ", e.what()));
  }
  server->exposer_->RegisterCollectable(server->collector_);
  const std::vector<int> ports = server->exposer_->GetListeningPorts();
  if (ports.empty()) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address));
  }
  server->port_ = ports.front();
  return server;
}

MetricsServer::~MetricsServer() = default;

}  // namespace qmgr::server
