#include "tests/support/fault_file_system.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <random>
#include <unordered_set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "log/format.h"

namespace qmgr::testing {
namespace {

using log::kBlockBytes;

// Larger files are refused (EFBIG) rather than allocated.
constexpr uint64_t kMaxFileBytes = uint64_t{4} << 30;

std::string Normalize(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

bool IsRoot(const std::string& path) { return path == "/" || path == "."; }

// "a/b/c" -> "a/b"; "/c" -> "/"; "c" -> ".".
std::string ParentOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string BaseName(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Copies `data` over `to` at `offset`, growing `to` with zeros as needed.
void Overlay(std::string& to, uint64_t offset, absl::string_view data) {
  if (data.empty()) return;
  if (offset + data.size() > to.size()) to.resize(offset + data.size(), '\0');
  std::memcpy(to.data() + offset, data.data(), data.size());
}

absl::Status Crashed() { return absl::FailedPreconditionError("file system crashed"); }

}  // namespace

class FaultFileSystem::FaultFile final : public log::File {
 public:
  FaultFile(FaultFileSystem* fs, std::shared_ptr<Node> node, std::string path, log::OpenMode mode,
            uint64_t generation, uint64_t id)
      : fs_(fs),
        node_(std::move(node)),
        path_(std::move(path)),
        mode_(mode),
        generation_(generation),
        id_(id) {}

  absl::Status Write(uint64_t offset, absl::string_view data) override {
    return fs_->FileWrite(*this, offset, data);
  }
  absl::StatusOr<size_t> Read(uint64_t offset, size_t n, char* scratch) override {
    return fs_->FileRead(*this, offset, n, scratch);
  }
  absl::Status Sync() override { return fs_->FileSync(*this); }
  absl::StatusOr<uint64_t> Size() override { return fs_->FileSize(*this); }

 private:
  friend class FaultFileSystem;

  FaultFileSystem* const fs_;
  const std::shared_ptr<Node> node_;  // contents guarded by fs_->mu_
  const std::string path_;
  const log::OpenMode mode_;
  const uint64_t generation_;  // fs_->generation_ when opened
  const uint64_t id_;          // key of fs_->failed_sync_errno_
};

FaultFileSystem::FaultFileSystem() {
  absl::MutexLock lock(&mu_);
  dirs_["/"];
  dirs_["."];
}

FaultFileSystem::~FaultFileSystem() = default;

// --- log::FileSystem ----------------------------------------------------------

absl::StatusOr<std::unique_ptr<log::File>> FaultFileSystem::Open(const std::string& raw_path,
                                                                 log::OpenMode mode) {
  const std::string path = Normalize(raw_path);
  absl::MutexLock lock(&mu_);
  if (frozen_) return Crashed();
  if (dirs_.contains(path)) return log::ErrnoStatus(EISDIR, "open", path);
  Dir* dir = ParentDir(path);
  if (dir == nullptr) return log::ErrnoStatus(ENOENT, "open", path);
  const std::string name = BaseName(path);
  auto it = dir->current.find(name);
  std::shared_ptr<Node> node;
  if (it != dir->current.end()) {
    node = it->second;
    if (mode == log::OpenMode::kCreateTruncate) node->current.clear();
  } else {
    if (mode != log::OpenMode::kCreateTruncate) return log::ErrnoStatus(ENOENT, "open", path);
    node = std::make_shared<Node>();
    dir->current.emplace(name, node);
  }
  return std::make_unique<FaultFile>(this, std::move(node), path, mode, generation_,
                                     next_file_id_++);
}

absl::Status FaultFileSystem::CreateDir(const std::string& raw_path) {
  const std::string path = Normalize(raw_path);
  absl::MutexLock lock(&mu_);
  if (frozen_) return Crashed();
  if (dirs_.contains(path)) return absl::OkStatus();
  Dir* parent = ParentDir(path);
  if (parent == nullptr) return log::ErrnoStatus(ENOENT, "mkdir", path);
  if (parent->current.contains(BaseName(path))) return log::ErrnoStatus(EEXIST, "mkdir", path);
  dirs_[path];
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> FaultFileSystem::ListDir(const std::string& raw_path) {
  const std::string path = Normalize(raw_path);
  absl::MutexLock lock(&mu_);
  if (frozen_) return Crashed();
  auto it = dirs_.find(path);
  if (it == dirs_.end()) return log::ErrnoStatus(ENOENT, "opendir", path);
  std::vector<std::string> names;
  for (const auto& [name, node] : it->second.current) names.push_back(name);
  for (const auto& [dir_path, dir] : dirs_) {
    if (!IsRoot(dir_path) && dir_path != path && ParentOf(dir_path) == path) {
      names.push_back(BaseName(dir_path));
    }
  }
  return names;
}

absl::Status FaultFileSystem::Remove(const std::string& raw_path) {
  const std::string path = Normalize(raw_path);
  absl::MutexLock lock(&mu_);
  if (frozen_) return Crashed();
  if (dirs_.contains(path)) return log::ErrnoStatus(EISDIR, "unlink", path);
  Dir* dir = ParentDir(path);
  if (dir == nullptr || dir->current.erase(BaseName(path)) == 0) {
    return log::ErrnoStatus(ENOENT, "unlink", path);
  }
  return absl::OkStatus();
}

absl::Status FaultFileSystem::Rename(const std::string& raw_from, const std::string& raw_to) {
  const std::string from = Normalize(raw_from);
  const std::string to = Normalize(raw_to);
  const std::string what = absl::StrCat(from, " -> ", to);
  absl::MutexLock lock(&mu_);
  if (frozen_) return Crashed();
  if (dirs_.contains(from)) return log::ErrnoStatus(EXDEV, "rename (of a directory)", what);
  if (dirs_.contains(to)) return log::ErrnoStatus(EISDIR, "rename", what);
  Dir* from_dir = ParentDir(from);
  Dir* to_dir = ParentDir(to);
  if (from_dir == nullptr || to_dir == nullptr) return log::ErrnoStatus(ENOENT, "rename", what);
  auto it = from_dir->current.find(BaseName(from));
  if (it == from_dir->current.end()) return log::ErrnoStatus(ENOENT, "rename", what);
  if (from == to) return absl::OkStatus();
  std::shared_ptr<Node> node = std::move(it->second);
  from_dir->current.erase(it);
  to_dir->current[BaseName(to)] = std::move(node);
  return absl::OkStatus();
}

absl::Status FaultFileSystem::SyncDir(const std::string& raw_path) {
  const std::string path = Normalize(raw_path);
  absl::MutexLock lock(&mu_);
  if (frozen_) return Crashed();
  auto it = dirs_.find(path);
  if (it == dirs_.end()) return log::ErrnoStatus(ENOENT, "open", path);
  it->second.durable = it->second.current;
  ++dir_sync_count_;
  return absl::OkStatus();
}

absl::StatusOr<bool> FaultFileSystem::Exists(const std::string& raw_path) {
  const std::string path = Normalize(raw_path);
  absl::MutexLock lock(&mu_);
  if (frozen_) return Crashed();
  return dirs_.contains(path) || FindFile(path) != nullptr;
}

namespace {
class FaultFileLock final : public log::FileLock {
 public:
  explicit FaultFileLock(std::function<void()> release) : release_(std::move(release)) {}
  ~FaultFileLock() override { release_(); }

 private:
  std::function<void()> release_;
};
}  // namespace

absl::StatusOr<std::unique_ptr<log::FileLock>> FaultFileSystem::Lock(const std::string& raw_path) {
  const std::string path = Normalize(raw_path);
  absl::MutexLock lock(&mu_);
  if (frozen_) return Crashed();
  if (ParentDir(path) == nullptr) return log::ErrnoStatus(ENOENT, "open", path);
  auto [it, inserted] = locks_.try_emplace(path, generation_);
  if (!inserted && it->second == generation_) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is locked: another process has this directory open"));
  }
  it->second = generation_;  // a lock from before a crash died with its process
  const uint64_t generation = generation_;
  return std::make_unique<FaultFileLock>([this, path, generation] { Unlock(path, generation); });
}

void FaultFileSystem::Unlock(const std::string& path, uint64_t generation) {
  absl::MutexLock lock(&mu_);
  auto it = locks_.find(path);
  if (it != locks_.end() && it->second == generation) locks_.erase(it);
}

// --- File operations ----------------------------------------------------------

absl::Status FaultFileSystem::CheckLive(const FaultFile& file) const {
  return file.generation_ == generation_ && !frozen_ ? absl::OkStatus() : Crashed();
}

void FaultFileSystem::Freeze() {
  absl::MutexLock lock(&mu_);
  frozen_ = true;
}

void FaultFileSystem::Thaw() {
  absl::MutexLock lock(&mu_);
  frozen_ = false;
}

absl::Status FaultFileSystem::FileWrite(FaultFile& file, uint64_t offset, absl::string_view data) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckLive(file); !s.ok()) return s;
  if (file.mode_ == log::OpenMode::kRead) return log::ErrnoStatus(EBADF, "pwrite", file.path_);
  if (all_writes_fail_errno_ != 0) {
    return log::ErrnoStatus(all_writes_fail_errno_, "pwrite", file.path_);
  }
  if (write_fail_countdown_ >= 0 && write_fail_countdown_-- == 0) {
    return log::ErrnoStatus(write_fail_errno_, "pwrite", file.path_);
  }
  if (offset > kMaxFileBytes || data.size() > kMaxFileBytes - offset) {
    return log::ErrnoStatus(EFBIG, "pwrite", file.path_);
  }
  Node& node = *file.node_;
  const uint64_t end = offset + data.size();
  if (end > node.current.size() && has_space_limit_ &&
      CurrentBytesExcept(&node) + end > space_limit_) {
    return log::ErrnoStatus(ENOSPC, "pwrite", file.path_);
  }
  ++write_count_;
  if (data.empty()) return absl::OkStatus();
  Overlay(node.current, offset, data);
  for (uint64_t block = offset / kBlockBytes; block <= (end - 1) / kBlockBytes; ++block) {
    node.dirty_blocks.insert(block);
  }
  node.unsynced_writes.push_back({offset, std::string(data)});
  return absl::OkStatus();
}

absl::StatusOr<size_t> FaultFileSystem::FileRead(FaultFile& file, uint64_t offset, size_t n,
                                                 char* scratch) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckLive(file); !s.ok()) return s;
  const std::string& bytes = file.node_->current;
  if (offset >= bytes.size()) return size_t{0};
  const size_t count = std::min<uint64_t>(n, bytes.size() - offset);
  std::memcpy(scratch, bytes.data() + offset, count);
  return count;
}

absl::Status FaultFileSystem::FileSync(FaultFile& file) {
  {
    absl::MutexLock gate(&gate_mu_);
    if (Gated(file.path_)) {
      ++syncs_at_gate_;
      const auto open = [this, &file]()
                            ABSL_SHARED_LOCKS_REQUIRED(gate_mu_) { return !Gated(file.path_); };
      gate_mu_.Await(absl::Condition(&open));
      --syncs_at_gate_;
    }
  }
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckLive(file); !s.ok()) return s;
  if (auto failed = failed_sync_errno_.find(file.id_); failed != failed_sync_errno_.end()) {
    ++syncs_after_failure_;
    return log::ErrnoStatus(failed->second, "fdatasync (after a failed one)", file.path_);
  }
  if (sync_fail_countdown_ >= 0 && sync_fail_countdown_-- == 0) {
    const int errno_value = sync_fail_errno_ != 0 ? sync_fail_errno_ : EIO;
    failed_sync_errno_[file.id_] = errno_value;
    return log::ErrnoStatus(errno_value, "fdatasync", file.path_);
  }
  ++sync_count_;
  ++sync_count_by_path_[file.path_];
  if (lying_sync_) return absl::OkStatus();
  Node& node = *file.node_;
  node.durable = node.current;
  node.dirty_blocks.clear();
  node.unsynced_writes.clear();
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> FaultFileSystem::FileSize(FaultFile& file) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckLive(file); !s.ok()) return s;
  return uint64_t{file.node_->current.size()};
}

// --- Fault controls -----------------------------------------------------------

void FaultFileSystem::FailWriteAfter(int n, int errno_value) {
  absl::MutexLock lock(&mu_);
  write_fail_countdown_ = n;
  write_fail_errno_ = errno_value;
}

void FaultFileSystem::FailWritesWithErrno(int errno_value) {
  absl::MutexLock lock(&mu_);
  all_writes_fail_errno_ = errno_value;
}

void FaultFileSystem::ClearWriteFailures() {
  absl::MutexLock lock(&mu_);
  all_writes_fail_errno_ = 0;
  write_fail_countdown_ = -1;
}

void FaultFileSystem::FailSyncAfter(int n, int errno_value) {
  absl::MutexLock lock(&mu_);
  sync_fail_countdown_ = n;
  sync_fail_errno_ = errno_value;
}

int FaultFileSystem::SyncsAfterFailure() const {
  absl::MutexLock lock(&mu_);
  return syncs_after_failure_;
}

void FaultFileSystem::SetLyingSync(bool lying) {
  absl::MutexLock lock(&mu_);
  lying_sync_ = lying;
}

void FaultFileSystem::SetSpaceLimit(uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  has_space_limit_ = true;
  space_limit_ = bytes;
}

void FaultFileSystem::ClearSpaceLimit() {
  absl::MutexLock lock(&mu_);
  has_space_limit_ = false;
}

bool FaultFileSystem::Gated(const std::string& path) const {
  return gate_closed_ && absl::EndsWith(path, gate_suffix_);
}

void FaultFileSystem::CloseSyncGate(std::string path_suffix) {
  absl::MutexLock gate(&gate_mu_);
  gate_closed_ = true;
  gate_suffix_ = std::move(path_suffix);
}

void FaultFileSystem::OpenSyncGate() {
  absl::MutexLock gate(&gate_mu_);
  gate_closed_ = false;
}

int FaultFileSystem::SyncsWaitingAtGate() const {
  absl::MutexLock gate(&gate_mu_);
  return syncs_at_gate_;
}

bool FaultFileSystem::AwaitSyncsAtGate(int n, absl::Duration timeout) const {
  struct Args {
    const int* waiting;
    int n;
  };
  absl::MutexLock gate(&gate_mu_);
  Args args{&syncs_at_gate_, n};
  return gate_mu_.AwaitWithTimeout(absl::Condition(
                                       +[](Args* a) { return *a->waiting >= a->n; }, &args),
                                   timeout);
}

int64_t FaultFileSystem::SyncCount() const {
  absl::MutexLock lock(&mu_);
  return sync_count_;
}

int64_t FaultFileSystem::SyncCount(const std::string& path_part) const {
  absl::MutexLock lock(&mu_);
  int64_t total = 0;
  for (const auto& [path, count] : sync_count_by_path_) {
    if (path.find(path_part) != std::string::npos) total += count;
  }
  return total;
}

int64_t FaultFileSystem::WriteCount() const {
  absl::MutexLock lock(&mu_);
  return write_count_;
}

int64_t FaultFileSystem::DirSyncCount() const {
  absl::MutexLock lock(&mu_);
  return dir_sync_count_;
}

// --- Crash --------------------------------------------------------------------

void FaultFileSystem::SimulateCrash(CrashMode mode, uint64_t seed) {
  absl::MutexLock lock(&mu_);
  ++generation_;
  std::mt19937_64 rng(seed);
  std::unordered_set<const Node*> done;
  // std::map iterates in name order, so a seed always makes the same choices.
  for (auto& [dir_path, dir] : dirs_) {
    dir.current = dir.durable;
    for (auto& [name, node_ptr] : dir.durable) {
      Node& node = *node_ptr;
      if (!done.insert(&node).second) continue;
      std::string recovered = node.durable;
      switch (mode) {
        case CrashMode::kDropUnsynced:
          break;
        case CrashMode::kKeepRandomBlocks:
          for (const uint64_t block : node.dirty_blocks) {
            const bool keep = (rng() & 1) != 0;
            const uint64_t begin = block * kBlockBytes;
            if (!keep || begin >= node.current.size()) continue;
            const uint64_t len = std::min<uint64_t>(kBlockBytes, node.current.size() - begin);
            Overlay(recovered, begin, absl::string_view(node.current).substr(begin, len));
          }
          break;
        case CrashMode::kTearLastWrite:
          for (size_t i = 0; i < node.unsynced_writes.size(); ++i) {
            const UnsyncedWrite& write = node.unsynced_writes[i];
            absl::string_view data = write.data;
            if (i + 1 == node.unsynced_writes.size() && !data.empty()) {
              data = data.substr(0, rng() % data.size());
            }
            Overlay(recovered, write.offset, data);
          }
          break;
        case CrashMode::kRandomBlocksTorn: {
          const std::vector<uint64_t> dirty(node.dirty_blocks.begin(), node.dirty_blocks.end());
          const size_t torn = dirty.empty() ? 0 : rng() % dirty.size();
          for (size_t i = 0; i < dirty.size(); ++i) {
            const uint64_t begin = dirty[i] * kBlockBytes;
            const bool keep = (rng() & 1) != 0;
            if (begin >= node.current.size()) continue;
            uint64_t len = std::min<uint64_t>(kBlockBytes, node.current.size() - begin);
            if (i == torn) {
              len = rng() % len;
            } else if (!keep) {
              continue;
            }
            Overlay(recovered, begin, absl::string_view(node.current).substr(begin, len));
          }
          break;
        }
      }
      node.current = recovered;
      node.durable = std::move(recovered);
      node.dirty_blocks.clear();
      node.unsynced_writes.clear();
    }
  }
}

void FaultFileSystem::DropUnsyncedData() { SimulateCrash(CrashMode::kDropUnsynced, 0); }

// --- Byte surgery -------------------------------------------------------------

absl::StatusOr<std::string> FaultFileSystem::ReadWholeFile(const std::string& raw_path) {
  const std::string path = Normalize(raw_path);
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Node> node = FindFile(path);
  if (node == nullptr) return log::ErrnoStatus(ENOENT, "open", path);
  return node->current;
}

absl::Status FaultFileSystem::WriteWholeFileDurably(const std::string& raw_path,
                                                    absl::string_view contents) {
  const std::string path = Normalize(raw_path);
  absl::MutexLock lock(&mu_);
  if (dirs_.contains(path)) return log::ErrnoStatus(EISDIR, "open", path);
  Dir* dir = ParentDir(path);
  if (dir == nullptr) return log::ErrnoStatus(ENOENT, "open", path);
  const std::string name = BaseName(path);
  std::shared_ptr<Node>& node = dir->current[name];
  if (node == nullptr) node = std::make_shared<Node>();
  node->current = std::string(contents);
  node->durable = node->current;
  node->dirty_blocks.clear();
  node->unsynced_writes.clear();
  dir->durable[name] = node;
  return absl::OkStatus();
}

absl::Status FaultFileSystem::CorruptByte(const std::string& raw_path, uint64_t offset) {
  const std::string path = Normalize(raw_path);
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Node> node = FindFile(path);
  if (node == nullptr) return log::ErrnoStatus(ENOENT, "open", path);
  if (offset >= node->current.size()) {
    return absl::OutOfRangeError(
        absl::StrCat("CorruptByte ", path, ": offset ", offset, " >= size ", node->current.size()));
  }
  node->current[offset] ^= 0x55;
  if (offset < node->durable.size()) node->durable[offset] ^= 0x55;
  // Keep a later crash from replaying the uncorrupted byte.
  for (UnsyncedWrite& write : node->unsynced_writes) {
    if (offset >= write.offset && offset - write.offset < write.data.size()) {
      write.data[offset - write.offset] ^= 0x55;
    }
  }
  return absl::OkStatus();
}

// --- Helpers ------------------------------------------------------------------

FaultFileSystem::Dir* FaultFileSystem::ParentDir(const std::string& path) {
  if (IsRoot(path) || path.empty()) return nullptr;
  auto it = dirs_.find(ParentOf(path));
  return it == dirs_.end() ? nullptr : &it->second;
}

std::shared_ptr<FaultFileSystem::Node> FaultFileSystem::FindFile(const std::string& path) {
  Dir* dir = ParentDir(path);
  if (dir == nullptr) return nullptr;
  auto it = dir->current.find(BaseName(path));
  return it == dir->current.end() ? nullptr : it->second;
}

uint64_t FaultFileSystem::CurrentBytesExcept(const Node* skip) const {
  std::unordered_set<const Node*> seen{skip};
  uint64_t total = 0;
  for (const auto& [dir_path, dir] : dirs_) {
    for (const auto& [name, node] : dir.current) {
      if (seen.insert(node.get()).second) total += node->current.size();
    }
  }
  return total;
}

}  // namespace qmgr::testing
