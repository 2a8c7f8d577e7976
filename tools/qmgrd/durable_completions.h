// Completes calls once the log record they answer for is durable. One
// thread waits for the log on behalf of every pending call and runs their
// completions, in LSN order, as group commits make them durable: a call that
// has done its engine work holds no thread while its fsync is pending, and
// one wake-up completes a whole group (docs/server.md, "Threads").
#ifndef QMGR_TOOLS_QMGRD_DURABLE_COMPLETIONS_H_
#define QMGR_TOOLS_QMGRD_DURABLE_COMPLETIONS_H_

#include <map>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "qmgr/engine.h"

namespace qmgr::server {

class DurableCompletions {
 public:
  // `engine` must outlive this object. Starts the thread.
  explicit DurableCompletions(Engine* engine);
  // Stop()s.
  ~DurableCompletions();
  DurableCompletions(const DurableCompletions&) = delete;
  DurableCompletions& operator=(const DurableCompletions&) = delete;

  // Runs `done(OkStatus())` once the record at `lsn` is durable, or
  // `done(failure)` when the log failed first; kNoLsn or an LSN already
  // durable: at once, on this thread. Else `done` runs on the completions
  // thread and must not block.
  void After(log::Lsn lsn, absl::AnyInvocable<void(absl::Status) &&> done);
  // Completes what is pending (the log still open), then joins the thread.
  void Stop();

 private:
  void Loop();

  Engine* const engine_;
  absl::Mutex mu_;
  std::multimap<log::Lsn, absl::AnyInvocable<void(absl::Status) &&>> pending_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_DURABLE_COMPLETIONS_H_
