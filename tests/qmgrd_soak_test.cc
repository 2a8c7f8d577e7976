// Clients that vanish: a soak of a real qmgrd by clients that connect, do
// part of something and go without a word: mid-unit (a ProgramStream holding
// a message, a unary Get's leased unit), mid-stream (an EnqueueStream whose
// acknowledgements are never read), mid-resync (a session bound and sensed
// but never started; a Receive stream dropped). Their units are backed out
// (the message goes back), nothing is left open, and qmgrd's memory stays
// flat: what it has allocated and not freed (tcmalloc's account, scraped
// from its metrics) tightly, its RSS (which also holds the allocator's
// caches) within a margin, its file descriptors within a few.
// QMGR_SOAK_SECONDS sets the length (20 by default; the `long` run: 600).
#include <dirent.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "qmgr/v1/qmgr.grpc.pb.h"
#include "tests/support/metrics_scrape.h"
#include "tests/support/qmgrd_process.h"
#include "tests/support/rpc_expect.h"
#include "tests/support/temp_dir.h"

namespace qmgr {
namespace {

namespace v1 = qmgr::v1;
using testing::QmgrdProcess;
using testing::TempDir;

constexpr char kQueue[] = "WORK";
constexpr int kMessages = 200;
constexpr int kSessions = 4;

int SoakSeconds() {
  const char* env = std::getenv("QMGR_SOAK_SECONDS");
  return env != nullptr ? std::atoi(env) : 20;
}

uint64_t RssKiB(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) != 0) continue;
    uint64_t kib = 0;
    std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (parts.size() >= 2 && absl::SimpleAtoi(parts[1], &kib)) return kib;
  }
  return 0;
}

int OpenFds(pid_t pid) {
  DIR* dir = ::opendir(absl::StrCat("/proc/", pid, "/fd").c_str());
  if (dir == nullptr) return -1;
  int n = 0;
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n;
}

std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout = absl::Seconds(10)) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return context;
}

// One client on its own connection, gone when destroyed.
struct Vanishing {
  explicit Vanishing(const std::string& target) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);  // a connection of its own
    channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
    qm = v1::QueueManager::NewStub(channel);
  }
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::QueueManager::Stub> qm;
};

class SoakTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(process_.Start().ok()) << process_.Stderr();
    absl::StatusOr<int> port = testing::MetricsPort(process_.Stderr());
    ASSERT_TRUE(port.ok()) << port.status();
    metrics_port_ = *port;
    auto channel = grpc::CreateChannel(process_.target(), grpc::InsecureChannelCredentials());
    qm_ = v1::QueueManager::NewStub(channel);
    admin_ = v1::Admin::NewStub(channel);
    v1::DefineQueueRequest define;
    define.set_queue(kQueue);
    v1::DefineQueueResponse defined;
    ASSERT_OK(admin_->DefineQueue(Context().get(), define, &defined));
    // Bounded, so that what the streams enqueue does not pass for a leak.
    for (int s = 0; s < kSessions; ++s) {
      define.set_queue(absl::StrCat("OUT", s));
      define.mutable_attributes()->set_max_depth(32);
      define.mutable_attributes()->set_output_of_session(absl::StrCat("S", s));
      ASSERT_OK(admin_->DefineQueue(Context().get(), define, &defined));
    }
    for (int i = 0; i < kMessages; ++i) ASSERT_OK(Enqueue(kQueue, absl::StrCat("m", i)));
  }

  grpc::Status Enqueue(const std::string& queue, const std::string& payload) {
    v1::EnqueueRequest request;
    request.mutable_message()->set_queue(queue);
    request.mutable_message()->set_payload(payload);
    v1::EnqueueResponse response;
    return qm_->Enqueue(Context().get(), request, &response);
  }

  uint64_t Depth(const std::string& queue) {
    v1::DisplayQueuesRequest request;
    request.add_queues(queue);
    v1::DisplayQueuesResponse response;
    EXPECT_OK(admin_->DisplayQueues(Context().get(), request, &response));
    return response.queues_size() == 1 ? response.queues(0).depth() : 0;
  }

  int OpenUnits() {
    v1::DisplayUnitsResponse response;
    EXPECT_OK(admin_->DisplayUnits(Context().get(), v1::DisplayUnitsRequest(), &response));
    return response.units_size();
  }

  // A ProgramStream takes a message, then its client is gone.
  void MidUnitOnAStream() {
    Vanishing client(process_.target());
    auto context = Context();
    auto stream = client.qm->ProgramStream(context.get());
    v1::ProgramRequest request;
    request.mutable_get()->set_queue(kQueue);
    v1::ProgramResponse response;
    if (stream->Write(request)) stream->Read(&response);
    context->TryCancel();
  }

  // A unary Get leaves a leased unit behind.
  void MidUnitLeased() {
    Vanishing client(process_.target());
    v1::GetRequest get;
    get.set_queue(kQueue);
    v1::GetResponse got;
    client.qm->Get(Context().get(), get, &got).ok();
    if (got.uow() == 0) return;
    v1::InsertRequest insert;
    insert.set_uow(got.uow());
    insert.mutable_message()->set_queue(kQueue);
    insert.mutable_message()->set_payload("never committed");
    v1::InsertResponse inserted;
    client.qm->Insert(Context().get(), insert, &inserted).ok();
  }

  // An EnqueueStream that writes and never reads its acknowledgements.
  void MidStream(int round) {
    Vanishing client(process_.target());
    auto context = Context();
    auto stream = client.qm->EnqueueStream(context.get());
    v1::EnqueueRequest request;
    request.mutable_message()->set_queue(absl::StrCat("OUT", round % kSessions));
    request.mutable_message()->set_payload(std::string(512, 's'));
    for (int i = 0; i < 8; ++i) {
      if (!stream->Write(request)) break;
    }
    context->TryCancel();
  }

  // Bound and sensed, then gone before SDT; or gone from its Receive stream.
  void MidResync(int round) {
    Vanishing client(process_.target());
    const std::string session = absl::StrCat("S", round % kSessions);
    v1::OpenSessionRequest open;
    open.set_session(session);
    v1::OpenSessionResponse opened;
    if (!client.qm->OpenSession(Context().get(), open, &opened).ok()) return;
    v1::SetAndTestSequenceNumbersRequest stsn;
    stsn.set_session(session);
    stsn.mutable_input()->set_action(v1::IGNORE);
    stsn.mutable_output()->set_action(v1::IGNORE);
    v1::SetAndTestSequenceNumbersResponse sensed;
    if (!client.qm->SetAndTestSequenceNumbers(Context().get(), stsn, &sensed).ok()) return;
    if (round % 2 == 0) return;  // never SDT
    v1::StartDataTrafficRequest sdt;
    sdt.set_session(session);
    v1::StartDataTrafficResponse started;
    if (!client.qm->StartDataTraffic(Context().get(), sdt, &started).ok()) return;
    auto context = Context(absl::Milliseconds(200));  // an output, if one is queued
    v1::ReceiveRequest receive;
    receive.set_session(session);
    auto reader = client.qm->Receive(context.get(), receive);
    v1::ReceiveResponse output;
    reader->Read(&output);  // an output sent, never acknowledged
    context->TryCancel();
  }

  TempDir dir_;
  QmgrdProcess process_{
      QMGRD_PATH,
      dir_.path() + "/data",
      {"--log-segment-bytes", "4MiB", "--unit-lease-ms", "300", "--metrics-listen", "127.0.0.1:0"}};
  int metrics_port_ = 0;
  std::unique_ptr<v1::QueueManager::Stub> qm_;
  std::unique_ptr<v1::Admin::Stub> admin_;
};

TEST_F(SoakTest, VanishingClientsLeaveNoUnitsAndQmgrdsMemoryAndFdsStayFlat) {
  const absl::Duration length = absl::Seconds(SoakSeconds());
  const pid_t pid = process_.pid();
  std::mt19937_64 random(SoakSeconds());
  std::vector<uint64_t> rss, heap;
  std::vector<int> fds;
  const auto sample = [&] {
    rss.push_back(RssKiB(pid));
    fds.push_back(OpenFds(pid));
    absl::StatusOr<std::map<std::string, double>> m = testing::ScrapeMetrics(metrics_port_);
    ASSERT_TRUE(m.ok()) << m.status();
    ASSERT_EQ(m->count("qmgr_heap_allocated_bytes"), 1u) << "qmgrd runs on tcmalloc";
    heap.push_back(static_cast<uint64_t>(m->at("qmgr_heap_allocated_bytes")) >> 10);
  };
  uint64_t clients = 0;
  const absl::Time start = absl::Now();
  absl::Time next_sample = start + length / 10;
  while (absl::Now() - start < length) {
    const int round = static_cast<int>(clients++);
    const char* only = std::getenv("QMGR_SOAK_KIND");  // one kind of client only (0-3)
    switch (only != nullptr ? std::atoi(only) : random() % 4) {
      case 0:
        MidUnitOnAStream();
        break;
      case 1:
        MidUnitLeased();
        break;
      case 2:
        MidStream(round);
        break;
      case 3:
        MidResync(round);
        break;
    }
    if (absl::Now() >= next_sample) {
      ASSERT_NO_FATAL_FAILURE(sample());
      next_sample += length / 10;
    }
  }
  // Every unit was backed out (streams at once, leases once expired): the
  // messages are all back.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while ((OpenUnits() != 0 || Depth(kQueue) != kMessages) && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(OpenUnits(), 0);
  EXPECT_EQ(Depth(kQueue), static_cast<uint64_t>(kMessages)) << "a vanished client's unit kept "
                                                                "its message";
  ASSERT_NO_FATAL_FAILURE(sample());
  ASSERT_GE(rss.size(), 3u);
  std::printf("%llu vanishing clients in %s; qmgrd heap allocated KiB %s; RSS KiB %s; fds %s\n",
              static_cast<unsigned long long>(clients),
              absl::FormatDuration(absl::Now() - start).c_str(), absl::StrJoin(heap, " ").c_str(),
              absl::StrJoin(rss, " ").c_str(), absl::StrJoin(fds, " ").c_str());
  // Flat: the first half of the run warms up (allocator caches, gRPC's
  // pools, the output queues filling to their max depth); the end is within
  // a margin of its peak. Descriptors: within a few of the first half's.
  // The heap is what a leak would grow: it gets a tight margin (a few
  // hundred KiB of buffers in flight at any moment); RSS a looser one.
  const size_t half = rss.size() / 2;
  const uint64_t warm_heap = *std::max_element(heap.begin(), heap.begin() + half);
  EXPECT_LE(heap.back(), warm_heap + warm_heap / 10 + 1024) << "the heap grew: a leak";
  const uint64_t warm = *std::max_element(rss.begin(), rss.begin() + half);
  EXPECT_LE(rss.back(), warm + warm / 10 + 8 * 1024) << "RSS grew";
  EXPECT_LE(fds.back(), *std::max_element(fds.begin(), fds.begin() + half) + 4) << "fds grew";
}

}  // namespace
}  // namespace qmgr
