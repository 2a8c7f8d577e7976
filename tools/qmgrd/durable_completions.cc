#include "tools/qmgrd/durable_completions.h"

#include <iterator>
#include <utility>
#include <vector>

namespace qmgr::server {

DurableCompletions::DurableCompletions(Engine* engine, int threads)
    : engine_(engine), thread_count_(threads) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
}

DurableCompletions::~DurableCompletions() { Stop(); }

void DurableCompletions::After(log::Lsn lsn, absl::AnyInvocable<void(absl::Status) &&> done) {
  // Nothing to wait for, or already durable (an unlogged message's id
  // reservation, long on disk): no hand-off to the thread.
  if (lsn == log::kNoLsn || engine_->DurableLsn() > lsn) {
    std::move(done)(absl::OkStatus());
    return;
  }
  absl::MutexLock lock(&mu_);
  pending_.emplace(lsn, std::move(done));
}

void DurableCompletions::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

void DurableCompletions::Loop() {
  std::vector<absl::AnyInvocable<void(absl::Status) &&>> ready;
  absl::MutexLock lock(&mu_);
  while (true) {
    auto work = [this]()
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !pending_.empty(); };
    mu_.Await(absl::Condition(&work));
    if (pending_.empty()) return;  // stopping, and nothing left
    // The oldest first: by the time it is durable, the group commit that
    // carried it has usually made many others durable too.
    const log::Lsn first = pending_.begin()->first;
    mu_.Unlock();
    const absl::Status status = engine_->WaitDurable(first);
    const log::Lsn durable = engine_->DurableLsn();
    mu_.Lock();
    // This thread's share of what is ready; the other threads, woken by the
    // same commit, take the rest.
    auto end = status.ok() ? pending_.lower_bound(durable) : pending_.end();
    const size_t share = (std::distance(pending_.begin(), end) + thread_count_ - 1) / thread_count_;
    end = pending_.begin();
    for (size_t i = 0; i < share; ++i, ++end) ready.push_back(std::move(end->second));
    pending_.erase(pending_.begin(), end);
    mu_.Unlock();
    for (auto& done : ready) std::move(done)(status);
    ready.clear();
    mu_.Lock();
  }
}

}  // namespace qmgr::server
