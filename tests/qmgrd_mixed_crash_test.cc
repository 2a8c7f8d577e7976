// The real qmgrd killed with SIGKILL at random moments under every kind of
// client at once: producers on streams, a program committing and backing
// out units with inserts (into a plain queue and into the session's output
// queue), a two-phase-commit coordinator (Begin, Get, Insert, Prepare, then
// Commit or Backout; after each restart it reconnects and resolves its units
// in doubt), and a terminal on client::Session that sends numbered input and
// receives output across every kill, resynchronizing by itself. After each
// restart the state, read through gRPC, is held to every acknowledgement the
// clients received (tests/support/crash_workload.h states the invariants);
// at the end the terminal's input is queued exactly once and in order, every
// output committed to it arrived, and none came twice unflagged.
// QMGR_MIXED_KILLS sets the number of kills (the `long` run: 100).
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "client/session.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "qmgr/v1/qmgr.grpc.pb.h"
#include "tests/support/crash_workload.h"
#include "tests/support/qmgrd_process.h"
#include "tests/support/temp_dir.h"

namespace qmgr {
namespace {

using qmgr::testing::CrashWorkload;
using qmgr::testing::Event;
using qmgr::testing::kSessionOutputQueue;
using qmgr::testing::Model;
using qmgr::testing::ObservedState;

constexpr char kIn[] = "IN";
constexpr char kOut[] = "OUT";
constexpr char kRequests[] = "REQ";   // the terminal's input: nobody takes it
constexpr uint32_t kDepthMax = 4000;  // every queue: one Browse sees all of it
constexpr absl::Duration kCallTimeout = absl::Seconds(10);

const std::vector<std::string> kFlags = {
    "--log-segment-bytes",    "4MiB", "--checkpoint-log-bytes", "1MiB", "--qmgr-name",
    CrashWorkload::kQualifier};

v1::NewMessage Message(const std::string& queue, const std::string& payload) {
  v1::NewMessage m;
  m.set_queue(queue);
  m.set_payload(payload);
  return m;
}

bool IsSessionOutput(const std::string& marker) { return absl::StrContains(marker, "-o"); }

// The clients' memory of what they were told, shared by their threads and
// kept across kills: the checker's model, and the terminal's own records.
class Ledger {
 public:
  void Record(const Event& e) {
    absl::MutexLock lock(&mu_);
    pending_.push_back(e);
    if (e.kind == 'I' && IsSessionOutput(e.marker) && !received_.contains(e.marker)) {
      undelivered_.insert(e.marker);
    }
  }
  // The model of everything recorded so far (taken before the state is read,
  // so that every acknowledgement it holds came before the reading).
  Model& Snapshot() {
    absl::MutexLock lock(&mu_);
    for (const Event& e : pending_) model_.Apply(e);
    pending_.clear();
    return model_;
  }
  // An output the terminal received; false if it came again unflagged.
  bool Received(const std::string& marker, bool possible_duplicate) {
    absl::MutexLock lock(&mu_);
    undelivered_.erase(marker);
    return received_.insert(marker).second || possible_duplicate;
  }
  std::set<std::string> Undelivered() {
    absl::MutexLock lock(&mu_);
    return undelivered_;
  }

 private:
  absl::Mutex mu_;
  std::vector<Event> pending_ ABSL_GUARDED_BY(mu_);
  Model model_;  // touched by the checking thread only
  std::set<std::string> received_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> undelivered_ ABSL_GUARDED_BY(mu_);
};

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  return context;
}

// One coordinated unit as the coordinator remembers it.
struct CoordinatedUnit {
  uint64_t taken = 0;
  std::vector<std::string> inserts;
};

// The coordinator's calls for one XID, over the Coordinator service.
template <typename Request>
Request Key(const std::string& xid) {
  Request request;
  request.set_coordinator(CrashWorkload::kCoordinator);
  request.set_qualifier(CrashWorkload::kQualifier);
  request.set_xid(xid);
  return request;
}

class MixedCrashTest : public ::testing::Test {
 protected:
  // The state through gRPC: every queue the load writes, the coordinator's
  // units in doubt, the session's input number, and the next id (a probe
  // message's, on a queue of its own).
  ObservedState Observe(client::Client& client) {
    ObservedState state;
    for (const char* queue : {kIn, kOut, kRequests, kSessionOutputQueue}) {
      absl::StatusOr<v1::BrowseResponse> browsed = client.Browse(queue, kDepthMax);
      EXPECT_TRUE(browsed.ok()) << browsed.status();
      if (!browsed.ok()) continue;
      EXPECT_FALSE(browsed->truncated()) << queue;
      for (const v1::Message& m : browsed->messages()) {
        state.messages.push_back({m.id(), m.queue(), m.payload(), m.backout_count()});
      }
    }
    v1::ListInDoubtRequest list;
    list.set_coordinator(CrashWorkload::kCoordinator);
    list.set_qualifier(CrashWorkload::kQualifier);
    v1::ListInDoubtResponse units;
    const grpc::Status listed =
        client.admin()->ListInDoubt(client.NewContext().get(), list, &units);
    EXPECT_TRUE(listed.ok()) << listed.error_message();
    EXPECT_FALSE(units.truncated());
    for (const v1::InDoubtInfo& unit : units.units()) {
      state.in_doubt[unit.xid()].assign(unit.locked_message_ids().begin(),
                                        unit.locked_message_ids().end());
    }
    v1::DisplaySessionsRequest display;
    display.add_sessions(CrashWorkload::kSession);
    v1::DisplaySessionsResponse sessions;
    const grpc::Status displayed =
        client.admin()->DisplaySessions(client.NewContext().get(), display, &sessions);
    EXPECT_TRUE(displayed.ok() || displayed.error_code() == grpc::StatusCode::NOT_FOUND)
        << displayed.error_message();
    for (const v1::SessionInfo& session : sessions.sessions())
      state.session_in_seq = session.in_seq();
    absl::Status defined = client.DefineQueue("PROBE", {});
    EXPECT_TRUE(defined.ok() || absl::IsAlreadyExists(defined)) << defined;
    absl::StatusOr<client::Enqueued> probe = client.Enqueue(Message("PROBE", "probe"));
    EXPECT_TRUE(probe.ok()) << probe.status();
    if (probe.ok()) state.next_id = probe->message_id;
    return state;
  }

  // The coordinator's resync after a restart: Connect names its units in
  // doubt; each gets a random outcome.
  void ResolveInDoubt(v1::Coordinator::Stub& coordinator, std::mt19937_64& random) {
    v1::ConnectRequest connect;
    connect.set_coordinator(CrashWorkload::kCoordinator);
    connect.set_qualifier(CrashWorkload::kQualifier);
    v1::ConnectResponse in_doubt;
    const grpc::Status connected = coordinator.Connect(Ctx().get(), connect, &in_doubt);
    ASSERT_TRUE(connected.ok()) << connected.error_message();
    for (const std::string& xid : in_doubt.in_doubt_xids()) {
      const bool commit = random() % 2 == 0;
      v1::ResolveRequest request;
      request.set_coordinator(CrashWorkload::kCoordinator);
      request.set_qualifier(CrashWorkload::kQualifier);
      v1::XidOutcome* outcome = request.add_outcomes();
      outcome->set_xid(xid);
      outcome->set_outcome(commit ? v1::COMMIT : v1::BACKOUT);
      ledger_.Record({'R', 0, xid});
      v1::ResolveResponse response;
      const grpc::Status resolved = coordinator.Resolve(Ctx().get(), request, &response);
      ASSERT_TRUE(resolved.ok()) << resolved.error_message();
      ASSERT_EQ(response.results_size(), 1);
      ASSERT_EQ(response.results(0).code(), 0) << xid << ": " << response.results(0).message();
      ++resolved_at_restart_;
      const CoordinatedUnit& unit = units_[xid];
      if (unit.taken != 0) ledger_.Record({commit ? 'C' : 'S', unit.taken, ""});
      for (const std::string& marker : unit.inserts)
        ledger_.Record({commit ? 'I' : 'B', 0, marker});
    }
  }

  void Producer(client::Client& client, int round, int p) {
    absl::StatusOr<std::unique_ptr<client::Producer>> producer = client.OpenProducer(16);
    if (!producer.ok()) return;
    for (int n = 0; !stop_; ++n) {
      const std::string marker = absl::StrCat("r", round, "-p", p, "-", n);
      absl::StatusOr<client::Enqueued> done = (*producer)->Enqueue(Message(kIn, marker));
      if (absl::IsResourceExhausted(done.status())) {  // QUEUE_FULL
        absl::SleepFor(absl::Milliseconds(5));
        continue;
      }
      if (!done.ok()) return;  // the server is gone
      ledger_.Record({'E', done->message_id, marker});
    }
  }

  // Takes from IN in units: most commit, some with an insert into OUT or
  // into the session's output queue; one in ten backs out with an insert.
  void Program(client::Client& client, int round) {
    absl::StatusOr<std::unique_ptr<client::Program>> program = client.OpenProgram();
    if (!program.ok()) return;
    std::mt19937_64 random(round);
    for (int n = 0; !stop_; ++n) {
      client::UnitOfWork unit = (*program)->Begin();
      absl::StatusOr<std::optional<v1::Message>> got = unit.Get(kIn, absl::Milliseconds(50));
      if (!got.ok()) return;
      if (!got->has_value()) continue;
      const uint64_t id = (*got)->id();
      const int choice = static_cast<int>(random() % 10);
      std::string marker;
      if (choice <= 4) {
        const bool to_session = choice <= 2;
        marker = absl::StrCat("r", round, to_session ? "-o" : "-i", n);
        if (!unit.Insert(Message(to_session ? kSessionOutputQueue : kOut, marker)).ok()) {
          if (!unit.Backout().ok()) return;  // QUEUE_FULL, or the server is gone
          continue;
        }
      }
      if (choice == 9) {
        if (unit.Backout().ok() && !marker.empty()) ledger_.Record({'B', 0, marker});
        continue;
      }
      // From here a kill leaves the outcome open.
      ledger_.Record({'P', id, marker});
      if (!unit.Commit().ok()) return;
      ledger_.Record({'C', id, ""});
      if (marker.empty()) continue;
      ledger_.Record({'I', 0, marker});
      // The terminal may take it at once: from here its arrival is checked
      // by the terminal, not its presence.
      if (IsSessionOutput(marker)) ledger_.Record({'K', 0, marker});
    }
  }

  // Two-phase commit: a unit per XID takes a message (sometimes inserting
  // into OUT), is prepared, and is decided a little later (mostly commit).
  void Coordinator(client::Client& client, int round) {
    std::unique_ptr<v1::Coordinator::Stub> coordinator = v1::Coordinator::NewStub(client.channel());
    std::mt19937_64 random(1000 + round);
    for (int n = 0; !stop_; ++n) {
      const std::string xid = absl::StrCat("r", round, "-x", n);
      v1::BeginResponse begun;
      if (!coordinator->Begin(Ctx().get(), Key<v1::BeginRequest>(xid), &begun).ok()) return;
      const auto decide = [&](bool commit) {
        ledger_.Record({'R', 0, xid});
        if (commit) {
          v1::CommitResponse response;
          return coordinator->Commit(Ctx().get(), Key<v1::CommitRequest>(xid), &response).ok();
        }
        v1::CoordinatorBackoutResponse response;
        return coordinator->Backout(Ctx().get(), Key<v1::CoordinatorBackoutRequest>(xid), &response)
            .ok();
      };
      v1::GetRequest get;
      get.set_uow(begun.uow());
      get.set_queue(kIn);
      get.set_wait_ms(20);
      v1::GetResponse got;
      if (!client.queue_manager()->Get(Ctx().get(), get, &got).ok()) return;
      if (!got.has_message()) {
        if (!decide(false)) return;
        continue;
      }
      CoordinatedUnit& unit = units_[xid];  // this thread's alone until the restart
      unit.taken = got.message().id();
      if (random() % 3 == 0) {
        const std::string marker = absl::StrCat("r", round, "-c", n);
        v1::InsertRequest insert;
        insert.set_uow(begun.uow());
        *insert.mutable_message() = Message(kOut, marker);
        v1::InsertResponse inserted;
        if (client.queue_manager()->Insert(Ctx().get(), insert, &inserted).ok()) {
          unit.inserts.push_back(marker);
        }
      }
      ledger_.Record({'P', unit.taken, xid});
      for (const std::string& marker : unit.inserts) ledger_.Record({'P', unit.taken, marker});
      v1::PrepareResponse prepared;
      if (!coordinator->Prepare(Ctx().get(), Key<v1::PrepareRequest>(xid), &prepared).ok()) return;
      ledger_.Record({'Q', unit.taken, xid});
      absl::SleepFor(absl::Microseconds(random() % 2000));  // in doubt for a while
      const bool commit = random() % 4 != 0;
      // Settled before the backout (crash_workload.h, 'S'): once backed out
      // the message may be taken by the program at once.
      if (!commit) ledger_.Record({'S', unit.taken, ""});
      if (!decide(commit)) return;
      ++decided_;
      if (commit) ledger_.Record({'C', unit.taken, ""});
      for (const std::string& marker : unit.inserts)
        ledger_.Record({commit ? 'I' : 'B', 0, marker});
    }
  }

  // The terminal: numbered RECOVERABLE input into REQ, output received and
  // acknowledged, through every kill (the library resynchronizes).
  void Terminal(client::Session& session) {
    while (!terminal_stop_) {
      if (accepted_.size() < kDepthMax) {
        const std::string payload = absl::StrCat("t", accepted_.size() + 1);
        v1::NewMessage input = Message(kRequests, payload);
        input.set_class_(v1::RECOVERABLE);
        absl::StatusOr<client::Accepted> sent = session.Send(input);
        if (!sent.ok()) {
          ADD_FAILURE() << "send: " << sent.status();
          return;
        }
        accepted_.push_back(payload);
        // An answer lost in a kill leaves only the number known: REQ's
        // contents are checked at the end.
        if (sent->message_id != 0) ledger_.Record({'E', sent->message_id, payload});
        ledger_.Record({'H', sent->input_seq, ""});
      }
      if (!TakeOutput(absl::Milliseconds(2))) absl::SleepFor(absl::Milliseconds(1));
    }
  }

  bool TakeOutput(absl::Duration wait) {
    absl::StatusOr<std::optional<client::Output>> output = terminal_->Next(wait);
    if (!output.ok()) {
      ADD_FAILURE() << "next: " << output.status();
      return false;
    }
    if (!output->has_value()) return false;
    const client::Output& out = **output;
    ++outputs_received_;
    if (!ledger_.Received(out.message.payload(), out.possible_duplicate)) {
      ADD_FAILURE() << "output " << out.out_seq << " (" << out.message.payload()
                    << ") came again without the possible-duplicate flag";
    }
    const absl::Status acknowledged = terminal_->Acknowledge(out);
    // Taken back by a resynchronization since Next: it comes again, flagged.
    EXPECT_TRUE(acknowledged.ok() || absl::IsFailedPrecondition(acknowledged)) << acknowledged;
    return true;
  }

  qmgr::testing::TempDir dir_;
  qmgr::testing::RestartedQmgrd server_{QMGRD_PATH, dir_.path() + "/data", kFlags};
  Ledger ledger_;
  std::map<std::string, CoordinatedUnit> units_;  // by XID
  std::atomic<bool> stop_{false};
  std::atomic<bool> terminal_stop_{false};
  std::unique_ptr<client::Session> terminal_;
  std::vector<std::string> accepted_;  // the terminal's inputs, in order
  std::atomic<int> outputs_received_{0};
  std::atomic<int> decided_{0};
  int resolved_at_restart_ = 0;
};

TEST_F(MixedCrashTest, SigkillsUnderSessionsProgramsAndACoordinatorLoseNothingAcknowledged) {
  const char* env = std::getenv("QMGR_MIXED_KILLS");
  const int kills = env != nullptr ? std::atoi(env) : 4;
  std::mt19937_64 random(23);
  std::atomic<int> resyncs{0};
  std::thread terminal;
  absl::Cleanup stop_terminal = [&] {
    terminal_stop_ = true;
    if (terminal.joinable()) terminal.join();
  };
  int checks = 0;
  for (int round = 0; round <= kills; ++round) {
    const absl::Status started = server_.Start();
    ASSERT_TRUE(started.ok()) << "round " << round << ": " << started;
    absl::StatusOr<std::unique_ptr<client::Client>> connected =
        client::Client::Connect({.target = server_.target(), .call_timeout = kCallTimeout});
    ASSERT_TRUE(connected.ok()) << connected.status();
    client::Client& client = **connected;
    if (round == 0) {
      v1::QueueAttributes bounded;
      bounded.set_max_depth(kDepthMax);
      v1::QueueAttributes output = bounded;
      output.set_output_of_session(CrashWorkload::kSession);
      ASSERT_TRUE(client.DefineQueue(kIn, bounded).ok());
      ASSERT_TRUE(client.DefineQueue(kOut, bounded).ok());
      ASSERT_TRUE(client.DefineQueue(kRequests, {}).ok());
      ASSERT_TRUE(client.DefineQueue(kSessionOutputQueue, output).ok());
      absl::StatusOr<std::unique_ptr<client::Session>> opened =
          client::Session::Open({.name = CrashWorkload::kSession,
                                 .file_path = dir_.path() + "/terminal.session",
                                 .resolve_target = [this] { return server_.target(); },
                                 .call_timeout = kCallTimeout,
                                 .reconnect_backoff = absl::Milliseconds(20),
                                 .reconnect_backoff_max = absl::Milliseconds(200),
                                 .reconnect_timeout = absl::Seconds(60),
                                 .on_resync = [&](const client::ResyncReport&) { ++resyncs; }});
      ASSERT_TRUE(opened.ok()) << opened.status();
      terminal_ = *std::move(opened);
      terminal = std::thread([this] { Terminal(*terminal_); });
    } else {
      Model& model = ledger_.Snapshot();
      const ObservedState state = Observe(client);
      ++checks;
      const std::vector<std::string> broken = model.Check(state);
      ASSERT_TRUE(broken.empty()) << "round " << round << ":\n"
                                  << absl::StrJoin(broken, "\n") << "\n"
                                  << server_.Stderr();
      for (const Event& e : model.Settle(state)) ledger_.Record(e);
      std::unique_ptr<v1::Coordinator::Stub> coordinator =
          v1::Coordinator::NewStub(client.channel());
      ASSERT_NO_FATAL_FAILURE(ResolveInDoubt(*coordinator, random));
    }
    if (round == kills) break;
    stop_ = false;
    std::vector<std::thread> threads;
    for (int p = 0; p < 2; ++p) threads.emplace_back([&, p] { Producer(client, round, p); });
    threads.emplace_back([&] { Program(client, round); });
    threads.emplace_back([&] { Coordinator(client, round); });
    absl::SleepFor(absl::Milliseconds(300 + random() % 500));
    server_.Kill();
    stop_ = true;
    for (std::thread& t : threads) t.join();
  }
  std::move(stop_terminal).Invoke();
  while (TakeOutput(absl::Seconds(2))) {
  }

  const std::set<std::string> undelivered = ledger_.Undelivered();
  EXPECT_TRUE(undelivered.empty())
      << "outputs committed, never delivered: " << absl::StrJoin(undelivered, " ");
  absl::StatusOr<std::unique_ptr<client::Client>> client =
      client::Client::Connect({.target = server_.target(), .call_timeout = kCallTimeout});
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<v1::BrowseResponse> requests = (*client)->Browse(kRequests, kDepthMax);
  ASSERT_TRUE(requests.ok()) << requests.status();
  std::vector<std::string> queued;
  for (const v1::Message& m : requests->messages()) queued.push_back(m.payload());
  EXPECT_EQ(queued, accepted_) << "the terminal's input, exactly once and in order";
  EXPECT_GE(resyncs, std::min(kills, 2)) << "the kills forced resynchronizations";
  EXPECT_GT(decided_ + resolved_at_restart_, 0) << "the coordinator decided units";
  EXPECT_GT(outputs_received_, 0) << "the terminal received output";
  std::printf(
      "kills=%d invariant_checks=%d events=%llu terminal_inputs=%zu outputs_received=%d "
      "resyncs=%d coordinated_decided=%d resolved_in_doubt_at_restart=%d\n",
      kills, checks, static_cast<unsigned long long>(ledger_.Snapshot().events()), accepted_.size(),
      outputs_received_.load(), resyncs.load(), decided_.load(), resolved_at_restart_);
}

}  // namespace
}  // namespace qmgr
