// qmgrd's protection over real gRPC (docs/security.md): certificates made
// for the test with the openssl CLI (a CA, the server, one client per
// identity; nothing committed), the real qmgrd with mutual TLS or tokens and
// an authorization file. Each role allowed and denied on each RPC family
// (producers, programs, sessions, coordinators, Admin); a unit of work used
// only by its opener; a session bound by one client, taken over by the same
// identity or an administrator; a coordinator's name and qualifier not
// usable by another identity; Admin over a Unix socket and refused on the
// main listener; tokens without TLS; the client library's credentials; the
// refusal to listen beyond loopback unprotected; SIGHUP reloading the rules.
#include <signal.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "client/session.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "qmgr/status.h"
#include "qmgr/v1/qmgr.grpc.pb.h"
#include "tests/support/qmgrd_process.h"
#include "tests/support/rpc_expect.h"
#include "tests/support/temp_dir.h"

namespace qmgr {
namespace {

namespace v1 = qmgr::v1;
using qmgr::testing::QmgrdProcess;
using qmgr::testing::TempDir;

const std::vector<std::string> kFlags = {"--log-segment-bytes", "4MiB", "--qmgr-name", "QM1"};
constexpr absl::Duration kCallTimeout = absl::Seconds(10);
const char* const kIdentities[] = {"alice", "bob",  "eve", "carol",  "erin",
                                   "dave",  "mike", "op",  "mallory"};

int RunCommand(const std::string& command, std::string* output) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  char buffer[4096];
  output->clear();
  while (size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) output->append(buffer, n);
  return WEXITSTATUS(::pclose(pipe));
}

void Write(const std::string& path, absl::string_view text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A CA, the server's certificate (localhost, 127.0.0.1) and one client
// certificate per identity (its subject CN), made once for the whole run
// with EC keys (fast to make).
class Pki {
 public:
  static const Pki& Get() {
    static const Pki* pki = new Pki;
    return *pki;
  }
  std::string ca() const { return dir_.path() + "/ca.crt"; }
  std::string cert(absl::string_view who) const {
    return absl::StrCat(dir_.path(), "/", who, ".crt");
  }
  std::string key(absl::string_view who) const {
    return absl::StrCat(dir_.path(), "/", who, ".key");
  }
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }

 private:
  Pki() {
    const std::string d = dir_.path();
    const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    Write(d + "/server.ext", "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
    Run(absl::StrCat("openssl req -x509 ", ec, " -keyout ", d, "/ca.key -out ", d,
                     "/ca.crt -days 2 -subj /CN=qmgr-test-ca"));
    std::vector<std::string> names(std::begin(kIdentities), std::end(kIdentities));
    names.push_back("server");
    for (const std::string& name : names) {
      Run(absl::StrCat("openssl req ", ec, " -keyout ", d, "/", name, ".key -out ", d, "/", name,
                       ".csr -subj /CN=", name == "server" ? "localhost" : name));
      Run(absl::StrCat("openssl x509 -req -in ", d, "/", name, ".csr -CA ", d, "/ca.crt -CAkey ", d,
                       "/ca.key -CAcreateserial -days 2 -out ", d, "/", name, ".crt",
                       name == "server" ? absl::StrCat(" -extfile ", d, "/server.ext") : ""));
    }
  }
  void Run(const std::string& command) {
    if (!error_.empty()) return;
    std::string output;
    if (RunCommand(command, &output) != 0) error_ = absl::StrCat(command, ":\n", output);
  }

  TempDir dir_;
  std::string error_;
};

std::shared_ptr<grpc::ChannelCredentials> TlsAs(absl::string_view who) {
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = Read(Pki::Get().ca());
  if (!who.empty()) {
    ssl.pem_cert_chain = Read(Pki::Get().cert(who));
    ssl.pem_private_key = Read(Pki::Get().key(who));
  }
  return grpc::SslCredentials(ssl);
}

// One caller's stubs on its own channel, with an optional token.
struct Caller {
  Caller(const std::string& target, std::shared_ptr<grpc::ChannelCredentials> credentials,
         std::string token = "")
      : token(std::move(token)) {
    auto channel = grpc::CreateChannel(target, std::move(credentials));
    qm = v1::QueueManager::NewStub(channel);
    admin = v1::Admin::NewStub(channel);
    coord = v1::Coordinator::NewStub(channel);
  }
  std::unique_ptr<grpc::ClientContext> Context() const {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
    if (!token.empty()) c->AddMetadata("authorization", absl::StrCat("Bearer ", token));
    return c;
  }
  grpc::Status Enqueue(const std::string& queue, v1::EnqueueResponse* out = nullptr) const {
    v1::EnqueueRequest request;
    request.mutable_message()->set_queue(queue);
    request.mutable_message()->set_payload("p");
    v1::EnqueueResponse response;
    return qm->Enqueue(Context().get(), request, out != nullptr ? out : &response);
  }
  grpc::Status Get(const std::string& queue, uint64_t uow, v1::GetResponse* out) const {
    v1::GetRequest request;
    request.set_queue(queue);
    request.set_uow(uow);
    return qm->Get(Context().get(), request, out);
  }
  grpc::Status SyncPoint(uint64_t uow, v1::SyncPointResponse* out = nullptr) const {
    v1::SyncPointRequest request;
    request.set_uow(uow);
    v1::SyncPointResponse response;
    return qm->SyncPoint(Context().get(), request, out != nullptr ? out : &response);
  }
  grpc::Status OpenSession(const std::string& session) const {
    v1::OpenSessionRequest request;
    request.set_session(session);
    v1::OpenSessionResponse response;
    return qm->OpenSession(Context().get(), request, &response);
  }
  grpc::Status Connect(const std::string& coordinator, v1::ConnectResponse* out = nullptr) const {
    v1::ConnectRequest request;
    request.set_coordinator(coordinator);
    request.set_qualifier("QM1");
    v1::ConnectResponse response;
    return coord->Connect(Context().get(), request, out != nullptr ? out : &response);
  }
  grpc::Status DisplayQueues(v1::DisplayQueuesResponse* out = nullptr) const {
    v1::DisplayQueuesResponse response;
    return admin->DisplayQueues(Context().get(), v1::DisplayQueuesRequest(),
                                out != nullptr ? out : &response);
  }
  grpc::Status Define(const std::string& queue) const {
    v1::DefineQueueRequest request;
    request.set_queue(queue);
    v1::DefineQueueResponse response;
    return admin->DefineQueue(Context().get(), request, &response);
  }

  std::string token;
  std::unique_ptr<v1::QueueManager::Stub> qm;
  std::unique_ptr<v1::Admin::Stub> admin;
  std::unique_ptr<v1::Coordinator::Stub> coord;
};

#define EXPECT_DENIED(status) EXPECT_REFUSED(status, kPermissionDenied, "")

constexpr char kMutualTlsAuthz[] = R"(# the test's identities (certificate CNs)
alice producer ORDERS APP.*
bob   program  ORDERS
eve   program  ORDERS
carol terminal TERM1
carol producer ORDERS
erin  terminal TERM1
erin  producer ORDERS
dave  coordinator CICSA@QM1
dave  program ORDERS
mike  coordinator CICSB
op    admin
op    terminal TERM*
)";

// qmgrd with TLS, client certificates required, and kMutualTlsAuthz.
class MutualTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(Pki::Get().ok()) << Pki::Get().error();
    Write(authz_path(), kMutualTlsAuthz);
    std::vector<std::string> flags = kFlags;
    for (const std::string& f :
         {std::string("--tls-cert"), Pki::Get().cert("server"), std::string("--tls-key"),
          Pki::Get().key("server"), std::string("--tls-client-ca"), Pki::Get().ca(),
          std::string("--tls-require-client-cert"), std::string("--authz-file"), authz_path()}) {
      flags.push_back(f);
    }
    process_ = std::make_unique<QmgrdProcess>(QMGRD_PATH, dir_.path() + "/data", flags);
    process_->set_health_credentials(TlsAs("op"));
    const absl::Status started = process_->Start();
    ASSERT_TRUE(started.ok()) << started;
    for (const char* queue : {"ORDERS", "OTHER"}) ASSERT_OK(As("op").Define(queue));
  }

  std::string authz_path() const { return dir_.path() + "/authz.txt"; }
  const Caller& As(const std::string& who) {
    auto& caller = callers_[who];
    if (caller == nullptr) caller = std::make_unique<Caller>(process_->target(), TlsAs(who));
    return *caller;
  }
  uint64_t Depth(const std::string& queue) {
    v1::DisplayQueuesResponse queues;
    EXPECT_OK(As("op").DisplayQueues(&queues));
    for (const v1::QueueInfo& q : queues.queues()) {
      if (q.name() == queue) return q.depth();
    }
    return UINT64_MAX;
  }

  TempDir dir_;
  std::unique_ptr<QmgrdProcess> process_;
  std::map<std::string, std::unique_ptr<Caller>> callers_;
};

TEST_F(MutualTlsTest, ProducersEnqueueOnlyToTheirQueues) {
  EXPECT_OK(As("alice").Enqueue("ORDERS"));
  EXPECT_DENIED(As("alice").Enqueue("OTHER"));
  EXPECT_DENIED(As("bob").Enqueue("ORDERS"));      // a program, not a producer
  EXPECT_DENIED(As("mallory").Enqueue("ORDERS"));  // a valid certificate, no grant

  // A batch is refused whole when one message is not allowed.
  v1::EnqueueBatchRequest batch;
  for (const char* queue : {"ORDERS", "OTHER"}) {
    batch.add_messages()->set_queue(queue);
  }
  v1::EnqueueBatchResponse batch_response;
  EXPECT_DENIED(As("alice").qm->EnqueueBatch(As("alice").Context().get(), batch, &batch_response));

  // On a stream each message is decided alone and the stream goes on.
  grpc::ClientContext context;
  auto stream = As("alice").qm->EnqueueStream(&context);
  for (const char* queue : {"ORDERS", "OTHER", "ORDERS"}) {
    v1::EnqueueRequest request;
    request.mutable_message()->set_queue(queue);
    ASSERT_TRUE(stream->Write(request));
  }
  stream->WritesDone();
  std::vector<std::string> answers;
  v1::EnqueueStreamResponse answer;
  while (stream->Read(&answer)) {
    answers.push_back(answer.has_enqueued() ? "enqueued"
                                            : absl::StrCat("error ", answer.error().code()));
  }
  EXPECT_OK(stream->Finish());
  EXPECT_EQ(answers, (std::vector<std::string>{"enqueued", "error 7", "enqueued"}));

  EXPECT_EQ(Depth("ORDERS"), 3u);
  EXPECT_EQ(Depth("OTHER"), 0u);  // nothing denied changed anything
  EXPECT_TRUE(absl::StrContains(process_->Stderr(),
                                "denied: Enqueue by 'alice': no producer grant for queue 'OTHER'"))
      << process_->Stderr();
  EXPECT_TRUE(absl::StrContains(process_->Stderr(), "denied: Enqueue by 'mallory'"));
}

TEST_F(MutualTlsTest, ProgramsGetAndCommitOnlyOnTheirQueues) {
  ASSERT_OK(As("alice").Enqueue("ORDERS"));
  v1::GetResponse got;
  EXPECT_DENIED(As("alice").Get("ORDERS", 0, &got));
  EXPECT_DENIED(As("bob").Get("OTHER", 0, &got));
  ASSERT_OK(As("bob").Get("ORDERS", 0, &got));
  ASSERT_TRUE(got.has_message());
  EXPECT_DENIED(As("alice").SyncPoint(got.uow()));  // no program role at all
  v1::InsertRequest insert;
  insert.mutable_message()->set_queue("ORDERS");
  v1::InsertResponse inserted;
  EXPECT_DENIED(As("alice").qm->Insert(As("alice").Context().get(), insert, &inserted));
  v1::SyncPointResponse committed;
  ASSERT_OK(As("bob").SyncPoint(got.uow(), &committed));
  EXPECT_EQ(committed.consumed(), 1u);

  // A ProgramStream answers a denied operation and goes on.
  ASSERT_OK(As("alice").Enqueue("ORDERS"));
  grpc::ClientContext context;
  auto stream = As("bob").qm->ProgramStream(&context);
  v1::ProgramRequest request;
  v1::ProgramResponse response;
  request.mutable_get()->set_queue("OTHER");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.error().code(), grpc::StatusCode::PERMISSION_DENIED);
  request.mutable_get()->set_queue("ORDERS");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  ASSERT_TRUE(response.has_get()) << response.error().message();
  EXPECT_TRUE(response.get().has_message());
  request.mutable_sync_point()->set_uow(response.get().uow());
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.sync_point().consumed(), 1u);
  stream->WritesDone();
  EXPECT_OK(stream->Finish());
}

TEST_F(MutualTlsTest, AUnitOfWorkAnswersOnlyToItsOpener) {
  ASSERT_OK(As("alice").Enqueue("ORDERS"));
  v1::GetResponse got;
  ASSERT_OK(As("bob").Get("ORDERS", 0, &got));
  ASSERT_TRUE(got.has_message());
  const uint64_t uow = got.uow();

  // eve holds the same role on the same queue, but the unit is bob's.
  const Caller& eve = As("eve");
  v1::GetRequest get;
  get.set_queue("ORDERS");
  get.set_uow(uow);
  get.set_commit_previous(true);
  v1::GetResponse eve_got;
  EXPECT_DENIED(eve.qm->Get(eve.Context().get(), get, &eve_got));
  v1::InsertRequest insert;
  insert.set_uow(uow);
  insert.mutable_message()->set_queue("ORDERS");
  v1::InsertResponse inserted;
  EXPECT_DENIED(eve.qm->Insert(eve.Context().get(), insert, &inserted));
  EXPECT_DENIED(eve.SyncPoint(uow));
  v1::BackoutRequest backout;
  backout.set_uow(uow);
  v1::BackoutResponse backed_out;
  EXPECT_DENIED(eve.qm->Backout(eve.Context().get(), backout, &backed_out));

  // Nothing changed: bob's unit still holds its message, and commits it.
  v1::SyncPointResponse committed;
  ASSERT_OK(As("bob").SyncPoint(uow, &committed));
  EXPECT_EQ(committed.consumed(), 1u);
  EXPECT_EQ(committed.inserted(), 0u);
  EXPECT_EQ(Depth("ORDERS"), 0u);
}

TEST_F(MutualTlsTest, ASessionIsBoundByOneClientUntilTakenOver) {
  EXPECT_DENIED(As("bob").OpenSession("TERM1"));    // no terminal role
  EXPECT_DENIED(As("carol").OpenSession("TERM2"));  // not her session
  ASSERT_OK(As("carol").OpenSession("TERM1"));

  // erin may use TERM1 too, but carol has bound it.
  EXPECT_REFUSED(As("erin").OpenSession("TERM1"), kFailedPrecondition, "SESSION_BOUND");
  v1::StartDataTrafficRequest sdt;
  sdt.set_session("TERM1");
  v1::StartDataTrafficResponse sdt_response;
  EXPECT_DENIED(As("erin").qm->StartDataTraffic(As("erin").Context().get(), sdt, &sdt_response));
  v1::ReceiveRequest receive;
  receive.set_session("TERM1");
  {
    grpc::ClientContext context;
    auto reader = As("erin").qm->Receive(&context, receive);
    v1::ReceiveResponse output;
    EXPECT_FALSE(reader->Read(&output));
    EXPECT_DENIED(reader->Finish());
  }
  v1::EnqueueRequest input;
  input.mutable_message()->set_queue("ORDERS");
  input.mutable_message()->set_session("TERM1");
  input.mutable_message()->set_input_seq(1);
  v1::EnqueueResponse enqueued;
  EXPECT_DENIED(As("erin").qm->Enqueue(As("erin").Context().get(), input, &enqueued));

  // carol, after a crash, binds her session again: a takeover, logged.
  ASSERT_OK(As("carol").OpenSession("TERM1"));
  EXPECT_TRUE(
      absl::StrContains(process_->Stderr(), "session TERM1 taken over by 'carol' from 'carol'"))
      << process_->Stderr();

  // STSN SET on a session not opened cold is an administrator's.
  v1::SetAndTestSequenceNumbersRequest stsn;
  stsn.set_session("TERM1");
  stsn.mutable_input()->set_action(v1::SET);
  stsn.mutable_input()->set_last_sent(0);
  stsn.mutable_output()->set_action(v1::SET);
  v1::SetAndTestSequenceNumbersResponse answer;
  EXPECT_EQ(As("carol")
                .qm->SetAndTestSequenceNumbers(As("carol").Context().get(), stsn, &answer)
                .error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);

  // An administrator takes it over from another identity.
  ASSERT_OK(As("op").OpenSession("TERM1"));
  EXPECT_TRUE(
      absl::StrContains(process_->Stderr(), "session TERM1 taken over by 'op' from 'carol'"));
  EXPECT_DENIED(As("carol").qm->StartDataTraffic(As("carol").Context().get(), sdt, &sdt_response));
  ASSERT_OK(As("op").qm->SetAndTestSequenceNumbers(As("op").Context().get(), stsn, &answer));
  EXPECT_EQ(answer.input().result(), v1::SET_DONE);
  EXPECT_EQ(answer.output().result(), v1::SET_DONE);
}

TEST_F(MutualTlsTest, ACoordinatorCannotBeImpersonated) {
  ASSERT_OK(As("alice").Enqueue("ORDERS"));
  const Caller& dave = As("dave");
  const Caller& mike = As("mike");
  v1::BeginRequest begin;
  begin.set_coordinator("CICSA");
  begin.set_qualifier("QM1");
  begin.set_xid("xid-1");
  v1::BeginResponse begun;
  ASSERT_OK(dave.coord->Begin(dave.Context().get(), begin, &begun));
  v1::GetResponse got;
  ASSERT_OK(dave.Get("ORDERS", begun.uow(), &got));
  ASSERT_TRUE(got.has_message());
  // The unit is dave's: bob (a program on ORDERS) cannot add to it.
  v1::InsertRequest insert;
  insert.set_uow(begun.uow());
  insert.mutable_message()->set_queue("ORDERS");
  v1::InsertResponse inserted;
  EXPECT_DENIED(As("bob").qm->Insert(As("bob").Context().get(), insert, &inserted));
  v1::PrepareRequest prepare;
  prepare.set_coordinator("CICSA");
  prepare.set_qualifier("QM1");
  prepare.set_xid("xid-1");
  v1::PrepareResponse prepared;
  ASSERT_OK(dave.coord->Prepare(dave.Context().get(), prepare, &prepared));

  // mike, a coordinator for CICSB, neither sees nor resolves CICSA's unit.
  EXPECT_DENIED(mike.Connect("CICSA"));
  EXPECT_DENIED(mike.coord->Begin(mike.Context().get(), begin, &begun));
  v1::ResolveRequest resolve;
  resolve.set_coordinator("CICSA");
  resolve.set_qualifier("QM1");
  v1::XidOutcome* outcome = resolve.add_outcomes();
  outcome->set_xid("xid-1");
  outcome->set_outcome(v1::BACKOUT);
  v1::ResolveResponse resolved;
  EXPECT_DENIED(mike.coord->Resolve(mike.Context().get(), resolve, &resolved));
  v1::CommitRequest commit;
  commit.set_coordinator("CICSA");
  commit.set_qualifier("QM1");
  commit.set_xid("xid-1");
  v1::CommitResponse committed;
  EXPECT_DENIED(mike.coord->Commit(mike.Context().get(), commit, &committed));
  v1::ListInDoubtResponse listed;
  EXPECT_DENIED(mike.admin->ListInDoubt(mike.Context().get(), v1::ListInDoubtRequest(), &listed));
  v1::ConnectResponse mine;
  ASSERT_OK(mike.Connect("CICSB", &mine));
  EXPECT_EQ(mine.in_doubt_xids_size(), 0);
  // dave's grant names qualifier QM1 only.
  v1::ConnectRequest other_qualifier;
  other_qualifier.set_coordinator("CICSA");
  other_qualifier.set_qualifier("GRP");
  EXPECT_DENIED(dave.coord->Connect(dave.Context().get(), other_qualifier, &mine));

  // Nothing changed: dave finds his unit in doubt and commits it.
  ASSERT_OK(dave.Connect("CICSA", &mine));
  ASSERT_EQ(mine.in_doubt_xids_size(), 1);
  EXPECT_EQ(mine.in_doubt_xids(0), "xid-1");
  ASSERT_OK(dave.coord->Commit(dave.Context().get(), commit, &committed));
  EXPECT_EQ(Depth("ORDERS"), 0u);
}

TEST_F(MutualTlsTest, AdminIsForAdministratorsOnly) {
  EXPECT_OK(As("op").DisplayQueues());
  EXPECT_DENIED(As("alice").DisplayQueues());
  v1::CheckpointResponse checkpoint;
  EXPECT_DENIED(
      As("bob").admin->Checkpoint(As("bob").Context().get(), v1::CheckpointRequest(), &checkpoint));
  v1::AssignRequest assign;
  assign.set_from_session("TERM1");
  assign.set_to_session("TERM2");
  assign.set_force(true);
  v1::AssignResponse assigned;
  EXPECT_DENIED(As("carol").admin->Assign(As("carol").Context().get(), assign, &assigned));
  v1::ShutdownResponse shut;
  EXPECT_DENIED(
      As("mallory").admin->Shutdown(As("mallory").Context().get(), v1::ShutdownRequest(), &shut));
  EXPECT_FALSE(process_->WaitExit(absl::Milliseconds(300)).has_value());  // still serving
  EXPECT_OK(As("op").DisplayQueues());
  EXPECT_TRUE(
      absl::StrContains(process_->Stderr(), "denied: Shutdown by 'mallory': no admin grant"));
}

TEST_F(MutualTlsTest, AConnectionWithoutAClientCertificateIsRefused) {
  Caller anonymous(process_->target(), TlsAs(""));
  EXPECT_EQ(anonymous.Enqueue("ORDERS").error_code(), grpc::StatusCode::UNAVAILABLE);
  Caller plaintext(process_->target(), grpc::InsecureChannelCredentials());
  EXPECT_EQ(plaintext.Enqueue("ORDERS").error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(MutualTlsTest, TheClientLibraryRebindsItsOwnSessionAfterACrash) {
  const auto credentials = [](const std::string& who) {
    client::Credentials c;
    c.tls_ca_file = Pki::Get().ca();
    c.tls_cert_file = Pki::Get().cert(who);
    c.tls_key_file = Pki::Get().key(who);
    return c;
  };
  client::ClientOptions options;
  options.target = process_->target();
  options.credentials = credentials("alice");
  absl::StatusOr<std::unique_ptr<client::Client>> alice = client::Client::Connect(options);
  ASSERT_TRUE(alice.ok()) << alice.status();
  v1::NewMessage message;
  message.set_queue("ORDERS");
  EXPECT_TRUE((*alice)->Enqueue(message).ok());
  message.set_queue("OTHER");
  EXPECT_EQ((*alice)->Enqueue(message).status().code(), absl::StatusCode::kPermissionDenied);

  client::SessionOptions session_options;
  session_options.name = "TERM1";
  session_options.file_path = dir_.path() + "/TERM1.session";
  session_options.target = process_->target();
  session_options.credentials = credentials("carol");
  session_options.reconnect_timeout = absl::Seconds(5);
  {
    absl::StatusOr<std::unique_ptr<client::Session>> carol = client::Session::Open(session_options);
    ASSERT_TRUE(carol.ok()) << carol.status();
    v1::NewMessage input;
    input.set_queue("ORDERS");
    input.set_payload("from TERM1");
    input.set_class_(v1::RECOVERABLE);
    absl::StatusOr<client::Accepted> sent = (*carol)->Send(input);
    ASSERT_TRUE(sent.ok()) << sent.status();
    // Destroyed without Close: the session stays bound, as after a crash.
  }
  absl::StatusOr<std::unique_ptr<client::Session>> again = client::Session::Open(session_options);
  ASSERT_TRUE(again.ok()) << again.status();
  client::SessionOptions erin_options = session_options;
  erin_options.file_path = dir_.path() + "/TERM1.erin.session";
  erin_options.credentials = credentials("erin");
  absl::StatusOr<std::unique_ptr<client::Session>> erin = client::Session::Open(erin_options);
  ASSERT_FALSE(erin.ok());
  EXPECT_EQ(erin.status().code(), absl::StatusCode::kFailedPrecondition) << erin.status();
  EXPECT_EQ(ReasonOf(erin.status()), "SESSION_BOUND") << erin.status();
}

// ---- Tokens, the admin socket, the listening rule, SIGHUP ----------------------

constexpr char kAliceToken[] = "a11ce0000000000000000000000000000token";
constexpr char kOpToken[] = "0p000000000000000000000000000000token";

class TokenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Write(tokens_path(), absl::StrCat(kAliceToken, " alice\n", kOpToken, " op\n"));
    Write(authz_path(), "alice producer ORDERS\nlocal admin\nop admin\n");
  }
  void Start(std::vector<std::string> extra = {}) {
    std::vector<std::string> flags = kFlags;
    flags.insert(flags.end(), extra.begin(), extra.end());
    for (const std::string& f :
         {std::string("--token-file"), tokens_path(), std::string("--authz-file"), authz_path(),
          std::string("--admin-listen"), absl::StrCat("unix:", socket_path())}) {
      flags.push_back(f);
    }
    process_ = std::make_unique<QmgrdProcess>(QMGRD_PATH, dir_.path() + "/data", flags);
    const absl::Status started = process_->Start();
    ASSERT_TRUE(started.ok()) << started;
    admin_socket_ = std::make_unique<Caller>(absl::StrCat("unix:", socket_path()),
                                             grpc::InsecureChannelCredentials());
    for (const char* queue : {"ORDERS", "APP.X"}) ASSERT_OK(admin_socket_->Define(queue));
  }
  std::string tokens_path() const { return dir_.path() + "/tokens.txt"; }
  std::string authz_path() const { return dir_.path() + "/authz.txt"; }
  std::string socket_path() const { return dir_.path() + "/admin.sock"; }
  Caller WithToken(const std::string& token) {
    return Caller(process_->target(), grpc::InsecureChannelCredentials(), token);
  }
  // Waits until stderr holds `text` `count` times.
  bool AwaitStderr(const std::string& text, int count) {
    for (const absl::Time deadline = absl::Now() + absl::Seconds(10); absl::Now() < deadline;) {
      const std::string err = process_->Stderr();
      int found = 0;
      for (size_t at = err.find(text); at != std::string::npos; at = err.find(text, at + 1)) {
        ++found;
      }
      if (found >= count) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  TempDir dir_;
  std::unique_ptr<QmgrdProcess> process_;
  std::unique_ptr<Caller> admin_socket_;
};

TEST_F(TokenTest, TokensIdentifyCallersWithoutTls) {
  ASSERT_NO_FATAL_FAILURE(Start());
  EXPECT_OK(WithToken(kAliceToken).Enqueue("ORDERS"));
  EXPECT_DENIED(WithToken(kAliceToken).Enqueue("APP.X"));
  EXPECT_REFUSED(WithToken("").Enqueue("ORDERS"), kUnauthenticated, "");
  EXPECT_REFUSED(WithToken("not-a-token-of-this-qmgr").Enqueue("ORDERS"), kUnauthenticated, "");
  Caller malformed(process_->target(), grpc::InsecureChannelCredentials());
  grpc::ClientContext context;
  context.AddMetadata("authorization", kAliceToken);  // no "Bearer "
  v1::EnqueueRequest request;
  request.mutable_message()->set_queue("ORDERS");
  v1::EnqueueResponse response;
  EXPECT_REFUSED(malformed.qm->Enqueue(&context, request, &response), kUnauthenticated, "");
  EXPECT_TRUE(absl::StrContains(process_->Stderr(), "unauthenticated: Enqueue: unknown token"));

  // The client library sends its token on every call, streams included.
  client::ClientOptions options;
  options.target = process_->target();
  options.credentials.token = kAliceToken;
  absl::StatusOr<std::unique_ptr<client::Client>> alice = client::Client::Connect(options);
  ASSERT_TRUE(alice.ok()) << alice.status();
  v1::NewMessage message;
  message.set_queue("ORDERS");
  EXPECT_TRUE((*alice)->Enqueue(message).ok());
  absl::StatusOr<std::unique_ptr<client::Producer>> producer = (*alice)->OpenProducer();
  ASSERT_TRUE(producer.ok()) << producer.status();
  EXPECT_TRUE((*producer)->Enqueue(message).ok());
  message.set_queue("APP.X");
  EXPECT_EQ((*producer)->Enqueue(message).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE((*producer)->Close().ok());
}

TEST_F(TokenTest, AdminListensOnAUnixSocketAndNotOnTheMainListener) {
  ASSERT_NO_FATAL_FAILURE(Start());
  struct stat st {};
  ASSERT_EQ(::stat(socket_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_TRUE(absl::StrContains(process_->Stderr(), "Admin served on unix:"));

  // Even an administrator's token is refused Admin on the main listener.
  const grpc::Status refused = WithToken(kOpToken).DisplayQueues();
  EXPECT_REFUSED(refused, kPermissionDenied, "");
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "admin listener"))
      << refused.error_message();
  // On the socket, a caller without a token is `local`, granted admin.
  v1::DisplayQueuesResponse queues;
  ASSERT_OK(admin_socket_->DisplayQueues(&queues));
  EXPECT_EQ(queues.queues_size(), 2);

  std::string output;
  EXPECT_EQ(RunCommand(absl::StrCat(QMGRCTL_PATH, " display queues --server unix:", socket_path()),
                       &output),
            0)
      << output;
  EXPECT_TRUE(absl::StrContains(output, "APP.X")) << output;
  Write(dir_.path() + "/op.token", absl::StrCat(kOpToken, "\n"));
  EXPECT_NE(RunCommand(absl::StrCat(QMGRCTL_PATH, " display queues --server ", process_->target(),
                                    " --token-file ", dir_.path(), "/op.token"),
                       &output),
            0);
  EXPECT_TRUE(absl::StrContains(output, "admin listener")) << output;
  // qmgrctl's token over the socket: op, an administrator too.
  EXPECT_EQ(RunCommand(absl::StrCat(QMGRCTL_PATH, " shutdown --server unix:", socket_path(),
                                    " --token-file ", dir_.path(), "/op.token"),
                       &output),
            0)
      << output;
  EXPECT_EQ(process_->WaitExit(absl::Seconds(20)), 0);
}

TEST_F(TokenTest, AdminOnMainServesAdministratorsOnBothListeners) {
  ASSERT_NO_FATAL_FAILURE(Start({"--admin-on-main"}));
  EXPECT_OK(WithToken(kOpToken).DisplayQueues());
  EXPECT_DENIED(WithToken(kAliceToken).DisplayQueues());
  EXPECT_REFUSED(WithToken("").DisplayQueues(), kUnauthenticated, "");
  EXPECT_OK(admin_socket_->DisplayQueues());
}

TEST_F(TokenTest, SighupReloadsTheRulesAndKeepsThemWhenTheFileIsBad) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const Caller alice = WithToken(kAliceToken);
  EXPECT_DENIED(alice.Enqueue("APP.X"));
  Write(authz_path(), "alice producer ORDERS APP.*\nlocal admin\n");
  process_->Signal(SIGHUP);
  ASSERT_TRUE(AwaitStderr("security: 2 grant(s)", 1)) << process_->Stderr();
  EXPECT_OK(alice.Enqueue("APP.X"));

  Write(authz_path(), "alice producer ORDERS APP.*\nlocal admn\n");
  process_->Signal(SIGHUP);
  ASSERT_TRUE(AwaitStderr("SIGHUP: not reloaded, the previous rules stay", 1))
      << process_->Stderr();
  EXPECT_TRUE(absl::StrContains(process_->Stderr(), "authz.txt:2: unknown role 'admn'"));
  EXPECT_OK(alice.Enqueue("APP.X"));
}

TEST(ListeningRule, BeyondLoopbackWithoutProtectionQmgrdRefusesToStart) {
  TempDir dir;
  QmgrdProcess process(QMGRD_PATH, dir.path() + "/data", kFlags);
  process.set_listen("0.0.0.0:0");
  EXPECT_EQ(process.RunToExit(), 64);
  EXPECT_TRUE(
      absl::StrContains(process.Stderr(), "refusing to listen on 0.0.0.0:0 without TLS or tokens"))
      << process.Stderr();
}

TEST(ListeningRule, OnLoopbackWithoutProtectionQmgrdSaysSo) {
  TempDir dir;
  QmgrdProcess process(QMGRD_PATH, dir.path() + "/data", kFlags);
  const absl::Status started = process.Start();
  ASSERT_TRUE(started.ok()) << started;
  EXPECT_TRUE(absl::StrContains(process.Stderr(), "WARNING: unprotected: no TLS and no tokens"));
  EXPECT_TRUE(absl::StrContains(process.Stderr(), "WARNING: no --authz-file"));
}

}  // namespace
}  // namespace qmgr
