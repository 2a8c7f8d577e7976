// Engine::ReceiveOutput with a ReceiveCursor, the state a streaming receiver
// (qmgrd's Receive) keeps across its calls: the output it was answered is not
// answered to it again; it waits for the acknowledgement, then gets the next;
// it ends after a rebind (ABORTED) or a resync it never saw (RESYNC_REQUIRED).
// Also: acknowledging the last acknowledged number again while the next is
// outstanding is OK (docs/sessions.md).
#include <future>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "log/log.h"
#include "qmgr/engine.h"
#include "qmgr/status.h"
#include "tests/support/engine_on_log.h"
#include "tests/support/fault_file_system.h"

namespace qmgr {
namespace {

constexpr absl::Duration kNoWait = absl::Milliseconds(20);

class ReceiveCursorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(testing::OpenEngineOnLog(fs_, &log_, &engine_).ok());
    qmgr::v1::QueueAttributes output;
    output.set_output_of_session("T1");
    ASSERT_TRUE(engine_->DefineQueue("OUT", output).ok());
    absl::StatusOr<bool> resync = engine_->OpenSession("T1", /*cold=*/false);
    ASSERT_TRUE(resync.ok() && !*resync);
  }

  uint64_t Output(const std::string& payload) {
    MessageSpec spec;
    spec.queue = "OUT";
    spec.payload = payload;
    absl::StatusOr<EnqueueResult> r = engine_->Enqueue(spec);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->message_id : 0;
  }

  testing::FaultFileSystem fs_;
  std::unique_ptr<log::Log> log_;
  std::unique_ptr<Engine> engine_;
};

TEST_F(ReceiveCursorTest, TheAnsweredOutputIsNotAnsweredAgainUntilAcknowledged) {
  const uint64_t first = Output("one");
  const uint64_t second = Output("two");
  ReceiveCursor cursor;
  absl::StatusOr<SessionOutput> out = engine_->ReceiveOutput("T1", kNoWait, &cursor);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->out_seq, 1u);
  EXPECT_EQ(out->message.id(), first);
  // The same receiver waits; another (no cursor) is answered it again.
  EXPECT_TRUE(absl::IsDeadlineExceeded(engine_->ReceiveOutput("T1", kNoWait, &cursor).status()));
  absl::StatusOr<SessionOutput> again = engine_->ReceiveOutput("T1", kNoWait);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->out_seq, 1u);

  // A waiting receiver wakes at the acknowledgement and gets the next.
  auto waiting = std::async(
      std::launch::async, [&] { return engine_->ReceiveOutput("T1", absl::Seconds(10), &cursor); });
  absl::SleepFor(absl::Milliseconds(50));
  const absl::Time acked = absl::Now();
  ASSERT_TRUE(engine_->Acknowledge("T1", 1, true, 0).ok());
  out = waiting.get();
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_LT(absl::Now() - acked, absl::Seconds(5));
  EXPECT_EQ(out->out_seq, 2u);
  EXPECT_EQ(out->message.id(), second);

  // 1 again while 2 is outstanding: a retry, OK; older or later numbers not.
  EXPECT_TRUE(engine_->Acknowledge("T1", 1, true, 0).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(engine_->Acknowledge("T1", 3, true, 0).status()));
  ASSERT_TRUE(engine_->Acknowledge("T1", 2, true, 0).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(engine_->Acknowledge("T1", 1, true, 0).status()));
}

TEST_F(ReceiveCursorTest, AReceiverEndsAfterAResyncItDidNotSeeOrARebind) {
  Output("one");
  ReceiveCursor cursor;
  ASSERT_TRUE(engine_->ReceiveOutput("T1", kNoWait, &cursor).ok());
  ASSERT_TRUE(engine_->RequestRecovery("T1").ok());
  StsnRequest stsn;
  stsn.input.set_action(qmgr::v1::IGNORE);
  stsn.output.set_action(qmgr::v1::SET_AND_TEST);  // last secured 0: WILL_RESEND
  absl::StatusOr<StsnAnswer> answer = engine_->SetAndTestSequenceNumbers("T1", stsn);
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->output.outcome(), qmgr::v1::WILL_RESEND);
  ASSERT_TRUE(engine_->StartDataTraffic("T1").ok());
  absl::Status ended = engine_->ReceiveOutput("T1", kNoWait, &cursor).status();
  EXPECT_TRUE(absl::IsFailedPrecondition(ended)) << ended;
  EXPECT_EQ(ReasonOf(ended), "RESYNC_REQUIRED");

  ReceiveCursor fresh;
  absl::StatusOr<SessionOutput> out = engine_->ReceiveOutput("T1", kNoWait, &fresh);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->out_seq, 1u);  // sent again with its number
  ASSERT_TRUE(engine_->OpenSession("T1", false).ok());
  EXPECT_TRUE(absl::IsAborted(engine_->ReceiveOutput("T1", kNoWait, &fresh).status()));
}

}  // namespace
}  // namespace qmgr
