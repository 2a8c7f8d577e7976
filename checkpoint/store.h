// The checkpoint store: RocksDB under <data>/store/ (DESIGN.md, "Checkpoints").
// It holds the engine's state as of its meta's redo_lsn; restart loads it and
// redoes the log from there. Every checkpoint is one synced WriteBatch, meta
// included, so the store always holds one whole checkpoint.
//
// The schema, in one place (values: proto/qmgr/v1/store.proto):
//
// | column family | key                              | value                        |
// |---------------|----------------------------------|------------------------------|
// | messages      | "m" + message id (8 bytes, BE)   | StoredMessage (no payload)   |
// | messages      | "p" + message id (8 bytes, BE)   | the payload bytes, as is     |
// | queues        | queue name                       | StoredQueue                  |
// | sessions      | session name                     | StoredSession                |
// | prepared      | CoordinatedStoreKey (qmgr/engine.h) | StoredCoordinatedUnit: in doubt, or a
// remembered outcome | | meta          | "checkpoint"                     | CheckpointMeta | |
// spill         | qmgr/spill_store.h: not checkpoint state; dropped at each open |
//
// A message's payload has a key of its own because it never changes: a
// checkpoint that changes only a message's backout count or position
// rewrites the small image, not the payload.
#ifndef QMGR_CHECKPOINT_STORE_H_
#define QMGR_CHECKPOINT_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "qmgr/engine.h"
#include "qmgr/spill_store.h"
#include "qmgr/v1/store.pb.h"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
}  // namespace rocksdb

namespace qmgr::checkpoint {

inline constexpr absl::string_view kMessagesFamily = "messages";
inline constexpr absl::string_view kQueuesFamily = "queues";
inline constexpr absl::string_view kSessionsFamily = "sessions";
inline constexpr absl::string_view kPreparedFamily = "prepared";
inline constexpr absl::string_view kMetaFamily = "meta";

// What one Write put into the batch.
struct WriteCounts {
  uint64_t messages_written = 0;
  uint64_t payloads_written = 0;
  uint64_t messages_deleted = 0;
  uint64_t queues_written = 0;
  uint64_t queues_deleted = 0;
  uint64_t sessions_written = 0;
  uint64_t coordinated_written = 0;
  uint64_t coordinated_deleted = 0;
  uint64_t batch_bytes = 0;
};

class Store final : public StoredPayloads {
 public:
  // Opens (creating if missing) the database at options.path with the
  // checkpoint's column families and the spill (options.column_families is
  // filled in here).
  static absl::StatusOr<std::unique_ptr<Store>> Open(SpillOptions options);
  ~Store() override;
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // The spill column family of the same database (the engine's).
  SpillStore* spill() { return db_.get(); }

  // The last checkpoint's meta; nullopt if no checkpoint was ever written.
  absl::StatusOr<std::optional<qmgr::v1::CheckpointMeta>> ReadMeta();

  // Loading, in key order. A value that does not parse is DataLoss.
  absl::Status ForEachQueue(
      const std::function<absl::Status(std::string name, qmgr::v1::StoredQueue)>& fn);
  absl::Status ForEachSession(
      const std::function<absl::Status(std::string name, qmgr::v1::StoredSession)>& fn);
  // Images only; payloads stay on disk (ReadPayload).
  absl::Status ForEachMessage(const std::function<absl::Status(qmgr::v1::StoredMessage)>& fn);
  // Coordinated units: in doubt or remembered, by store key.
  absl::Status ForEachCoordinated(
      const std::function<absl::Status(std::string, qmgr::v1::StoredCoordinatedUnit)>& fn);

  // StoredPayloads: the payload of a checkpointed message.
  absl::StatusOr<std::string> ReadPayload(uint64_t message_id) override;

  // Checkpoint step 4: the delta and `meta` in one WriteBatch, synced.
  // Payloads the delta says are spilled are read from the spill here.
  absl::Status Write(const CheckpointDelta& delta, const qmgr::v1::CheckpointMeta& meta,
                     WriteCounts* counts);
  // Flushes the checkpoint's memtables to table files, so that the next open
  // does not replay them from RocksDB's WAL; `wait`: until done.
  absl::Status Flush(bool wait);

  // Cold start: every message, session and prepared unit dropped, and every queue
  // definition unless `keep_definitions` (then `definitions` are written
  // over them: the log's changes since the checkpoint; a missing value
  // deletes), `meta` written, in one synced batch.
  absl::Status Discard(
      bool keep_definitions,
      const std::map<std::string, std::optional<qmgr::v1::QueueAttributes>>& definitions,
      const qmgr::v1::CheckpointMeta& meta);

  const std::string& path() const { return db_->path(); }

 private:
  explicit Store(std::unique_ptr<SpillStore> db);

  std::unique_ptr<SpillStore> db_;  // owns the database
  rocksdb::ColumnFamilyHandle* const messages_;
  rocksdb::ColumnFamilyHandle* const queues_;
  rocksdb::ColumnFamilyHandle* const sessions_;
  rocksdb::ColumnFamilyHandle* const prepared_;
  rocksdb::ColumnFamilyHandle* const meta_;
};

// The store opened read-only (qmgrctl explain): RocksDB's read-only open
// takes no lock and writes nothing, so it works beside a running qmgrd (it
// sees the store as of its open) and after it stopped.
class StoreReader {
 public:
  // NotFound when there is no store at `path`.
  static absl::StatusOr<std::unique_ptr<StoreReader>> Open(const std::string& path);
  ~StoreReader();
  StoreReader(const StoreReader&) = delete;
  StoreReader& operator=(const StoreReader&) = delete;

  // nullopt if no checkpoint was ever written.
  absl::StatusOr<std::optional<qmgr::v1::CheckpointMeta>> ReadMeta();
  // The message's image (payload empty), nullopt when the store has none.
  absl::StatusOr<std::optional<qmgr::v1::StoredMessage>> ReadMessage(uint64_t message_id);
  absl::Status ForEachQueue(
      const std::function<absl::Status(std::string name, qmgr::v1::StoredQueue)>& fn);
  absl::Status ForEachSession(
      const std::function<absl::Status(std::string name, qmgr::v1::StoredSession)>& fn);
  absl::Status ForEachCoordinated(
      const std::function<absl::Status(std::string, qmgr::v1::StoredCoordinatedUnit)>& fn);

  const std::string& path() const { return path_; }

 private:
  StoreReader(std::string path, std::unique_ptr<rocksdb::DB> db,
              std::vector<rocksdb::ColumnFamilyHandle*> handles);
  // Null when the store lacks that column family (no checkpoint wrote it).
  rocksdb::ColumnFamilyHandle* Family(absl::string_view name) const;

  const std::string path_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // destroyed before db_
};

}  // namespace qmgr::checkpoint

#endif  // QMGR_CHECKPOINT_STORE_H_
