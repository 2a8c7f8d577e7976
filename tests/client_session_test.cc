// client::Session against the real qmgrd: a terminal's whole life (open,
// input, output, close, reopen), and automatic resynchronization while qmgrd
// is killed with SIGKILL again and again: every input the terminal was told
// accepted is queued exactly once, every output reaches it, and a repeat is
// always flagged possibly duplicate. QMGR_SESSION_KILLS sets the number of
// kills (the `long` run: 100).
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "client/session.h"
#include "gtest/gtest.h"
#include "tests/support/qmgrd_process.h"
#include "tests/support/temp_dir.h"

namespace qmgr::client {
namespace {

namespace v1 = qmgr::v1;

constexpr char kName[] = "T1";
constexpr char kOutput[] = "T1.OUT";
const std::vector<std::string> kFlags = {"--log-segment-bytes", "4MiB", "--checkpoint-log-bytes",
                                         "1MiB"};

std::unique_ptr<Client> Connect(const std::string& target) {
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect({.target = target, .call_timeout = absl::Seconds(10)});
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(server_.Start().ok());
    std::unique_ptr<Client> client = Connect(server_.target());
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->DefineQueue("REQUESTS", {}).ok());
    v1::QueueAttributes output;
    output.set_output_of_session(kName);
    ASSERT_TRUE(client->DefineQueue(kOutput, output).ok());
  }

  SessionOptions Options() {
    return SessionOptions{.name = kName,
                          .file_path = dir_.path() + "/T1.session",
                          .resolve_target = [this] { return server_.target(); },
                          .call_timeout = absl::Seconds(10),
                          .reconnect_backoff = absl::Milliseconds(20),
                          .reconnect_backoff_max = absl::Milliseconds(200),
                          .reconnect_timeout = absl::Seconds(60)};
  }

  std::unique_ptr<Session> MustOpen() {
    absl::StatusOr<std::unique_ptr<Session>> session = Session::Open(Options());
    EXPECT_TRUE(session.ok()) << session.status() << "\n" << server_.Stderr();
    return session.ok() ? *std::move(session) : nullptr;
  }

  static v1::NewMessage Input(const std::string& payload) {
    v1::NewMessage m;
    m.set_queue("REQUESTS");
    m.set_payload(payload);
    m.set_class_(v1::RECOVERABLE);
    return m;
  }

  // Outputs for the session, as programs would reply; their ids.
  std::vector<uint64_t> PutOutputs(int n) {
    std::unique_ptr<Client> client = Connect(server_.target());
    std::vector<uint64_t> ids;
    for (int i = 0; i < n && client != nullptr; ++i) {
      v1::NewMessage m;
      m.set_queue(kOutput);
      m.set_payload(absl::StrCat("out ", i));
      absl::StatusOr<Enqueued> done = client->Enqueue(m);
      EXPECT_TRUE(done.ok()) << done.status();
      if (done.ok()) ids.push_back(done->message_id);
    }
    return ids;
  }

  // REQUESTS's payloads, oldest first.
  std::vector<std::string> Requests() {
    std::unique_ptr<Client> client = Connect(server_.target());
    std::vector<std::string> payloads;
    if (client == nullptr) return payloads;
    absl::StatusOr<v1::BrowseResponse> browsed = client->Browse("REQUESTS", 10000);
    EXPECT_TRUE(browsed.ok()) << browsed.status();
    if (!browsed.ok()) return payloads;
    EXPECT_FALSE(browsed->truncated());
    for (const v1::Message& m : browsed->messages()) payloads.push_back(m.payload());
    return payloads;
  }

  qmgr::testing::TempDir dir_;
  qmgr::testing::RestartedQmgrd server_{QMGRD_PATH, dir_.path() + "/data", kFlags};
};

TEST_F(SessionTest, ATerminalsLifeOpenSendReceiveCloseReopen) {
  std::unique_ptr<Session> session = MustOpen();
  ASSERT_NE(session, nullptr);
  EXPECT_FALSE(session->open_report().resynchronized);
  for (int i = 1; i <= 3; ++i) {
    absl::StatusOr<Accepted> sent = session->Send(Input(absl::StrCat("in ", i)));
    ASSERT_TRUE(sent.ok()) << sent.status();
    EXPECT_EQ(sent->input_seq, static_cast<uint64_t>(i));
    EXPECT_TRUE(sent->durable);
  }
  const std::vector<uint64_t> ids = PutOutputs(3);
  for (uint64_t i = 1; i <= 3; ++i) {
    absl::StatusOr<std::optional<Output>> output = session->Next(absl::Seconds(10));
    ASSERT_TRUE(output.ok()) << output.status();
    ASSERT_TRUE(output->has_value());
    EXPECT_EQ((*output)->out_seq, i);
    EXPECT_EQ((*output)->message.id(), ids[i - 1]);
    ASSERT_TRUE(session->Acknowledge(**output).ok());
  }
  ASSERT_TRUE(session->Close().ok());
  session.reset();
  session = MustOpen();  // closed normally: nothing to resynchronize
  ASSERT_NE(session, nullptr);
  EXPECT_FALSE(session->open_report().resynchronized);
  absl::StatusOr<Accepted> sent = session->Send(Input("in 4"));
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_EQ(sent->input_seq, 4u);
  EXPECT_EQ(Requests(), (std::vector<std::string>{"in 1", "in 2", "in 3", "in 4"}));
}

TEST_F(SessionTest, ReopenAfterAServerKillResynchronizes) {
  std::unique_ptr<Session> session = MustOpen();
  ASSERT_NE(session, nullptr);
  ASSERT_TRUE(session->Send(Input("a")).ok());
  PutOutputs(1);
  absl::StatusOr<std::optional<Output>> output = session->Next(absl::Seconds(10));
  ASSERT_TRUE(output.ok() && output->has_value()) << output.status();
  server_.Kill();
  session.reset();  // the terminal goes down too, its output unsecured
  ASSERT_TRUE(server_.Start().ok());
  session = MustOpen();
  ASSERT_NE(session, nullptr);
  const ResyncReport& report = session->open_report();
  EXPECT_TRUE(report.resynchronized);
  EXPECT_TRUE(report.resent_inputs.empty());
  absl::StatusOr<std::optional<Output>> again = session->Next(absl::Seconds(10));
  ASSERT_TRUE(again.ok() && again->has_value()) << again.status();
  EXPECT_EQ((*again)->message.id(), (*output)->message.id());
  EXPECT_TRUE((*again)->possible_duplicate);
  ASSERT_TRUE(session->Acknowledge(**again).ok());
  EXPECT_EQ(Requests(), std::vector<std::string>{"a"});
}

TEST_F(SessionTest, SigkillsWhileATerminalWorksLoseAndDuplicateNothingSilently) {
  const char* env = std::getenv("QMGR_SESSION_KILLS");
  const int kills = env != nullptr ? std::atoi(env) : 5;
  constexpr int kInputsMax = 9000;  // one Browse sees them all
  const std::vector<uint64_t> outputs = PutOutputs(std::max(20, kills * 10));
  const std::set<uint64_t> expected(outputs.begin(), outputs.end());

  std::vector<ResyncReport> reports;
  SessionOptions options = Options();
  options.on_resync = [&](const ResyncReport& r) { reports.push_back(r); };
  absl::StatusOr<std::unique_ptr<Session>> opened = Session::Open(options);
  ASSERT_TRUE(opened.ok()) << opened.status();
  Session& session = **opened;

  std::atomic<bool> killing = true;
  std::thread killer([&] {
    std::mt19937_64 random(17);
    for (int k = 0; k < kills; ++k) {
      absl::SleepFor(absl::Milliseconds(100 + random() % 300));
      server_.Kill();
      if (absl::Status started = server_.Start(); !started.ok()) {
        ADD_FAILURE() << started;
        break;
      }
    }
    killing = false;
  });

  std::vector<std::string> accepted;
  std::map<uint64_t, int> received;  // message id -> times handed out
  int silent_duplicates = 0;
  const auto take = [&](absl::Duration wait) -> bool {
    absl::StatusOr<std::optional<Output>> output = session.Next(wait);
    EXPECT_TRUE(output.ok()) << output.status();
    if (!output.ok() || !output->has_value()) return false;
    const Output& out = **output;
    if (++received[out.message.id()] > 1 && !out.possible_duplicate) ++silent_duplicates;
    EXPECT_TRUE(session.Acknowledge(out).ok());
    return true;
  };
  bool failed = false;
  while (killing && !failed) {
    if (accepted.size() < kInputsMax) {
      const std::string payload = absl::StrCat("in ", accepted.size() + 1);
      absl::StatusOr<Accepted> sent = session.Send(Input(payload));
      EXPECT_TRUE(sent.ok()) << sent.status();
      failed = !sent.ok();
      if (sent.ok()) accepted.push_back(payload);
    }
    take(absl::Milliseconds(1));
  }
  killer.join();
  ASSERT_FALSE(failed);
  while (take(absl::Seconds(2))) {
  }

  // Exactly once, in order.
  EXPECT_EQ(Requests(), accepted);
  std::set<uint64_t> seen;
  for (const auto& [id, times] : received) seen.insert(id);
  EXPECT_EQ(seen, expected);
  EXPECT_EQ(silent_duplicates, 0);
  EXPECT_GE(reports.size(), 2u) << "the kills forced resynchronizations";
  EXPECT_EQ(session.state().unhardened_inputs_size(), 0);
}

}  // namespace
}  // namespace qmgr::client
