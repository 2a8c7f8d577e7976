// Sessions in the engine beyond the STSN table (session_table_test):
// binding, data traffic, Receive and Acknowledge, implied acknowledgement,
// response mode, RQR, Clear, Close, Assign, exception-response output and the
// normal shutdown's SESSION_CLOSE; each refusal with its code and reason.
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "log/log.h"
#include "log/reader.h"
#include "qmgr/engine.h"
#include "tests/support/engine_on_log.h"
#include "tests/support/fault_file_system.h"

namespace qmgr {
namespace {

using qmgr::testing::FaultFileSystem;
using qmgr::v1::LogRecord;

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(testing::OpenEngineOnLog(fs_, &log_, &engine_).ok());
    ASSERT_TRUE(engine_->DefineQueue("IN", {}).ok());
    qmgr::v1::QueueAttributes out;
    out.set_output_of_session("T1");
    ASSERT_TRUE(engine_->DefineQueue("T1.OUT", out).ok());
  }

  MessageSpec Input(uint64_t seq, MessageClass cls = qmgr::v1::RECOVERABLE) {
    MessageSpec spec;
    spec.queue = "IN";
    spec.payload = absl::StrCat("input ", seq);
    spec.message_class = cls;
    spec.origin_session = "T1";
    spec.input_seq = seq;
    return spec;
  }

  uint64_t PutOutput(const std::string& payload, MessageClass cls = qmgr::v1::RECOVERABLE) {
    MessageSpec spec;
    spec.queue = "T1.OUT";
    spec.payload = payload;
    spec.message_class = cls;
    absl::StatusOr<EnqueueResult> put = engine_->Enqueue(spec);
    EXPECT_TRUE(put.ok()) << put.status();
    return put.ok() ? put->message_id : 0;
  }

  absl::StatusOr<SessionOutput> Receive() {
    return engine_->ReceiveOutput("T1", absl::ZeroDuration());
  }

  std::vector<LogRecord> RecordsOf(LogRecord::BodyCase type) {
    EXPECT_TRUE(log_->WaitAllDurable().ok());
    absl::StatusOr<std::unique_ptr<log::LogReader>> reader =
        log::LogReader::Open(&fs_, "/data/log", 0, log_->DurableLsn());
    EXPECT_TRUE(reader.ok()) << reader.status();
    std::vector<LogRecord> records;
    log::LogEntry entry;
    while (reader.ok()) {
      absl::StatusOr<bool> more = (*reader)->Next(&entry);
      if (!more.ok() || !*more) break;
      LogRecord record;
      EXPECT_TRUE(record.ParseFromString(entry.payload));
      if (record.body_case() == type) records.push_back(std::move(record));
    }
    return records;
  }

  FaultFileSystem fs_;
  std::unique_ptr<log::Log> log_;
  std::unique_ptr<Engine> engine_;
};

TEST_F(SessionTest, InputNeedsABoundSessionAndDataTraffic) {
  absl::Status unbound = engine_->Enqueue(Input(1)).status();
  EXPECT_EQ(unbound.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReasonOf(unbound), reason::kSessionNotOpen);
  EXPECT_EQ(ReasonOf(Receive().status()), reason::kSessionNotOpen);
  EXPECT_EQ(engine_->OpenSession("bad name", false).status().code(),
            absl::StatusCode::kInvalidArgument);

  absl::StatusOr<bool> resync = engine_->OpenSession("T1", false);
  ASSERT_TRUE(resync.ok());
  EXPECT_FALSE(*resync) << "a new session needs no resync";
  ASSERT_TRUE(engine_->Enqueue(Input(1)).ok());
  ASSERT_EQ(RecordsOf(LogRecord::kSessionOpen).size(), 1u);

  // A reconnect (rebind) of a session that did not close: resync first.
  resync = engine_->OpenSession("T1", false);
  ASSERT_TRUE(resync.ok());
  EXPECT_TRUE(*resync);
  absl::Status before_sdt = engine_->Enqueue(Input(2)).status();
  EXPECT_EQ(before_sdt.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReasonOf(before_sdt), reason::kResyncRequired);
  EXPECT_EQ(ReasonOf(engine_->StartDataTraffic("T1")), reason::kResyncRequired)
      << "SDT before agreement";
  StsnRequest stsn;
  stsn.input.set_action(static_cast<qmgr::v1::StsnAction>(99));
  EXPECT_EQ(engine_->SetAndTestSequenceNumbers("T1", stsn).status().code(),
            absl::StatusCode::kInvalidArgument);
  stsn.input.set_action(qmgr::v1::SET_AND_TEST);
  stsn.input.set_last_sent(1);
  ASSERT_TRUE(engine_->SetAndTestSequenceNumbers("T1", stsn).ok());
  ASSERT_TRUE(engine_->StartDataTraffic("T1").ok());
  EXPECT_EQ(engine_->SetAndTestSequenceNumbers("T1", stsn).status().code(),
            absl::StatusCode::kFailedPrecondition)
      << "STSN during data traffic";
  EXPECT_TRUE(engine_->Enqueue(Input(2)).ok());

  // RQR: data traffic stops until STSN and SDT again.
  ASSERT_TRUE(engine_->RequestRecovery("T1").ok());
  EXPECT_EQ(ReasonOf(engine_->Enqueue(Input(3)).status()), reason::kResyncRequired);
  stsn.input.set_last_sent(2);
  ASSERT_TRUE(engine_->SetAndTestSequenceNumbers("T1", stsn).ok());
  ASSERT_TRUE(engine_->StartDataTraffic("T1").ok());
  EXPECT_TRUE(engine_->Enqueue(Input(3)).ok());
}

TEST_F(SessionTest, OneOutputOutstandingUntilAcknowledged) {
  ASSERT_TRUE(engine_->OpenSession("T1", false).ok());
  const uint64_t m1 = PutOutput("one");
  const uint64_t m2 = PutOutput("two");
  absl::StatusOr<SessionOutput> out = Receive();
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->out_seq, 1u);
  EXPECT_EQ(out->message.id(), m1);
  EXPECT_EQ(out->message.payload(), "one");
  out = Receive();
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->out_seq, 1u) << "the same output again until it is acknowledged";
  EXPECT_EQ(engine_->Acknowledge("T1", 2, true, 0).status().code(),
            absl::StatusCode::kFailedPrecondition)
      << "output 2 was not sent";
  EXPECT_EQ(engine_->Acknowledge("T1", 1, true, 7).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status busy = engine_->CloseSession("T1");
  EXPECT_EQ(ReasonOf(busy), reason::kOutputUnacknowledged) << busy;
  ASSERT_TRUE(engine_->Acknowledge("T1", 1, true, 0).ok());
  EXPECT_TRUE(engine_->Acknowledge("T1", 1, true, 0).ok()) << "again: OK";
  ASSERT_EQ(RecordsOf(LogRecord::kOutputAcked).size(), 1u);
  EXPECT_EQ(RecordsOf(LogRecord::kOutputSent).size(), 1u);
  out = Receive();
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->out_seq, 2u);
  EXPECT_EQ(out->message.id(), m2);

  // An input carrying ack_out_seq acknowledges output 2 (as a reply implies DR2).
  MessageSpec input = Input(1);
  input.ack_out_seq = 2;
  ASSERT_TRUE(engine_->Enqueue(input).ok());
  EXPECT_EQ(engine_->DisplayQueue("T1.OUT")->taken, 0u);
  EXPECT_EQ(Receive().status().code(), absl::StatusCode::kDeadlineExceeded);
  input = Input(2);
  input.ack_out_seq = 5;
  EXPECT_EQ(engine_->Enqueue(input).status().code(), absl::StatusCode::kFailedPrecondition)
      << "an implied acknowledgement of an output never sent refuses the input";
  EXPECT_EQ(engine_->SessionInSeq("T1"), 1u);
  ASSERT_TRUE(engine_->CloseSession("T1").ok());
  EXPECT_EQ(RecordsOf(LogRecord::kSessionClose).size(), 1u);
  EXPECT_EQ(ReasonOf(engine_->Enqueue(Input(2)).status()), reason::kSessionNotOpen);
}

TEST_F(SessionTest, IrrecoverableOutputIsExceptionResponse) {
  ASSERT_TRUE(engine_->OpenSession("T1", false).ok());
  PutOutput("fire and forget", qmgr::v1::IRRECOVERABLE);
  PutOutput("kept");
  absl::StatusOr<SessionOutput> out = Receive();
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(out->exception_response);
  EXPECT_EQ(out->out_seq, 0u) << "irrecoverable output is not numbered";
  out = Receive();
  ASSERT_TRUE(out.ok());
  EXPECT_FALSE(out->exception_response);
  EXPECT_EQ(out->out_seq, 1u);
  EXPECT_EQ(RecordsOf(LogRecord::kOutputSent).size(), 1u);
}

// Response mode: a deferred input whose unit replies to the session waits
// for that reply's acknowledgement; then the next input is taken.
TEST_F(SessionTest, ResponseModeEndsWhenTheReplyIsAcknowledged) {
  ASSERT_TRUE(engine_->OpenSession("T1", false).ok());
  ASSERT_TRUE(engine_->Enqueue(Input(1, qmgr::v1::RESPONSE)).ok());
  EXPECT_EQ(ReasonOf(engine_->Enqueue(Input(1, qmgr::v1::RESPONSE)).status()),
            reason::kAlreadyHardened)
      << "a retry of the pending input: held once";
  EXPECT_EQ(engine_->DisplayQueue("IN")->depth, 1u);
  EXPECT_EQ(ReasonOf(engine_->Enqueue(Input(2, qmgr::v1::RESPONSE)).status()),
            reason::kResponseOutstanding);
  EXPECT_EQ(ReasonOf(engine_->CloseSession("T1")), reason::kResponseOutstanding);
  GetOptions get;
  get.queue = "IN";
  absl::StatusOr<GetResult> got = engine_->Get(get);
  ASSERT_TRUE(got.ok());
  MessageSpec reply;
  reply.queue = "T1.OUT";
  reply.payload = "reply";
  ASSERT_TRUE(engine_->Insert(got->uow, reply).ok());
  ASSERT_TRUE(engine_->SyncPoint(got->uow).ok());
  EXPECT_EQ(engine_->SessionInSeq("T1"), 1u);
  EXPECT_EQ(ReasonOf(engine_->Enqueue(Input(2, qmgr::v1::RESPONSE)).status()),
            reason::kResponseOutstanding)
      << "the reply is not acknowledged yet";
  absl::StatusOr<SessionOutput> out = Receive();
  ASSERT_TRUE(out.ok());
  MessageSpec next = Input(2, qmgr::v1::RESPONSE);
  next.ack_out_seq = out->out_seq;
  EXPECT_TRUE(engine_->Enqueue(next).ok()) << "the implied acknowledgement ends the wait";
}

TEST_F(SessionTest, ClearDiscardsUnhardenedInputAndEndsReceive) {
  ASSERT_TRUE(engine_->OpenSession("T1", false).ok());
  ASSERT_TRUE(engine_->Enqueue(Input(1)).ok());
  ASSERT_TRUE(engine_->Enqueue(Input(2, qmgr::v1::FASTPATH)).ok());
  absl::Status receive_ended;
  std::thread receiver(
      [&] { receive_ended = engine_->ReceiveOutput("T1", absl::Seconds(10)).status(); });
  absl::SleepFor(absl::Milliseconds(50));
  absl::StatusOr<uint64_t> discarded = engine_->Clear("T1");
  receiver.join();
  EXPECT_EQ(receive_ended.code(), absl::StatusCode::kAborted) << receive_ended;
  ASSERT_TRUE(discarded.ok());
  EXPECT_EQ(*discarded, 1u) << "the FASTPATH input, never hardened";
  EXPECT_EQ(engine_->DisplayQueue("IN")->depth, 1u) << "the hardened one stays";
  EXPECT_EQ(ReasonOf(engine_->Enqueue(Input(2)).status()), reason::kResyncRequired);
  StsnRequest stsn;
  stsn.input.set_action(qmgr::v1::SET_AND_TEST);
  stsn.input.set_last_sent(2);
  absl::StatusOr<StsnAnswer> answer = engine_->SetAndTestSequenceNumbers("T1", stsn);
  ASSERT_TRUE(answer.ok());
  EXPECT_EQ(answer->input.resend_from(), 2u) << "reissue the discarded input";
  EXPECT_EQ(answer->input.resend_to(), 2u);
}

TEST_F(SessionTest, RebindEndsTheOldReceive) {
  ASSERT_TRUE(engine_->OpenSession("T1", false).ok());
  absl::Status receive_ended;
  std::thread receiver(
      [&] { receive_ended = engine_->ReceiveOutput("T1", absl::Seconds(10)).status(); });
  absl::SleepFor(absl::Milliseconds(50));
  ASSERT_TRUE(engine_->OpenSession("T1", false).ok());
  receiver.join();
  EXPECT_EQ(receive_ended.code(), absl::StatusCode::kAborted) << receive_ended;
}

// A session is bound by one client at a time (docs/security.md): another
// client's bind is refused and changes nothing; the same client, or one
// allowed to take over, binds it again; a closed session is free.
TEST_F(SessionTest, ABoundSessionIsTakenOverOnlyByItsClientOrAnAdministrator) {
  ASSERT_TRUE(engine_->BindSession("T1", false, "carol", false).ok());
  EXPECT_EQ(engine_->SessionClient("T1"), "carol");
  absl::StatusOr<SessionBinding> refused = engine_->BindSession("T1", false, "erin", false);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReasonOf(refused.status()), reason::kSessionBound);
  EXPECT_EQ(engine_->SessionClient("T1"), "carol");

  absl::StatusOr<SessionBinding> again = engine_->BindSession("T1", false, "carol", false);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->superseded_client, "carol");
  absl::StatusOr<SessionBinding> admin = engine_->BindSession("T1", false, "op", true);
  ASSERT_TRUE(admin.ok()) << admin.status();
  EXPECT_EQ(admin->superseded_client, "carol");
  EXPECT_EQ(engine_->SessionClient("T1"), "op");

  ASSERT_TRUE(engine_->CloseSession("T1").ok());
  EXPECT_EQ(engine_->SessionClient("T1"), std::nullopt);
  absl::StatusOr<SessionBinding> free = engine_->BindSession("T1", false, "erin", false);
  ASSERT_TRUE(free.ok()) << free.status();
  EXPECT_EQ(free->superseded_client, std::nullopt);
}

TEST_F(SessionTest, NormalShutdownClosesSessionsWithNothingOutstanding) {
  qmgr::v1::QueueAttributes out;
  out.set_output_of_session("T2");
  ASSERT_TRUE(engine_->DefineQueue("T2.OUT", out).ok());
  ASSERT_TRUE(engine_->OpenSession("T1", false).ok());
  ASSERT_TRUE(engine_->OpenSession("T2", false).ok());
  MessageSpec output;
  output.queue = "T2.OUT";
  output.payload = "unacknowledged";
  ASSERT_TRUE(engine_->Enqueue(output).ok());
  ASSERT_TRUE(engine_->ReceiveOutput("T2", absl::ZeroDuration()).ok());
  engine_->Quiesce(qmgr::v1::BACKOUT_SHUTDOWN);
  const std::vector<LogRecord> closes = RecordsOf(LogRecord::kSessionClose);
  ASSERT_EQ(closes.size(), 1u);
  EXPECT_EQ(closes[0].session_close().session(), "T1") << "T2 must resynchronize";
  EXPECT_EQ(engine_->OpenSession("T1", false).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(SessionTest, AssignMovesQueuedOutput) {
  qmgr::v1::QueueAttributes out;
  out.set_output_of_session("T2");
  ASSERT_TRUE(engine_->DefineQueue("T2.OUT", out).ok());
  PutOutput("a");
  PutOutput("b");
  EXPECT_EQ(engine_->Assign("T1", "T1", false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->Assign("T1", "T3", false).status().code(),
            absl::StatusCode::kFailedPrecondition)
      << "T3 has no output queue";
  absl::StatusOr<AssignResult> moved = engine_->Assign("T1", "T2", false);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(moved->moved, 2u);
  EXPECT_EQ(engine_->DisplayQueue("T2.OUT")->depth, 2u);
  EXPECT_EQ(engine_->DisplayQueue("T1.OUT")->depth, 0u);
  ASSERT_EQ(RecordsOf(LogRecord::kAssign).size(), 1u);
  absl::StatusOr<std::vector<qmgr::v1::SessionInfo>> info = engine_->DisplaySessions({"T9"});
  EXPECT_EQ(info.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace qmgr
