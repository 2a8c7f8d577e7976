// Who may call what on qmgrd (docs/security.md): the one place that
// authenticates callers and decides on their calls.
//
//  - Identity: the subject CN of a verified client certificate (mTLS);
//    else the identity of the token in `authorization: Bearer <token>`
//    (the token file); else, on the admin Unix-socket listener, `local`;
//    else, when no authentication is configured, `anonymous`. A call
//    without an identity while tokens or client certificates are configured
//    is UNAUTHENTICATED.
//  - Roles: the authorization file grants an identity a role for names
//    (queues, sessions, coordinator@qualifier). With no file every
//    identity may do everything; once a file is given, what it does not
//    grant is PERMISSION_DENIED.
//
// Both files are read at start and again by Reload (SIGHUP); a file that
// fails to parse leaves the previous tables in force.
//
// Thread-safe.
#ifndef QMGR_TOOLS_QMGRD_AUTHORIZATION_H_
#define QMGR_TOOLS_QMGRD_AUTHORIZATION_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace qmgr::server {

enum class Role { kProducer, kProgram, kTerminal, kCoordinator, kAdmin };
absl::string_view RoleName(Role role);

// The identity of a caller with no credentials where none are required.
inline constexpr absl::string_view kAnonymous = "anonymous";
// The identity of a caller on the admin Unix socket that sent no token.
inline constexpr absl::string_view kLocalIdentity = "local";

// One line of the authorization file: `identity role [pattern...]`.
struct Grant {
  std::string identity;  // "*": every authenticated identity
  Role role = Role::kProducer;
  // Names, or prefixes ending in '*' ("*" alone: every name). A
  // coordinator's are NAME@QUALIFIER (NAME alone: any qualifier). None for
  // admin.
  std::vector<std::string> patterns;
  int line = 0;
};

// The parsed authorization file.
class AuthorizationTable {
 public:
  // Errors name `source` and the line: "authz.txt:3: unknown role 'adm'".
  static absl::StatusOr<AuthorizationTable> Parse(absl::string_view text, absl::string_view source);
  static absl::StatusOr<AuthorizationTable> Load(const std::string& path);

  // Whether `identity` holds `role` for `name` (ignored for kAdmin).
  bool Allows(absl::string_view identity, Role role, absl::string_view name) const;
  // Whether `identity` holds `role` for any name.
  bool HasRole(absl::string_view identity, Role role) const;
  bool AllowsCoordinator(absl::string_view identity, absl::string_view coordinator,
                         absl::string_view qualifier) const;
  size_t size() const { return grants_.size(); }

 private:
  std::vector<Grant> grants_;
};

// The parsed token file: `token identity` per line.
class TokenTable {
 public:
  static absl::StatusOr<TokenTable> Parse(absl::string_view text, absl::string_view source);
  static absl::StatusOr<TokenTable> Load(const std::string& path);

  std::optional<std::string> IdentityOf(absl::string_view token) const;
  size_t size() const { return identities_.size(); }

 private:
  absl::flat_hash_map<std::string, std::string> identities_;  // by token
};

// Which listener a call came in on.
enum class Listener { kMain, kAdmin };

struct SecurityOptions {
  std::string token_file;  // empty: no tokens
  std::string authz_file;  // empty: every identity may do everything
  // Client certificates are verified (--tls-client-ca): their CN is an
  // identity, and a call must have one (certificate or token).
  bool client_certificates = false;
  // The admin listener is a Unix socket: token-less callers there are
  // kLocalIdentity.
  bool admin_unix_socket = false;
  // One line per denial and per reload; null: none.
  std::function<void(absl::string_view line)> log;
};

class Security {
 public:
  static absl::StatusOr<std::unique_ptr<Security>> Create(SecurityOptions options);

  // Reads both files again. On an error the previous tables stay.
  absl::Status Reload();

  // The caller's identity, or UNAUTHENTICATED (logged with `rpc`).
  absl::StatusOr<std::string> Authenticate(const grpc::ServerContextBase& ctx, Listener listener,
                                           absl::string_view rpc) const;
  // OK, or PERMISSION_DENIED naming what is missing (logged with identity
  // and `rpc`). `name`: the queue or session (ignored for kAdmin).
  absl::Status Authorize(absl::string_view identity, absl::string_view rpc, Role role,
                         absl::string_view name) const;
  // Authorize for a role on any name (SyncPoint, Backout: no queue named).
  absl::Status AuthorizeAny(absl::string_view identity, absl::string_view rpc, Role role) const;
  absl::Status AuthorizeCoordinator(absl::string_view identity, absl::string_view rpc,
                                    absl::string_view coordinator,
                                    absl::string_view qualifier) const;
  // `refusal` (not OK), logged with identity and `rpc` like a denial.
  absl::Status Logged(absl::string_view identity, absl::string_view rpc,
                      absl::Status refusal) const;
  // Granted admin by the authorization file (false with none: the engine's
  // own rules stand, e.g. STSN SET only on a cold session).
  bool IsAdmin(absl::string_view identity) const;
  // Tokens or client certificates configured.
  bool authenticates() const;
  bool has_authorization_file() const { return !options_.authz_file.empty(); }

 private:
  explicit Security(SecurityOptions options) : options_(std::move(options)) {}
  absl::Status Denied(absl::string_view identity, absl::string_view rpc,
                      absl::string_view what) const;
  void Log(absl::string_view line) const;

  const SecurityOptions options_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const AuthorizationTable> authz_ ABSL_GUARDED_BY(mu_);  // null: no file
  std::shared_ptr<const TokenTable> tokens_ ABSL_GUARDED_BY(mu_);         // null: no file
};

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_AUTHORIZATION_H_
