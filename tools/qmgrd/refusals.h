// Requests qmgrd refused: counted by RPC, status code and reason (the
// ErrorInfo reason of qmgr/status.h, "" when the refusal has none) for the
// metrics, and logged as request.refused events without flooding the log.
//
// Rate limit: per (rpc, code, reason), the first refusal is logged at once;
// later ones are logged at most once per `log_interval`, that line's
// `count` saying how many refusals of that kind came since the previous
// line (the message is the latest one's). A burst thus costs one line per
// kind per interval; the metrics count every refusal.
//
// What counts: every call or stream answered with a status other than OK
// and CANCELLED (the client's own doing), and every error answered inside a
// stream (EnqueueStream, ProgramStream). Thread-safe.
#ifndef QMGR_TOOLS_QMGRD_REFUSALS_H_
#define QMGR_TOOLS_QMGRD_REFUSALS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace grpc::experimental {
class ServerInterceptorFactoryInterface;
}

namespace qmgr::server {

class Refusals {
 public:
  explicit Refusals(absl::Duration log_interval = absl::Seconds(10))
      : log_interval_(log_interval) {}

  // `rpc`: "Service.Method" (QueueManager.Enqueue). An OK or CANCELLED
  // status is not a refusal and is ignored.
  void Record(absl::string_view rpc, const absl::Status& status);

  struct Count {
    std::string rpc;
    std::string code;    // the status code's name (RESOURCE_EXHAUSTED)
    std::string reason;  // "" when none
    uint64_t count = 0;
  };
  // Every kind refused so far, sorted by rpc, code, reason.
  std::vector<Count> Counts() const;

 private:
  using Key = std::tuple<std::string, std::string, std::string>;  // rpc, code, reason
  struct Kind {
    uint64_t count = 0;
    uint64_t unlogged = 0;  // since the last line
    absl::Time logged = absl::InfinitePast();
  };

  const absl::Duration log_interval_;
  mutable absl::Mutex mu_;
  absl::btree_map<Key, Kind> kinds_ ABSL_GUARDED_BY(mu_);
};

// A gRPC server interceptor that records every call's final status in
// `refusals` (which must outlive the server).
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> RefusalInterceptorFactory(
    Refusals* refusals);

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_REFUSALS_H_
