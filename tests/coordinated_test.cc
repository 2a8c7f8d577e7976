// Coordinated units in the engine (qmgr/coordinated.cc; docs/in-doubt.md):
// Begin, Prepare, the outcomes and their memory, and what a unit in doubt
// refuses. Restarts with units in doubt are in restart_test.
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "qmgr/engine.h"
#include "tests/support/engine_on_log.h"
#include "tests/support/fault_file_system.h"

namespace qmgr {
namespace {

using qmgr::testing::FaultFileSystem;

class CoordinatedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(testing::OpenEngineOnLog(fs_, &log_, &engine_).ok());
    ASSERT_TRUE(engine_->DefineQueue("Q", {}).ok());
    qmgr::v1::QueueAttributes one;
    one.set_max_depth(1);
    ASSERT_TRUE(engine_->DefineQueue("ONE", one).ok());
  }

  uint64_t Put(const std::string& queue, const std::string& payload) {
    MessageSpec spec;
    spec.queue = queue;
    spec.payload = payload;
    absl::StatusOr<EnqueueResult> put = engine_->Enqueue(spec);
    EXPECT_TRUE(put.ok()) << put.status();
    return put.ok() ? put->message_id : 0;
  }

  // A unit for `xid` that took the head of Q and inserted into `insert_to`.
  UowId Begin(const std::string& xid, const std::string& insert_to = "") {
    absl::StatusOr<UowId> uow = engine_->BeginCoordinatedUnit({"CICSA", "QM1", xid});
    EXPECT_TRUE(uow.ok()) << uow.status();
    if (!uow.ok()) return 0;
    GetOptions get;
    get.uow = *uow;
    get.queue = "Q";
    EXPECT_TRUE(engine_->Get(get).ok());
    if (!insert_to.empty()) {
      MessageSpec insert;
      insert.queue = insert_to;
      insert.payload = absl::StrCat("from ", xid);
      EXPECT_TRUE(engine_->Insert(*uow, insert).ok());
    }
    return *uow;
  }

  absl::Status ResolveOne(const std::string& xid, qmgr::v1::Outcome outcome,
                          const std::string& by = "CICSA") {
    ResolveResult r = engine_->Resolve("CICSA", "QM1", {{xid, outcome}}, by);
    EXPECT_EQ(r.statuses.size(), 1u);
    EXPECT_EQ(r.committed + r.backed_out + r.unresolved, 1u) << "each XID counts once";
    return r.statuses.empty() ? absl::UnknownError("no status") : r.statuses[0];
  }

  FaultFileSystem fs_;
  std::unique_ptr<log::Log> log_;
  std::unique_ptr<Engine> engine_;
};

TEST_F(CoordinatedTest, BadKeysAreInvalidArgument) {
  EXPECT_EQ(engine_->BeginCoordinatedUnit({"", "QM1", "x"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->BeginCoordinatedUnit({"CICSA", "", "x"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->BeginCoordinatedUnit({"CICSA", "QM1", ""}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->BeginCoordinatedUnit({"CICSA", "QM1", std::string(kXidBytesMax + 1, 'x')})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(engine_->BeginCoordinatedUnit({"CICSA", "QM1", std::string(kXidBytesMax, 'x')}).ok());
  EXPECT_EQ(engine_->Prepare(12345).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->Prepare(engine_->BeginUnit()).code(), absl::StatusCode::kFailedPrecondition)
      << "an ordinary unit is not prepared";
}

TEST_F(CoordinatedTest, AUnitInDoubtHoldsItsMessagesAndRefusesTheProgramApi) {
  Put("Q", "taken");
  const UowId uow = Begin("x1", "Q");
  EXPECT_EQ(engine_->SyncPoint(uow).status().code(), absl::StatusCode::kFailedPrecondition)
      << "its coordinator ends it";
  ASSERT_TRUE(engine_->Prepare(uow).ok());
  EXPECT_EQ(engine_->Backout(uow).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(engine_->Insert(uow, {}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 0u) << "its insert is invisible";
  EXPECT_EQ(engine_->DisplayQueue("Q")->taken, 1u);
  EXPECT_EQ(engine_->DeleteQueue("Q", true).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(engine_->Forget("CICSA", "QM1", {"x1"}).code(), absl::StatusCode::kFailedPrecondition)
      << "in doubt: not forgotten";
  EXPECT_EQ(engine_->ReapIdleUnits(), 0) << "no idle timeout";
  std::vector<InDoubtUnit> in_doubt = engine_->InDoubtUnits("CICSA", "QM1");
  ASSERT_EQ(in_doubt.size(), 1u);
  EXPECT_EQ(in_doubt[0].key.xid, "x1");
  EXPECT_EQ(in_doubt[0].locked_messages.size(), 1u);
  EXPECT_EQ(in_doubt[0].queues, std::vector<std::string>{"Q"});
  EXPECT_EQ(in_doubt[0].inserted, 1u);
  EXPECT_TRUE(engine_->InDoubtUnits("OTHER", "").empty());
  EXPECT_EQ(engine_->Quiesce(qmgr::v1::BACKOUT_SHUTDOWN), 0) << "a shutdown keeps it";
  EXPECT_EQ(engine_->InDoubtUnits("", "").size(), 1u);
}

TEST_F(CoordinatedTest, OutcomesAreRememberedUntilForgotten) {
  Put("Q", "a");
  Put("Q", "b");
  const UowId committed = Begin("c", "Q");
  const UowId backed_out = Begin("b");
  ASSERT_TRUE(engine_->Prepare(committed).ok());
  ASSERT_TRUE(engine_->Prepare(backed_out).ok());
  ResolveResult r = engine_->Resolve("CICSA", "QM1",
                                     {{"c", qmgr::v1::COMMIT},
                                      {"b", qmgr::v1::BACKOUT},
                                      {"never", qmgr::v1::COMMIT},
                                      {"c", qmgr::v1::COMMIT}},
                                     "CICSA");
  EXPECT_EQ(r.in_doubt, 2u);
  EXPECT_EQ(r.committed, 2u) << "c, and c again (remembered)";
  EXPECT_EQ(r.backed_out, 1u);
  EXPECT_EQ(r.unresolved, 1u);
  EXPECT_EQ(r.statuses[2].code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 2u) << "b returned, c's insert visible";
  absl::Status mismatch = ResolveOne("b", qmgr::v1::COMMIT);
  EXPECT_EQ(ReasonOf(mismatch), reason::kHeuristicMismatch) << mismatch;
  EXPECT_EQ(engine_->BeginCoordinatedUnit({"CICSA", "QM1", "c"}).status().code(),
            absl::StatusCode::kAlreadyExists)
      << "remembered: the XID is not reused before Forget";
  ASSERT_TRUE(engine_->Forget("CICSA", "QM1", {"c", "b", "unknown"}).ok());
  EXPECT_EQ(ResolveOne("c", qmgr::v1::COMMIT).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(engine_->BeginCoordinatedUnit({"CICSA", "QM1", "c"}).ok());
}

TEST_F(CoordinatedTest, OnePhaseOutcomesAndAFullQueueAtPrepare) {
  Put("Q", "a");
  Put("Q", "b");
  Put("ONE", "full");
  const UowId one_phase = Begin("one-phase", "Q");
  ASSERT_TRUE(ResolveOne("one-phase", qmgr::v1::COMMIT).ok()) << "commit without prepare";
  EXPECT_EQ(ResolveOne("one-phase", qmgr::v1::COMMIT).code(), absl::StatusCode::kNotFound)
      << "a one-phase outcome is not remembered";
  EXPECT_EQ(engine_->SyncPoint(one_phase).status().code(), absl::StatusCode::kNotFound);
  const UowId full = Begin("full", "ONE");
  absl::Status refused = engine_->Prepare(full);
  EXPECT_EQ(ReasonOf(refused), reason::kQueueFull) << refused;
  EXPECT_EQ(ResolveOne("full", qmgr::v1::COMMIT).code(), absl::StatusCode::kNotFound)
      << "backed out at Prepare";
  EXPECT_EQ(engine_->DisplayQueue("Q")->depth, 2u) << "b, and one-phase's insert";
}

}  // namespace
}  // namespace qmgr
