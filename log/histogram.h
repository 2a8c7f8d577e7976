// A fixed-bucket histogram of plain counts: how the modules that measure
// (the log's fsync latency and group-commit sizes, the checkpointer's
// durations) keep a distribution without depending on a metrics library.
// Whoever exports it (qmgrd's metrics) reads a copy. Not thread-safe: the
// owner guards it with the lock its other statistics already take.
#ifndef QMGR_LOG_HISTOGRAM_H_
#define QMGR_LOG_HISTOGRAM_H_

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <vector>

namespace qmgr::log {

class Histogram {
 public:
  Histogram() = default;
  // `upper_bounds` ascending; a last bucket (+Inf) takes what lies above.
  explicit Histogram(std::vector<double> upper_bounds)
      : upper_bounds_(std::move(upper_bounds)), counts_(upper_bounds_.size() + 1, 0) {
    assert(std::is_sorted(upper_bounds_.begin(), upper_bounds_.end()));
  }

  void Observe(double value) {
    const auto bucket =
        std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), value) - upper_bounds_.begin();
    ++counts_[bucket];
    ++count_;
    sum_ += value;
  }

  const std::vector<double>& upper_bounds() const { return upper_bounds_; }
  // Per bucket (not cumulative), one more than upper_bounds: the last is +Inf.
  const std::vector<uint64_t>& counts() const { return counts_; }
  uint64_t count() const { return count_; }
  double sum() const { return sum_; }

 private:
  std::vector<double> upper_bounds_;
  std::vector<uint64_t> counts_ = {0};
  uint64_t count_ = 0;
  double sum_ = 0;
};

}  // namespace qmgr::log

#endif  // QMGR_LOG_HISTOGRAM_H_
