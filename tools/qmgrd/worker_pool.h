// A fixed set of threads running tasks from a bounded queue. qmgrd runs the
// engine calls that may block (durability waits, Gets that wait for a
// message) here, never on gRPC's callback threads (docs/server.md,
// "Threads").
#ifndef QMGR_TOOLS_QMGRD_WORKER_POOL_H_
#define QMGR_TOOLS_QMGRD_WORKER_POOL_H_

#include <cstddef>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace qmgr::server {

class WorkerPool {
 public:
  // REQUIRES: threads > 0, queue_max > 0.
  WorkerPool(int threads, size_t queue_max);
  // Stop()s.
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues `task`; false (and `task` dropped unrun) when queue_max tasks are
  // already waiting for a thread, or after Stop.
  bool Submit(absl::AnyInvocable<void()> task);
  // Refuses further tasks, runs the queued ones, joins the threads.
  void Stop();

 private:
  void Loop();
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t queue_max_;
  mutable absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_WORKER_POOL_H_
