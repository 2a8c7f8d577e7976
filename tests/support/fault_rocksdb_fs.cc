#include "tests/support/fault_rocksdb_fs.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace qmgr::testing {
namespace {

using rocksdb::IODebugContext;
using rocksdb::IOOptions;
using rocksdb::IOStatus;

std::string Normalize(absl::string_view path) {
  std::string out;
  out.reserve(path.size());
  for (char c : path) {
    if (c != '/' || out.empty() || out.back() != '/') out.push_back(c);
  }
  if (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

// The directory holding normalized `path`, named as NewDirectory would be.
std::string DirOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string BaseOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string Join(const std::string& dir, const std::string& name) {
  if (dir == ".") return name;
  return dir == "/" ? "/" + name : dir + "/" + name;
}

bool Exists(rocksdb::FileSystem& fs, const std::string& path) {
  return fs.FileExists(path, IOOptions(), nullptr).ok();
}

// Through a writer: the Posix file system has no Truncate by name.
IOStatus TruncateFile(rocksdb::FileSystem& fs, const std::string& path, uint64_t size) {
  std::unique_ptr<rocksdb::FSWritableFile> file;
  IOStatus s = fs.ReopenWritableFile(path, rocksdb::FileOptions(), &file, nullptr);
  if (s.ok()) s = file->Truncate(size, IOOptions(), nullptr);
  if (s.ok()) s = file->Close(IOOptions(), nullptr);
  return s;
}

}  // namespace

template <typename Op>
IOStatus FaultRocksFileSystem::Mutate(Op op) {
  absl::ReaderMutexLock l(&io_mu_);
  if (frozen_) return FrozenError();
  return op();
}

IOStatus FaultRocksFileSystem::FrozenError() {
  absl::MutexLock l(&mu_);
  ++frozen_reject_count_;
  return IOStatus::IOError("FaultRocksFileSystem: frozen (simulated power loss)");
}

template <typename Op>
IOStatus FaultRocksFileSystem::SyncFile(FileState& state, Op sync) {
  return Mutate([&]() -> IOStatus {
    uint64_t size;
    {
      absl::MutexLock l(&mu_);
      if (lying_sync_) {
        ++sync_count_;
        return IOStatus::OK();
      }
      // Only the bytes written before the sync starts are sure to be covered.
      size = state.size;
    }
    IOStatus s = sync();
    if (!s.ok()) return s;
    absl::MutexLock l(&mu_);
    ++sync_count_;
    state.synced_size = std::max(state.synced_size, size);
    state.restore_if_unsynced.reset();
    return s;
  });
}

template <typename Op>
IOStatus FaultRocksFileSystem::SyncDir(const std::string& dir, Op fsync) {
  return Mutate([&]() -> IOStatus {
    uint64_t start;
    {
      absl::MutexLock l(&mu_);
      if (lying_sync_) {
        ++dir_sync_count_;
        return IOStatus::OK();
      }
      start = next_change_;
    }
    IOStatus s = fsync();
    if (!s.ok()) return s;
    absl::MutexLock l(&mu_);
    ++dir_sync_count_;
    auto it = dirs_.find(dir);
    if (it != dirs_.end()) {
      std::erase_if(it->second,
                    [start](const auto& entry) { return entry.second.last_change < start; });
      if (it->second.empty()) dirs_.erase(it);
    }
    return s;
  });
}

void FaultRocksFileSystem::NoteWrite(FileState& state, std::optional<uint64_t> offset, uint64_t n) {
  absl::MutexLock l(&mu_);
  ++write_count_;
  state.size = offset.has_value() ? std::max(state.size, *offset + n) : state.size + n;
}

void FaultRocksFileSystem::NoteTruncate(FileState& state, uint64_t size) {
  absl::MutexLock l(&mu_);
  state.size = size;
  state.synced_size = std::min(state.synced_size, size);
}

// Tracks appends and syncs; everything else that writes is refused when
// frozen.
class FaultRocksFileSystem::TrackedWritableFile final : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  TrackedWritableFile(FaultRocksFileSystem* fs, std::shared_ptr<FileState> state,
                      std::unique_ptr<rocksdb::FSWritableFile> file)
      : FSWritableFileOwnerWrapper(std::move(file)), fs_(fs), state_(std::move(state)) {}

  IOStatus Append(const rocksdb::Slice& data, const IOOptions& options,
                  IODebugContext* dbg) override {
    return fs_->Mutate([&] {
      IOStatus s = FSWritableFileOwnerWrapper::Append(data, options, dbg);
      if (s.ok()) fs_->NoteWrite(*state_, std::nullopt, data.size());
      return s;
    });
  }
  IOStatus Append(const rocksdb::Slice& data, const IOOptions& options,
                  const rocksdb::DataVerificationInfo& info, IODebugContext* dbg) override {
    return fs_->Mutate([&] {
      IOStatus s = FSWritableFileOwnerWrapper::Append(data, options, info, dbg);
      if (s.ok()) fs_->NoteWrite(*state_, std::nullopt, data.size());
      return s;
    });
  }
  IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset, const IOOptions& options,
                            IODebugContext* dbg) override {
    return fs_->Mutate([&] {
      IOStatus s = FSWritableFileOwnerWrapper::PositionedAppend(data, offset, options, dbg);
      if (s.ok()) fs_->NoteWrite(*state_, offset, data.size());
      return s;
    });
  }
  IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset, const IOOptions& options,
                            const rocksdb::DataVerificationInfo& info,
                            IODebugContext* dbg) override {
    return fs_->Mutate([&] {
      IOStatus s = FSWritableFileOwnerWrapper::PositionedAppend(data, offset, options, info, dbg);
      if (s.ok()) fs_->NoteWrite(*state_, offset, data.size());
      return s;
    });
  }
  IOStatus Truncate(uint64_t size, const IOOptions& options, IODebugContext* dbg) override {
    return fs_->Mutate([&] {
      IOStatus s = FSWritableFileOwnerWrapper::Truncate(size, options, dbg);
      if (s.ok()) fs_->NoteTruncate(*state_, size);
      return s;
    });
  }
  IOStatus Sync(const IOOptions& options, IODebugContext* dbg) override {
    return fs_->SyncFile(*state_, [&] { return FSWritableFileOwnerWrapper::Sync(options, dbg); });
  }
  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override {
    return fs_->SyncFile(*state_, [&] { return FSWritableFileOwnerWrapper::Fsync(options, dbg); });
  }
  IOStatus RangeSync(uint64_t offset, uint64_t nbytes, const IOOptions& options,
                     IODebugContext* dbg) override {
    return fs_->Mutate(
        [&] { return FSWritableFileOwnerWrapper::RangeSync(offset, nbytes, options, dbg); });
  }
  IOStatus Flush(const IOOptions& options, IODebugContext* dbg) override {
    return fs_->Mutate([&] { return FSWritableFileOwnerWrapper::Flush(options, dbg); });
  }
  IOStatus Close(const IOOptions& options, IODebugContext* dbg) override {
    return fs_->Mutate([&] { return FSWritableFileOwnerWrapper::Close(options, dbg); });
  }
  IOStatus Allocate(uint64_t offset, uint64_t len, const IOOptions& options,
                    IODebugContext* dbg) override {
    return fs_->Mutate(
        [&] { return FSWritableFileOwnerWrapper::Allocate(offset, len, options, dbg); });
  }

 private:
  FaultRocksFileSystem* const fs_;
  const std::shared_ptr<FileState> state_;
};

// Untracked contents; refuses writes when frozen.
class FaultRocksFileSystem::GuardedRandomRWFile final : public rocksdb::FSRandomRWFileOwnerWrapper {
 public:
  GuardedRandomRWFile(FaultRocksFileSystem* fs, std::unique_ptr<rocksdb::FSRandomRWFile> file)
      : FSRandomRWFileOwnerWrapper(std::move(file)), fs_(fs) {}

  IOStatus Write(uint64_t offset, const rocksdb::Slice& data, const IOOptions& options,
                 IODebugContext* dbg) override {
    return fs_->Mutate(
        [&] { return FSRandomRWFileOwnerWrapper::Write(offset, data, options, dbg); });
  }
  IOStatus Flush(const IOOptions& options, IODebugContext* dbg) override {
    return fs_->Mutate([&] { return FSRandomRWFileOwnerWrapper::Flush(options, dbg); });
  }
  IOStatus Sync(const IOOptions& options, IODebugContext* dbg) override {
    return fs_->Mutate([&] { return FSRandomRWFileOwnerWrapper::Sync(options, dbg); });
  }
  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override {
    return fs_->Mutate([&] { return FSRandomRWFileOwnerWrapper::Fsync(options, dbg); });
  }
  IOStatus Close(const IOOptions& options, IODebugContext* dbg) override {
    return fs_->Mutate([&] { return FSRandomRWFileOwnerWrapper::Close(options, dbg); });
  }

 private:
  FaultRocksFileSystem* const fs_;
};

// A fsync makes the directory's earlier entry changes durable.
class FaultRocksFileSystem::TrackedDirectory final : public rocksdb::FSDirectoryWrapper {
 public:
  TrackedDirectory(FaultRocksFileSystem* fs, std::string dir,
                   std::unique_ptr<rocksdb::FSDirectory> target)
      : FSDirectoryWrapper(std::move(target)), fs_(fs), dir_(std::move(dir)) {}

  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override {
    return fs_->SyncDir(dir_, [&] { return FSDirectoryWrapper::Fsync(options, dbg); });
  }
  IOStatus FsyncWithDirOptions(const IOOptions& options, IODebugContext* dbg,
                               const rocksdb::DirFsyncOptions& dir_options) override {
    return fs_->SyncDir(
        dir_, [&] { return FSDirectoryWrapper::FsyncWithDirOptions(options, dbg, dir_options); });
  }

 private:
  FaultRocksFileSystem* const fs_;
  const std::string dir_;
};

FaultRocksFileSystem::FaultRocksFileSystem(std::shared_ptr<rocksdb::FileSystem> base)
    : rocksdb::FileSystemWrapper(base) {}

void FaultRocksFileSystem::Freeze() {
  absl::MutexLock l(&io_mu_);
  frozen_ = true;
}

void FaultRocksFileSystem::Thaw() {
  absl::MutexLock l(&io_mu_);
  frozen_ = false;
}

void FaultRocksFileSystem::SetLyingSync(bool lying) {
  absl::MutexLock l(&mu_);
  lying_sync_ = lying;
}

int64_t FaultRocksFileSystem::SyncCount() const {
  absl::MutexLock l(&mu_);
  return sync_count_;
}

int64_t FaultRocksFileSystem::DirSyncCount() const {
  absl::MutexLock l(&mu_);
  return dir_sync_count_;
}

int64_t FaultRocksFileSystem::WriteCount() const {
  absl::MutexLock l(&mu_);
  return write_count_;
}

int64_t FaultRocksFileSystem::FrozenRejectCount() const {
  absl::MutexLock l(&mu_);
  return frozen_reject_count_;
}

int64_t FaultRocksFileSystem::BytesDropped() const {
  absl::MutexLock l(&mu_);
  return bytes_dropped_;
}

int64_t FaultRocksFileSystem::EntriesUndone() const {
  absl::MutexLock l(&mu_);
  return entries_undone_;
}

absl::Status FaultRocksFileSystem::DropUnsyncedData() {
  absl::MutexLock io(&io_mu_);
  if (!frozen_) return absl::FailedPreconditionError("DropUnsyncedData: not frozen");
  absl::MutexLock l(&mu_);
  const IOOptions options;
  absl::Status result;
  auto check = [&result](const IOStatus& s, absl::string_view what, const std::string& path) {
    if (!s.ok() && result.ok()) {
      result = absl::InternalError(
          absl::StrCat("DropUnsyncedData: ", what, " ", path, ": ", s.ToString()));
    }
  };
  // Files first: a restored entry below replaces whatever is at its name.
  for (const auto& [path, state] : files_) {
    uint64_t size = 0;
    if (!target_->GetFileSize(path, options, &size, nullptr).ok()) continue;  // gone
    if (state->restore_if_unsynced.has_value()) {
      bytes_dropped_ += size;
      check(rocksdb::WriteStringToFile(target_.get(), *state->restore_if_unsynced, path),
            "restoring", path);
    } else if (size > state->synced_size) {
      bytes_dropped_ += size - state->synced_size;
      check(TruncateFile(*target_, path, state->synced_size), "truncating", path);
    }
  }
  for (const auto& [dir, entries] : dirs_) {
    for (const auto& [name, entry] : entries) {
      const std::string path = Join(dir, name);
      if (entry.durable.has_value()) {
        ++entries_undone_;
        check(rocksdb::WriteStringToFile(target_.get(), *entry.durable, path), "restoring", path);
      } else if (Exists(*target_, path)) {
        ++entries_undone_;
        check(target_->DeleteFile(path, options, nullptr), "removing", path);
      }
    }
  }
  files_.clear();
  dirs_.clear();
  return result;
}

IOStatus FaultRocksFileSystem::DurableContents(const std::string& path, std::string* contents) {
  auto it = files_.find(path);
  if (it != files_.end() && it->second->restore_if_unsynced.has_value()) {
    *contents = *it->second->restore_if_unsynced;
    return IOStatus::OK();
  }
  IOStatus s = rocksdb::ReadFileToString(target_.get(), path, contents);
  if (s.ok() && it != files_.end()) {
    contents->resize(std::min<uint64_t>(contents->size(), it->second->synced_size));
  }
  return s;
}

IOStatus FaultRocksFileSystem::NoteEntryChange(const std::string& path) {
  PendingEntries& pending = dirs_[DirOf(path)];
  auto [it, recorded_now] = pending.try_emplace(BaseOf(path));
  it->second.last_change = next_change_++;
  // First changed since the last fsync: durably the entry is as it is now,
  // absent or holding its file's durable bytes.
  if (!recorded_now || !Exists(*target_, path)) return IOStatus::OK();
  std::string contents;
  IOStatus s = DurableContents(path, &contents);
  if (!s.ok()) {
    pending.erase(it);
    return s;
  }
  it->second.durable = std::move(contents);
  return s;
}

std::unique_ptr<rocksdb::FSWritableFile> FaultRocksFileSystem::Track(
    const std::string& path, std::shared_ptr<FileState> state,
    std::unique_ptr<rocksdb::FSWritableFile> file) {
  files_[path] = state;
  return std::make_unique<TrackedWritableFile>(this, std::move(state), std::move(file));
}

IOStatus FaultRocksFileSystem::NewWritableFile(const std::string& fname,
                                               const rocksdb::FileOptions& options,
                                               std::unique_ptr<rocksdb::FSWritableFile>* result,
                                               IODebugContext* dbg) {
  return Mutate([&]() -> IOStatus {
    const std::string path = Normalize(fname);
    absl::MutexLock l(&mu_);
    auto state = std::make_shared<FileState>();
    IOStatus s;
    if (Exists(*target_, path)) {
      // The open truncates in place: the entry stays, the old bytes stay
      // durable until the new ones are synced.
      std::string old;
      s = DurableContents(path, &old);
      state->restore_if_unsynced = std::move(old);
    } else {
      s = NoteEntryChange(path);
    }
    if (!s.ok()) return s;
    std::unique_ptr<rocksdb::FSWritableFile> file;
    s = target_->NewWritableFile(fname, options, &file, dbg);
    if (s.ok()) *result = Track(path, std::move(state), std::move(file));
    return s;
  });
}

IOStatus FaultRocksFileSystem::ReopenWritableFile(const std::string& fname,
                                                  const rocksdb::FileOptions& options,
                                                  std::unique_ptr<rocksdb::FSWritableFile>* result,
                                                  IODebugContext* dbg) {
  return Mutate([&]() -> IOStatus {
    const std::string path = Normalize(fname);
    absl::MutexLock l(&mu_);
    if (!Exists(*target_, path)) {
      IOStatus s = NoteEntryChange(path);
      if (!s.ok()) return s;
    }
    std::unique_ptr<rocksdb::FSWritableFile> file;
    IOStatus s = target_->ReopenWritableFile(fname, options, &file, dbg);
    uint64_t size = 0;
    if (s.ok()) s = target_->GetFileSize(fname, options.io_options, &size, dbg);
    if (!s.ok()) return s;
    auto it = files_.find(path);
    std::shared_ptr<FileState> state;
    if (it != files_.end()) {
      state = it->second;
    } else {
      // Untracked bytes are durable ones.
      state = std::make_shared<FileState>();
      state->synced_size = size;
    }
    state->size = size;
    *result = Track(path, std::move(state), std::move(file));
    return s;
  });
}

IOStatus FaultRocksFileSystem::ReuseWritableFile(const std::string& fname,
                                                 const std::string& old_fname,
                                                 const rocksdb::FileOptions& options,
                                                 std::unique_ptr<rocksdb::FSWritableFile>* result,
                                                 IODebugContext* dbg) {
  return Mutate([&]() -> IOStatus {
    const std::string path = Normalize(fname);
    const std::string old_path = Normalize(old_fname);
    absl::MutexLock l(&mu_);
    IOStatus s = NoteEntryChange(old_path);
    if (s.ok()) s = NoteEntryChange(path);
    std::unique_ptr<rocksdb::FSWritableFile> file;
    if (s.ok()) s = target_->ReuseWritableFile(fname, old_fname, options, &file, dbg);
    if (!s.ok()) return s;
    files_.erase(old_path);
    *result = Track(path, std::make_shared<FileState>(), std::move(file));
    return s;
  });
}

IOStatus FaultRocksFileSystem::NewRandomRWFile(const std::string& fname,
                                               const rocksdb::FileOptions& options,
                                               std::unique_ptr<rocksdb::FSRandomRWFile>* result,
                                               IODebugContext* dbg) {
  return Mutate([&]() -> IOStatus {
    const std::string path = Normalize(fname);
    absl::MutexLock l(&mu_);
    if (!Exists(*target_, path)) {
      IOStatus s = NoteEntryChange(path);
      if (!s.ok()) return s;
    }
    std::unique_ptr<rocksdb::FSRandomRWFile> file;
    IOStatus s = target_->NewRandomRWFile(fname, options, &file, dbg);
    if (s.ok()) *result = std::make_unique<GuardedRandomRWFile>(this, std::move(file));
    return s;
  });
}

IOStatus FaultRocksFileSystem::NewDirectory(const std::string& name, const IOOptions& options,
                                            std::unique_ptr<rocksdb::FSDirectory>* result,
                                            IODebugContext* dbg) {
  std::unique_ptr<rocksdb::FSDirectory> dir;
  IOStatus s = target_->NewDirectory(name, options, &dir, dbg);
  if (s.ok()) *result = std::make_unique<TrackedDirectory>(this, Normalize(name), std::move(dir));
  return s;
}

IOStatus FaultRocksFileSystem::DeleteFile(const std::string& fname, const IOOptions& options,
                                          IODebugContext* dbg) {
  return Mutate([&]() -> IOStatus {
    const std::string path = Normalize(fname);
    absl::MutexLock l(&mu_);
    IOStatus s = NoteEntryChange(path);
    if (s.ok()) s = target_->DeleteFile(fname, options, dbg);
    if (s.ok()) files_.erase(path);
    return s;
  });
}

IOStatus FaultRocksFileSystem::RenameFile(const std::string& src, const std::string& dest,
                                          const IOOptions& options, IODebugContext* dbg) {
  return Mutate([&]() -> IOStatus {
    const std::string from = Normalize(src);
    const std::string to = Normalize(dest);
    absl::MutexLock l(&mu_);
    IOStatus s = NoteEntryChange(from);
    if (s.ok()) s = NoteEntryChange(to);
    if (s.ok()) s = target_->RenameFile(src, dest, options, dbg);
    if (!s.ok()) return s;
    files_.erase(to);
    auto it = files_.find(from);
    if (it != files_.end()) {
      std::shared_ptr<FileState> state = std::move(it->second);
      files_.erase(it);
      files_[to] = std::move(state);
    }
    return s;
  });
}

IOStatus FaultRocksFileSystem::LinkFile(const std::string& src, const std::string& dest,
                                        const IOOptions& options, IODebugContext* dbg) {
  return Mutate([&]() -> IOStatus {
    absl::MutexLock l(&mu_);
    IOStatus s = NoteEntryChange(Normalize(dest));
    if (s.ok()) s = target_->LinkFile(src, dest, options, dbg);
    return s;
  });
}

IOStatus FaultRocksFileSystem::Truncate(const std::string& fname, size_t size,
                                        const IOOptions& options, IODebugContext* dbg) {
  return Mutate([&]() -> IOStatus {
    IOStatus s = target_->Truncate(fname, size, options, dbg);
    if (!s.ok()) return s;
    std::shared_ptr<FileState> state;
    {
      absl::MutexLock l(&mu_);
      auto it = files_.find(Normalize(fname));
      if (it != files_.end()) state = it->second;
    }
    if (state != nullptr) NoteTruncate(*state, size);
    return s;
  });
}

IOStatus FaultRocksFileSystem::CreateDir(const std::string& dirname, const IOOptions& options,
                                         IODebugContext* dbg) {
  return Mutate([&] { return target_->CreateDir(dirname, options, dbg); });
}

IOStatus FaultRocksFileSystem::CreateDirIfMissing(const std::string& dirname,
                                                  const IOOptions& options, IODebugContext* dbg) {
  return Mutate([&] { return target_->CreateDirIfMissing(dirname, options, dbg); });
}

IOStatus FaultRocksFileSystem::DeleteDir(const std::string& dirname, const IOOptions& options,
                                         IODebugContext* dbg) {
  return Mutate([&] { return target_->DeleteDir(dirname, options, dbg); });
}

}  // namespace qmgr::testing
