// Power loss, in process: the log on FaultFileSystem and the store on
// FaultRocksFileSystem, both dropping every unsynced write at a crash taken
// at a random moment under a load of every message class, with automatic
// checkpoints running. After each restart the checker holds the queue
// manager to every acknowledgement made before. A "lying fsync" run proves
// the checker can see a loss.
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "restart/restart.h"
#include "rocksdb/env.h"
#include "tests/support/crash_workload.h"
#include "tests/support/fault_file_system.h"
#include "tests/support/fault_rocksdb_fs.h"
#include "tests/support/temp_dir.h"

namespace qmgr::testing {
namespace {

int Rounds() {
  const char* env = std::getenv("QMGR_CRASH_ROUNDS");
  return env != nullptr ? std::atoi(env) : 12;
}

class CrashSimTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string path;
    for (absl::string_view part : absl::StrSplit(tmp_.path(), '/', absl::SkipEmpty())) {
      absl::StrAppend(&path, "/", part);
      ASSERT_TRUE(log_fs_.CreateDir(path).ok());
    }
    std::filesystem::create_directory(tmp_.path() + "/qm");
    env_ = rocksdb::NewCompositeEnv(store_fs_);
  }

  restart::RestartOptions Options() {
    restart::RestartOptions options;
    options.data_dir = tmp_.path() + "/qm";
    // The name the workload's coordinator prepares its units under.
    options.qmgr_name = testing::CrashWorkload::kQualifier;
    options.fs = &log_fs_;
    options.store_env = env_.get();
    options.store_write_buffer_bytes = 1 << 20;
    options.log.segment_bytes = 256 << 10;  // segment switches all the time
    options.engine.id_block = 256;
    options.engine.reaper_interval = absl::ZeroDuration();
    options.checkpoint.log_bytes = 256 << 10;
    options.checkpoint.poll_interval = absl::Milliseconds(10);
    return options;
  }

  // Runs the load for a random while, then cuts the power.
  void RunAndCrash(restart::QueueManager* qm, const std::string& prefix, std::mt19937_64& random,
                   bool lying) {
    CrashWorkload workload(qm->engine(), prefix, [this](const Event& e) {
      absl::MutexLock lock(&mu_);
      events_.push_back(e);
    });
    ASSERT_TRUE(workload.Start().ok());
    if (lying) {
      log_fs_.SetLyingSync(true);
      store_fs_->SetLyingSync(true);
    }
    absl::SleepFor(absl::Milliseconds(50 + random() % 250));
    log_fs_.Freeze();
    store_fs_->Freeze();
    workload.Stop();
  }

  void PowerBack(uint64_t seed) {
    log_fs_.SimulateCrash(CrashMode::kDropUnsynced, seed);
    ASSERT_TRUE(store_fs_->DropUnsyncedData().ok());
    log_fs_.SetLyingSync(false);
    store_fs_->SetLyingSync(false);
    log_fs_.Thaw();
    store_fs_->Thaw();
  }

  std::vector<Event> Events() {
    absl::MutexLock lock(&mu_);
    return events_;
  }

  TempDir tmp_;
  FaultFileSystem log_fs_;
  std::shared_ptr<FaultRocksFileSystem> store_fs_ = std::make_shared<FaultRocksFileSystem>();
  std::unique_ptr<rocksdb::Env> env_;
  absl::Mutex mu_;
  std::vector<Event> events_;
};

TEST_F(CrashSimTest, NothingAcknowledgedIsLostWhenUnsyncedWritesAreDropped) {
  std::mt19937_64 random(42);
  uint64_t acknowledged = 0;
  for (int round = 0; round < Rounds(); ++round) {
    absl::StatusOr<std::unique_ptr<restart::QueueManager>> qm = restart::Restart(Options());
    ASSERT_TRUE(qm.ok()) << "round " << round << ": " << qm.status();
    absl::StatusOr<ObservedState> state = Observe((*qm)->engine());
    ASSERT_TRUE(state.ok()) << state.status();
    const std::vector<Event> events = Events();
    const std::vector<std::string> broken = CheckInvariants(events, *state);
    ASSERT_TRUE(broken.empty()) << "round " << round << ", " << (*qm)->restart_report().ToString()
                                << ":\n"
                                << absl::StrJoin(broken, "\n");
    acknowledged = events.size();
    for (const Event& e : Settle(events, *state)) events_.push_back(e);
    RunAndCrash(qm->get(), absl::StrCat("r", round), random, /*lying=*/false);
    qm->reset();
    PowerBack(random());
  }
  EXPECT_GT(acknowledged, 100u) << "the load did something";
}

TEST_F(CrashSimTest, TheCheckerSeesTheLossThatALyingFsyncCauses) {
  std::mt19937_64 random(7);
  absl::StatusOr<std::unique_ptr<restart::QueueManager>> qm = restart::Restart(Options());
  ASSERT_TRUE(qm.ok()) << qm.status();
  RunAndCrash(qm->get(), "lie", random, /*lying=*/true);
  qm->reset();
  PowerBack(random());
  absl::StatusOr<std::unique_ptr<restart::QueueManager>> after = restart::Restart(Options());
  if (!after.ok()) {  // restart itself saw that the log lost what the store reflects
    EXPECT_EQ(after.status().code(), absl::StatusCode::kDataLoss) << after.status();
    return;
  }
  absl::StatusOr<ObservedState> state = Observe((*after)->engine());
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_FALSE(CheckInvariants(Events(), *state).empty())
      << "fsyncs kept nothing, yet the checker found nothing missing";
}

}  // namespace
}  // namespace qmgr::testing
