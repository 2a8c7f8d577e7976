// The spill store on the real file system: round trips, counters, key order,
// the drop at every Open, the compactions at Open (piled-up level-0 files,
// families of mostly tombstones), large payloads, concurrency and unusable
// paths.
#include "qmgr/spill_store.h"

#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "rocksdb/db.h"
#include "rocksdb/metadata.h"
#include "tests/support/temp_dir.h"

namespace qmgr {
namespace {

SpillOptions OptionsFor(const qmgr::testing::TempDir& tmp) {
  SpillOptions options;
  options.path = tmp.path() + "/store";
  return options;
}

std::unique_ptr<SpillStore> OpenOrDie(const SpillOptions& options) {
  absl::StatusOr<std::unique_ptr<SpillStore>> store = SpillStore::Open(options);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

std::string RandomBytes(std::mt19937_64& rng, size_t n) {
  std::string bytes(n, '\0');
  for (char& c : bytes) c = static_cast<char>(rng());
  return bytes;
}

// A payload comes back byte for byte, an empty one too, and is gone after Delete.
TEST(SpillStoreTest, PutGetDeleteRoundTrip) {
  qmgr::testing::TempDir tmp;
  std::unique_ptr<SpillStore> store = OpenOrDie(OptionsFor(tmp));
  ASSERT_NE(store, nullptr);
  const std::string payload("binary\0payload\xff", 15);
  ASSERT_TRUE(store->Put(7, payload).ok());
  ASSERT_TRUE(store->Put(8, "").ok());

  absl::StatusOr<std::string> got = store->Get(7);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, payload);
  got = store->Get(8);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "");

  ASSERT_TRUE(store->Put(7, "replaced").ok());
  EXPECT_EQ(*store->Get(7), "replaced");
  ASSERT_TRUE(store->Delete(7).ok());
  EXPECT_TRUE(absl::IsNotFound(store->Get(7).status()));
  EXPECT_EQ(*store->Get(8), "");
}

// The counters follow puts, replacements and deletes, and ignore absent ids.
TEST(SpillStoreTest, CountersTrackLivePayloads) {
  qmgr::testing::TempDir tmp;
  std::unique_ptr<SpillStore> store = OpenOrDie(OptionsFor(tmp));
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->spilled_count(), 0u);
  EXPECT_EQ(store->spilled_bytes(), 0u);

  ASSERT_TRUE(store->Put(1, std::string(100, 'a')).ok());
  ASSERT_TRUE(store->Put(2, std::string(250, 'b')).ok());
  ASSERT_TRUE(store->Put(3, "").ok());
  EXPECT_EQ(store->spilled_count(), 3u);
  EXPECT_EQ(store->spilled_bytes(), 350u);

  ASSERT_TRUE(store->Put(1, std::string(10, 'c')).ok());  // Replaced: same count.
  EXPECT_EQ(store->spilled_count(), 3u);
  EXPECT_EQ(store->spilled_bytes(), 260u);

  ASSERT_TRUE(store->Delete(2).ok());
  EXPECT_EQ(store->spilled_count(), 2u);
  EXPECT_EQ(store->spilled_bytes(), 10u);

  ASSERT_TRUE(store->Delete(2).ok());   // Already gone.
  ASSERT_TRUE(store->Delete(99).ok());  // Never put.
  EXPECT_EQ(store->spilled_count(), 2u);
  EXPECT_EQ(store->spilled_bytes(), 10u);
}

// Get of an id never put, or deleted, is NotFound and names the id and path.
TEST(SpillStoreTest, GetOfAbsentIdIsNotFound) {
  qmgr::testing::TempDir tmp;
  const SpillOptions options = OptionsFor(tmp);
  std::unique_ptr<SpillStore> store = OpenOrDie(options);
  ASSERT_NE(store, nullptr);
  absl::Status status = store->Get(42).status();
  EXPECT_TRUE(absl::IsNotFound(status)) << status;
  EXPECT_NE(status.message().find(options.path), absl::string_view::npos) << status;
  EXPECT_NE(status.message().find("42"), absl::string_view::npos) << status;

  ASSERT_TRUE(store->Put(42, "x").ok());
  ASSERT_TRUE(store->Delete(42).ok());
  EXPECT_TRUE(absl::IsNotFound(store->Get(42).status()));
}

// Keys are big-endian ids, so RocksDB iterates the spill in message id order.
TEST(SpillStoreTest, IterationIsInMessageIdOrder) {
  qmgr::testing::TempDir tmp;
  std::unique_ptr<SpillStore> store = OpenOrDie(OptionsFor(tmp));
  ASSERT_NE(store, nullptr);
  const std::vector<uint64_t> ids = {65536, 1, 0x0100000000000000ull, 256, 2, 255};
  for (uint64_t id : ids) ASSERT_TRUE(store->Put(id, absl::StrCat(id)).ok());

  std::unique_ptr<rocksdb::Iterator> it(
      store->db()->NewIterator(rocksdb::ReadOptions(), store->column_family("spill")));
  std::vector<std::string> seen;
  for (it->SeekToFirst(); it->Valid(); it->Next()) seen.push_back(it->value().ToString());
  ASSERT_TRUE(it->status().ok()) << it->status().ToString();
  EXPECT_EQ(seen, (std::vector<std::string>{"1", "2", "255", "256", "65536",
                                            absl::StrCat(0x0100000000000000ull)}));
}

// Reopening drops the spill even once flushed to tables, and keeps other
// column families (the checkpoint's) with their data.
TEST(SpillStoreTest, ReopenDropsSpillButKeepsOtherColumnFamilies) {
  qmgr::testing::TempDir tmp;
  const SpillOptions options = OptionsFor(tmp);
  {
    std::unique_ptr<SpillStore> store = OpenOrDie(options);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->Put(1, "spilled").ok());
    // In a table file, not just the memtable that a close without WAL loses.
    rocksdb::ColumnFamilyHandle* spill = store->column_family("spill");
    ASSERT_NE(spill, nullptr);
    ASSERT_TRUE(store->db()->Flush(rocksdb::FlushOptions(), spill).ok());

    rocksdb::ColumnFamilyHandle* messages = nullptr;
    ASSERT_TRUE(store->db()
                    ->CreateColumnFamily(rocksdb::ColumnFamilyOptions(), "messages", &messages)
                    .ok());
    rocksdb::WriteOptions synced;
    synced.sync = true;
    ASSERT_TRUE(store->db()->Put(synced, messages, "k", "checkpointed").ok());
    ASSERT_TRUE(store->db()->DestroyColumnFamilyHandle(messages).ok());
  }
  for (int reopen = 0; reopen < 2; ++reopen) {
    std::unique_ptr<SpillStore> store = OpenOrDie(options);
    ASSERT_NE(store, nullptr);
    EXPECT_TRUE(absl::IsNotFound(store->Get(1).status())) << "reopen " << reopen;
    EXPECT_EQ(store->spilled_count(), 0u);
    EXPECT_EQ(store->spilled_bytes(), 0u);

    rocksdb::ColumnFamilyHandle* messages = store->column_family("messages");
    ASSERT_NE(messages, nullptr);
    std::string value;
    ASSERT_TRUE(store->db()->Get(rocksdb::ReadOptions(), messages, "k", &value).ok());
    EXPECT_EQ(value, "checkpointed");
    ASSERT_TRUE(store->Put(1, "again").ok());
    ASSERT_TRUE(store->db()->Flush(rocksdb::FlushOptions(), store->column_family("spill")).ok());
  }
}

size_t LevelZeroFiles(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* family) {
  rocksdb::ColumnFamilyMetaData meta;
  db->GetColumnFamilyMetaData(family, &meta);
  return meta.levels.empty() ? 0 : meta.levels[0].files.size();
}

// A store created with a "messages" family beside the spill, then closed.
SpillOptions CreatedWithMessagesFamily(const qmgr::testing::TempDir& tmp) {
  SpillOptions options = OptionsFor(tmp);
  options.column_families = {"messages"};
  OpenOrDie(options);
  return options;
}

// Writes to the "messages" family of the store at `path` with RocksDB's
// compactions off, as crashes that come too soon leave it.
void WriteUncompacted(
    const std::string& path,
    const std::function<void(rocksdb::DB*, rocksdb::ColumnFamilyHandle*)>& write) {
  rocksdb::DBOptions db_options;
  db_options.create_missing_column_families = true;
  rocksdb::ColumnFamilyOptions uncompacted;
  uncompacted.disable_auto_compactions = true;
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, uncompacted},
      {"spill", uncompacted},
      {"messages", uncompacted}};
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(db_options, path, families, &handles, &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  write(db.get(), handles[2]);
  for (rocksdb::ColumnFamilyHandle* h : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
}

// A run of crashes, each soon after a restart, leaves level-0 files that
// RocksDB had no time to compact; the next Open compacts them, and an empty
// spill is left as it is.
TEST(SpillStoreTest, OpenCompactsPiledUpLevelZeroFiles) {
  qmgr::testing::TempDir tmp;
  const SpillOptions options = CreatedWithMessagesFamily(tmp);
  WriteUncompacted(options.path, [](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* messages) {
    for (int i = 0; i < 12; ++i) {
      ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), messages, absl::StrCat("k", i % 3), "v").ok());
      ASSERT_TRUE(db->Flush(rocksdb::FlushOptions(), messages).ok());
    }
    EXPECT_EQ(LevelZeroFiles(db, messages), 12u);
  });
  std::unique_ptr<SpillStore> store = OpenOrDie(options);
  ASSERT_NE(store, nullptr);
  rocksdb::ColumnFamilyHandle* messages = store->column_family("messages");
  EXPECT_LE(LevelZeroFiles(store->db(), messages), 1u);
  for (int i = 0; i < 3; ++i) {
    std::string value;
    EXPECT_TRUE(
        store->db()->Get(rocksdb::ReadOptions(), messages, absl::StrCat("k", i), &value).ok());
  }
  EXPECT_EQ(LevelZeroFiles(store->db(), store->column_family("spill")), 0u);
}

size_t TableFiles(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* family) {
  rocksdb::ColumnFamilyMetaData meta;
  db->GetColumnFamilyMetaData(family, &meta);
  return meta.file_count;
}

// Level-0 files of keys no other file holds are moved down whole; in a small
// family that level is the last, where RocksDB's own compactions leave them
// (a seeded crash run piled 514 one-key files up in "prepared"). The open
// compacts the last level too.
TEST(SpillStoreTest, OpenCompactsFilesPiledUpInTheLastLevel) {
  qmgr::testing::TempDir tmp;
  const SpillOptions options = CreatedWithMessagesFamily(tmp);
  WriteUncompacted(options.path, [](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* messages) {
    for (int i = 0; i < 12; ++i) {
      const std::string key = absl::StrCat("k", 10 + i);
      ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), messages, key, "v").ok());
      ASSERT_TRUE(db->Flush(rocksdb::FlushOptions(), messages).ok());
      const rocksdb::Slice range(key);
      ASSERT_TRUE(db->CompactRange(rocksdb::CompactRangeOptions(), messages, &range, &range).ok());
    }
    EXPECT_EQ(LevelZeroFiles(db, messages), 0u);
    EXPECT_EQ(TableFiles(db, messages), 12u);
  });
  std::unique_ptr<SpillStore> store = OpenOrDie(options);
  ASSERT_NE(store, nullptr);
  rocksdb::ColumnFamilyHandle* messages = store->column_family("messages");
  EXPECT_EQ(TableFiles(store->db(), messages), 1u);
  for (int i = 0; i < 12; ++i) {
    std::string value;
    EXPECT_TRUE(
        store->db()->Get(rocksdb::ReadOptions(), messages, absl::StrCat("k", 10 + i), &value).ok());
  }
}

// A family whose keys came and went (units in doubt, once decided and
// forgotten) is compacted at open when it is mostly tombstones, which every
// scan of a restart would otherwise step over.
TEST(SpillStoreTest, OpenCompactsAFamilyOfMostlyTombstones) {
  qmgr::testing::TempDir tmp;
  const SpillOptions options = CreatedWithMessagesFamily(tmp);
  WriteUncompacted(options.path, [](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* messages) {
    for (int i = 0; i < 2000; ++i) {
      ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), messages, absl::StrCat("k", i), "v").ok());
    }
    ASSERT_TRUE(db->Flush(rocksdb::FlushOptions(), messages).ok());
    for (int i = 0; i < 1990; ++i) {
      ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), messages, absl::StrCat("k", i)).ok());
    }
    ASSERT_TRUE(db->Flush(rocksdb::FlushOptions(), messages).ok());
  });
  std::unique_ptr<SpillStore> store = OpenOrDie(options);
  ASSERT_NE(store, nullptr);
  rocksdb::ColumnFamilyMetaData meta;
  store->db()->GetColumnFamilyMetaData(store->column_family("messages"), &meta);
  uint64_t entries = 0, deletions = 0;
  for (const rocksdb::LevelMetaData& level : meta.levels) {
    for (const rocksdb::SstFileMetaData& file : level.files) {
      entries += file.num_entries;
      deletions += file.num_deletions;
    }
  }
  EXPECT_EQ(deletions, 0u);
  EXPECT_EQ(entries, 10u);
}

// 1 MiB payloads, through small memtables so most reads come from tables.
TEST(SpillStoreTest, MebibytePayloads) {
  qmgr::testing::TempDir tmp;
  SpillOptions options = OptionsFor(tmp);
  options.write_buffer_bytes = 4 << 20;
  std::unique_ptr<SpillStore> store = OpenOrDie(options);
  ASSERT_NE(store, nullptr);
  constexpr int kPayloads = 24;
  constexpr size_t kPayloadBytes = 1 << 20;
  std::mt19937_64 rng(20240601);
  std::vector<std::string> payloads;
  for (int i = 0; i < kPayloads; ++i) {
    payloads.push_back(RandomBytes(rng, kPayloadBytes));
    ASSERT_TRUE(store->Put(i, payloads.back()).ok());
  }
  EXPECT_EQ(store->spilled_count(), uint64_t{kPayloads});
  EXPECT_EQ(store->spilled_bytes(), uint64_t{kPayloads} * kPayloadBytes);
  for (int i = 0; i < kPayloads; ++i) {
    absl::StatusOr<std::string> got = store->Get(i);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(*got == payloads[i]) << "payload " << i << " differs";
  }
  for (int i = 0; i < kPayloads; i += 2) ASSERT_TRUE(store->Delete(i).ok());
  EXPECT_EQ(store->spilled_bytes(), uint64_t{kPayloads / 2} * kPayloadBytes);
  EXPECT_TRUE(absl::IsNotFound(store->Get(0).status()));
  EXPECT_TRUE(*store->Get(1) == payloads[1]);
}

// Four threads putting (and deleting some of) their own ids at once: every
// payload survives and the counters add up.
TEST(SpillStoreTest, ConcurrentPutsFromFourThreads) {
  qmgr::testing::TempDir tmp;
  std::unique_ptr<SpillStore> store = OpenOrDie(OptionsFor(tmp));
  ASSERT_NE(store, nullptr);
  constexpr int kThreads = 4;
  constexpr uint64_t kPerThread = 2000;
  auto payload_of = [](uint64_t id) { return std::string(100 + id % 900, static_cast<char>(id)); };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&store, &payload_of, t] {
      for (uint64_t i = 0; i < kPerThread; ++i) {
        const uint64_t id = t * kPerThread + i;
        EXPECT_TRUE(store->Put(id, payload_of(id)).ok());
        if (i % 4 == 3) {
          EXPECT_TRUE(store->Delete(id).ok());
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  uint64_t count = 0;
  uint64_t bytes = 0;
  for (uint64_t id = 0; id < kThreads * kPerThread; ++id) {
    absl::StatusOr<std::string> got = store->Get(id);
    if (id % kPerThread % 4 == 3) {
      EXPECT_TRUE(absl::IsNotFound(got.status())) << id;
      continue;
    }
    ASSERT_TRUE(got.ok()) << id << ": " << got.status();
    EXPECT_EQ(*got, payload_of(id));
    ++count;
    bytes += got->size();
  }
  EXPECT_EQ(store->spilled_count(), count);
  EXPECT_EQ(store->spilled_bytes(), bytes);
}

// A regular file where the store's directory should be: Open fails with an
// error that names the path.
TEST(SpillStoreTest, RegularFileAsPathIsAClearError) {
  qmgr::testing::TempDir tmp;
  SpillOptions options = OptionsFor(tmp);
  std::FILE* f = std::fopen(options.path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fclose(f);
  absl::StatusOr<std::unique_ptr<SpillStore>> store = SpillStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInternal) << store.status();
  EXPECT_NE(store.status().message().find(options.path), absl::string_view::npos) << store.status();

  options.path = tmp.path() + "/missing/parent/store";
  store = SpillStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find(options.path), absl::string_view::npos) << store.status();
}

}  // namespace
}  // namespace qmgr
