#include "tools/qmgrd/durable_completions.h"

#include <algorithm>
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
    // Work: answers known durable (or a failed log), or, when no thread is
    // waiting for the log, pending answers to wait for.
    auto work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_ || (!pending_.empty() &&
                           (!failure_.ok() || !waiting_ || pending_.begin()->first < durable_));
    };
    mu_.Await(absl::Condition(&work));
    if (pending_.empty()) return;  // stopping, and nothing left
    if (failure_.ok() && pending_.begin()->first >= durable_) {
      // This thread waits for the log, for the oldest: by the time it is
      // durable, the group commit that carried it has usually made many
      // others durable too. One waiter: one wake-up per commit.
      waiting_ = true;
      const log::Lsn first = pending_.begin()->first;
      mu_.Unlock();
      const absl::Status status = engine_->WaitDurable(first);
      const log::Lsn durable = engine_->DurableLsn();
      mu_.Lock();
      waiting_ = false;
      if (!status.ok()) failure_ = status;
      durable_ = std::max(durable_, durable);
    }
    // This thread's share of what is ready; other threads, woken as the
    // mutex is released, take the rest.
    auto end = failure_.ok() ? pending_.lower_bound(durable_) : pending_.end();
    const size_t share = (std::distance(pending_.begin(), end) + thread_count_ - 1) / thread_count_;
    end = pending_.begin();
    for (size_t i = 0; i < share; ++i, ++end) ready.push_back(std::move(end->second));
    pending_.erase(pending_.begin(), end);
    const absl::Status status = failure_;
    mu_.Unlock();
    for (auto& done : ready) std::move(done)(status);
    ready.clear();
    mu_.Lock();
  }
}

}  // namespace qmgr::server
