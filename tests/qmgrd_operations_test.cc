// qmgrd's RPC semantics without gRPC (tools/qmgrd/operations.h) over a real
// engine and log on the fault-injecting file system: how an EnqueueStream's
// group of messages is answered when all are accepted, when one is refused,
// and when the log fails; who may use a unit; and that DurableCompletions
// answers only once the record an answer depends on is durable.
#include <atomic>
#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "qmgr/engine.h"
#include "qmgr/status.h"
#include "tests/support/engine_on_log.h"
#include "tests/support/fault_file_system.h"
#include "tools/qmgrd/durable_completions.h"
#include "tools/qmgrd/operations.h"

namespace qmgr::server {
namespace {

namespace v1 = qmgr::v1;

class OperationsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(testing::OpenEngineOnLog(fs_, &log_, &engine_).ok());
    ops_ = std::make_unique<Operations>(engine_.get(), OperationsOptions{});
    v1::QueueAttributes small;
    small.set_max_depth(2);
    ASSERT_TRUE(engine_->DefineQueue("Q", {}).ok());
    ASSERT_TRUE(engine_->DefineQueue("SMALL", small).ok());
  }

  static v1::NewMessage To(const std::string& queue) {
    v1::NewMessage m;
    m.set_queue(queue);
    m.set_payload("p");
    return m;
  }

  testing::FaultFileSystem fs_;
  std::unique_ptr<log::Log> log_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Operations> ops_;
};

TEST_F(OperationsTest, AcceptedGroupIsOneRecordWithIdsInOrder) {
  auto answers = ops_->EnqueueGroup({To("Q"), To("Q"), To("Q")});
  ASSERT_EQ(answers.size(), 3u);
  for (const auto& a : answers) ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(answers[0]->lsn(), answers[2]->lsn());
  EXPECT_LT(answers[0]->message_id(), answers[1]->message_id());
  EXPECT_LT(answers[1]->message_id(), answers[2]->message_id());
  EXPECT_EQ(answers[2]->durability(), v1::DURABLE);
}

TEST_F(OperationsTest, OneRefusalInAGroupIsThatMessagesAlone) {
  // The third message to SMALL finds it full; the unknown queue is refused;
  // every other message is queued, each answered on its own.
  auto answers = ops_->EnqueueGroup({To("SMALL"), To("NOPE"), To("SMALL"), To("SMALL"), To("Q")});
  ASSERT_EQ(answers.size(), 5u);
  EXPECT_TRUE(answers[0].ok());
  EXPECT_TRUE(absl::IsNotFound(answers[1].status()));
  EXPECT_TRUE(answers[2].ok());
  EXPECT_EQ(ReasonOf(answers[3].status()), "QUEUE_FULL");
  EXPECT_TRUE(answers[4].ok());
  EXPECT_EQ(engine_->DisplayQueue("SMALL")->depth, 2u);
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 1u);
}

TEST_F(OperationsTest, LogFailureIsEveryMessagesAnswerAndNothingIsRetried) {
  fs_.FailSyncAfter(0, EIO);
  auto answers = ops_->EnqueueGroup({To("Q"), To("Q")});
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_TRUE(absl::IsUnavailable(answers[0].status())) << answers[0].status();
  EXPECT_TRUE(absl::IsUnavailable(answers[1].status()));
  // Appended once, as a group (2), or not at all when the failed sync was the
  // log allocator's, before the append (0): a retry one by one would have
  // queued them again (more than 2), a partial group would show 1.
  const uint64_t depth = engine_->DisplayQueue("Q")->depth;
  EXPECT_TRUE(depth == 0 || depth == 2) << depth;
}

TEST_F(OperationsTest, StopIntakeRefusesNewWorkButLetsOpenUnitsCommit) {
  ASSERT_TRUE(ops_->Enqueue(To("Q")).ok());
  v1::GetRequest get;
  get.set_queue("Q");
  auto got = ops_->Get(get, kLeaseOwner, absl::InfiniteFuture(), [] { return false; });
  ASSERT_TRUE(got.ok() && got->has_message());
  ops_->StopIntake();
  EXPECT_TRUE(absl::IsUnavailable(ops_->Enqueue(To("Q")).status()));
  EXPECT_TRUE(absl::IsUnavailable(ops_->EnqueueGroup({To("Q")})[0].status()));
  EXPECT_TRUE(absl::IsUnavailable(
      ops_->Get(get, kLeaseOwner, absl::InfiniteFuture(), [] { return false; }).status()));
  EXPECT_EQ(ops_->LiveUnits(), 1u);
  v1::SyncPointRequest sync;
  sync.set_uow(got->uow());
  EXPECT_TRUE(ops_->SyncPoint(sync, kLeaseOwner).ok());
  EXPECT_EQ(ops_->LiveUnits(), 0u);
}

TEST_F(OperationsTest, StreamUnitsBelongToTheirStreamAndAreBackedOutWhenReleased) {
  ASSERT_TRUE(ops_->Enqueue(To("Q")).ok());
  const Owner stream = ops_->NewStreamOwner();
  const Owner other = ops_->NewStreamOwner();
  v1::GetRequest get;
  get.set_queue("Q");
  auto got = ops_->Get(get, stream, absl::InfiniteFuture(), [] { return false; });
  ASSERT_TRUE(got.ok() && got->has_message());
  v1::SyncPointRequest sync;
  sync.set_uow(got->uow());
  EXPECT_TRUE(absl::IsNotFound(ops_->SyncPoint(sync, other).status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(ops_->SyncPoint(sync, kLeaseOwner).status()));
  ops_->ReleaseOwner(stream, v1::BACKOUT_CALLER_GONE);
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 1u);
  EXPECT_EQ(ops_->LiveUnits(), 0u);
}

// Leased units that their lease ended leave the server's books: the count of
// open units does not grow with every client that went away.
TEST_F(OperationsTest, LeasedUnitsEndedByTheReaperAreForgotten) {
  OperationsOptions options;
  options.unit_lease = absl::Milliseconds(1);
  ops_ = std::make_unique<Operations>(engine_.get(), options);
  for (int i = 0; i < 1100; ++i) {
    ASSERT_TRUE(ops_->Enqueue(To("Q")).ok());
    v1::GetRequest get;
    get.set_queue("Q");
    absl::StatusOr<v1::GetResponse> got =
        ops_->Get(get, kLeaseOwner, absl::InfiniteFuture(), [] { return false; });
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(engine_->Backout(got->uow()).ok());  // as the reaper would
    absl::SleepFor(absl::Microseconds(10));
  }
  absl::StatusOr<v1::DisplayQueuesResponse> display = ops_->DisplayQueues({});
  ASSERT_TRUE(display.ok());
  EXPECT_LT(display->open_units(), 1024u);
  absl::SleepFor(absl::Milliseconds(5));  // past the last one's lease
  EXPECT_EQ(ops_->LiveUnits(), 0u);
}

// DurableCompletions (tools/qmgrd/durable_completions.h): an answer waits
// for its record's fdatasync, which the sync gate holds back.
TEST_F(OperationsTest, CompletionsAnswerAnEnqueueOnlyOnceItsRecordIsDurable) {
  DurableCompletions completions(engine_.get());
  fs_.CloseSyncGate();
  log::Lsn lsn = log::kNoLsn;
  ASSERT_TRUE(ops_->Enqueue(To("Q"), &lsn).ok());
  ASSERT_NE(lsn, log::kNoLsn);
  absl::Notification answered;
  absl::Status seen = absl::UnknownError("not answered");
  log::Lsn durable_then = 0;
  completions.After(lsn, [&](absl::Status s) {
    seen = s;
    durable_then = engine_->DurableLsn();
    answered.Notify();
  });
  ASSERT_TRUE(fs_.AwaitSyncsAtGate(1, absl::Seconds(10)));
  EXPECT_FALSE(answered.WaitForNotificationWithTimeout(absl::Milliseconds(200)));
  fs_.OpenSyncGate();
  ASSERT_TRUE(answered.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(seen.ok()) << seen;
  EXPECT_GT(durable_then, lsn);
}

TEST_F(OperationsTest, CompletionsAnswerAGetOnlyOnceThePreviousUnitsCommitIsDurable) {
  DurableCompletions completions(engine_.get());
  ASSERT_TRUE(ops_->Enqueue(To("Q")).ok());
  ASSERT_TRUE(ops_->Enqueue(To("Q")).ok());
  v1::GetRequest get;
  get.set_queue("Q");
  auto first = ops_->Get(get, kLeaseOwner, absl::InfiniteFuture(), [] { return false; });
  ASSERT_TRUE(first.ok() && first->has_message());
  fs_.CloseSyncGate();
  get.set_uow(first->uow());
  get.set_commit_previous(true);
  log::Lsn lsn = log::kNoLsn;
  auto second = ops_->Get(
      get, kLeaseOwner, absl::InfiniteFuture(), [] { return false; }, "", &lsn);
  ASSERT_TRUE(second.ok() && second->has_message());
  ASSERT_NE(lsn, log::kNoLsn);  // the previous unit's SYNCPOINT
  absl::Notification answered;
  completions.After(lsn, [&](absl::Status) { answered.Notify(); });
  ASSERT_TRUE(fs_.AwaitSyncsAtGate(1, absl::Seconds(10)));
  EXPECT_FALSE(answered.WaitForNotificationWithTimeout(absl::Milliseconds(200)));
  fs_.OpenSyncGate();
  EXPECT_TRUE(answered.WaitForNotificationWithTimeout(absl::Seconds(10)));
}

// A Get of many stops at what one answer may carry (max_send_bytes), the
// first message always; a redelivered batch is answered once the latest of
// its GET records is durable; max_messages beyond 1000 is INVALID_ARGUMENT.
TEST_F(OperationsTest, AGetOfManyFitsOneAnswerAndWaitsForItsRedeliveredRecords) {
  OperationsOptions options;
  options.max_send_bytes = 4000;
  ops_ = std::make_unique<Operations>(engine_.get(), options);
  for (int i = 0; i < 10; ++i) {
    v1::NewMessage m = To("Q");
    m.set_payload(std::string(1000, 'a' + i));
    ASSERT_TRUE(ops_->Enqueue(m).ok());
  }
  v1::GetRequest get;
  get.set_queue("Q");
  get.set_max_messages(10);
  auto got = ops_->Get(get, kLeaseOwner, absl::InfiniteFuture(), [] { return false; });
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->more_size(), 2) << "three 1000-byte messages fit 4000 bytes, four do not";
  EXPECT_LE(got->ByteSizeLong(), options.max_send_bytes);
  EXPECT_EQ(got->more(1).payload(), std::string(1000, 'c'));

  v1::BackoutRequest backout;
  backout.set_uow(got->uow());
  ASSERT_TRUE(ops_->Backout(backout, kLeaseOwner).ok());
  DurableCompletions completions(engine_.get());
  fs_.CloseSyncGate();
  log::Lsn lsn = log::kNoLsn;
  auto again = ops_->Get(
      get, kLeaseOwner, absl::InfiniteFuture(), [] { return false; }, "", &lsn);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->more_size(), 2);
  EXPECT_EQ(again->more(1).backout_count(), 1u);
  ASSERT_NE(lsn, log::kNoLsn);
  absl::Notification answered;
  completions.After(lsn, [&](absl::Status) { answered.Notify(); });
  ASSERT_TRUE(fs_.AwaitSyncsAtGate(1, absl::Seconds(10)));
  EXPECT_FALSE(answered.WaitForNotificationWithTimeout(absl::Milliseconds(200)));
  fs_.OpenSyncGate();
  EXPECT_TRUE(answered.WaitForNotificationWithTimeout(absl::Seconds(10)));

  get.set_max_messages(1001);
  EXPECT_TRUE(absl::IsInvalidArgument(
      ops_->Get(get, kLeaseOwner, absl::InfiniteFuture(), [] { return false; }).status()));
}

TEST_F(OperationsTest, CompletionsAnswerAtOnceWhatNeedsNoWaitAndDrainOnStop) {
  DurableCompletions completions(engine_.get());
  bool inline_answer = false;
  completions.After(log::kNoLsn, [&](absl::Status s) { inline_answer = s.ok(); });
  EXPECT_TRUE(inline_answer);  // on this thread, before After returns
  log::Lsn lsn = log::kNoLsn;
  ASSERT_TRUE(ops_->Enqueue(To("Q"), &lsn).ok());
  std::atomic<bool> answered{false};
  completions.After(lsn, [&](absl::Status s) { answered = s.ok(); });
  completions.Stop();  // answers what is pending first
  EXPECT_TRUE(answered);
}

}  // namespace
}  // namespace qmgr::server
