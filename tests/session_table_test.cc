// STSN, the table of docs/sessions.md: every action on each flow, with the
// client behind, equal to and ahead of the server, on a real engine and log.
// Each row starts from the same server state:
//   input:  in_seq 5 (five RECOVERABLE inputs hardened); with `pending`, a
//           RESPONSE input 6 is queued before its sync point.
//   output: outputs 1 and 2 acknowledged, output 3 (message M3) sent and not
//           acknowledged, M4 queued behind it; with `acked`, output 3 is
//           acknowledged too.
// The session is then rebound (a reconnect: resync required), cold when the
// row says so, and STSN asks the row's question.
#include <optional>

#include "absl/strings/str_cat.h"
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
using qmgr::v1::OutputOutcome;
using qmgr::v1::StsnAction;
using qmgr::v1::StsnResult;

constexpr char kSession[] = "T1";
constexpr char kOut[] = "T1.OUT";

enum class Flow { kInput, kOutput };
enum class Id { kNone, kM3, kM4, kWrong };  // the message id the client names

struct Row {
  Flow flow;
  StsnAction action;
  uint64_t client;  // input: last sent; output: last secured
  Id client_id = Id::kNone;
  bool cold = false;
  bool pending = false;  // input: a deferred input 6 before its sync point
  bool acked = false;    // output: output 3 acknowledged before the resync
  // Expected.
  absl::StatusCode code = absl::StatusCode::kOk;
  StsnResult result = qmgr::v1::STSN_RESULT_UNSPECIFIED;
  uint64_t server_value = 0;  // in_seq or out_seq answered
  uint64_t resend_from = 0, resend_to = 0;
  OutputOutcome outcome = qmgr::v1::OUTPUT_OUTCOME_UNSPECIFIED;
  bool agreed = false;               // SDT is then accepted (the other flow IGNOREs)
  std::optional<uint64_t> next_out;  // after SDT, ReceiveOutput's number
  Id next_message = Id::kNone;       // ... and message
  const char* why = "";
};

std::string Describe(const Row& row) {
  return absl::StrCat(row.flow == Flow::kInput ? "input" : "output", " ",
                      qmgr::v1::StsnAction_Name(row.action), " client ", row.client,
                      row.cold ? " cold" : "", row.pending ? " pending" : "",
                      row.acked ? " acked" : "", ": ", row.why);
}

constexpr auto kOk = absl::StatusCode::kOk;
constexpr auto kRefused = absl::StatusCode::kFailedPrecondition;

const Row kRows[] = {
    // ---- Input flow; server in_seq 5.
    {Flow::kInput,
     qmgr::v1::IGNORE,
     4,
     Id::kNone,
     false,
     false,
     false,
     kOk,
     qmgr::v1::IGNORED,
     5,
     0,
     0,
     {},
     true,
     {},
     Id::kNone,
     "behind: ignored, the client takes 5"},
    {Flow::kInput,
     qmgr::v1::IGNORE,
     5,
     Id::kNone,
     false,
     false,
     false,
     kOk,
     qmgr::v1::IGNORED,
     5,
     0,
     0,
     {},
     true,
     {},
     Id::kNone,
     "equal"},
    {Flow::kInput,
     qmgr::v1::IGNORE,
     6,
     Id::kNone,
     false,
     false,
     false,
     kOk,
     qmgr::v1::IGNORED,
     5,
     0,
     0,
     {},
     true,
     {},
     Id::kNone,
     "ahead: ignored"},
    {Flow::kInput,
     qmgr::v1::SENSE,
     4,
     Id::kNone,
     false,
     false,
     false,
     kOk,
     qmgr::v1::SENSED,
     5,
     0,
     0,
     {},
     false,
     {},
     Id::kNone,
     "behind: the server's value, nothing agreed"},
    {Flow::kInput,
     qmgr::v1::SENSE,
     5,
     Id::kNone,
     false,
     false,
     false,
     kOk,
     qmgr::v1::SENSED,
     5,
     0,
     0,
     {},
     false,
     {},
     Id::kNone,
     "equal"},
    {Flow::kInput,
     qmgr::v1::SENSE,
     6,
     Id::kNone,
     false,
     false,
     false,
     kOk,
     qmgr::v1::SENSED,
     5,
     0,
     0,
     {},
     false,
     {},
     Id::kNone,
     "ahead"},
    {Flow::kInput,
     qmgr::v1::SET_AND_TEST,
     4,
     Id::kNone,
     false,
     false,
     false,
     kOk,
     qmgr::v1::TEST_NEGATIVE,
     5,
     0,
     0,
     {},
     false,
     {},
     Id::kNone,
     "behind: the server holds input the client says it never sent"},
    {Flow::kInput,
     qmgr::v1::SET_AND_TEST,
     5,
     Id::kNone,
     false,
     false,
     false,
     kOk,
     qmgr::v1::TEST_POSITIVE,
     5,
     0,
     0,
     {},
     true,
     {},
     Id::kNone,
     "equal: agreed"},
    {Flow::kInput,
     qmgr::v1::SET_AND_TEST,
     7,
     Id::kNone,
     false,
     false,
     false,
     kOk,
     qmgr::v1::TEST_POSITIVE,
     5,
     6,
     7,
     {},
     true,
     {},
     Id::kNone,
     "ahead: agreed, resend (or reissue) 6..7"},
    {Flow::kInput,
     qmgr::v1::SET_AND_TEST,
     6,
     Id::kNone,
     false,
     true,
     false,
     kOk,
     qmgr::v1::TEST_POSITIVE,
     5,
     0,
     0,
     {},
     true,
     {},
     Id::kNone,
     "equal to the pending deferred input: neither resend nor reissue it"},
    {Flow::kInput,
     qmgr::v1::SET_AND_TEST,
     7,
     Id::kNone,
     false,
     true,
     false,
     kOk,
     qmgr::v1::TEST_POSITIVE,
     5,
     7,
     7,
     {},
     true,
     {},
     Id::kNone,
     "ahead of the pending input: resend only 7"},
    {Flow::kInput,
     qmgr::v1::SET_AND_TEST,
     5,
     Id::kNone,
     false,
     true,
     false,
     kOk,
     qmgr::v1::TEST_NEGATIVE,
     5,
     0,
     0,
     {},
     false,
     {},
     Id::kNone,
     "behind the pending input: the client forgot input 6"},
    {Flow::kInput,
     qmgr::v1::SET,
     4,
     Id::kNone,
     false,
     false,
     false,
     kRefused,
     {},
     0,
     0,
     0,
     {},
     false,
     {},
     Id::kNone,
     "behind, not cold: SET refused"},
    {Flow::kInput,
     qmgr::v1::SET,
     5,
     Id::kNone,
     false,
     false,
     false,
     kRefused,
     {},
     0,
     0,
     0,
     {},
     false,
     {},
     Id::kNone,
     "equal, not cold: refused"},
    {Flow::kInput,
     qmgr::v1::SET,
     9,
     Id::kNone,
     false,
     false,
     false,
     kRefused,
     {},
     0,
     0,
     0,
     {},
     false,
     {},
     Id::kNone,
     "ahead, not cold: refused"},
    {Flow::kInput,
     qmgr::v1::SET,
     0,
     Id::kNone,
     true,
     false,
     false,
     kOk,
     qmgr::v1::SET_DONE,
     0,
     0,
     0,
     {},
     true,
     {},
     Id::kNone,
     "behind, cold: the client starts again at 1"},
    {Flow::kInput,
     qmgr::v1::SET,
     5,
     Id::kNone,
     true,
     false,
     false,
     kOk,
     qmgr::v1::SET_DONE,
     5,
     0,
     0,
     {},
     true,
     {},
     Id::kNone,
     "equal, cold"},
    {Flow::kInput,
     qmgr::v1::SET,
     9,
     Id::kNone,
     true,
     false,
     false,
     kOk,
     qmgr::v1::SET_DONE,
     9,
     0,
     0,
     {},
     true,
     {},
     Id::kNone,
     "ahead, cold: 6..9 skipped (logged)"},
    {Flow::kInput,
     qmgr::v1::SET,
     9,
     Id::kNone,
     true,
     true,
     false,
     kRefused,
     {},
     0,
     0,
     0,
     {},
     false,
     {},
     Id::kNone,
     "cold with input outstanding: refused"},

    // ---- Output flow; server out_seq 3 (M3) unacknowledged, M4 queued.
    {Flow::kOutput, qmgr::v1::IGNORE, 2, Id::kNone, false, false, false, kOk, qmgr::v1::IGNORED, 3,
     0, 0, qmgr::v1::STILL_UNACKNOWLEDGED, true, 3, Id::kM3,
     "behind: ignored, M3 is sent again as 3"},
    {Flow::kOutput, qmgr::v1::IGNORE, 3, Id::kM3, false, false, false, kOk, qmgr::v1::IGNORED, 3, 0,
     0, qmgr::v1::STILL_UNACKNOWLEDGED, true, 3, Id::kM3, "equal: ignored, M3 again"},
    {Flow::kOutput, qmgr::v1::IGNORE, 4, Id::kM4, false, false, false, kOk, qmgr::v1::IGNORED, 3, 0,
     0, qmgr::v1::STILL_UNACKNOWLEDGED, true, 3, Id::kM3, "ahead: ignored"},
    {Flow::kOutput,
     qmgr::v1::SENSE,
     2,
     Id::kNone,
     false,
     false,
     false,
     kOk,
     qmgr::v1::SENSED,
     3,
     0,
     0,
     qmgr::v1::STILL_UNACKNOWLEDGED,
     false,
     {},
     Id::kNone,
     "behind: nothing agreed"},
    {Flow::kOutput,
     qmgr::v1::SENSE,
     3,
     Id::kM3,
     false,
     false,
     false,
     kOk,
     qmgr::v1::SENSED,
     3,
     0,
     0,
     qmgr::v1::STILL_UNACKNOWLEDGED,
     false,
     {},
     Id::kNone,
     "equal"},
    {Flow::kOutput,
     qmgr::v1::SENSE,
     4,
     Id::kM4,
     false,
     false,
     false,
     kOk,
     qmgr::v1::SENSED,
     3,
     0,
     0,
     qmgr::v1::STILL_UNACKNOWLEDGED,
     false,
     {},
     Id::kNone,
     "ahead"},
    {Flow::kOutput, qmgr::v1::SET_AND_TEST, 2, Id::kNone, false, false, false, kOk,
     qmgr::v1::TEST_POSITIVE, 2, 0, 0, qmgr::v1::WILL_RESEND, true, 3, Id::kM3,
     "behind by the unsecured output: M3 is sent again as 3"},
    {Flow::kOutput,
     qmgr::v1::SET_AND_TEST,
     1,
     Id::kNone,
     false,
     false,
     false,
     kOk,
     qmgr::v1::TEST_NEGATIVE,
     3,
     0,
     0,
     qmgr::v1::STILL_UNACKNOWLEDGED,
     false,
     {},
     Id::kNone,
     "behind by two: the client lost a secured output"},
    {Flow::kOutput, qmgr::v1::SET_AND_TEST, 3, Id::kM3, false, false, false, kOk,
     qmgr::v1::TEST_POSITIVE, 3, 0, 0, qmgr::v1::DELIVERED, true, 4, Id::kM4,
     "equal: M3 was secured, dequeued now"},
    {Flow::kOutput,
     qmgr::v1::SET_AND_TEST,
     3,
     Id::kWrong,
     false,
     false,
     false,
     kOk,
     qmgr::v1::TEST_NEGATIVE,
     3,
     0,
     0,
     qmgr::v1::STILL_UNACKNOWLEDGED,
     false,
     {},
     Id::kNone,
     "equal number, another message: not agreed"},
    {Flow::kOutput,
     qmgr::v1::SET_AND_TEST,
     4,
     Id::kM4,
     false,
     false,
     false,
     kOk,
     qmgr::v1::TEST_NEGATIVE,
     3,
     0,
     0,
     qmgr::v1::STILL_UNACKNOWLEDGED,
     false,
     {},
     Id::kNone,
     "ahead of an unacknowledged output: not agreed"},
    {Flow::kOutput,
     qmgr::v1::SET,
     2,
     Id::kNone,
     false,
     false,
     false,
     kRefused,
     {},
     0,
     0,
     0,
     {},
     false,
     {},
     Id::kNone,
     "not cold: SET refused"},
    {Flow::kOutput,
     qmgr::v1::SET,
     3,
     Id::kM3,
     false,
     false,
     false,
     kRefused,
     {},
     0,
     0,
     0,
     {},
     false,
     {},
     Id::kNone,
     "not cold: refused"},
    {Flow::kOutput,
     qmgr::v1::SET,
     7,
     Id::kNone,
     false,
     false,
     false,
     kRefused,
     {},
     0,
     0,
     0,
     {},
     false,
     {},
     Id::kNone,
     "not cold: refused"},
    {Flow::kOutput, qmgr::v1::SET, 0, Id::kNone, true, false, false, kOk, qmgr::v1::SET_DONE, 0, 0,
     0, qmgr::v1::STILL_UNACKNOWLEDGED, true, 1, Id::kM3,
     "behind, cold: M3 again as 1, possibly duplicate"},
    {Flow::kOutput, qmgr::v1::SET, 3, Id::kM3, true, false, false, kOk, qmgr::v1::SET_DONE, 3, 0, 0,
     qmgr::v1::STILL_UNACKNOWLEDGED, true, 4, Id::kM3, "equal, cold: M3 again as 4"},
    {Flow::kOutput, qmgr::v1::SET, 7, Id::kNone, true, false, false, kOk, qmgr::v1::SET_DONE, 7, 0,
     0, qmgr::v1::STILL_UNACKNOWLEDGED, true, 8, Id::kM3, "ahead, cold"},

    // ---- Output flow; server out_seq 3 acknowledged, M4 queued.
    {Flow::kOutput,
     qmgr::v1::SET_AND_TEST,
     2,
     Id::kNone,
     false,
     false,
     true,
     kOk,
     qmgr::v1::TEST_NEGATIVE,
     3,
     0,
     0,
     qmgr::v1::NO_OUTPUT_OUTSTANDING,
     false,
     {},
     Id::kNone,
     "behind an acknowledged output: not agreed"},
    {Flow::kOutput, qmgr::v1::SET_AND_TEST, 3, Id::kM3, false, false, true, kOk,
     qmgr::v1::TEST_POSITIVE, 3, 0, 0, qmgr::v1::NO_OUTPUT_OUTSTANDING, true, 4, Id::kM4,
     "equal: agreed, nothing outstanding"},
    {Flow::kOutput,
     qmgr::v1::SET_AND_TEST,
     4,
     Id::kM4,
     false,
     false,
     true,
     kOk,
     qmgr::v1::TEST_POSITIVE,
     4,
     0,
     0,
     qmgr::v1::DELIVERED,
     true,
     {},
     Id::kNone,
     "ahead by the queued head: its OUTPUT_SENT was lost, the id recognises it"},
    {Flow::kOutput,
     qmgr::v1::SET_AND_TEST,
     4,
     Id::kWrong,
     false,
     false,
     true,
     kOk,
     qmgr::v1::TEST_NEGATIVE,
     3,
     0,
     0,
     qmgr::v1::NO_OUTPUT_OUTSTANDING,
     false,
     {},
     Id::kNone,
     "ahead with an id the server does not know: not agreed"},
    {Flow::kOutput,
     qmgr::v1::SENSE,
     4,
     Id::kM4,
     false,
     false,
     true,
     kOk,
     qmgr::v1::SENSED,
     3,
     0,
     0,
     qmgr::v1::NO_OUTPUT_OUTSTANDING,
     false,
     {},
     Id::kNone,
     "sense: nothing outstanding"},
};

class SessionTableTest : public ::testing::TestWithParam<Row> {
 protected:
  void SetUp() override { ASSERT_TRUE(testing::OpenEngineOnLog(fs_, &log_, &engine_).ok()); }

  // The state every row starts from (see the top of this file).
  void Prepare(const Row& row) {
    ASSERT_TRUE(engine_->DefineQueue("IN", {}).ok());
    qmgr::v1::QueueAttributes out;
    out.set_output_of_session(kSession);
    ASSERT_TRUE(engine_->DefineQueue(kOut, out).ok());
    ASSERT_TRUE(engine_->OpenSession(kSession, false).ok());
    for (uint64_t seq = 1; seq <= 5; ++seq) {
      ASSERT_TRUE(engine_->Enqueue(Input(seq, qmgr::v1::RECOVERABLE)).ok());
    }
    if (row.pending) {
      ASSERT_TRUE(engine_->Enqueue(Input(6, qmgr::v1::RESPONSE)).ok());
    }
    for (int i = 1; i <= 4; ++i) {
      MessageSpec output;
      output.queue = kOut;
      output.payload = absl::StrCat("M", i);
      absl::StatusOr<EnqueueResult> put = engine_->Enqueue(output);
      ASSERT_TRUE(put.ok()) << put.status();
      ids_[i] = put->message_id;
    }
    for (uint64_t seq = 1; seq <= 3; ++seq) {
      absl::StatusOr<SessionOutput> sent = engine_->ReceiveOutput(kSession, absl::ZeroDuration());
      ASSERT_TRUE(sent.ok()) << sent.status();
      ASSERT_EQ(sent->out_seq, seq);
      if (seq < 3 || row.acked) {
        ASSERT_TRUE(engine_->Acknowledge(kSession, seq, true, 0).ok());
      }
    }
    absl::StatusOr<bool> resync = engine_->OpenSession(kSession, row.cold);
    ASSERT_TRUE(resync.ok()) << resync.status();
    ASSERT_TRUE(*resync) << "a reconnect needs resync";
  }

  MessageSpec Input(uint64_t seq, MessageClass cls) {
    MessageSpec spec;
    spec.queue = "IN";
    spec.payload = absl::StrCat("input ", seq);
    spec.message_class = cls;
    spec.origin_session = kSession;
    spec.input_seq = seq;
    return spec;
  }

  uint64_t IdOf(Id id) {
    switch (id) {
      case Id::kM3:
        return ids_[3];
      case Id::kM4:
        return ids_[4];
      case Id::kWrong:
        return 999'999;
      case Id::kNone:
        return 0;
    }
    return 0;
  }

  FaultFileSystem fs_;
  std::unique_ptr<log::Log> log_;
  std::unique_ptr<Engine> engine_;
  uint64_t ids_[5] = {};
};

TEST_P(SessionTableTest, StsnAnswersAsTheTableSays) {
  const Row& row = GetParam();
  SCOPED_TRACE(Describe(row));
  Prepare(row);
  if (HasFatalFailure()) return;
  StsnRequest request;
  if (row.flow == Flow::kInput) {
    request.input.set_action(row.action);
    request.input.set_last_sent(row.client);
  } else {
    request.output.set_action(row.action);
    request.output.set_last_secured(row.client);
    request.output.set_last_secured_message_id(IdOf(row.client_id));
  }
  absl::StatusOr<StsnAnswer> answer = engine_->SetAndTestSequenceNumbers(kSession, request);
  ASSERT_EQ(answer.status().code(), row.code) << answer.status();
  if (!answer.ok()) {
    EXPECT_EQ(engine_->StartDataTraffic(kSession).code(), kRefused)
        << "a refused STSN agrees on nothing";
    return;
  }
  if (row.flow == Flow::kInput) {
    EXPECT_EQ(answer->input.result(), row.result);
    EXPECT_EQ(answer->input.in_seq(), row.server_value);
    EXPECT_EQ(answer->input.pending_input(), row.pending ? 6u : 0u);
    EXPECT_EQ(answer->input.resend_from(), row.resend_from);
    EXPECT_EQ(answer->input.resend_to(), row.resend_to);
    EXPECT_EQ(answer->output.result(), qmgr::v1::IGNORED);
  } else {
    EXPECT_EQ(answer->output.result(), row.result);
    EXPECT_EQ(answer->output.out_seq(), row.server_value);
    EXPECT_EQ(answer->output.outcome(), row.outcome);
    EXPECT_EQ(answer->input.result(), qmgr::v1::IGNORED);
  }

  const absl::Status sdt = engine_->StartDataTraffic(kSession);
  if (!row.agreed) {
    EXPECT_EQ(sdt.code(), kRefused) << "SDT before agreement";
    return;
  }
  ASSERT_TRUE(sdt.ok()) << sdt;
  absl::StatusOr<SessionOutput> next = engine_->ReceiveOutput(kSession, absl::ZeroDuration());
  if (!row.next_out.has_value()) {
    if (row.flow == Flow::kOutput) {
      EXPECT_EQ(next.status().code(), absl::StatusCode::kDeadlineExceeded) << "no output left";
    }
    return;
  }
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->out_seq, *row.next_out);
  EXPECT_EQ(next->message.id(), IdOf(row.next_message));
  EXPECT_EQ(next->message.possible_duplicate(), row.cold) << "cold: unacknowledged output";
}

INSTANTIATE_TEST_SUITE_P(Rows, SessionTableTest, ::testing::ValuesIn(kRows),
                         [](const ::testing::TestParamInfo<Row>& info) {
                           const Row& row = info.param;
                           return absl::StrCat(row.flow == Flow::kInput ? "Input" : "Output", "_",
                                               qmgr::v1::StsnAction_Name(row.action), "_client",
                                               row.client, row.cold ? "_cold" : "",
                                               row.pending ? "_pending" : "",
                                               row.acked ? "_acked" : "", "_row", info.index);
                         });

void PrintTo(const Row& row, std::ostream* os) { *os << Describe(row); }

}  // namespace
}  // namespace qmgr
