#include "client/credentials.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace qmgr::client {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read the ", what, " ", path));
  std::stringstream contents;
  contents << in.rdbuf();
  if (contents.str().find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("the ", what, " ", path, " is not PEM"));
  }
  return contents.str();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFor(
    const Credentials& c) {
  if (c.tls_ca_file.empty()) {
    if (!c.tls_cert_file.empty() || !c.tls_key_file.empty()) {
      return absl::InvalidArgumentError(
          "a client certificate needs TLS: give the CA of the server's certificate too");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (c.tls_cert_file.empty() != c.tls_key_file.empty()) {
    return absl::InvalidArgumentError("a client certificate and its key go together");
  }
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> ca = ReadPem(c.tls_ca_file, "CA certificate");
  if (!ca.ok()) return ca.status();
  ssl.pem_root_certs = *std::move(ca);
  if (!c.tls_cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadPem(c.tls_cert_file, "client certificate");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem(c.tls_key_file, "client key");
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *std::move(cert);
    ssl.pem_private_key = *std::move(key);
  }
  return grpc::SslCredentials(ssl);
}

void AddChannelArguments(const Credentials& c, grpc::ChannelArguments* args) {
  if (!c.tls_server_name.empty()) args->SetSslTargetNameOverride(c.tls_server_name);
}

void AddCallCredentials(const Credentials& c, grpc::ClientContext* context) {
  if (!c.token.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", c.token));
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> NewChannel(const std::string& target,
                                                          const Credentials& credentials,
                                                          grpc::ChannelArguments args) {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> channel_credentials =
      ChannelCredentialsFor(credentials);
  if (!channel_credentials.ok()) return channel_credentials.status();
  AddChannelArguments(credentials, &args);
  return grpc::CreateCustomChannel(target, *channel_credentials, args);
}

}  // namespace qmgr::client
