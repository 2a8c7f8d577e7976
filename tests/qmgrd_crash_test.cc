// qmgrd restarted from its data directory: after a normal shutdown (a
// normal restart, everything kept in order), and after SIGKILLs under load
// through the client library (producers on streams, a program committing
// units), each restart held to every acknowledgement the clients received
// (tests/support/crash_workload.h states the invariants).
#include <signal.h>

#include <atomic>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/support/crash_workload.h"
#include "tests/support/qmgrd_process.h"
#include "tests/support/temp_dir.h"

namespace qmgr {
namespace {

using qmgr::client::Client;
using qmgr::client::ClientOptions;
using qmgr::testing::Event;
using qmgr::testing::ObservedState;
using qmgr::testing::QmgrdProcess;

// The input queue's max depth: one Browse sees all of it.
constexpr uint32_t kDepthMax = 5000;

const std::vector<std::string> kFlags = {"--log-segment-bytes", "4MiB", "--checkpoint-log-bytes",
                                         "1MiB"};

std::unique_ptr<Client> Connect(const QmgrdProcess& process) {
  ClientOptions options;
  options.target = process.target();
  options.call_timeout = absl::Seconds(10);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

v1::NewMessage Message(const std::string& queue, const std::string& payload) {
  v1::NewMessage m;
  m.set_queue(queue);
  m.set_payload(payload);
  return m;
}

// Everything on the queue, through Browse, and the next id (a probe
// message's, on a queue of its own).
ObservedState Observe(Client& client) {
  ObservedState state;
  absl::StatusOr<v1::BrowseResponse> browsed = client.Browse("IN", kDepthMax);
  EXPECT_TRUE(browsed.ok()) << browsed.status();
  if (!browsed.ok()) return state;
  EXPECT_FALSE(browsed->truncated());
  for (const v1::Message& m : browsed->messages()) {
    state.messages.push_back({m.id(), m.queue(), m.payload(), m.backout_count()});
  }
  absl::Status defined = client.DefineQueue("PROBE", {});
  EXPECT_TRUE(defined.ok() || absl::IsAlreadyExists(defined)) << defined;
  absl::StatusOr<client::Enqueued> probe = client.Enqueue(Message("PROBE", "probe"));
  EXPECT_TRUE(probe.ok()) << probe.status();
  if (probe.ok()) state.next_id = probe->message_id;
  return state;
}

TEST(QmgrdRestartTest, NormalShutdownThenRestartKeepsEveryMessageInOrder) {
  qmgr::testing::TempDir dir;
  {
    QmgrdProcess first(QMGRD_PATH, dir.path() + "/data", kFlags);
    ASSERT_TRUE(first.Start().ok());
    std::unique_ptr<Client> client = Connect(first);
    ASSERT_TRUE(client->DefineQueue("Q", {}).ok());
    for (int i = 0; i < 50; ++i) {
      ASSERT_TRUE(client->Enqueue(Message("Q", absl::StrCat("m", i))).ok());
    }
    first.Signal(SIGTERM);
    ASSERT_EQ(first.WaitExit(absl::Seconds(20)), 0) << first.Stderr();
  }
  QmgrdProcess second(QMGRD_PATH, dir.path() + "/data", kFlags);
  ASSERT_TRUE(second.Start().ok());
  EXPECT_TRUE(absl::StrContains(second.Stderr(), "restart: normal")) << second.Stderr();
  std::unique_ptr<Client> client = Connect(second);
  absl::StatusOr<v1::BrowseResponse> browsed = client->Browse("Q");
  ASSERT_TRUE(browsed.ok()) << browsed.status();
  ASSERT_EQ(browsed->messages_size(), 50);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(browsed->messages(i).payload(), absl::StrCat("m", i));
}

TEST(QmgrdCrashTest, SigkillUnderLoadThroughTheClientLosesNothingAcknowledged) {
  const char* env = std::getenv("QMGR_QMGRD_KILLS");
  const int rounds = env != nullptr ? std::atoi(env) : 6;
  qmgr::testing::TempDir dir;
  std::mt19937_64 random(11);
  std::mutex mu;
  std::vector<Event> events;
  const auto record = [&](Event e) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(std::move(e));
  };
  for (int round = 0; round <= rounds; ++round) {
    QmgrdProcess process(QMGRD_PATH, dir.path() + "/data", kFlags);
    ASSERT_TRUE(process.Start().ok()) << "round " << round;
    std::unique_ptr<Client> client = Connect(process);
    ASSERT_NE(client, nullptr);
    if (round > 0) {
      const ObservedState state = Observe(*client);
      const std::vector<std::string> broken = qmgr::testing::CheckInvariants(events, state);
      ASSERT_TRUE(broken.empty()) << "round " << round << ":\n"
                                  << absl::StrJoin(broken, "\n") << "\n"
                                  << process.Stderr();
      for (const Event& e : qmgr::testing::Settle(events, state)) events.push_back(e);
    }
    if (round == rounds) break;
    v1::QueueAttributes in;
    in.set_max_depth(kDepthMax);
    absl::Status defined = client->DefineQueue("IN", in);
    ASSERT_TRUE(defined.ok() || absl::IsAlreadyExists(defined)) << defined;

    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    for (int p = 0; p < 2; ++p) {
      threads.emplace_back([&, p] {
        absl::StatusOr<std::unique_ptr<client::Producer>> producer = client->OpenProducer(16);
        if (!producer.ok()) return;
        for (int n = 0; !stop; ++n) {
          const std::string marker = absl::StrCat("r", round, "-p", p, "-", n);
          absl::StatusOr<client::Enqueued> done = (*producer)->Enqueue(Message("IN", marker));
          if (absl::IsResourceExhausted(done.status())) {  // QUEUE_FULL
            absl::SleepFor(absl::Milliseconds(5));
            continue;
          }
          if (!done.ok()) return;  // the server is gone
          record({'E', done->message_id, marker});
        }
      });
    }
    threads.emplace_back([&] {
      absl::StatusOr<std::unique_ptr<client::Program>> program = client->OpenProgram();
      if (!program.ok()) return;
      while (!stop) {
        client::UnitOfWork unit = (*program)->Begin();
        absl::StatusOr<std::optional<v1::Message>> got = unit.Get("IN", absl::Milliseconds(50));
        if (!got.ok()) return;
        if (!got->has_value()) continue;
        const uint64_t id = (*got)->id();
        record({'P', id, ""});
        if (!unit.Commit().ok()) return;
        record({'C', id, ""});
      }
    });
    absl::SleepFor(absl::Milliseconds(300 + random() % 500));
    process.Signal(SIGKILL);
    process.WaitExit(absl::Seconds(10));
    stop = true;
    for (std::thread& t : threads) t.join();
  }
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_GT(events.size(), 500u) << "the load did something";
}

}  // namespace
}  // namespace qmgr
