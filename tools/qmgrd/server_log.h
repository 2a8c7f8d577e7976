// qmgrd's one logging path: lines on stderr, each written with one write
// (the checkpointer's and gRPC's threads log too), each beginning "qmgrd: ".
//
// Two kinds of line (docs/observability.md lists the events and fields):
//  - text for people (startup, shutdown, the restart summary), and
//  - events for programs: a stable event name first, then key=value fields,
//      qmgrd: checkpoint.done number=12 trigger=log-bytes redo_lsn=81920 took_ms=4.210
//    Values with spaces, quotes, '=' or control characters are written in
//    double quotes with C escapes; an empty value is "".
#ifndef QMGR_TOOLS_QMGRD_SERVER_LOG_H_
#define QMGR_TOOLS_QMGRD_SERVER_LOG_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace qmgr::server {

// A line of text.
void LogLine(absl::string_view text);

// One event line, built field by field and written when destroyed:
//   LogEvent("restart.phase").Add("phase", "redo").Add("took", took);
class LogEvent {
 public:
  explicit LogEvent(absl::string_view event);
  ~LogEvent();
  LogEvent(const LogEvent&) = delete;
  LogEvent& operator=(const LogEvent&) = delete;

  LogEvent& Add(absl::string_view key, absl::string_view value);
  LogEvent& Add(absl::string_view key, const char* value) {
    return Add(key, absl::string_view(value));
  }
  LogEvent& Add(absl::string_view key, const std::string& value) {
    return Add(key, absl::string_view(value));
  }
  LogEvent& Add(absl::string_view key, uint64_t value);
  LogEvent& Add(absl::string_view key, int64_t value);
  LogEvent& Add(absl::string_view key, int value) { return Add(key, int64_t{value}); }
  LogEvent& Add(absl::string_view key, bool value);
  LogEvent& Add(absl::string_view key, double value);
  // Written as KEY_ms with microsecond precision.
  LogEvent& Add(absl::string_view key, absl::Duration value);

  // The line (without "qmgrd: " and the newline), for tests.
  const std::string& text() const { return line_; }

 private:
  std::string line_;
};

// `value` as an event field value (quoted when it must be).
std::string EventValue(absl::string_view value);

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_SERVER_LOG_H_
