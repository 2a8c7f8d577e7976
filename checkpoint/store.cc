#include "checkpoint/store.h"

#include <cassert>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/write_batch.h"

namespace qmgr::checkpoint {
namespace {

constexpr char kImagePrefix = 'm';
constexpr char kPayloadPrefix = 'p';
constexpr absl::string_view kMetaKey = "checkpoint";

std::string MessageKey(char prefix, uint64_t id) {
  std::string key(9, '\0');
  key[0] = prefix;
  for (int i = 0; i < 8; ++i) key[8 - i] = static_cast<char>(id >> (8 * i));
  return key;
}

rocksdb::Slice SliceOf(absl::string_view s) { return rocksdb::Slice(s.data(), s.size()); }

template <typename Proto>
absl::Status ForEachValue(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* family,
                          absl::string_view prefix, const std::string& path,
                          const std::function<absl::Status(std::string, Proto)>& fn) {
  rocksdb::ReadOptions read;
  read.fill_cache = false;  // a load reads everything once
  read.readahead_size = 2 << 20;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(read, family));
  for (it->Seek(SliceOf(prefix)); it->Valid() && it->key().starts_with(SliceOf(prefix));
       it->Next()) {
    Proto value;
    if (!value.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(absl::StrCat("checkpoint store ", path, ": the value of key '",
                                              absl::CEscape(it->key().ToString()), "' in '",
                                              family->GetName(), "' does not parse"));
    }
    if (absl::Status s = fn(it->key().ToString(), std::move(value)); !s.ok()) return s;
  }
  return FromRocksDb(
      it->status(), absl::StrCat("checkpoint store ", path, ": reading '", family->GetName(), "'"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Open(SpillOptions options) {
  options.column_families = {std::string(kMessagesFamily), std::string(kQueuesFamily),
                             std::string(kSessionsFamily), std::string(kPreparedFamily),
                             std::string(kMetaFamily)};
  absl::StatusOr<std::unique_ptr<SpillStore>> db = SpillStore::Open(options);
  if (!db.ok()) return db.status();
  return std::unique_ptr<Store>(new Store(*std::move(db)));
}

Store::Store(std::unique_ptr<SpillStore> db)
    : db_(std::move(db)),
      messages_(db_->column_family(kMessagesFamily)),
      queues_(db_->column_family(kQueuesFamily)),
      sessions_(db_->column_family(kSessionsFamily)),
      prepared_(db_->column_family(kPreparedFamily)),
      meta_(db_->column_family(kMetaFamily)) {
  assert(messages_ && queues_ && sessions_ && prepared_ && meta_);
}

Store::~Store() = default;

absl::StatusOr<std::optional<qmgr::v1::CheckpointMeta>> Store::ReadMeta() {
  std::string value;
  const rocksdb::Status s =
      db_->db()->Get(rocksdb::ReadOptions(), meta_, SliceOf(kMetaKey), &value);
  if (s.IsNotFound()) return std::nullopt;
  if (!s.ok()) return FromRocksDb(s, absl::StrCat("checkpoint store ", path(), ": reading meta"));
  qmgr::v1::CheckpointMeta meta;
  if (!meta.ParseFromString(value)) {
    return absl::DataLossError(
        absl::StrCat("checkpoint store ", path(), ": the checkpoint meta does not parse"));
  }
  return meta;
}

absl::Status Store::ForEachQueue(
    const std::function<absl::Status(std::string, qmgr::v1::StoredQueue)>& fn) {
  return ForEachValue<qmgr::v1::StoredQueue>(db_->db(), queues_, "", path(), fn);
}

absl::Status Store::ForEachSession(
    const std::function<absl::Status(std::string, qmgr::v1::StoredSession)>& fn) {
  return ForEachValue<qmgr::v1::StoredSession>(db_->db(), sessions_, "", path(), fn);
}

absl::Status Store::ForEachMessage(const std::function<absl::Status(qmgr::v1::StoredMessage)>& fn) {
  return ForEachValue<qmgr::v1::StoredMessage>(
      db_->db(), messages_, std::string(1, kImagePrefix), path(),
      [&](std::string, qmgr::v1::StoredMessage m) { return fn(std::move(m)); });
}

absl::Status Store::ForEachCoordinated(
    const std::function<absl::Status(std::string, qmgr::v1::StoredCoordinatedUnit)>& fn) {
  return ForEachValue<qmgr::v1::StoredCoordinatedUnit>(db_->db(), prepared_, "", path(), fn);
}

absl::StatusOr<std::string> Store::ReadPayload(uint64_t message_id) {
  std::string payload;
  const rocksdb::Status s = db_->db()->Get(rocksdb::ReadOptions(), messages_,
                                           MessageKey(kPayloadPrefix, message_id), &payload);
  if (!s.ok()) {
    return FromRocksDb(
        s, absl::StrCat("checkpoint store ", path(), ": payload of message ", message_id));
  }
  return payload;
}

absl::Status Store::Write(const CheckpointDelta& delta, const qmgr::v1::CheckpointMeta& meta,
                          WriteCounts* counts) {
  rocksdb::WriteBatch batch;
  std::string value;
  for (const CheckpointDelta::MessageImage& image : delta.messages) {
    const uint64_t id = image.image.message().id();
    image.image.SerializeToString(&value);
    batch.Put(messages_, MessageKey(kImagePrefix, id), value);
    ++counts->messages_written;
    if (image.payload_in_spill) {
      absl::StatusOr<std::string> payload = db_->Get(id);
      if (!payload.ok()) return payload.status();
      batch.Put(messages_, MessageKey(kPayloadPrefix, id), *payload);
      ++counts->payloads_written;
    } else if (image.payload != nullptr) {
      batch.Put(messages_, MessageKey(kPayloadPrefix, id), *image.payload);
      ++counts->payloads_written;
    }
  }
  for (const uint64_t id : delta.deleted_messages) {
    batch.Delete(messages_, MessageKey(kImagePrefix, id));
    batch.Delete(messages_, MessageKey(kPayloadPrefix, id));
    ++counts->messages_deleted;
  }
  for (const auto& [name, attributes] : delta.queues) {
    qmgr::v1::StoredQueue queue;
    *queue.mutable_attributes() = attributes;
    queue.SerializeToString(&value);
    batch.Put(queues_, name, value);
    ++counts->queues_written;
  }
  for (const std::string& name : delta.deleted_queues) {
    batch.Delete(queues_, name);
    ++counts->queues_deleted;
  }
  for (const auto& [name, session] : delta.sessions) {
    session.SerializeToString(&value);
    batch.Put(sessions_, name, value);
    ++counts->sessions_written;
  }
  for (const auto& [key, unit] : delta.coordinated) {
    unit.SerializeToString(&value);
    batch.Put(prepared_, key, value);
    ++counts->coordinated_written;
  }
  for (const std::string& key : delta.forgotten) {
    batch.Delete(prepared_, key);
    ++counts->coordinated_deleted;
  }
  meta.SerializeToString(&value);
  batch.Put(meta_, SliceOf(kMetaKey), value);
  counts->batch_bytes = batch.GetDataSize();
  rocksdb::WriteOptions write;
  write.sync = true;
  write.rate_limiter_priority = rocksdb::Env::IO_USER;  // paced (SpillOptions)
  return FromRocksDb(
      db_->db()->Write(write, &batch),
      absl::StrCat("checkpoint store ", path(), ": writing checkpoint ", meta.checkpoint_number()));
}

absl::Status Store::Flush(bool wait) {
  rocksdb::FlushOptions flush;
  flush.wait = wait;
  flush.allow_write_stall = true;
  return FromRocksDb(db_->db()->Flush(flush, {messages_, queues_, sessions_, prepared_, meta_}),
                     absl::StrCat("checkpoint store ", path(), ": flushing"));
}

absl::Status Store::Discard(
    bool keep_definitions,
    const std::map<std::string, std::optional<qmgr::v1::QueueAttributes>>& definitions,
    const qmgr::v1::CheckpointMeta& meta) {
  rocksdb::WriteBatch batch;
  // Keys are names of at most 48 bytes or 9-byte message keys: all sort below this.
  const std::string end(64, '\xff');
  batch.DeleteRange(messages_, "", end);
  batch.DeleteRange(sessions_, "", end);
  batch.DeleteRange(prepared_, "", end);
  std::string value;
  if (!keep_definitions) {
    batch.DeleteRange(queues_, "", end);
  } else {
    for (const auto& [name, attributes] : definitions) {
      if (!attributes) {
        batch.Delete(queues_, name);
        continue;
      }
      qmgr::v1::StoredQueue queue;
      *queue.mutable_attributes() = *attributes;
      queue.SerializeToString(&value);
      batch.Put(queues_, name, value);
    }
  }
  meta.SerializeToString(&value);
  batch.Put(meta_, SliceOf(kMetaKey), value);
  rocksdb::WriteOptions write;
  write.sync = true;
  return FromRocksDb(db_->db()->Write(write, &batch),
                     absl::StrCat("checkpoint store ", path(), ": cold start"));
}

absl::StatusOr<std::unique_ptr<StoreReader>> StoreReader::Open(const std::string& path) {
  rocksdb::DBOptions options;
  const std::string context = absl::StrCat("checkpoint store ", path);
  if (options.env->FileExists(path + "/CURRENT").IsNotFound()) {
    return absl::NotFoundError(absl::StrCat(context, ": no store there"));
  }
  std::vector<std::string> names;
  if (rocksdb::Status s = rocksdb::DB::ListColumnFamilies(options, path, &names); !s.ok()) {
    return FromRocksDb(s, absl::StrCat(context, ": listing column families"));
  }
  // A read-only open may name a subset: the spill is none of ours.
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (const std::string& name : names) {
    if (name == kSpillColumnFamily) continue;
    families.emplace_back(name, rocksdb::ColumnFamilyOptions());
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  if (rocksdb::Status s = rocksdb::DB::OpenForReadOnly(options, path, families, &handles, &db);
      !s.ok()) {
    return FromRocksDb(s, absl::StrCat(context, ": opening read-only"));
  }
  return std::unique_ptr<StoreReader>(
      new StoreReader(path, std::unique_ptr<rocksdb::DB>(db), std::move(handles)));
}

StoreReader::StoreReader(std::string path, std::unique_ptr<rocksdb::DB> db,
                         std::vector<rocksdb::ColumnFamilyHandle*> handles)
    : path_(std::move(path)), db_(std::move(db)), handles_(std::move(handles)) {}

StoreReader::~StoreReader() {
  for (rocksdb::ColumnFamilyHandle* handle : handles_) db_->DestroyColumnFamilyHandle(handle);
}

rocksdb::ColumnFamilyHandle* StoreReader::Family(absl::string_view name) const {
  for (rocksdb::ColumnFamilyHandle* handle : handles_) {
    if (handle->GetName() == name) return handle;
  }
  return nullptr;
}

absl::StatusOr<std::optional<qmgr::v1::CheckpointMeta>> StoreReader::ReadMeta() {
  rocksdb::ColumnFamilyHandle* meta = Family(kMetaFamily);
  if (meta == nullptr) return std::nullopt;
  std::string value;
  const rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), meta, SliceOf(kMetaKey), &value);
  if (s.IsNotFound()) return std::nullopt;
  if (!s.ok()) return FromRocksDb(s, absl::StrCat("checkpoint store ", path_, ": reading meta"));
  qmgr::v1::CheckpointMeta parsed;
  if (!parsed.ParseFromString(value)) {
    return absl::DataLossError(
        absl::StrCat("checkpoint store ", path_, ": the checkpoint meta does not parse"));
  }
  return parsed;
}

absl::StatusOr<std::optional<qmgr::v1::StoredMessage>> StoreReader::ReadMessage(
    uint64_t message_id) {
  rocksdb::ColumnFamilyHandle* messages = Family(kMessagesFamily);
  if (messages == nullptr) return std::nullopt;
  std::string value;
  const rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), messages, MessageKey(kImagePrefix, message_id), &value);
  if (s.IsNotFound()) return std::nullopt;
  if (!s.ok()) {
    return FromRocksDb(s, absl::StrCat("checkpoint store ", path_, ": message ", message_id));
  }
  qmgr::v1::StoredMessage image;
  if (!image.ParseFromString(value)) {
    return absl::DataLossError(absl::StrCat("checkpoint store ", path_, ": the image of message ",
                                            message_id, " does not parse"));
  }
  return image;
}

absl::Status StoreReader::ForEachQueue(
    const std::function<absl::Status(std::string, qmgr::v1::StoredQueue)>& fn) {
  rocksdb::ColumnFamilyHandle* family = Family(kQueuesFamily);
  if (family == nullptr) return absl::OkStatus();
  return ForEachValue<qmgr::v1::StoredQueue>(db_.get(), family, "", path_, fn);
}

absl::Status StoreReader::ForEachSession(
    const std::function<absl::Status(std::string, qmgr::v1::StoredSession)>& fn) {
  rocksdb::ColumnFamilyHandle* family = Family(kSessionsFamily);
  if (family == nullptr) return absl::OkStatus();
  return ForEachValue<qmgr::v1::StoredSession>(db_.get(), family, "", path_, fn);
}

absl::Status StoreReader::ForEachCoordinated(
    const std::function<absl::Status(std::string, qmgr::v1::StoredCoordinatedUnit)>& fn) {
  rocksdb::ColumnFamilyHandle* family = Family(kPreparedFamily);
  if (family == nullptr) return absl::OkStatus();
  return ForEachValue<qmgr::v1::StoredCoordinatedUnit>(db_.get(), family, "", path_, fn);
}

}  // namespace qmgr::checkpoint
