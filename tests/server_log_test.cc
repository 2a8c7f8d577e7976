// qmgrd's event lines and refusal counting, in process: field values are
// quoted only when a parser would otherwise misread them, and a burst of
// refusals of one kind is counted whole but logged once per interval.
#include "tools/qmgrd/server_log.h"

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "qmgr/status.h"
#include "tools/qmgrd/refusals.h"

namespace qmgr::server {
namespace {

TEST(ServerLogTest, EventValuesQuotedOnlyWhenNeeded) {
  EXPECT_EQ(EventValue("QUEUE_FULL"), "QUEUE_FULL");
  EXPECT_EQ(EventValue("operator:alice"), "operator:alice");
  EXPECT_EQ(EventValue(""), "\"\"");
  EXPECT_EQ(EventValue("queue 'Q' is full"), "\"queue 'Q' is full\"");
  EXPECT_EQ(EventValue("a=b"), "\"a=b\"");
  EXPECT_EQ(EventValue("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
}

TEST(ServerLogTest, EventLineHasItsNameFirstThenFields) {
  ::testing::internal::CaptureStderr();
  LogEvent("checkpoint.done")
      .Add("number", uint64_t{7})
      .Add("trigger", "requested")
      .Add("ok", true)
      .Add("took", absl::Microseconds(4210));
  EXPECT_EQ(::testing::internal::GetCapturedStderr(),
            "qmgrd: checkpoint.done number=7 trigger=requested ok=true took_ms=4.210\n");
}

TEST(RefusalsTest, CountsEveryRefusalLogsOncePerInterval) {
  Refusals refusals(absl::Hours(1));
  const absl::Status full =
      WithReason(absl::ResourceExhaustedError("queue 'Q' is full"), reason::kQueueFull);
  ::testing::internal::CaptureStderr();
  for (int i = 0; i < 25; ++i) refusals.Record("QueueManager.Enqueue", full);
  refusals.Record("QueueManager.Get", absl::NotFoundError("no queue"));
  refusals.Record("QueueManager.Get", absl::CancelledError("client went away"));
  refusals.Record("QueueManager.Get", absl::OkStatus());
  const std::string err = ::testing::internal::GetCapturedStderr();

  const std::vector<Refusals::Count> counts = refusals.Counts();
  ASSERT_EQ(counts.size(), 2u) << "OK and CANCELLED are not refusals";
  EXPECT_EQ(counts[0].rpc, "QueueManager.Enqueue");
  EXPECT_EQ(counts[0].code, "RESOURCE_EXHAUSTED");
  EXPECT_EQ(counts[0].reason, "QUEUE_FULL");
  EXPECT_EQ(counts[0].count, 25u);
  EXPECT_EQ(counts[1].rpc, "QueueManager.Get");
  EXPECT_EQ(counts[1].reason, "");
  EXPECT_EQ(counts[1].count, 1u);

  const std::vector<std::string> lines = absl::StrSplit(err, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << err;
  EXPECT_EQ(lines[0],
            "qmgrd: request.refused rpc=QueueManager.Enqueue code=RESOURCE_EXHAUSTED "
            "reason=QUEUE_FULL count=1 message=\"queue 'Q' is full\"");
  EXPECT_TRUE(absl::StartsWith(lines[1],
                               "qmgrd: request.refused rpc=QueueManager.Get "
                               "code=NOT_FOUND reason=\"\" count=1"))
      << lines[1];
}

// After the interval, the next line carries the count of the refusals not
// logged since the previous one.
TEST(RefusalsTest, NextLineCountsTheSuppressed) {
  Refusals refusals(absl::Milliseconds(300));
  const absl::Status full = WithReason(absl::ResourceExhaustedError("full"), reason::kQueueFull);
  ::testing::internal::CaptureStderr();
  for (int i = 0; i < 5; ++i) refusals.Record("QueueManager.Enqueue", full);
  absl::SleepFor(absl::Milliseconds(350));
  refusals.Record("QueueManager.Enqueue", full);
  const std::string err = ::testing::internal::GetCapturedStderr();
  const std::vector<std::string> lines = absl::StrSplit(err, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << err;
  EXPECT_TRUE(absl::StrContains(lines[0], " count=1 ")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[1], " count=5 ")) << lines[1];
}

}  // namespace
}  // namespace qmgr::server
