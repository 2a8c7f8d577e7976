#include "tests/support/metrics_scrape.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace qmgr::testing {

absl::StatusOr<int> MetricsPort(const std::string& qmgrd_stderr) {
  const std::string kMetrics = "metrics on http://127.0.0.1:";
  const size_t at = qmgrd_stderr.find(kMetrics);
  int port = 0;
  if (at == std::string::npos) {
    return absl::NotFoundError(
        absl::StrCat("qmgrd did not say where it serves metrics:\n", qmgrd_stderr));
  }
  const std::string rest = qmgrd_stderr.substr(at + kMetrics.size());
  if (!absl::SimpleAtoi(rest.substr(0, rest.find('/')), &port)) {
    return absl::InvalidArgumentError(absl::StrCat("no port in: ", rest.substr(0, 80)));
  }
  return port;
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to metrics port ", port));
  }
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError("the request was not written whole");
  }
  std::string response;
  char buffer[8192];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof buffer)) > 0) response.append(buffer, n);
  close(fd);
  if (!absl::StartsWith(response, "HTTP/1.1 200") && !absl::StartsWith(response, "HTTP/1.0 200")) {
    return absl::FailedPreconditionError(absl::StrCat("GET ", path, ": ", response.substr(0, 200)));
  }
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

absl::StatusOr<std::map<std::string, double>> ParseSamples(const std::string& text) {
  std::map<std::string, double> samples;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::StartsWith(line, "#")) continue;
    const size_t space = line.rfind(' ');
    double value = 0;
    if (space == absl::string_view::npos || !absl::SimpleAtod(line.substr(space + 1), &value)) {
      return absl::InvalidArgumentError(absl::StrCat("not a sample: ", line));
    }
    samples[std::string(line.substr(0, space))] = value;
  }
  return samples;
}

absl::StatusOr<std::map<std::string, double>> ScrapeMetrics(int port) {
  absl::StatusOr<std::string> body = HttpGet(port, "/metrics");
  if (!body.ok()) return body.status();
  return ParseSamples(*body);
}

}  // namespace qmgr::testing
