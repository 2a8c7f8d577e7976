// qmgrd's authorization and token files (tools/qmgrd/authorization.h) and
// its listening rules (tools/qmgrd/listeners.h), apart from gRPC: each bad
// line refused with its file and line number, each grant deciding what it
// should and nothing more, a reload that fails keeping the rules in force,
// and an unprotected listener beyond loopback refused.
#include "tools/qmgrd/authorization.h"

#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/support/temp_dir.h"
#include "tools/qmgrd/listeners.h"

namespace qmgr::server {
namespace {

using qmgr::testing::TempDir;

std::string ParseError(absl::string_view text) {
  absl::StatusOr<AuthorizationTable> table = AuthorizationTable::Parse(text, "authz.txt");
  EXPECT_FALSE(table.ok()) << text;
  return table.ok() ? "" : std::string(table.status().message());
}

TEST(AuthorizationFile, BadLinesNameTheirFileAndLine) {
  EXPECT_EQ(ParseError("# operators\nop admin\nalice\n"),
            "authz.txt:3: expected 'IDENTITY ROLE [PATTERN...]', found 'alice' alone");
  EXPECT_EQ(ParseError("alice produce ORDERS\n"),
            "authz.txt:1: unknown role 'produce' (roles: producer, program, terminal, "
            "coordinator, admin)");
  EXPECT_EQ(ParseError("\n\nalice producer\n"),
            "authz.txt:3: role producer needs at least one queue pattern");
  EXPECT_EQ(ParseError("op admin *\n"), "authz.txt:1: role admin takes no patterns, found '*'");
  EXPECT_EQ(ParseError("alice producer OR*DERS\n"), "authz.txt:1: '*' may only end a pattern");
  EXPECT_EQ(ParseError("alice program ORDERS Q/1\n"),
            "authz.txt:1: pattern 'Q/1' has '/': names are [A-Za-z0-9._-], a pattern may end "
            "in '*'");
  EXPECT_EQ(ParseError("dave coordinator CICSA@\n"),
            "authz.txt:1: coordinator pattern 'CICSA@' is not NAME or NAME@QUALIFIER");
  EXPECT_EQ(ParseError("dave coordinator C*S@QM1\n"), "authz.txt:1: '*' may only end a pattern");
}

TEST(AuthorizationFile, GrantsDecideOnlyTheirRoleAndNames) {
  absl::StatusOr<AuthorizationTable> table = AuthorizationTable::Parse(
      "# who may do what\n"
      "alice producer ORDERS APP.*   # two patterns\n"
      "bob   program  ORDERS\n"
      "carol terminal TERM1 KIOSK*\n"
      "dave  coordinator CICSA@QM1 IMS*\n"
      "op    admin\n"
      "*     producer PUBLIC\n",
      "authz.txt");
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->size(), 6u);

  EXPECT_TRUE(table->Allows("alice", Role::kProducer, "ORDERS"));
  EXPECT_TRUE(table->Allows("alice", Role::kProducer, "APP.X"));
  EXPECT_TRUE(table->Allows("alice", Role::kProducer, "APP."));
  EXPECT_FALSE(table->Allows("alice", Role::kProducer, "APP"));
  EXPECT_FALSE(table->Allows("alice", Role::kProducer, "ORDERS2"));
  EXPECT_FALSE(table->Allows("alice", Role::kProgram, "ORDERS"));  // roles are separate
  EXPECT_FALSE(table->Allows("alice", Role::kAdmin, ""));
  EXPECT_TRUE(table->Allows("bob", Role::kProgram, "ORDERS"));
  EXPECT_FALSE(table->Allows("bob", Role::kProducer, "ORDERS"));
  EXPECT_TRUE(table->HasRole("bob", Role::kProgram));
  EXPECT_FALSE(table->HasRole("alice", Role::kProgram));
  EXPECT_TRUE(table->Allows("carol", Role::kTerminal, "KIOSK7"));
  EXPECT_FALSE(table->Allows("carol", Role::kTerminal, "TERM2"));
  EXPECT_TRUE(table->Allows("op", Role::kAdmin, ""));
  // "*" grants every identity, and nothing more.
  EXPECT_TRUE(table->Allows("mallory", Role::kProducer, "PUBLIC"));
  EXPECT_FALSE(table->Allows("mallory", Role::kProducer, "ORDERS"));

  EXPECT_TRUE(table->AllowsCoordinator("dave", "CICSA", "QM1"));
  EXPECT_FALSE(table->AllowsCoordinator("dave", "CICSA", "GRP"));  // another qualifier
  EXPECT_FALSE(table->AllowsCoordinator("dave", "CICSB", "QM1"));
  EXPECT_TRUE(table->AllowsCoordinator("dave", "IMSP", "ANY"));  // NAME alone: any qualifier
  EXPECT_FALSE(table->AllowsCoordinator("alice", "CICSA", "QM1"));
}

TEST(TokenFile, BadLinesAndLookups) {
  const auto error = [](absl::string_view text) {
    absl::StatusOr<TokenTable> t = TokenTable::Parse(text, "tokens.txt");
    return t.ok() ? std::string() : std::string(t.status().message());
  };
  EXPECT_EQ(error("0123456789abcdef\n"),
            "tokens.txt:1: expected 'TOKEN IDENTITY', found 1 field(s)");
  EXPECT_EQ(error("short alice\n"),
            "tokens.txt:1: a token is at least 16 characters; this one has 5 (openssl rand -hex "
            "32 makes one)");
  EXPECT_EQ(error("0123456789abcdef local\n"),
            "tokens.txt:1: identity 'local' is reserved: choose another name");
  EXPECT_EQ(error("0123456789abcdef alice\n# again\n0123456789abcdef bob\n"),
            "tokens.txt:3: this token is already given to another line");

  absl::StatusOr<TokenTable> tokens =
      TokenTable::Parse("0123456789abcdef alice\nfedcba9876543210 bob\n", "tokens.txt");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(tokens->IdentityOf("0123456789abcdef"), "alice");
  EXPECT_EQ(tokens->IdentityOf("fedcba9876543210"), "bob");
  EXPECT_EQ(tokens->IdentityOf("0123456789abcdeF"), std::nullopt);
  EXPECT_EQ(tokens->IdentityOf("0123456789abcde"), std::nullopt);
  EXPECT_EQ(tokens->IdentityOf(""), std::nullopt);
}

void Write(const std::string& path, absl::string_view text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

TEST(Security, DeniesByDefaultOnceTheFileExistsAndKeepsRulesWhenAReloadFails) {
  TempDir dir;
  const std::string path = dir.path() + "/authz.txt";
  Write(path, "");
  std::vector<std::string> log;
  SecurityOptions options;
  options.authz_file = path;
  options.log = [&](absl::string_view line) { log.emplace_back(line); };
  absl::StatusOr<std::unique_ptr<Security>> security = Security::Create(options);
  ASSERT_TRUE(security.ok()) << security.status();
  // An empty file grants nothing.
  absl::Status denied = (*security)->Authorize("alice", "Enqueue", Role::kProducer, "ORDERS");
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(denied.message(), "no producer grant for queue 'ORDERS'"))
      << denied;
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.back(), "denied: Enqueue by 'alice': no producer grant for queue 'ORDERS'");

  Write(path, "alice producer ORDERS\nop admin\n");
  ASSERT_TRUE((*security)->Reload().ok());
  EXPECT_TRUE((*security)->Authorize("alice", "Enqueue", Role::kProducer, "ORDERS").ok());
  EXPECT_TRUE((*security)->IsAdmin("op"));
  EXPECT_FALSE((*security)->IsAdmin("alice"));

  Write(path, "alice producer ORDERS\nop admn\n");
  absl::Status reload = (*security)->Reload();
  EXPECT_EQ(reload.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(reload.message(), "authz.txt:2: unknown role 'admn'")) << reload;
  EXPECT_TRUE((*security)->IsAdmin("op"));  // the previous rules stay
}

TEST(Security, WithoutAFileEverythingIsAllowedButNobodyIsAdmin) {
  absl::StatusOr<std::unique_ptr<Security>> security = Security::Create({});
  ASSERT_TRUE(security.ok()) << security.status();
  EXPECT_TRUE((*security)->Authorize("anyone", "Shutdown", Role::kAdmin, "").ok());
  EXPECT_TRUE((*security)->AuthorizeCoordinator("anyone", "Connect", "CICSA", "QM1").ok());
  // STSN SET beyond a cold session and taking over another's session need
  // an administrator the file names.
  EXPECT_FALSE((*security)->IsAdmin("anyone"));
  EXPECT_FALSE((*security)->authenticates());
}

TEST(Security, AMissingFileIsRefusedAtStart) {
  SecurityOptions options;
  options.authz_file = "/nonexistent/authz.txt";
  absl::StatusOr<std::unique_ptr<Security>> security = Security::Create(options);
  EXPECT_FALSE(security.ok());
}

TEST(Listeners, LoopbackAndUnixSocketsAreLocal) {
  EXPECT_TRUE(IsLocalOnly("127.0.0.1:7430"));
  EXPECT_TRUE(IsLocalOnly("127.1.2.3:0"));
  EXPECT_TRUE(IsLocalOnly("localhost:7430"));
  EXPECT_TRUE(IsLocalOnly("[::1]:7430"));
  EXPECT_TRUE(IsLocalOnly("unix:/run/qmgr/admin.sock"));
  EXPECT_FALSE(IsLocalOnly("0.0.0.0:7430"));
  EXPECT_FALSE(IsLocalOnly("[::]:7430"));
  EXPECT_FALSE(IsLocalOnly("192.0.2.7:7430"));
  EXPECT_FALSE(IsLocalOnly("qmgr.example.com:7430"));
  EXPECT_EQ(UnixSocketPath("unix:/run/a.sock"), "/run/a.sock");
  EXPECT_EQ(UnixSocketPath("unix:///run/a.sock"), "/run/a.sock");
}

TEST(Listeners, BeyondLoopbackNeedsTlsOrTokensOrInsecure) {
  ListenerOptions o;
  o.listen_address = "0.0.0.0:7430";
  absl::StatusOr<std::vector<std::string>> checked = CheckListeners(o);
  ASSERT_FALSE(checked.ok());
  EXPECT_TRUE(absl::StrContains(checked.status().message(), "refusing to listen on 0.0.0.0:7430"))
      << checked.status();

  o.insecure = true;
  checked = CheckListeners(o);
  ASSERT_TRUE(checked.ok()) << checked.status();
  EXPECT_TRUE(absl::StrContains(absl::StrJoin(*checked, "\n"), "WARNING: --insecure"));

  o.insecure = false;
  o.token_file = "tokens.txt";
  o.authz_file = "authz.txt";
  checked = CheckListeners(o);
  ASSERT_TRUE(checked.ok()) << checked.status();
  EXPECT_EQ(absl::StrJoin(*checked, "\n"),
            "WARNING: tokens travel unencrypted to 0.0.0.0:7430 (no --tls-cert)");

  // An admin listener beyond loopback is held to the same rule.
  ListenerOptions admin;
  admin.admin_listen = "0.0.0.0:7431";
  EXPECT_FALSE(CheckListeners(admin).ok());
}

TEST(Listeners, LoopbackWithoutProtectionSaysSo) {
  absl::StatusOr<std::vector<std::string>> checked = CheckListeners(ListenerOptions{});
  ASSERT_TRUE(checked.ok()) << checked.status();
  EXPECT_EQ(absl::StrJoin(*checked, "\n"),
            "WARNING: unprotected: no TLS and no tokens, every local process is trusted "
            "(loopback only; see docs/security.md)\n"
            "WARNING: no --authz-file: every caller may do everything");
}

TEST(Listeners, ContradictoryFlagsAreRefused) {
  ListenerOptions o;
  o.tls_cert_file = "server.crt";
  EXPECT_EQ(CheckListeners(o).status().message(), "--tls-cert and --tls-key go together");
  o.tls_key_file = "server.key";
  o.tls_require_client_cert = true;
  EXPECT_EQ(CheckListeners(o).status().message(),
            "--tls-require-client-cert needs --tls-client-ca");
  ListenerOptions p;
  p.tls_client_ca_file = "ca.crt";
  EXPECT_EQ(CheckListeners(p).status().message(), "--tls-client-ca needs --tls-cert and --tls-key");
  ListenerOptions q;
  q.admin_on_main = true;
  EXPECT_EQ(CheckListeners(q).status().message(), "--admin-on-main needs --admin-listen");
}

}  // namespace
}  // namespace qmgr::server
