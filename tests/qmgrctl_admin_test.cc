// `qmgrctl display|queue|shutdown|assign` run as a program against the real
// qmgrd on a loopback port: what each verb's table shows, that --json parses
// back into the proto the docs name, and the exit codes for a bad argument
// (64), a refusal such as an unknown name (4, with qmgrd's message) and no
// server (69). Sessions and their output are set up through the generated
// stubs, as tests/qmgrd_sessions_test.cc does.
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "qmgr/v1/qmgr.grpc.pb.h"
#include "tests/support/command.h"
#include "tests/support/qmgrd_process.h"
#include "tests/support/temp_dir.h"

namespace qmgr {
namespace {

namespace v1 = qmgr::v1;
using qmgr::testing::CommandResult;
using qmgr::testing::QmgrdProcess;
using qmgr::testing::RunCommand;
using qmgr::testing::TempDir;

// Small segments: a test's qmgrd preallocates two of them at start. A short
// grace: a normal shutdown waits it out for a session's unacknowledged output.
const std::vector<std::string> kFlags = {"--log-segment-bytes", "4MiB", "--shutdown-grace-ms",
                                         "500"};
constexpr absl::Duration kCallTimeout = absl::Seconds(10);

CommandResult Qmgrctl(const std::string& args) { return RunCommand(QMGRCTL_PATH, args); }

template <typename Proto>
Proto ParseJson(const std::string& json) {
  Proto proto;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &proto);
  EXPECT_TRUE(status.ok()) << status << "\n" << json;
  return proto;
}

class QmgrctlAdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    process_ = std::make_unique<QmgrdProcess>(QMGRD_PATH, dir_.path() + "/data", kFlags);
    const absl::Status started = process_->Start();
    ASSERT_TRUE(started.ok()) << started;
    auto channel = grpc::CreateChannel(process_->target(), grpc::InsecureChannelCredentials());
    qm_ = v1::QueueManager::NewStub(channel);
  }

  // qmgrctl VERB ARGS --server <this qmgrd>.
  CommandResult Ctl(const std::string& args) {
    return Qmgrctl(absl::StrCat(args, " --server ", process_->target()));
  }

  std::unique_ptr<grpc::ClientContext> Ctx() {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
    return context;
  }
  grpc::Status Enqueue(const std::string& queue, const std::string& payload) {
    v1::EnqueueRequest request;
    request.mutable_message()->set_queue(queue);
    request.mutable_message()->set_payload(payload);
    request.mutable_message()->set_class_(v1::RECOVERABLE);
    v1::EnqueueResponse response;
    return qm_->Enqueue(Ctx().get(), request, &response);
  }
  void OpenSession(const std::string& session) {
    v1::OpenSessionRequest request;
    request.set_session(session);
    v1::OpenSessionResponse response;
    const grpc::Status s = qm_->OpenSession(Ctx().get(), request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_FALSE(response.resync_required());
  }
  v1::QueueAttributes Attributes(const std::string& queue) {
    const CommandResult r = Ctl("display queues --json " + queue);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    const auto response = ParseJson<v1::DisplayQueuesResponse>(r.out);
    return response.queues_size() == 1 ? response.queues(0).attributes() : v1::QueueAttributes();
  }

  TempDir dir_;
  std::unique_ptr<QmgrdProcess> process_;
  std::unique_ptr<v1::QueueManager::Stub> qm_;
};

// Every online verb says "unreachable" (69) when nothing listens.
TEST(QmgrctlUnreachableTest, EveryVerbExits69WithoutAServer) {
  for (const char* verb :
       {"display queues", "display sessions", "queue define Q", "queue alter Q", "queue delete Q",
        "queue stop Q", "queue start Q", "shutdown", "assign A --to B"}) {
    const CommandResult r =
        Qmgrctl(absl::StrCat(verb, " --server 127.0.0.1:1 --connect-timeout-ms 50"));
    EXPECT_EQ(r.exit_code, 69) << verb << ": " << r.err;
    EXPECT_CONTAINS(r.err, "cannot reach qmgrd at 127.0.0.1:1");
  }
}

// Bad arguments are refused before qmgrd is asked (64); unknown names are
// refused by qmgrd (4) and its message is shown.
TEST_F(QmgrctlAdminTest, BadArgumentsExit64AndUnknownNamesExit4) {
  for (const char* args : {"queue define Q --class BOGUS", "queue define Q --max-depth -1",
                           "queue alter Q --backout-threshold x", "queue stop", "assign A",
                           "display", "display queues --bogus"}) {
    const CommandResult r = Ctl(args);
    EXPECT_EQ(r.exit_code, 64) << args << ": " << r.out << r.err;
    EXPECT_FALSE(r.err.empty()) << args;
  }
  EXPECT_CONTAINS(Ctl("queue define Q --class BOGUS").err, "unknown message class 'BOGUS'");
  // Nothing was defined by the refused verbs.
  EXPECT_EQ(Ctl("display queues Q").exit_code, 4);

  for (const char* args : {"display queues NOPE", "queue alter NOPE --max-depth 1",
                           "queue delete NOPE", "queue stop NOPE", "queue start NOPE"}) {
    const CommandResult r = Ctl(args);
    EXPECT_EQ(r.exit_code, 4) << args << ": " << r.out << r.err;
    EXPECT_CONTAINS(r.err, "queue 'NOPE' is not defined");
  }
  const CommandResult r = Ctl("display sessions NOPE");
  EXPECT_EQ(r.exit_code, 4) << r.err;
  EXPECT_CONTAINS(r.err, "session 'NOPE' is unknown");
}

// define -> display -> alter -> stop -> start -> delete: each verb's text,
// its JSON, and what display shows afterwards.
TEST_F(QmgrctlAdminTest, QueueDefineAlterStopStartDeleteRoundTrip) {
  ASSERT_EQ(Ctl("queue define ORDERS.BO").exit_code, 0);
  CommandResult r =
      Ctl("queue define ORDERS --class fastpath --max-depth 100 --backout-threshold 3 "
          "--backout-queue ORDERS.BO");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "queue ORDERS defined");
  EXPECT_EQ(Ctl("queue define ORDERS").exit_code, 4);

  ASSERT_TRUE(Enqueue("ORDERS", "one").ok());
  ASSERT_TRUE(Enqueue("ORDERS", "two").ok());
  r = Ctl("display queues ORDERS");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "QUEUE");
  EXPECT_CONTAINS(r.out, "ORDERS.BO/3");
  EXPECT_CONTAINS(r.out, "FASTPATH");
  EXPECT_CONTAINS(r.out, "1 queue(s); memory ");
  EXPECT_CONTAINS(r.out, "0 open unit(s)");

  r = Ctl("display queues --json ORDERS");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Zero values are printed: a script finds every key.
  EXPECT_CONTAINS(r.out, "\"open_units\"");
  EXPECT_CONTAINS(r.out, "\"expired_discarded\"");
  auto shown = ParseJson<v1::DisplayQueuesResponse>(r.out);
  ASSERT_EQ(shown.queues_size(), 1);
  EXPECT_EQ(shown.queues(0).name(), "ORDERS");
  EXPECT_EQ(shown.queues(0).depth(), 2u);
  EXPECT_EQ(shown.queues(0).attributes().default_class(), v1::FASTPATH);
  EXPECT_EQ(shown.queues(0).attributes().max_depth(), 100u);

  // Every queue when none is named.
  r = Ctl("display queues");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "2 queue(s)");

  // alter changes only what it is given.
  r = Ctl("queue alter ORDERS --max-depth 200 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(ParseJson<v1::AlterQueueRequest>(r.out).attributes().max_depth(), 200u);
  v1::QueueAttributes a = Attributes("ORDERS");
  EXPECT_EQ(a.max_depth(), 200u);
  EXPECT_EQ(a.default_class(), v1::FASTPATH);
  EXPECT_EQ(a.backout_threshold(), 3u);
  EXPECT_EQ(a.backout_queue(), "ORDERS.BO");

  r = Ctl("queue stop ORDERS --put");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "queue ORDERS: put inhibited, get allowed\n");
  EXPECT_FALSE(Enqueue("ORDERS", "three").ok());
  a = Attributes("ORDERS");
  EXPECT_TRUE(a.put_inhibited());
  EXPECT_FALSE(a.get_inhibited());
  EXPECT_EQ(a.max_depth(), 200u);

  r = Ctl("queue stop ORDERS");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "queue ORDERS: put inhibited, get inhibited\n");
  EXPECT_CONTAINS(Ctl("display queues ORDERS").out, "put,get");
  r = Ctl("queue start ORDERS --get --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(ParseJson<v1::AlterQueueRequest>(r.out).attributes().put_inhibited());
  a = Attributes("ORDERS");
  EXPECT_TRUE(a.put_inhibited());
  EXPECT_FALSE(a.get_inhibited());
  r = Ctl("queue start ORDERS");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "queue ORDERS: put allowed, get allowed\n");
  EXPECT_TRUE(Enqueue("ORDERS", "three").ok());

  // A queue holding messages goes only with --purge.
  r = Ctl("queue delete ORDERS");
  EXPECT_EQ(r.exit_code, 4);
  EXPECT_CONTAINS(r.err, "delete with purge");
  r = Ctl("queue delete ORDERS --purge");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "queue ORDERS deleted with its messages\n");
  r = Ctl("display queues ORDERS");
  EXPECT_EQ(r.exit_code, 4);
  EXPECT_CONTAINS(r.err, "queue 'ORDERS' is not defined");
}

// display sessions, then assign: refused while output is sent but not
// acknowledged, done with --force (that message marked possibly duplicate).
// display uow: a leased unit with its message, then a coordinator's unit in
// doubt with its XID; the table and --json agree.
TEST_F(QmgrctlAdminTest, DisplayUowShowsOwnersAgesMessagesAndUnitsInDoubt) {
  CommandResult r = Ctl("display uow");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "no open units of work");
  ASSERT_EQ(Ctl("queue define WORK").exit_code, 0);
  ASSERT_TRUE(Enqueue("WORK", "one").ok());
  ASSERT_TRUE(Enqueue("WORK", "two").ok());
  v1::GetRequest get;
  get.set_queue("WORK");
  v1::GetResponse got;
  ASSERT_TRUE(qm_->Get(Ctx().get(), get, &got).ok());
  auto channel = grpc::CreateChannel(process_->target(), grpc::InsecureChannelCredentials());
  auto coordinator = v1::Coordinator::NewStub(channel);
  v1::BeginRequest begin;
  begin.set_coordinator("CICSA");
  begin.set_qualifier("QM1");
  begin.set_xid("XID1");
  v1::BeginResponse begun;
  ASSERT_TRUE(coordinator->Begin(Ctx().get(), begin, &begun).ok());
  get.set_uow(begun.uow());
  ASSERT_TRUE(qm_->Get(Ctx().get(), get, &got).ok());
  v1::PrepareRequest prepare;
  prepare.set_coordinator("CICSA");
  prepare.set_qualifier("QM1");
  prepare.set_xid("XID1");
  v1::PrepareResponse prepared;
  ASSERT_TRUE(coordinator->Prepare(Ctx().get(), prepare, &prepared).ok());

  r = Ctl("display uow");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "lease");
  EXPECT_CONTAINS(r.out, "coordinator CICSA");
  EXPECT_CONTAINS(r.out, absl::BytesToHexString("XID1"));
  EXPECT_CONTAINS(r.out, "2 open unit(s)");
  r = Ctl("display uow --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto units = ParseJson<v1::DisplayUnitsResponse>(r.out);
  ASSERT_EQ(units.units_size(), 2);
  int in_doubt = 0;
  for (const v1::UnitInfo& unit : units.units()) {
    EXPECT_EQ(unit.messages(), 1u);
    in_doubt += unit.in_doubt();
    EXPECT_EQ(unit.xid(), unit.in_doubt() ? "XID1" : "");
  }
  EXPECT_EQ(in_doubt, 1);
}

// display queues: messages held in doubt, the head's age, rates, counts by
// class; display uow: each unit's oldest record and the log since it.
TEST_F(QmgrctlAdminTest, DisplayQueuesRatesAgesClassesInDoubtAndUnitLog) {
  ASSERT_EQ(Ctl("queue define MIX").exit_code, 0);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Enqueue("MIX", "recoverable").ok());
  v1::EnqueueRequest irrecoverable;
  irrecoverable.mutable_message()->set_queue("MIX");
  irrecoverable.mutable_message()->set_payload("lost at a crash");
  irrecoverable.mutable_message()->set_class_(v1::IRRECOVERABLE);
  v1::EnqueueResponse enqueued;
  ASSERT_TRUE(qm_->Enqueue(Ctx().get(), irrecoverable, &enqueued).ok());
  // One message in a leased unit, one in a coordinator's unit in doubt.
  v1::GetRequest get;
  get.set_queue("MIX");
  v1::GetResponse leased;
  ASSERT_TRUE(qm_->Get(Ctx().get(), get, &leased).ok());
  auto channel = grpc::CreateChannel(process_->target(), grpc::InsecureChannelCredentials());
  auto coordinator = v1::Coordinator::NewStub(channel);
  v1::BeginRequest begin;
  begin.set_coordinator("CICSA");
  begin.set_qualifier("QM1");
  begin.set_xid("XID9");
  v1::BeginResponse begun;
  ASSERT_TRUE(coordinator->Begin(Ctx().get(), begin, &begun).ok());
  get.set_uow(begun.uow());
  v1::GetResponse held;
  ASSERT_TRUE(qm_->Get(Ctx().get(), get, &held).ok());
  v1::PrepareRequest prepare;
  prepare.set_coordinator("CICSA");
  prepare.set_qualifier("QM1");
  prepare.set_xid("XID9");
  v1::PrepareResponse prepared;
  ASSERT_TRUE(coordinator->Prepare(Ctx().get(), prepare, &prepared).ok());
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_TRUE(Enqueue("MIX", "later").ok());  // log written after both units' records

  CommandResult r = Ctl("display queues MIX --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "\"enqueue_rate\"");
  auto shown = ParseJson<v1::DisplayQueuesResponse>(r.out);
  ASSERT_EQ(shown.queues_size(), 1);
  const v1::QueueInfo& q = shown.queues(0);
  EXPECT_EQ(q.depth(), 4u);
  EXPECT_EQ(q.taken(), 2u);
  EXPECT_EQ(q.in_doubt(), 1u);
  EXPECT_GE(q.oldest_message_age_ms(), 100u);
  // Six arrivals and two Gets within the 10 s window (or since the queue
  // was defined, moments ago).
  EXPECT_GT(q.enqueue_rate(), 0.5);
  EXPECT_GT(q.get_rate(), 0.1);
  EXPECT_GT(q.enqueue_rate(), q.get_rate());
  std::map<v1::MessageClass, uint64_t> classes;
  for (const v1::ClassCount& c : q.classes()) classes[c.class_()] = c.messages();
  EXPECT_EQ(classes,
            (std::map<v1::MessageClass, uint64_t>{{v1::RECOVERABLE, 3}, {v1::IRRECOVERABLE, 1}}));
  r = Ctl("display queues MIX");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* column : {"IN-DOUBT", "OLDEST", "ENQ/S", "GET/S", "BY-CLASS"}) {
    EXPECT_CONTAINS(r.out, column);
  }
  EXPECT_CONTAINS(r.out, "RECOVERABLE:3,IRRECOVERABLE:1");

  r = Ctl("display uow --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto units = ParseJson<v1::DisplayUnitsResponse>(r.out);
  ASSERT_EQ(units.units_size(), 2);
  uint64_t first_lsns[2] = {0, 0};
  for (const v1::UnitInfo& unit : units.units()) {
    // Each took a logged message: its GET is its first record.
    EXPECT_GT(unit.first_lsn(), 0u);
    EXPECT_GT(unit.log_bytes_since_first(), 0u);
    first_lsns[unit.in_doubt()] = unit.first_lsn();
  }
  EXPECT_LT(first_lsns[0], first_lsns[1]) << "the leased unit's GET came first";
  r = Ctl("display uow");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "FIRST-LSN");
  EXPECT_CONTAINS(r.out, absl::StrCat(" ", first_lsns[1], " "));
}

TEST_F(QmgrctlAdminTest, DisplaySessionsAndAssignWithAndWithoutForce) {
  ASSERT_EQ(Ctl("queue define OUT.A --output-of-session A").exit_code, 0);
  ASSERT_EQ(Ctl("queue define OUT.B --output-of-session B").exit_code, 0);
  ASSERT_NO_FATAL_FAILURE(OpenSession("A"));
  ASSERT_NO_FATAL_FAILURE(OpenSession("B"));
  ASSERT_TRUE(Enqueue("OUT.A", "queued").ok());

  CommandResult r = Ctl("display sessions");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "SESSION");
  EXPECT_CONTAINS(r.out, "OUT.A");
  EXPECT_CONTAINS(r.out, "2 session(s)");
  EXPECT_CONTAINS(r.out, "OPENED");
  EXPECT_CONTAINS(r.out, "CLOSED");
  r = Ctl("display sessions A --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "\"pending_input\"");
  auto sessions = ParseJson<v1::DisplaySessionsResponse>(r.out);
  ASSERT_EQ(sessions.sessions_size(), 1);
  EXPECT_EQ(sessions.sessions(0).name(), "A");
  EXPECT_TRUE(sessions.sessions(0).bound());
  EXPECT_TRUE(sessions.sessions(0).data_traffic());
  EXPECT_EQ(sessions.sessions(0).output_queue(), "OUT.A");
  EXPECT_EQ(sessions.sessions(0).output_depth(), 1u);
  // Bound by this test a moment ago, never closed.
  const int64_t now_us = absl::ToUnixMicros(absl::Now());
  EXPECT_GT(sessions.sessions(0).opened_time_us(), now_us - 60'000'000);
  EXPECT_LE(sessions.sessions(0).opened_time_us(), now_us);
  EXPECT_EQ(sessions.sessions(0).closed_time_us(), 0);

  r = Ctl("assign A --to B");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "1 output message(s) moved from session A to session B\n");
  r = Ctl("assign A --to A");
  EXPECT_EQ(r.exit_code, 4);
  EXPECT_CONTAINS(r.err, "assign refused: ");

  // Output sent to A and not acknowledged.
  ASSERT_TRUE(Enqueue("OUT.A", "sent").ok());
  grpc::ClientContext receiving;
  v1::ReceiveRequest receive;
  receive.set_session("A");
  auto reader = qm_->Receive(&receiving, receive);
  v1::ReceiveResponse output;
  ASSERT_TRUE(reader->Read(&output));
  r = Ctl("display sessions A");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, absl::StrCat(" ", output.message().id(), " "));

  r = Ctl("assign A --to B");
  EXPECT_EQ(r.exit_code, 4) << r.out;
  EXPECT_CONTAINS(r.err, "assign refused: ");
  r = Ctl("assign A --to B --force --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto assigned = ParseJson<v1::AssignResponse>(r.out);
  EXPECT_EQ(assigned.moved(), 1u);
  EXPECT_EQ(assigned.possible_duplicate_message_id(), output.message().id());
  EXPECT_EQ(ParseJson<v1::DisplaySessionsResponse>(Ctl("display sessions B --json").out)
                .sessions(0)
                .output_depth(),
            2u);
  receiving.TryCancel();
  reader->Finish();
}

TEST_F(QmgrctlAdminTest, ShutdownMakesQmgrdExitZero) {
  const CommandResult r = Ctl("shutdown");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "qmgrd is shutting down (NORMAL)\n");
  EXPECT_EQ(process_->WaitExit(absl::Seconds(20)), 0) << process_->Stderr();
}

TEST_F(QmgrctlAdminTest, ShutdownImmediateMakesQmgrdExitZero) {
  const CommandResult r = Ctl("shutdown --immediate --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(ParseJson<v1::ShutdownRequest>(r.out).mode(), v1::IMMEDIATE);
  EXPECT_EQ(process_->WaitExit(absl::Seconds(20)), 0) << process_->Stderr();
}

}  // namespace
}  // namespace qmgr
