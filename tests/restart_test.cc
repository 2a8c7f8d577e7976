// Checkpoint and restart in process: the log on the fault-injecting file
// layer (a crash drops its unsynced writes), the store in RocksDB in a temp
// directory. Every row of restart.cc's decision table, the modes, what
// restart backs out, and what a checkpoint writes.
#include "restart/restart.h"

#include <atomic>
#include <cmath>
#include <filesystem>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "rocksdb/db.h"
#include "rocksdb/statistics.h"
#include "tests/support/fault_file_system.h"
#include "tests/support/temp_dir.h"

namespace qmgr::restart {
namespace {

using qmgr::testing::CrashMode;
using qmgr::testing::FaultFileSystem;
using qmgr::v1::LogRecord;

class RestartTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The in-memory log file system needs the temp directory's parents.
    std::string path;
    for (absl::string_view part : absl::StrSplit(tmp_.path(), '/', absl::SkipEmpty())) {
      absl::StrAppend(&path, "/", part);
      ASSERT_TRUE(fs_.CreateDir(path).ok());
    }
    // The store is on the real disk, in the same data directory.
    std::filesystem::create_directory(tmp_.path() + "/qm");
  }

  RestartOptions Options() {
    RestartOptions options;
    options.data_dir = tmp_.path() + "/qm";
    options.fs = &fs_;
    options.log.segment_bytes = 1 << 20;
    options.engine.reaper_interval = absl::ZeroDuration();
    options.engine.id_block = 64;
    options.engine.clock = &clock_;
    options.automatic_checkpoints = false;
    options.progress = [this](absl::string_view line) { lines_.emplace_back(line); };
    return options;
  }

  QueueManager* Open(RestartOptions options) {
    absl::StatusOr<std::unique_ptr<QueueManager>> qm = Restart(std::move(options));
    EXPECT_TRUE(qm.ok()) << qm.status();
    if (!qm.ok()) return nullptr;
    qm_ = *std::move(qm);
    return qm_.get();
  }
  QueueManager* Open() { return Open(Options()); }

  // Power loss for the log (unsynced writes dropped); the store keeps what
  // it wrote, as after a process crash (its checkpoints are synced anyway).
  void Crash() {
    fs_.Freeze();
    qm_.reset();
    fs_.SimulateCrash(CrashMode::kDropUnsynced, 1);
    fs_.Thaw();
  }

  Engine* engine() { return qm_->engine(); }

  void Define(const std::string& name, qmgr::v1::QueueAttributes attributes = {}) {
    ASSERT_TRUE(engine()->DefineQueue(name, attributes).ok());
  }

  uint64_t Put(const std::string& queue, const std::string& payload,
               MessageClass cls = qmgr::v1::RECOVERABLE) {
    MessageSpec spec;
    spec.queue = queue;
    spec.payload = payload;
    spec.message_class = cls;
    absl::StatusOr<EnqueueResult> r = engine()->Enqueue(spec);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->message_id : 0;
  }

  // A unit of coordinator CICSA (qualifier QM1) that took the head of
  // `queue`, prepared: in doubt.
  void PrepareTaking(const std::string& queue, const std::string& xid) {
    absl::StatusOr<UowId> uow = engine()->BeginCoordinatedUnit({"CICSA", "QM1", xid});
    ASSERT_TRUE(uow.ok()) << uow.status();
    Take(queue, *uow);
    ASSERT_TRUE(engine()->Prepare(*uow).ok());
  }

  GetResult Take(const std::string& queue, UowId uow = 0) {
    GetOptions get;
    get.queue = queue;
    get.uow = uow;
    absl::StatusOr<GetResult> r = engine()->Get(get);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : GetResult{};
  }

  // Payloads (and backout counts) on a queue, head first.
  std::vector<std::string> Contents(const std::string& queue,
                                    std::vector<uint32_t>* counts = nullptr) {
    absl::StatusOr<std::vector<qmgr::v1::Message>> messages = engine()->Browse(queue, 1 << 20);
    EXPECT_TRUE(messages.ok()) << messages.status();
    std::vector<std::string> out;
    if (!messages.ok()) return out;
    for (const qmgr::v1::Message& m : *messages) {
      out.push_back(m.payload());
      if (counts != nullptr) counts->push_back(m.backout_count());
    }
    return out;
  }

  std::string LogDir() const { return tmp_.path() + "/qm/log"; }

  // Every file of the log directory but its lock.
  void RemoveSegments() {
    absl::StatusOr<std::vector<std::string>> names = fs_.ListDir(LogDir());
    ASSERT_TRUE(names.ok());
    for (const std::string& name : *names) {
      if (name != "LOCK") {
        ASSERT_TRUE(fs_.Remove(LogDir() + "/" + name).ok());
      }
    }
  }

  qmgr::testing::TempDir tmp_;
  FaultFileSystem fs_;
  ManualClock clock_{absl::FromUnixSeconds(1'700'000'000)};
  std::unique_ptr<QueueManager> qm_;
  std::vector<std::string> lines_;
};

using Strings = std::vector<std::string>;

TEST_F(RestartTest, NewThenNormalRestartKeepsQueuesInOrderAndReadsPayloadsLazily) {
  ASSERT_NE(Open(), nullptr);
  EXPECT_EQ(qm_->restart_report().mode, Mode::kNew);
  Define("Q");
  uint64_t last_id = 0;
  for (int i = 0; i < 5; ++i) last_id = Put("Q", absl::StrCat("m", i));
  last_id = std::max(last_id, Put("Q", "gone", qmgr::v1::IRRECOVERABLE));
  GetResult first = Take("Q");
  ASSERT_TRUE(engine()->SyncPoint(first.uow).ok());
  ASSERT_TRUE(qm_->Shutdown().ok());
  qm_.reset();

  ASSERT_NE(Open(), nullptr);
  const RestartReport& report = qm_->restart_report();
  EXPECT_EQ(report.mode, Mode::kNormal) << report.ToString();
  EXPECT_EQ(report.records_redone, 2u) << "CHECKPOINT_END and SHUTDOWN";
  EXPECT_EQ(report.messages_per_queue.at("Q"), 4u);
  EXPECT_EQ(Contents("Q"), (Strings{"m1", "m2", "m3", "m4"}));
  EXPECT_EQ(Take("Q").message.payload(), "m1");  // read from the store at Get
  EXPECT_GT(Put("Q", "new"), last_id) << "ids are never reused";
  EXPECT_NE(lines_.back().find("restart: normal"), std::string::npos) << lines_.back();
}

TEST_F(RestartTest, EmergencyRestartRedoesTheLogAndBacksOutUnitsWithoutOutcome) {
  ASSERT_NE(Open(), nullptr);
  Define("Q");
  for (int i = 0; i < 10; ++i) Put("Q", absl::StrCat("m", i));
  ASSERT_TRUE(qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested).ok());
  for (int i = 10; i < 15; ++i) Put("Q", absl::StrCat("m", i));
  Take("Q");                 // m0, in a unit left open
  GetResult m1 = Take("Q");  // m1, committed
  ASSERT_TRUE(engine()->SyncPoint(m1.uow).ok());
  GetResult m2 = Take("Q");  // m2, backed out before the crash
  ASSERT_TRUE(engine()->Backout(m2.uow).ok());
  Put("Q", "m15");  // makes the BACKOUT durable
  Crash();

  ASSERT_NE(Open(), nullptr);
  const RestartReport& report = qm_->restart_report();
  EXPECT_EQ(report.mode, Mode::kEmergency) << report.ToString();
  EXPECT_EQ(report.units_backed_out, 1u);
  std::vector<uint32_t> counts;
  Strings expected = {"m0", "m2"};
  for (int i = 3; i < 16; ++i) expected.push_back(absl::StrCat("m", i));
  EXPECT_EQ(Contents("Q", &counts), expected);
  EXPECT_EQ(counts[0], 1u) << "the open unit's message";
  EXPECT_EQ(counts[1], 1u) << "the backed-out message";
  EXPECT_EQ(counts[2], 0u);

  // The restart checkpoint: a second crash redoes nothing of the first.
  Crash();
  ASSERT_NE(Open(), nullptr);
  EXPECT_EQ(qm_->restart_report().units_backed_out, 0u);
  counts.clear();
  EXPECT_EQ(Contents("Q", &counts), expected);
  EXPECT_EQ(counts[0], 1u);
}

// A Get of many writes a GET record per message, as single Gets do: at a
// crash, an uncommitted unit of many returns all its messages in order with
// counts + 1; a committed one has removed them all.
TEST_F(RestartTest, AGetOfManyIsRestartedLikeSingleGets) {
  ASSERT_NE(Open(), nullptr);
  Define("Q");
  for (int i = 0; i < 8; ++i) Put("Q", absl::StrCat("m", i));
  GetOptions get;
  get.queue = "Q";
  get.max_messages = 3;
  absl::StatusOr<GetResult> committed = engine()->Get(get);  // m0..m2
  ASSERT_TRUE(committed.ok()) << committed.status();
  ASSERT_EQ(committed->more.size(), 2u);
  ASSERT_TRUE(engine()->SyncPoint(committed->uow).ok());
  get.max_messages = 4;
  absl::StatusOr<GetResult> open = engine()->Get(get);  // m3..m6, left open
  ASSERT_TRUE(open.ok()) << open.status();
  ASSERT_EQ(open->more.size(), 3u);
  Put("Q", "m8");  // makes the GET records durable
  Crash();

  ASSERT_NE(Open(), nullptr);
  EXPECT_EQ(qm_->restart_report().units_backed_out, 1u);
  std::vector<uint32_t> counts;
  EXPECT_EQ(Contents("Q", &counts), (Strings{"m3", "m4", "m5", "m6", "m7", "m8"}));
  EXPECT_EQ(counts, (std::vector<uint32_t>{1, 1, 1, 1, 0, 0}));
}

TEST_F(RestartTest, MessageTakenAtTheCheckpointIsBackedOutFromItsImage) {
  ASSERT_NE(Open(), nullptr);
  Define("Q");
  Put("Q", "a");
  Put("Q", "b");
  Take("Q");  // a: the checkpoint's image says taken
  ASSERT_TRUE(qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested).ok());
  Crash();
  ASSERT_NE(Open(), nullptr);
  std::vector<uint32_t> counts;
  EXPECT_EQ(Contents("Q", &counts), (Strings{"a", "b"}));
  EXPECT_EQ(counts, (std::vector<uint32_t>{1, 0}));
  EXPECT_EQ(qm_->restart_report().units_backed_out, 1u);
}

TEST_F(RestartTest, AMessageThatKeepsKillingTheServerMovesToTheBackoutQueue) {
  ASSERT_NE(Open(), nullptr);
  qmgr::v1::QueueAttributes attributes;
  attributes.set_backout_threshold(2);
  attributes.set_backout_queue("POISON");
  Define("POISON");
  Define("Q", attributes);
  Put("Q", "killer");
  Take("Q");          // count 0: its GET is not waited for...
  Put("Q", "other");  // ...but this durable enqueue carries it along
  Crash();
  ASSERT_NE(Open(), nullptr);
  std::vector<uint32_t> counts;
  EXPECT_EQ(Contents("Q", &counts), (Strings{"killer", "other"}));
  EXPECT_EQ(counts[0], 1u);
  Take("Q");  // count 1: the Get waits for its GET record
  Crash();
  ASSERT_NE(Open(), nullptr);
  EXPECT_EQ(Contents("Q"), (Strings{"other"}));
  counts.clear();
  EXPECT_EQ(Contents("POISON", &counts), (Strings{"killer"}));
  EXPECT_EQ(counts[0], 2u);
  EXPECT_EQ(qm_->restart_report().messages_moved_to_backout_queues, 1u);
}

TEST_F(RestartTest, SessionNumbersAndIdsSurvive) {
  ASSERT_NE(Open(), nullptr);
  Define("Q");
  MessageSpec spec;
  spec.queue = "Q";
  spec.origin_session = "TERM1";
  ASSERT_TRUE(engine()->OpenSession("TERM1", false).ok());
  uint64_t max_id = 0;
  for (uint64_t seq = 1; seq <= 3; ++seq) {
    spec.input_seq = seq;
    absl::StatusOr<EnqueueResult> r = engine()->Enqueue(spec);
    ASSERT_TRUE(r.ok()) << r.status();
    max_id = r->message_id;
  }
  for (int i = 0; i < 100; ++i) max_id = Put("Q", "x", qmgr::v1::IRRECOVERABLE);
  Crash();
  ASSERT_NE(Open(), nullptr);
  EXPECT_EQ(engine()->SessionInSeq("TERM1"), 3u);
  absl::StatusOr<bool> resync = engine()->OpenSession("TERM1", false);
  ASSERT_TRUE(resync.ok()) << resync.status();
  EXPECT_TRUE(*resync) << "its last record is not SESSION_CLOSE";
  StsnRequest stsn;
  stsn.input.set_action(qmgr::v1::SET_AND_TEST);
  stsn.input.set_last_sent(3);
  absl::StatusOr<StsnAnswer> answer = engine()->SetAndTestSequenceNumbers("TERM1", stsn);
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->input.result(), qmgr::v1::TEST_POSITIVE);
  ASSERT_TRUE(engine()->StartDataTraffic("TERM1").ok());
  spec.input_seq = 3;
  EXPECT_EQ(ReasonOf(engine()->Enqueue(spec).status()), reason::kAlreadyHardened);
  EXPECT_GT(Put("Q", "after"), max_id) << "an irrecoverable message's id is not reused either";
  EXPECT_EQ(qm_->restart_report().messages_per_queue.at("Q"), 3u) << "irrecoverable ones are gone";
}

// A session's numbers, its sent-but-unacknowledged output and its close
// survive a crash, through redo alone and through a checkpoint.
class RestartSessionTest : public RestartTest, public ::testing::WithParamInterface<bool> {
 protected:
  qmgr::v1::SessionInfo Info(const std::string& session) {
    absl::StatusOr<std::vector<qmgr::v1::SessionInfo>> info = engine()->DisplaySessions({session});
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->front() : qmgr::v1::SessionInfo();
  }
  void DefineOutput(const std::string& queue, const std::string& session,
                    const std::string& backout_queue = "") {
    qmgr::v1::QueueAttributes out;
    out.set_output_of_session(session);
    out.set_backout_queue(backout_queue);
    out.set_backout_threshold(backout_queue.empty() ? 0 : 2);
    Define(queue, out);
  }
  // The restart after a crash: with the parameter, a checkpoint first.
  void CrashAndOpen() {
    if (GetParam()) {
      ASSERT_TRUE(qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested).ok());
    }
    Crash();
    ASSERT_NE(Open(), nullptr);
  }
  // Rebind after the crash and agree, the client naming what it holds.
  void Resync(const std::string& session, uint64_t last_sent, uint64_t last_secured,
              uint64_t secured_id, qmgr::v1::OutputOutcome outcome) {
    absl::StatusOr<bool> resync = engine()->OpenSession(session, false);
    ASSERT_TRUE(resync.ok()) << resync.status();
    ASSERT_TRUE(*resync);
    StsnRequest stsn;
    stsn.input.set_action(qmgr::v1::SET_AND_TEST);
    stsn.input.set_last_sent(last_sent);
    stsn.output.set_action(qmgr::v1::SET_AND_TEST);
    stsn.output.set_last_secured(last_secured);
    stsn.output.set_last_secured_message_id(secured_id);
    absl::StatusOr<StsnAnswer> answer = engine()->SetAndTestSequenceNumbers(session, stsn);
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->input.result(), qmgr::v1::TEST_POSITIVE);
    EXPECT_EQ(answer->output.result(), qmgr::v1::TEST_POSITIVE);
    EXPECT_EQ(answer->output.outcome(), outcome);
    ASSERT_TRUE(engine()->StartDataTraffic(session).ok());
  }
};

TEST_P(RestartSessionTest, NumbersUnacknowledgedOutputAndCloseSurvive) {
  ASSERT_NE(Open(), nullptr);
  Define("IN");
  DefineOutput("T1.OUT", "T1");
  ASSERT_TRUE(engine()->OpenSession("T1", false).ok());
  MessageSpec input;
  input.queue = "IN";
  input.origin_session = "T1";
  for (input.input_seq = 1; input.input_seq <= 2; ++input.input_seq) {
    ASSERT_TRUE(engine()->Enqueue(input).ok());
  }
  const uint64_t m1 = Put("T1.OUT", "one");
  const uint64_t m2 = Put("T1.OUT", "two");
  const uint64_t m3 = Put("T1.OUT", "three");
  absl::StatusOr<SessionOutput> out = engine()->ReceiveOutput("T1", absl::ZeroDuration());
  ASSERT_TRUE(out.ok() && out->message.id() == m1);
  ASSERT_TRUE(engine()->Acknowledge("T1", 1, true, 0).ok());
  out = engine()->ReceiveOutput("T1", absl::ZeroDuration());
  ASSERT_TRUE(out.ok() && out->out_seq == 2 && out->message.id() == m2);
  Put("IN", "a durable record after OUTPUT_SENT");
  const int64_t opened_us = Info("T1").opened_time_us();
  EXPECT_GT(opened_us, 0);
  EXPECT_EQ(Info("T1").closed_time_us(), 0) << "never closed";

  CrashAndOpen();
  qmgr::v1::SessionInfo info = Info("T1");
  EXPECT_EQ(info.opened_time_us(), opened_us) << "SESSION_OPEN's time survives";
  EXPECT_EQ(info.in_seq(), 2u);
  EXPECT_EQ(info.out_seq(), 2u);
  EXPECT_EQ(info.out_message_id(), m2);
  EXPECT_FALSE(info.output_acknowledged());
  EXPECT_TRUE(info.resync_required());
  EXPECT_EQ(info.output_depth(), 1u) << "output 2 waits apart for its acknowledgement";
  Resync("T1", 2, 2, m2, qmgr::v1::DELIVERED);
  EXPECT_EQ(Contents("T1.OUT"), std::vector<std::string>{"three"});
  out = engine()->ReceiveOutput("T1", absl::ZeroDuration());
  ASSERT_TRUE(out.ok() && out->out_seq == 3 && out->message.id() == m3);
  ASSERT_TRUE(engine()->Acknowledge("T1", 3, true, 0).ok());
  ASSERT_TRUE(engine()->CloseSession("T1").ok());
  const int64_t closed_us = Info("T1").closed_time_us();
  EXPECT_GE(closed_us, opened_us);

  CrashAndOpen();
  info = Info("T1");
  EXPECT_EQ(info.closed_time_us(), closed_us) << "SESSION_CLOSE's time survives";
  EXPECT_EQ(info.out_seq(), 3u);
  EXPECT_TRUE(info.output_acknowledged());
  EXPECT_FALSE(info.resync_required()) << "closed: SESSION_CLOSE is its last record";
  absl::StatusOr<bool> resync = engine()->OpenSession("T1", false);
  ASSERT_TRUE(resync.ok());
  EXPECT_FALSE(*resync);
  EXPECT_TRUE(Contents("T1.OUT").empty());
}

TEST_P(RestartSessionTest, NegativeAcknowledgementsAndAssignAreRedone) {
  ASSERT_NE(Open(), nullptr);
  Define("BQ");
  DefineOutput("T1.OUT", "T1", "BQ");
  DefineOutput("T2.OUT", "T2");
  ASSERT_TRUE(engine()->OpenSession("T1", false).ok());
  const uint64_t m1 = Put("T1.OUT", "one");
  Put("T1.OUT", "two");
  Put("T1.OUT", "three");
  absl::StatusOr<SessionOutput> out = engine()->ReceiveOutput("T1", absl::ZeroDuration());
  ASSERT_TRUE(out.ok() && out->message.id() == m1);
  EXPECT_EQ(engine()->Acknowledge("T1", 1, false, 0).status().code(),
            absl::StatusCode::kInvalidArgument)
      << "a negative acknowledgement needs its sense code";
  absl::StatusOr<bool> moved = engine()->Acknowledge("T1", 1, false, 0x0801);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_FALSE(*moved);
  out = engine()->ReceiveOutput("T1", absl::ZeroDuration());
  ASSERT_TRUE(out.ok() && out->out_seq == 2 && out->message.id() == m1)
      << "kept, sent again with the next number";
  EXPECT_EQ(out->message.backout_count(), 1u);
  moved = engine()->Acknowledge("T1", 2, false, 0x0801);
  ASSERT_TRUE(moved.ok() && *moved) << "the threshold (2) moves it to the backout queue";
  out = engine()->ReceiveOutput("T1", absl::ZeroDuration());
  ASSERT_TRUE(out.ok() && out->out_seq == 3 && out->message.payload() == "two");
  absl::Status refused = engine()->Assign("T1", "T2", false).status();
  EXPECT_EQ(ReasonOf(refused), reason::kOutputUnacknowledged) << refused;
  absl::StatusOr<AssignResult> assigned = engine()->Assign("T1", "T2", true);
  ASSERT_TRUE(assigned.ok()) << assigned.status();
  EXPECT_EQ(assigned->moved, 2u);

  CrashAndOpen();
  std::vector<uint32_t> counts;
  EXPECT_EQ(Contents("BQ", &counts), std::vector<std::string>{"one"});
  EXPECT_EQ(counts, std::vector<uint32_t>{2});
  EXPECT_TRUE(Contents("T1.OUT").empty());
  EXPECT_EQ(Contents("T2.OUT"), (std::vector<std::string>{"two", "three"}));
  absl::StatusOr<std::vector<qmgr::v1::Message>> t2 = engine()->Browse("T2.OUT", 10);
  ASSERT_TRUE(t2.ok());
  EXPECT_TRUE(t2->at(0).possible_duplicate()) << "the forced one";
  EXPECT_FALSE(t2->at(1).possible_duplicate());
  Resync("T1", 0, 3, 0, qmgr::v1::REASSIGNED);
}

INSTANTIATE_TEST_SUITE_P(RedoOrCheckpoint, RestartSessionTest, ::testing::Bool());

TEST_F(RestartTest, QueueDefinitionsAlterAndDeleteAreRedone) {
  ASSERT_NE(Open(), nullptr);
  Define("KEEP");
  Define("GONE");
  Put("GONE", "x");
  ASSERT_TRUE(qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested).ok());
  qmgr::v1::QueueAttributes altered;
  altered.set_max_depth(7);
  ASSERT_TRUE(engine()->AlterQueue("KEEP", altered).ok());
  ASSERT_TRUE(engine()->DeleteQueue("GONE", /*purge=*/true).ok());
  Define("NEW");
  Crash();
  ASSERT_NE(Open(), nullptr);
  std::vector<QueueStatus> queues = engine()->DisplayQueues();
  ASSERT_EQ(queues.size(), 2u);
  EXPECT_EQ(queues[0].name, "KEEP");
  EXPECT_EQ(queues[0].attributes.max_depth(), 7u);
  EXPECT_EQ(queues[1].name, "NEW");
  // And the restart checkpoint wrote it all: a normal restart agrees.
  ASSERT_TRUE(qm_->Shutdown().ok());
  qm_.reset();
  ASSERT_NE(Open(), nullptr);
  EXPECT_EQ(qm_->restart_report().mode, Mode::kNormal);
  EXPECT_EQ(engine()->DisplayQueues().size(), 2u);
}

TEST_F(RestartTest, ASecondQueueManagerOnTheDataDirectoryIsRefused) {
  ASSERT_NE(Open(), nullptr);
  absl::StatusOr<std::unique_ptr<QueueManager>> second = Restart(Options());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("in use by another queue manager"), std::string::npos)
      << second.status();
}

// ---- The decision table, row by row -------------------------------------------

TEST(RestartDecisionTest, EveryRowOfTheTable) {
  using internal::DecideLogAction;
  using internal::LogAction;
  std::string why;
  // 1: no meta, no segments.
  EXPECT_EQ(DecideLogAction(false, 0, {false, 0}, &why), LogAction::kCreate);
  // 2: no meta, the log starts where a new log would.
  EXPECT_EQ(DecideLogAction(false, 0, {true, 0}, &why), LogAction::kRedoFromStart);
  EXPECT_EQ(DecideLogAction(false, 8192, {true, 8192}, &why), LogAction::kRedoFromStart);
  // 3: no meta, the log starts elsewhere.
  EXPECT_EQ(DecideLogAction(false, 0, {true, 4096}, &why), LogAction::kRefuse);
  EXPECT_NE(why.find("store that retired"), std::string::npos);
  // 4: meta, no segments.
  EXPECT_EQ(DecideLogAction(true, 0, {false, 0}, &why), LogAction::kRefuse);
  EXPECT_NE(why.find("no segments"), std::string::npos);
  // 5, 6: decided by Log::Open (tests below); the table hands them the log.
  EXPECT_EQ(DecideLogAction(true, 0, {true, 0}, &why), LogAction::kRedoFromCheckpoint);
  // 7: redo_lsn below the first LSN.
  EXPECT_EQ(internal::CheckRedoRange(4096, 8192, 16384).code(),
            absl::StatusCode::kFailedPrecondition);
  // 8: the log ends below redo_lsn.
  EXPECT_EQ(internal::CheckRedoRange(20000, 0, 16384).code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(internal::CheckRedoRange(8192, 8192, 8192).ok());
  EXPECT_TRUE(internal::CheckRedoRange(8192, 0, 8000).ok()) << "the next batch starts at 8192";
  // 9: clean, markers only, SHUTDOWN last.
  EXPECT_EQ(internal::DecideMode(true, true, true), Mode::kNormal);
  // 10: a torn tail.
  EXPECT_EQ(internal::DecideMode(false, true, true), Mode::kEmergency);
  // 11: anything else.
  EXPECT_EQ(internal::DecideMode(true, false, true), Mode::kEmergency);
  EXPECT_EQ(internal::DecideMode(true, true, false), Mode::kEmergency);
}

TEST_F(RestartTest, Row2CrashBeforeTheFirstCheckpointRedoesFromLsnZero) {
  {
    ASSERT_TRUE(fs_.CreateDir(tmp_.path() + "/qm").ok());
    absl::StatusOr<std::unique_ptr<log::Log>> log = log::Log::Open(&fs_, LogDir());
    ASSERT_TRUE(log.ok()) << log.status();
    LogRecord define;
    define.mutable_queue_define()->set_queue("Q");
    ASSERT_TRUE((*log)->AppendDurable(define).ok());
    LogRecord enqueue;
    qmgr::v1::Message* m = enqueue.mutable_enqueue()->add_messages();
    m->set_id(5);
    m->set_queue("Q");
    m->set_class_(qmgr::v1::RECOVERABLE);
    m->set_payload("before any checkpoint");
    ASSERT_TRUE((*log)->AppendDurable(enqueue).ok());
  }
  ASSERT_NE(Open(), nullptr);
  EXPECT_EQ(qm_->restart_report().mode, Mode::kEmergency);
  EXPECT_EQ(Contents("Q"), (Strings{"before any checkpoint"}));
  EXPECT_GT(Put("Q", "next"), 5u);
}

// The store_load fuzzer's find: a stored message of a class that does not
// exist passed the decoder and tripped an assertion in the engine.
TEST_F(RestartTest, AStoredMessageOfNoClassIsRefusedAsDataLoss) {
  ASSERT_NE(Open(), nullptr);
  Define("Q");
  Put("Q", "m");
  ASSERT_TRUE(qm_->Shutdown().ok());
  qm_.reset();
  {
    const std::string path = tmp_.path() + "/qm/store";
    std::vector<std::string> names;
    ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), path, &names).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> families;
    for (const std::string& name : names)
      families.emplace_back(name, rocksdb::ColumnFamilyOptions());
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), path, families, &handles, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    rocksdb::ColumnFamilyHandle* messages = handles[std::distance(
        names.begin(), std::find(names.begin(), names.end(), checkpoint::kMessagesFamily))];
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), messages));
    int rewritten = 0;
    for (it->Seek("m"); it->Valid() && it->key().starts_with("m"); it->Next()) {
      qmgr::v1::StoredMessage stored;
      ASSERT_TRUE(stored.ParseFromString(it->value().ToString()));
      stored.mutable_message()->set_class_(static_cast<qmgr::v1::MessageClass>(99));
      ASSERT_TRUE(
          db->Put(rocksdb::WriteOptions(), messages, it->key(), stored.SerializeAsString()).ok());
      ++rewritten;
    }
    EXPECT_EQ(rewritten, 1);
    it.reset();
    for (rocksdb::ColumnFamilyHandle* h : handles)
      ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
  }
  absl::StatusOr<std::unique_ptr<QueueManager>> qm = Restart(Options());
  ASSERT_FALSE(qm.ok());
  EXPECT_EQ(qm.status().code(), absl::StatusCode::kDataLoss) << qm.status();
  EXPECT_NE(qm.status().message().find("has class 99, which is no class"), std::string::npos)
      << qm.status();
}

TEST_F(RestartTest, Row3LogWithoutItsStoreIsRefused) {
  ASSERT_TRUE(fs_.CreateDir(tmp_.path() + "/qm").ok());
  log::LogOptions options;
  options.first_lsn_if_new = 1 << 20;
  ASSERT_TRUE(log::Log::Open(&fs_, LogDir(), options).ok());
  absl::StatusOr<std::unique_ptr<QueueManager>> qm = Restart(Options());
  ASSERT_FALSE(qm.ok());
  EXPECT_EQ(qm.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(qm.status().message().find("store that retired"), std::string::npos) << qm.status();
}

TEST_F(RestartTest, Row4StoreWithoutItsLogIsRefused) {
  ASSERT_NE(Open(), nullptr);
  qm_.reset();
  RemoveSegments();
  absl::StatusOr<std::unique_ptr<QueueManager>> qm = Restart(Options());
  ASSERT_FALSE(qm.ok());
  EXPECT_NE(qm.status().message().find("no segments"), std::string::npos) << qm.status();
}

TEST_F(RestartTest, Row5AnotherLogIsRefused) {
  ASSERT_NE(Open(), nullptr);
  qm_.reset();
  RemoveSegments();
  ASSERT_TRUE(log::Log::Open(&fs_, LogDir()).ok());  // a new log, another id
  absl::StatusOr<std::unique_ptr<QueueManager>> qm = Restart(Options());
  ASSERT_FALSE(qm.ok());
  EXPECT_EQ(qm.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(qm.status().message().find("foreign log"), std::string::npos) << qm.status();
}

TEST_F(RestartTest, Row6CorruptionInAMiddleSegmentIsRefusedUnlessTruncating) {
  RestartOptions options = Options();
  options.log.segment_bytes = 64 << 10;
  ASSERT_NE(Open(options), nullptr);
  Define("Q");
  ASSERT_TRUE(qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested).ok());
  for (int i = 0; i < 300; ++i) Put("Q", std::string(900, 'a' + i % 26));
  Crash();
  absl::StatusOr<std::vector<log::SegmentFile>> segments =
      log::ListSegments(&fs_, LogDir(), nullptr);
  ASSERT_TRUE(segments.ok());
  ASSERT_GE(segments->size(), 4u);
  // The middle of the log: a later batch claims it durable.
  ASSERT_TRUE(fs_.CorruptByte((*segments)[1].path, log::kSegmentHeaderBytes + 100).ok());

  absl::StatusOr<std::unique_ptr<QueueManager>> refused = Restart(options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(refused.status().message().find((*segments)[1].path), std::string::npos)
      << refused.status();

  options.truncate_log_at_corruption = true;
  ASSERT_NE(Open(options), nullptr);
  const RestartReport& report = qm_->restart_report();
  EXPECT_TRUE(report.log_truncated);
  EXPECT_NE(report.log_tail.find("records lost"), std::string::npos) << report.log_tail;
  EXPECT_LT(report.messages_per_queue.at("Q"), 300u);
}

TEST_F(RestartTest, Row10TornTailIsTruncatedAndRestartIsEmergency) {
  ASSERT_NE(Open(), nullptr);
  Define("Q");
  Put("Q", "kept");
  fs_.Freeze();
  qm_.reset();
  fs_.SimulateCrash(CrashMode::kTearLastWrite, 7);
  fs_.Thaw();
  ASSERT_NE(Open(), nullptr);
  EXPECT_EQ(qm_->restart_report().mode, Mode::kEmergency);
  EXPECT_EQ(Contents("Q"), (Strings{"kept"}));
}

// ---- Cold start -----------------------------------------------------------------

TEST_F(RestartTest, ColdStartDiscardsMessagesKeepsDefinitionsAndTheLsnRuns) {
  ASSERT_NE(Open(), nullptr);
  Define("Q");
  uint64_t max_id = 0;
  for (int i = 0; i < 10; ++i) max_id = Put("Q", "old");
  const log::Lsn old_end = qm_->log()->NextLsn();
  Crash();
  RestartOptions options = Options();
  options.cold = true;
  options.cold_keep_definitions = true;
  ASSERT_NE(Open(options), nullptr);
  EXPECT_EQ(qm_->restart_report().mode, Mode::kCold);
  EXPECT_TRUE(Contents("Q").empty());
  EXPECT_GE(qm_->log()->FirstLsn(), old_end) << "the LSN keeps running";
  EXPECT_GT(Put("Q", "new"), max_id);
  Crash();
  ASSERT_NE(Open(), nullptr);  // and the new log restarts like any other
  EXPECT_EQ(Contents("Q"), (Strings{"new"}));
}

TEST_F(RestartTest, ColdStartIsRefusedWhileUnitsAreInDoubtUnlessForced) {
  ASSERT_NE(Open(), nullptr);
  Define("Q");
  Put("Q", "locked");
  ASSERT_NO_FATAL_FAILURE(PrepareTaking("Q", "XID-7"));
  ASSERT_TRUE(qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested).ok());
  qm_.reset();
  RestartOptions options = Options();
  options.cold = true;
  absl::StatusOr<std::unique_ptr<QueueManager>> refused = Restart(options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string listed = "CICSA/QM1/" + absl::BytesToHexString("XID-7");
  EXPECT_NE(refused.status().message().find(listed), std::string::npos) << refused.status();
  // Forced, the cold start discards them and says so.
  options.force = true;
  ASSERT_NE(Open(options), nullptr);
  EXPECT_EQ(qm_->restart_report().mode, Mode::kCold);
  EXPECT_NE(qm_->restart_report().log_tail.find("in doubt discarded (forced): " + listed),
            std::string::npos)
      << qm_->restart_report().log_tail;
  EXPECT_TRUE(engine()->InDoubtUnits("", "").empty());
}

// Units in doubt keep their messages locked across crashes, checkpoints and
// the retirement of the log beneath them; outcomes are remembered until
// forgotten, also across restarts.
// Regression: the redo of a PREPARE made the unit as old as the restart
// (the record carried no time), so an operator saw a unit in doubt for hours
// as just prepared, and units redone together in no stable order.
TEST_F(RestartTest, AgeInDoubtSurvivesARestartThatRedoesThePrepare) {
  RestartOptions options = Options();
  options.qmgr_name = "QM1";
  ASSERT_NE(Open(options), nullptr);
  Define("Q");
  Put("Q", "one");
  ASSERT_NO_FATAL_FAILURE(PrepareTaking("Q", "x1"));
  clock_.Advance(absl::Seconds(45));
  for (const char* xid : {"x2", "x3"}) {
    absl::StatusOr<UowId> uow = engine()->BeginCoordinatedUnit({"CICSA", "QM1", xid});
    ASSERT_TRUE(uow.ok());
    ASSERT_TRUE(engine()->Prepare(*uow).ok());  // x2 and x3 in the same clock tick
  }
  Crash();
  ASSERT_NE(Open(options), nullptr);
  clock_.Advance(absl::Seconds(5));
  std::vector<InDoubtUnit> in_doubt = engine()->InDoubtUnits("CICSA", "QM1");
  ASSERT_EQ(in_doubt.size(), 3u);
  EXPECT_EQ(in_doubt[0].key.xid, "x1");
  EXPECT_EQ(in_doubt[0].age, absl::Seconds(50));
  EXPECT_EQ(in_doubt[1].key.xid, "x2");
  EXPECT_EQ(in_doubt[1].age, absl::Seconds(5));
  EXPECT_EQ(in_doubt[2].key.xid, "x3");
}

TEST_F(RestartTest, UnitsInDoubtSurviveRestartsAndResolve) {
  RestartOptions options = Options();
  options.qmgr_name = "QM1";
  ASSERT_NE(Open(options), nullptr);
  Define("Q");
  Define("OUT");
  Define("T");
  const uint64_t m1 = Put("Q", "one");
  Put("Q", "two");
  absl::StatusOr<UowId> x1 = engine()->BeginCoordinatedUnit({"CICSA", "QM1", "x1"});
  ASSERT_TRUE(x1.ok()) << x1.status();
  EXPECT_EQ(engine()->BeginCoordinatedUnit({"CICSA", "QM1", "x1"}).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Take("Q", *x1).message.id(), m1);
  MessageSpec reply;
  reply.queue = "OUT";
  reply.payload = "reply";
  ASSERT_TRUE(engine()->Insert(*x1, reply).ok());
  EXPECT_EQ(engine()->SyncPoint(*x1).status().code(), absl::StatusCode::kFailedPrecondition)
      << "a coordinated unit ends by its coordinator";
  ASSERT_TRUE(engine()->Prepare(*x1).ok());
  const log::Lsn prepared_at = qm_->log()->NextLsn();
  EXPECT_EQ(engine()->Insert(*x1, reply).code(), absl::StatusCode::kFailedPrecondition)
      << "in doubt";
  ASSERT_NO_FATAL_FAILURE(PrepareTaking("Q", "x2"));
  absl::StatusOr<UowId> x3 = engine()->BeginCoordinatedUnit({"CICSA", "QM1", "x3"});
  ASSERT_TRUE(x3.ok());  // never prepared: backed out by the crash

  Crash();
  ASSERT_NE(Open(options), nullptr);
  std::vector<InDoubtUnit> in_doubt = engine()->InDoubtUnits("CICSA", "QM1");
  ASSERT_EQ(in_doubt.size(), 2u);
  EXPECT_EQ(qm_->restart_report().units_in_doubt, 2u);
  EXPECT_TRUE(engine()->InDoubtUnits("OTHER", "QM1").empty()) << "another coordinator sees none";
  EXPECT_EQ(engine()->DisplayQueue("Q")->depth, 0u);
  EXPECT_EQ(engine()->DisplayQueue("Q")->taken, 2u) << "locked by the units in doubt";
  EXPECT_EQ(engine()->DisplayQueue("OUT")->depth, 0u) << "inserts invisible until the outcome";

  // Checkpoints and enough traffic to retire the segments beneath them.
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 600; ++i) {
      Put("T", std::string(1024, 'x'));
      ASSERT_TRUE(engine()->SyncPoint(Take("T").uow).ok());
    }
    ASSERT_TRUE(qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested).ok());
  }
  absl::StatusOr<std::vector<log::SegmentFile>> segments =
      log::ListSegments(&fs_, LogDir(), nullptr);
  ASSERT_TRUE(segments.ok());
  EXPECT_GT(segments->front().header.first_lsn, prepared_at)
      << "a unit prepared long ago does not pin the log";
  Crash();
  ASSERT_NE(Open(options), nullptr);
  ASSERT_EQ(engine()->InDoubtUnits("CICSA", "QM1").size(), 2u);

  ResolveResult resolved = engine()->Resolve(
      "CICSA", "QM1",
      {{"x1", qmgr::v1::COMMIT}, {"x2", qmgr::v1::BACKOUT}, {"x9", qmgr::v1::COMMIT}}, "CICSA");
  EXPECT_EQ(resolved.in_doubt, 2u);
  EXPECT_EQ(resolved.committed, 1u);
  EXPECT_EQ(resolved.backed_out, 1u);
  EXPECT_EQ(resolved.unresolved, 1u);
  EXPECT_EQ(resolved.statuses[2].code(), absl::StatusCode::kNotFound) << "never seen";
  EXPECT_EQ(Contents("OUT"), std::vector<std::string>{"reply"});
  std::vector<uint32_t> counts;
  const std::vector<std::string> q = Contents("Q", &counts);
  ASSERT_FALSE(q.empty());
  EXPECT_EQ(q.front(), "two") << "backed out to the head";
  EXPECT_EQ(counts.front(), 1u);

  Crash();
  ASSERT_NE(Open(options), nullptr);
  EXPECT_TRUE(engine()->InDoubtUnits("", "").empty());
  EXPECT_EQ(Contents("OUT"), std::vector<std::string>{"reply"});
  resolved = engine()->Resolve("CICSA", "QM1", {{"x1", qmgr::v1::COMMIT}}, "CICSA");
  EXPECT_EQ(resolved.committed, 1u) << "the same outcome again is OK";
  resolved = engine()->Resolve("CICSA", "QM1", {{"x2", qmgr::v1::COMMIT}}, "CICSA");
  EXPECT_EQ(resolved.unresolved, 1u);
  EXPECT_EQ(ReasonOf(resolved.statuses[0]), reason::kHeuristicMismatch) << resolved.statuses[0];
  ASSERT_TRUE(engine()->Forget("CICSA", "QM1", {"x1", "x2"}).ok());
  ASSERT_TRUE(qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested).ok());
  Crash();
  ASSERT_NE(Open(options), nullptr);
  resolved = engine()->Resolve("CICSA", "QM1", {{"x1", qmgr::v1::COMMIT}}, "CICSA");
  EXPECT_EQ(resolved.statuses[0].code(), absl::StatusCode::kNotFound) << "forgotten";
}

// When no checkpoint has recorded names yet (a crash before the first one;
// here a queue manager first run without names), the units' qualifiers
// decide: names that reach them restart, others are refused.
TEST_F(RestartTest, WithoutRecordedNamesTheQualifiersOfUnitsInDoubtDecide) {
  ASSERT_NE(Open(), nullptr);
  Define("Q");
  Put("Q", "m");
  ASSERT_NO_FATAL_FAILURE(PrepareTaking("Q", "x"));
  Crash();
  RestartOptions options = Options();
  options.qmgr_name = "QM2";
  absl::StatusOr<std::unique_ptr<QueueManager>> refused = Restart(options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  options.qmgr_name = "QM1";
  ASSERT_NE(Open(options), nullptr);
  EXPECT_EQ(engine()->InDoubtUnits("CICSA", "QM1").size(), 1u);
}

TEST_F(RestartTest, ChangedNamesAreRefusedWhileUnitsAreInDoubt) {
  RestartOptions options = Options();
  options.qmgr_name = "QM1";
  ASSERT_NE(Open(options), nullptr);
  Define("Q");
  Put("Q", "m");
  ASSERT_NO_FATAL_FAILURE(PrepareTaking("Q", "x"));
  ASSERT_TRUE(qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested).ok());
  Crash();
  options.qmgr_name = "QM2";
  absl::StatusOr<std::unique_ptr<QueueManager>> refused = Restart(options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("QM1"), std::string::npos) << refused.status();
  options.force = true;
  ASSERT_NE(Open(options), nullptr);
  EXPECT_EQ(engine()->InDoubtUnits("", "").size(), 1u) << "forced: kept, under the old qualifier";
}

TEST_F(RestartTest, AnInterruptedColdStartRunAgainKeepsTheLsnAndIdsRunning) {
  ASSERT_NE(Open(), nullptr);
  Define("Q");
  uint64_t max_id = 0;
  for (int i = 0; i < 10; ++i) max_id = Put("Q", "old");
  const log::Lsn old_end = qm_->log()->NextLsn();
  Crash();
  // The cold start empties the store and moves the segments aside, then
  // fails to create the new log (a full disk), as a crash there would leave it.
  RestartOptions options = Options();
  options.cold = true;
  options.cold_keep_definitions = true;
  fs_.SetSpaceLimit(1);
  absl::StatusOr<std::unique_ptr<QueueManager>> interrupted = Restart(options);
  ASSERT_FALSE(interrupted.ok());
  EXPECT_EQ(interrupted.status().code(), absl::StatusCode::kResourceExhausted)
      << interrupted.status();
  fs_.ClearSpaceLimit();
  // Run again: the moved segments cannot tell it the old end or the ids.
  ASSERT_NE(Open(options), nullptr);
  EXPECT_GE(qm_->log()->FirstLsn(), old_end);
  EXPECT_GT(Put("Q", "new"), max_id);
}

// ---- What a checkpoint writes ---------------------------------------------------

TEST_F(RestartTest, AMessageThatCameAndWentBetweenCheckpointsNeverTouchesTheStore) {
  RestartOptions options = Options();
  options.store_statistics = rocksdb::CreateDBStatistics();
  std::shared_ptr<rocksdb::Statistics> stats = options.store_statistics;
  ASSERT_NE(Open(options), nullptr);
  Define("Q");
  Put("Q", "stays");
  absl::StatusOr<checkpoint::CheckpointReport> first =
      qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->counts.messages_written, 1u);
  const uint64_t keys_before = stats->getTickerCount(rocksdb::NUMBER_KEYS_WRITTEN);
  for (int i = 0; i < 100; ++i) Put("Q", "passing");
  GetResult stays = Take("Q");
  for (int i = 0; i < 100; ++i) {
    GetResult r = Take("Q");
    ASSERT_EQ(r.message.payload(), "passing");
    ASSERT_TRUE(engine()->SyncPoint(r.uow).ok());
  }
  ASSERT_TRUE(engine()->Backout(stays.uow).ok());  // changes the image of "stays"
  absl::StatusOr<checkpoint::CheckpointReport> second =
      qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->counts.messages_written, 1u) << "only the image of 'stays'";
  EXPECT_EQ(second->counts.payloads_written, 0u);
  EXPECT_EQ(second->counts.messages_deleted, 0u);
  // Its image and the meta: no key of a passing message.
  EXPECT_EQ(stats->getTickerCount(rocksdb::NUMBER_KEYS_WRITTEN) - keys_before, 2u);
}

TEST_F(RestartTest, EnqueuesKeepCompletingWhileTheCheckpointWaitsForTheStore) {
  absl::Notification held, go;
  std::atomic<bool> armed{false};  // not for the restart's own checkpoint
  RestartOptions options = Options();
  options.checkpoint.step_hook = [&](checkpoint::Step step) {
    if (step == checkpoint::Step::kLogDurable && armed.exchange(false)) {
      held.Notify();
      go.WaitForNotification();
    }
  };
  ASSERT_NE(Open(options), nullptr);
  Define("Q");
  armed = true;
  std::thread stalled(
      [&] { EXPECT_TRUE(qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested).ok()); });
  held.WaitForNotification();  // the checkpoint is about to write the store
  for (int i = 0; i < 200; ++i) Put("Q", "during");
  EXPECT_EQ(Contents("Q").size(), 200u);
  go.Notify();
  stalled.join();
}

TEST_F(RestartTest, ALongOpenUnitIsReportedAndEndedByItsIdleTimeout) {
  RestartOptions options = Options();
  options.engine.unit_idle_timeout = absl::Seconds(60);
  options.checkpoint.report_units_open_over = absl::Seconds(30);
  ASSERT_NE(Open(options), nullptr);
  Define("Q");
  Put("Q", "held");
  GetResult held = Take("Q");
  clock_.Advance(absl::Seconds(45));
  absl::StatusOr<checkpoint::CheckpointReport> report =
      qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested);
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->long_open_units.size(), 1u);
  EXPECT_EQ(report->long_open_units[0].id, held.uow);
  EXPECT_EQ(report->long_open_units[0].age, absl::Seconds(45));
  EXPECT_NE(report->ToString().find(absl::StrCat("units open long: ", held.uow, " (age 45s")),
            std::string::npos)
      << report->ToString();
  clock_.Advance(absl::Seconds(20));
  EXPECT_EQ(engine()->ReapIdleUnits(), 1);
  EXPECT_EQ(Contents("Q"), (Strings{"held"}));
}

TEST_F(RestartTest, RestartEstimateIsWithinHalfOfTheMeasuredReplay) {
  RestartOptions options = Options();
  options.log.segment_bytes = 32 << 20;
  options.engine.memory_budget_bytes = 0;
  ASSERT_NE(Open(options), nullptr);
  Define("Q");
  const std::string payload(16 << 10, 'p');
  const auto fill = [&] {  // about 128 MiB to replay
    std::vector<MessageSpec> batch(64);
    for (MessageSpec& spec : batch) {
      spec.queue = "Q";
      spec.payload = payload;
    }
    for (int i = 0; i < 128; ++i) ASSERT_TRUE(engine()->EnqueueBatch(batch).ok());
  };
  // The first replay warms up (allocations, first touches); the second
  // measures the rate the estimate then uses for the third.
  for (int warm = 0; warm < 2; ++warm) {
    fill();
    Crash();
    ASSERT_NE(Open(options), nullptr);
    ASSERT_GT(qm_->restart_report().replay_bytes_per_second, 0) << "measured";
  }
  // A replay of about 0.1 s is at the mercy of the machine (writeback, page
  // faults of a fresh heap), both the one that measured the rate and the one
  // estimated: a round that misses is tried again, up to three rounds. An
  // estimator that is wrong misses every round.
  std::string rounds;
  bool within = false;
  for (int round = 0; round < 3 && !within; ++round) {
    fill();
    const double estimate = qm_->checkpointer()->EstimatedRestartSeconds();
    Crash();
    ASSERT_NE(Open(options), nullptr);
    const double measured = absl::ToDoubleSeconds(qm_->restart_report().replay_elapsed);
    within = std::abs(estimate - measured) <= 0.5 * measured;
    absl::StrAppend(&rounds, "estimate ", estimate, " s, replay ", measured, " s; ");
  }
  EXPECT_TRUE(within) << rounds;
}

}  // namespace
}  // namespace qmgr::restart
