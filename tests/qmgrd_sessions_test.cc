// Sessions over real gRPC (docs/sessions.md is the contract): the real qmgrd
// on a loopback port, driven through the generated stubs. Each session RPC's
// success and refusals (code and ErrorInfo reason), the Receive stream (one
// output outstanding, exception responses, how it ends), and resynchronization
// after qmgrd is SIGKILLed at the moment that matters, then restarted: the
// client plays its own half of the session (the numbers it would keep in its
// session file) and checks what STSN answers and what flows afterwards.
#include <signal.h>

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
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
// A short shutdown grace: a session left unacknowledged on purpose waits it out.
const std::vector<std::string> kFlags = {"--log-segment-bytes", "4MiB", "--shutdown-grace-ms",
                                         "1500"};
constexpr absl::Duration kCallTimeout = absl::Seconds(10);
// How long a test waits for output that must come, and for output that must not.
constexpr absl::Duration kOutputWait = absl::Seconds(5);
constexpr absl::Duration kNoOutputWait = absl::Milliseconds(400);

// A Receive stream read on a thread of its own, so that a test can wait for
// the next output with a timeout, and see how the stream ended.
class Receiver {
 public:
  Receiver(v1::QueueManager::Stub* qm, const std::string& session) {
    v1::ReceiveRequest request;
    request.set_session(session);
    reader_ = qm->Receive(&context_, request);
    thread_ = std::thread([this] {
      v1::ReceiveResponse response;
      while (reader_->Read(&response)) {
        absl::MutexLock lock(&mu_);
        outputs_.push_back(response);
      }
      const grpc::Status status = reader_->Finish();
      absl::MutexLock lock(&mu_);
      ended_ = status;
    });
  }
  ~Receiver() {
    context_.TryCancel();
    thread_.join();
  }

  std::optional<v1::ReceiveResponse> Next(absl::Duration timeout = kOutputWait) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(this, &Receiver::HasOutputOrEnded), timeout);
    if (outputs_.empty()) return std::nullopt;
    v1::ReceiveResponse next = std::move(outputs_.front());
    outputs_.pop_front();
    return next;
  }
  // How the stream ended (nullopt: still open after `timeout`).
  std::optional<grpc::Status> End(absl::Duration timeout = kOutputWait) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(this, &Receiver::Ended), timeout);
    return ended_;
  }

 private:
  bool HasOutputOrEnded() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !outputs_.empty() || ended_.has_value();
  }
  bool Ended() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return ended_.has_value(); }

  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<v1::ReceiveResponse>> reader_;
  std::thread thread_;
  absl::Mutex mu_;
  std::deque<v1::ReceiveResponse> outputs_ ABSL_GUARDED_BY(mu_);
  std::optional<grpc::Status> ended_ ABSL_GUARDED_BY(mu_);
};

struct Flow {
  v1::StsnAction action = v1::SET_AND_TEST;
  uint64_t last = 0;
  uint64_t message_id = 0;  // output flow only
};

// One qmgrd on one data directory, restartable: each start is a new child
// process (on a new port) and a new channel.
class SessionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(Start());
    for (const char* queue : {"IN", "FAST", "FLUSH"}) ASSERT_NO_FATAL_FAILURE(Define(queue));
  }

  void Start() {
    process_ = std::make_unique<QmgrdProcess>(QMGRD_PATH, dir_.path() + "/data", flags_);
    const absl::Status started = process_->Start();
    ASSERT_TRUE(started.ok()) << started;
    auto channel = grpc::CreateChannel(process_->target(), grpc::InsecureChannelCredentials());
    qm_ = v1::QueueManager::NewStub(channel);
    admin_ = v1::Admin::NewStub(channel);
  }
  // SIGKILL, then a restart (an emergency restart from the log).
  void KillAndRestart() {
    process_->Signal(SIGKILL);
    process_->WaitExit(absl::Seconds(10));
    ASSERT_NO_FATAL_FAILURE(Start());
  }
  // SIGTERM (a normal shutdown), then a restart.
  void StopAndRestart() {
    process_->Signal(SIGTERM);
    ASSERT_EQ(process_->WaitExit(absl::Seconds(20)), 0) << process_->Stderr();
    ASSERT_NO_FATAL_FAILURE(Start());
  }

  std::unique_ptr<grpc::ClientContext> Ctx() {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
    return context;
  }

  void Define(const std::string& queue, v1::QueueAttributes attributes = {}) {
    v1::DefineQueueRequest request;
    request.set_queue(queue);
    *request.mutable_attributes() = attributes;
    v1::DefineQueueResponse response;
    ASSERT_OK(admin_->DefineQueue(Ctx().get(), request, &response));
  }
  // The output queue of `session`, named OUT.<session>.
  void DefineOutput(const std::string& session, v1::QueueAttributes attributes = {}) {
    attributes.set_output_of_session(session);
    Define("OUT." + session, attributes);
  }

  grpc::Status Open(const std::string& session, bool cold = false,
                    bool* resync_required = nullptr) {
    v1::OpenSessionRequest request;
    request.set_session(session);
    request.set_cold(cold);
    v1::OpenSessionResponse response;
    grpc::Status s = qm_->OpenSession(Ctx().get(), request, &response);
    if (resync_required != nullptr) *resync_required = response.resync_required();
    return s;
  }
  // Opens a session that must need no resync.
  void OpenFresh(const std::string& session) {
    bool resync = true;
    ASSERT_OK(Open(session, false, &resync));
    ASSERT_FALSE(resync);
  }
  grpc::Status Stsn(const std::string& session, Flow in, Flow out,
                    v1::SetAndTestSequenceNumbersResponse* response) {
    v1::SetAndTestSequenceNumbersRequest request;
    request.set_session(session);
    request.mutable_input()->set_action(in.action);
    request.mutable_input()->set_last_sent(in.last);
    request.mutable_output()->set_action(out.action);
    request.mutable_output()->set_last_secured(out.last);
    request.mutable_output()->set_last_secured_message_id(out.message_id);
    return qm_->SetAndTestSequenceNumbers(Ctx().get(), request, response);
  }
  grpc::Status Sdt(const std::string& session) {
    v1::StartDataTrafficRequest request;
    request.set_session(session);
    v1::StartDataTrafficResponse response;
    return qm_->StartDataTraffic(Ctx().get(), request, &response);
  }
  grpc::Status Rqr(const std::string& session) {
    v1::RequestRecoveryRequest request;
    request.set_session(session);
    v1::RequestRecoveryResponse response;
    return qm_->RequestRecovery(Ctx().get(), request, &response);
  }
  grpc::Status Clear(const std::string& session, uint64_t* discarded = nullptr) {
    v1::ClearRequest request;
    request.set_session(session);
    v1::ClearResponse response;
    grpc::Status s = qm_->Clear(Ctx().get(), request, &response);
    if (discarded != nullptr) *discarded = response.discarded_inputs();
    return s;
  }
  grpc::Status Close(const std::string& session) {
    v1::CloseSessionRequest request;
    request.set_session(session);
    v1::CloseSessionResponse response;
    return qm_->CloseSession(Ctx().get(), request, &response);
  }
  grpc::Status Ack(const std::string& session, uint64_t out_seq, uint32_t sense_code = 0,
                   bool* moved = nullptr) {
    v1::AcknowledgeRequest request;
    request.set_session(session);
    request.set_out_seq(out_seq);
    request.set_positive(sense_code == 0);
    request.set_sense_code(sense_code);
    v1::AcknowledgeResponse response;
    grpc::Status s = qm_->Acknowledge(Ctx().get(), request, &response);
    if (moved != nullptr) *moved = response.moved_to_backout_queue();
    return s;
  }
  grpc::Status Assign(const std::string& from, const std::string& to, bool force,
                      v1::AssignResponse* response) {
    v1::AssignRequest request;
    request.set_from_session(from);
    request.set_to_session(to);
    request.set_force(force);
    return admin_->Assign(Ctx().get(), request, response);
  }
  v1::SessionInfo Display(const std::string& session) {
    v1::DisplaySessionsRequest request;
    request.add_sessions(session);
    v1::DisplaySessionsResponse response;
    const grpc::Status s = admin_->DisplaySessions(Ctx().get(), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response.sessions_size() == 1 ? response.sessions(0) : v1::SessionInfo();
  }
  uint64_t Depth(const std::string& queue) {
    v1::DisplayQueuesRequest request;
    request.add_queues(queue);
    v1::DisplayQueuesResponse response;
    const grpc::Status s = admin_->DisplayQueues(Ctx().get(), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response.queues_size() == 1 ? response.queues(0).depth() : 0;
  }

  // Session input: numbered unless IRRECOVERABLE.
  grpc::Status Input(const std::string& session, uint64_t seq, const std::string& queue = "IN",
                     v1::MessageClass cls = v1::RECOVERABLE, uint64_t ack_out_seq = 0,
                     v1::EnqueueResponse* response = nullptr) {
    v1::EnqueueRequest request;
    v1::NewMessage* m = request.mutable_message();
    m->set_queue(queue);
    m->set_payload(absl::StrCat(session, "-in-", seq));
    m->set_class_(cls);
    m->set_session(session);
    m->set_input_seq(seq);
    m->set_ack_out_seq(ack_out_seq);
    v1::EnqueueResponse ignored;
    return qm_->Enqueue(Ctx().get(), request, response != nullptr ? response : &ignored);
  }
  // Output for a session (a message put on its output queue); its id.
  uint64_t Output(const std::string& session, const std::string& payload,
                  v1::MessageClass cls = v1::RECOVERABLE) {
    v1::EnqueueRequest request;
    request.mutable_message()->set_queue("OUT." + session);
    request.mutable_message()->set_payload(payload);
    request.mutable_message()->set_class_(cls);
    v1::EnqueueResponse response;
    const grpc::Status s = qm_->Enqueue(Ctx().get(), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response.message_id();
  }
  // A durable record after everything appended so far: the log is written in
  // order, so the records before it (an OUTPUT_SENT, which Receive does not
  // wait for) are durable too.
  void Flush() {
    v1::EnqueueRequest request;
    request.mutable_message()->set_queue("FLUSH");
    request.mutable_message()->set_payload("flush");
    v1::EnqueueResponse response;
    ASSERT_OK(qm_->Enqueue(Ctx().get(), request, &response));
  }
  // A program takes the next message of `queue` and commits (a deferred
  // input hardens at this sync point); with `reply_to_session`, it inserts a
  // reply on that session's output queue in the same unit.
  void Process(const std::string& queue, const std::string& reply_to_session = "") {
    v1::GetRequest get;
    get.set_queue(queue);
    get.set_wait_ms(2000);
    v1::GetResponse got;
    ASSERT_OK(qm_->Get(Ctx().get(), get, &got));
    ASSERT_TRUE(got.has_message());
    if (!reply_to_session.empty()) {
      v1::InsertRequest insert;
      insert.set_uow(got.uow());
      insert.mutable_message()->set_queue("OUT." + reply_to_session);
      insert.mutable_message()->set_payload("reply to " + got.message().payload());
      v1::InsertResponse inserted;
      ASSERT_OK(qm_->Insert(Ctx().get(), insert, &inserted));
    }
    v1::SyncPointRequest sync;
    sync.set_uow(got.uow());
    v1::SyncPointResponse synced;
    ASSERT_OK(qm_->SyncPoint(Ctx().get(), sync, &synced));
  }
  // OpenSession after a crash or a Clear: resync needed, both flows agreed
  // by SET_AND_TEST, then SDT. Returns the STSN answer.
  v1::SetAndTestSequenceNumbersResponse Resync(const std::string& session, Flow in, Flow out) {
    bool resync = false;
    EXPECT_TRUE(Open(session, false, &resync).ok());
    EXPECT_TRUE(resync);
    v1::SetAndTestSequenceNumbersResponse answer;
    const grpc::Status s = Stsn(session, in, out, &answer);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(answer.input().result(), v1::TEST_POSITIVE) << answer.DebugString();
    EXPECT_EQ(answer.output().result(), v1::TEST_POSITIVE) << answer.DebugString();
    const grpc::Status started = Sdt(session);
    EXPECT_TRUE(started.ok()) << started.error_message();
    return answer;
  }
  std::unique_ptr<Receiver> Receive(const std::string& session) {
    return std::make_unique<Receiver>(qm_.get(), session);
  }

  std::vector<std::string> flags_ = kFlags;
  TempDir dir_;
  std::unique_ptr<QmgrdProcess> process_;
  std::unique_ptr<v1::QueueManager::Stub> qm_;
  std::unique_ptr<v1::Admin::Stub> admin_;
};

// --- Each RPC: success and refusals ----------------------------------------------

// New and closed sessions need no resync; a rebind supersedes a binding
// that may have died mid-flow, so it does.
TEST_F(SessionsTest, OpenSessionNeedsResyncUnlessTheSessionIsNewOrClosed) {
  EXPECT_REFUSED(Open("no spaces"), kInvalidArgument, "");
  EXPECT_REFUSED(Open(""), kInvalidArgument, "");
  OpenFresh("T1");
  v1::SessionInfo info = Display("T1");
  EXPECT_TRUE(info.bound());
  EXPECT_TRUE(info.data_traffic());
  EXPECT_FALSE(info.resync_required());
  bool resync = false;
  ASSERT_OK(Open("T1", false, &resync));
  EXPECT_TRUE(resync);
  info = Display("T1");
  EXPECT_FALSE(info.data_traffic());
  EXPECT_TRUE(info.resync_required());
  Resync("T1", {v1::SET_AND_TEST, 0}, {v1::SET_AND_TEST, 0});
  ASSERT_OK(Close("T1"));
  OpenFresh("T1");
}

TEST_F(SessionsTest, EveryCallOnAnUnknownOrUnboundSessionIsSessionNotOpen) {
  v1::SetAndTestSequenceNumbersResponse answer;
  EXPECT_REFUSED(Stsn("GHOST", {}, {}, &answer), kFailedPrecondition, "SESSION_NOT_OPEN");
  EXPECT_REFUSED(Sdt("GHOST"), kFailedPrecondition, "SESSION_NOT_OPEN");
  EXPECT_REFUSED(Rqr("GHOST"), kFailedPrecondition, "SESSION_NOT_OPEN");
  EXPECT_REFUSED(Clear("GHOST"), kFailedPrecondition, "SESSION_NOT_OPEN");
  EXPECT_REFUSED(Close("GHOST"), kFailedPrecondition, "SESSION_NOT_OPEN");
  EXPECT_REFUSED(Ack("GHOST", 1), kFailedPrecondition, "SESSION_NOT_OPEN");
  EXPECT_REFUSED(Input("GHOST", 1), kFailedPrecondition, "SESSION_NOT_OPEN");
  EXPECT_REFUSED(*Receive("GHOST")->End(), kFailedPrecondition, "SESSION_NOT_OPEN");
  // Bad names are malformed input whatever the call.
  EXPECT_REFUSED(Stsn("bad name", {}, {}, &answer), kInvalidArgument, "");
  EXPECT_REFUSED(Sdt("bad name"), kInvalidArgument, "");
  EXPECT_REFUSED(Ack("bad name", 1), kInvalidArgument, "");
  EXPECT_REFUSED(*Receive("bad name")->End(), kInvalidArgument, "");

  v1::DisplaySessionsRequest request;
  request.add_sessions("GHOST");
  v1::DisplaySessionsResponse response;
  EXPECT_REFUSED(admin_->DisplaySessions(Ctx().get(), request, &response), kNotFound, "");
}

TEST_F(SessionsTest, StsnAgreesFlowByFlowAndSdtWaitsForBoth) {
  DefineOutput("T1");
  OpenFresh("T1");
  ASSERT_OK(Input("T1", 1));
  v1::SetAndTestSequenceNumbersResponse answer;
  // In data traffic STSN is refused: RQR first.
  EXPECT_REFUSED(Stsn("T1", {}, {}, &answer), kFailedPrecondition, "");
  ASSERT_OK(Rqr("T1"));
  EXPECT_REFUSED(Input("T1", 2), kFailedPrecondition, "RESYNC_REQUIRED");
  EXPECT_REFUSED(Sdt("T1"), kFailedPrecondition, "RESYNC_REQUIRED");

  // SENSE agrees on nothing; SET_AND_TEST behind the server is negative.
  ASSERT_OK(Stsn("T1", {v1::SENSE}, {v1::SENSE}, &answer));
  EXPECT_EQ(answer.input().result(), v1::SENSED);
  EXPECT_EQ(answer.input().in_seq(), 1u);
  EXPECT_EQ(answer.output().result(), v1::SENSED);
  EXPECT_EQ(answer.output().outcome(), v1::NO_OUTPUT_OUTSTANDING);
  EXPECT_REFUSED(Sdt("T1"), kFailedPrecondition, "RESYNC_REQUIRED");
  ASSERT_OK(Stsn("T1", {v1::SET_AND_TEST, 0}, {v1::SET_AND_TEST, 0}, &answer));
  EXPECT_EQ(answer.input().result(), v1::TEST_NEGATIVE);
  EXPECT_EQ(answer.output().result(), v1::TEST_POSITIVE);
  EXPECT_REFUSED(Sdt("T1"), kFailedPrecondition, "RESYNC_REQUIRED");
  // SET is for a cold session or an administrator only, and changes nothing.
  EXPECT_REFUSED(Stsn("T1", {v1::SET, 7}, {v1::IGNORE}, &answer), kFailedPrecondition, "");
  EXPECT_EQ(Display("T1").in_seq(), 1u);
  // An unknown action is malformed.
  EXPECT_REFUSED(Stsn("T1", {static_cast<v1::StsnAction>(99)}, {}, &answer), kInvalidArgument, "");
  ASSERT_OK(Stsn("T1", {v1::SET_AND_TEST, 1}, {v1::IGNORE}, &answer));
  EXPECT_EQ(answer.input().result(), v1::TEST_POSITIVE);
  EXPECT_EQ(answer.output().result(), v1::IGNORED);
  ASSERT_OK(Sdt("T1"));
  ASSERT_OK(Input("T1", 2));
}

TEST_F(SessionsTest, ReceiveSendsOneOutputAtATimeEachAfterTheLastIsAcknowledged) {
  DefineOutput("T1");
  OpenFresh("T1");
  const uint64_t first = Output("T1", "one");
  const uint64_t second = Output("T1", "two");
  auto receiver = Receive("T1");
  std::optional<v1::ReceiveResponse> out = receiver->Next();
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->out_seq(), 1u);
  EXPECT_EQ(out->message().id(), first);
  EXPECT_EQ(out->message().payload(), "one");
  EXPECT_FALSE(out->exception_response());
  // Not sent again, and the next not sent before the acknowledgement.
  EXPECT_FALSE(receiver->Next(kNoOutputWait).has_value());
  EXPECT_EQ(Display("T1").out_seq(), 1u);
  EXPECT_FALSE(Display("T1").output_acknowledged());
  ASSERT_OK(Ack("T1", 1));
  ASSERT_OK(Ack("T1", 1));  // the last acknowledged number again: OK
  out = receiver->Next();
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->out_seq(), 2u);
  EXPECT_EQ(out->message().id(), second);
  // Output that comes later is sent once the previous is acknowledged.
  ASSERT_OK(Ack("T1", 2));
  EXPECT_FALSE(receiver->Next(kNoOutputWait).has_value());
  const uint64_t third = Output("T1", "three");
  out = receiver->Next();
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->out_seq(), 3u);
  EXPECT_EQ(out->message().id(), third);
  EXPECT_EQ(Depth("OUT.T1"), 0u);  // the sent one is off its queue

  // Acknowledgement refusals.
  EXPECT_REFUSED(Ack("T1", 0), kInvalidArgument, "");
  EXPECT_REFUSED(Ack("T1", 1), kFailedPrecondition, "");  // neither outstanding nor the last
  EXPECT_REFUSED(Ack("T1", 4), kFailedPrecondition, "");
  ASSERT_OK(Ack("T1", 2));  // the last acknowledged, though 3 is sent: a retry, OK
  v1::AcknowledgeRequest no_sense;
  no_sense.set_session("T1");
  no_sense.set_out_seq(3);
  v1::AcknowledgeResponse response;
  EXPECT_REFUSED(qm_->Acknowledge(Ctx().get(), no_sense, &response), kInvalidArgument, "");
  no_sense.set_positive(true);
  no_sense.set_sense_code(8);
  EXPECT_REFUSED(qm_->Acknowledge(Ctx().get(), no_sense, &response), kInvalidArgument, "");
  ASSERT_OK(Ack("T1", 3));
  EXPECT_TRUE(Display("T1").output_acknowledged());
}

TEST_F(SessionsTest, IrrecoverableOutputIsAnExceptionResponseDoneWhenSent) {
  DefineOutput("T1");
  OpenFresh("T1");
  Output("T1", "fyi", v1::IRRECOVERABLE);
  const uint64_t numbered = Output("T1", "numbered");
  auto receiver = Receive("T1");
  std::optional<v1::ReceiveResponse> out = receiver->Next();
  ASSERT_TRUE(out.has_value());
  EXPECT_TRUE(out->exception_response());
  EXPECT_EQ(out->out_seq(), 0u);
  EXPECT_EQ(out->message().payload(), "fyi");
  out = receiver->Next();  // no acknowledgement needed before the next
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->out_seq(), 1u);
  EXPECT_EQ(out->message().id(), numbered);
}

TEST_F(SessionsTest, ReceiveRefusalsAndHowTheStreamEnds) {
  OpenFresh("NOQ");
  EXPECT_REFUSED(*Receive("NOQ")->End(), kFailedPrecondition, "");  // no output queue

  DefineOutput("T1");
  OpenFresh("T1");
  // A rebind ends the stream of the previous binding.
  auto receiver = Receive("T1");
  EXPECT_FALSE(receiver->End(kNoOutputWait).has_value());
  bool resync = false;
  ASSERT_OK(Open("T1", false, &resync));
  EXPECT_REFUSED(*receiver->End(), kAborted, "");
  v1::SetAndTestSequenceNumbersResponse answer;
  ASSERT_OK(Stsn("T1", {v1::IGNORE}, {v1::IGNORE}, &answer));
  ASSERT_OK(Sdt("T1"));
  // RQR ends it too; before SDT Receive is refused.
  receiver = Receive("T1");
  EXPECT_FALSE(receiver->End(kNoOutputWait).has_value());
  ASSERT_OK(Rqr("T1"));
  EXPECT_REFUSED(*receiver->End(), kFailedPrecondition, "RESYNC_REQUIRED");
  EXPECT_REFUSED(*Receive("T1")->End(), kFailedPrecondition, "RESYNC_REQUIRED");
  ASSERT_OK(Stsn("T1", {v1::IGNORE}, {v1::IGNORE}, &answer));
  ASSERT_OK(Sdt("T1"));
  // Clear ends it.
  receiver = Receive("T1");
  EXPECT_FALSE(receiver->End(kNoOutputWait).has_value());
  ASSERT_OK(Clear("T1"));
  EXPECT_REFUSED(*receiver->End(), kAborted, "");
}

// The client's stream broke after output was written: the output stays
// outstanding, and a new stream (same binding) gets it again, same number.
TEST_F(SessionsTest, ANewReceiveStreamGetsTheUnacknowledgedOutputAgain) {
  DefineOutput("T1");
  OpenFresh("T1");
  const uint64_t id = Output("T1", "again");
  ASSERT_TRUE(Receive("T1")->Next().has_value());  // then cancelled
  auto receiver = Receive("T1");
  std::optional<v1::ReceiveResponse> out = receiver->Next();
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->out_seq(), 1u);
  EXPECT_EQ(out->message().id(), id);
  ASSERT_OK(Ack("T1", 1));
  EXPECT_FALSE(receiver->Next(kNoOutputWait).has_value());
}

// Receive streams idle for output hold no wait thread between slices: more
// streams than wait threads all get their output, and a waiting Get too.
class SessionsFewThreadsTest : public SessionsTest {
 protected:
  SessionsFewThreadsTest() { flags_.insert(flags_.end(), {"--wait-threads", "2"}); }
};

TEST_F(SessionsFewThreadsTest, MoreReceiveStreamsThanWaitThreadsAllGetTheirOutput) {
  constexpr int kSessions = 6;
  std::vector<std::unique_ptr<Receiver>> receivers;
  for (int i = 0; i < kSessions; ++i) {
    const std::string session = absl::StrCat("S", i);
    DefineOutput(session);
    OpenFresh(session);
    receivers.push_back(Receive(session));
  }
  absl::SleepFor(kNoOutputWait);  // every stream waiting
  v1::GetRequest get;
  get.set_queue("IN");
  get.set_wait_ms(5000);
  v1::GetResponse got;
  grpc::ClientContext get_context;
  get_context.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  std::thread getter([&] { EXPECT_TRUE(qm_->Get(&get_context, get, &got).ok()); });
  std::vector<uint64_t> ids;
  for (int i = 0; i < kSessions; ++i) ids.push_back(Output(absl::StrCat("S", i), "for you"));
  v1::EnqueueRequest input;
  input.mutable_message()->set_queue("IN");
  input.mutable_message()->set_payload("for the Get");
  v1::EnqueueResponse enqueued;
  ASSERT_OK(qm_->Enqueue(Ctx().get(), input, &enqueued));
  for (int i = 0; i < kSessions; ++i) {
    std::optional<v1::ReceiveResponse> out = receivers[i]->Next();
    ASSERT_TRUE(out.has_value()) << i;
    EXPECT_EQ(out->message().id(), ids[i]);
  }
  getter.join();
  EXPECT_TRUE(got.has_message());
}

// A stream that missed a whole RQR, STSN, SDT cycle (it was between two of
// its waits) must not go on: the output it sent is to be sent again.
TEST_F(SessionsTest, AStreamOlderThanAResyncEnds) {
  DefineOutput("T1");
  OpenFresh("T1");
  const uint64_t id = Output("T1", "once");
  auto receiver = Receive("T1");
  ASSERT_TRUE(receiver->Next().has_value());
  ASSERT_OK(Rqr("T1"));
  v1::SetAndTestSequenceNumbersResponse answer;
  ASSERT_OK(Stsn("T1", {v1::IGNORE}, {v1::SET_AND_TEST, 0}, &answer));
  EXPECT_EQ(answer.output().outcome(), v1::WILL_RESEND);
  ASSERT_OK(Sdt("T1"));
  EXPECT_REFUSED(*receiver->End(), kFailedPrecondition, "RESYNC_REQUIRED");
  auto again = Receive("T1");
  std::optional<v1::ReceiveResponse> out = again->Next();
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->out_seq(), 1u);
  EXPECT_EQ(out->message().id(), id);
}

TEST_F(SessionsTest, CloseSessionIsRefusedWithOutputUnacknowledgedOrInputOutstanding) {
  DefineOutput("T1");
  OpenFresh("T1");
  Output("T1", "x");
  auto receiver = Receive("T1");
  ASSERT_TRUE(receiver->Next().has_value());
  EXPECT_REFUSED(Close("T1"), kFailedPrecondition, "OUTPUT_UNACKNOWLEDGED");
  ASSERT_OK(Ack("T1", 1));
  ASSERT_OK(Input("T1", 1, "FAST", v1::FASTPATH));
  EXPECT_REFUSED(Input("T1", 2), kFailedPrecondition, "RESPONSE_OUTSTANDING");
  EXPECT_REFUSED(Close("T1"), kFailedPrecondition, "RESPONSE_OUTSTANDING");
  ASSERT_NO_FATAL_FAILURE(Process("FAST"));
  ASSERT_OK(Close("T1"));
  EXPECT_REFUSED(*receiver->End(), kAborted, "");
  EXPECT_REFUSED(Input("T1", 2), kFailedPrecondition, "SESSION_NOT_OPEN");
  EXPECT_FALSE(Display("T1").bound());
  OpenFresh("T1");  // closed: no resync
  ASSERT_OK(Input("T1", 2));
}

// A RESPONSE input waits for its reply; the next input may carry the
// acknowledgement of that reply (ack_out_seq), which ends the wait.
TEST_F(SessionsTest, ImpliedAcknowledgementConfirmsTheReplyAndAdmitsTheNextInput) {
  DefineOutput("T1");
  OpenFresh("T1");
  ASSERT_OK(Input("T1", 1, "FAST", v1::RESPONSE));
  ASSERT_NO_FATAL_FAILURE(Process("FAST", "T1"));
  auto receiver = Receive("T1");
  std::optional<v1::ReceiveResponse> reply = receiver->Next();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->out_seq(), 1u);
  EXPECT_EQ(Display("T1").pending_input(), 1u);
  EXPECT_REFUSED(Input("T1", 2), kFailedPrecondition, "RESPONSE_OUTSTANDING");
  EXPECT_REFUSED(Input("T1", 2, "IN", v1::RECOVERABLE, /*ack_out_seq=*/2), kFailedPrecondition, "");
  ASSERT_OK(Input("T1", 2, "IN", v1::RECOVERABLE, /*ack_out_seq=*/1));
  const v1::SessionInfo info = Display("T1");
  EXPECT_TRUE(info.output_acknowledged());
  EXPECT_EQ(info.pending_input(), 0u);
  EXPECT_EQ(info.in_seq(), 2u);

  // The same through EnqueueBatch (its first message) and EnqueueStream.
  Output("T1", "second");
  std::optional<v1::ReceiveResponse> out = receiver->Next();
  ASSERT_TRUE(out.has_value());
  ASSERT_EQ(out->out_seq(), 2u);
  v1::EnqueueBatchRequest batch;
  for (uint64_t seq : {3, 4}) {
    v1::NewMessage* m = batch.add_messages();
    m->set_queue("IN");
    m->set_payload("batched");
    m->set_session("T1");
    m->set_input_seq(seq);
  }
  batch.mutable_messages(0)->set_ack_out_seq(2);
  v1::EnqueueBatchResponse batched;
  ASSERT_OK(qm_->EnqueueBatch(Ctx().get(), batch, &batched));
  EXPECT_TRUE(Display("T1").output_acknowledged());

  Output("T1", "third");
  out = receiver->Next();
  ASSERT_TRUE(out.has_value());
  ASSERT_EQ(out->out_seq(), 3u);
  grpc::ClientContext stream_context;
  auto stream = qm_->EnqueueStream(&stream_context);
  v1::EnqueueRequest streamed;
  streamed.mutable_message()->set_queue("IN");
  streamed.mutable_message()->set_payload("streamed");
  streamed.mutable_message()->set_session("T1");
  streamed.mutable_message()->set_input_seq(5);
  streamed.mutable_message()->set_ack_out_seq(3);
  ASSERT_TRUE(stream->Write(streamed));
  v1::EnqueueStreamResponse answer;
  ASSERT_TRUE(stream->Read(&answer));
  EXPECT_TRUE(answer.has_enqueued()) << answer.DebugString();
  stream->WritesDone();
  ASSERT_OK(stream->Finish());
  const v1::SessionInfo after = Display("T1");
  EXPECT_TRUE(after.output_acknowledged());
  EXPECT_EQ(after.in_seq(), 5u);
  EXPECT_EQ(after.out_seq(), 3u);
}

TEST_F(SessionsTest, NegativeAcknowledgementsCountAndMoveTheOutputAtTheThreshold) {
  Define("BOQ");
  v1::QueueAttributes attributes;
  attributes.set_backout_threshold(2);
  attributes.set_backout_queue("BOQ");
  DefineOutput("T1", attributes);
  OpenFresh("T1");
  const uint64_t id = Output("T1", "refused twice");
  auto receiver = Receive("T1");
  std::optional<v1::ReceiveResponse> out = receiver->Next();
  ASSERT_TRUE(out.has_value());
  bool moved = true;
  ASSERT_OK(Ack("T1", 1, /*sense_code=*/0x0801, &moved));
  EXPECT_FALSE(moved);
  // Kept, and after a crash still counted: sent again with the next number.
  receiver.reset();
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  // The client keeps the number it acknowledged, negatively or not.
  Resync("T1", {v1::SET_AND_TEST, 0}, {v1::SET_AND_TEST, 1, id});
  receiver = Receive("T1");
  out = receiver->Next();
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->out_seq(), 2u);
  EXPECT_EQ(out->message().id(), id);
  EXPECT_EQ(out->message().backout_count(), 1u);
  ASSERT_OK(Ack("T1", 2, 0x0801, &moved));
  EXPECT_TRUE(moved);
  EXPECT_EQ(Depth("BOQ"), 1u);
  EXPECT_EQ(Depth("OUT.T1"), 0u);
  EXPECT_FALSE(receiver->Next(kNoOutputWait).has_value());
  EXPECT_TRUE(Display("T1").output_acknowledged());
}

TEST_F(SessionsTest, ClearDiscardsInputNotYetHardenedAndRequiresResync) {
  DefineOutput("T1");
  OpenFresh("T1");
  ASSERT_OK(Input("T1", 1));
  ASSERT_OK(Input("T1", 2, "FAST", v1::FASTPATH));
  uint64_t discarded = 0;
  ASSERT_OK(Clear("T1", &discarded));
  EXPECT_EQ(discarded, 1u);
  EXPECT_EQ(Depth("FAST"), 0u);
  EXPECT_REFUSED(Input("T1", 2, "FAST", v1::FASTPATH), kFailedPrecondition, "RESYNC_REQUIRED");
  // The discarded input is to be reissued.
  v1::SetAndTestSequenceNumbersResponse answer;
  ASSERT_OK(Stsn("T1", {v1::SET_AND_TEST, 2}, {v1::SET_AND_TEST, 0}, &answer));
  EXPECT_EQ(answer.input().result(), v1::TEST_POSITIVE);
  EXPECT_EQ(answer.input().in_seq(), 1u);
  EXPECT_EQ(answer.input().resend_from(), 2u);
  EXPECT_EQ(answer.input().resend_to(), 2u);
  ASSERT_OK(Sdt("T1"));
  ASSERT_OK(Input("T1", 2, "FAST", v1::FASTPATH));
}

TEST_F(SessionsTest, AssignMovesQueuedOutputAndIsRefusedWhileOutputIsUnacknowledged) {
  DefineOutput("A");
  DefineOutput("B");
  OpenFresh("A");
  OpenFresh("B");
  v1::AssignResponse assigned;
  EXPECT_REFUSED(Assign("A", "A", false, &assigned), kInvalidArgument, "");
  EXPECT_REFUSED(Assign("A", "bad name", false, &assigned), kInvalidArgument, "");
  EXPECT_REFUSED(Assign("A", "NOQ", false, &assigned), kFailedPrecondition, "");
  Output("A", "queued");
  ASSERT_OK(Assign("A", "B", false, &assigned));
  EXPECT_EQ(assigned.moved(), 1u);
  EXPECT_EQ(assigned.possible_duplicate_message_id(), 0u);
  EXPECT_EQ(Depth("OUT.B"), 1u);

  Output("A", "sent");
  auto receiver = Receive("A");
  ASSERT_TRUE(receiver->Next().has_value());
  EXPECT_REFUSED(Assign("A", "B", false, &assigned), kFailedPrecondition, "OUTPUT_UNACKNOWLEDGED");
}

// --- Resynchronization after qmgrd is killed ----------------------------------------

// The input hardened, and the answer was lost with the server: the client
// does not know. STSN says in_seq covers it; resending it is ALREADY_HARDENED.
TEST_F(SessionsTest, KilledAfterInputHardenedTheResentInputIsAlreadyHardened) {
  OpenFresh("T1");
  ASSERT_OK(Input("T1", 1));
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  const auto answer = Resync("T1", {v1::SET_AND_TEST, 1}, {v1::SET_AND_TEST, 0});
  EXPECT_EQ(answer.input().in_seq(), 1u);
  EXPECT_EQ(answer.input().resend_from(), 0u);
  EXPECT_REFUSED(Input("T1", 1), kFailedPrecondition, "ALREADY_HARDENED");
  ASSERT_OK(Input("T1", 2));
  EXPECT_EQ(Depth("IN"), 2u);
}

// Inputs the client sent that never reached the server (it died first):
// STSN gives the range to resend.
TEST_F(SessionsTest, KilledBeforeInputArrivedStsnGivesTheResendRange) {
  OpenFresh("T1");
  ASSERT_OK(Input("T1", 1));
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  // The client's file says it sent 3; 2 and 3 were lost in flight.
  const auto answer = Resync("T1", {v1::SET_AND_TEST, 3}, {v1::SET_AND_TEST, 0});
  EXPECT_EQ(answer.input().in_seq(), 1u);
  EXPECT_EQ(answer.input().resend_from(), 2u);
  EXPECT_EQ(answer.input().resend_to(), 3u);
  ASSERT_OK(Input("T1", 2));
  ASSERT_OK(Input("T1", 3));
  EXPECT_EQ(Display("T1").in_seq(), 3u);
}

// Inputs pipelined on an EnqueueStream when qmgrd is killed: some hardened
// (answered or not), the rest lost. STSN's in_seq covers every answered one
// and its resend range the rest; after the resend each input is on the queue
// exactly once, in order.
TEST_F(SessionsTest, KilledWhileInputsAreInFlightEachIsHeldOnceAfterTheResend) {
  OpenFresh("T1");
  constexpr uint64_t kInputs = 400;
  uint64_t answered = 0;  // the last input answered as enqueued
  uint64_t written = 0;   // the last input the client sent (its session file's)
  {
    grpc::ClientContext context;
    auto stream = qm_->EnqueueStream(&context);
    std::thread reader([&] {
      v1::EnqueueStreamResponse response;
      for (uint64_t seq = 1; stream->Read(&response); ++seq) {
        if (response.has_enqueued()) answered = seq;
      }
    });
    for (uint64_t seq = 1; seq <= kInputs; ++seq) {
      if (seq == kInputs / 2) process_->Signal(SIGKILL);
      v1::EnqueueRequest request;
      request.mutable_message()->set_queue("IN");
      request.mutable_message()->set_payload(absl::StrCat("T1-in-", seq));
      request.mutable_message()->set_session("T1");
      request.mutable_message()->set_input_seq(seq);
      if (!stream->Write(request)) break;
      written = seq;
    }
    stream->WritesDone();
    reader.join();
    stream->Finish().IgnoreError();
  }
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  const auto answer = Resync("T1", {v1::SET_AND_TEST, written}, {v1::SET_AND_TEST, 0});
  const uint64_t held = answer.input().in_seq();
  EXPECT_GE(held, answered);
  EXPECT_LE(held, written);
  if (held < written) {
    EXPECT_EQ(answer.input().resend_from(), held + 1);
    EXPECT_EQ(answer.input().resend_to(), written);
  }
  for (uint64_t seq = held + 1; seq <= written; ++seq) ASSERT_OK(Input("T1", seq));
  v1::BrowseRequest browse;
  browse.set_queue("IN");
  browse.set_max_messages(kInputs + 1);
  v1::BrowseResponse browsed;
  ASSERT_OK(admin_->Browse(Ctx().get(), browse, &browsed));
  ASSERT_EQ(static_cast<uint64_t>(browsed.messages_size()), written);
  for (uint64_t i = 0; i < written; ++i) {
    EXPECT_EQ(browsed.messages(i).payload(), absl::StrCat("T1-in-", i + 1));
  }
}

// A deferred (FASTPATH) input is recoverable only from its sync point: killed
// before it, the input is gone and must be reissued; after it, it is hardened.
TEST_F(SessionsTest, KilledBeforeADeferredInputsSyncPointItIsReissued) {
  OpenFresh("T1");
  ASSERT_OK(Input("T1", 1));
  ASSERT_OK(Input("T1", 2, "FAST", v1::FASTPATH));
  EXPECT_EQ(Display("T1").pending_input(), 2u);
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  EXPECT_EQ(Depth("FAST"), 0u);
  const auto answer = Resync("T1", {v1::SET_AND_TEST, 2}, {v1::SET_AND_TEST, 0});
  EXPECT_EQ(answer.input().in_seq(), 1u);
  EXPECT_EQ(answer.input().pending_input(), 0u);
  EXPECT_EQ(answer.input().resend_from(), 2u);
  EXPECT_EQ(answer.input().resend_to(), 2u);
  ASSERT_OK(Input("T1", 2, "FAST", v1::FASTPATH));
}

TEST_F(SessionsTest, KilledAfterADeferredInputsSyncPointItIsHardened) {
  OpenFresh("T1");
  ASSERT_OK(Input("T1", 1, "FAST", v1::FASTPATH));
  ASSERT_NO_FATAL_FAILURE(Process("FAST"));
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  const auto answer = Resync("T1", {v1::SET_AND_TEST, 1}, {v1::SET_AND_TEST, 0});
  EXPECT_EQ(answer.input().in_seq(), 1u);
  EXPECT_EQ(answer.input().resend_from(), 0u);
  EXPECT_REFUSED(Input("T1", 1, "FAST", v1::FASTPATH), kFailedPrecondition, "ALREADY_HARDENED");
  ASSERT_OK(Input("T1", 2, "FAST", v1::FASTPATH));
}

// The client secured output 1 but its acknowledgement never reached the
// server. Whether or not OUTPUT_SENT reached the disk, STSN recognises the
// output (by number, or by its message id) and dequeues it: DELIVERED.
TEST_F(SessionsTest, KilledBeforeTheAcknowledgementStsnConfirmsTheSecuredOutput) {
  for (const bool flushed : {true, false}) {
    SCOPED_TRACE(flushed ? "OUTPUT_SENT durable" : "OUTPUT_SENT maybe lost");
    const std::string session = flushed ? "T1" : "T2";
    DefineOutput(session);
    OpenFresh(session);
    const uint64_t id = Output(session, "secured");
    {
      auto receiver = Receive(session);
      std::optional<v1::ReceiveResponse> out = receiver->Next();
      ASSERT_TRUE(out.has_value());
      ASSERT_EQ(out->out_seq(), 1u);
      if (flushed) {
        ASSERT_NO_FATAL_FAILURE(Flush());
      }
    }
    ASSERT_NO_FATAL_FAILURE(KillAndRestart());
    const auto answer = Resync(session, {v1::SET_AND_TEST, 0}, {v1::SET_AND_TEST, 1, id});
    EXPECT_EQ(answer.output().outcome(), v1::DELIVERED);
    EXPECT_EQ(answer.output().out_seq(), 1u);
    EXPECT_EQ(Depth("OUT." + session), 0u);
    EXPECT_TRUE(Display(session).output_acknowledged());
    auto receiver = Receive(session);
    EXPECT_FALSE(receiver->Next(kNoOutputWait).has_value());
  }
}

// Output 1 was sent (OUTPUT_SENT durable) but the client never got it: it
// is behind by one; STSN answers WILL_RESEND and Receive sends it again
// with the same number.
TEST_F(SessionsTest, KilledBeforeTheOutputArrivedItIsSentAgainWithTheSameNumber) {
  DefineOutput("T1");
  OpenFresh("T1");
  const uint64_t id = Output("T1", "lost in flight");
  {
    auto receiver = Receive("T1");
    ASSERT_TRUE(receiver->Next().has_value());
    ASSERT_NO_FATAL_FAILURE(Flush());
  }
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  const auto answer = Resync("T1", {v1::SET_AND_TEST, 0}, {v1::SET_AND_TEST, 0});
  EXPECT_EQ(answer.output().outcome(), v1::WILL_RESEND);
  EXPECT_EQ(answer.output().out_seq(), 0u);
  auto receiver = Receive("T1");
  std::optional<v1::ReceiveResponse> out = receiver->Next();
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->out_seq(), 1u);
  EXPECT_EQ(out->message().id(), id);
  ASSERT_OK(Ack("T1", 1));
  EXPECT_EQ(Depth("OUT.T1"), 0u);
}

// The acknowledgement reached the server (durable on return) but its answer
// was lost: STSN agrees, nothing is outstanding, and acknowledging again is OK.
TEST_F(SessionsTest, KilledAfterTheAcknowledgementNothingIsOutstanding) {
  DefineOutput("T1");
  OpenFresh("T1");
  const uint64_t id = Output("T1", "acknowledged");
  {
    auto receiver = Receive("T1");
    ASSERT_TRUE(receiver->Next().has_value());
    ASSERT_OK(Ack("T1", 1));
  }
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  const auto answer = Resync("T1", {v1::SET_AND_TEST, 0}, {v1::SET_AND_TEST, 1, id});
  EXPECT_EQ(answer.output().outcome(), v1::NO_OUTPUT_OUTSTANDING);
  EXPECT_EQ(answer.output().out_seq(), 1u);
  ASSERT_OK(Ack("T1", 1));
  EXPECT_EQ(Depth("OUT.T1"), 0u);
}

// An input that carried the acknowledgement (ack_out_seq) hardened both:
// after the kill the output is acknowledged and the input is in_seq.
TEST_F(SessionsTest, KilledAfterAnImpliedAcknowledgementBothAreHardened) {
  DefineOutput("T1");
  OpenFresh("T1");
  const uint64_t id = Output("T1", "confirmed by the next input");
  {
    auto receiver = Receive("T1");
    ASSERT_TRUE(receiver->Next().has_value());
    ASSERT_OK(Input("T1", 1, "IN", v1::RECOVERABLE, /*ack_out_seq=*/1));
  }
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  const auto answer = Resync("T1", {v1::SET_AND_TEST, 1}, {v1::SET_AND_TEST, 1, id});
  EXPECT_EQ(answer.input().in_seq(), 1u);
  EXPECT_EQ(answer.output().outcome(), v1::NO_OUTPUT_OUTSTANDING);
  EXPECT_EQ(Depth("OUT.T1"), 0u);
}

// A gap in the input numbers: SEQUENCE_GAP; the client asks for recovery
// (RQR), STSN tells it what to resend, SDT resumes. Also across a kill.
TEST_F(SessionsTest, SequenceGapThenRequestRecoveryThenResendAcrossAKill) {
  OpenFresh("T1");
  ASSERT_OK(Input("T1", 1));
  EXPECT_REFUSED(Input("T1", 3), kFailedPrecondition, "SEQUENCE_GAP");
  ASSERT_OK(Rqr("T1"));
  EXPECT_REFUSED(Input("T1", 2), kFailedPrecondition, "RESYNC_REQUIRED");
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  const auto answer = Resync("T1", {v1::SET_AND_TEST, 3}, {v1::SET_AND_TEST, 0});
  EXPECT_EQ(answer.input().resend_from(), 2u);
  EXPECT_EQ(answer.input().resend_to(), 3u);
  ASSERT_OK(Input("T1", 2));
  ASSERT_OK(Input("T1", 3));
  EXPECT_REFUSED(Input("T1", 3), kFailedPrecondition, "ALREADY_HARDENED");
}

// A normal shutdown closes idle sessions: no resync after the restart. One
// with unacknowledged output keeps its state and resynchronizes; its Receive
// ends UNAVAILABLE.
TEST_F(SessionsTest, NormalShutdownClosesIdleSessionsOthersResync) {
  DefineOutput("BUSY");
  OpenFresh("IDLE");
  OpenFresh("BUSY");
  ASSERT_OK(Input("IDLE", 1));
  const uint64_t id = Output("BUSY", "unacknowledged");
  auto receiver = Receive("BUSY");
  ASSERT_TRUE(receiver->Next().has_value());
  process_->Signal(SIGTERM);
  EXPECT_REFUSED(*receiver->End(), kUnavailable, "");
  ASSERT_EQ(process_->WaitExit(absl::Seconds(20)), 0) << process_->Stderr();
  receiver.reset();
  ASSERT_NO_FATAL_FAILURE(Start());
  bool resync = true;
  ASSERT_OK(Open("IDLE", false, &resync));
  EXPECT_FALSE(resync);
  ASSERT_OK(Input("IDLE", 2));
  const auto answer = Resync("BUSY", {v1::SET_AND_TEST, 0}, {v1::SET_AND_TEST, 1, id});
  EXPECT_EQ(answer.output().outcome(), v1::DELIVERED);

  // The same through Admin Shutdown.
  v1::ShutdownRequest request;
  v1::ShutdownResponse response;
  ASSERT_OK(admin_->Shutdown(Ctx().get(), request, &response));
  ASSERT_EQ(process_->WaitExit(absl::Seconds(20)), 0) << process_->Stderr();
  ASSERT_NO_FATAL_FAILURE(Start());
  for (const char* session : {"IDLE", "BUSY"}) {
    ASSERT_OK(Open(session, false, &resync));
    EXPECT_FALSE(resync) << session;
  }
}

// The shutdown's grace is also for sessions' unacknowledged output: one
// acknowledged then closes like an idle session, with no resync after.
TEST_F(SessionsTest, OutputAcknowledgedDuringTheShutdownGraceNeedsNoResync) {
  DefineOutput("LATE");
  OpenFresh("LATE");
  Output("LATE", "acknowledged late");
  auto receiver = Receive("LATE");
  std::optional<v1::ReceiveResponse> out = receiver->Next();
  ASSERT_TRUE(out.has_value());
  process_->Signal(SIGTERM);
  EXPECT_REFUSED(*receiver->End(), kUnavailable, "");
  receiver.reset();
  // The acknowledgement ends the grace; the shutdown that follows may cut its
  // answer (UNAVAILABLE) although it took effect, as the restart shows.
  const grpc::Status acked = Ack("LATE", out->out_seq());
  EXPECT_TRUE(acked.ok() || acked.error_code() == grpc::StatusCode::UNAVAILABLE)
      << acked.error_message();
  ASSERT_EQ(process_->WaitExit(absl::Seconds(20)), 0) << process_->Stderr();
  ASSERT_NO_FATAL_FAILURE(Start());
  bool resync = true;
  ASSERT_OK(Open("LATE", false, &resync));
  EXPECT_FALSE(resync);
  EXPECT_EQ(Depth("OUT.LATE"), 0u);
}

// A forced Assign moves the sent-but-unacknowledged output too, marked
// possibly duplicate; the source's next STSN (after a kill, from the log)
// answers REASSIGNED.
TEST_F(SessionsTest, ForcedAssignSurvivesAKillAndTheSourceHearsReassigned) {
  DefineOutput("A");
  DefineOutput("B");
  OpenFresh("A");
  OpenFresh("B");
  const uint64_t sent = Output("A", "sent to A");
  const uint64_t queued = Output("A", "queued for A");
  {
    auto receiver = Receive("A");
    ASSERT_TRUE(receiver->Next().has_value());
    v1::AssignResponse assigned;
    ASSERT_OK(Assign("A", "B", /*force=*/true, &assigned));
    EXPECT_EQ(assigned.moved(), 2u);
    EXPECT_EQ(assigned.possible_duplicate_message_id(), sent);
  }
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  const auto answer = Resync("A", {v1::SET_AND_TEST, 0}, {v1::SET_AND_TEST, 0});
  EXPECT_EQ(answer.output().outcome(), v1::REASSIGNED);
  EXPECT_EQ(Depth("OUT.A"), 0u);
  Resync("B", {v1::SET_AND_TEST, 0}, {v1::SET_AND_TEST, 0});
  auto receiver = Receive("B");
  std::optional<v1::ReceiveResponse> out = receiver->Next();
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->message().id(), sent);
  EXPECT_TRUE(out->message().possible_duplicate());
  ASSERT_OK(Ack("B", out->out_seq()));
  out = receiver->Next();
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->message().id(), queued);
  EXPECT_FALSE(out->message().possible_duplicate());
}

// A client that lost its numbers opens cold: STSN SET is allowed, and the
// output it may have seen is sent again marked possibly duplicate.
TEST_F(SessionsTest, ColdClientSetsItsNumbersAndGetsOutputMarkedPossiblyDuplicate) {
  DefineOutput("T1");
  OpenFresh("T1");
  ASSERT_OK(Input("T1", 1));
  const uint64_t id = Output("T1", "maybe seen");
  {
    auto receiver = Receive("T1");
    ASSERT_TRUE(receiver->Next().has_value());
    ASSERT_NO_FATAL_FAILURE(Flush());
  }
  ASSERT_NO_FATAL_FAILURE(KillAndRestart());
  bool resync = false;
  ASSERT_OK(Open("T1", /*cold=*/true, &resync));
  EXPECT_TRUE(resync);
  v1::SetAndTestSequenceNumbersResponse answer;
  ASSERT_OK(Stsn("T1", {v1::SET, 0}, {v1::SET, 0}, &answer));
  EXPECT_EQ(answer.input().result(), v1::SET_DONE);
  EXPECT_EQ(answer.output().result(), v1::SET_DONE);
  EXPECT_EQ(answer.input().in_seq(), 0u);
  ASSERT_OK(Sdt("T1"));
  auto receiver = Receive("T1");
  std::optional<v1::ReceiveResponse> out = receiver->Next();
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->out_seq(), 1u);
  EXPECT_EQ(out->message().id(), id);
  EXPECT_TRUE(out->message().possible_duplicate());
  ASSERT_OK(Ack("T1", 1));
  ASSERT_OK(Input("T1", 1));  // numbering restarted from what the client set
  // After SDT the session is no longer cold: SET is refused again.
  ASSERT_OK(Rqr("T1"));
  EXPECT_REFUSED(Stsn("T1", {v1::SET, 5}, {v1::IGNORE}, &answer), kFailedPrecondition, "");
}

}  // namespace
}  // namespace qmgr
