// A full disk under a real qmgrd: its data directory on a small tmpfs (so
// the test needs root; it is skipped where mount(2) is refused), the rest of
// the space taken by a filler file. DESIGN.md: a full disk shows up when a
// segment is preallocated, and Enqueue answers RESOURCE_EXHAUSTED; intake
// resumes once the allocator can create the segment. Nothing acknowledged
// is lost, across a SIGKILL and a restart after space returned. Checkpoints
// are refused while the disk is full, and run again once it is not.
#include <signal.h>
#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/support/qmgrd_process.h"
#include "tests/support/rpc_expect.h"
#include "tests/support/temp_dir.h"

namespace qmgr {
namespace {

namespace v1 = qmgr::v1;
using testing::QmgrdProcess;
using testing::TempDir;

constexpr char kQueue[] = "IN";
constexpr size_t kPayloadBytes = 32 << 10;

class Tmpfs {
 public:
  explicit Tmpfs(const std::string& path, const std::string& size) : path_(path) {
    mounted_ = ::mount("tmpfs", path.c_str(), "tmpfs", 0, ("size=" + size).c_str()) == 0;
    error_ = mounted_ ? "" : std::strerror(errno);
  }
  ~Tmpfs() {
    if (mounted_) ::umount2(path_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  const std::string path_;
  bool mounted_ = false;
  std::string error_;
};

// Writes to `path` until the file system is full; returns the bytes written.
uint64_t FillUp(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  const std::string block(64 << 10, 'f');
  uint64_t written = 0;
  while (true) {
    const size_t n = std::fwrite(block.data(), 1, block.size(), f);
    written += n;
    if (n < block.size() || std::fflush(f) != 0) break;
  }
  std::fclose(f);
  return written;
}

std::unique_ptr<v1::QueueManager::Stub> Connect(const QmgrdProcess& process) {
  return v1::QueueManager::NewStub(
      grpc::CreateChannel(process.target(), grpc::InsecureChannelCredentials()));
}

grpc::Status Enqueue(v1::QueueManager::Stub& qm, const std::string& payload) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::EnqueueRequest request;
  request.mutable_message()->set_queue(kQueue);
  request.mutable_message()->set_payload(payload);
  v1::EnqueueResponse response;
  return qm.Enqueue(&context, request, &response);
}

std::string Payload(int n) {
  std::string payload = absl::StrCat("m", n, "-");
  payload.resize(kPayloadBytes, static_cast<char>('a' + n % 26));
  return payload;
}

TEST(DiskFullTest, EnqueueIsRefusedWhileTheDiskIsFullAndResumesWhenSpaceReturns) {
  TempDir dir;
  const std::string mount_point = dir.path() + "/fs";
  ASSERT_EQ(::mkdir(mount_point.c_str(), 0700), 0);
  Tmpfs fs(mount_point, "24m");
  if (!fs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here: " << fs.error();
  const std::string data = mount_point + "/data";
  const std::vector<std::string> flags = {
      "--log-segment-bytes", "1MiB", "--checkpoint-log-bytes", "0", "--checkpoint-interval-s", "0"};
  auto process = std::make_unique<QmgrdProcess>(QMGRD_PATH, data, flags);
  ASSERT_TRUE(process->Start().ok()) << process->Stderr();
  {
    auto channel = grpc::CreateChannel(process->target(), grpc::InsecureChannelCredentials());
    auto admin = v1::Admin::NewStub(channel);
    grpc::ClientContext context;
    v1::DefineQueueRequest define;
    define.set_queue(kQueue);
    v1::DefineQueueResponse defined;
    ASSERT_OK(admin->DefineQueue(&context, define, &defined));
  }
  auto qm = Connect(*process);
  const std::string filler = mount_point + "/filler";
  ASSERT_GT(FillUp(filler), 0u);

  // The log writes into its segments until it needs one it cannot create.
  std::set<std::string> acknowledged;
  int n = 0;
  grpc::Status refused;
  for (; n < 1000; ++n) {
    const grpc::Status s = Enqueue(*qm, Payload(n));
    if (!s.ok()) {
      refused = s;
      break;
    }
    acknowledged.insert(Payload(n));
  }
  ASSERT_FALSE(refused.ok()) << "1000 messages of 32 KiB fitted on a full disk";
  EXPECT_REFUSED(refused, kResourceExhausted, "");
  EXPECT_GT(acknowledged.size(), 0u);
  std::printf("%zu messages acknowledged before the disk was full: %s\n", acknowledged.size(),
              refused.error_message().c_str());
  // Still full: still refused, and the server answers (it did not stop).
  EXPECT_REFUSED(Enqueue(*qm, Payload(n)), kResourceExhausted, "");
  const auto checkpoint = [&] {
    auto admin = v1::Admin::NewStub(
        grpc::CreateChannel(process->target(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    v1::CheckpointResponse response;
    return admin->Checkpoint(&context, v1::CheckpointRequest(), &response);
  };
  // The store is on the same disk: a checkpoint is refused before it
  // touches RocksDB (which, failing a write to its WAL, would abort qmgrd).
  const grpc::Status full_checkpoint = checkpoint();
  EXPECT_REFUSED(full_checkpoint, kResourceExhausted, "");
  EXPECT_NE(full_checkpoint.error_message().find("bytes free"), std::string::npos)
      << full_checkpoint.error_message();

  // Space returns: intake resumes by itself.
  ASSERT_EQ(::truncate(filler.c_str(), 0), 0);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  grpc::Status resumed;
  do {
    resumed = Enqueue(*qm, Payload(n));
    if (!resumed.ok()) absl::SleepFor(absl::Milliseconds(50));
  } while (!resumed.ok() && absl::Now() < deadline);
  ASSERT_TRUE(resumed.ok()) << resumed.error_message() << "\nqmgrd:\n" << process->Stderr();
  acknowledged.insert(Payload(n));
  for (int i = n + 1; i < n + 20; ++i) {
    ASSERT_OK(Enqueue(*qm, Payload(i)));
    acknowledged.insert(Payload(i));
  }
  EXPECT_OK(checkpoint());  // with room again, checkpoints run

  // A crash, and a restart: everything acknowledged is there, once.
  process->Signal(SIGKILL);
  process->WaitExit(absl::Seconds(10));
  process = std::make_unique<QmgrdProcess>(QMGRD_PATH, data, flags);
  ASSERT_TRUE(process->Start().ok()) << process->Stderr();
  client::ClientOptions options;
  options.target = process->target();
  options.max_receive_bytes = 64 << 20;
  auto client = client::Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<v1::BrowseResponse> browsed = (*client)->Browse(kQueue, 10000);
  ASSERT_TRUE(browsed.ok()) << browsed.status();
  {
    auto admin = v1::Admin::NewStub(
        grpc::CreateChannel(process->target(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    v1::CheckpointResponse response;
    EXPECT_OK(admin->Checkpoint(&context, v1::CheckpointRequest(), &response));
  }
  std::multiset<std::string> present;
  for (const v1::Message& m : browsed->messages()) present.insert(m.payload());
  for (const std::string& payload : acknowledged) {
    EXPECT_EQ(present.count(payload), 1u) << payload.substr(0, 8) << " lost or duplicated";
  }
}

}  // namespace
}  // namespace qmgr
