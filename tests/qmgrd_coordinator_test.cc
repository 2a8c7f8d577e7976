// Two-phase commit over real gRPC (docs/in-doubt.md is the contract): the
// real qmgrd on a loopback port, driven through the generated Coordinator,
// QueueManager and Admin stubs. Each Coordinator RPC's success and refusals
// (code and reason); units in doubt across SIGKILLs, restarts, checkpoints
// and retired log segments; the outcome retried after a lost answer; names
// changed under units in doubt; resolution by hand (Admin and the qmgrctl
// binary) and the coordinator's conflicting decision; Resolve's counts; and
// the lease that backs out a unit whose coordinator left before Prepare.
#include <signal.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/rpc_status.h"
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

// Small segments: a test's qmgrd preallocates two of them at start.
const std::vector<std::string> kFlags = {"--log-segment-bytes", "4MiB", "--qmgr-name", "QM1",
                                         "--group-name",        "GRP"};
constexpr absl::Duration kCallTimeout = absl::Seconds(10);
constexpr char kCics[] = "CICSA";

// Runs a command; its exit code and stdout+stderr.
int RunCommand(const std::string& command, std::string* output) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  char buffer[4096];
  output->clear();
  while (size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) output->append(buffer, n);
  return WEXITSTATUS(::pclose(pipe));
}

// One qmgrd on one data directory, restartable: each start is a new child
// process (on a new port) and a new channel.
class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(Start());
    for (const char* queue : {"IN", "OUT"}) ASSERT_NO_FATAL_FAILURE(Define(queue));
  }

  // With flags_ unless told otherwise.
  void Start(std::optional<std::vector<std::string>> flags = std::nullopt) {
    process_ = std::make_unique<QmgrdProcess>(QMGRD_PATH, data_dir(), flags.value_or(flags_));
    const absl::Status started = process_->Start();
    ASSERT_TRUE(started.ok()) << started;
    auto channel = grpc::CreateChannel(process_->target(), grpc::InsecureChannelCredentials());
    qm_ = v1::QueueManager::NewStub(channel);
    admin_ = v1::Admin::NewStub(channel);
    coord_ = v1::Coordinator::NewStub(channel);
  }
  void Kill() {
    process_->Signal(SIGKILL);
    process_->WaitExit(absl::Seconds(10));
  }
  // SIGKILL, then an emergency restart from the log.
  void KillAndRestart(std::optional<std::vector<std::string>> flags = std::nullopt) {
    Kill();
    ASSERT_NO_FATAL_FAILURE(Start(std::move(flags)));
  }
  // SIGTERM (a normal shutdown), then a restart.
  void StopAndRestart() {
    process_->Signal(SIGTERM);
    ASSERT_EQ(process_->WaitExit(absl::Seconds(20)), 0) << process_->Stderr();
    ASSERT_NO_FATAL_FAILURE(Start());
  }
  std::string data_dir() const { return dir_.path() + "/data"; }

  std::unique_ptr<grpc::ClientContext> Ctx() {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
    return context;
  }

  void Define(const std::string& queue) {
    v1::DefineQueueRequest request;
    request.set_queue(queue);
    v1::DefineQueueResponse response;
    ASSERT_OK(admin_->DefineQueue(Ctx().get(), request, &response));
  }
  void Enqueue(const std::string& queue, const std::string& payload) {
    v1::EnqueueRequest request;
    request.mutable_message()->set_queue(queue);
    request.mutable_message()->set_payload(payload);
    v1::EnqueueResponse response;
    ASSERT_OK(qm_->Enqueue(Ctx().get(), request, &response));
  }
  grpc::Status Get(uint64_t uow, const std::string& queue, v1::GetResponse* response) {
    v1::GetRequest request;
    request.set_uow(uow);
    request.set_queue(queue);
    return qm_->Get(Ctx().get(), request, response);
  }
  grpc::Status Insert(uint64_t uow, const std::string& queue, const std::string& payload) {
    v1::InsertRequest request;
    request.set_uow(uow);
    request.mutable_message()->set_queue(queue);
    request.mutable_message()->set_payload(payload);
    v1::InsertResponse response;
    return qm_->Insert(Ctx().get(), request, &response);
  }
  v1::QueueInfo Queue(const std::string& name) {
    v1::DisplayQueuesRequest request;
    request.add_queues(name);
    v1::DisplayQueuesResponse response;
    const grpc::Status s = admin_->DisplayQueues(Ctx().get(), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response.queues().empty() ? v1::QueueInfo() : response.queues(0);
  }
  std::vector<std::string> Browse(const std::string& queue) {
    v1::BrowseRequest request;
    request.set_queue(queue);
    v1::BrowseResponse response;
    EXPECT_OK(admin_->Browse(Ctx().get(), request, &response));
    std::vector<std::string> payloads;
    for (const v1::Message& m : response.messages()) payloads.push_back(m.payload());
    return payloads;
  }
  void Checkpoint() {
    v1::CheckpointRequest request;
    v1::CheckpointResponse response;
    ASSERT_OK(admin_->Checkpoint(Ctx().get(), request, &response));
  }

  // Coordinator calls.
  grpc::Status Connect(const std::string& coordinator, const std::string& qualifier,
                       std::vector<std::string>* xids = nullptr,
                       v1::ConnectResponse* out = nullptr) {
    v1::ConnectRequest request;
    request.set_coordinator(coordinator);
    request.set_qualifier(qualifier);
    v1::ConnectResponse response;
    grpc::Status s = coord_->Connect(Ctx().get(), request, &response);
    if (xids != nullptr)
      xids->assign(response.in_doubt_xids().begin(), response.in_doubt_xids().end());
    if (out != nullptr) *out = response;
    return s;
  }
  template <typename Request>
  Request Key(const std::string& xid, const std::string& coordinator,
              const std::string& qualifier) {
    Request request;
    request.set_coordinator(coordinator);
    request.set_qualifier(qualifier);
    request.set_xid(xid);
    return request;
  }
  grpc::Status Begin(const std::string& xid, uint64_t* uow = nullptr,
                     const std::string& coordinator = kCics, const std::string& qualifier = "QM1") {
    v1::BeginResponse response;
    grpc::Status s =
        coord_->Begin(Ctx().get(), Key<v1::BeginRequest>(xid, coordinator, qualifier), &response);
    if (uow != nullptr) *uow = response.uow();
    return s;
  }
  grpc::Status Prepare(const std::string& xid, const std::string& coordinator = kCics,
                       const std::string& qualifier = "QM1") {
    v1::PrepareResponse response;
    return coord_->Prepare(Ctx().get(), Key<v1::PrepareRequest>(xid, coordinator, qualifier),
                           &response);
  }
  grpc::Status Commit(const std::string& xid, const std::string& coordinator = kCics,
                      const std::string& qualifier = "QM1") {
    v1::CommitResponse response;
    return coord_->Commit(Ctx().get(), Key<v1::CommitRequest>(xid, coordinator, qualifier),
                          &response);
  }
  grpc::Status Backout(const std::string& xid, const std::string& coordinator = kCics,
                       const std::string& qualifier = "QM1") {
    v1::CoordinatorBackoutResponse response;
    return coord_->Backout(
        Ctx().get(), Key<v1::CoordinatorBackoutRequest>(xid, coordinator, qualifier), &response);
  }
  grpc::Status Forget(const std::vector<std::string>& xids, const std::string& coordinator = kCics,
                      const std::string& qualifier = "QM1") {
    v1::ForgetRequest request;
    request.set_coordinator(coordinator);
    request.set_qualifier(qualifier);
    for (const std::string& xid : xids) request.add_xids(xid);
    v1::ForgetResponse response;
    return coord_->Forget(Ctx().get(), request, &response);
  }
  // Admin: empty names are left out of the request.
  grpc::Status ResolveInDoubt(const std::string& xid, v1::Outcome outcome,
                              const std::string& coordinator = "",
                              const std::string& qualifier = "",
                              const std::string& operator_name = "",
                              v1::ResolveInDoubtResponse* out = nullptr) {
    v1::ResolveInDoubtRequest request;
    request.set_xid(xid);
    request.set_coordinator(coordinator);
    request.set_qualifier(qualifier);
    request.set_outcome(outcome);
    request.set_operator_name(operator_name);
    v1::ResolveInDoubtResponse response;
    grpc::Status s = admin_->ResolveInDoubt(Ctx().get(), request, &response);
    if (out != nullptr) *out = response;
    return s;
  }
  std::vector<v1::InDoubtInfo> ListInDoubt() {
    v1::ListInDoubtRequest request;
    v1::ListInDoubtResponse response;
    EXPECT_OK(admin_->ListInDoubt(Ctx().get(), request, &response));
    return {response.units().begin(), response.units().end()};
  }

  // A unit of `xid` that took the next message of IN and inserted "reply"
  // into OUT, prepared. Returns the message taken.
  v1::Message PrepareOne(const std::string& xid, const std::string& coordinator = kCics) {
    uint64_t uow = 0;
    EXPECT_OK(Begin(xid, &uow, coordinator));
    v1::GetResponse got;
    EXPECT_OK(Get(uow, "IN", &got));
    EXPECT_TRUE(got.has_message());
    EXPECT_OK(Insert(uow, "OUT", "reply to " + got.message().payload()));
    EXPECT_OK(Prepare(xid, coordinator));
    return got.message();
  }
  // Locked by a unit in doubt: no Get sees the message, DisplayQueues shows
  // it taken.
  void ExpectLocked(uint64_t taken) {
    v1::GetResponse none;
    ASSERT_OK(Get(0, "IN", &none));
    EXPECT_FALSE(none.has_message());
    EXPECT_EQ(Queue("IN").depth(), 0u);
    EXPECT_EQ(Queue("IN").taken(), taken);
    EXPECT_EQ(Queue("OUT").depth(), 0u);
  }

  std::vector<std::string> flags_ = kFlags;
  TempDir dir_;
  std::unique_ptr<QmgrdProcess> process_;
  std::unique_ptr<v1::QueueManager::Stub> qm_;
  std::unique_ptr<v1::Admin::Stub> admin_;
  std::unique_ptr<v1::Coordinator::Stub> coord_;
};

// --- Every call's refusals ---------------------------------------------------

TEST_F(CoordinatorTest, EveryCallRefusesBadNamesAndForeignQualifiers) {
  const std::string long_name(65, 'c');
  const std::string long_xid(141, 'x');
  v1::ConnectResponse answered;
  ASSERT_OK(Connect(kCics, "QM1", nullptr, &answered));
  EXPECT_EQ(answered.qmgr_name(), "QM1");
  EXPECT_EQ(answered.group_name(), "GRP");
  EXPECT_OK(Connect(kCics, "GRP"));  // the group's name is a qualifier too

  for (const auto& [coordinator, qualifier, xid, code] :
       std::vector<std::tuple<std::string, std::string, std::string, absl::StatusCode>>{
           {"", "QM1", "x1", absl::StatusCode::kInvalidArgument},
           {long_name, "QM1", "x1", absl::StatusCode::kInvalidArgument},
           {kCics, "", "x1", absl::StatusCode::kInvalidArgument},
           {kCics, "QM2", "x1", absl::StatusCode::kFailedPrecondition},
       }) {
    SCOPED_TRACE(absl::StrCat("coordinator '", coordinator, "' qualifier '", qualifier, "'"));
    EXPECT_EQ(testing::Of(Connect(coordinator, qualifier)).code, code);
    EXPECT_EQ(testing::Of(Begin(xid, nullptr, coordinator, qualifier)).code, code);
    EXPECT_EQ(testing::Of(Prepare(xid, coordinator, qualifier)).code, code);
    EXPECT_EQ(testing::Of(Commit(xid, coordinator, qualifier)).code, code);
    EXPECT_EQ(testing::Of(Backout(xid, coordinator, qualifier)).code, code);
    EXPECT_EQ(testing::Of(Forget({xid}, coordinator, qualifier)).code, code);
    v1::ResolveRequest resolve;
    resolve.set_coordinator(coordinator);
    resolve.set_qualifier(qualifier);
    v1::ResolveResponse resolved;
    EXPECT_EQ(testing::Of(coord_->Resolve(Ctx().get(), resolve, &resolved)).code, code);
  }
  const grpc::Status foreign = Begin("x1", nullptr, kCics, "QM2");
  EXPECT_TRUE(absl::StrContains(foreign.error_message(), "neither this queue manager's name 'QM1'"))
      << foreign.error_message();

  for (const std::string& xid : {std::string(), long_xid}) {
    EXPECT_REFUSED(Begin(xid), kInvalidArgument, "");
    EXPECT_REFUSED(Prepare(xid), kInvalidArgument, "");
    EXPECT_REFUSED(Commit(xid), kInvalidArgument, "");
    EXPECT_REFUSED(Backout(xid), kInvalidArgument, "");
    EXPECT_REFUSED(Forget({xid}), kInvalidArgument, "");
  }
  // Bounded batches.
  v1::ResolveRequest many;
  many.set_coordinator(kCics);
  many.set_qualifier("QM1");
  v1::ForgetRequest forget_many;
  forget_many.set_coordinator(kCics);
  forget_many.set_qualifier("QM1");
  for (int i = 0; i <= 10000; ++i) {
    many.add_outcomes()->set_xid(absl::StrCat(i));
    forget_many.add_xids(absl::StrCat(i));
  }
  v1::ResolveResponse resolved_many;
  EXPECT_REFUSED(coord_->Resolve(Ctx().get(), many, &resolved_many), kInvalidArgument, "");
  v1::ForgetResponse forgot_many;
  EXPECT_REFUSED(coord_->Forget(Ctx().get(), forget_many, &forgot_many), kInvalidArgument, "");
  // XIDs never seen.
  EXPECT_REFUSED(Prepare("nobody"), kNotFound, "");
  EXPECT_REFUSED(Commit("nobody"), kNotFound, "");
  EXPECT_REFUSED(Backout("nobody"), kNotFound, "");
  EXPECT_OK(Forget({"nobody"}));  // nothing remembered: nothing to forget
}

// --- The life of a coordinated unit ----------------------------------------------

TEST_F(CoordinatorTest, BeginGetInsertPrepareCommitThenRetriesAndForget) {
  ASSERT_NO_FATAL_FAILURE(Enqueue("IN", "m1"));
  ASSERT_NO_FATAL_FAILURE(Enqueue("IN", "m2"));
  std::vector<std::string> xids;
  ASSERT_OK(Connect(kCics, "QM1", &xids));
  EXPECT_TRUE(xids.empty());

  uint64_t uow = 0;
  v1::BeginResponse begun;
  ASSERT_OK(coord_->Begin(Ctx().get(), Key<v1::BeginRequest>("x1", kCics, "QM1"), &begun));
  uow = begun.uow();
  EXPECT_NE(uow, 0u);
  EXPECT_GT(begun.lease_ms(), 0u);
  EXPECT_REFUSED(Begin("x1"), kAlreadyExists, "");
  v1::GetResponse got;
  ASSERT_OK(Get(uow, "IN", &got));
  ASSERT_EQ(got.message().payload(), "m1");
  EXPECT_EQ(got.uow(), uow);
  ASSERT_OK(Insert(uow, "OUT", "reply"));
  // The program API does not end a coordinator's unit.
  v1::SyncPointRequest sync;
  sync.set_uow(uow);
  v1::SyncPointResponse synced;
  EXPECT_REFUSED(qm_->SyncPoint(Ctx().get(), sync, &synced), kFailedPrecondition, "");
  // Nor may a ProgramStream use it: the unit is held by the lease.
  {
    grpc::ClientContext context;
    auto stream = qm_->ProgramStream(&context);
    v1::ProgramRequest request;
    request.mutable_insert()->set_uow(uow);
    request.mutable_insert()->mutable_message()->set_queue("OUT");
    ASSERT_TRUE(stream->Write(request));
    v1::ProgramResponse response;
    ASSERT_TRUE(stream->Read(&response));
    EXPECT_EQ(response.error().code(), grpc::StatusCode::NOT_FOUND);
    stream->WritesDone();
    EXPECT_OK(stream->Finish());
  }

  ASSERT_OK(Prepare("x1"));
  // In doubt: no program call, no second Prepare, locked messages.
  EXPECT_REFUSED(Prepare("x1"), kFailedPrecondition, "");
  EXPECT_REFUSED(Insert(uow, "OUT", "more"), kFailedPrecondition, "");
  EXPECT_REFUSED(Forget({"x1"}), kFailedPrecondition, "");
  EXPECT_EQ(Queue("IN").taken(), 1u);
  EXPECT_EQ(Queue("OUT").depth(), 0u);
  ASSERT_OK(Connect(kCics, "QM1", &xids));
  EXPECT_EQ(xids, std::vector<std::string>{"x1"});
  std::vector<v1::InDoubtInfo> listed = ListInDoubt();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].coordinator(), kCics);
  EXPECT_EQ(listed[0].qualifier(), "QM1");
  EXPECT_EQ(listed[0].xid(), "x1");
  EXPECT_EQ(listed[0].uow(), uow);
  EXPECT_EQ(listed[0].locked_message_ids_size(), 1);
  EXPECT_EQ(listed[0].locked_message_ids(0), got.message().id());
  EXPECT_EQ(listed[0].queues_size(), 1);
  EXPECT_EQ(listed[0].inserted(), 1u);

  ASSERT_OK(Commit("x1"));
  EXPECT_EQ(Queue("IN").taken(), 0u);
  EXPECT_EQ(Queue("IN").depth(), 1u);
  EXPECT_EQ(Browse("OUT"), std::vector<std::string>{"reply"});
  // Remembered: the same outcome again is OK, the other one heuristic damage.
  EXPECT_OK(Commit("x1"));
  EXPECT_REFUSED(Backout("x1"), kFailedPrecondition, "HEURISTIC_MISMATCH");
  EXPECT_REFUSED(Begin("x1"), kAlreadyExists, "");
  ASSERT_OK(Forget({"x1"}));
  EXPECT_REFUSED(Commit("x1"), kNotFound, "");
  EXPECT_OK(Begin("x1"));  // the XID is free again
  EXPECT_OK(Backout("x1"));
}

TEST_F(CoordinatorTest, OnePhaseCommitAndBackoutOfUnitsNeverPrepared) {
  ASSERT_NO_FATAL_FAILURE(Enqueue("IN", "m1"));
  ASSERT_NO_FATAL_FAILURE(Enqueue("IN", "m2"));
  uint64_t uow = 0;
  v1::GetResponse got;
  ASSERT_OK(Begin("one", &uow));
  ASSERT_OK(Get(uow, "IN", &got));
  ASSERT_OK(Insert(uow, "OUT", "r1"));
  ASSERT_OK(Commit("one"));
  EXPECT_EQ(Browse("OUT"), std::vector<std::string>{"r1"});
  EXPECT_REFUSED(Commit("one"), kNotFound, "");  // one phase: not remembered
  ASSERT_OK(Begin("two", &uow));
  ASSERT_OK(Get(uow, "IN", &got));
  ASSERT_OK(Backout("two"));
  // The program API may give up a coordinator's unit before Prepare.
  ASSERT_OK(Begin("three", &uow));
  ASSERT_OK(Get(uow, "IN", &got));
  v1::BackoutRequest backout;
  backout.set_uow(uow);
  v1::BackoutResponse backed_out;
  ASSERT_OK(qm_->Backout(Ctx().get(), backout, &backed_out));
  EXPECT_REFUSED(Commit("three"), kNotFound, "");
  ASSERT_OK(Get(0, "IN", &got));
  EXPECT_EQ(got.message().payload(), "m2");
  EXPECT_EQ(got.message().backout_count(), 2u);
  // Neither unit is left in the server's bookkeeping.
  v1::DisplayQueuesRequest request;
  v1::DisplayQueuesResponse response;
  ASSERT_OK(admin_->DisplayQueues(Ctx().get(), request, &response));
  EXPECT_EQ(response.open_units(), 1u);  // the Get's own unit
}

// --- Crashes ------------------------------------------------------------------------

TEST_F(CoordinatorTest, CrashAfterPrepareThenCommitConsumesAndShowsInserts) {
  ASSERT_NO_FATAL_FAILURE(Enqueue("IN", "m1"));
  PrepareOne("x1");
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  ASSERT_NO_FATAL_FAILURE(ExpectLocked(1));
  std::vector<std::string> xids;
  ASSERT_OK(Connect("CICSB", "QM1", &xids));
  EXPECT_TRUE(xids.empty());  // another coordinator sees nothing
  ASSERT_OK(Connect(kCics, "GRP", &xids));
  EXPECT_TRUE(xids.empty());  // nor does another qualifier
  ASSERT_OK(Connect(kCics, "QM1", &xids));
  EXPECT_EQ(xids, std::vector<std::string>{"x1"});
  EXPECT_TRUE(absl::StrContains(process_->Stderr(),
                                "coordinator 'CICSA' (qualifier 'QM1') "
                                "connected: 1 unit(s) in doubt for it"))
      << process_->Stderr();
  EXPECT_TRUE(absl::StrContains(process_->Stderr(),
                                "1 more remain in doubt for other "
                                "coordinators: CICSA/QM1: 1"))
      << process_->Stderr();
  EXPECT_REFUSED(Commit("x1", "CICSB"), kNotFound, "");
  ASSERT_OK(Commit("x1"));
  EXPECT_EQ(Queue("IN").depth(), 0u);
  EXPECT_EQ(Queue("IN").taken(), 0u);
  EXPECT_EQ(Browse("OUT"), std::vector<std::string>{"reply to m1"});
  // And so it stays after another crash.
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  EXPECT_EQ(Queue("IN").depth(), 0u);
  EXPECT_EQ(Browse("OUT"), std::vector<std::string>{"reply to m1"});
}

TEST_F(CoordinatorTest, CrashAfterPrepareThenBackoutReturnsMessagesAndDropsInserts) {
  ASSERT_NO_FATAL_FAILURE(Enqueue("IN", "m1"));
  const v1::Message taken = PrepareOne("x1");
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  ASSERT_NO_FATAL_FAILURE(ExpectLocked(1));
  ASSERT_OK(Backout("x1"));
  v1::GetResponse got;
  ASSERT_OK(Get(0, "IN", &got));
  EXPECT_EQ(got.message().id(), taken.id());
  EXPECT_EQ(got.message().backout_count(), taken.backout_count() + 1);
  EXPECT_EQ(Queue("OUT").depth(), 0u);
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  EXPECT_EQ(Queue("OUT").depth(), 0u);
  EXPECT_EQ(Queue("IN").depth(), 1u);  // the Get's unit was backed out by the restart
}

// qmgrd dies once the RESOLVE records are durable: a coordinator whose
// answer was lost with it cannot tell this from a crash before the record,
// so it asks again after the restart, is told OK, and the effect happened
// once. (Here the answers did arrive; the retries are what a coordinator
// that lost them would send.)
TEST_F(CoordinatorTest, OutcomeRetriedAfterCrashBetweenRecordAndAnswerIsOk) {
  ASSERT_NO_FATAL_FAILURE(Enqueue("IN", "m1"));
  ASSERT_NO_FATAL_FAILURE(Enqueue("IN", "m2"));
  PrepareOne("c");
  PrepareOne("b");
  ASSERT_OK(Commit("c"));
  ASSERT_OK(Backout("b"));
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  std::vector<std::string> xids;
  ASSERT_OK(Connect(kCics, "QM1", &xids));
  EXPECT_TRUE(xids.empty());
  EXPECT_OK(Commit("c"));
  EXPECT_OK(Backout("b"));
  EXPECT_REFUSED(Backout("c"), kFailedPrecondition, "HEURISTIC_MISMATCH");
  EXPECT_REFUSED(Commit("b"), kFailedPrecondition, "HEURISTIC_MISMATCH");
  EXPECT_EQ(Browse("OUT"), std::vector<std::string>{"reply to m1"});
  EXPECT_EQ(Browse("IN"), std::vector<std::string>{"m2"});
  // Through a checkpoint and a normal restart too.
  ASSERT_NO_FATAL_FAILURE(Checkpoint());
  ASSERT_NO_FATAL_FAILURE(StopAndRestart());
  EXPECT_OK(Commit("c"));
  EXPECT_OK(Backout("b"));
  ASSERT_OK(Forget({"c", "b"}));
  EXPECT_REFUSED(Commit("c"), kNotFound, "");
}

TEST_F(CoordinatorTest, RestartUnderChangedNamesIsRefusedUnlessForced) {
  ASSERT_NO_FATAL_FAILURE(Enqueue("IN", "m1"));
  PrepareOne("x1");
  Kill();
  for (const std::vector<std::string>& renamed :
       {std::vector<std::string>{"--qmgr-name", "QM2", "--group-name", "GRP"},
        std::vector<std::string>{"--qmgr-name", "QM1"}}) {
    QmgrdProcess refused(QMGRD_PATH, data_dir(), renamed);
    EXPECT_EQ(refused.RunToExit(), 3);
    EXPECT_TRUE(absl::StrContains(refused.Stderr(), "1 units are in doubt")) << refused.Stderr();
    EXPECT_TRUE(absl::StrContains(refused.Stderr(), "or force")) << refused.Stderr();
  }
  ASSERT_NO_FATAL_FAILURE(Start(std::vector<std::string>{
      "--log-segment-bytes", "4MiB", "--qmgr-name", "QM2", "--group-name", "GRP", "--force"}));
  // The coordinator cannot reach its unit under the old name any more; an
  // operator still can.
  EXPECT_REFUSED(Connect(kCics, "QM1"), kFailedPrecondition, "");
  std::vector<std::string> xids;
  ASSERT_OK(Connect(kCics, "QM2", &xids));
  EXPECT_TRUE(xids.empty());
  std::vector<v1::InDoubtInfo> listed = ListInDoubt();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].qualifier(), "QM1");
  ASSERT_OK(ResolveInDoubt("x1", v1::BACKOUT));
  EXPECT_TRUE(ListInDoubt().empty());
  // Nothing in doubt: the names may change freely.
  ASSERT_NO_FATAL_FAILURE(KillAndRestart(
      std::vector<std::string>{"--log-segment-bytes", "4MiB", "--qmgr-name", "QM3"}));
}

// --- Resolution by hand ---------------------------------------------------------------

TEST_F(CoordinatorTest, OperatorResolvesThenCoordinatorsOtherDecisionIsHeuristicMismatch) {
  ASSERT_NO_FATAL_FAILURE(Enqueue("IN", "m1"));
  ASSERT_NO_FATAL_FAILURE(Enqueue("IN", "m2"));
  ASSERT_NO_FATAL_FAILURE(Enqueue("IN", "m3"));
  const std::string xid("\x01\x02\xab", 3);
  PrepareOne(xid, kCics);
  PrepareOne(xid, "CICSB");
  uint64_t open_uow = 0;
  ASSERT_OK(Begin("open", &open_uow));  // never prepared
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());

  // Two coordinators have this XID in doubt: the operator must name one.
  const grpc::Status ambiguous = ResolveInDoubt(xid, v1::COMMIT);
  EXPECT_REFUSED(ambiguous, kFailedPrecondition, "");
  EXPECT_TRUE(absl::StrContains(ambiguous.error_message(), "CICSA")) << ambiguous.error_message();
  EXPECT_TRUE(absl::StrContains(ambiguous.error_message(), "CICSB")) << ambiguous.error_message();
  EXPECT_REFUSED(ResolveInDoubt("nothing", v1::COMMIT), kNotFound, "");
  EXPECT_REFUSED(ResolveInDoubt(xid, v1::OUTCOME_UNSPECIFIED, kCics), kInvalidArgument, "");
  EXPECT_REFUSED(ResolveInDoubt("", v1::COMMIT), kInvalidArgument, "");

  v1::ResolveInDoubtResponse resolved;
  ASSERT_OK(ResolveInDoubt(xid, v1::COMMIT, kCics, "", "alice", &resolved));
  EXPECT_EQ(resolved.coordinator(), kCics);
  EXPECT_EQ(resolved.qualifier(), "QM1");
  EXPECT_TRUE(absl::StrContains(process_->Stderr(),
                                "operator 'alice' resolved XID 0102ab of "
                                "coordinator 'CICSA' (qualifier 'QM1'): commit"))
      << process_->Stderr();
  EXPECT_TRUE(absl::StrContains(process_->Stderr(),
                                "qmgrd: indoubt.heuristic_decision decided_by=operator:alice "
                                "coordinator=CICSA qualifier=QM1 xid=0102ab outcome=commit "
                                "code=OK reason=\"\""))
      << process_->Stderr();
  EXPECT_EQ(Browse("OUT"), std::vector<std::string>{"reply to m1"});
  // The coordinator comes back and decides otherwise: heuristic damage, and
  // the message says who decided.
  const grpc::Status mismatch = Backout(xid);
  EXPECT_REFUSED(mismatch, kFailedPrecondition, "HEURISTIC_MISMATCH");
  EXPECT_TRUE(absl::StrContains(mismatch.error_message(), "operator:alice"))
      << mismatch.error_message();
  EXPECT_OK(Commit(xid));
  // Named in full, a decided unit answers as its remembered outcome.
  EXPECT_OK(ResolveInDoubt(xid, v1::COMMIT, kCics, "QM1"));
  EXPECT_REFUSED(ResolveInDoubt(xid, v1::BACKOUT, kCics, "QM1"), kFailedPrecondition,
                 "HEURISTIC_MISMATCH");
  EXPECT_REFUSED(ResolveInDoubt(xid, v1::COMMIT, kCics, "GRP"), kNotFound, "");

  // The qmgrctl binary: list, then resolve CICSB's unit by its hex XID.
  const std::string server = absl::StrCat(" --server ", process_->target());
  std::string out;
  ASSERT_EQ(RunCommand(absl::StrCat(QMGRCTL_PATH, " indoubt list", server), &out), 0) << out;
  EXPECT_TRUE(absl::StrContains(out, "CICSB")) << out;
  EXPECT_TRUE(absl::StrContains(out, "0102ab")) << out;
  EXPECT_TRUE(absl::StrContains(out, "1 unit(s) in doubt")) << out;
  EXPECT_EQ(
      RunCommand(absl::StrCat(QMGRCTL_PATH, " indoubt resolve 0102ag --backout", server), &out), 64)
      << out;
  EXPECT_EQ(RunCommand(absl::StrCat(QMGRCTL_PATH, " indoubt resolve 0102ab", server), &out), 64)
      << out;
  EXPECT_EQ(RunCommand(absl::StrCat(QMGRCTL_PATH, " indoubt resolve ffff --backout", server), &out),
            4)
      << out;
  EXPECT_TRUE(absl::StrContains(out, "no unit in doubt has XID ffff")) << out;
  EXPECT_EQ(RunCommand(absl::StrCat(QMGRCTL_PATH,
                                    " indoubt list --server 127.0.0.1:1 --connect-timeout-ms 200"),
                       &out),
            69)
      << out;
  ASSERT_EQ(RunCommand(absl::StrCat(QMGRCTL_PATH,
                                    " indoubt resolve 0x0102AB --backout --operator bob", server),
                       &out),
            0)
      << out;
  EXPECT_TRUE(absl::StrContains(out,
                                "coordinator 'CICSB' (qualifier 'QM1') backed out by "
                                "operator:bob"))
      << out;
  ASSERT_EQ(RunCommand(absl::StrCat(QMGRCTL_PATH, " indoubt list", server), &out), 0) << out;
  EXPECT_TRUE(absl::StrContains(out, "no units in doubt")) << out;
  EXPECT_REFUSED(Commit(xid, "CICSB"), kFailedPrecondition, "HEURISTIC_MISMATCH");
  EXPECT_EQ(Browse("IN").size(), 2u);  // m2 returned, m3 never taken
}

TEST_F(CoordinatorTest, OperatorCannotDecideAUnitNotYetPrepared) {
  ASSERT_OK(Begin("open"));
  EXPECT_REFUSED(ResolveInDoubt("open", v1::COMMIT, kCics, "QM1"), kFailedPrecondition, "");
  EXPECT_REFUSED(ResolveInDoubt("open", v1::COMMIT), kNotFound, "");
  EXPECT_OK(Commit("open"));
}

// --- Resync ------------------------------------------------------------------------------

TEST_F(CoordinatorTest, ResolveCountsAddUpAndAreLogged) {
  for (const char* m : {"m1", "m2", "m3", "m4"}) ASSERT_NO_FATAL_FAILURE(Enqueue("IN", m));
  PrepareOne("x1");
  PrepareOne("x2");
  PrepareOne("x3");
  uint64_t uow = 0;
  ASSERT_OK(Begin("x4", &uow));  // open at the crash: backed out by the restart
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  std::vector<std::string> xids;
  ASSERT_OK(Connect(kCics, "QM1", &xids));
  EXPECT_EQ(xids, (std::vector<std::string>{"x1", "x2", "x3"}));

  v1::ResolveRequest request;
  request.set_coordinator(kCics);
  request.set_qualifier("QM1");
  for (const auto& [xid, outcome] :
       std::vector<std::pair<std::string, v1::Outcome>>{{"x1", v1::COMMIT},
                                                        {"x2", v1::BACKOUT},
                                                        {"x3", v1::COMMIT},
                                                        {"x4", v1::COMMIT},
                                                        {"x5", v1::BACKOUT},
                                                        {"", v1::COMMIT}}) {
    v1::XidOutcome* o = request.add_outcomes();
    o->set_xid(xid);
    o->set_outcome(outcome);
  }
  v1::ResolveResponse response;
  ASSERT_OK(coord_->Resolve(Ctx().get(), request, &response));
  EXPECT_EQ(response.in_doubt(), 3u);
  EXPECT_EQ(response.committed(), 2u);
  EXPECT_EQ(response.backed_out(), 1u);
  EXPECT_EQ(response.unresolved(), 3u);
  EXPECT_EQ(response.committed() + response.backed_out() + response.unresolved(),
            static_cast<uint64_t>(request.outcomes_size()));
  ASSERT_EQ(response.results_size(), 6);
  EXPECT_EQ(response.results(0).code(), grpc::StatusCode::OK);
  EXPECT_EQ(response.results(1).code(), grpc::StatusCode::OK);
  EXPECT_EQ(response.results(2).code(), grpc::StatusCode::OK);
  EXPECT_EQ(response.results(3).code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(response.results(4).code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(response.results(5).code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(process_->Stderr(),
                                "coordinator 'CICSA' (qualifier 'QM1') resolve: 6 XID(s), 3 in "
                                "doubt; 2 committed, 1 backed out, 3 unresolved"))
      << process_->Stderr();
  EXPECT_TRUE(absl::StrContains(process_->Stderr(),
                                "qmgrd: coordinator.resolve coordinator=CICSA qualifier=QM1 xids=6 "
                                "in_doubt=3 committed=2 backed_out=1 unresolved=3"))
      << process_->Stderr();
  EXPECT_EQ(Browse("OUT"), (std::vector<std::string>{"reply to m1", "reply to m3"}));
  EXPECT_EQ(Queue("IN").depth(), 2u);  // m2 backed out, m4 never taken

  // Again: every XID now remembered or unknown; none in doubt.
  ASSERT_OK(coord_->Resolve(Ctx().get(), request, &response));
  EXPECT_EQ(response.in_doubt(), 0u);
  EXPECT_EQ(response.committed(), 2u);
  EXPECT_EQ(response.backed_out(), 1u);
  EXPECT_EQ(response.unresolved(), 3u);
}

// Prepared units live in the store: checkpoints retire the log segments
// that hold their PREPARE records, and they stay in doubt across normal and
// emergency restarts.
class SmallLogTest : public CoordinatorTest {
 protected:
  SmallLogTest() {
    flags_ = {"--log-segment-bytes", "64KiB", "--qmgr-name", "QM1", "--checkpoint-interval-s", "0"};
  }
};

TEST_F(SmallLogTest, InDoubtSurvivesRestartsAndCheckpointsWhileTheLogIsRetired) {
  ASSERT_NO_FATAL_FAILURE(Enqueue("IN", "m1"));
  const v1::Message taken = PrepareOne("x1");
  // The segments that hold the PREPARE record (and any before it).
  std::vector<std::string> at_prepare;
  for (const auto& entry : std::filesystem::directory_iterator(data_dir() + "/log")) {
    if (entry.path().extension() == ".qlog") at_prepare.push_back(entry.path().string());
  }
  ASSERT_FALSE(at_prepare.empty());
  ASSERT_NO_FATAL_FAILURE(Define("FILL"));
  const std::string payload(16 << 10, 'f');
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    for (int i = 0; i < 12; ++i) ASSERT_NO_FATAL_FAILURE(Enqueue("FILL", payload));
    ASSERT_NO_FATAL_FAILURE(Checkpoint());
    if (round % 2 == 0) {
      ASSERT_NO_FATAL_FAILURE(KillAndRestart());
    } else {
      process_->Signal(SIGTERM);
      ASSERT_EQ(process_->WaitExit(absl::Seconds(20)), 0) << process_->Stderr();
      ASSERT_NO_FATAL_FAILURE(Start());
    }
    std::vector<std::string> xids;
    ASSERT_OK(Connect(kCics, "QM1", &xids));
    EXPECT_EQ(xids, std::vector<std::string>{"x1"});
    EXPECT_EQ(Queue("IN").taken(), 1u);
    EXPECT_EQ(Queue("OUT").depth(), 0u);
  }
  for (const std::string& segment : at_prepare) {
    EXPECT_FALSE(std::filesystem::exists(segment)) << segment << " was not retired";
  }
  ASSERT_OK(Backout("x1"));
  v1::GetResponse got;
  ASSERT_OK(Get(0, "IN", &got));
  EXPECT_EQ(got.message().id(), taken.id());
  EXPECT_EQ(got.message().backout_count(), 1u);
  EXPECT_EQ(Queue("OUT").depth(), 0u);
}

// --- Leases ---------------------------------------------------------------------------

class ShortLeaseTest : public CoordinatorTest {
 protected:
  ShortLeaseTest() {
    flags_ = {"--log-segment-bytes", "4MiB", "--qmgr-name", "QM1", "--unit-lease-ms", "300"};
  }
};

TEST_F(ShortLeaseTest, UnitOfACoordinatorGoneBeforePrepareIsBackedOutWhenItsLeaseEnds) {
  ASSERT_NO_FATAL_FAILURE(Enqueue("IN", "m1"));
  ASSERT_NO_FATAL_FAILURE(Enqueue("IN", "m2"));
  uint64_t uow = 0;
  v1::BeginResponse begun;
  ASSERT_OK(coord_->Begin(Ctx().get(), Key<v1::BeginRequest>("gone", kCics, "QM1"), &begun));
  EXPECT_EQ(begun.lease_ms(), 300u);
  v1::GetResponse got;
  ASSERT_OK(Get(begun.uow(), "IN", &got));
  // A prepared unit has no lease.
  PrepareOne("kept");
  absl::SleepFor(absl::Seconds(1));
  EXPECT_REFUSED(Prepare("gone"), kNotFound, "");
  EXPECT_EQ(Queue("IN").depth(), 1u);
  EXPECT_EQ(Queue("IN").taken(), 1u);  // the prepared unit's
  ASSERT_OK(Get(0, "IN", &got));
  EXPECT_EQ(got.message().payload(), "m1");
  EXPECT_EQ(got.message().backout_count(), 1u);
  EXPECT_OK(Begin("gone", &uow));  // its XID is free again
  EXPECT_OK(Backout("gone"));
  // Nor does a normal shutdown wait for it or end it.
  const absl::Time stop = absl::Now();
  process_->Signal(SIGTERM);
  ASSERT_EQ(process_->WaitExit(absl::Seconds(20)), 0) << process_->Stderr();
  EXPECT_LT(absl::Now() - stop, absl::Seconds(5));
  ASSERT_NO_FATAL_FAILURE(Start());
  std::vector<std::string> xids;
  ASSERT_OK(Connect(kCics, "QM1", &xids));
  EXPECT_EQ(xids, std::vector<std::string>{"kept"});
  ASSERT_OK(Commit("kept"));
}

// ListInDoubt stops short of qmgrd's largest response (here about 1 KiB):
// the oldest units, and `truncated`.
class SmallAnswersTest : public CoordinatorTest {
 protected:
  SmallAnswersTest() {
    flags_ = {"--log-segment-bytes", "4MiB", "--qmgr-name",         "QM1",
              "--unit-bytes-max",    "1024", "--max-message-bytes", "1024",
              "--unit-messages-max", "2"};
  }
};

TEST_F(SmallAnswersTest, ListInDoubtSaysWhenNotEveryUnitFits) {
  constexpr int kUnits = 60;
  for (int i = 0; i < kUnits; ++i) {
    const std::string xid = absl::StrCat("xid-", 100 + i);
    ASSERT_OK(Begin(xid));
    ASSERT_OK(Prepare(xid));
  }
  v1::ListInDoubtRequest request;
  v1::ListInDoubtResponse response;
  ASSERT_OK(admin_->ListInDoubt(Ctx().get(), request, &response));
  EXPECT_TRUE(response.truncated());
  ASSERT_GT(response.units_size(), 0);
  ASSERT_LT(response.units_size(), kUnits);
  EXPECT_EQ(response.units(0).xid(), "xid-100");  // the oldest first
  std::vector<std::string> xids;
  ASSERT_OK(Connect(kCics, "QM1", &xids));  // a coordinator's answer is not cut
  EXPECT_EQ(xids.size(), static_cast<size_t>(kUnits));
}
}  // namespace
}  // namespace qmgr
