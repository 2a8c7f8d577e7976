// An in-memory qmgr::log::FileSystem that models what a crash keeps, and
// injects the faults a real disk produces: a test seam for proving crash
// safety, not a mock. Code under test runs unchanged against it.
//
// Model. Every file has `current` bytes (what reads see) and `durable` bytes
// (what survives a crash). Write changes current only and remembers what it
// changed (dirty 4096-byte blocks, and the writes in order); File::Sync copies
// current to durable. Truncation by OpenMode::kCreateTruncate is likewise
// durable only after Sync. Every directory has a `current` and a `durable`
// set of entries, each mapping a name to a file: creating a file, Rename and
// Remove change the current set; SyncDir copies current to durable. A crash
// (SimulateCrash) reverts every directory to its durable set, so a file whose
// entry was never made durable is forgotten, and rebuilds every file from its
// durable bytes plus whatever unsynced bytes the crash mode lets through.
//
// Paths are plain strings compared as written (only trailing '/' is dropped);
// "a/b" lives in directory "a", a name without '/' lives in ".". The roots
// "/" and "." always exist. Directories are explicit: CreateDir of the parent
// must come first, as with mkdir(2). Directories themselves are durable as
// soon as they are created and cannot be removed or renamed.
//
// Thread-safe. One mutex guards the whole file system; a Sync held at the
// sync gate waits on a separate mutex, so a blocked Sync never blocks other
// operations.
#ifndef QMGR_TESTS_SUPPORT_FAULT_FILE_SYSTEM_H_
#define QMGR_TESTS_SUPPORT_FAULT_FILE_SYSTEM_H_

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "log/file.h"

namespace qmgr::testing {

// What a simulated crash keeps of each file's unsynced writes (synced bytes
// and durable directory entries are always kept).
enum class CrashMode {
  // Nothing: every file is exactly its durable bytes and size.
  kDropUnsynced,
  // Each dirty 4096-byte block independently survives with probability 1/2,
  // with its pre-crash contents (the disk wrote some pages and not others).
  kKeepRandomBlocks,
  // Every unsynced write survives except the file's last one, which survives
  // only up to a random byte count in [0, len) (a write torn mid-way).
  kTearLastWrite,
  // Each dirty block survives with probability 1/2 (as kKeepRandomBlocks),
  // and one dirty block, chosen at random, is torn: it survives only up to a
  // random byte within it. The seeded crash simulation's mode.
  kRandomBlocksTorn,
};

class FaultFileSystem final : public log::FileSystem {
 public:
  FaultFileSystem();
  ~FaultFileSystem() override;
  FaultFileSystem(const FaultFileSystem&) = delete;
  FaultFileSystem& operator=(const FaultFileSystem&) = delete;

  // --- log::FileSystem ------------------------------------------------------
  // Open: NotFound if the parent directory or (kRead, kReadWrite) the file is
  // missing. A File opened kRead fails Write with EBADF.
  absl::StatusOr<std::unique_ptr<log::File>> Open(const std::string& path,
                                                  log::OpenMode mode) override;
  absl::Status CreateDir(const std::string& path) override;
  // Current entries: file names plus subdirectory names.
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) override;
  // Removes the file's current entry; a durable entry keeps the bytes alive
  // until SyncDir or a crash decides.
  absl::Status Remove(const std::string& path) override;
  // Moves a file's current entry (replacing any file at `to`); the contents
  // are shared, not copied. Directories cannot be renamed.
  absl::Status Rename(const std::string& from, const std::string& to) override;
  // Makes the directory's current entries durable. Never gated or failed.
  absl::Status SyncDir(const std::string& path) override;
  absl::StatusOr<bool> Exists(const std::string& path) override;
  // Locks are per path, released when the lock object goes or at a crash.
  absl::StatusOr<std::unique_ptr<log::FileLock>> Lock(const std::string& path) override;

  // --- Write faults ---------------------------------------------------------
  // The (n+1)-th File::Write from now fails with `errno_value` (n = 0: the
  // next one), writing nothing; later writes succeed again. Replaces any
  // pending FailWriteAfter.
  void FailWriteAfter(int n, int errno_value);
  // Every File::Write fails with `errno_value`, writing nothing, until
  // ClearWriteFailures (which also cancels a pending FailWriteAfter).
  void FailWritesWithErrno(int errno_value);
  void ClearWriteFailures();

  // --- Sync faults ----------------------------------------------------------
  // The (n+1)-th File::Sync from now fails once with `errno_value` and makes
  // nothing durable, as fdatasync may after an I/O error. The File that saw
  // the failure is marked: any further Sync on it is counted by
  // SyncsAfterFailure (code under test must never do this, since a real
  // kernel may have dropped the dirty pages) and also fails.
  void FailSyncAfter(int n, int errno_value);
  int SyncsAfterFailure() const;
  // Sync returns OK but makes nothing durable: a disk that lies. For proving
  // that a checker notices lost acknowledged data.
  void SetLyingSync(bool lying);

  // --- Space ----------------------------------------------------------------
  // The sum of all files' current sizes may not exceed `bytes`: a Write that
  // would grow the sum beyond it fails with ENOSPC (ResourceExhausted) and
  // writes nothing. Writes within a file's current size never fail for space.
  void SetSpaceLimit(uint64_t bytes);
  void ClearSpaceLimit();

  // --- Sync gate ------------------------------------------------------------
  // While the gate is closed every File::Sync blocks on entry, before doing
  // anything, until OpenSyncGate. Lets a test hold a group commit mid-flight.
  // With a suffix, only Syncs of files whose path ends with it are held (the
  // log's segments, ".qlog", and not the allocator's ".qlog.tmp").
  void CloseSyncGate(std::string path_suffix = "");
  void OpenSyncGate();
  // How many Syncs are blocked at the gate now.
  int SyncsWaitingAtGate() const;
  // Waits until at least `n` Syncs are blocked at the gate; false on timeout.
  bool AwaitSyncsAtGate(int n, absl::Duration timeout) const;

  // --- Counters -------------------------------------------------------------
  // File::Sync calls that returned OK (lying ones included).
  int64_t SyncCount() const;
  // The same, only for Files opened with a path containing `path_part`.
  int64_t SyncCount(const std::string& path_part) const;
  // File::Write calls that returned OK.
  int64_t WriteCount() const;
  // SyncDir calls that returned OK.
  int64_t DirSyncCount() const;

  // --- Crash ----------------------------------------------------------------
  // Power loss. Every File opened before it fails every later operation with
  // FailedPrecondition; directories revert to their durable entries; each
  // file becomes its durable bytes plus what `mode` keeps of unsynced writes
  // (size: durable size for kDropUnsynced, else max(durable size, end of the
  // kept bytes)), and all of it is durable afterwards. Random choices come
  // from std::mt19937_64 seeded with `seed`, so a seed reproduces a crash.
  // Fault controls and the gate are left as they are.
  void SimulateCrash(CrashMode mode, uint64_t seed);
  // The process using the file system dies now: every operation, on the file
  // system or an open file, fails until Thaw(). A test whose log has threads
  // running freezes at the crash point, stops and destroys the log, then calls
  // SimulateCrash and Thaw, so that no thread of the dead process writes to
  // the disk the next one boots from.
  void Freeze();
  void Thaw();
  // SimulateCrash(CrashMode::kDropUnsynced, 0).
  void DropUnsyncedData();

  // --- Byte surgery (bypasses every fault and counter) ----------------------
  // The file's current bytes.
  absl::StatusOr<std::string> ReadWholeFile(const std::string& path);
  // Creates or replaces the file's contents, durably, entry included.
  absl::Status WriteWholeFileDurably(const std::string& path, absl::string_view contents);
  // XORs 0x55 into the byte at `offset`, in current and durable bytes alike.
  absl::Status CorruptByte(const std::string& path, uint64_t offset);

 private:
  class FaultFile;  // the log::File handed out by Open

  struct UnsyncedWrite {
    uint64_t offset;
    std::string data;
  };
  // A file's contents. Guarded by mu_ (not expressible per field).
  struct Node {
    std::string current;
    std::string durable;
    std::set<uint64_t> dirty_blocks;             // indexes of 4096-byte blocks
    std::vector<UnsyncedWrite> unsynced_writes;  // since the last Sync, in order
  };
  struct Dir {
    std::map<std::string, std::shared_ptr<Node>> current;
    std::map<std::string, std::shared_ptr<Node>> durable;
  };

  absl::Status CheckLive(const FaultFile& file) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FileWrite(FaultFile& file, uint64_t offset, absl::string_view data);
  absl::StatusOr<size_t> FileRead(FaultFile& file, uint64_t offset, size_t n, char* scratch);
  absl::Status FileSync(FaultFile& file);
  absl::StatusOr<uint64_t> FileSize(FaultFile& file);

  // The directory holding `path`, or nullptr.
  Dir* ParentDir(const std::string& path) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The file at `path` in its directory's current entries, or nullptr.
  std::shared_ptr<Node> FindFile(const std::string& path) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sum of current sizes of the files reachable by current entries, except
  // `skip`.
  uint64_t CurrentBytesExcept(const Node* skip) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a Sync of `path` is held at the gate.
  bool Gated(const std::string& path) const ABSL_SHARED_LOCKS_REQUIRED(gate_mu_);

  mutable absl::Mutex mu_;
  std::map<std::string, Dir> dirs_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;                           // bumped by every crash
  absl::flat_hash_map<std::string, uint64_t> locks_ ABSL_GUARDED_BY(mu_);  // path -> generation
  void Unlock(const std::string& path, uint64_t generation);

  int write_fail_countdown_ ABSL_GUARDED_BY(mu_) = -1;  // -1: none pending
  int write_fail_errno_ ABSL_GUARDED_BY(mu_) = 0;
  int all_writes_fail_errno_ ABSL_GUARDED_BY(mu_) = 0;  // 0: writes succeed
  int sync_fail_countdown_ ABSL_GUARDED_BY(mu_) = -1;
  int sync_fail_errno_ ABSL_GUARDED_BY(mu_) = 0;
  int syncs_after_failure_ ABSL_GUARDED_BY(mu_) = 0;
  // Files (by FaultFile id) whose Sync failed, and the errno it failed with.
  std::map<uint64_t, int> failed_sync_errno_ ABSL_GUARDED_BY(mu_);
  uint64_t next_file_id_ ABSL_GUARDED_BY(mu_) = 0;
  bool lying_sync_ ABSL_GUARDED_BY(mu_) = false;
  bool frozen_ ABSL_GUARDED_BY(mu_) = false;
  bool has_space_limit_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t space_limit_ ABSL_GUARDED_BY(mu_) = 0;

  int64_t sync_count_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int64_t> sync_count_by_path_ ABSL_GUARDED_BY(mu_);
  int64_t write_count_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t dir_sync_count_ ABSL_GUARDED_BY(mu_) = 0;

  // Never held together with mu_.
  mutable absl::Mutex gate_mu_;
  bool gate_closed_ ABSL_GUARDED_BY(gate_mu_) = false;
  std::string gate_suffix_ ABSL_GUARDED_BY(gate_mu_);
  int syncs_at_gate_ ABSL_GUARDED_BY(gate_mu_) = 0;
};

}  // namespace qmgr::testing

#endif  // QMGR_TESTS_SUPPORT_FAULT_FILE_SYSTEM_H_
