#include "tests/support/fault_file_system.h"

#include <algorithm>
#include <cerrno>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "log/file.h"
#include "log/format.h"

namespace qmgr::testing {
namespace {

using log::File;
using log::kBlockBytes;
using log::OpenMode;

#define QMGR_ASSERT_OK(expr)                       \
  do {                                             \
    const absl::Status _st = (expr);               \
    ASSERT_TRUE(_st.ok()) << #expr << ": " << _st; \
  } while (0)

std::unique_ptr<File> MustOpen(FaultFileSystem& fs, const std::string& path, OpenMode mode) {
  absl::StatusOr<std::unique_ptr<File>> file = fs.Open(path, mode);
  EXPECT_TRUE(file.ok()) << path << ": " << file.status();
  return file.ok() ? std::move(*file) : nullptr;
}

std::string Contents(FaultFileSystem& fs, const std::string& path) {
  absl::StatusOr<std::string> bytes = fs.ReadWholeFile(path);
  EXPECT_TRUE(bytes.ok()) << path << ": " << bytes.status();
  return bytes.ok() ? *bytes : "<missing>";
}

bool Exists(FaultFileSystem& fs, const std::string& path) {
  absl::StatusOr<bool> exists = fs.Exists(path);
  EXPECT_TRUE(exists.ok()) << exists.status();
  return exists.ok() && *exists;
}

// A directory "/d" holding a durable, empty file "/d/f" (entry synced).
class FaultFileSystemTest : public ::testing::Test {
 protected:
  void SetUp() override {
    QMGR_ASSERT_OK(fs_.CreateDir("/d"));
    file_ = MustOpen(fs_, "/d/f", OpenMode::kCreateTruncate);
    ASSERT_NE(file_, nullptr);
    QMGR_ASSERT_OK(fs_.SyncDir("/d"));
  }

  FaultFileSystem fs_;
  std::unique_ptr<File> file_;
};

TEST_F(FaultFileSystemTest, WriteReadRoundTrip) {
  // Reads see writes, with a hole of zeros between them and a short read at the end.
  QMGR_ASSERT_OK(file_->Write(0, "hello"));
  QMGR_ASSERT_OK(file_->Write(8, "world"));
  absl::StatusOr<uint64_t> size = file_->Size();
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, 13u);
  char buf[32];
  absl::StatusOr<size_t> n = file_->Read(0, sizeof(buf), buf);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(std::string(buf, *n), std::string("hello\0\0\0world", 13));
  n = file_->Read(13, 4, buf);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
  std::unique_ptr<File> reader = MustOpen(fs_, "/d/f", OpenMode::kRead);
  n = reader->Read(8, 5, buf);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(std::string(buf, *n), "world");
  EXPECT_EQ(reader->Write(0, "x").code(), absl::StatusCode::kInternal);  // EBADF
  absl::StatusOr<std::vector<std::string>> names = fs_.ListDir("/d");
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, std::vector<std::string>{"f"});
}

TEST(FaultFileSystemPaths, MissingDirectoriesAreNotFound) {
  // Directories are explicit: nothing is created implicitly.
  FaultFileSystem fs;
  EXPECT_EQ(fs.Open("/nope/f", OpenMode::kCreateTruncate).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(fs.ListDir("/nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(fs.CreateDir("/a/b").code(), absl::StatusCode::kNotFound);
  QMGR_ASSERT_OK(fs.CreateDir("/a"));
  QMGR_ASSERT_OK(fs.CreateDir("/a/b"));
  QMGR_ASSERT_OK(fs.CreateDir("/a/b"));  // exists: fine
  EXPECT_EQ(fs.Open("/a/missing", OpenMode::kReadWrite).status().code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<std::vector<std::string>> names = fs.ListDir("/a");
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, std::vector<std::string>{"b"});
  EXPECT_TRUE(Exists(fs, "/a/b"));
  EXPECT_FALSE(Exists(fs, "/a/c"));
  EXPECT_FALSE(Exists(fs, "/x/y"));
}

TEST_F(FaultFileSystemTest, UnsyncedDataDroppedByCrash) {
  // A crash drops unsynced bytes and invalidates every open File.
  QMGR_ASSERT_OK(file_->Write(0, "lost"));
  fs_.DropUnsyncedData();
  EXPECT_TRUE(Exists(fs_, "/d/f"));
  EXPECT_EQ(Contents(fs_, "/d/f"), "");
  EXPECT_EQ(file_->Write(0, "x").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(file_->Sync().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(file_->Size().status().code(), absl::StatusCode::kFailedPrecondition);
  char c;
  EXPECT_EQ(file_->Read(0, 1, &c).status().code(), absl::StatusCode::kFailedPrecondition);
  // A file opened after the crash works.
  std::unique_ptr<File> again = MustOpen(fs_, "/d/f", OpenMode::kReadWrite);
  QMGR_ASSERT_OK(again->Write(0, "ok"));
  EXPECT_EQ(Contents(fs_, "/d/f"), "ok");
}

TEST_F(FaultFileSystemTest, SyncedDataKept) {
  // Synced bytes survive; a later unsynced overwrite and extension do not.
  QMGR_ASSERT_OK(file_->Write(0, "durable"));
  QMGR_ASSERT_OK(file_->Sync());
  QMGR_ASSERT_OK(file_->Write(0, "XX"));
  QMGR_ASSERT_OK(file_->Write(7, "more"));
  EXPECT_EQ(Contents(fs_, "/d/f"), "XXrablemore");
  fs_.DropUnsyncedData();
  EXPECT_EQ(Contents(fs_, "/d/f"), "durable");
}

TEST_F(FaultFileSystemTest, TruncationDurableOnlyAfterSync) {
  // kCreateTruncate empties the file now, but a crash before Sync brings the bytes back.
  QMGR_ASSERT_OK(file_->Write(0, "old"));
  QMGR_ASSERT_OK(file_->Sync());
  std::unique_ptr<File> truncated = MustOpen(fs_, "/d/f", OpenMode::kCreateTruncate);
  EXPECT_EQ(Contents(fs_, "/d/f"), "");
  fs_.DropUnsyncedData();
  EXPECT_EQ(Contents(fs_, "/d/f"), "old");
  truncated = MustOpen(fs_, "/d/f", OpenMode::kCreateTruncate);
  QMGR_ASSERT_OK(truncated->Sync());
  fs_.DropUnsyncedData();
  EXPECT_EQ(Contents(fs_, "/d/f"), "");
}

TEST_F(FaultFileSystemTest, CreatedFileForgottenWithoutDirSync) {
  // A synced file whose directory entry was never synced is gone after a crash.
  std::unique_ptr<File> fresh = MustOpen(fs_, "/d/new", OpenMode::kCreateTruncate);
  QMGR_ASSERT_OK(fresh->Write(0, "data"));
  QMGR_ASSERT_OK(fresh->Sync());
  EXPECT_TRUE(Exists(fs_, "/d/new"));
  fs_.DropUnsyncedData();
  EXPECT_FALSE(Exists(fs_, "/d/new"));
  absl::StatusOr<std::vector<std::string>> names = fs_.ListDir("/d");
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, std::vector<std::string>{"f"});
  // With the directory synced it survives.
  fresh = MustOpen(fs_, "/d/new", OpenMode::kCreateTruncate);
  QMGR_ASSERT_OK(fresh->Write(0, "data"));
  QMGR_ASSERT_OK(fresh->Sync());
  QMGR_ASSERT_OK(fs_.SyncDir("/d"));
  fs_.DropUnsyncedData();
  EXPECT_EQ(Contents(fs_, "/d/new"), "data");
}

TEST_F(FaultFileSystemTest, RenameDurableOnlyAfterSyncDir) {
  // Rename moves the entry at once but a crash before SyncDir undoes it.
  QMGR_ASSERT_OK(file_->Write(0, "payload"));
  QMGR_ASSERT_OK(file_->Sync());
  QMGR_ASSERT_OK(fs_.Rename("/d/f", "/d/g"));
  EXPECT_FALSE(Exists(fs_, "/d/f"));
  EXPECT_EQ(Contents(fs_, "/d/g"), "payload");
  // The open File still reaches the same contents under the new name.
  QMGR_ASSERT_OK(file_->Write(7, "!"));
  EXPECT_EQ(Contents(fs_, "/d/g"), "payload!");
  fs_.DropUnsyncedData();
  EXPECT_EQ(Contents(fs_, "/d/f"), "payload");
  EXPECT_FALSE(Exists(fs_, "/d/g"));
  QMGR_ASSERT_OK(fs_.Rename("/d/f", "/d/g"));
  QMGR_ASSERT_OK(fs_.SyncDir("/d"));
  fs_.DropUnsyncedData();
  EXPECT_FALSE(Exists(fs_, "/d/f"));
  EXPECT_EQ(Contents(fs_, "/d/g"), "payload");
  EXPECT_EQ(fs_.Rename("/d/missing", "/d/x").code(), absl::StatusCode::kNotFound);
}

TEST_F(FaultFileSystemTest, RemoveDurableOnlyAfterSyncDir) {
  // Remove hides the file at once; a crash before SyncDir brings it back.
  QMGR_ASSERT_OK(file_->Write(0, "keep"));
  QMGR_ASSERT_OK(file_->Sync());
  QMGR_ASSERT_OK(fs_.Remove("/d/f"));
  EXPECT_FALSE(Exists(fs_, "/d/f"));
  EXPECT_EQ(fs_.Remove("/d/f").code(), absl::StatusCode::kNotFound);
  fs_.DropUnsyncedData();
  EXPECT_EQ(Contents(fs_, "/d/f"), "keep");
  QMGR_ASSERT_OK(fs_.Remove("/d/f"));
  QMGR_ASSERT_OK(fs_.SyncDir("/d"));
  fs_.DropUnsyncedData();
  EXPECT_FALSE(Exists(fs_, "/d/f"));
}

TEST_F(FaultFileSystemTest, FailWriteAfterFailsOnceAndWritesNothing) {
  // The (n+1)-th write fails with the errno and changes nothing; later writes succeed.
  fs_.FailWriteAfter(1, EIO);
  QMGR_ASSERT_OK(file_->Write(0, "a"));
  const absl::Status failed = file_->Write(1, "b");
  EXPECT_EQ(failed.code(), absl::StatusCode::kInternal);
  EXPECT_NE(failed.message().find("/d/f"), std::string::npos) << failed;
  QMGR_ASSERT_OK(file_->Write(2, "c"));
  EXPECT_EQ(Contents(fs_, "/d/f"), std::string("a\0c", 3));
  EXPECT_EQ(fs_.WriteCount(), 2);
  fs_.FailWritesWithErrno(ENOSPC);
  EXPECT_EQ(file_->Write(0, "z").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(file_->Write(0, "z").code(), absl::StatusCode::kResourceExhausted);
  fs_.ClearWriteFailures();
  QMGR_ASSERT_OK(file_->Write(0, "z"));
  EXPECT_EQ(Contents(fs_, "/d/f"), std::string("z\0c", 3));
}

TEST_F(FaultFileSystemTest, FailSyncAfterFailsOnceWithoutDurability) {
  // A failed Sync makes nothing durable, and a retry on the same File is counted.
  fs_.FailSyncAfter(1, EIO);
  QMGR_ASSERT_OK(file_->Write(0, "one"));
  QMGR_ASSERT_OK(file_->Sync());
  QMGR_ASSERT_OK(file_->Write(3, "two"));
  EXPECT_EQ(file_->Sync().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(fs_.SyncsAfterFailure(), 0);
  EXPECT_EQ(fs_.SyncCount(), 1);
  // Another File may sync; the failure was one-shot.
  std::unique_ptr<File> other = MustOpen(fs_, "/d/f", OpenMode::kReadWrite);
  QMGR_ASSERT_OK(other->Write(6, "three"));
  fs_.DropUnsyncedData();
  EXPECT_EQ(Contents(fs_, "/d/f"), "one");
  // The forbidden retry on the File that saw the failure.
  std::unique_ptr<File> f = MustOpen(fs_, "/d/f", OpenMode::kReadWrite);
  fs_.FailSyncAfter(0, EIO);
  EXPECT_FALSE(f->Sync().ok());
  EXPECT_EQ(fs_.SyncsAfterFailure(), 0);
  EXPECT_FALSE(f->Sync().ok());
  EXPECT_EQ(fs_.SyncsAfterFailure(), 1);
  std::unique_ptr<File> g = MustOpen(fs_, "/d/f", OpenMode::kReadWrite);
  QMGR_ASSERT_OK(g->Sync());
  EXPECT_EQ(fs_.SyncsAfterFailure(), 1);
}

TEST_F(FaultFileSystemTest, SpaceLimitFailsGrowthWithEnospc) {
  // Growth past the limit fails with ENOSPC and writes nothing; overwrites are fine.
  fs_.SetSpaceLimit(100);
  QMGR_ASSERT_OK(file_->Write(0, std::string(60, 'a')));
  std::unique_ptr<File> b = MustOpen(fs_, "/d/b", OpenMode::kCreateTruncate);
  EXPECT_EQ(b->Write(0, std::string(50, 'b')).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Contents(fs_, "/d/b"), "");
  QMGR_ASSERT_OK(b->Write(0, std::string(40, 'b')));  // exactly at the limit
  QMGR_ASSERT_OK(file_->Write(10, std::string(50, 'x')));
  EXPECT_EQ(file_->Write(60, "y").code(), absl::StatusCode::kResourceExhausted);
  fs_.ClearSpaceLimit();
  QMGR_ASSERT_OK(b->Write(40, std::string(50, 'b')));
  EXPECT_EQ(Contents(fs_, "/d/b").size(), 90u);
}

TEST_F(FaultFileSystemTest, SyncGateBlocksUntilOpened) {
  // A Sync at a closed gate blocks without holding up the rest of the file system.
  QMGR_ASSERT_OK(file_->Write(0, "gated"));
  fs_.CloseSyncGate();
  absl::Status sync_status = absl::UnknownError("not run");
  std::thread syncer([&] { sync_status = file_->Sync(); });
  ASSERT_TRUE(fs_.AwaitSyncsAtGate(1, absl::Seconds(10)));
  EXPECT_EQ(fs_.SyncsWaitingAtGate(), 1);
  // Everything else proceeds meanwhile.
  std::unique_ptr<File> other = MustOpen(fs_, "/d/f", OpenMode::kReadWrite);
  QMGR_ASSERT_OK(other->Write(5, "!"));
  QMGR_ASSERT_OK(fs_.SyncDir("/d"));
  EXPECT_EQ(Contents(fs_, "/d/f"), "gated!");
  EXPECT_EQ(fs_.SyncCount(), 0);
  fs_.OpenSyncGate();
  syncer.join();
  QMGR_ASSERT_OK(sync_status);
  EXPECT_EQ(fs_.SyncsWaitingAtGate(), 0);
  EXPECT_EQ(fs_.SyncCount(), 1);
  fs_.DropUnsyncedData();
  EXPECT_EQ(Contents(fs_, "/d/f"), "gated!");
}

// Writes one distinct byte value over each of `blocks` blocks of "/d/f".
void DirtyBlocks(FaultFileSystem& fs, int blocks) {
  std::unique_ptr<File> f = MustOpen(fs, "/d/f", OpenMode::kReadWrite);
  ASSERT_NE(f, nullptr);
  for (int i = 0; i < blocks; ++i) {
    QMGR_ASSERT_OK(f->Write(i * kBlockBytes, std::string(kBlockBytes, static_cast<char>('A' + i))));
  }
}

std::string CrashedWithBlocks(uint64_t seed, int blocks) {
  FaultFileSystem fs;
  EXPECT_TRUE(fs.CreateDir("/d").ok());
  EXPECT_TRUE(fs.WriteWholeFileDurably("/d/f", "").ok());
  DirtyBlocks(fs, blocks);
  fs.SimulateCrash(CrashMode::kKeepRandomBlocks, seed);
  return Contents(fs, "/d/f");
}

TEST(FaultFileSystemCrash, KeepRandomBlocksDeterministicPerSeed) {
  // The same seed keeps the same blocks; each block is kept whole or not at all.
  constexpr int kBlocks = 48;
  const std::string a = CrashedWithBlocks(7, kBlocks);
  EXPECT_EQ(a, CrashedWithBlocks(7, kBlocks));
  EXPECT_NE(a, CrashedWithBlocks(8, kBlocks));
  ASSERT_EQ(a.size() % kBlockBytes, 0u);
  int kept = 0;
  for (size_t b = 0; b < a.size() / kBlockBytes; ++b) {
    const std::string block = a.substr(b * kBlockBytes, kBlockBytes);
    const char want = static_cast<char>('A' + b);
    if (block == std::string(kBlockBytes, want)) {
      ++kept;
    } else {
      EXPECT_EQ(block, std::string(kBlockBytes, '\0')) << "block " << b;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, kBlocks);
}

TEST(FaultFileSystemCrash, RandomBlocksTornKeepsSomeBlocksAndTearsOne) {
  // Each block is kept whole, lost, or (one block) kept up to a random byte;
  // the same seed makes the same choices.
  constexpr int kBlocks = 48;
  std::set<size_t> torn_lengths;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const auto crashed = [&] {
      FaultFileSystem fs;
      EXPECT_TRUE(fs.CreateDir("/d").ok());
      EXPECT_TRUE(fs.WriteWholeFileDurably("/d/f", "").ok());
      DirtyBlocks(fs, kBlocks);
      fs.SimulateCrash(CrashMode::kRandomBlocksTorn, seed);
      return Contents(fs, "/d/f");
    };
    const std::string a = crashed();
    EXPECT_EQ(a, crashed());
    int kept = 0, partial = 0;
    for (size_t b = 0; b * kBlockBytes < a.size(); ++b) {
      const std::string block = a.substr(b * kBlockBytes, kBlockBytes);
      const char want = static_cast<char>('A' + b);
      const size_t prefix = block.find_first_not_of(want);
      if (prefix == std::string::npos && block.size() == kBlockBytes) {
        ++kept;
        continue;
      }
      const size_t end = prefix == std::string::npos ? block.size() : prefix;
      EXPECT_EQ(block.find_first_not_of('\0', end), std::string::npos) << "block " << b;
      if (end > 0) {
        ++partial;
        torn_lengths.insert(end);
      }
    }
    EXPECT_GT(kept, 0);
    EXPECT_LT(kept, kBlocks);
    EXPECT_LE(partial, 1);
  }
  EXPECT_GT(torn_lengths.size(), 5u) << "the tear falls at random bytes";
}

TEST_F(FaultFileSystemTest, SyncGateWithASuffixHoldsOnlyThoseFiles) {
  std::unique_ptr<File> tmp = MustOpen(fs_, "/d/f.tmp", OpenMode::kCreateTruncate);
  QMGR_ASSERT_OK(tmp->Write(0, "t"));
  QMGR_ASSERT_OK(file_->Write(0, "f"));
  fs_.CloseSyncGate("/f");
  QMGR_ASSERT_OK(tmp->Sync());  // not held
  std::thread syncer([&] { EXPECT_TRUE(file_->Sync().ok()); });
  ASSERT_TRUE(fs_.AwaitSyncsAtGate(1, absl::Seconds(10)));
  fs_.OpenSyncGate();
  syncer.join();
  EXPECT_EQ(fs_.SyncCount(), 2);
}

TEST(FaultFileSystemCrash, TearLastWriteKeepsPrefixOfLastWrite) {
  // Earlier unsynced writes survive whole; the last one survives only as a proper prefix.
  std::set<size_t> sizes;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    FaultFileSystem fs;
    QMGR_ASSERT_OK(fs.CreateDir("/d"));
    QMGR_ASSERT_OK(fs.WriteWholeFileDurably("/d/f", "base"));
    std::unique_ptr<File> f = MustOpen(fs, "/d/f", OpenMode::kReadWrite);
    QMGR_ASSERT_OK(f->Write(4, std::string(100, 'a')));
    QMGR_ASSERT_OK(f->Write(104, std::string(1000, 'b')));
    fs.SimulateCrash(CrashMode::kTearLastWrite, seed);
    const std::string got = Contents(fs, "/d/f");
    ASSERT_GE(got.size(), 104u);
    ASSERT_LT(got.size(), 1104u);
    EXPECT_EQ(got.substr(0, 104), "base" + std::string(100, 'a'));
    EXPECT_EQ(got.substr(104), std::string(got.size() - 104, 'b'));
    sizes.insert(got.size());
  }
  EXPECT_GT(sizes.size(), 1u);
}

TEST_F(FaultFileSystemTest, LyingSyncLosesData) {
  // A lying Sync reports success yet a crash loses the bytes.
  fs_.SetLyingSync(true);
  QMGR_ASSERT_OK(file_->Write(0, "acked"));
  QMGR_ASSERT_OK(file_->Sync());
  EXPECT_EQ(fs_.SyncCount(), 1);
  fs_.DropUnsyncedData();
  EXPECT_EQ(Contents(fs_, "/d/f"), "");
  fs_.SetLyingSync(false);
  std::unique_ptr<File> f = MustOpen(fs_, "/d/f", OpenMode::kReadWrite);
  QMGR_ASSERT_OK(f->Write(0, "honest"));
  QMGR_ASSERT_OK(f->Sync());
  fs_.DropUnsyncedData();
  EXPECT_EQ(Contents(fs_, "/d/f"), "honest");
}

TEST_F(FaultFileSystemTest, CountersCountSuccesses) {
  // Counters count successful writes, syncs (also per path) and directory syncs.
  std::unique_ptr<File> seg = MustOpen(fs_, "/d/0001.qlog", OpenMode::kCreateTruncate);
  QMGR_ASSERT_OK(seg->Write(0, "x"));
  QMGR_ASSERT_OK(seg->Sync());
  QMGR_ASSERT_OK(seg->Sync());
  QMGR_ASSERT_OK(file_->Write(0, "y"));
  QMGR_ASSERT_OK(file_->Sync());
  EXPECT_EQ(fs_.WriteCount(), 2);
  EXPECT_EQ(fs_.SyncCount(), 3);
  EXPECT_EQ(fs_.SyncCount(".qlog"), 2);
  EXPECT_EQ(fs_.SyncCount("/d/f"), 1);
  EXPECT_EQ(fs_.DirSyncCount(), 1);  // SetUp's
  QMGR_ASSERT_OK(fs_.SyncDir("/d"));
  EXPECT_EQ(fs_.DirSyncCount(), 2);
}

TEST_F(FaultFileSystemTest, ByteSurgeryHelpers) {
  // WriteWholeFileDurably survives a crash; CorruptByte flips a byte durably.
  QMGR_ASSERT_OK(fs_.WriteWholeFileDurably("/d/g", "abcdef"));
  fs_.DropUnsyncedData();
  EXPECT_EQ(Contents(fs_, "/d/g"), "abcdef");
  QMGR_ASSERT_OK(fs_.CorruptByte("/d/g", 2));
  EXPECT_EQ(Contents(fs_, "/d/g"), std::string("ab") + static_cast<char>('c' ^ 0x55) + "def");
  fs_.DropUnsyncedData();
  EXPECT_EQ(Contents(fs_, "/d/g")[2], static_cast<char>('c' ^ 0x55));
  EXPECT_EQ(fs_.CorruptByte("/d/g", 6).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(fs_.ReadWholeFile("/d/none").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(fs_.WriteWholeFileDurably("/nodir/x", "").code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace qmgr::testing
