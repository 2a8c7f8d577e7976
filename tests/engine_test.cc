// The queue engine on a real log (through the fault-injecting file layer):
// each message class's lifecycle and what the log holds afterwards, units of
// work, backout and poison messages, session input numbering, limits and
// every refusal with its status and reason.
#include "qmgr/engine.h"

#include <atomic>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "log/log.h"
#include "log/reader.h"
#include "tests/support/fault_file_system.h"
#include "tests/support/temp_dir.h"

namespace qmgr {
namespace {

using qmgr::testing::FaultFileSystem;
using qmgr::v1::LogRecord;

constexpr char kLogDir[] = "/data/log";

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs_.CreateDir("/data").ok());
    Start();
  }

  void Start(uint64_t first_free_id = 1, uint64_t memory_budget_bytes = 1 << 30,
             SpillStore* spill = nullptr, uint64_t spill_limit_bytes = 0) {
    log::LogOptions log_options;
    log_options.segment_bytes = 1 << 20;
    absl::StatusOr<std::unique_ptr<log::Log>> log = log::Log::Open(&fs_, kLogDir, log_options);
    ASSERT_TRUE(log.ok()) << log.status();
    log_ = *std::move(log);
    EngineOptions options;
    options.clock = &clock_;
    options.reaper_interval = absl::ZeroDuration();
    options.id_block = 64;
    options.first_free_id = first_free_id;
    options.unit_messages_max = 1000;
    options.unit_bytes_max = unit_bytes_max_;
    options.memory_budget_bytes = memory_budget_bytes;
    options.spill = spill;
    options.spill_limit_bytes = spill_limit_bytes;
    options.before_answer_copy = before_answer_copy_;
    engine_ = std::make_unique<Engine>(log_.get(), options);
  }

  void Stop() {
    engine_.reset();
    log_.reset();
  }

  void Define(const std::string& name, qmgr::v1::QueueAttributes attributes = {}) {
    ASSERT_TRUE(engine_->DefineQueue(name, attributes).ok());
  }

  // BIND of a new session: data traffic at once.
  void Bind(const std::string& session) {
    absl::StatusOr<bool> resync = engine_->OpenSession(session, /*cold=*/false);
    ASSERT_TRUE(resync.ok()) << resync.status();
    ASSERT_FALSE(*resync);
  }

  MessageSpec Spec(const std::string& queue, const std::string& payload,
                   MessageClass cls = qmgr::v1::RECOVERABLE) {
    MessageSpec spec;
    spec.queue = queue;
    spec.payload = payload;
    spec.message_class = cls;
    return spec;
  }

  // Every record in the log, in order.
  std::vector<LogRecord> Records() {
    EXPECT_TRUE(log_->WaitAllDurable().ok());  // records nobody waited for, too
    absl::StatusOr<std::unique_ptr<log::LogReader>> reader =
        log::LogReader::Open(&fs_, kLogDir, 0, log_->DurableLsn());
    EXPECT_TRUE(reader.ok()) << reader.status();
    std::vector<LogRecord> records;
    log::LogEntry entry;
    while (true) {
      absl::StatusOr<bool> more = (*reader)->Next(&entry);
      EXPECT_TRUE(more.ok()) << more.status();
      if (!more.ok() || !*more) break;
      LogRecord record;
      EXPECT_TRUE(record.ParseFromString(entry.payload));
      records.push_back(record);
    }
    return records;
  }

  std::vector<LogRecord> RecordsOf(LogRecord::BodyCase type) {
    std::vector<LogRecord> out;
    for (LogRecord& r : Records()) {
      if (r.body_case() == type) out.push_back(std::move(r));
    }
    return out;
  }

  // Enqueues 1000-byte messages on `queue` until one is refused; returns how
  // many were accepted, and the refusal in *refused.
  int EnqueueUntilRefused(const std::string& queue, absl::Status* refused) {
    int accepted = 0;
    *refused = absl::OkStatus();
    while (refused->ok()) {
      *refused = engine_->Enqueue(Spec(queue, std::string(1000, 'm'))).status();
      accepted += refused->ok();
    }
    return accepted;
  }

  GetResult MustGet(const std::string& queue, UowId uow = 0, bool commit_previous = false) {
    absl::StatusOr<GetResult> got =
        engine_->Get({uow, queue, absl::ZeroDuration(), commit_previous});
    EXPECT_TRUE(got.ok()) << got.status();
    return got.ok() ? *got : GetResult{};
  }

  // A Get of up to `max` messages.
  GetResult MustGetMany(const std::string& queue, uint32_t max, UowId uow = 0,
                        bool commit_previous = false) {
    GetOptions get{uow, queue, absl::ZeroDuration(), commit_previous};
    get.max_messages = max;
    absl::StatusOr<GetResult> got = engine_->Get(get);
    EXPECT_TRUE(got.ok()) << got.status();
    return got.ok() ? *got : GetResult{};
  }

  // The payloads a Get returned, in order.
  static std::vector<std::string> Payloads(const GetResult& got) {
    std::vector<std::string> out = {got.message.payload()};
    for (const qmgr::v1::Message& m : got.more) out.push_back(m.payload());
    return out;
  }

  void EnqueueNumbered(const std::string& queue, int n) {
    std::vector<MessageSpec> specs;
    for (int i = 0; i < n; ++i) specs.push_back(Spec(queue, absl::StrCat(i)));
    ASSERT_TRUE(engine_->EnqueueBatch(std::move(specs)).ok());
  }

  uint64_t unit_bytes_max_ = 8u << 20;
  std::function<void(UowId)> before_answer_copy_;
  FaultFileSystem fs_;
  ManualClock clock_;
  std::unique_ptr<log::Log> log_;
  std::unique_ptr<Engine> engine_;
};

// RECOVERABLE: the ENQUEUE record (payload included) is durable before
// Enqueue returns; Get writes a GET record; SyncPoint one SYNCPOINT naming it.
TEST_F(EngineTest, RecoverableLifecycle) {
  Define("Q");
  absl::StatusOr<EnqueueResult> put = engine_->Enqueue(Spec("Q", "hello"));
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->durability, Durability::kDurable);
  EXPECT_LT(put->lsn, log_->DurableLsn());
  std::vector<LogRecord> enqueues = RecordsOf(LogRecord::kEnqueue);
  ASSERT_EQ(enqueues.size(), 1u);
  EXPECT_EQ(enqueues[0].enqueue().messages(0).payload(), "hello");
  EXPECT_EQ(enqueues[0].enqueue().messages(0).id(), put->message_id);

  GetResult got = MustGet("Q");
  EXPECT_EQ(got.message.payload(), "hello");
  EXPECT_EQ(engine_->DisplayQueue("Q")->taken, 1u);
  absl::StatusOr<SyncPointResult> sync = engine_->SyncPoint(got.uow);
  ASSERT_TRUE(sync.ok()) << sync.status();
  EXPECT_LT(sync->lsn, log_->DurableLsn());
  ASSERT_EQ(RecordsOf(LogRecord::kGet).size(), 1u);
  std::vector<LogRecord> syncs = RecordsOf(LogRecord::kSyncpoint);
  ASSERT_EQ(syncs.size(), 1u);
  EXPECT_EQ(syncs[0].syncpoint().consumed_message_ids(0), put->message_id);
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 0u);
  EXPECT_EQ(engine_->DisplayQueue("Q")->taken, 0u);
  EXPECT_EQ(engine_->SyncPoint(got.uow).status().code(), absl::StatusCode::kNotFound);
}

// DisplayQueue: rates over the last 10 s (since the queue was defined when
// that is later), the head's age, counts by class, messages held in doubt;
// OpenUnits: a unit's first record.
TEST_F(EngineTest, DisplayRatesAgeClassesAndUnitFirstLsn) {
  Define("Q");
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(engine_->Enqueue(Spec("Q", "x")).ok());
    clock_.Advance(absl::Milliseconds(100));
  }
  // 1 s since the define: 10 arrivals a second, no Gets.
  QueueStatus q = *engine_->DisplayQueue("Q");
  EXPECT_DOUBLE_EQ(q.enqueue_rate, 10.0);
  EXPECT_DOUBLE_EQ(q.get_rate, 0.0);
  EXPECT_EQ(q.oldest_message_age, absl::Seconds(1));
  EXPECT_EQ(q.by_class, (std::map<MessageClass, uint64_t>{{qmgr::v1::RECOVERABLE, 10}}));
  const GetResult got = MustGet("Q");
  ASSERT_TRUE(engine_->Enqueue(Spec("Q", "y", qmgr::v1::IRRECOVERABLE)).ok());
  clock_.Advance(absl::Seconds(1));
  q = *engine_->DisplayQueue("Q");
  EXPECT_DOUBLE_EQ(q.enqueue_rate, 11 / 2.0);
  EXPECT_DOUBLE_EQ(q.get_rate, 1 / 2.0);
  EXPECT_EQ(q.oldest_message_age, absl::Milliseconds(1900));  // the second message is the head
  EXPECT_EQ(q.by_class, (std::map<MessageClass, uint64_t>{{qmgr::v1::RECOVERABLE, 9},
                                                          {qmgr::v1::IRRECOVERABLE, 1}}));
  EXPECT_EQ(q.taken, 1u);
  EXPECT_EQ(q.in_doubt, 0u);
  // The window slides: 10 s later, the burst is out of it.
  clock_.Advance(absl::Seconds(10));
  q = *engine_->DisplayQueue("Q");
  EXPECT_DOUBLE_EQ(q.enqueue_rate, 0.0);
  EXPECT_DOUBLE_EQ(q.get_rate, 0.0);
  // Five Gets in the last 10 s (sampled a second apart) and nothing else.
  UowId uow = got.uow;
  for (int i = 0; i < 5; ++i) {
    uow = MustGet("Q", uow).uow;
    clock_.Advance(absl::Seconds(1));
  }
  q = *engine_->DisplayQueue("Q");
  EXPECT_DOUBLE_EQ(q.get_rate, 0.5);
  EXPECT_DOUBLE_EQ(q.enqueue_rate, 0.0);

  // The unit's first record is its first GET: the first GET in the log.
  ASSERT_TRUE(log_->WaitAllDurable().ok());
  absl::StatusOr<std::unique_ptr<log::LogReader>> reader = log::LogReader::Open(&fs_, kLogDir);
  ASSERT_TRUE(reader.ok()) << reader.status();
  log::Lsn first_get = log::kNoLsn;
  log::LogEntry entry;
  while (first_get == log::kNoLsn && *(*reader)->Next(&entry)) {
    if (entry.type == LogRecord::kGet) first_get = entry.lsn;
  }
  const std::vector<OpenUnit> units = engine_->OpenUnits();
  ASSERT_EQ(units.size(), 1u);
  EXPECT_EQ(units[0].first_lsn, first_get);
  EXPECT_EQ(units[0].log_bytes_since_first, log_->NextLsn() - units[0].first_lsn);
  ASSERT_TRUE(engine_->SyncPoint(uow).ok());
  const UowId empty = engine_->BeginUnit();
  for (const OpenUnit& unit : engine_->OpenUnits()) {
    if (unit.id == empty) {
      EXPECT_EQ(unit.first_lsn, log::kNoLsn);
    }
  }
}

// IRRECOVERABLE: no log record at all, at Enqueue, Get or SyncPoint, and no
// fdatasync on its path; acknowledged in memory.
TEST_F(EngineTest, IrrecoverableWritesNothing) {
  Define("Q");
  ASSERT_TRUE(engine_->Enqueue(Spec("Q", "warm up the id block", qmgr::v1::IRRECOVERABLE)).ok());
  const size_t records_before = Records().size();
  const int64_t syncs_before = fs_.SyncCount();
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<EnqueueResult> put = engine_->Enqueue(Spec("Q", "x", qmgr::v1::IRRECOVERABLE));
    ASSERT_TRUE(put.ok());
    EXPECT_EQ(put->durability, Durability::kInMemory);
    EXPECT_EQ(put->lsn, log::kNoLsn);
  }
  UowId uow = 0;
  for (int i = 0; i < 21; ++i) uow = MustGet("Q", uow).uow;
  ASSERT_TRUE(engine_->SyncPoint(uow).ok());
  EXPECT_EQ(Records().size(), records_before);
  EXPECT_EQ(fs_.SyncCount(), syncs_before);
}

// RESPONSE, CONVERSATIONAL, FASTPATH: need a session, acknowledged in memory,
// logged with payload in the SYNCPOINT of the unit that processes them; the
// session waits (RESPONSE_OUTSTANDING) until then; a backout leaves them
// unlogged on the queue.
TEST_F(EngineTest, DeferredClassesHardenAtTheSyncPoint) {
  for (MessageClass cls : {qmgr::v1::RESPONSE, qmgr::v1::CONVERSATIONAL, qmgr::v1::FASTPATH}) {
    SCOPED_TRACE(qmgr::v1::MessageClass_Name(cls));
    const std::string queue = absl::StrCat("Q-", cls);
    const std::string session = absl::StrCat("T-", cls);
    Define(queue);
    MessageSpec spec = Spec(queue, "input one", cls);
    EXPECT_EQ(engine_->Enqueue(spec).status().code(), absl::StatusCode::kInvalidArgument)
        << "a deferred class needs an origin session";
    spec.origin_session = session;
    spec.input_seq = 1;
    EXPECT_EQ(ReasonOf(engine_->Enqueue(spec).status()), reason::kSessionNotOpen);
    Bind(session);
    absl::StatusOr<EnqueueResult> put = engine_->Enqueue(spec);
    ASSERT_TRUE(put.ok()) << put.status();
    EXPECT_EQ(put->durability, Durability::kInMemory);
    for (const LogRecord& r : RecordsOf(LogRecord::kEnqueue)) {
      for (const auto& m : r.enqueue().messages()) EXPECT_NE(m.id(), put->message_id);
    }
    MessageSpec second = spec;
    second.input_seq = 2;
    absl::Status refused = engine_->Enqueue(second).status();
    EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(ReasonOf(refused), reason::kResponseOutstanding);

    GetResult got = MustGet(queue);
    EXPECT_TRUE(RecordsOf(LogRecord::kGet).empty() ||
                RecordsOf(LogRecord::kGet).back().get().message_id() != put->message_id)
        << "no GET record for a message that is not logged";
    ASSERT_TRUE(engine_->Backout(got.uow).ok());
    EXPECT_EQ(engine_->DisplayQueue(queue)->depth, 1u) << "backed out: back on the queue";
    EXPECT_EQ(engine_->SessionInSeq(session), 0u) << "still not hardened";
    EXPECT_EQ(ReasonOf(engine_->Enqueue(second).status()), reason::kResponseOutstanding);

    got = MustGet(queue);
    EXPECT_EQ(got.message.backout_count(), 1u);
    absl::StatusOr<SyncPointResult> sync = engine_->SyncPoint(got.uow);
    ASSERT_TRUE(sync.ok()) << sync.status();
    const LogRecord last = RecordsOf(LogRecord::kSyncpoint).back();
    ASSERT_EQ(last.syncpoint().deferred_inputs_size(), 1);
    EXPECT_EQ(last.syncpoint().deferred_inputs(0).payload(), "input one");
    ASSERT_EQ(last.syncpoint().sessions_size(), 1);
    EXPECT_EQ(last.syncpoint().sessions(0).in_seq(), 1u);
    EXPECT_EQ(engine_->SessionInSeq(session), 1u);
    EXPECT_TRUE(engine_->Enqueue(second).ok()) << "no reply: done at its sync point";
  }
}

// A deferred input whose unit replies to the session's output queue stays
// outstanding after the sync point: the terminal waits for that reply.
TEST_F(EngineTest, DeferredInputWithReplyStaysOutstanding) {
  Define("IN");
  qmgr::v1::QueueAttributes output;
  output.set_output_of_session("TERM1");
  Define("TERM1.OUT", output);
  MessageSpec spec = Spec("IN", "question", qmgr::v1::RESPONSE);
  spec.origin_session = "TERM1";
  spec.input_seq = 1;
  Bind("TERM1");
  ASSERT_TRUE(engine_->Enqueue(spec).ok());
  GetResult got = MustGet("IN");
  ASSERT_TRUE(engine_->Insert(got.uow, Spec("TERM1.OUT", "answer", qmgr::v1::RESPONSE)).ok());
  ASSERT_TRUE(engine_->SyncPoint(got.uow).ok());
  EXPECT_EQ(engine_->SessionInSeq("TERM1"), 1u);
  spec.input_seq = 2;
  EXPECT_EQ(ReasonOf(engine_->Enqueue(spec).status()), reason::kResponseOutstanding);
  const LogRecord last = RecordsOf(LogRecord::kSyncpoint).back();
  ASSERT_EQ(last.syncpoint().inserted_size(), 1);
  EXPECT_EQ(last.syncpoint().inserted(0).payload(), "answer");
}

// Session input numbers: in_seq + 1 is taken, a repeat is ALREADY_HARDENED
// (and not enqueued twice), a gap is SEQUENCE_GAP; the ENQUEUE record carries
// the session's new number.
TEST_F(EngineTest, SessionInputNumbering) {
  Define("Q");
  MessageSpec spec = Spec("Q", "a");
  spec.origin_session = "TERM";
  spec.input_seq = 1;
  Bind("TERM");
  ASSERT_TRUE(engine_->Enqueue(spec).ok());
  absl::Status dup = engine_->Enqueue(spec).status();
  EXPECT_EQ(dup.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReasonOf(dup), reason::kAlreadyHardened);
  spec.input_seq = 3;
  absl::Status gap = engine_->Enqueue(spec).status();
  EXPECT_EQ(ReasonOf(gap), reason::kSequenceGap);
  EXPECT_NE(gap.message().find("expected 2"), absl::string_view::npos) << gap;
  spec.input_seq = 2;
  ASSERT_TRUE(engine_->Enqueue(spec).ok());
  EXPECT_EQ(engine_->SessionInSeq("TERM"), 2u);
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 2u);
  EXPECT_EQ(RecordsOf(LogRecord::kEnqueue).back().enqueue().sessions(0).in_seq(), 2u);

  spec.input_seq = 0;
  EXPECT_EQ(engine_->Enqueue(spec).status().code(), absl::StatusCode::kInvalidArgument);
  spec.message_class = qmgr::v1::IRRECOVERABLE;
  spec.input_seq = 3;
  EXPECT_EQ(engine_->Enqueue(spec).status().code(), absl::StatusCode::kInvalidArgument)
      << "IRRECOVERABLE input is not numbered";
  spec.input_seq = 0;
  EXPECT_TRUE(engine_->Enqueue(spec).ok());
  MessageSpec anonymous = Spec("Q", "b");
  anonymous.input_seq = 4;
  EXPECT_EQ(engine_->Enqueue(anonymous).status().code(), absl::StatusCode::kInvalidArgument);
}

// EnqueueBatch writes one ENQUEUE record, all or nothing.
TEST_F(EngineTest, EnqueueBatchAllOrNothing) {
  Define("A");
  Define("B");
  std::vector<MessageSpec> batch;
  for (int i = 0; i < 10; ++i) batch.push_back(Spec(i % 2 ? "A" : "B", absl::StrCat("m", i)));
  absl::StatusOr<std::vector<EnqueueResult>> put = engine_->EnqueueBatch(batch);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->size(), 10u);
  std::vector<LogRecord> enqueues = RecordsOf(LogRecord::kEnqueue);
  ASSERT_EQ(enqueues.size(), 1u);
  EXPECT_EQ(enqueues[0].enqueue().messages_size(), 10);

  batch.push_back(Spec("NOSUCH", "x"));
  EXPECT_EQ(engine_->EnqueueBatch(batch).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->DisplayQueue("A")->depth, 5u);
  EXPECT_EQ(RecordsOf(LogRecord::kEnqueue).size(), 1u);
  EXPECT_EQ(engine_->EnqueueBatch({}).status().code(), absl::StatusCode::kInvalidArgument);
}

// The engine reuses its ENQUEUE, GET and SYNCPOINT records: each record
// carries exactly its own call's fields, nothing left from the one before
// (sessions, optional strings, more messages or ids), also after a record
// large enough to be freed.
TEST_F(EngineTest, ReusedRecordsCarryNothingOfThePreviousOne) {
  Define("A");
  Define("B");
  Bind("TERM");
  std::vector<MessageSpec> batch;
  for (int i = 0; i < 3; ++i) {
    MessageSpec spec = Spec("A", absl::StrCat("a", i));
    spec.origin_session = "TERM";
    spec.input_seq = i + 1;
    spec.correlation_id = "corr";
    spec.reply_to = "B";
    batch.push_back(spec);
  }
  ASSERT_TRUE(engine_->EnqueueBatch(batch).ok());
  absl::StatusOr<EnqueueResult> plain = engine_->Enqueue(Spec("B", "b"));
  ASSERT_TRUE(plain.ok()) << plain.status();
  std::vector<LogRecord> enqueues = RecordsOf(LogRecord::kEnqueue);
  ASSERT_EQ(enqueues.size(), 2u);
  EXPECT_EQ(enqueues[0].enqueue().messages_size(), 3);
  EXPECT_EQ(enqueues[0].enqueue().sessions_size(), 3);
  EXPECT_EQ(enqueues[0].enqueue().messages(2).correlation_id(), "corr");
  const qmgr::v1::EnqueueRecord& second = enqueues[1].enqueue();
  ASSERT_EQ(second.messages_size(), 1);
  EXPECT_EQ(second.sessions_size(), 0);
  EXPECT_EQ(second.messages(0).id(), plain->message_id);
  EXPECT_EQ(second.messages(0).queue(), "B");
  EXPECT_EQ(second.messages(0).payload(), "b");
  EXPECT_EQ(second.messages(0).origin_session(), "");
  EXPECT_EQ(second.messages(0).input_seq(), 0u);
  EXPECT_EQ(second.messages(0).correlation_id(), "");
  EXPECT_EQ(second.messages(0).reply_to(), "");

  // Beyond 64 KiB the record is freed after its append; the next is whole.
  std::vector<MessageSpec> big;
  for (int i = 0; i < 10; ++i) big.push_back(Spec("B", std::string(8192, 'x')));
  ASSERT_TRUE(engine_->EnqueueBatch(big).ok());
  ASSERT_TRUE(engine_->Enqueue(Spec("B", "after")).ok());
  enqueues = RecordsOf(LogRecord::kEnqueue);
  ASSERT_EQ(enqueues.size(), 4u);
  EXPECT_EQ(enqueues[2].enqueue().messages_size(), 10);
  ASSERT_EQ(enqueues[3].enqueue().messages_size(), 1);
  EXPECT_EQ(enqueues[3].enqueue().messages(0).payload(), "after");

  // A unit of three Gets, backed out once, then committed; then a unit of one.
  const UowId uow = engine_->BeginUnit();
  for (int i = 0; i < 3; ++i) MustGet("A", uow);
  ASSERT_TRUE(engine_->Backout(uow).ok());
  const UowId again = engine_->BeginUnit();
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(MustGet("A", again).message.id());
  ASSERT_TRUE(engine_->SyncPoint(again).ok());
  GetResult single = MustGet("B");
  ASSERT_TRUE(engine_->SyncPoint(single.uow).ok());
  std::vector<LogRecord> gets = RecordsOf(LogRecord::kGet);
  ASSERT_EQ(gets.size(), 7u);
  EXPECT_EQ(gets[5].get().backout_count(), 1u);
  EXPECT_EQ(gets[5].get().queue(), "A");
  EXPECT_EQ(gets[6].get().uow_id(), single.uow);
  EXPECT_EQ(gets[6].get().message_id(), single.message.id());
  EXPECT_EQ(gets[6].get().queue(), "B");
  EXPECT_EQ(gets[6].get().backout_count(), 0u);
  std::vector<LogRecord> syncs = RecordsOf(LogRecord::kSyncpoint);
  ASSERT_EQ(syncs.size(), 2u);
  EXPECT_EQ(syncs[0].syncpoint().uow_id(), again);
  EXPECT_EQ(std::vector<uint64_t>(syncs[0].syncpoint().consumed_message_ids().begin(),
                                  syncs[0].syncpoint().consumed_message_ids().end()),
            ids);
  EXPECT_EQ(syncs[0].syncpoint().sessions_size(), 0);
  EXPECT_EQ(syncs[1].syncpoint().uow_id(), single.uow);
  ASSERT_EQ(syncs[1].syncpoint().consumed_message_ids_size(), 1);
  EXPECT_EQ(syncs[1].syncpoint().consumed_message_ids(0), single.message.id());
}

// Backout returns a unit's Gets to the head of their queue in the order they
// were taken, each with backout count + 1, ahead of later messages.
TEST_F(EngineTest, BackoutOrderAndCounts) {
  Define("Q");
  for (int i = 0; i < 500; ++i) ASSERT_TRUE(engine_->Enqueue(Spec("Q", absl::StrCat(i))).ok());
  UowId uow = 0;
  for (int i = 0; i < 200; ++i) {
    GetResult got = MustGet("Q", uow);
    EXPECT_EQ(got.message.payload(), absl::StrCat(i));
    uow = got.uow;
  }
  ASSERT_TRUE(engine_->Backout(uow).ok());
  std::vector<LogRecord> backouts = RecordsOf(LogRecord::kBackout);
  ASSERT_EQ(backouts.size(), 1u);
  EXPECT_EQ(backouts[0].backout().message_ids_size(), 200);
  EXPECT_EQ(backouts[0].backout().backout_counts(0), 1u);
  uow = 0;
  for (int i = 0; i < 500; ++i) {
    GetResult got = MustGet("Q", uow);
    EXPECT_EQ(got.message.payload(), absl::StrCat(i));
    EXPECT_EQ(got.message.backout_count(), i < 200 ? 1u : 0u);
    uow = got.uow;
  }
  absl::StatusOr<SyncPointResult> sync = engine_->SyncPoint(uow);
  ASSERT_TRUE(sync.ok());
  EXPECT_EQ(sync->consumed, 500u);
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 0u);
}

// The counters qmgrd's metrics export: per queue and class, each message
// counted where it was enqueued, taken, committed and backed out; inserts
// count as enqueued on their queue only when their unit commits.
TEST_F(EngineTest, TrafficCountsEachQueueAndClass) {
  Define("Q");
  Define("R");
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(engine_->Enqueue(Spec("Q", "rec")).ok());
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(engine_->Enqueue(Spec("Q", "irr", qmgr::v1::IRRECOVERABLE)).ok());
  }
  ASSERT_TRUE(engine_->SyncPoint(MustGet("Q").uow).ok());
  ASSERT_TRUE(engine_->Backout(MustGet("Q").uow).ok());
  const UowId uow = MustGet("Q").uow;
  ASSERT_TRUE(engine_->Insert(uow, Spec("R", "reply", qmgr::v1::IRRECOVERABLE)).ok());
  EXPECT_EQ(engine_->Traffic().queues[1].by_class[qmgr::v1::IRRECOVERABLE].enqueued, 0u)
      << "an insert is not enqueued before its unit commits";
  ASSERT_TRUE(engine_->SyncPoint(uow).ok());

  const EngineTraffic traffic = engine_->Traffic();
  ASSERT_EQ(traffic.queues.size(), 2u);
  const QueueTraffic& q = traffic.queues[0];
  EXPECT_EQ(q.name, "Q");
  EXPECT_EQ(q.depth, 3u);
  const ClassTraffic& rec = q.by_class[qmgr::v1::RECOVERABLE];
  EXPECT_EQ(rec.enqueued, 3u);
  EXPECT_EQ(rec.got, 3u);
  EXPECT_EQ(rec.committed, 2u);
  EXPECT_EQ(rec.backed_out, 1u);
  const ClassTraffic& irr = q.by_class[qmgr::v1::IRRECOVERABLE];
  EXPECT_EQ(irr.enqueued, 2u);
  EXPECT_EQ(irr.got + irr.committed + irr.backed_out, 0u);
  EXPECT_EQ(traffic.queues[1].by_class[qmgr::v1::IRRECOVERABLE].enqueued, 1u);
  EXPECT_EQ(traffic.units_committed, 2u);
  EXPECT_EQ(traffic.units_backed_out, 1u);
}

// A message backed out as often as its queue's threshold moves to the
// backout queue (BACKOUT_MOVE), behind what is there.
TEST_F(EngineTest, PoisonMessageMovesToBackoutQueue) {
  Define("DEAD");
  qmgr::v1::QueueAttributes attributes;
  attributes.set_backout_threshold(2);
  attributes.set_backout_queue("DEAD");
  Define("Q", attributes);
  ASSERT_TRUE(engine_->Enqueue(Spec("DEAD", "older")).ok());
  absl::StatusOr<EnqueueResult> poison = engine_->Enqueue(Spec("Q", "poison"));
  ASSERT_TRUE(engine_->Enqueue(Spec("Q", "healthy")).ok());
  ASSERT_TRUE(engine_->Backout(MustGet("Q").uow).ok());
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 2u);
  GetResult again = MustGet("Q");
  EXPECT_EQ(again.message.payload(), "poison");
  ASSERT_TRUE(engine_->Backout(again.uow).ok());
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 1u);
  EXPECT_EQ(engine_->DisplayQueue("DEAD")->depth, 2u);
  EXPECT_EQ(engine_->DisplayQueue("DEAD")->backout_moved_in, 1u);
  std::vector<LogRecord> moves = RecordsOf(LogRecord::kBackoutMove);
  ASSERT_EQ(moves.size(), 1u);
  EXPECT_EQ(moves[0].backout_move().message_id(), poison->message_id);
  EXPECT_EQ(moves[0].backout_move().backout_count(), 2u);
  EXPECT_EQ(MustGet("DEAD").message.payload(), "older");
  GetResult moved = MustGet("DEAD");
  EXPECT_EQ(moved.message.payload(), "poison");
  EXPECT_EQ(moved.message.queue(), "DEAD");
  EXPECT_EQ(MustGet("Q").message.payload(), "healthy");
}

// A Get waits for its GET record only when the message was delivered before:
// with fdatasync held, a first delivery returns, a redelivery does not.
TEST_F(EngineTest, GetWaitsForDurabilityOnlyAfterABackout) {
  Define("Q");
  ASSERT_TRUE(engine_->Enqueue(Spec("Q", "m")).ok());
  fs_.CloseSyncGate();
  GetResult first = MustGet("Q");  // returns although nothing can be synced
  ASSERT_TRUE(engine_->Backout(first.uow).ok());
  std::atomic<bool> returned{false};
  std::thread redelivery([&] {
    MustGet("Q");
    returned = true;
  });
  ASSERT_TRUE(fs_.AwaitSyncsAtGate(1, absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(returned.load()) << "a redelivery waits for its GET record";
  fs_.OpenSyncGate();
  redelivery.join();
  EXPECT_TRUE(returned.load());
  EXPECT_EQ(RecordsOf(LogRecord::kGet).back().get().backout_count(), 1u);
}

// Get(commit_previous) commits the previous unit and takes the next message
// in a new one, in a single call.
TEST_F(EngineTest, GetCommitPrevious) {
  Define("Q");
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(engine_->Enqueue(Spec("Q", absl::StrCat(i))).ok());
  GetResult a = MustGet("Q");
  GetResult b = MustGet("Q", a.uow, /*commit_previous=*/true);
  EXPECT_NE(a.uow, b.uow);
  EXPECT_EQ(b.message.payload(), "1");
  EXPECT_EQ(RecordsOf(LogRecord::kSyncpoint).size(), 1u);
  EXPECT_EQ(engine_->SyncPoint(a.uow).status().code(), absl::StatusCode::kNotFound);
  GetResult c = MustGet("Q", b.uow, true);
  ASSERT_TRUE(engine_->SyncPoint(c.uow).ok());
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 0u);
  EXPECT_EQ(RecordsOf(LogRecord::kSyncpoint).size(), 3u);
}

// Concurrent producers and consumers: every message consumed exactly once,
// none lost; a single consumer sees each producer's messages in order.
TEST_F(EngineTest, ConcurrentProducersAndConsumers) {
  Define("Q");
  constexpr int kProducers = 4;
  constexpr int kPerProducer = 300;
  for (int consumers : {1, 4}) {
    SCOPED_TRACE(absl::StrCat(consumers, " consumers"));
    std::vector<std::thread> threads;
    for (int p = 0; p < kProducers; ++p) {
      threads.emplace_back([&, p] {
        for (int i = 0; i < kPerProducer; ++i) {
          ASSERT_TRUE(engine_->Enqueue(Spec("Q", absl::StrCat(p, ":", i))).ok());
        }
      });
    }
    absl::Mutex mu;
    std::vector<std::string> consumed;
    std::vector<std::vector<std::string>> per_consumer(consumers);
    for (int c = 0; c < consumers; ++c) {
      threads.emplace_back([&, c] {
        UowId uow = 0;
        while (true) {
          absl::StatusOr<GetResult> got =
              engine_->Get({uow, "Q", absl::Milliseconds(500), uow != 0});
          if (!got.ok()) {
            ASSERT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
            break;
          }
          uow = got->uow;
          per_consumer[c].push_back(got->message.payload());
          absl::MutexLock lock(&mu);
          consumed.push_back(got->message.payload());
        }
        // The last Get (commit_previous) committed the unit before timing out.
      });
    }
    for (auto& t : threads) t.join();
    ASSERT_EQ(consumed.size(), size_t{kProducers * kPerProducer});
    EXPECT_EQ(std::set<std::string>(consumed.begin(), consumed.end()).size(), consumed.size());
    if (consumers == 1) {
      std::vector<int> next(kProducers, 0);
      for (const std::string& payload : per_consumer[0]) {
        const int p = payload[0] - '0';
        EXPECT_EQ(payload, absl::StrCat(p, ":", next[p]++)) << "FIFO per producer";
      }
    }
    EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 0u);
    EXPECT_EQ(engine_->DisplayQueue("Q")->taken, 0u);
  }
}

// A Get copies its answer out of the messages it took after releasing the
// latch. Until it has, their unit must not end (a misbehaving client's
// racing call, the idle reaper), which would change the messages (backout
// count, queue) or free them mid-copy.
TEST_F(EngineTest, AUnitDoesNotEndWhileAGetCopiesItsAnswer) {
  Stop();
  absl::Notification reached;
  absl::Notification go;
  std::atomic<UowId> copying{0};
  before_answer_copy_ = [&](UowId uow) {
    copying.store(uow);
    reached.Notify();
    go.WaitForNotification();
  };
  Start();
  Define("Q");
  ASSERT_TRUE(engine_->Enqueue(Spec("Q", "whole", qmgr::v1::IRRECOVERABLE)).ok());
  GetResult got;
  std::thread getter([&] { got = MustGet("Q"); });
  reached.WaitForNotification();
  const UowId uow = copying.load();
  for (const absl::Status& s :
       {engine_->Backout(uow), engine_->SyncPoint(uow).status(),
        engine_->Get({uow, "Q", absl::ZeroDuration(), /*commit_previous=*/true}).status()}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("answering"), std::string::npos) << s;
  }
  clock_.Advance(absl::Hours(1));
  EXPECT_EQ(engine_->ReapIdleUnits(), 0) << "not idle while answering";
  go.Notify();
  getter.join();
  EXPECT_EQ(got.uow, uow);
  EXPECT_EQ(got.message.payload(), "whole");
  EXPECT_EQ(got.message.backout_count(), 0u);
  // Answered: the unit ends as usual.
  EXPECT_TRUE(engine_->SyncPoint(uow).ok());
}

// An expired message is discarded at Get, counted, and logged as consumed so
// that a restart does not bring it back.
TEST_F(EngineTest, ExpiredMessagesAreDiscardedAtGet) {
  Define("Q");
  MessageSpec spec = Spec("Q", "stale");
  spec.expiry_time_us = clock_.NowMicros() + 10'000'000;
  absl::StatusOr<EnqueueResult> stale = engine_->Enqueue(spec);
  ASSERT_TRUE(engine_->Enqueue(Spec("Q", "fresh")).ok());
  clock_.Advance(absl::Seconds(11));
  EXPECT_EQ(MustGet("Q").message.payload(), "fresh");
  EXPECT_EQ(engine_->DisplayQueue("Q")->expired_discarded, 1u);
  std::vector<LogRecord> syncs = RecordsOf(LogRecord::kSyncpoint);
  ASSERT_FALSE(syncs.empty());
  EXPECT_EQ(syncs[0].syncpoint().consumed_message_ids(0), stale->message_id);
  spec.expiry_time_us = clock_.NowMicros() - 1;
  EXPECT_EQ(engine_->Enqueue(spec).status().code(), absl::StatusCode::kInvalidArgument);
}

// Put- and get-inhibited queues refuse with their reasons; lifting the
// inhibit lets traffic through again.
TEST_F(EngineTest, Inhibit) {
  Define("Q");
  ASSERT_TRUE(engine_->Enqueue(Spec("Q", "m")).ok());
  qmgr::v1::QueueAttributes stopped;
  stopped.set_put_inhibited(true);
  stopped.set_get_inhibited(true);
  ASSERT_TRUE(engine_->AlterQueue("Q", stopped).ok());
  absl::Status put = engine_->Enqueue(Spec("Q", "m")).status();
  EXPECT_EQ(put.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReasonOf(put), reason::kPutInhibited);
  absl::Status get = engine_->Get({0, "Q"}).status();
  EXPECT_EQ(get.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReasonOf(get), reason::kGetInhibited);
  const UowId uow = engine_->BeginUnit();
  EXPECT_EQ(ReasonOf(engine_->Insert(uow, Spec("Q", "m"))), reason::kPutInhibited);
  ASSERT_TRUE(engine_->AlterQueue("Q", {}).ok());
  EXPECT_TRUE(engine_->Enqueue(Spec("Q", "m")).ok());
  EXPECT_EQ(MustGet("Q").message.payload(), "m");
  EXPECT_EQ(RecordsOf(LogRecord::kQueueAlter).size(), 2u);
}

// Max depth is checked at Enqueue, and again for Inserts at the sync point,
// which then backs the unit out with reason QUEUE_FULL.
TEST_F(EngineTest, MaxDepthAtEnqueueAndAtSyncPoint) {
  qmgr::v1::QueueAttributes small;
  small.set_max_depth(2);
  Define("SMALL", small);
  Define("IN");
  ASSERT_TRUE(engine_->Enqueue(Spec("SMALL", "1")).ok());
  ASSERT_TRUE(engine_->Enqueue(Spec("IN", "work")).ok());
  GetResult got = MustGet("IN");
  ASSERT_TRUE(engine_->Insert(got.uow, Spec("SMALL", "from unit")).ok());
  ASSERT_TRUE(engine_->Enqueue(Spec("SMALL", "2")).ok());
  absl::Status full = engine_->Enqueue(Spec("SMALL", "3")).status();
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ReasonOf(full), reason::kQueueFull);
  EXPECT_NE(full.message().find("max depth is 2"), absl::string_view::npos) << full;
  absl::Status sync = engine_->SyncPoint(got.uow).status();
  EXPECT_EQ(sync.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ReasonOf(sync), reason::kQueueFull);
  EXPECT_EQ(engine_->DisplayQueue("IN")->depth, 1u) << "the unit was backed out";
  EXPECT_EQ(engine_->DisplayQueue("SMALL")->depth, 2u);
  EXPECT_EQ(RecordsOf(LogRecord::kBackout).back().backout().reason(), qmgr::v1::BACKOUT_QUEUE_FULL);
}

// Message ids come from ID_RESERVE blocks; after a crash (unsynced writes
// dropped), the ids reserved in the log are never handed out again, also
// those of messages that were never logged.
TEST_F(EngineTest, IdsUniqueAcrossACrash) {
  Define("Q");
  std::set<uint64_t> seen;
  for (int i = 0; i < 150; ++i) {
    absl::StatusOr<EnqueueResult> put = engine_->Enqueue(
        Spec("Q", "m", i % 3 == 0 ? qmgr::v1::RECOVERABLE : qmgr::v1::IRRECOVERABLE));
    ASSERT_TRUE(put.ok());
    EXPECT_TRUE(seen.insert(put->message_id).second);
  }
  fs_.Freeze();  // the crash: nothing of this process reaches the disk from here on
  Stop();
  fs_.SimulateCrash(qmgr::testing::CrashMode::kDropUnsynced, 7);
  fs_.Thaw();
  // What restart (the next issue) will do: the next free id is past every
  // block the log reserved.
  absl::StatusOr<std::unique_ptr<log::LogReader>> reader = log::LogReader::Open(&fs_, kLogDir);
  ASSERT_TRUE(reader.ok());
  uint64_t first_free = 1;
  log::LogEntry entry;
  while (*(*reader)->Next(&entry)) {
    LogRecord record;
    ASSERT_TRUE(record.ParseFromString(entry.payload));
    if (record.has_id_reserve()) {
      first_free =
          std::max(first_free, record.id_reserve().first_id() + record.id_reserve().count());
    }
  }
  EXPECT_GT(first_free, *seen.rbegin()) << "every id handed out was covered by a durable reserve";
  Start(first_free);
  Define("Q");
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<EnqueueResult> put = engine_->Enqueue(Spec("Q", "m", qmgr::v1::IRRECOVERABLE));
    ASSERT_TRUE(put.ok());
    EXPECT_TRUE(seen.insert(put->message_id).second) << "id " << put->message_id << " reused";
  }
}

// A unit idle past its timeout is backed out (BACKOUT with IDLE_TIMEOUT) and
// its messages return to the queue.
TEST_F(EngineTest, IdleUnitsAreBackedOut) {
  Define("Q");
  ASSERT_TRUE(engine_->Enqueue(Spec("Q", "m")).ok());
  GetResult got = MustGet("Q");
  clock_.Advance(absl::Seconds(30));
  EXPECT_EQ(engine_->ReapIdleUnits(), 0);
  clock_.Advance(absl::Seconds(31));
  EXPECT_EQ(engine_->ReapIdleUnits(), 1);
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 1u);
  EXPECT_EQ(engine_->SyncPoint(got.uow).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(RecordsOf(LogRecord::kBackout).back().backout().reason(),
            qmgr::v1::BACKOUT_IDLE_TIMEOUT);
}

// Get waits for a message up to its timeout, woken by the Enqueue (no
// polling), and answers DeadlineExceeded when none comes; a queue deleted
// under a waiting Get answers NotFound.
TEST_F(EngineTest, GetWaits) {
  Define("Q");
  std::thread producer([&] {
    absl::SleepFor(absl::Milliseconds(50));
    ASSERT_TRUE(engine_->Enqueue(Spec("Q", "late")).ok());
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<GetResult> got = engine_->Get({0, "Q", absl::Seconds(10)});
  producer.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->message.payload(), "late");
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  ASSERT_TRUE(engine_->SyncPoint(got->uow).ok());

  absl::StatusOr<GetResult> none = engine_->Get({0, "Q", absl::Milliseconds(30)});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kDeadlineExceeded);

  std::thread deleter([&] {
    absl::SleepFor(absl::Milliseconds(50));
    ASSERT_TRUE(engine_->DeleteQueue("Q", false).ok());
  });
  absl::StatusOr<GetResult> gone = engine_->Get({0, "Q", absl::Seconds(10)});
  deleter.join();
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound);
}

// Browse shows messages without taking them.
TEST_F(EngineTest, Browse) {
  Define("Q");
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(engine_->Enqueue(Spec("Q", absl::StrCat(i))).ok());
  absl::StatusOr<std::vector<qmgr::v1::Message>> seen = engine_->Browse("Q", 3);
  ASSERT_TRUE(seen.ok());
  ASSERT_EQ(seen->size(), 3u);
  EXPECT_EQ((*seen)[2].payload(), "2");
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 5u);
  EXPECT_EQ(engine_->Browse("NOSUCH", 1).status().code(), absl::StatusCode::kNotFound);
}

// Every bad input gets its status and a message, and changes nothing.
TEST_F(EngineTest, BadInput) {
  qmgr::v1::QueueAttributes none;
  EXPECT_EQ(engine_->DefineQueue("", none).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->DefineQueue(std::string(49, 'q'), none).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(engine_->DefineQueue(std::string(48, 'q'), none).ok());
  EXPECT_EQ(engine_->DefineQueue("bad name", none).code(), absl::StatusCode::kInvalidArgument);
  qmgr::v1::QueueAttributes self;
  self.set_backout_queue("Q");
  EXPECT_EQ(engine_->DefineQueue("Q", self).code(), absl::StatusCode::kInvalidArgument);
  qmgr::v1::QueueAttributes limited;
  limited.set_max_message_bytes(10);
  Define("Q", limited);
  EXPECT_EQ(engine_->DefineQueue("Q", none).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(engine_->AlterQueue("NOSUCH", none).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->DeleteQueue("NOSUCH", true).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->Enqueue(Spec("NOSUCH", "x")).status().code(), absl::StatusCode::kNotFound);
  absl::Status big = engine_->Enqueue(Spec("Q", std::string(11, 'x'))).status();
  EXPECT_EQ(big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(big.message().find("max message size"), absl::string_view::npos) << big;
  MessageSpec bad_class = Spec("Q", "x");
  bad_class.message_class = static_cast<MessageClass>(42);
  EXPECT_EQ(engine_->Enqueue(bad_class).status().code(), absl::StatusCode::kInvalidArgument);
  MessageSpec bad_session = Spec("Q", "x");
  bad_session.origin_session = "no spaces allowed";
  bad_session.input_seq = 1;
  EXPECT_EQ(engine_->Enqueue(bad_session).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->Get({12345, "Q"}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->Get({0, "NOSUCH"}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->Backout(12345).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->Insert(12345, Spec("Q", "x")).code(), absl::StatusCode::kNotFound);
  const UowId uow = engine_->BeginUnit();
  MessageSpec with_session = Spec("Q", "x");
  with_session.origin_session = "T";
  EXPECT_EQ(engine_->Insert(uow, with_session).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 0u);

  ASSERT_TRUE(engine_->Enqueue(Spec("Q", "x")).ok());
  absl::Status occupied = engine_->DeleteQueue("Q", false);
  EXPECT_EQ(occupied.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(occupied.message().find("purge"), absl::string_view::npos);
  GetResult got = MustGet("Q");
  EXPECT_EQ(engine_->DeleteQueue("Q", true).code(), absl::StatusCode::kFailedPrecondition)
      << "messages taken by an open unit";
  ASSERT_TRUE(engine_->Backout(got.uow).ok());
  EXPECT_TRUE(engine_->DeleteQueue("Q", true).ok());
  EXPECT_EQ(RecordsOf(LogRecord::kQueueDelete).back().queue_delete().purged_messages(), 1u);
}

// A unit holds at most unit_messages_max messages and unit_bytes_max bytes
// (bounded by the log's largest record), so that its SYNCPOINT always fits.
TEST_F(EngineTest, UnitLimits) {
  Define("Q");
  const UowId uow = engine_->BeginUnit();
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(engine_->Insert(uow, Spec("Q", "x")).ok());
  absl::Status over = engine_->Insert(uow, Spec("Q", "x"));
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(over.message().find("unit_messages_max"), absl::string_view::npos) << over;
  ASSERT_TRUE(engine_->Backout(uow).ok());
  // The fixture's log has 1 MiB segments: the byte limit shrinks to fit its
  // largest record, whatever unit_bytes_max says.
  const UowId big = engine_->BeginUnit();
  const std::string chunk(64 << 10, 'b');
  int accepted = 0;
  absl::Status bytes;
  while (bytes.ok()) {
    bytes = engine_->Insert(big, Spec("Q", chunk));
    accepted += bytes.ok();
  }
  EXPECT_EQ(bytes.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(bytes.message().find("unit_bytes_max"), absl::string_view::npos) << bytes;
  EXPECT_GE(accepted, 14);
  EXPECT_LT(uint64_t(accepted) * chunk.size(), log_->record_payload_bytes_max());
  EXPECT_TRUE(engine_->SyncPoint(big).ok()) << "the largest unit still fits one record";
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, uint64_t(accepted));
}

// Beyond the memory budget, payloads go to the spill store and come back at
// Get, in order and intact; consumed ones leave the store.
TEST_F(EngineTest, PayloadsBeyondTheBudgetAreSpilledAndReadBack) {
  qmgr::testing::TempDir tmp;
  absl::StatusOr<std::unique_ptr<SpillStore>> spill = SpillStore::Open({tmp.path() + "/store"});
  ASSERT_TRUE(spill.ok()) << spill.status();
  Stop();
  Start(1, /*memory_budget_bytes=*/10 * 1024, spill->get());
  Define("Q");
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(engine_->Enqueue(Spec("Q", absl::StrCat(i, std::string(1000, 'p')))).ok());
  }
  MemoryStatus memory = engine_->Memory();
  EXPECT_LE(memory.payload_bytes_in_memory, 11 * 1024u);
  EXPECT_GE(memory.spilled_messages, 85u);
  EXPECT_EQ((*spill)->spilled_count(), memory.spilled_messages);
  absl::StatusOr<std::vector<qmgr::v1::Message>> browsed = engine_->Browse("Q", 100);
  EXPECT_EQ(browsed->size(), 100u);
  UowId uow = 0;
  for (int i = 0; i < 100; ++i) {
    GetResult got = MustGet("Q", uow, uow != 0);
    EXPECT_EQ(got.message.payload(), absl::StrCat(i, std::string(1000, 'p')));
    uow = got.uow;
  }
  ASSERT_TRUE(engine_->SyncPoint(uow).ok());
  EXPECT_EQ(engine_->Memory().spilled_messages, 0u);
  EXPECT_EQ(engine_->Memory().payload_bytes_in_memory, 0u);
  Stop();
}

// The spill store fills up to its limit only: then payloads stay in memory
// until 5/4 of the budget, and Enqueue answers RESOURCE_EXHAUSTED naming the
// limit; consuming makes room again.
TEST_F(EngineTest, SpillingStopsAtTheSpillLimitThenTheBudgetRefuses) {
  qmgr::testing::TempDir tmp;
  absl::StatusOr<std::unique_ptr<SpillStore>> spill = SpillStore::Open({tmp.path() + "/store"});
  ASSERT_TRUE(spill.ok()) << spill.status();
  Stop();
  Start(1, /*memory_budget_bytes=*/10 * 1024, spill->get(), /*spill_limit_bytes=*/20 * 1024);
  Define("Q");
  absl::Status refused;
  const int accepted = EnqueueUntilRefused("Q", &refused);
  // 10 in memory up to the budget; 20 spilled (a 21st would pass the limit);
  // 2 more in memory, the next would pass 5/4 of the budget.
  EXPECT_EQ(accepted, 32);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.message().find("spill limit 20480"), absl::string_view::npos) << refused;
  EXPECT_EQ(engine_->Memory().spilled_bytes, 20000u);
  EXPECT_EQ(engine_->Memory().payload_bytes_in_memory, 12000u);
  ASSERT_TRUE(engine_->SyncPoint(MustGet("Q").uow).ok());
  EXPECT_TRUE(engine_->Enqueue(Spec("Q", std::string(1000, 'm'))).ok());
  Stop();
}

// Without a spill store the budget is a hard limit: RESOURCE_EXHAUSTED, and
// room again once messages are consumed.
TEST_F(EngineTest, BudgetWithoutSpillRefuses) {
  Stop();
  Start(1, /*memory_budget_bytes=*/5000);
  Define("Q");
  absl::Status refused;
  const int accepted = EnqueueUntilRefused("Q", &refused);
  EXPECT_EQ(accepted, 5);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.message().find("memory budget"), absl::string_view::npos) << refused;
  ASSERT_TRUE(engine_->SyncPoint(MustGet("Q").uow).ok());
  EXPECT_TRUE(engine_->Enqueue(Spec("Q", std::string(1000, 'm'))).ok());
}

// Regressions from review: a unit cannot be ended while its Get waits; an
// expired deferred input frees its session; a requeue within max depth
// commits; a repeated number inside one batch is a bad batch, not "hardened".
// Quiesce (normal shutdown): waiting Gets end, every open unit is backed out,
// and later calls are UNAVAILABLE.
TEST_F(EngineTest, QuiesceEndsWaitingGetsBacksOutUnitsAndRefusesCalls) {
  Define("Q");
  Define("EMPTY");
  ASSERT_TRUE(engine_->Enqueue(Spec("Q", "held")).ok());
  const GetResult held = MustGet("Q");
  absl::Status waited;
  std::thread waiter([&] {
    waited = engine_->Get({0, "EMPTY", absl::Seconds(30), false}).status();
  });
  while (engine_->OpenUnits().size() < 2) {
    absl::SleepFor(absl::Milliseconds(1));  // until the Get waits in a unit of its own
  }
  EXPECT_EQ(engine_->Quiesce(qmgr::v1::BACKOUT_SHUTDOWN), 1);
  waiter.join();
  EXPECT_EQ(waited.code(), absl::StatusCode::kUnavailable) << waited;
  EXPECT_TRUE(engine_->OpenUnits().empty());
  absl::StatusOr<QueueStatus> q = engine_->DisplayQueue("Q");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->depth, 1u) << "backed out";
  const std::vector<LogRecord> backouts = RecordsOf(LogRecord::kBackout);
  ASSERT_EQ(backouts.size(), 1u);
  EXPECT_EQ(backouts[0].backout().reason(), qmgr::v1::BACKOUT_SHUTDOWN);
  EXPECT_EQ(engine_->Enqueue(Spec("Q", "late")).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(engine_->Get({0, "Q", absl::ZeroDuration(), false}).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(engine_->DefineQueue("R", {}).code(), absl::StatusCode::kUnavailable);
}

TEST_F(EngineTest, ReviewRegressions) {
  Define("Q");
  const UowId uow = engine_->BeginUnit();
  std::thread waiter([&] { EXPECT_TRUE(engine_->Get({uow, "Q", absl::Seconds(10)}).ok()); });
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(engine_->Backout(uow).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(engine_->SyncPoint(uow).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(engine_->Enqueue(Spec("Q", "wake")).ok());
  waiter.join();
  ASSERT_TRUE(engine_->SyncPoint(uow).ok());

  MessageSpec deferred = Spec("Q", "stale", qmgr::v1::RESPONSE);
  deferred.origin_session = "T";
  deferred.input_seq = 1;
  Bind("T");
  deferred.expiry_time_us = clock_.NowMicros() + 1'000'000;
  ASSERT_TRUE(engine_->Enqueue(deferred).ok());
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(engine_->Get({0, "Q"}).status().code(), absl::StatusCode::kDeadlineExceeded);
  deferred.expiry_time_us = 0;
  EXPECT_TRUE(engine_->Enqueue(deferred).ok()) << "the expired input no longer blocks T";

  qmgr::v1::QueueAttributes one;
  one.set_max_depth(1);
  Define("ONE", one);
  ASSERT_TRUE(engine_->Enqueue(Spec("ONE", "m")).ok());
  GetResult got = MustGet("ONE");
  ASSERT_TRUE(engine_->Insert(got.uow, Spec("ONE", "requeued")).ok());
  EXPECT_TRUE(engine_->SyncPoint(got.uow).ok()) << "the taken message leaves as the insert comes";

  MessageSpec first = Spec("Q", "a");
  first.origin_session = "B";
  first.input_seq = 1;
  Bind("B");
  absl::Status dup = engine_->EnqueueBatch({first, first}).status();
  EXPECT_EQ(dup.code(), absl::StatusCode::kInvalidArgument) << dup;
  EXPECT_EQ(engine_->SessionInSeq("B"), 0u);
}

// Get with commit_previous commits before it waits: an error after that
// (here the queue is get-inhibited during the wait) says the previous unit
// is committed, so the program neither backs it out nor commits it again.
TEST_F(EngineTest, GetCommitPreviousFailingAfterTheCommitSaysSo) {
  Define("Q");
  ASSERT_TRUE(engine_->Enqueue(Spec("Q", "m")).ok());
  const GetResult first = MustGet("Q");
  absl::Status waited;
  std::thread getter([&] {
    GetOptions get{first.uow, "Q", absl::Seconds(10), /*commit_previous=*/true};
    waited = engine_->Get(get).status();
  });
  absl::SleepFor(absl::Milliseconds(50));
  qmgr::v1::QueueAttributes inhibited;
  inhibited.set_get_inhibited(true);
  ASSERT_TRUE(engine_->AlterQueue("Q", inhibited).ok());
  getter.join();
  EXPECT_EQ(ReasonOf(waited), reason::kGetInhibited) << waited;
  EXPECT_EQ(PreviousUnitCommitted(waited), first.uow) << waited;
  EXPECT_NE(waited.message().find("was committed"), absl::string_view::npos) << waited;
  EXPECT_EQ(engine_->SyncPoint(first.uow).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(RecordsOf(LogRecord::kSyncpoint).back().syncpoint().consumed_message_ids(0),
            first.message.id());

  // Refused before the commit: the previous unit stays open, nothing said.
  ASSERT_TRUE(engine_->AlterQueue("Q", {}).ok());
  ASSERT_TRUE(engine_->Enqueue(Spec("Q", "n")).ok());
  const GetResult second = MustGet("Q");
  absl::Status refused = engine_->Get({second.uow, "NOSUCH", absl::ZeroDuration(), true}).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(PreviousUnitCommitted(refused), 0u);
  EXPECT_TRUE(engine_->SyncPoint(second.uow).ok()) << "still open";
}

// A Get of many: up to max_messages in queue order, one GET record each,
// only what is there (no wait beyond the first), into one unit.
TEST_F(EngineTest, GetOfManyTakesWhatIsThereInOrder) {
  Define("Q");
  EnqueueNumbered("Q", 5);
  GetResult got = MustGetMany("Q", 3);
  EXPECT_EQ(Payloads(got), (std::vector<std::string>{"0", "1", "2"}));
  std::vector<LogRecord> gets = RecordsOf(LogRecord::kGet);
  ASSERT_EQ(gets.size(), 3u);
  for (size_t i = 0; i < gets.size(); ++i) {
    EXPECT_EQ(gets[i].get().uow_id(), got.uow);
    EXPECT_EQ(gets[i].get().message_id(), i == 0 ? got.message.id() : got.more[i - 1].id());
  }
  // Two left: both come at once although the Get would wait 10 s for a first.
  const absl::Time start = absl::Now();
  absl::StatusOr<GetResult> rest = engine_->Get([&] {
    GetOptions get{got.uow, "Q", absl::Seconds(10)};
    get.max_messages = 10;
    return get;
  }());
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(rest->uow, got.uow);
  EXPECT_EQ(Payloads(*rest), (std::vector<std::string>{"3", "4"}));
  EXPECT_EQ(engine_->DisplayQueue("Q")->taken, 5u);
  absl::StatusOr<SyncPointResult> sync = engine_->SyncPoint(got.uow);
  ASSERT_TRUE(sync.ok()) << sync.status();
  EXPECT_EQ(sync->consumed, 5u);
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 0u);

  // 0 is one message.
  EnqueueNumbered("Q", 2);
  GetResult one = MustGetMany("Q", 0);
  EXPECT_EQ(Payloads(one), (std::vector<std::string>{"0"}));

  // Waiting, the Get waits for the first only: a batch enqueued later comes
  // whole.
  MustGetMany("Q", 1, one.uow);  // the queue now empty
  absl::StatusOr<GetResult> waited;
  std::thread getter([&] {
    GetOptions get{0, "Q", absl::Seconds(10)};
    get.max_messages = 10;
    waited = engine_->Get(get);
  });
  absl::SleepFor(absl::Milliseconds(50));
  EnqueueNumbered("Q", 3);
  getter.join();
  ASSERT_TRUE(waited.ok()) << waited.status();
  EXPECT_EQ(Payloads(*waited), (std::vector<std::string>{"0", "1", "2"}));
  EXPECT_EQ(engine_->Get({waited->uow, "Q"}).status().code(), absl::StatusCode::kDeadlineExceeded);
}

// commit_previous with many: one call commits the previous unit's messages
// (one SYNCPOINT naming them all) and takes the next ones into a new unit.
TEST_F(EngineTest, GetOfManyCommitPrevious) {
  Define("Q");
  EnqueueNumbered("Q", 7);
  GetResult a = MustGetMany("Q", 3);
  GetResult b = MustGetMany("Q", 3, a.uow, /*commit_previous=*/true);
  EXPECT_NE(a.uow, b.uow);
  EXPECT_EQ(Payloads(b), (std::vector<std::string>{"3", "4", "5"}));
  std::vector<LogRecord> syncs = RecordsOf(LogRecord::kSyncpoint);
  ASSERT_EQ(syncs.size(), 1u);
  EXPECT_EQ(syncs[0].syncpoint().consumed_message_ids_size(), 3);
  GetResult c = MustGetMany("Q", 3, b.uow, true);
  EXPECT_EQ(Payloads(c), (std::vector<std::string>{"6"}));
  ASSERT_TRUE(engine_->SyncPoint(c.uow).ok());
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 0u);
  EXPECT_EQ(engine_->DisplayQueue("Q")->taken, 0u);
}

// The unit's limits and the answer's size end a Get of many early, without
// failing it; a Get that can take none fails as a single one does.
TEST_F(EngineTest, GetOfManyStopsEarlyAtLimits) {
  Define("Q");
  EnqueueNumbered("Q", 1005);
  GetResult got = MustGetMany("Q", 995);
  EXPECT_EQ(got.more.size(), 994u);
  GetResult rest = MustGetMany("Q", 100, got.uow);
  EXPECT_EQ(rest.more.size() + 1, 5u) << "unit_messages_max is 1000";
  EXPECT_EQ(rest.more.back().payload(), "999");
  absl::Status full = engine_->Get({got.uow, "Q"}).status();
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  ASSERT_TRUE(engine_->Backout(got.uow).ok());

  // The answer's size: the first message always, the rest while they fit.
  GetOptions sized{0, "Q"};
  sized.max_messages = 100;
  sized.max_bytes = 1;
  absl::StatusOr<GetResult> first_only = engine_->Get(sized);
  ASSERT_TRUE(first_only.ok()) << first_only.status();
  EXPECT_TRUE(first_only->more.empty());
  const uint64_t each = first_only->message.ByteSizeLong();
  sized.uow = first_only->uow;
  sized.max_bytes = 3 * each + each / 2;
  absl::StatusOr<GetResult> three = engine_->Get(sized);
  ASSERT_TRUE(three.ok()) << three.status();
  EXPECT_EQ(Payloads(*three), (std::vector<std::string>{"1", "2", "3"}));
  ASSERT_TRUE(engine_->Backout(first_only->uow).ok());

  // unit_bytes_max: as many as single Gets could take into one unit.
  Stop();
  unit_bytes_max_ = 1000;
  Start(/*first_free_id=*/1 << 20);  // ids beyond those already in the log
  Define("B");
  for (int i = 0; i < 200; ++i) ASSERT_TRUE(engine_->Enqueue(Spec("B", absl::StrCat(i))).ok());
  UowId uow = 0;
  size_t singles = 0;
  while (true) {
    absl::StatusOr<GetResult> one = engine_->Get({uow, "B"});
    if (!one.ok()) {
      EXPECT_EQ(one.status().code(), absl::StatusCode::kResourceExhausted) << one.status();
      EXPECT_NE(one.status().message().find("unit_bytes_max"), absl::string_view::npos);
      break;
    }
    uow = one->uow;
    ++singles;
  }
  ASSERT_GT(singles, 10u);
  ASSERT_LT(singles, 200u);
  ASSERT_TRUE(engine_->Backout(uow).ok());
  GetResult many = MustGetMany("B", 1000);
  EXPECT_EQ(many.more.size() + 1, singles);
  EXPECT_EQ(many.message.payload(), "0");
}

// Expired messages met on the way are discarded, as by single Gets.
TEST_F(EngineTest, GetOfManyDiscardsExpiredMessages) {
  Define("Q");
  ASSERT_TRUE(engine_->Enqueue(Spec("Q", "a")).ok());
  MessageSpec stale = Spec("Q", "stale");
  stale.expiry_time_us = clock_.NowMicros() + 10'000'000;
  absl::StatusOr<EnqueueResult> stale_put = engine_->Enqueue(stale);
  ASSERT_TRUE(stale_put.ok());
  ASSERT_TRUE(engine_->Enqueue(Spec("Q", "b")).ok());
  ASSERT_TRUE(engine_->Enqueue(stale).ok());
  clock_.Advance(absl::Seconds(11));
  GetResult got = MustGetMany("Q", 10);
  EXPECT_EQ(Payloads(got), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(engine_->DisplayQueue("Q")->expired_discarded, 2u);
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 0u);
  std::vector<LogRecord> syncs = RecordsOf(LogRecord::kSyncpoint);
  ASSERT_EQ(syncs.size(), 2u);
  EXPECT_EQ(syncs[0].syncpoint().consumed_message_ids(0), stale_put->message_id);
}

// A backout of a unit of many returns them all, in order, counts + 1; taken
// again, they come back after their GET records are durable.
TEST_F(EngineTest, GetOfManyBackoutAndRedelivery) {
  Define("Q");
  EnqueueNumbered("Q", 12);
  GetResult got = MustGetMany("Q", 10);
  ASSERT_EQ(got.more.size(), 9u);
  ASSERT_TRUE(engine_->Backout(got.uow).ok());
  fs_.CloseSyncGate();
  std::atomic<bool> returned{false};
  GetResult again;
  std::thread redelivery([&] {
    again = MustGetMany("Q", 20);
    returned = true;
  });
  ASSERT_TRUE(fs_.AwaitSyncsAtGate(1, absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(returned.load()) << "a redelivery waits for its GET records";
  fs_.OpenSyncGate();
  redelivery.join();
  std::vector<std::string> expected;
  for (int i = 0; i < 12; ++i) expected.push_back(absl::StrCat(i));
  EXPECT_EQ(Payloads(again), expected);
  EXPECT_EQ(again.message.backout_count(), 1u);
  for (size_t i = 0; i < again.more.size(); ++i) {
    EXPECT_EQ(again.more[i].backout_count(), i < 9 ? 1u : 0u) << i;
  }
  std::vector<LogRecord> gets = RecordsOf(LogRecord::kGet);
  ASSERT_EQ(gets.size(), 22u);
  EXPECT_EQ(gets[10].get().backout_count(), 1u);
  EXPECT_EQ(gets[21].get().backout_count(), 0u);
}

}  // namespace
}  // namespace qmgr
