// How a client proves who it is to qmgrd (docs/security.md): TLS with the
// server verified against a CA, optionally a client certificate (mTLS: its
// subject CN is the identity), and a token sent on every call as
// `authorization: Bearer TOKEN`. All empty: a plaintext channel with no
// identity, which only a loopback qmgrd without protection accepts.
#ifndef QMGR_CLIENT_CREDENTIALS_H_
#define QMGR_CLIENT_CREDENTIALS_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace qmgr::client {

struct Credentials {
  // PEM file of the CA that signed the server's certificate: turns TLS on.
  std::string tls_ca_file;
  // PEM files of this client's certificate and key (mTLS); need tls_ca_file.
  std::string tls_cert_file;
  std::string tls_key_file;
  // The name checked in the server's certificate when it is not the
  // target's host (e.g. a unix: target, or an address the certificate does
  // not name).
  std::string tls_server_name;
  // Sent on every call; empty: none.
  std::string token;
};

// The channel credentials (reading the PEM files), or INVALID_ARGUMENT.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFor(
    const Credentials& credentials);
// What the channel needs beyond its credentials (the server name override).
void AddChannelArguments(const Credentials& credentials, grpc::ChannelArguments* args);
// The token on one call.
void AddCallCredentials(const Credentials& credentials, grpc::ClientContext* context);
// A channel to `target` with `credentials` and `args` (extended here).
absl::StatusOr<std::shared_ptr<grpc::Channel>> NewChannel(const std::string& target,
                                                          const Credentials& credentials,
                                                          grpc::ChannelArguments args);

}  // namespace qmgr::client

#endif  // QMGR_CLIENT_CREDENTIALS_H_
