#include "tools/qmgrd/server_log.h"

#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace qmgr::server {
namespace {

// One write(2) per line, so that lines of different threads never interleave.
void WriteLine(absl::string_view text) {
  const std::string line = absl::StrCat("qmgrd: ", text, "\n");
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
    if (n <= 0) return;  // nowhere to log: lose the line rather than the server
    done += static_cast<size_t>(n);
  }
}

bool NeedsQuotes(absl::string_view value) {
  return value.empty() || std::any_of(value.begin(), value.end(), [](char c) {
           return c == ' ' || c == '"' || c == '=' || c == '\\' ||
                  static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
         });
}

}  // namespace

void LogLine(absl::string_view text) { WriteLine(text); }

std::string EventValue(absl::string_view value) {
  if (!NeedsQuotes(value)) return std::string(value);
  std::string out = "\"";
  for (const char c : value) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          absl::StrAppend(&out, absl::StrFormat("\\x%02x", static_cast<unsigned char>(c)));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

LogEvent::LogEvent(absl::string_view event) : line_(event) {}

LogEvent::~LogEvent() { WriteLine(line_); }

LogEvent& LogEvent::Add(absl::string_view key, absl::string_view value) {
  absl::StrAppend(&line_, " ", key, "=", EventValue(value));
  return *this;
}

LogEvent& LogEvent::Add(absl::string_view key, uint64_t value) {
  absl::StrAppend(&line_, " ", key, "=", value);
  return *this;
}

LogEvent& LogEvent::Add(absl::string_view key, int64_t value) {
  absl::StrAppend(&line_, " ", key, "=", value);
  return *this;
}

LogEvent& LogEvent::Add(absl::string_view key, bool value) {
  absl::StrAppend(&line_, " ", key, "=", value ? "true" : "false");
  return *this;
}

LogEvent& LogEvent::Add(absl::string_view key, double value) {
  absl::StrAppend(&line_, " ", key, "=", absl::StrFormat("%g", value));
  return *this;
}

LogEvent& LogEvent::Add(absl::string_view key, absl::Duration value) {
  absl::StrAppend(&line_, " ", key,
                  "_ms=", absl::StrFormat("%.3f", absl::ToDoubleMilliseconds(value)));
  return *this;
}

}  // namespace qmgr::server
