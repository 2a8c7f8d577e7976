// The small file interface every byte of the log goes through.
//
// Production uses PosixFileSystem. Tests substitute a fault-injecting layer
// (tests/support/fault_file_system.h) that drops unsynced writes, fails a
// chosen write or sync, holds syncs at a gate or fills the disk: a test seam
// for proving crash safety, not a mock.
//
// Errors: ENOSPC maps to ResourceExhausted; every other I/O error to
// Internal/NotFound/AlreadyExists as its errno says, message naming the path.
#ifndef QMGR_LOG_FILE_H_
#define QMGR_LOG_FILE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace qmgr::log {

class File {
 public:
  virtual ~File() = default;
  // Writes all of `data` at `offset` (a short write is retried inside).
  virtual absl::Status Write(uint64_t offset, absl::string_view data) = 0;
  // Reads up to `n` bytes at `offset` into `scratch`; fewer only at end of file.
  virtual absl::StatusOr<size_t> Read(uint64_t offset, size_t n, char* scratch) = 0;
  // fdatasync. After a failure the caller must never call Sync on this file
  // again: the kernel may have dropped the dirty pages and a later success
  // would lie.
  virtual absl::Status Sync() = 0;
  virtual absl::StatusOr<uint64_t> Size() = 0;
};

// Held while it lives; see FileSystem::Lock.
class FileLock {
 public:
  virtual ~FileLock() = default;
};

enum class OpenMode {
  kRead,            // existing file, read only
  kReadWrite,       // existing file
  kCreateTruncate,  // created if missing, emptied if present
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;
  virtual absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path, OpenMode mode) = 0;
  // Creates the directory if it does not exist (not its parents).
  virtual absl::Status CreateDir(const std::string& path) = 0;
  // Names (not paths) of the entries of a directory, unsorted.
  virtual absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) = 0;
  virtual absl::Status Remove(const std::string& path) = 0;
  // Atomic within a file system; the caller syncs the directories.
  virtual absl::Status Rename(const std::string& from, const std::string& to) = 0;
  // Makes the directory's entries (creations, renames, removals) durable.
  virtual absl::Status SyncDir(const std::string& path) = 0;
  virtual absl::StatusOr<bool> Exists(const std::string& path) = 0;
  // An exclusive lock on `path` (created if missing) for as long as the
  // returned object lives; FailedPrecondition if another holder has it.
  virtual absl::StatusOr<std::unique_ptr<FileLock>> Lock(const std::string& path) = 0;
};

// The real thing: pread/pwrite/fdatasync on file descriptors.
FileSystem* PosixFileSystem();

// An error status for `errno_value` from `operation` on `path`.
absl::Status ErrnoStatus(int errno_value, absl::string_view operation, absl::string_view path);

}  // namespace qmgr::log

#endif  // QMGR_LOG_FILE_H_
