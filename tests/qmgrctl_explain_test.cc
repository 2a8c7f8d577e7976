// `qmgrctl explain MSGID` run as a program: on a small fixed log (golden
// output), and on the data directory of a real qmgrd driven into every state
// a message can be in (queued, taken, committed, backed out, in doubt, sent,
// acknowledged, poisoned, expired), while it runs and after it stopped, when
// part of the story comes from the checkpoint store. --json parses into
// qmgr.v1.MessageExplanation; exit codes for an unknown and a malformed id.
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "log/log.h"
#include "qmgr/v1/log_tool.pb.h"
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

constexpr absl::Duration kCallTimeout = absl::Seconds(10);

CommandResult Qmgrctl(const std::string& args) { return RunCommand(QMGRCTL_PATH, args); }

void ExpectGolden(const std::string& name, const std::string& actual) {
  qmgr::testing::ExpectGolden(GOLDEN_DIR, name, actual);
}

v1::MessageExplanation ParseExplanation(const std::string& json) {
  v1::MessageExplanation explanation;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &explanation);
  EXPECT_TRUE(status.ok()) << status << "\n" << json;
  return explanation;
}

bool HasEvent(const v1::MessageExplanation& e, const std::string& event,
              const std::string& source = "log") {
  for (const v1::ExplainEvent& x : e.events()) {
    if (x.event() == event && x.source() == source) return true;
  }
  return false;
}

v1::Message Msg(uint64_t id, const std::string& queue, v1::MessageClass c) {
  v1::Message m;
  m.set_id(id);
  m.set_queue(queue);
  m.set_class_(c);
  m.set_payload(absl::StrCat("payload of ", id));
  m.set_enqueue_time_us(1700000000000000 + id);
  return m;
}

// A small log telling several lives, each record its own batch, so that its
// bytes (and LSNs) are the same on every run. Message 1 is backed out once,
// then consumed; 2 is poisoned onto ORDERS.BO; 3 is sent to session A and
// acknowledged; 4 is held by a prepared unit in doubt; 5 stays queued.
void WriteLivesLog(const std::string& dir) {
  log::LogOptions options;
  options.segment_bytes = 128 * 1024;
  absl::StatusOr<std::unique_ptr<log::Log>> log =
      log::Log::Open(log::PosixFileSystem(), dir, options);
  ASSERT_TRUE(log.ok()) << log.status();
  std::vector<v1::LogRecord> records;
  auto add = [&]() -> v1::LogRecord& { return records.emplace_back(); };
  add().mutable_id_reserve()->set_first_id(1);
  records.back().mutable_id_reserve()->set_count(1000);
  for (const char* name : {"ORDERS.BO", "OUT.A"}) {
    add().mutable_queue_define()->set_queue(name);
  }
  records.back().mutable_queue_define()->mutable_attributes()->set_output_of_session("A");
  v1::QueueDefineRecord* orders = add().mutable_queue_define();
  orders->set_queue("ORDERS");
  orders->mutable_attributes()->set_backout_threshold(2);
  orders->mutable_attributes()->set_backout_queue("ORDERS.BO");
  v1::EnqueueRecord* enqueue = add().mutable_enqueue();
  for (uint64_t id : {1, 2, 4, 5}) *enqueue->add_messages() = Msg(id, "ORDERS", v1::RECOVERABLE);
  enqueue->mutable_messages(0)->set_origin_session("TERM1");
  enqueue->mutable_messages(0)->set_input_seq(7);
  auto get = [&](uint64_t uow, uint64_t id, uint32_t count) {
    v1::GetRecord* g = add().mutable_get();
    g->set_uow_id(uow);
    g->set_message_id(id);
    g->set_queue("ORDERS");
    g->set_backout_count(count);
  };
  auto backout = [&](uint64_t uow, uint64_t id, uint32_t count) {
    v1::BackoutRecord* b = add().mutable_backout();
    b->set_uow_id(uow);
    b->set_reason(v1::BACKOUT_REQUESTED);
    b->add_message_ids(id);
    b->add_backout_counts(count);
  };
  get(10, 1, 0);
  backout(10, 1, 1);
  get(11, 1, 1);
  add().mutable_syncpoint()->set_uow_id(11);
  records.back().mutable_syncpoint()->add_consumed_message_ids(1);
  get(12, 2, 0);
  backout(12, 2, 1);
  get(13, 2, 1);
  backout(13, 2, 2);
  v1::BackoutMoveRecord* move = add().mutable_backout_move();
  move->set_message_id(2);
  move->set_from_queue("ORDERS");
  move->set_to_queue("ORDERS.BO");
  move->set_backout_count(2);
  v1::SyncPointRecord* reply = add().mutable_syncpoint();
  reply->set_uow_id(14);
  *reply->add_inserted() = Msg(3, "OUT.A", v1::RESPONSE);
  v1::OutputSentRecord* sent = add().mutable_output_sent();
  sent->set_session("A");
  sent->set_out_seq(1);
  sent->set_message_id(3);
  v1::OutputAckedRecord* acked = add().mutable_output_acked();
  acked->set_session("A");
  acked->set_out_seq(1);
  acked->set_message_id(3);
  acked->set_positive(true);
  get(15, 4, 0);
  v1::PrepareRecord* prepare = add().mutable_prepare();
  prepare->set_uow_id(15);
  prepare->set_coordinator("CICSA");
  prepare->set_qualifier("QM1");
  prepare->set_xid("XID-4");
  prepare->add_consumed_message_ids(4);
  prepare->set_prepared_time_us(1700000000500000);
  for (const auto& record : records) ASSERT_TRUE((*log)->AppendDurable(record).ok());
  ASSERT_TRUE((*log)->Close().ok());
}

class QmgrctlExplainLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directory(tmp_.path() + "/data");
    WriteLivesLog(tmp_.path() + "/data/log");
  }
  CommandResult Explain(const std::string& args) {
    return Qmgrctl(absl::StrCat("--data-dir ", tmp_.path(), "/data explain ", args));
  }
  TempDir tmp_;
};

// Tables for a consumed, a poisoned, an acknowledged output and an in-doubt
// message, pinned by golden files; no store: every fact is the log's.
TEST_F(QmgrctlExplainLogTest, GoldenTables) {
  for (const auto& [id, golden] :
       std::vector<std::pair<int, std::string>>{{1, "explain_consumed.txt"},
                                                {2, "explain_poisoned.txt"},
                                                {3, "explain_acknowledged.txt"},
                                                {4, "explain_in_doubt.txt"},
                                                {5, "explain_queued.txt"}}) {
    const CommandResult r = Explain(absl::StrCat(id));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    ExpectGolden(golden, r.out);
  }
}

TEST_F(QmgrctlExplainLogTest, JsonParsesAndSaysWhereAndWhy) {
  CommandResult r = Explain("2 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectGolden("explain_poisoned.json", r.out);
  v1::MessageExplanation e = ParseExplanation(r.out);
  EXPECT_EQ(e.message_id(), 2u);
  EXPECT_EQ(e.state(), "QUEUED");
  EXPECT_TRUE(e.poisoned());
  EXPECT_EQ(e.backouts(), 2u);
  EXPECT_EQ(e.message().queue(), "ORDERS");  // as enqueued
  EXPECT_CONTAINS(e.where(), "ORDERS.BO");
  EXPECT_TRUE(e.recoverable());
  EXPECT_EQ(e.checkpoint_number(), 0u);
  EXPECT_TRUE(HasEvent(e, "MOVED_TO_BACKOUT_QUEUE"));

  e = ParseExplanation(Explain("1 --json").out);
  EXPECT_EQ(e.state(), "CONSUMED");
  EXPECT_FALSE(e.recoverable());
  EXPECT_EQ(e.backouts(), 1u);
  e = ParseExplanation(Explain("4 --json").out);
  EXPECT_EQ(e.state(), "IN_DOUBT");
  EXPECT_TRUE(e.recoverable());
  EXPECT_CONTAINS(e.where(), "CICSA");
}

// Unknown ids exit 5 with a reason, malformed ones 64 (usage), a missing
// log 3.
TEST_F(QmgrctlExplainLogTest, ExitCodes) {
  CommandResult r = Explain("999");
  EXPECT_EQ(r.exit_code, 5);
  EXPECT_CONTAINS(r.err, "mentions message 999");
  EXPECT_CONTAINS(r.err, "its id was reserved");
  r = Explain("123456789");
  EXPECT_EQ(r.exit_code, 5);
  EXPECT_FALSE(absl::StrContains(r.err, "reserved")) << r.err;
  for (const char* bad : {"abc", "0", "-1", "1x", "99999999999999999999999"}) {
    r = Explain(bad);
    EXPECT_EQ(r.exit_code, 64) << bad << ": " << r.err;
  }
  EXPECT_CONTAINS(Explain("abc").err, "'abc' is not a message id");
  r = Qmgrctl("--data-dir /nonexistent explain 1");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_CONTAINS(r.err, "/nonexistent/log");
}

// A real qmgrd: each state produced through its API, explained while it
// runs (the log and store read beside it), then after it stopped.
class QmgrctlExplainServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    process_ = std::make_unique<QmgrdProcess>(
        QMGRD_PATH, data_,
        std::vector<std::string>{"--log-segment-bytes", segment_bytes_, "--shutdown-grace-ms",
                                 "500"});
    const absl::Status started = process_->Start();
    ASSERT_TRUE(started.ok()) << started;
    channel_ = grpc::CreateChannel(process_->target(), grpc::InsecureChannelCredentials());
    qm_ = v1::QueueManager::NewStub(channel_);
    admin_ = v1::Admin::NewStub(channel_);
    coordinator_ = v1::Coordinator::NewStub(channel_);
  }

  std::unique_ptr<grpc::ClientContext> Ctx() {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
    return context;
  }
  void Define(const std::string& name, v1::QueueAttributes attributes = {}) {
    v1::DefineQueueRequest request;
    request.set_queue(name);
    *request.mutable_attributes() = attributes;
    v1::DefineQueueResponse response;
    const grpc::Status s = admin_->DefineQueue(Ctx().get(), request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  uint64_t Enqueue(const std::string& queue, int64_t expiry_time_us = 0) {
    v1::EnqueueRequest request;
    request.mutable_message()->set_queue(queue);
    request.mutable_message()->set_payload("payload");
    request.mutable_message()->set_class_(v1::RECOVERABLE);
    request.mutable_message()->set_expiry_time_us(expiry_time_us);
    v1::EnqueueResponse response;
    const grpc::Status s = qm_->Enqueue(Ctx().get(), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response.message_id();
  }
  // Takes the next message of `queue` into `uow` (0: a new unit).
  v1::GetResponse Get(const std::string& queue, uint64_t uow = 0) {
    v1::GetRequest request;
    request.set_queue(queue);
    request.set_uow(uow);
    v1::GetResponse response;
    const grpc::Status s = qm_->Get(Ctx().get(), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response;
  }
  void SyncPoint(uint64_t uow) {
    v1::SyncPointRequest request;
    request.set_uow(uow);
    v1::SyncPointResponse response;
    const grpc::Status s = qm_->SyncPoint(Ctx().get(), request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  void Backout(uint64_t uow) {
    v1::BackoutRequest request;
    request.set_uow(uow);
    v1::BackoutResponse response;
    const grpc::Status s = qm_->Backout(Ctx().get(), request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  void Checkpoint() {
    v1::CheckpointResponse response;
    const grpc::Status s = admin_->Checkpoint(Ctx().get(), v1::CheckpointRequest(), &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  v1::MessageExplanation Explain(uint64_t id) {
    const CommandResult r = Qmgrctl(absl::StrCat("--data-dir ", data_, " explain --json ", id));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return ParseExplanation(r.out);
  }

  // Large enough that these tests never retire a segment (but see below).
  std::string segment_bytes_ = "4MiB";
  TempDir dir_;
  const std::string data_ = dir_.path() + "/data";
  std::unique_ptr<QmgrdProcess> process_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::QueueManager::Stub> qm_;
  std::unique_ptr<v1::Admin::Stub> admin_;
  std::unique_ptr<v1::Coordinator::Stub> coordinator_;
};

TEST_F(QmgrctlExplainServerTest, EveryStateWhileRunningAndAfterStop) {
  v1::QueueAttributes work;
  work.set_backout_threshold(2);
  work.set_backout_queue("WORK.BO");
  for (const char* name : {"WORK.BO", "EXPIRING", "OTHER", "HELD", "XA", "IDLE", "FILL"}) {
    ASSERT_NO_FATAL_FAILURE(Define(name));
  }
  ASSERT_NO_FATAL_FAILURE(Define("WORK", work));
  v1::QueueAttributes out_a;
  out_a.set_output_of_session("A");
  ASSERT_NO_FATAL_FAILURE(Define("OUT.A", out_a));

  // Backed out once, then committed.
  const uint64_t committed = Enqueue("WORK");
  Backout(Get("WORK").uow());
  SyncPoint(Get("WORK").uow());
  // Backed out up to the threshold: poisoned onto WORK.BO.
  const uint64_t poisoned = Enqueue("WORK");
  Backout(Get("WORK").uow());
  Backout(Get("WORK").uow());
  // Expired: discarded by the first Get after its expiry time.
  // A second ahead: an Enqueue that arrives after its expiry time is refused.
  const absl::Time expiry = absl::Now() + absl::Seconds(1);
  const uint64_t expired = Enqueue("EXPIRING", absl::ToUnixMicros(expiry));
  absl::SleepFor(expiry - absl::Now() + absl::Milliseconds(50));
  EXPECT_FALSE(Get("EXPIRING").has_message());
  // Backed out once, queued again.
  const uint64_t backed_out = Enqueue("OTHER");
  Backout(Get("OTHER").uow());
  // Taken by a unit left open.
  const uint64_t taken = Enqueue("HELD");
  const uint64_t taken_uow = Get("HELD").uow();
  // Held by a coordinator's unit in doubt.
  const uint64_t in_doubt = Enqueue("XA");
  v1::BeginRequest begin;
  begin.set_coordinator("CICSA");
  begin.set_qualifier("QM1");
  begin.set_xid("XID1");
  v1::BeginResponse begun;
  ASSERT_TRUE(coordinator_->Begin(Ctx().get(), begin, &begun).ok());
  ASSERT_EQ(Get("XA", begun.uow()).message().id(), in_doubt);
  v1::PrepareRequest prepare;
  prepare.set_coordinator("CICSA");
  prepare.set_qualifier("QM1");
  prepare.set_xid("XID1");
  v1::PrepareResponse prepared;
  ASSERT_TRUE(coordinator_->Prepare(Ctx().get(), prepare, &prepared).ok());
  // Output of session A: one acknowledged, one sent and not.
  v1::OpenSessionRequest open;
  open.set_session("A");
  v1::OpenSessionResponse opened;
  ASSERT_TRUE(qm_->OpenSession(Ctx().get(), open, &opened).ok());
  const uint64_t acknowledged = Enqueue("OUT.A");
  const uint64_t sent = Enqueue("OUT.A");
  grpc::ClientContext receiving;
  v1::ReceiveRequest receive;
  receive.set_session("A");
  auto reader = qm_->Receive(&receiving, receive);
  v1::ReceiveResponse output;
  ASSERT_TRUE(reader->Read(&output));
  ASSERT_EQ(output.message().id(), acknowledged);
  v1::AcknowledgeRequest ack;
  ack.set_session("A");
  ack.set_out_seq(output.out_seq());
  ack.set_positive(true);
  v1::AcknowledgeResponse acked;
  ASSERT_TRUE(qm_->Acknowledge(Ctx().get(), ack, &acked).ok());
  ASSERT_TRUE(reader->Read(&output));
  ASSERT_EQ(output.message().id(), sent);
  receiving.TryCancel();
  const uint64_t queued = Enqueue("IDLE");

  // `stopped`: qmgrd's normal shutdown backed the open unit out.
  auto check = [&](bool stopped) {
    v1::MessageExplanation e = Explain(committed);
    EXPECT_EQ(e.state(), "CONSUMED");
    EXPECT_EQ(e.backouts(), 1u);
    EXPECT_TRUE(HasEvent(e, "BACKED_OUT"));
    EXPECT_TRUE(HasEvent(e, "COMMITTED"));
    EXPECT_FALSE(e.recoverable());
    e = Explain(poisoned);
    EXPECT_EQ(e.state(), "QUEUED");
    EXPECT_TRUE(e.poisoned());
    EXPECT_CONTAINS(e.where(), "WORK.BO");
    EXPECT_TRUE(e.recoverable());
    e = Explain(expired);
    EXPECT_EQ(e.state(), "EXPIRED");
    EXPECT_FALSE(e.recoverable());
    e = Explain(backed_out);
    EXPECT_EQ(e.state(), "QUEUED");
    EXPECT_EQ(e.message().backout_count(), 1u);
    e = Explain(taken);
    if (stopped) {
      EXPECT_EQ(e.state(), "QUEUED");
      EXPECT_EQ(e.message().backout_count(), 1u);
    } else {
      EXPECT_EQ(e.state(), "TAKEN");
      EXPECT_CONTAINS(e.where(), absl::StrCat("unit ", taken_uow));
    }
    EXPECT_TRUE(e.recoverable());
    e = Explain(in_doubt);
    EXPECT_EQ(e.state(), "IN_DOUBT");
    EXPECT_CONTAINS(e.where(), "CICSA");
    EXPECT_TRUE(e.recoverable());
    e = Explain(acknowledged);
    EXPECT_EQ(e.state(), "CONSUMED");
    EXPECT_TRUE(HasEvent(e, "OUTPUT_ACKED"));
    e = Explain(sent);
    EXPECT_EQ(e.state(), "SENT_UNACKNOWLEDGED");
    EXPECT_CONTAINS(e.where(), "session A");
    EXPECT_TRUE(e.recoverable());
    e = Explain(queued);
    EXPECT_EQ(e.state(), "QUEUED");
    EXPECT_EQ(e.message().queue(), "IDLE");
    EXPECT_TRUE(e.recoverable());
  };
  {
    SCOPED_TRACE("while qmgrd runs");
    check(false);
  }
  // The table names the state and the reason.
  CommandResult r = Qmgrctl(absl::StrCat("--data-dir ", data_, " explain ", sent));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "OUTPUT_SENT");
  EXPECT_CONTAINS(r.out, "recoverable: yes");

  // Stopped: the shutdown's checkpoint holds the live ones.
  v1::ShutdownResponse shut;
  ASSERT_TRUE(admin_->Shutdown(Ctx().get(), v1::ShutdownRequest(), &shut).ok());
  ASSERT_EQ(process_->WaitExit(absl::Seconds(20)), 0) << process_->Stderr();
  {
    SCOPED_TRACE("after qmgrd stopped");
    check(true);
    for (const uint64_t id : {poisoned, in_doubt, sent, queued}) {
      EXPECT_TRUE(HasEvent(Explain(id), "CHECKPOINTED", "store")) << id;
    }
  }
}

// Small segments: a few dozen units fill one, so a checkpoint retires it.
class QmgrctlExplainRetiredTest : public QmgrctlExplainServerTest {
 protected:
  QmgrctlExplainRetiredTest() { segment_bytes_ = "64KiB"; }
};

// Records retired from the log: the checkpoint store tells what the log no
// longer does (the message's ENQUEUE is gone, its image is not); a message
// consumed before the log's oldest record is unknown (exit 5).
TEST_F(QmgrctlExplainRetiredTest, RetiredRecordsComeFromTheStore) {
  ASSERT_NO_FATAL_FAILURE(Define("IDLE"));
  ASSERT_NO_FATAL_FAILURE(Define("FILL"));
  const uint64_t queued = Enqueue("IDLE");
  v1::MessageExplanation e = Explain(queued);
  EXPECT_TRUE(HasEvent(e, "ENQUEUED"));
  const uint64_t consumed = Enqueue("FILL");
  SyncPoint(Get("FILL").uow());
  EXPECT_EQ(Explain(consumed).state(), "CONSUMED");
  // Fill more than one segment, then checkpoint: the segments below its redo
  // LSN are retired.
  for (int i = 0; i < 40; ++i) {
    Enqueue("FILL");
    SyncPoint(Get("FILL").uow());
  }
  ASSERT_NO_FATAL_FAILURE(Checkpoint());
  e = Explain(queued);
  EXPECT_FALSE(HasEvent(e, "ENQUEUED")) << "its record should have been retired";
  EXPECT_TRUE(HasEvent(e, "CHECKPOINTED", "store"));
  EXPECT_EQ(e.state(), "QUEUED");
  EXPECT_EQ(e.message().queue(), "IDLE");
  EXPECT_TRUE(e.recoverable());
  EXPECT_GT(e.log_first_lsn(), 0u);
  EXPECT_GT(e.checkpoint_number(), 0u);
  EXPECT_CONTAINS(e.why(), "checkpoint");
  const CommandResult r = Qmgrctl(absl::StrCat("--data-dir ", data_, " explain ", consumed));
  EXPECT_EQ(r.exit_code, 5) << r.out;
  EXPECT_CONTAINS(r.err, absl::StrCat("mentions message ", consumed));
}

}  // namespace
}  // namespace qmgr
