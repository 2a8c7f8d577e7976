#include "tools/qmgrd/worker_pool.h"

#include <cassert>
#include <utility>

namespace qmgr::server {

WorkerPool::WorkerPool(int threads, size_t queue_max) : queue_max_(queue_max) {
  assert(threads > 0 && queue_max > 0);
  threads_.reserve(threads);
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
}

WorkerPool::~WorkerPool() { Stop(); }

bool WorkerPool::Submit(absl::AnyInvocable<void()> task) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || queue_.size() >= queue_max_) return false;
  queue_.push_back(std::move(task));
  return true;
}

void WorkerPool::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

bool WorkerPool::HasWorkOrStopping() const { return stopping_ || !queue_.empty(); }

void WorkerPool::Loop() {
  while (true) {
    absl::AnyInvocable<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &WorkerPool::HasWorkOrStopping));
      if (queue_.empty()) return;  // stopping, and nothing left to run
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

}  // namespace qmgr::server
