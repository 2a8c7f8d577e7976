// Payloads beyond the memory budget, kept in the "spill" column family of the
// RocksDB store under <data>/store (DESIGN.md, "Checkpoints"). The spill never
// holds truth: it is written without RocksDB's WAL and dropped and recreated at
// every Open, because the log and the checkpoint hold every recoverable payload.
#ifndef QMGR_QMGR_SPILL_STORE_H_
#define QMGR_QMGR_SPILL_STORE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
class Env;
class Statistics;
class Status;
}  // namespace rocksdb

namespace qmgr {

inline constexpr absl::string_view kSpillColumnFamily = "spill";

struct SpillOptions {
  // The RocksDB database directory, <data>/store. Created if missing (its
  // parent must exist).
  std::string path;
  // Memtable size of each column family opened here; the memtables of all
  // column families together are held to twice this (db_write_buffer_size).
  // Reads go through a block cache of kSpillBlockCacheBytes.
  uint64_t write_buffer_bytes = 64 << 20;
  // Column families opened beside "spill", created if missing (the
  // checkpoint's, checkpoint/store.h).
  std::vector<std::string> column_families = {};
  // Bounds the store's writes (RocksDB's WAL, flushes and compactions)
  // so that a large checkpoint does not starve the system log's fdatasyncs
  // on the same disk; 0: no bound. Writes that should be paced pass
  // rocksdb::Env::IO_USER as their WriteOptions::rate_limiter_priority.
  uint64_t write_bytes_per_second = 0;
  // Not owned; null: the default. Tests pass one over a fault-injecting
  // rocksdb::FileSystem.
  rocksdb::Env* env = nullptr;
  std::shared_ptr<rocksdb::Statistics> statistics = nullptr;  // may be null
};

// A RocksDB status as an absl::Status, the message prefixed with `context`.
absl::Status FromRocksDb(const rocksdb::Status& s, absl::string_view context);

// Block cache shared by every column family opened by SpillStore::Open, for
// data blocks; index and filter blocks stay with the table readers (bounded by
// max_open_files; about 1.3 bytes of filter per key).
inline constexpr uint64_t kSpillBlockCacheBytes = 32 << 20;
// RocksDB stores a value's length in 32 bits.
inline constexpr uint64_t kSpillPayloadBytesMax = UINT32_MAX;

// Thread-safe. REQUIRES: no two calls for the same message id run at once (the
// engine owns each id); calls for different ids may run concurrently.
//
// Memory: besides RocksDB's memtables and block cache, one hash-map entry
// (about 20 bytes) per spilled payload, so Delete knows the bytes it frees.
class SpillStore {
 public:
  // Opens (creating if missing) the database at options.path with every column
  // family that exists there plus "spill". A "spill" left by an earlier run is
  // dropped and recreated empty; other column families (the checkpoint's) are
  // opened as they are and left alone.
  static absl::StatusOr<std::unique_ptr<SpillStore>> Open(const SpillOptions& options);

  // REQUIRES: every handle the caller created through db() has been destroyed.
  ~SpillStore();
  SpillStore(const SpillStore&) = delete;
  SpillStore& operator=(const SpillStore&) = delete;

  // Stores `payload` under `message_id`, replacing any earlier one. Written
  // without the WAL and without sync: a crash loses the spill, which is fine.
  // InvalidArgument when payload is longer than kSpillPayloadBytesMax.
  absl::Status Put(uint64_t message_id, absl::string_view payload);
  // The payload put under `message_id`; NotFound if there is none.
  absl::StatusOr<std::string> Get(uint64_t message_id);
  // Removes the payload of `message_id`; OK (and no write) if there is none.
  absl::Status Delete(uint64_t message_id);

  // Live payloads put and not deleted since Open: their bytes and their count.
  uint64_t spilled_bytes() const { return spilled_bytes_.load(std::memory_order_relaxed); }
  uint64_t spilled_count() const { return spilled_count_.load(std::memory_order_relaxed); }

  // The database, for the checkpoint. Column families it held at Open (and
  // "spill") are open here: their handles come from column_family().
  rocksdb::DB* db() { return db_.get(); }
  // The handle of a column family opened by Open, or nullptr; owned by this.
  rocksdb::ColumnFamilyHandle* column_family(absl::string_view name) const;
  const std::string& path() const { return path_; }

 private:
  SpillStore(std::string path, std::unique_ptr<rocksdb::DB> db,
             std::vector<rocksdb::ColumnFamilyHandle*> handles, rocksdb::ColumnFamilyHandle* spill);

  const std::string path_;
  std::unique_ptr<rocksdb::DB> db_;
  // Every handle opened here, "spill" among them; destroyed before db_ closes.
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  rocksdb::ColumnFamilyHandle* const spill_;

  absl::Mutex mu_;
  // Payload bytes of each live spilled message: the truth behind the counters.
  absl::flat_hash_map<uint64_t, uint64_t> payload_bytes_ ABSL_GUARDED_BY(mu_);
  // Updated under mu_, read without it.
  std::atomic<uint64_t> spilled_bytes_{0};
  std::atomic<uint64_t> spilled_count_{0};
};

}  // namespace qmgr

#endif  // QMGR_QMGR_SPILL_STORE_H_
