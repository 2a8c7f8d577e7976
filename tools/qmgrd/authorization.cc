#include "tools/qmgrd/authorization.h"

#include <grpc/grpc_security_constants.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace qmgr::server {
namespace {

constexpr absl::string_view kBearer = "Bearer ";
// Shorter tokens are guessable; the file is refused rather than weakened.
constexpr size_t kTokenBytesMin = 16;

struct RoleEntry {
  absl::string_view name;
  Role role;
  absl::string_view names;  // what its patterns name ("" for admin)
};
constexpr RoleEntry kRoles[] = {
    {"producer", Role::kProducer, "queue"},
    {"program", Role::kProgram, "queue"},
    {"terminal", Role::kTerminal, "session"},
    {"coordinator", Role::kCoordinator, "coordinator"},
    {"admin", Role::kAdmin, ""},
};

const RoleEntry& EntryOf(Role role) {
  for (const RoleEntry& e : kRoles) {
    if (e.role == role) return e;
  }
  return kRoles[0];
}

// Queue and session names are [A-Za-z0-9._-]; a pattern may end in '*'.
absl::Status CheckNamePattern(absl::string_view pattern) {
  absl::string_view stem = pattern;
  if (absl::EndsWith(stem, "*")) stem.remove_suffix(1);
  for (char c : stem) {
    if (c == '*') return absl::InvalidArgumentError("'*' may only end a pattern");
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat("pattern '", pattern, "' has '", std::string(1, c),
                       "': names are [A-Za-z0-9._-], a pattern may end in '*'"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckCoordinatorPattern(absl::string_view pattern) {
  const size_t at = pattern.rfind('@');
  const absl::string_view name = at == absl::string_view::npos ? pattern : pattern.substr(0, at);
  const absl::string_view qualifier =
      at == absl::string_view::npos ? absl::string_view("*") : pattern.substr(at + 1);
  if (name.empty() || qualifier.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("coordinator pattern '", pattern, "' is not NAME or NAME@QUALIFIER"));
  }
  for (absl::string_view part : {name, qualifier}) {
    if (part.substr(0, part.size() - 1).find('*') != absl::string_view::npos) {
      return absl::InvalidArgumentError("'*' may only end a pattern");
    }
  }
  return absl::OkStatus();
}

bool Matches(absl::string_view pattern, absl::string_view name) {
  if (absl::EndsWith(pattern, "*")) {
    return absl::StartsWith(name, pattern.substr(0, pattern.size() - 1));
  }
  return pattern == name;
}

bool MatchesCoordinator(absl::string_view pattern, absl::string_view coordinator,
                        absl::string_view qualifier) {
  const size_t at = pattern.rfind('@');
  if (at == absl::string_view::npos) return Matches(pattern, coordinator);
  return Matches(pattern.substr(0, at), coordinator) && Matches(pattern.substr(at + 1), qualifier);
}

// The fields of each line that says something: '#' starts a comment.
template <typename OnLine>
absl::Status ForEachLine(absl::string_view text, absl::string_view source, OnLine on_line) {
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    if (size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (fields.empty()) continue;
    if (absl::Status s = on_line(number, fields); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ":", number, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return contents.str();
}

// Compares without stopping at the first difference, so that the time a
// refusal takes does not tell how much of a token was right (its length may
// show; tokens have a minimum length).
bool SameToken(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i];
  return diff == 0;
}

}  // namespace

absl::string_view RoleName(Role role) { return EntryOf(role).name; }

// ---- AuthorizationTable -------------------------------------------------------

absl::StatusOr<AuthorizationTable> AuthorizationTable::Parse(absl::string_view text,
                                                             absl::string_view source) {
  AuthorizationTable table;
  absl::Status s = ForEachLine(
      text, source, [&](int number, const std::vector<absl::string_view>& f) -> absl::Status {
        if (f.size() < 2) {
          return absl::InvalidArgumentError(
              absl::StrCat("expected 'IDENTITY ROLE [PATTERN...]', found '", f[0], "' alone"));
        }
        const RoleEntry* entry = nullptr;
        for (const RoleEntry& e : kRoles) {
          if (e.name == f[1]) entry = &e;
        }
        if (entry == nullptr) {
          return absl::InvalidArgumentError(
              absl::StrCat("unknown role '", f[1],
                           "' (roles: producer, program, terminal, coordinator, admin)"));
        }
        Grant grant;
        grant.identity = std::string(f[0]);
        grant.role = entry->role;
        grant.line = number;
        if (entry->role == Role::kAdmin) {
          if (f.size() > 2) {
            return absl::InvalidArgumentError(
                absl::StrCat("role admin takes no patterns, found '", f[2], "'"));
          }
        } else if (f.size() == 2) {
          return absl::InvalidArgumentError(
              absl::StrCat("role ", entry->name, " needs at least one ", entry->names, " pattern"));
        }
        for (size_t i = 2; i < f.size(); ++i) {
          absl::Status p = entry->role == Role::kCoordinator ? CheckCoordinatorPattern(f[i])
                                                             : CheckNamePattern(f[i]);
          if (!p.ok()) return p;
          grant.patterns.emplace_back(f[i]);
        }
        table.grants_.push_back(std::move(grant));
        return absl::OkStatus();
      });
  if (!s.ok()) return s;
  return table;
}

absl::StatusOr<AuthorizationTable> AuthorizationTable::Load(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  return Parse(*text, path);
}

bool AuthorizationTable::Allows(absl::string_view identity, Role role,
                                absl::string_view name) const {
  for (const Grant& g : grants_) {
    if (g.role != role || (g.identity != "*" && g.identity != identity)) continue;
    if (role == Role::kAdmin) return true;
    for (const std::string& p : g.patterns) {
      if (Matches(p, name)) return true;
    }
  }
  return false;
}

bool AuthorizationTable::HasRole(absl::string_view identity, Role role) const {
  for (const Grant& g : grants_) {
    if (g.role == role && (g.identity == "*" || g.identity == identity)) return true;
  }
  return false;
}

bool AuthorizationTable::AllowsCoordinator(absl::string_view identity,
                                           absl::string_view coordinator,
                                           absl::string_view qualifier) const {
  for (const Grant& g : grants_) {
    if (g.role != Role::kCoordinator || (g.identity != "*" && g.identity != identity)) continue;
    for (const std::string& p : g.patterns) {
      if (MatchesCoordinator(p, coordinator, qualifier)) return true;
    }
  }
  return false;
}

// ---- TokenTable ------------------------------------------------------------------

absl::StatusOr<TokenTable> TokenTable::Parse(absl::string_view text, absl::string_view source) {
  TokenTable table;
  absl::Status s =
      ForEachLine(text, source, [&](int, const std::vector<absl::string_view>& f) -> absl::Status {
        if (f.size() != 2) {
          return absl::InvalidArgumentError(
              absl::StrCat("expected 'TOKEN IDENTITY', found ", f.size(), " field(s)"));
        }
        if (f[0].size() < kTokenBytesMin) {
          return absl::InvalidArgumentError(absl::StrCat("a token is at least ", kTokenBytesMin,
                                                         " characters; this one has ", f[0].size(),
                                                         " (openssl rand -hex 32 makes one)"));
        }
        if (f[1] == "*" || f[1] == kAnonymous || f[1] == kLocalIdentity) {
          return absl::InvalidArgumentError(
              absl::StrCat("identity '", f[1], "' is reserved: choose another name"));
        }
        if (!table.identities_.emplace(f[0], f[1]).second) {
          return absl::InvalidArgumentError("this token is already given to another line");
        }
        return absl::OkStatus();
      });
  if (!s.ok()) return s;
  return table;
}

absl::StatusOr<TokenTable> TokenTable::Load(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  return Parse(*text, path);
}

std::optional<std::string> TokenTable::IdentityOf(absl::string_view token) const {
  std::optional<std::string> found;
  for (const auto& [known, identity] : identities_) {
    if (SameToken(token, known)) found = identity;
  }
  return found;
}

// ---- Security ----------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Security>> Security::Create(SecurityOptions options) {
  std::unique_ptr<Security> security(new Security(std::move(options)));
  if (absl::Status s = security->Reload(); !s.ok()) return s;
  return security;
}

absl::Status Security::Reload() {
  std::shared_ptr<const AuthorizationTable> authz;
  std::shared_ptr<const TokenTable> tokens;
  if (!options_.authz_file.empty()) {
    absl::StatusOr<AuthorizationTable> table = AuthorizationTable::Load(options_.authz_file);
    if (!table.ok()) return table.status();
    authz = std::make_shared<const AuthorizationTable>(*std::move(table));
  }
  if (!options_.token_file.empty()) {
    absl::StatusOr<TokenTable> table = TokenTable::Load(options_.token_file);
    if (!table.ok()) return table.status();
    tokens = std::make_shared<const TokenTable>(*std::move(table));
  }
  {
    absl::MutexLock lock(&mu_);
    authz_ = authz;
    tokens_ = tokens;
  }
  Log(absl::StrCat("security: ",
                   authz ? absl::StrCat(authz->size(), " grant(s) from ", options_.authz_file)
                         : std::string("no authorization file (everything allowed)"),
                   tokens
                       ? absl::StrCat(", ", tokens->size(), " token(s) from ", options_.token_file)
                       : std::string()));
  return absl::OkStatus();
}

bool Security::authenticates() const {
  return options_.client_certificates || !options_.token_file.empty();
}

absl::StatusOr<std::string> Security::Authenticate(const grpc::ServerContextBase& ctx,
                                                   Listener listener, absl::string_view rpc) const {
  if (options_.client_certificates) {
    std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
    if (auth != nullptr && auth->IsPeerAuthenticated()) {
      std::vector<grpc::string_ref> cn = auth->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME);
      if (!cn.empty() && cn.front().size() > 0)
        return std::string(cn.front().data(), cn.front().size());
    }
  }
  std::shared_ptr<const TokenTable> tokens;
  {
    absl::MutexLock lock(&mu_);
    tokens = tokens_;
  }
  const auto& metadata = ctx.client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end() && tokens != nullptr) {
    const absl::string_view value(it->second.data(), it->second.size());
    if (!absl::StartsWith(value, kBearer)) {
      Log(absl::StrCat("unauthenticated: ", rpc, ": authorization is not 'Bearer TOKEN'"));
      return absl::UnauthenticatedError("the authorization metadata is not 'Bearer TOKEN'");
    }
    if (std::optional<std::string> identity = tokens->IdentityOf(value.substr(kBearer.size()))) {
      return *identity;
    }
    Log(absl::StrCat("unauthenticated: ", rpc, ": unknown token"));
    return absl::UnauthenticatedError("the token is not known to this queue manager");
  }
  if (listener == Listener::kAdmin && options_.admin_unix_socket) {
    return std::string(kLocalIdentity);
  }
  if (authenticates()) {
    Log(absl::StrCat("unauthenticated: ", rpc, ": no client certificate and no token"));
    return absl::UnauthenticatedError(
        "this queue manager needs a client certificate or a token ('authorization: Bearer "
        "TOKEN')");
  }
  return std::string(kAnonymous);
}

absl::Status Security::Denied(absl::string_view identity, absl::string_view rpc,
                              absl::string_view what) const {
  Log(absl::StrCat("denied: ", rpc, " by '", identity, "': ", what));
  return absl::PermissionDeniedError(absl::StrCat("'", identity, "' may not call ", rpc, ": ", what,
                                                  " (", options_.authz_file, ")"));
}

absl::Status Security::Authorize(absl::string_view identity, absl::string_view rpc, Role role,
                                 absl::string_view name) const {
  std::shared_ptr<const AuthorizationTable> authz;
  {
    absl::MutexLock lock(&mu_);
    authz = authz_;
  }
  if (authz == nullptr || authz->Allows(identity, role, name)) return absl::OkStatus();
  const RoleEntry& e = EntryOf(role);
  return Denied(identity, rpc,
                role == Role::kAdmin
                    ? std::string("no admin grant")
                    : absl::StrCat("no ", e.name, " grant for ", e.names, " '", name, "'"));
}

absl::Status Security::AuthorizeAny(absl::string_view identity, absl::string_view rpc,
                                    Role role) const {
  std::shared_ptr<const AuthorizationTable> authz;
  {
    absl::MutexLock lock(&mu_);
    authz = authz_;
  }
  if (authz == nullptr || authz->HasRole(identity, role)) return absl::OkStatus();
  return Denied(identity, rpc, absl::StrCat("no ", RoleName(role), " grant"));
}

absl::Status Security::AuthorizeCoordinator(absl::string_view identity, absl::string_view rpc,
                                            absl::string_view coordinator,
                                            absl::string_view qualifier) const {
  std::shared_ptr<const AuthorizationTable> authz;
  {
    absl::MutexLock lock(&mu_);
    authz = authz_;
  }
  if (authz == nullptr || authz->AllowsCoordinator(identity, coordinator, qualifier)) {
    return absl::OkStatus();
  }
  return Denied(identity, rpc,
                absl::StrCat("no coordinator grant for '", coordinator, "@", qualifier, "'"));
}

absl::Status Security::Logged(absl::string_view identity, absl::string_view rpc,
                              absl::Status refusal) const {
  Log(absl::StrCat("denied: ", rpc, " by '", identity, "': ", refusal.message()));
  return refusal;
}

bool Security::IsAdmin(absl::string_view identity) const {
  absl::MutexLock lock(&mu_);
  return authz_ != nullptr && authz_->Allows(identity, Role::kAdmin, "");
}

void Security::Log(absl::string_view line) const {
  if (options_.log) options_.log(line);
}

}  // namespace qmgr::server
