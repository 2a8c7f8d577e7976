#include "tests/support/fault_rocksdb_fs.h"

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/metadata.h"
#include "rocksdb/options.h"
#include "tests/support/temp_dir.h"

namespace qmgr::testing {
namespace {

#define QMGR_ASSERT_ROCKS_OK(expr)                            \
  do {                                                        \
    const rocksdb::Status _st = (expr);                       \
    ASSERT_TRUE(_st.ok()) << #expr << ": " << _st.ToString(); \
  } while (0)

rocksdb::WriteOptions Synced(bool sync) {
  rocksdb::WriteOptions options;
  options.sync = sync;
  return options;
}

class FaultRocksFsTest : public ::testing::Test {
 protected:
  rocksdb::Options BaseOptions() const {
    rocksdb::Options options;
    options.create_if_missing = true;
    options.env = env_.get();
    return options;
  }

  std::unique_ptr<rocksdb::DB> Open(const rocksdb::Options& options) {
    rocksdb::DB* db = nullptr;
    const rocksdb::Status s = rocksdb::DB::Open(options, path_, &db);
    EXPECT_TRUE(s.ok()) << "open " << path_ << ": " << s.ToString();
    return std::unique_ptr<rocksdb::DB>(db);
  }

  // Power loss: the dying DB writes nothing more, then only synced data stays.
  void Crash(std::unique_ptr<rocksdb::DB>& db) {
    fs_->Freeze();
    db.reset();
    const absl::Status s = fs_->DropUnsyncedData();
    EXPECT_TRUE(s.ok()) << s;
    fs_->Thaw();
  }

  // The value, "<absent>", or the error.
  static std::string Get(rocksdb::DB& db, const std::string& key) {
    std::string value;
    const rocksdb::Status s = db.Get(rocksdb::ReadOptions(), key, &value);
    if (s.IsNotFound()) return "<absent>";
    return s.ok() ? value : "<error: " + s.ToString() + ">";
  }

  TempDir dir_;
  const std::string path_ = dir_.path() + "/db";
  const std::shared_ptr<FaultRocksFileSystem> fs_ = std::make_shared<FaultRocksFileSystem>();
  const std::unique_ptr<rocksdb::Env> env_ = rocksdb::NewCompositeEnv(fs_);
};

TEST_F(FaultRocksFsTest, SyncedPutSurvivesPowerLoss) {
  std::unique_ptr<rocksdb::DB> db = Open(BaseOptions());
  ASSERT_NE(db, nullptr);
  const int64_t syncs = fs_->SyncCount();
  QMGR_ASSERT_ROCKS_OK(db->Put(Synced(true), "k", "v"));
  EXPECT_GT(fs_->SyncCount(), syncs);

  Crash(db);
  db = Open(BaseOptions());
  ASSERT_NE(db, nullptr);
  EXPECT_EQ(Get(*db, "k"), "v");
}

TEST_F(FaultRocksFsTest, UnsyncedPutIsLostAtPowerLoss) {
  std::unique_ptr<rocksdb::DB> db = Open(BaseOptions());
  ASSERT_NE(db, nullptr);
  QMGR_ASSERT_ROCKS_OK(db->Put(Synced(true), "synced", "1"));
  QMGR_ASSERT_ROCKS_OK(db->Put(Synced(false), "unsynced", "2"));
  ASSERT_EQ(Get(*db, "unsynced"), "2");

  const int64_t dropped = fs_->BytesDropped();
  Crash(db);
  // The WAL held the record; the crash cut it off.
  EXPECT_GT(fs_->BytesDropped(), dropped);
  db = Open(BaseOptions());
  ASSERT_NE(db, nullptr);
  EXPECT_EQ(Get(*db, "synced"), "1");
  EXPECT_EQ(Get(*db, "unsynced"), "<absent>");
}

// The control for the test above: when only the process dies, the same
// unsynced write is in the OS's cache and survives.
TEST_F(FaultRocksFsTest, UnsyncedPutSurvivesProcessCrash) {
  std::unique_ptr<rocksdb::DB> db = Open(BaseOptions());
  ASSERT_NE(db, nullptr);
  QMGR_ASSERT_ROCKS_OK(db->Put(Synced(true), "synced", "1"));
  QMGR_ASSERT_ROCKS_OK(db->Put(Synced(false), "unsynced", "2"));

  fs_->Freeze();
  db.reset();
  fs_->Thaw();
  db = Open(BaseOptions());
  ASSERT_NE(db, nullptr);
  EXPECT_EQ(Get(*db, "synced"), "1");
  EXPECT_EQ(Get(*db, "unsynced"), "2");
}

TEST_F(FaultRocksFsTest, FrozenFileSystemRefusesWrites) {
  std::unique_ptr<rocksdb::DB> db = Open(BaseOptions());
  ASSERT_NE(db, nullptr);
  fs_->Freeze();
  EXPECT_FALSE(db->Put(Synced(false), "k", "v").ok());
  EXPECT_GT(fs_->FrozenRejectCount(), 0);
  db.reset();
  EXPECT_TRUE(fs_->DropUnsyncedData().ok());
  fs_->Thaw();
  EXPECT_EQ(fs_->DropUnsyncedData().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(FaultRocksFsTest, LyingSyncLosesSyncedPut) {
  std::unique_ptr<rocksdb::DB> db = Open(BaseOptions());
  ASSERT_NE(db, nullptr);
  QMGR_ASSERT_ROCKS_OK(db->Put(Synced(true), "before", "1"));
  fs_->SetLyingSync(true);
  const int64_t syncs = fs_->SyncCount();
  QMGR_ASSERT_ROCKS_OK(db->Put(Synced(true), "lied", "2"));
  EXPECT_GT(fs_->SyncCount(), syncs);

  Crash(db);
  fs_->SetLyingSync(false);
  db = Open(BaseOptions());
  ASSERT_NE(db, nullptr);
  EXPECT_EQ(Get(*db, "before"), "1");
  EXPECT_EQ(Get(*db, "lied"), "<absent>");
}

// One write: a Put, or a Delete when `value` is nullopt.
struct Op {
  std::string key;
  std::optional<std::string> value;
};

void Apply(const Op& op, std::map<std::string, std::string>& state) {
  if (op.value.has_value()) {
    state[op.key] = *op.value;
  } else {
    state.erase(op.key);
  }
}

// A key's value, shortened, or "<absent>".
std::string Show(const std::map<std::string, std::string>& state, const std::string& key) {
  auto it = state.find(key);
  return it == state.end() ? "<absent>" : it->second.substr(0, 24);
}

// The first few keys on which the states differ.
std::string Diff(const std::map<std::string, std::string>& expected,
                 const std::map<std::string, std::string>& recovered) {
  std::set<std::string> keys;
  for (const auto& [key, value] : expected) keys.insert(key);
  for (const auto& [key, value] : recovered) keys.insert(key);
  std::string out;
  int shown = 0;
  for (const std::string& key : keys) {
    auto e = expected.find(key);
    auto r = recovered.find(key);
    const bool same =
        e == expected.end() ? r == recovered.end() : r != recovered.end() && e->second == r->second;
    if (same) continue;
    if (++shown > 5) return out + "\n  ...";
    absl::StrAppend(&out, "\n  ", key, ": expected ", Show(expected, key), ", recovered ",
                    Show(recovered, key));
  }
  return out;
}

std::map<std::string, std::string> Contents(rocksdb::DB& db) {
  std::map<std::string, std::string> contents;
  std::unique_ptr<rocksdb::Iterator> it(db.NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    contents[it->key().ToString()] = it->value().ToString();
  }
  EXPECT_TRUE(it->status().ok()) << it->status().ToString();
  return contents;
}

// A DB with small memtables, so that flushes and compactions (new SSTs, new
// MANIFESTs at every open, CURRENT renamed, obsolete files deleted) run in
// the background, crashes at random points. Whatever it recovers must be the
// state after some prefix of the writes that includes every one made durable
// (by a synced write, SyncWAL, or a finished Flush or CompactRange).
TEST_F(FaultRocksFsTest, RandomCrashPointsKeepSyncedWrites) {
  rocksdb::Options options = BaseOptions();
  options.write_buffer_size = 64 << 10;
  options.level0_file_num_compaction_trigger = 2;
  options.target_file_size_base = 64 << 10;
  options.max_bytes_for_level_base = 256 << 10;
  options.max_background_jobs = 2;
  constexpr int kIterations = 40;
  constexpr int kMaxOps = 300;
  constexpr int kKeys = 300;

  std::mt19937_64 rng(20240611);
  auto uniform = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::map<std::string, std::string> base;  // what the DB held at the last open
  std::unique_ptr<rocksdb::DB> db = Open(options);
  ASSERT_NE(db, nullptr);
  bool saw_sst = false;
  for (int iteration = 0; iteration < kIterations; ++iteration) {
    SCOPED_TRACE(absl::StrCat("iteration ", iteration));
    const int crash_at = uniform(0, kMaxOps);
    std::vector<Op> ops;
    size_t durable = 0;  // ops[0, durable) must survive
    for (int i = 0; i < crash_at; ++i) {
      const int kind = uniform(0, 99);
      if (kind < 80) {
        Op op{absl::StrFormat("key%04d", uniform(0, kKeys - 1)), std::nullopt};
        if (kind < 70) {
          op.value = absl::StrCat(iteration, ".", i, ".", std::string(uniform(10, 1500), 'x'));
        }
        const bool sync = uniform(0, 9) == 0;
        const rocksdb::Status s = op.value.has_value() ? db->Put(Synced(sync), op.key, *op.value)
                                                       : db->Delete(Synced(sync), op.key);
        QMGR_ASSERT_ROCKS_OK(s);
        ops.push_back(std::move(op));
        if (sync) durable = ops.size();
      } else if (kind < 86) {
        QMGR_ASSERT_ROCKS_OK(db->Flush(rocksdb::FlushOptions()));
        durable = ops.size();
      } else if (kind < 89) {
        QMGR_ASSERT_ROCKS_OK(db->CompactRange(rocksdb::CompactRangeOptions(), nullptr, nullptr));
        durable = ops.size();
      } else if (kind < 95) {
        rocksdb::FlushOptions no_wait;
        no_wait.wait = false;
        QMGR_ASSERT_ROCKS_OK(db->Flush(no_wait));
      } else {
        QMGR_ASSERT_ROCKS_OK(db->SyncWAL());
        durable = ops.size();
      }
    }
    // Let background flushes and compactions reach a random point.
    std::this_thread::sleep_for(std::chrono::microseconds(uniform(0, 3000)));
    Crash(db);

    db = Open(options);
    ASSERT_NE(db, nullptr);
    const std::map<std::string, std::string> recovered = Contents(*db);
    std::map<std::string, std::string> expected = base;
    for (size_t i = 0; i < durable; ++i) Apply(ops[i], expected);
    size_t prefix = durable;
    while (expected != recovered && prefix < ops.size()) Apply(ops[prefix++], expected);
    ASSERT_TRUE(expected == recovered)
        << "no prefix of the " << ops.size() << " writes from " << durable
        << " on matches the recovered DB; against all of them:" << Diff(expected, recovered);
    base = recovered;

    std::vector<rocksdb::LiveFileMetaData> files;
    db->GetLiveFilesMetaData(&files);
    saw_sst = saw_sst || !files.empty();
  }
  EXPECT_TRUE(saw_sst);
  // The crashes did undo something: cut WAL tails, removed unsynced entries.
  EXPECT_GT(fs_->BytesDropped(), 0);
  EXPECT_GT(fs_->EntriesUndone(), 0);
}

}  // namespace
}  // namespace qmgr::testing
