// Time comes through this interface so tests can set it (idle timeouts,
// expiry) instead of sleeping: a test seam, not a mock.
#ifndef QMGR_QMGR_CLOCK_H_
#define QMGR_QMGR_CLOCK_H_

#include <atomic>
#include <cstdint>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace qmgr {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  int64_t NowMicros() const { return absl::ToUnixMicros(Now()); }
};

class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  static RealClock* Get() {
    static RealClock* const clock = new RealClock();
    return clock;
  }
};

// Moves only when told to.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(absl::Time start = absl::FromUnixSeconds(1700000000))
      : micros_(absl::ToUnixMicros(start)) {}
  absl::Time Now() const override { return absl::FromUnixMicros(micros_.load()); }
  void Advance(absl::Duration d) { micros_ += absl::ToInt64Microseconds(d); }

 private:
  std::atomic<int64_t> micros_;
};

}  // namespace qmgr

#endif  // QMGR_QMGR_CLOCK_H_
