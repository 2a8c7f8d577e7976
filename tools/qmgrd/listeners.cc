#include "tools/qmgrd/listeners.h"

#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace qmgr::server {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, " ", path));
  std::stringstream contents;
  contents << in.rdbuf();
  if (contents.str().find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, " is not PEM"));
  }
  return contents.str();
}

absl::string_view HostOf(absl::string_view address) {
  if (absl::StartsWith(address, "[")) {
    const size_t end = address.find(']');
    return end == absl::string_view::npos ? address : address.substr(1, end - 1);
  }
  const size_t colon = address.rfind(':');
  return colon == absl::string_view::npos ? address : address.substr(0, colon);
}

bool Tls(const ListenerOptions& o) { return !o.tls_cert_file.empty(); }

}  // namespace

bool IsUnixSocket(absl::string_view address) { return absl::StartsWith(address, "unix:"); }

std::string UnixSocketPath(absl::string_view address) {
  absl::string_view path = address.substr(5);
  if (absl::StartsWith(path, "//")) path.remove_prefix(2);
  return std::string(path);
}

bool IsLocalOnly(absl::string_view address) {
  if (IsUnixSocket(address)) return true;
  const absl::string_view host = HostOf(address);
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

absl::StatusOr<std::vector<std::string>> CheckListeners(const ListenerOptions& o) {
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!o.tls_client_ca_file.empty() && !Tls(o)) {
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
  }
  if (o.tls_require_client_cert && o.tls_client_ca_file.empty()) {
    return absl::InvalidArgumentError("--tls-require-client-cert needs --tls-client-ca");
  }
  if (o.admin_on_main && o.admin_listen.empty()) {
    return absl::InvalidArgumentError("--admin-on-main needs --admin-listen");
  }
  const bool protected_ = Tls(o) || !o.token_file.empty();
  std::vector<std::string> warnings;
  for (const std::string* address : {&o.listen_address, &o.admin_listen}) {
    if (address->empty() || IsLocalOnly(*address) || protected_) continue;
    if (!o.insecure) {
      return absl::InvalidArgumentError(absl::StrCat(
          "refusing to listen on ", *address,
          " without TLS or tokens: anyone who reaches it could bind sessions, take units and shut "
          "the queue manager down. Give --tls-cert/--tls-key or --token-file, listen on "
          "127.0.0.1, or pass --insecure"));
    }
    warnings.push_back(absl::StrCat("WARNING: --insecure: ", *address,
                                    " is served without TLS or tokens: every caller is trusted"));
  }
  if (!protected_ && IsLocalOnly(o.listen_address)) {
    warnings.push_back(
        "WARNING: unprotected: no TLS and no tokens, every local process is trusted (loopback "
        "only; see docs/security.md)");
  }
  if (!o.token_file.empty() && !Tls(o) && !IsLocalOnly(o.listen_address)) {
    warnings.push_back(absl::StrCat("WARNING: tokens travel unencrypted to ", o.listen_address,
                                    " (no --tls-cert)"));
  }
  if (o.authz_file.empty()) {
    warnings.push_back(
        protected_ ? "WARNING: no --authz-file: every authenticated caller may do everything"
                   : "WARNING: no --authz-file: every caller may do everything");
  }
  return warnings;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MainCredentials(const ListenerOptions& o) {
  if (!Tls(o)) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  absl::StatusOr<std::string> cert = ReadPem(o.tls_cert_file, "--tls-cert");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPem(o.tls_key_file, "--tls-key");
  if (!key.ok()) return key.status();
  pair.cert_chain = *std::move(cert);
  pair.private_key = *std::move(key);
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (o.tls_client_ca_file.empty()) {
    ssl.client_certificate_request = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  } else {
    absl::StatusOr<std::string> ca = ReadPem(o.tls_client_ca_file, "--tls-client-ca");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
    ssl.client_certificate_request =
        o.tls_require_client_cert ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                  : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> AdminCredentials(
    const ListenerOptions& o) {
  if (IsUnixSocket(o.admin_listen)) return grpc::InsecureServerCredentials();
  return MainCredentials(o);
}

void ApplyConnectionLimits(const ListenerOptions& o, grpc::ServerBuilder* builder) {
  builder->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, o.connection_streams_max);
  if (o.stream_lookahead_bytes > 0) {
    builder->AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, o.stream_lookahead_bytes);
  }
}

}  // namespace qmgr::server
