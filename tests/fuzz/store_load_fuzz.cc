// Fuzz target for the checkpoint store's values as restart decodes and uses
// them (checkpoint/store.h: StoredQueue, StoredSession, StoredMessage and its
// payload key, StoredCoordinatedUnit and its key, CheckpointMeta). The input
// is a list of raw puts and deletes applied to a real store that a real
// queue manager wrote (queues, messages, a session, a unit in doubt); then
// restart opens it. Restart must answer, OK or an error that says why,
// without crashing, hanging or allocating without bound; and what it
// restores must be readable.
//
// Input: entries of [family (low 3 bits; bit 7: delete)] [key length, 1 byte]
// [key] [value length, 2 bytes little-endian] [value].
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/stubs/logging.h"
#include "restart/restart.h"
#include "rocksdb/db.h"
#include "tests/support/temp_dir.h"

namespace {

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

}  // namespace

namespace qmgr {
namespace {

restart::RestartOptions OptionsFor(const std::string& data_dir) {
  restart::RestartOptions options;
  options.data_dir = data_dir;
  options.qmgr_name = "QM1";
  options.log.segment_bytes = 64 << 10;
  options.store_write_buffer_bytes = 1 << 20;
  options.engine.reaper_interval = absl::ZeroDuration();
  options.automatic_checkpoints = false;
  return options;
}

// A data directory written by a real queue manager, made once.
const std::string& Template() {
  static testing::TempDir* dir = new testing::TempDir();
  static const std::string path = [] {
    const std::string data = dir->path() + "/qm";
    auto qm = restart::Restart(OptionsFor(data));
    Check(qm.ok());
    Engine* engine = (*qm)->engine();
    qmgr::v1::QueueAttributes in;
    in.set_max_depth(100);
    in.set_backout_threshold(2);
    in.set_backout_queue("POISON");
    qmgr::v1::QueueAttributes out;
    out.set_output_of_session("T1");
    Check(engine->DefineQueue("POISON", {}).ok());
    Check(engine->DefineQueue("IN", in).ok());
    Check(engine->DefineQueue("TOUT", out).ok());
    for (int i = 0; i < 6; ++i) {
      MessageSpec spec;
      spec.queue = i % 2 ? "IN" : "TOUT";
      spec.payload = std::string(10 + i * 100, static_cast<char>('a' + i));
      spec.correlation_id = absl::StrCat("c", i);
      Check(engine->Enqueue(std::move(spec)).ok());
    }
    Check(engine->OpenSession("T1", /*cold=*/false).ok());
    MessageSpec input;
    input.queue = "IN";
    input.payload = "input";
    input.origin_session = "T1";
    input.input_seq = 1;
    Check(engine->Enqueue(std::move(input)).ok());
    absl::StatusOr<UowId> uow = engine->BeginCoordinatedUnit({"CICS", "QM1", "xid-1"});
    Check(uow.ok());
    GetOptions get;
    get.uow = *uow;
    get.queue = "IN";
    Check(engine->Get(get).ok());
    Check(engine->Prepare(*uow).ok());
    Check((*qm)->Shutdown().ok());
    return data;
  }();
  return path;
}

struct RawStore {
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> families;
  std::vector<std::string> names;

  explicit RawStore(const std::string& path) {
    rocksdb::DBOptions options;
    Check(rocksdb::DB::ListColumnFamilies(options, path, &names).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
    for (const std::string& name : names)
      descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());
    rocksdb::DB* raw = nullptr;
    Check(rocksdb::DB::Open(options, path, descriptors, &families, &raw).ok());
    db.reset(raw);
  }
  ~RawStore() {
    for (rocksdb::ColumnFamilyHandle* family : families) db->DestroyColumnFamilyHandle(family);
  }
};

void Observe(Engine* engine) {
  for (const QueueStatus& queue : engine->DisplayQueues()) {
    absl::StatusOr<std::vector<qmgr::v1::Message>> messages =
        engine->Browse(queue.name, std::numeric_limits<size_t>::max());
    Check(messages.ok() || !messages.status().message().empty());
    GetOptions get;
    get.queue = queue.name;
    absl::StatusOr<GetResult> got = engine->Get(get);  // reads a payload left in the store
    if (got.ok()) engine->Backout(got->uow).IgnoreError();
  }
  engine->InDoubtUnits("", "");
  engine->DisplaySessions({}).IgnoreError();
}

}  // namespace
}  // namespace qmgr

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qmgr;
  static testing::TempDir* work = new testing::TempDir();
  static const bool quiet = [] {  // values that do not parse are expected here
    google::protobuf::SetLogHandler(nullptr);
    return true;
  }();
  (void)quiet;
  const std::string dir = work->path() + "/qm";
  std::filesystem::remove_all(dir);
  std::filesystem::copy(Template(), dir, std::filesystem::copy_options::recursive);
  {
    RawStore store(dir + "/store");
    size_t at = 0;
    while (at + 2 <= size) {
      const uint8_t family = data[at] & 7;
      const bool remove = (data[at] & 0x80) != 0;
      const size_t key_bytes = data[at + 1];
      at += 2;
      if (at + key_bytes + 2 > size) break;
      const rocksdb::Slice key(reinterpret_cast<const char*>(data + at), key_bytes);
      at += key_bytes;
      const size_t value_bytes = std::min<size_t>(data[at] | (data[at + 1] << 8), size - at - 2);
      at += 2;
      const rocksdb::Slice value(reinterpret_cast<const char*>(data + at), value_bytes);
      at += value_bytes;
      rocksdb::ColumnFamilyHandle* handle = store.families[family % store.families.size()];
      if (remove) {
        Check(store.db->Delete(rocksdb::WriteOptions(), handle, key).ok());
      } else {
        Check(store.db->Put(rocksdb::WriteOptions(), handle, key, value).ok());
      }
    }
  }
  absl::StatusOr<std::unique_ptr<restart::QueueManager>> qm = restart::Restart(OptionsFor(dir));
  if (!qm.ok()) {
    Check(!qm.status().message().empty());
    return 0;
  }
  Observe((*qm)->engine());
  return 0;
}

// Seeds: the template's own entries, all together and one family at a time.
std::vector<std::string> FuzzSeeds() {
  using namespace qmgr;
  RawStore store(Template() + "/store");
  std::vector<std::string> seeds(store.families.size() + 1);
  for (size_t f = 0; f < store.families.size(); ++f) {
    std::unique_ptr<rocksdb::Iterator> it(
        store.db->NewIterator(rocksdb::ReadOptions(), store.families[f]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (it->key().size() > 255 || it->value().size() > 65535) continue;
      std::string entry(1, static_cast<char>(f));
      entry.push_back(static_cast<char>(it->key().size()));
      entry.append(it->key().data(), it->key().size());
      entry.push_back(static_cast<char>(it->value().size() & 0xff));
      entry.push_back(static_cast<char>(it->value().size() >> 8));
      entry.append(it->value().data(), it->value().size());
      seeds[f] += entry;
      seeds.back() += entry;
    }
  }
  std::erase_if(seeds, [](const std::string& s) { return s.empty(); });
  return seeds;
}
