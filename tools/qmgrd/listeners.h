// qmgrd's listeners and what protects them (docs/security.md): TLS server
// credentials (optionally verifying client certificates), the rule that a
// listener beyond loopback needs TLS or tokens (unless --insecure), the
// warnings printed at start, and the per-connection limits.
#ifndef QMGR_TOOLS_QMGRD_LISTENERS_H_
#define QMGR_TOOLS_QMGRD_LISTENERS_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace qmgr::server {

struct ListenerOptions {
  std::string listen_address = "127.0.0.1:7430";
  // Admin's own listener ("unix:/path" or HOST:PORT); empty: none.
  std::string admin_listen;
  // With admin_listen: the main listener serves Admin too.
  bool admin_on_main = false;
  // PEM files. Cert and key together turn TLS on; the client CA makes the
  // server ask for (and verify) client certificates.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  bool tls_require_client_cert = false;
  std::string token_file;
  std::string authz_file;
  // Listen beyond loopback without TLS or tokens.
  bool insecure = false;
  // Per connection: streams (calls) in progress at once, and the HTTP/2
  // bytes a stream may have read ahead of its reader (0: gRPC's default).
  int connection_streams_max = 256;
  int stream_lookahead_bytes = 0;
};

// Whether `address` is reachable only from this host: a loopback address
// (127.0.0.0/8, ::1, localhost) or a Unix socket.
bool IsLocalOnly(absl::string_view address);
bool IsUnixSocket(absl::string_view address);
// The socket file of a "unix:" address.
std::string UnixSocketPath(absl::string_view address);

// INVALID_ARGUMENT for options that contradict each other or expose an
// unprotected listener beyond loopback; otherwise the warnings to print.
absl::StatusOr<std::vector<std::string>> CheckListeners(const ListenerOptions& options);

// The main listener's credentials (TLS when configured), reading the PEM
// files.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MainCredentials(
    const ListenerOptions& options);
// The admin listener's: none on a Unix socket (its file mode protects it),
// else the main listener's.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> AdminCredentials(
    const ListenerOptions& options);

// The per-connection limits, as channel arguments.
void ApplyConnectionLimits(const ListenerOptions& options, grpc::ServerBuilder* builder);

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_LISTENERS_H_
