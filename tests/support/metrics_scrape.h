// A scrape of qmgrd's Prometheus endpoint (--metrics-listen) from a test: a
// plain HTTP/1.0 GET on a socket, and the text format's samples parsed.
#ifndef QMGR_TESTS_SUPPORT_METRICS_SCRAPE_H_
#define QMGR_TESTS_SUPPORT_METRICS_SCRAPE_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace qmgr::testing {

// The port qmgrd says (on stderr) that it serves metrics on.
absl::StatusOr<int> MetricsPort(const std::string& qmgrd_stderr);

// The body of GET http://127.0.0.1:port/path; an error unless the answer is 200.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

// Prometheus text format: sample (name with its labels, as written) -> value.
absl::StatusOr<std::map<std::string, double>> ParseSamples(const std::string& text);

// GET /metrics, parsed.
absl::StatusOr<std::map<std::string, double>> ScrapeMetrics(int port);

}  // namespace qmgr::testing

#endif  // QMGR_TESTS_SUPPORT_METRICS_SCRAPE_H_
