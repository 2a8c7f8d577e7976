// Hostile input to a real qmgrd: every RPC with out-of-range, oversized,
// empty and inconsistent fields gets its status code and reason (the table
// of docs/server.md), and the server then still serves a well-behaved
// client: nothing it holds was changed by the refusals.
#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "qmgr/status.h"
#include "qmgr/v1/qmgr.grpc.pb.h"
#include "tests/support/qmgrd_process.h"
#include "tests/support/rpc_expect.h"
#include "tests/support/temp_dir.h"

namespace qmgr {
namespace {

namespace v1 = qmgr::v1;
using testing::QmgrdProcess;
using testing::TempDir;

constexpr char kQueue[] = "IN";
constexpr char kSession[] = "T1";

struct Case {
  std::string what;
  std::function<grpc::Status()> call;
  absl::StatusCode code;
  std::string reason;  // empty: none
};

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const absl::Status started = process_.Start();
    ASSERT_TRUE(started.ok()) << started;
    auto channel = grpc::CreateChannel(process_.target(), grpc::InsecureChannelCredentials());
    qm_ = v1::QueueManager::NewStub(channel);
    admin_ = v1::Admin::NewStub(channel);
    coord_ = v1::Coordinator::NewStub(channel);
    v1::DefineQueueRequest define;
    define.set_queue(kQueue);
    define.mutable_attributes()->set_max_message_bytes(1024);
    define.mutable_attributes()->set_max_depth(3);
    v1::DefineQueueResponse defined;
    ASSERT_OK(admin_->DefineQueue(Context().get(), define, &defined));
    v1::OpenSessionRequest open;
    open.set_session(kSession);
    v1::OpenSessionResponse opened;
    ASSERT_OK(qm_->OpenSession(Context().get(), open, &opened));
  }

  std::unique_ptr<grpc::ClientContext> Context() {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return context;
  }

  template <typename Request, typename Response, typename Stub>
  std::function<grpc::Status()> Unary(Stub* stub,
                                      grpc::Status (Stub::*method)(grpc::ClientContext*,
                                                                   const Request&, Response*),
                                      Request request) {
    return [this, stub, method, request] {
      Response response;
      return (stub->*method)(Context().get(), request, &response);
    };
  }

  static v1::NewMessage Message(const std::string& queue, const std::string& payload) {
    v1::NewMessage m;
    m.set_queue(queue);
    m.set_payload(payload);
    return m;
  }

  v1::EnqueueRequest Enqueue(v1::NewMessage m) {
    v1::EnqueueRequest r;
    *r.mutable_message() = std::move(m);
    return r;
  }

  uint64_t Depth() {
    v1::DisplayQueuesRequest request;
    request.add_queues(kQueue);
    v1::DisplayQueuesResponse response;
    EXPECT_OK(admin_->DisplayQueues(Context().get(), request, &response));
    return response.queues_size() == 1 ? response.queues(0).depth() : 0;
  }

  TempDir dir_;
  QmgrdProcess process_{
      QMGRD_PATH, dir_.path() + "/data", {"--log-segment-bytes", "4MiB", "--qmgr-name", "QM1"}};
  std::unique_ptr<v1::QueueManager::Stub> qm_;
  std::unique_ptr<v1::Admin::Stub> admin_;
  std::unique_ptr<v1::Coordinator::Stub> coord_;
};

TEST_F(BadInputTest, EveryRpcRefusesBadFieldsWithItsCodeAndReasonAndTheServerGoesOn) {
  using absl::StatusCode;
  const std::string long_name(49, 'Q');
  const std::string huge_xid(141, 'x');
  std::vector<Case> cases;
  const auto add = [&](std::string what, std::function<grpc::Status()> call, StatusCode code,
                       absl::string_view reason = "") {
    cases.push_back({std::move(what), std::move(call), code, std::string(reason)});
  };
  using QM = v1::QueueManager::Stub;
  using Admin = v1::Admin::Stub;
  using Coord = v1::Coordinator::Stub;
  QM* qm = qm_.get();
  Admin* admin = admin_.get();
  Coord* coord = coord_.get();

  // --- Enqueue, EnqueueBatch
  add("Enqueue without a message", Unary(qm, &QM::Enqueue, v1::EnqueueRequest()),
      StatusCode::kInvalidArgument);
  add("Enqueue to a name too long", Unary(qm, &QM::Enqueue, Enqueue(Message(long_name, "x"))),
      StatusCode::kInvalidArgument);
  add("Enqueue to a name with a slash", Unary(qm, &QM::Enqueue, Enqueue(Message("A/B", "x"))),
      StatusCode::kInvalidArgument);
  add("Enqueue to an unknown queue", Unary(qm, &QM::Enqueue, Enqueue(Message("NOPE", "x"))),
      StatusCode::kNotFound);
  add("Enqueue over the queue's max message size",
      Unary(qm, &QM::Enqueue, Enqueue(Message(kQueue, std::string(1025, 'x')))),
      StatusCode::kInvalidArgument);
  add("Enqueue over qmgrd's max request size",
      Unary(qm, &QM::Enqueue, Enqueue(Message(kQueue, std::string(12 << 20, 'x')))),
      StatusCode::kResourceExhausted);
  {
    v1::NewMessage m = Message(kQueue, "x");
    m.set_class_(static_cast<v1::MessageClass>(99));
    add("Enqueue of an unknown class", Unary(qm, &QM::Enqueue, Enqueue(m)),
        StatusCode::kInvalidArgument);
    m = Message(kQueue, "x");
    m.set_expiry_time_us(1);
    add("Enqueue expired already", Unary(qm, &QM::Enqueue, Enqueue(m)),
        StatusCode::kInvalidArgument);
    m = Message(kQueue, "x");
    m.set_input_seq(1);
    add("Enqueue with an input number but no session", Unary(qm, &QM::Enqueue, Enqueue(m)),
        StatusCode::kInvalidArgument);
    m = Message(kQueue, "x");
    m.set_class_(v1::FASTPATH);
    add("Enqueue of deferred input without a session", Unary(qm, &QM::Enqueue, Enqueue(m)),
        StatusCode::kInvalidArgument);
    m = Message(kQueue, "x");
    m.set_session("NOBODY");
    m.set_input_seq(1);
    add("Enqueue of input from a session never bound", Unary(qm, &QM::Enqueue, Enqueue(m)),
        StatusCode::kFailedPrecondition, reason::kSessionNotOpen);
    m.set_session(kSession);
    m.set_input_seq(7);
    add("Enqueue of input beyond the next number", Unary(qm, &QM::Enqueue, Enqueue(m)),
        StatusCode::kFailedPrecondition, reason::kSequenceGap);
    v1::EnqueueBatchRequest batch;
    *batch.add_messages() = Message(kQueue, "fine");
    *batch.add_messages() = Message("NOPE", "not fine");
    add("EnqueueBatch with one bad message (all or nothing)", Unary(qm, &QM::EnqueueBatch, batch),
        StatusCode::kNotFound);
    v1::EnqueueBatchRequest full;
    for (int i = 0; i < 4; ++i) *full.add_messages() = Message(kQueue, "one too many");
    add("EnqueueBatch beyond the queue's max depth", Unary(qm, &QM::EnqueueBatch, full),
        StatusCode::kResourceExhausted, reason::kQueueFull);
  }
  // --- Units of work
  {
    v1::GetRequest get;
    get.set_queue("NOPE");
    add("Get from an unknown queue", Unary(qm, &QM::Get, get), StatusCode::kNotFound);
    get.set_queue("");
    add("Get from an empty queue name", Unary(qm, &QM::Get, get), StatusCode::kInvalidArgument);
    get.set_queue(kQueue);
    get.set_uow(987654321);
    add("Get into a unit never opened", Unary(qm, &QM::Get, get), StatusCode::kNotFound);
    get.set_uow(987654321);
    get.set_commit_previous(true);
    add("Get committing a unit never opened", Unary(qm, &QM::Get, get), StatusCode::kNotFound);
    v1::InsertRequest insert;
    insert.set_uow(987654321);
    *insert.mutable_message() = Message(kQueue, "x");
    add("Insert into a unit never opened", Unary(qm, &QM::Insert, insert), StatusCode::kNotFound);
    insert.set_uow(0);
    *insert.mutable_message() = Message(long_name, "x");
    add("Insert to a name too long", Unary(qm, &QM::Insert, insert), StatusCode::kInvalidArgument);
    v1::SyncPointRequest sync;
    sync.set_uow(UINT64_MAX);
    add("SyncPoint of a unit never opened", Unary(qm, &QM::SyncPoint, sync), StatusCode::kNotFound);
    sync.set_uow(0);
    add("SyncPoint of unit 0", Unary(qm, &QM::SyncPoint, sync), StatusCode::kNotFound);
    v1::BackoutRequest backout;
    backout.set_uow(UINT64_MAX);
    add("Backout of a unit never opened", Unary(qm, &QM::Backout, backout), StatusCode::kNotFound);
  }
  // --- Sessions
  {
    v1::OpenSessionRequest open;
    add("OpenSession without a name", Unary(qm, &QM::OpenSession, open),
        StatusCode::kInvalidArgument);
    open.set_session(long_name);
    add("OpenSession with a name too long", Unary(qm, &QM::OpenSession, open),
        StatusCode::kInvalidArgument);
    v1::SetAndTestSequenceNumbersRequest stsn;
    stsn.set_session("NOBODY");
    add("STSN on a session never bound", Unary(qm, &QM::SetAndTestSequenceNumbers, stsn),
        StatusCode::kFailedPrecondition, reason::kSessionNotOpen);
    stsn.set_session(kSession);
    stsn.mutable_input()->set_action(static_cast<v1::StsnAction>(42));
    add("STSN with an unknown action", Unary(qm, &QM::SetAndTestSequenceNumbers, stsn),
        StatusCode::kInvalidArgument);
    stsn.mutable_input()->set_action(v1::SET);
    stsn.mutable_input()->set_last_sent(5);
    add("STSN SET on a session not opened cold", Unary(qm, &QM::SetAndTestSequenceNumbers, stsn),
        StatusCode::kFailedPrecondition);
    v1::StartDataTrafficRequest sdt;
    sdt.set_session("NOBODY");
    add("SDT on a session never bound", Unary(qm, &QM::StartDataTraffic, sdt),
        StatusCode::kFailedPrecondition, reason::kSessionNotOpen);
    v1::RequestRecoveryRequest rqr;
    rqr.set_session("");
    add("RQR without a session", Unary(qm, &QM::RequestRecovery, rqr),
        StatusCode::kInvalidArgument);
    v1::ClearRequest clear;
    clear.set_session("NOBODY");
    add("CLEAR of a session never bound", Unary(qm, &QM::Clear, clear),
        StatusCode::kFailedPrecondition, reason::kSessionNotOpen);
    v1::CloseSessionRequest close;
    close.set_session("NOBODY");
    add("UNBIND of a session never bound", Unary(qm, &QM::CloseSession, close),
        StatusCode::kFailedPrecondition, reason::kSessionNotOpen);
    v1::AcknowledgeRequest ack;
    ack.set_session(kSession);
    ack.set_out_seq(99);
    ack.set_positive(true);
    add("Acknowledge of an output never sent", Unary(qm, &QM::Acknowledge, ack),
        StatusCode::kFailedPrecondition);
    ack.set_positive(false);
    ack.set_sense_code(0);
    add("Negative Acknowledge without a sense code", Unary(qm, &QM::Acknowledge, ack),
        StatusCode::kInvalidArgument);
    add(
        "Receive on a session never bound",
        [this] {
          v1::ReceiveRequest receive;
          receive.set_session("NOBODY");
          auto context = Context();
          auto reader = qm_->Receive(context.get(), receive);
          v1::ReceiveResponse response;
          while (reader->Read(&response)) {
          }
          return reader->Finish();
        },
        StatusCode::kFailedPrecondition, reason::kSessionNotOpen);
  }
  // --- Admin
  {
    v1::DefineQueueRequest define;
    add("DefineQueue without a name", Unary(admin, &Admin::DefineQueue, define),
        StatusCode::kInvalidArgument);
    define.set_queue(kQueue);
    add("DefineQueue of an existing queue", Unary(admin, &Admin::DefineQueue, define),
        StatusCode::kAlreadyExists);
    define.set_queue("NEW1");
    define.mutable_attributes()->set_backout_queue(long_name);
    add("DefineQueue with a backout queue name too long", Unary(admin, &Admin::DefineQueue, define),
        StatusCode::kInvalidArgument);
    define.mutable_attributes()->Clear();
    define.mutable_attributes()->set_default_class(static_cast<v1::MessageClass>(77));
    add("DefineQueue with an unknown default class", Unary(admin, &Admin::DefineQueue, define),
        StatusCode::kInvalidArgument);
    define.mutable_attributes()->Clear();
    define.mutable_attributes()->set_output_of_session("bad name!");
    add("DefineQueue as output of a malformed session name",
        Unary(admin, &Admin::DefineQueue, define), StatusCode::kInvalidArgument);
    v1::AlterQueueRequest alter;
    alter.set_queue("NOPE");
    add("AlterQueue of an unknown queue", Unary(admin, &Admin::AlterQueue, alter),
        StatusCode::kNotFound);
    v1::DeleteQueueRequest del;
    del.set_queue("NOPE");
    add("DeleteQueue of an unknown queue", Unary(admin, &Admin::DeleteQueue, del),
        StatusCode::kNotFound);
    v1::DisplayQueuesRequest display;
    display.add_queues("NOPE");
    add("DisplayQueues of an unknown queue", Unary(admin, &Admin::DisplayQueues, display),
        StatusCode::kNotFound);
    v1::BrowseRequest browse;
    browse.set_queue("NOPE");
    add("Browse of an unknown queue", Unary(admin, &Admin::Browse, browse), StatusCode::kNotFound);
    v1::AssignRequest assign;
    assign.set_from_session("NOBODY");
    assign.set_to_session(kSession);
    add("Assign from a session with no output queue", Unary(admin, &Admin::Assign, assign),
        StatusCode::kFailedPrecondition);
    assign.set_from_session(kSession);
    assign.set_to_session("");
    add("Assign to no session", Unary(admin, &Admin::Assign, assign), StatusCode::kInvalidArgument);
    v1::DisplaySessionsRequest sessions;
    sessions.add_sessions("NOBODY");
    add("DisplaySessions of an unknown session", Unary(admin, &Admin::DisplaySessions, sessions),
        StatusCode::kNotFound);
    v1::ResolveInDoubtRequest resolve;
    resolve.set_xid("never");
    resolve.set_outcome(v1::COMMIT);
    add("ResolveInDoubt of an XID never seen", Unary(admin, &Admin::ResolveInDoubt, resolve),
        StatusCode::kNotFound);
    resolve.set_outcome(static_cast<v1::Outcome>(9));
    add("ResolveInDoubt with an unknown outcome", Unary(admin, &Admin::ResolveInDoubt, resolve),
        StatusCode::kInvalidArgument);
  }
  // --- Coordinator
  {
    v1::ConnectRequest connect;
    connect.set_coordinator("CICS");
    connect.set_qualifier("OTHER");
    add("Connect under a qualifier that is not this queue manager's",
        Unary(coord, &Coord::Connect, connect), StatusCode::kFailedPrecondition);
    connect.set_coordinator(std::string(65, 'C'));
    connect.set_qualifier("QM1");
    add("Connect with a coordinator name too long", Unary(coord, &Coord::Connect, connect),
        StatusCode::kInvalidArgument);
    v1::BeginRequest begin;
    begin.set_coordinator("CICS");
    begin.set_qualifier("QM1");
    add("Begin without an XID", Unary(coord, &Coord::Begin, begin), StatusCode::kInvalidArgument);
    begin.set_xid(huge_xid);
    add("Begin with an XID too long", Unary(coord, &Coord::Begin, begin),
        StatusCode::kInvalidArgument);
    v1::PrepareRequest prepare;
    prepare.set_coordinator("CICS");
    prepare.set_qualifier("QM1");
    prepare.set_xid("never");
    add("Prepare of an XID never begun", Unary(coord, &Coord::Prepare, prepare),
        StatusCode::kNotFound);
    v1::CommitRequest commit;
    commit.set_coordinator("CICS");
    commit.set_qualifier("QM1");
    commit.set_xid("never");
    add("Commit of an XID never begun", Unary(coord, &Coord::Commit, commit),
        StatusCode::kNotFound);
    v1::ForgetRequest forget;
    forget.set_coordinator("");
    forget.set_qualifier("QM1");
    forget.add_xids("x");
    add("Forget without a coordinator", Unary(coord, &Coord::Forget, forget),
        StatusCode::kInvalidArgument);
  }

  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const grpc::Status status = c.call();
    const testing::Refusal refusal = testing::Of(status);
    EXPECT_EQ(refusal.code, c.code) << c.what << ": " << status.error_message();
    EXPECT_EQ(refusal.reason, c.reason) << c.what << ": " << status.error_message();
    EXPECT_FALSE(status.error_message().empty()) << c.what << ": a refusal says why";
  }
  std::printf("%zu bad requests refused\n", cases.size());

  // Nothing the refusals touched changed, and the server serves.
  EXPECT_EQ(Depth(), 0u);
  v1::EnqueueResponse enqueued;
  ASSERT_OK(qm_->Enqueue(Context().get(), Enqueue(Message(kQueue, "still served")), &enqueued));
  v1::GetRequest get;
  get.set_queue(kQueue);
  v1::GetResponse got;
  ASSERT_OK(qm_->Get(Context().get(), get, &got));
  EXPECT_EQ(got.message().payload(), "still served");
  v1::SyncPointRequest sync;
  sync.set_uow(got.uow());
  v1::SyncPointResponse synced;
  EXPECT_OK(qm_->SyncPoint(Context().get(), sync, &synced));
}

}  // namespace
}  // namespace qmgr
