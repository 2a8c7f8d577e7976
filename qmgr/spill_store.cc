#include "qmgr/spill_store.h"

#include <algorithm>
#include <cassert>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/metadata.h"
#include "rocksdb/options.h"
#include "rocksdb/rate_limiter.h"
#include "rocksdb/table.h"

namespace qmgr {

absl::Status FromRocksDb(const rocksdb::Status& s, absl::string_view context) {
  const std::string message = absl::StrCat(context, ": ", s.ToString());
  // NoSpace and SpaceLimit are IOErrors with a subcode: test them first.
  if (s.IsNoSpace() || s.subcode() == rocksdb::Status::kSpaceLimit) {
    return absl::ResourceExhaustedError(message);
  }
  switch (s.code()) {
    case rocksdb::Status::kOk:
      return absl::OkStatus();
    case rocksdb::Status::kNotFound:
      return absl::NotFoundError(message);
    case rocksdb::Status::kCorruption:
      return absl::DataLossError(message);
    case rocksdb::Status::kInvalidArgument:
      return absl::InvalidArgumentError(message);
    case rocksdb::Status::kNotSupported:
      return absl::UnimplementedError(message);
    case rocksdb::Status::kBusy:
    case rocksdb::Status::kTryAgain:
    case rocksdb::Status::kTimedOut:
    case rocksdb::Status::kShutdownInProgress:
      return absl::UnavailableError(message);
    case rocksdb::Status::kAborted:
      return absl::AbortedError(message);
    default:  // kIOError and the rest: the disk or RocksDB failed.
      return absl::InternalError(message);
  }
}

namespace {

constexpr size_t kKeyBytes = 8;
// Bounds the file descriptors RocksDB keeps; tables beyond it are reopened.
constexpr int kOpenFilesMax = 256;
// Bounds the disk taken by RocksDB's informational LOG files.
constexpr size_t kInfoLogFilesMax = 4;
// A small family in more table files than this is compacted at open.
constexpr size_t kFilesCompactedAtOpen = 8;
// Tombstones worth a compaction at open, when they are a quarter of the
// entries (a key put, its outcome put, then deleted: a third).
constexpr uint64_t kTombstonesCompactedAtOpen = 1024;
// A compaction at open of up to this much takes well under a second.
constexpr uint64_t kCompactedAtOpenBytesMax = 64 << 20;
// Room left on the file system beyond twice the family, for RocksDB's own
// files, before a compaction at open is tried.
constexpr uint64_t kCompactionHeadroomBytes = 8 << 20;

// Big-endian, so that RocksDB's bytewise order is message id order.
std::string KeyOf(uint64_t message_id) {
  std::string key(kKeyBytes, '\0');
  for (size_t i = 0; i < kKeyBytes; ++i) {
    key[kKeyBytes - 1 - i] = static_cast<char>(message_id >> (8 * i));
  }
  return key;
}

absl::Status FromRocksDb(const rocksdb::Status& s, absl::string_view path,
                         absl::string_view operation) {
  return qmgr::FromRocksDb(s, absl::StrCat("spill store ", path, ": ", operation));
}

rocksdb::ColumnFamilyOptions FamilyOptions(const SpillOptions& options,
                                           const std::shared_ptr<rocksdb::Cache>& cache) {
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = cache;
  // Index and filter blocks stay with their table readers (a few bytes per
  // key), not in the block cache: a drain of a large spill reads keys in
  // order, and with them in a small cache every Get reread its filter block.
  table.cache_index_and_filter_blocks = false;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  rocksdb::ColumnFamilyOptions family;
  family.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  family.write_buffer_size = options.write_buffer_bytes;
  // Payloads are the bulk of the store and often compressed already; on a
  // 2-core machine compressing them in flushes and compactions cost the
  // server a third of its throughput while checkpoints ran.
  family.compression = rocksdb::kNoCompression;
  return family;
}

rocksdb::DBOptions DatabaseOptions(const SpillOptions& options) {
  rocksdb::DBOptions db;
  db.create_if_missing = true;
  db.create_missing_column_families = true;
  db.max_open_files = kOpenFilesMax;
  db.keep_log_file_num = kInfoLogFilesMax;
  // All memtables together, whatever the number of column families.
  db.db_write_buffer_size = 2 * options.write_buffer_bytes;
  // Writes outside the spill go through the WAL, and the spill is dropped at
  // the next Open: flushing memtables on close would only write garbage.
  db.avoid_flush_during_shutdown = true;
  if (options.env != nullptr) db.env = options.env;
  if (options.write_bytes_per_second > 0) {
    db.rate_limiter.reset(
        rocksdb::NewGenericRateLimiter(static_cast<int64_t>(options.write_bytes_per_second)));
    // Written out as they go, so that no sync has a large backlog to flush.
    db.wal_bytes_per_sync = 128 << 10;
    db.bytes_per_sync = 128 << 10;
  }
  db.statistics = options.statistics;
  return db;
}

// The column families in the database at `path`; just "default" when there is
// no database there yet.
absl::StatusOr<std::vector<std::string>> ExistingFamilies(const rocksdb::DBOptions& db_options,
                                                          const std::string& path) {
  const rocksdb::Status current = db_options.env->FileExists(path + "/CURRENT");
  if (current.IsNotFound()) return std::vector<std::string>{rocksdb::kDefaultColumnFamilyName};
  if (!current.ok()) return FromRocksDb(current, path, "looking for CURRENT");
  std::vector<std::string> names;
  const rocksdb::Status s = rocksdb::DB::ListColumnFamilies(db_options, path, &names);
  if (!s.ok()) return FromRocksDb(s, path, "listing column families");
  return names;
}

// Spill writes bypass the WAL, so after an open the family's data is all in
// table files: none means empty, and dropping it would only cost RocksDB two
// rewrites of its OPTIONS file.
bool IsEmpty(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* spill) {
  rocksdb::ColumnFamilyMetaData meta;
  db->GetColumnFamilyMetaData(spill, &meta);
  return meta.file_count == 0;
}

// Whether a small family's table files would slow every read of a restart.
// Crashes that come soon after each restart leave RocksDB no time to
// compact: each open flushes what the WAL held into a new level-0 file,
// files whose keys are new (message ids, XIDs) are moved down to level 1
// whole, and there they stay, with their tombstones, until the level is
// large, which a small family never becomes. A restart then opens every
// file and steps over every delete.
// Only small families: a large one's compaction would hold the restart up
// for longer than it saves, and RocksDB compacts it in the background.
bool NeedsCompaction(const rocksdb::ColumnFamilyMetaData& meta) {
  if (meta.size > kCompactedAtOpenBytesMax) return false;
  if (meta.file_count >= kFilesCompactedAtOpen) return true;
  uint64_t entries = 0, deletions = 0;
  for (const rocksdb::LevelMetaData& level : meta.levels) {
    for (const rocksdb::SstFileMetaData& file : level.files) {
      entries += file.num_entries;
      deletions += file.num_deletions;
    }
  }
  return deletions >= kTombstonesCompactedAtOpen && 4 * deletions >= entries;
}

// An optimisation, never a reason to refuse an open: a family is compacted
// only while the file system has room for its rewrite, and a compaction that
// fails anyway leaves the files as they were (a slower restart).
void CompactWhereReadsWouldSlow(rocksdb::DB* db,
                                const std::vector<rocksdb::ColumnFamilyHandle*>& handles,
                                const std::string& path) {
  std::error_code error;
  const std::filesystem::space_info space = std::filesystem::space(path, error);
  if (error) return;
  for (rocksdb::ColumnFamilyHandle* family : handles) {
    if (family->GetName() == kSpillColumnFamily) continue;
    rocksdb::ColumnFamilyMetaData meta;
    db->GetColumnFamilyMetaData(family, &meta);
    if (!NeedsCompaction(meta) || space.available < 2 * meta.size + kCompactionHeadroomBytes) {
      continue;
    }
    // By default RocksDB leaves the last level as it is, and in a small
    // family that is where the piled-up files are.
    rocksdb::CompactRangeOptions whole;
    whole.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForceOptimized;
    db->CompactRange(whole, family, nullptr, nullptr).PermitUncheckedError();
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<SpillStore>> SpillStore::Open(const SpillOptions& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("spill store: empty path");
  const std::shared_ptr<rocksdb::Cache> cache = rocksdb::NewLRUCache(kSpillBlockCacheBytes);
  const rocksdb::ColumnFamilyOptions family_options = FamilyOptions(options, cache);
  const rocksdb::DBOptions db_options = DatabaseOptions(options);

  absl::StatusOr<std::vector<std::string>> names = ExistingFamilies(db_options, options.path);
  if (!names.ok()) return names.status();
  const bool had_spill =
      std::find(names->begin(), names->end(), kSpillColumnFamily) != names->end();
  if (!had_spill) names->emplace_back(kSpillColumnFamily);
  for (const std::string& wanted : options.column_families) {
    if (std::find(names->begin(), names->end(), wanted) == names->end()) names->push_back(wanted);
  }

  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (const std::string& name : *names) families.emplace_back(name, family_options);
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.path, families, &handles, &raw);
  if (!s.ok()) return FromRocksDb(s, options.path, "opening");
  std::unique_ptr<rocksdb::DB> db(raw);
  assert(handles.size() == names->size());

  auto spill = std::find_if(handles.begin(), handles.end(), [](rocksdb::ColumnFamilyHandle* h) {
    return h->GetName() == kSpillColumnFamily;
  });
  assert(spill != handles.end());
  if (had_spill && !IsEmpty(db.get(), *spill)) {
    // A crash between the drop and the create leaves no "spill": the next
    // Open creates it through create_missing_column_families.
    s = db->DropColumnFamily(*spill);
    if (s.ok()) s = db->DestroyColumnFamilyHandle(*spill);
    if (s.ok()) {
      *spill = nullptr;
      s = db->CreateColumnFamily(family_options, std::string(kSpillColumnFamily), &*spill);
    }
    if (!s.ok()) {
      for (rocksdb::ColumnFamilyHandle* h : handles) {
        if (h != nullptr) db->DestroyColumnFamilyHandle(h).PermitUncheckedError();
      }
      return FromRocksDb(s, options.path, "recreating the spill column family");
    }
  }
  CompactWhereReadsWouldSlow(db.get(), handles, options.path);
  rocksdb::ColumnFamilyHandle* const spill_handle = *spill;
  return std::unique_ptr<SpillStore>(
      new SpillStore(options.path, std::move(db), std::move(handles), spill_handle));
}

SpillStore::SpillStore(std::string path, std::unique_ptr<rocksdb::DB> db,
                       std::vector<rocksdb::ColumnFamilyHandle*> handles,
                       rocksdb::ColumnFamilyHandle* spill)
    : path_(std::move(path)), db_(std::move(db)), handles_(std::move(handles)), spill_(spill) {}

SpillStore::~SpillStore() {
  for (rocksdb::ColumnFamilyHandle* h : handles_) {
    db_->DestroyColumnFamilyHandle(h).PermitUncheckedError();
  }
  // Close reports errors that deleting the DB would swallow silently; there is
  // no one to tell here, and nothing in the spill outlives this.
  db_->Close().PermitUncheckedError();
}

rocksdb::ColumnFamilyHandle* SpillStore::column_family(absl::string_view name) const {
  for (rocksdb::ColumnFamilyHandle* h : handles_) {
    if (h->GetName() == name) return h;
  }
  return nullptr;
}

absl::Status SpillStore::Put(uint64_t message_id, absl::string_view payload) {
  if (payload.size() > kSpillPayloadBytesMax) {
    return absl::InvalidArgumentError(absl::StrCat("spill store ", path_, ": payload of message ",
                                                   message_id, " has ", payload.size(),
                                                   " bytes, more than ", kSpillPayloadBytesMax));
  }
  rocksdb::WriteOptions write;
  write.disableWAL = true;
  write.sync = false;
  const rocksdb::Status s =
      db_->Put(write, spill_, KeyOf(message_id), rocksdb::Slice(payload.data(), payload.size()));
  if (!s.ok()) return FromRocksDb(s, path_, absl::StrCat("putting message ", message_id));

  absl::MutexLock lock(&mu_);
  auto [it, inserted] = payload_bytes_.try_emplace(message_id, payload.size());
  if (inserted) {
    spilled_count_.fetch_add(1, std::memory_order_relaxed);
  } else {
    spilled_bytes_.fetch_sub(it->second, std::memory_order_relaxed);
    it->second = payload.size();
  }
  spilled_bytes_.fetch_add(payload.size(), std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::StatusOr<std::string> SpillStore::Get(uint64_t message_id) {
  std::string payload;
  const rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), spill_, KeyOf(message_id), &payload);
  if (!s.ok()) return FromRocksDb(s, path_, absl::StrCat("getting message ", message_id));
  return payload;
}

absl::Status SpillStore::Delete(uint64_t message_id) {
  {
    absl::MutexLock lock(&mu_);
    if (!payload_bytes_.contains(message_id)) return absl::OkStatus();
  }
  rocksdb::WriteOptions write;
  write.disableWAL = true;
  write.sync = false;
  const rocksdb::Status s = db_->Delete(write, spill_, KeyOf(message_id));
  if (!s.ok()) return FromRocksDb(s, path_, absl::StrCat("deleting message ", message_id));

  absl::MutexLock lock(&mu_);
  auto it = payload_bytes_.find(message_id);
  assert(it != payload_bytes_.end());  // No concurrent call for the same id.
  spilled_bytes_.fetch_sub(it->second, std::memory_order_relaxed);
  spilled_count_.fetch_sub(1, std::memory_order_relaxed);
  payload_bytes_.erase(it);
  return absl::OkStatus();
}

}  // namespace qmgr
