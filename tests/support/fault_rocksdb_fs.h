// A rocksdb::FileSystem over real files that can drop what a power loss
// would: a test seam for crash tests of the RocksDB store, not a mock. The
// store runs unchanged on it through an Env:
//
//   auto fs = std::make_shared<FaultRocksFileSystem>();
//   std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
//   options.env = env.get();  // env and fs must outlive the DB
//
// A crash is Freeze(), destroy the DB, DropUnsyncedData(), Thaw(), reopen.
//
// Model. Everything on disk when the file system is made (and after each
// DropUnsyncedData) counts as durable. From then on it tracks:
//  - Files, by path: each file opened for writing (NewWritableFile,
//    ReopenWritableFile, ReuseWritableFile) has a synced size, the bytes
//    written through it before its last successful Sync or Fsync. Close,
//    Flush and RangeSync make nothing durable (sync_file_range(2) neither
//    flushes the disk's cache nor the file's metadata). The crash truncates
//    the file to its synced size. NewWritableFile on an existing file
//    truncates it; until the next Sync a crash brings the old durable
//    contents back. A tracked file keeps its state across RenameFile.
//  - Directory entries, per directory: the first time a name is created,
//    deleted, renamed from or to, or linked to since the directory's last
//    FSDirectory::Fsync (or FsyncWithDirOptions, taken as a whole-directory
//    fsync), the name's durable state is recorded: absent, or the durable
//    bytes of the file it held (read into memory then). The crash restores
//    every recorded name: removes it, or rewrites those bytes under it.
//
// Not modelled (documented limits):
//  - Partial loss: a crash keeps exactly the synced bytes, never some of the
//    unsynced ones or a torn write.
//  - Overwrites in place: bytes below a file's synced size are never undone,
//    and files opened by NewRandomRWFile are not tracked (their entry is).
//  - ReuseWritableFile (WAL recycling) is a rename followed by a new file:
//    a crash keeps none of the recycled file's old bytes.
//  - Truncate (of a file or through a writer) is durable at once, shrinking
//    the synced size.
//  - Directories are durable as soon as CreateDir returns; DeleteDir and
//    hard links' contents (LinkFile records the new name only) are not
//    modelled.
//  - The info LOG (NewLogger) and LockFile/UnlockFile go straight to the
//    base file system, frozen or not: the LOG is diagnostic, and a dead DB's
//    lock must be released so that the next one can open.
//  - Files written other than through this object.
// The bytes of deleted durable files are held in memory until their
// directory is fsynced: fine for test-sized stores.
//
// Paths are compared as written after collapsing repeated '/' and dropping a
// trailing one (RocksDB names files <dir>/<name>, as given to NewDirectory).
//
// Thread-safe: RocksDB's background threads may use it concurrently.
#ifndef QMGR_TESTS_SUPPORT_FAULT_ROCKSDB_FS_H_
#define QMGR_TESTS_SUPPORT_FAULT_ROCKSDB_FS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "rocksdb/file_system.h"

namespace qmgr::testing {

class FaultRocksFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  explicit FaultRocksFileSystem(
      std::shared_ptr<rocksdb::FileSystem> base = rocksdb::FileSystem::Default());
  FaultRocksFileSystem(const FaultRocksFileSystem&) = delete;
  FaultRocksFileSystem& operator=(const FaultRocksFileSystem&) = delete;

  const char* Name() const override { return "FaultRocksFileSystem"; }

  // --- Crash ----------------------------------------------------------------
  // Power is lost: every later write, sync, create, rename, delete, link,
  // truncate, file close or directory create/delete through this object (or
  // a file or directory it opened) fails with IOError, writing nothing. Waits
  // for such operations already running, so once it returns nothing through
  // this object changes the disk. Reads still work.
  void Freeze();
  // Writes work again.
  void Thaw();
  // The crash itself. REQUIRES: frozen, and nothing still writing (destroy
  // the DB first). Truncates every tracked file to its synced size (or
  // restores its contents from before a truncating open), then restores
  // every recorded directory entry, and forgets all tracking: what is on
  // disk afterwards is durable. FailedPrecondition if not frozen; the first
  // I/O error otherwise, after trying everything.
  absl::Status DropUnsyncedData();

  // Syncs (file and directory) report success but make nothing durable: a
  // disk that lies. For proving that a checker notices lost data.
  void SetLyingSync(bool lying);

  // --- Counters (never reset) -----------------------------------------------
  // Sync/Fsync calls on tracked files that returned OK (lying ones
  // included).
  int64_t SyncCount() const;
  // Directory fsyncs that returned OK (lying ones included).
  int64_t DirSyncCount() const;
  // Appends that returned OK.
  int64_t WriteCount() const;
  // Operations refused because frozen.
  int64_t FrozenRejectCount() const;
  // Unsynced bytes DropUnsyncedData discarded from tracked files.
  int64_t BytesDropped() const;
  // Directory entries DropUnsyncedData removed or restored.
  int64_t EntriesUndone() const;

  // --- rocksdb::FileSystem --------------------------------------------------
  rocksdb::IOStatus NewWritableFile(const std::string& fname, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReopenWritableFile(const std::string& fname,
                                       const rocksdb::FileOptions& options,
                                       std::unique_ptr<rocksdb::FSWritableFile>* result,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReuseWritableFile(const std::string& fname, const std::string& old_fname,
                                      const rocksdb::FileOptions& options,
                                      std::unique_ptr<rocksdb::FSWritableFile>* result,
                                      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewRandomRWFile(const std::string& fname, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSRandomRWFile>* result,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewDirectory(const std::string& name, const rocksdb::IOOptions& options,
                                 std::unique_ptr<rocksdb::FSDirectory>* result,
                                 rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus DeleteFile(const std::string& fname, const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus RenameFile(const std::string& src, const std::string& target,
                               const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus LinkFile(const std::string& src, const std::string& target,
                             const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus Truncate(const std::string& fname, size_t size,
                             const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus CreateDir(const std::string& dirname, const rocksdb::IOOptions& options,
                              rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus CreateDirIfMissing(const std::string& dirname,
                                       const rocksdb::IOOptions& options,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus DeleteDir(const std::string& dirname, const rocksdb::IOOptions& options,
                              rocksdb::IODebugContext* dbg) override;

 private:
  class TrackedWritableFile;
  class GuardedRandomRWFile;
  class TrackedDirectory;

  // A file opened for writing through this object. Guarded by mu_.
  struct FileState {
    uint64_t size = 0;         // end of the bytes written so far
    uint64_t synced_size = 0;  // what a crash keeps
    // The durable contents before a truncating open, until the next sync.
    std::optional<std::string> restore_if_unsynced;
  };
  // A name changed since its directory's last fsync.
  struct PendingEntry {
    std::optional<std::string> durable;  // nullopt: absent; else the bytes
    uint64_t last_change = 0;            // from next_change_
  };
  using PendingEntries = std::map<std::string, PendingEntry>;

  // Runs `op` unless frozen; Freeze waits for it.
  template <typename Op>
  rocksdb::IOStatus Mutate(Op op) ABSL_LOCKS_EXCLUDED(io_mu_, mu_);
  rocksdb::IOStatus FrozenError() ABSL_LOCKS_EXCLUDED(mu_);

  // The bytes a crash now would leave at `path` (which exists).
  rocksdb::IOStatus DurableContents(const std::string& path, std::string* contents)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records the durable state of `path`'s entry, unless already recorded
  // since its directory's last fsync. Call before changing the entry.
  rocksdb::IOStatus NoteEntryChange(const std::string& path) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Tracks a file just opened for writing at `path` and wraps it.
  std::unique_ptr<rocksdb::FSWritableFile> Track(const std::string& path,
                                                 std::shared_ptr<FileState> state,
                                                 std::unique_ptr<rocksdb::FSWritableFile> file)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The writers' and directories' operations.
  // An append when `offset` is nullopt.
  void NoteWrite(FileState& state, std::optional<uint64_t> offset, uint64_t n)
      ABSL_LOCKS_EXCLUDED(mu_);
  void NoteTruncate(FileState& state, uint64_t size) ABSL_LOCKS_EXCLUDED(mu_);
  template <typename Op>
  rocksdb::IOStatus SyncFile(FileState& state, Op sync);
  template <typename Op>
  rocksdb::IOStatus SyncDir(const std::string& dir, Op fsync);

  // Held shared by every mutating operation, exclusively by Freeze, Thaw and
  // DropUnsyncedData. Acquired before mu_.
  mutable absl::Mutex io_mu_;
  bool frozen_ ABSL_GUARDED_BY(io_mu_) = false;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<FileState>> files_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, PendingEntries> dirs_ ABSL_GUARDED_BY(mu_);
  // Orders entry changes against directory fsyncs: a fsync covers only the
  // changes made before it started.
  uint64_t next_change_ ABSL_GUARDED_BY(mu_) = 0;
  bool lying_sync_ ABSL_GUARDED_BY(mu_) = false;
  int64_t sync_count_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t dir_sync_count_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t write_count_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t frozen_reject_count_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t bytes_dropped_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t entries_undone_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace qmgr::testing

#endif  // QMGR_TESTS_SUPPORT_FAULT_ROCKSDB_FS_H_
