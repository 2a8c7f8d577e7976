// Completes calls once the log record they answer for is durable. A few
// threads wait for the log on behalf of every pending call and run their
// completions, in LSN order, as group commits make them durable: a call that
// has done its engine work holds no thread while its fsync is pending, and a
// few wake-ups complete a whole group (docs/server.md, "Threads"). One of
// the threads waits for the log at a time; more than one thread, so that
// answering a large group (each answer is a socket write) is shared, and one
// thread waiting for a core does not hold up every answer.
#ifndef QMGR_TOOLS_QMGRD_DURABLE_COMPLETIONS_H_
#define QMGR_TOOLS_QMGRD_DURABLE_COMPLETIONS_H_

#include <map>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "qmgr/engine.h"

namespace qmgr::server {

class DurableCompletions {
 public:
  // `engine` must outlive this object. Starts `threads` (> 0) threads.
  explicit DurableCompletions(Engine* engine, int threads = 4);
  // Stop()s.
  ~DurableCompletions();
  DurableCompletions(const DurableCompletions&) = delete;
  DurableCompletions& operator=(const DurableCompletions&) = delete;

  // Runs `done(OkStatus())` once the record at `lsn` is durable, or
  // `done(failure)` when the log failed first; kNoLsn or an LSN already
  // durable: at once, on this thread. Else `done` runs on the completions
  // threads and must not block.
  void After(log::Lsn lsn, absl::AnyInvocable<void(absl::Status) &&> done);
  // Completes what is pending (the log still open), then joins the threads.
  void Stop();

 private:
  void Loop();

  Engine* const engine_;
  const size_t thread_count_;
  absl::Mutex mu_;
  std::multimap<log::Lsn, absl::AnyInvocable<void(absl::Status) &&>> pending_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool waiting_ ABSL_GUARDED_BY(mu_) = false;  // a thread waits for the log
  log::Lsn durable_ ABSL_GUARDED_BY(mu_) = 0;  // below it, all is durable
  absl::Status failure_ ABSL_GUARDED_BY(mu_);  // the log's, once it failed
  std::vector<std::thread> threads_;
};

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_DURABLE_COMPLETIONS_H_
