// client::Session against the real engine (opened by restart/, so that the
// server can lose power and come back) behind an in-process gRPC service that
// loses calls and answers on demand: each test checks one promise of
// docs/client.md (exactly-once input across lost answers and server crashes,
// resend or reissue, secure-before-acknowledge, possibly-duplicate output
// flagged, a stale file refused rather than guessed). The service is a test
// harness, not qmgrd's; tests/client_session_test.cc runs the same client
// against qmgrd. QMGR_SESSION_CRASHES sets the server power losses of the
// crash test (the `long` run: 100).
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "client/rpc_status.h"
#include "client/session.h"
#include "client/session_file.h"
#include "gtest/gtest.h"
#include "qmgr/engine.h"
#include "qmgr/status.h"
#include "restart/restart.h"
#include "rocksdb/env.h"
#include "tests/support/fault_file_system.h"
#include "tests/support/fault_rocksdb_fs.h"
#include "tests/support/temp_dir.h"

namespace qmgr::client {
namespace {

namespace v1 = qmgr::v1;
using qmgr::rpc::ToGrpcStatus;
using qmgr::testing::CrashMode;
using qmgr::testing::FaultFileSystem;
using qmgr::testing::FaultRocksFileSystem;

constexpr char kName[] = "T1";
constexpr char kOutput[] = "T1.OUT";
constexpr char kFile[] = "/c/T1.session";

int Crashes() {
  const char* env = std::getenv("QMGR_SESSION_CRASHES");
  return env != nullptr ? std::atoi(env) : 5;
}

// What the service does to the next call of a method.
enum class Fault {
  kRefuse,      // not carried out; UNAVAILABLE (the request was lost)
  kLoseAnswer,  // carried out; UNAVAILABLE (the answer was lost)
};

class EngineService final : public v1::QueueManager::Service {
 public:
  explicit EngineService(Engine* engine) : engine_(engine) {}

  void Inject(const std::string& method, Fault fault) {
    absl::MutexLock lock(&mu_);
    faults_[method] = fault;
  }
  int Calls(const std::string& method) {
    absl::MutexLock lock(&mu_);
    return calls_[method];
  }

  grpc::Status Enqueue(grpc::ServerContext*, const v1::EnqueueRequest* request,
                       v1::EnqueueResponse* response) override {
    return Run("Enqueue", [&]() -> absl::Status {
      const v1::NewMessage& m = request->message();
      MessageSpec spec;
      spec.queue = m.queue();
      spec.payload = m.payload();
      spec.message_class = m.class_();
      spec.correlation_id = m.correlation_id();
      spec.reply_to = m.reply_to();
      spec.expiry_time_us = m.expiry_time_us();
      spec.origin_session = m.session();
      spec.input_seq = m.input_seq();
      spec.ack_out_seq = m.ack_out_seq();
      absl::StatusOr<EnqueueResult> result = engine_->Enqueue(std::move(spec));
      if (!result.ok()) return result.status();
      response->set_message_id(result->message_id);
      response->set_durability(result->durability == Durability::kDurable ? v1::DURABLE
                                                                          : v1::IN_MEMORY);
      return absl::OkStatus();
    });
  }
  grpc::Status OpenSession(grpc::ServerContext*, const v1::OpenSessionRequest* request,
                           v1::OpenSessionResponse* response) override {
    return Run("OpenSession", [&]() -> absl::Status {
      absl::StatusOr<bool> resync = engine_->OpenSession(request->session(), request->cold());
      if (resync.ok()) response->set_resync_required(*resync);
      return resync.status();
    });
  }
  grpc::Status SetAndTestSequenceNumbers(grpc::ServerContext*,
                                         const v1::SetAndTestSequenceNumbersRequest* request,
                                         v1::SetAndTestSequenceNumbersResponse* response) override {
    return Run("SetAndTestSequenceNumbers", [&]() -> absl::Status {
      absl::StatusOr<StsnAnswer> answer = engine_->SetAndTestSequenceNumbers(
          request->session(), StsnRequest{.input = request->input(), .output = request->output()});
      if (!answer.ok()) return answer.status();
      *response->mutable_input() = answer->input;
      *response->mutable_output() = answer->output;
      return absl::OkStatus();
    });
  }
  grpc::Status StartDataTraffic(grpc::ServerContext*, const v1::StartDataTrafficRequest* request,
                                v1::StartDataTrafficResponse*) override {
    return Run("StartDataTraffic", [&] { return engine_->StartDataTraffic(request->session()); });
  }
  grpc::Status RequestRecovery(grpc::ServerContext*, const v1::RequestRecoveryRequest* request,
                               v1::RequestRecoveryResponse*) override {
    return Run("RequestRecovery", [&] { return engine_->RequestRecovery(request->session()); });
  }
  grpc::Status CloseSession(grpc::ServerContext*, const v1::CloseSessionRequest* request,
                            v1::CloseSessionResponse*) override {
    return Run("CloseSession", [&] { return engine_->CloseSession(request->session()); });
  }
  grpc::Status Acknowledge(grpc::ServerContext*, const v1::AcknowledgeRequest* request,
                           v1::AcknowledgeResponse*) override {
    return Run("Acknowledge", [&] {
      return engine_
          ->Acknowledge(request->session(), request->out_seq(), request->positive(),
                        request->sense_code())
          .status();
    });
  }
  // One output at a time: the next only after this one is settled.
  grpc::Status Receive(grpc::ServerContext* context, const v1::ReceiveRequest* request,
                       grpc::ServerWriter<v1::ReceiveResponse>* writer) override {
    if (Take("Receive").has_value()) return grpc::Status(grpc::UNAVAILABLE, "injected");
    while (!context->IsCancelled()) {
      absl::StatusOr<SessionOutput> output =
          engine_->ReceiveOutput(request->session(), absl::Milliseconds(50));
      if (absl::IsDeadlineExceeded(output.status())) continue;
      if (!output.ok()) return ToGrpcStatus(output.status());
      v1::ReceiveResponse response;
      response.set_out_seq(output->out_seq);
      *response.mutable_message() = output->message;
      response.set_exception_response(output->exception_response);
      if (!writer->Write(response)) return grpc::Status::CANCELLED;
      while (!output->exception_response && !context->IsCancelled()) {
        absl::StatusOr<std::vector<v1::SessionInfo>> info =
            engine_->DisplaySessions({request->session()});
        if (!info.ok() || info->front().output_acknowledged() ||
            info->front().out_seq() != output->out_seq || !info->front().data_traffic()) {
          break;
        }
        absl::SleepFor(absl::Milliseconds(2));
      }
    }
    return grpc::Status::CANCELLED;
  }

 private:
  std::optional<Fault> Take(const std::string& method) {
    absl::MutexLock lock(&mu_);
    ++calls_[method];
    auto it = faults_.find(method);
    if (it == faults_.end()) return std::nullopt;
    const Fault fault = it->second;
    faults_.erase(it);
    return fault;
  }

  template <typename F>
  grpc::Status Run(const std::string& method, F f) {
    const std::optional<Fault> fault = Take(method);
    if (fault == Fault::kRefuse) return grpc::Status(grpc::UNAVAILABLE, "injected: lost");
    const absl::Status status = f();
    if (fault == Fault::kLoseAnswer) return grpc::Status(grpc::UNAVAILABLE, "injected: no answer");
    return ToGrpcStatus(status);
  }

  Engine* const engine_;
  absl::Mutex mu_;
  std::map<std::string, Fault> faults_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> calls_ ABSL_GUARDED_BY(mu_);
};

class SessionEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string path;
    for (absl::string_view part : absl::StrSplit(tmp_.path(), '/', absl::SkipEmpty())) {
      absl::StrAppend(&path, "/", part);
      ASSERT_TRUE(log_fs_.CreateDir(path).ok());
    }
    std::filesystem::create_directory(tmp_.path() + "/qm");
    env_ = rocksdb::NewCompositeEnv(store_fs_);
    ASSERT_TRUE(client_fs_.CreateDir("/c").ok());
    StartServer();
    ASSERT_TRUE(engine()->DefineQueue("REQUESTS", {}).ok());
    v1::QueueAttributes output;
    output.set_output_of_session(kName);
    ASSERT_TRUE(engine()->DefineQueue(kOutput, output).ok());
  }

  void TearDown() override { StopServer(); }

  void StartServer() {
    restart::RestartOptions options;
    options.data_dir = tmp_.path() + "/qm";
    options.fs = &log_fs_;
    options.store_env = env_.get();
    options.store_write_buffer_bytes = 1 << 20;
    options.log.segment_bytes = 256 << 10;
    options.engine.reaper_interval = absl::ZeroDuration();
    options.checkpoint.log_bytes = 64 << 10;  // session state goes through checkpoints too
    options.checkpoint.poll_interval = absl::Milliseconds(10);
    absl::StatusOr<std::unique_ptr<restart::QueueManager>> qm = restart::Restart(options);
    ASSERT_TRUE(qm.ok()) << qm.status();
    qm_ = *std::move(qm);
    service_ = std::make_unique<EngineService>(engine());
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    absl::MutexLock lock(&target_mu_);
    target_ = absl::StrCat("127.0.0.1:", port);
  }

  // Cancels the calls in flight (their clients see them fail in transit)
  // and waits for their handlers.
  void StopServer() {
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
    server_.reset();
    service_.reset();
    qm_.reset();
  }

  // The server loses power: what its log and store had not synced is gone.
  void CrashServer(uint64_t seed) {
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
    log_fs_.Freeze();
    store_fs_->Freeze();
    server_.reset();
    service_.reset();
    qm_.reset();
    log_fs_.SimulateCrash(CrashMode::kDropUnsynced, seed);
    ASSERT_TRUE(store_fs_->DropUnsyncedData().ok());
    log_fs_.Thaw();
    store_fs_->Thaw();
  }

  Engine* engine() { return qm_->engine(); }

  std::string target() {
    absl::MutexLock lock(&target_mu_);
    return target_;
  }

  SessionOptions Options() {
    return SessionOptions{.name = kName,
                          .file_path = kFile,
                          .resolve_target = [this] { return target(); },
                          .call_timeout = absl::Seconds(5),
                          .reconnect_backoff = absl::Milliseconds(5),
                          .reconnect_backoff_max = absl::Milliseconds(50),
                          .reconnect_timeout = absl::Seconds(10),
                          .fs = &client_fs_};
  }

  std::unique_ptr<Session> MustOpen(SessionOptions options) {
    absl::StatusOr<std::unique_ptr<Session>> session = Session::Open(std::move(options));
    EXPECT_TRUE(session.ok()) << session.status();
    return session.ok() ? *std::move(session) : nullptr;
  }
  std::unique_ptr<Session> MustOpen() { return MustOpen(Options()); }

  static v1::NewMessage Input(const std::string& payload, v1::MessageClass cls = v1::RECOVERABLE) {
    v1::NewMessage m;
    m.set_queue("REQUESTS");
    m.set_payload(payload);
    m.set_class_(cls);
    m.set_reply_to(kOutput);
    return m;
  }

  // A message for the session, as an application program would reply.
  void PutOutput(const std::string& payload) {
    MessageSpec spec;
    spec.queue = kOutput;
    spec.payload = payload;
    spec.message_class = v1::RECOVERABLE;
    ASSERT_TRUE(engine()->Enqueue(std::move(spec)).ok());
  }

  uint64_t Depth(const std::string& queue) { return engine()->DisplayQueue(queue)->depth; }

  v1::SessionInfo ServerSide() { return engine()->DisplaySessions({kName})->front(); }

  Output MustNext(Session& session) {
    absl::StatusOr<std::optional<Output>> output = session.Next(absl::Seconds(5));
    EXPECT_TRUE(output.ok()) << output.status();
    EXPECT_TRUE(output.ok() && output->has_value());
    return output.ok() && output->has_value() ? **output : Output();
  }

  qmgr::testing::TempDir tmp_;
  FaultFileSystem log_fs_;
  std::shared_ptr<FaultRocksFileSystem> store_fs_ = std::make_shared<FaultRocksFileSystem>();
  std::unique_ptr<rocksdb::Env> env_;
  FaultFileSystem client_fs_;
  std::unique_ptr<restart::QueueManager> qm_;
  std::unique_ptr<EngineService> service_;
  std::unique_ptr<grpc::Server> server_;
  absl::Mutex target_mu_;
  std::string target_ ABSL_GUARDED_BY(target_mu_);
};

TEST_F(SessionEngineTest, ANewSessionNumbersInputAndSecuresOutputInOrder) {
  std::unique_ptr<Session> session = MustOpen();
  ASSERT_NE(session, nullptr);
  EXPECT_FALSE(session->open_report().resynchronized);
  EXPECT_TRUE(*client_fs_.Exists(kFile));  // written at open
  for (int i = 1; i <= 3; ++i) {
    absl::StatusOr<Accepted> sent = session->Send(Input(absl::StrCat("in ", i)));
    ASSERT_TRUE(sent.ok()) << sent.status();
    EXPECT_EQ(sent->input_seq, static_cast<uint64_t>(i));
    EXPECT_TRUE(sent->durable);
    EXPECT_FALSE(sent->recovered);
    PutOutput(absl::StrCat("out ", i));
  }
  EXPECT_EQ(session->state().unhardened_inputs_size(), 0);  // all hardened: forgotten
  for (uint64_t i = 1; i <= 3; ++i) {
    Output output = MustNext(*session);
    EXPECT_EQ(output.out_seq, i);
    EXPECT_EQ(output.message.payload(), absl::StrCat("out ", i));
    EXPECT_FALSE(output.possible_duplicate);
    ASSERT_TRUE(session->Acknowledge(output).ok());
  }
  EXPECT_EQ(Depth(kOutput), 0u);
  EXPECT_EQ(Depth("REQUESTS"), 3u);
  // Durable: a power loss on the client right now keeps the numbers.
  client_fs_.DropUnsyncedData();
  absl::StatusOr<SessionFile> file = SessionFile::Open(kFile, kName, &client_fs_);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->state().last_input_sent(), 3u);
  EXPECT_EQ(file->state().last_output_secured(), 3u);
  EXPECT_EQ(ServerSide().in_seq(), 3u);
  EXPECT_EQ(ServerSide().out_seq(), 3u);
}

TEST_F(SessionEngineTest, AnInputWhoseAnswerIsLostIsQueuedOnce) {
  std::unique_ptr<Session> session = MustOpen();
  ASSERT_NE(session, nullptr);
  service_->Inject("Enqueue", Fault::kLoseAnswer);
  absl::StatusOr<Accepted> sent = session->Send(Input("a"));
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_TRUE(sent->recovered);
  EXPECT_TRUE(sent->durable);
  EXPECT_EQ(sent->input_seq, 1u);
  EXPECT_EQ(Depth("REQUESTS"), 1u);
  EXPECT_EQ(session->open_report().hardened_inputs.size(), 0u);
  EXPECT_EQ(session->state().unhardened_inputs_size(), 0);
}

TEST_F(SessionEngineTest, AnInputLostOnTheWayIsResentUnderItsNumber) {
  std::unique_ptr<Session> session = MustOpen();
  ASSERT_NE(session, nullptr);
  ASSERT_TRUE(session->Send(Input("a")).ok());
  service_->Inject("Enqueue", Fault::kRefuse);
  absl::StatusOr<Accepted> sent = session->Send(Input("b"));
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_TRUE(sent->recovered);
  EXPECT_EQ(sent->input_seq, 2u);
  EXPECT_NE(sent->message_id, 0u);  // the resend's answer
  EXPECT_EQ(Depth("REQUESTS"), 2u);
  EXPECT_EQ(ServerSide().in_seq(), 2u);
}

TEST_F(SessionEngineTest, AnInputRecordedBeforeAClientCrashIsResentAtOpen) {
  {
    std::unique_ptr<Session> session = MustOpen();
    ASSERT_NE(session, nullptr);
    ASSERT_TRUE(session->Send(Input("a")).ok());
  }
  // The client recorded input 2 (fsync) and died before sending it.
  absl::StatusOr<SessionFile> file = SessionFile::Open(kFile, kName, &client_fs_);
  ASSERT_TRUE(file.ok());
  v1::ClientSessionState state = file->state();
  v1::ClientSentInput* input = state.add_unhardened_inputs();
  input->set_input_seq(2);
  input->set_class_(v1::RECOVERABLE);
  input->set_queue("REQUESTS");
  input->set_payload("b");
  state.set_last_input_sent(2);
  ASSERT_TRUE(file->Save(state).ok());

  std::unique_ptr<Session> session = MustOpen();
  ASSERT_NE(session, nullptr);
  const ResyncReport& report = session->open_report();
  EXPECT_TRUE(report.resynchronized);
  EXPECT_EQ(report.resent_inputs, std::vector<uint64_t>{2});
  EXPECT_EQ(Depth("REQUESTS"), 2u);
  // And a second open finds nothing to do.
  session.reset();
  session = MustOpen();
  EXPECT_EQ(session->open_report().resent_inputs.size(), 0u);
  EXPECT_EQ(Depth("REQUESTS"), 2u);
}

TEST_F(SessionEngineTest, ADeferredInputDiscardedBeforeItsSyncPointIsReportedForReissue) {
  std::unique_ptr<Session> session = MustOpen();
  ASSERT_NE(session, nullptr);
  absl::StatusOr<Accepted> first = session->Send(Input("deferred", v1::RESPONSE));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->durable);
  ASSERT_EQ(*engine()->Clear(kName), 1u);  // gone before any unit took it
  // The next input meets RESYNC_REQUIRED; the resync reports input 1 for
  // reissue and resends the new input under number 1.
  absl::StatusOr<Accepted> second = session->Send(Input("next"));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->recovered);
  EXPECT_EQ(second->input_seq, 1u);
  EXPECT_EQ(Depth("REQUESTS"), 1u);
  EXPECT_EQ(ServerSide().in_seq(), 1u);
  EXPECT_EQ(session->state().last_input_sent(), 1u);
}

TEST_F(SessionEngineTest, TheReissueReportCarriesTheDiscardedInput) {
  std::vector<ResyncReport> reports;
  SessionOptions options = Options();
  options.on_resync = [&](const ResyncReport& r) { reports.push_back(r); };
  std::unique_ptr<Session> session = MustOpen(options);
  ASSERT_NE(session, nullptr);
  ASSERT_TRUE(session->Send(Input("deferred", v1::RESPONSE)).ok());
  ASSERT_EQ(*engine()->Clear(kName), 1u);
  session.reset();  // the terminal restarts
  session = MustOpen(options);
  ASSERT_NE(session, nullptr);
  ASSERT_EQ(reports.size(), 2u);
  const ResyncReport& report = reports.back();
  ASSERT_EQ(report.reissue_inputs.size(), 1u);
  EXPECT_EQ(report.reissue_inputs[0].payload(), "deferred");
  EXPECT_EQ(report.reissue_inputs[0].input_seq(), 1u);
  EXPECT_TRUE(report.resent_inputs.empty());
  EXPECT_EQ(session->state().last_input_sent(), 0u);  // its number is free again
  absl::StatusOr<Accepted> again = session->Send(Input("deferred", v1::RESPONSE));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->input_seq, 1u);
}

TEST_F(SessionEngineTest, ASequenceGapIsRecoveredWithRqrWithoutRebinding) {
  // A deferred input expires unprocessed: the server forgets it, so the
  // next input leaves a gap (SEQUENCE_GAP). The session sends RQR (keeping
  // its binding), reports the expired one for reissue, and resends the new
  // one under the freed number.
  std::vector<ResyncReport> reports;
  SessionOptions options = Options();
  options.on_resync = [&](const ResyncReport& r) { reports.push_back(r); };
  std::unique_ptr<Session> session = MustOpen(options);
  ASSERT_NE(session, nullptr);
  v1::NewMessage deferred = Input("expires", v1::RESPONSE);
  deferred.set_expiry_time_us(absl::ToUnixMicros(absl::Now() + absl::Milliseconds(30)));
  ASSERT_TRUE(session->Send(deferred).ok());
  absl::SleepFor(absl::Milliseconds(60));
  engine()->Get(GetOptions{.queue = "REQUESTS"}).IgnoreError();  // meets it expired
  ASSERT_EQ(engine()->DisplayQueue("REQUESTS")->expired_discarded, 1u);

  absl::StatusOr<Accepted> sent = session->Send(Input("next"));
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_TRUE(sent->recovered);
  EXPECT_EQ(sent->input_seq, 1u);
  EXPECT_EQ(service_->Calls("RequestRecovery"), 1);
  EXPECT_EQ(service_->Calls("OpenSession"), 1);  // the binding was kept
  ASSERT_EQ(reports.size(), 2u);
  ASSERT_EQ(reports.back().reissue_inputs.size(), 1u);
  EXPECT_EQ(reports.back().reissue_inputs[0].payload(), "expires");
  EXPECT_EQ(ServerSide().in_seq(), 1u);
}

TEST_F(SessionEngineTest, ALostAcknowledgementIsConfirmedByTheResync) {
  for (Fault fault : {Fault::kRefuse, Fault::kLoseAnswer}) {
    std::vector<ResyncReport> reports;
    SessionOptions options = Options();
    options.on_resync = [&](const ResyncReport& r) { reports.push_back(r); };
    std::unique_ptr<Session> session = MustOpen(options);
    ASSERT_NE(session, nullptr);
    PutOutput("out");
    Output output = MustNext(*session);
    service_->Inject("Acknowledge", fault);
    ASSERT_TRUE(session->Acknowledge(output).ok());
    ASSERT_GE(reports.size(), 2u);
    EXPECT_EQ(reports.back().output_outcome,
              fault == Fault::kRefuse ? v1::DELIVERED : v1::NO_OUTPUT_OUTSTANDING);
    EXPECT_EQ(Depth(kOutput), 0u);
    EXPECT_TRUE(ServerSide().output_acknowledged());
    absl::StatusOr<std::optional<Output>> none = session->Next(absl::Milliseconds(200));
    ASSERT_TRUE(none.ok()) << none.status();
    EXPECT_FALSE(none->has_value());  // never handed out again
  }
}

TEST_F(SessionEngineTest, UnsecuredOutputComesAgainFlaggedPossiblyDuplicate) {
  std::unique_ptr<Session> session = MustOpen();
  ASSERT_NE(session, nullptr);
  PutOutput("out");
  Output first = MustNext(*session);
  EXPECT_FALSE(first.possible_duplicate);
  session.reset();  // the terminal dies before securing it
  session = MustOpen();
  ASSERT_NE(session, nullptr);
  EXPECT_EQ(session->open_report().output_outcome, v1::WILL_RESEND);
  EXPECT_TRUE(session->open_report().output_possible_duplicate);
  Output again = MustNext(*session);
  EXPECT_EQ(again.out_seq, first.out_seq);
  EXPECT_EQ(again.message.id(), first.message.id());
  EXPECT_TRUE(again.possible_duplicate);
  ASSERT_TRUE(session->Acknowledge(again).ok());
  EXPECT_EQ(Depth(kOutput), 0u);
}

TEST_F(SessionEngineTest, SecuredButUnacknowledgedOutputIsDeliveredAtReopen) {
  std::unique_ptr<Session> session = MustOpen();
  ASSERT_NE(session, nullptr);
  PutOutput("out");
  Output output = MustNext(*session);
  // Secured (in the file), and the process died before the Acknowledge left.
  service_->Inject("Acknowledge", Fault::kRefuse);
  ASSERT_TRUE(session->Acknowledge(output).ok());  // ...resynced in-process here
  session.reset();
  session = MustOpen();
  ASSERT_NE(session, nullptr);
  EXPECT_EQ(Depth(kOutput), 0u);
  absl::StatusOr<std::optional<Output>> none = session->Next(absl::Milliseconds(200));
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST_F(SessionEngineTest, OutputReassignedAwayIsReportedAndNumberingGoesOn) {
  v1::QueueAttributes other;
  other.set_output_of_session("T2");
  ASSERT_TRUE(engine()->DefineQueue("T2.OUT", other).ok());
  std::unique_ptr<Session> session = MustOpen();
  ASSERT_NE(session, nullptr);
  PutOutput("first");
  Output held = MustNext(*session);
  session.reset();  // the terminal fails holding it; an operator moves it
  ASSERT_EQ(engine()->Assign(kName, "T2", /*force=*/true)->possible_duplicate_message_id,
            held.message.id());
  session = MustOpen();
  ASSERT_NE(session, nullptr);
  EXPECT_EQ(session->open_report().output_outcome, v1::REASSIGNED);
  PutOutput("second");
  Output next = MustNext(*session);
  EXPECT_EQ(next.out_seq, held.out_seq + 1);
  EXPECT_EQ(next.message.payload(), "second");
  EXPECT_FALSE(next.possible_duplicate);
  ASSERT_TRUE(session->Acknowledge(next).ok());
  EXPECT_EQ(Depth("T2.OUT"), 1u);
}

TEST_F(SessionEngineTest, AnImpliedAcknowledgementSecuresWithTheInputsSave) {
  std::unique_ptr<Session> session = MustOpen();
  ASSERT_NE(session, nullptr);
  PutOutput("out");
  Output output = MustNext(*session);
  const int64_t syncs = client_fs_.SyncCount();
  absl::StatusOr<Accepted> sent = session->Send(Input("in"), &output);
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_EQ(client_fs_.SyncCount(), syncs + 1);  // one save for both
  EXPECT_EQ(session->state().last_output_secured(), output.out_seq);
  EXPECT_TRUE(ServerSide().output_acknowledged());
  EXPECT_EQ(Depth(kOutput), 0u);
}

TEST_F(SessionEngineTest, AStaleFileIsRefusedAndAColdOpenTakesTheServersNumbers) {
  {
    std::unique_ptr<Session> session = MustOpen();
    ASSERT_NE(session, nullptr);
    ASSERT_TRUE(session->Send(Input("a")).ok());
    ASSERT_TRUE(session->Send(Input("b")).ok());
  }
  // An older copy of the file: it says one input was sent.
  absl::StatusOr<SessionFile> file = SessionFile::Open(kFile, kName, &client_fs_);
  ASSERT_TRUE(file.ok());
  v1::ClientSessionState old = file->state();
  old.set_last_input_sent(1);
  ASSERT_TRUE(file->Save(old).ok());
  absl::StatusOr<std::unique_ptr<Session>> refused = Session::Open(Options());
  ASSERT_TRUE(absl::IsFailedPrecondition(refused.status())) << refused.status();
  EXPECT_NE(refused.status().message().find("file_lost"), std::string::npos);

  // A file_lost open with the file still there is refused too.
  SessionOptions cold = Options();
  cold.file_lost = true;
  EXPECT_TRUE(absl::IsInvalidArgument(Session::Open(cold).status()));
  ASSERT_TRUE(client_fs_.Remove(kFile).ok());
  std::unique_ptr<Session> session = MustOpen(cold);
  ASSERT_NE(session, nullptr);
  EXPECT_TRUE(session->open_report().cold);
  EXPECT_EQ(session->state().last_input_sent(), 2u);
  absl::StatusOr<Accepted> sent = session->Send(Input("c"));
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_EQ(sent->input_seq, 3u);
}

TEST_F(SessionEngineTest, AResponseModeTerminalKeepsAtMostTwoInputsInItsFile) {
  std::unique_ptr<Session> session = MustOpen();
  ASSERT_NE(session, nullptr);
  // The application program: takes each request and replies in one unit.
  std::atomic<bool> stop = false;
  std::thread program([&] {
    while (!stop) {
      absl::StatusOr<GetResult> got =
          engine()->Get(GetOptions{.queue = "REQUESTS", .wait = absl::Milliseconds(50)});
      if (!got.ok()) continue;
      MessageSpec reply;
      reply.queue = got->message.reply_to();
      reply.payload = absl::StrCat("reply to ", got->message.payload());
      reply.message_class = v1::RECOVERABLE;
      ASSERT_TRUE(engine()->Insert(got->uow, std::move(reply)).ok());
      ASSERT_TRUE(engine()->SyncPoint(got->uow).ok());
    }
  });
  for (int i = 1; i <= 5; ++i) {
    absl::StatusOr<Accepted> sent = session->Send(Input(absl::StrCat("q", i), v1::RESPONSE));
    ASSERT_TRUE(sent.ok()) << sent.status();
    Output reply = MustNext(*session);
    EXPECT_EQ(reply.message.payload(), absl::StrCat("reply to q", i));
    ASSERT_TRUE(session->Acknowledge(reply).ok());
    EXPECT_LE(session->state().unhardened_inputs_size(), 2);
  }
  stop = true;
  program.join();
  EXPECT_EQ(ServerSide().in_seq(), 5u);
  ASSERT_TRUE(session->Close().ok());
}

TEST_F(SessionEngineTest, ABrokenReceiveStreamIsResumed) {
  std::unique_ptr<Session> session = MustOpen();
  ASSERT_NE(session, nullptr);
  // The stream opened at Open ends (the server asks for recovery), and the
  // first attempt to open another is lost.
  for (int i = 0; i < 1000 && service_->Calls("Receive") < 1; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ(service_->Calls("Receive"), 1);
  service_->Inject("Receive", Fault::kRefuse);
  ASSERT_TRUE(engine()->RequestRecovery(kName).ok());
  PutOutput("out");
  Output output = MustNext(*session);
  EXPECT_GE(service_->Calls("Receive"), 3);
  EXPECT_EQ(output.message.payload(), "out");
  ASSERT_TRUE(session->Acknowledge(output).ok());
  EXPECT_EQ(Depth(kOutput), 0u);
}

TEST_F(SessionEngineTest, TheTerminalResynchronizesAcrossServerPowerLosses) {
  // A terminal sends input and secures output without pause while the
  // server loses power again and again (unsynced log and store writes
  // dropped). Every input it was told accepted is queued exactly once, in
  // order; every output reaches it; a repeat is always flagged.
  constexpr int kOutputsPerRound = 8;
  std::set<uint64_t> expected_outputs;
  const auto put_outputs = [&] {
    for (int i = 0; i < kOutputsPerRound; ++i) {
      MessageSpec spec;
      spec.queue = kOutput;
      spec.payload = "out";
      spec.message_class = v1::RECOVERABLE;
      absl::StatusOr<EnqueueResult> done = engine()->Enqueue(std::move(spec));
      ASSERT_TRUE(done.ok()) << done.status();
      expected_outputs.insert(done->message_id);
    }
  };
  put_outputs();
  std::vector<ResyncReport> reports;
  absl::Mutex reports_mu;
  SessionOptions options = Options();
  options.on_resync = [&](const ResyncReport& r) {
    absl::MutexLock lock(&reports_mu);
    reports.push_back(r);
  };
  std::unique_ptr<Session> session = MustOpen(options);
  ASSERT_NE(session, nullptr);

  std::vector<std::string> accepted;
  std::map<uint64_t, int> received;  // message id -> times handed out
  int silent_duplicates = 0;
  std::atomic<bool> done = false;
  std::atomic<bool> failed = false;
  std::atomic<size_t> accepted_count = 0;
  std::thread terminal([&] {
    while (!done && !failed) {
      const std::string payload = absl::StrCat("in ", accepted.size() + 1);
      absl::StatusOr<Accepted> sent = session->Send(Input(payload));
      if (!sent.ok()) {
        ADD_FAILURE() << "input " << payload << ": " << sent.status();
        failed = true;
        break;
      }
      accepted.push_back(payload);
      ++accepted_count;
      absl::StatusOr<std::optional<Output>> output = session->Next(absl::Milliseconds(1));
      if (!output.ok()) {
        ADD_FAILURE() << output.status();
        failed = true;
        break;
      }
      if (!output->has_value()) continue;
      const Output& out = **output;
      if (++received[out.message.id()] > 1 && !out.possible_duplicate) ++silent_duplicates;
      if (absl::Status s = session->Acknowledge(out); !s.ok()) {
        ADD_FAILURE() << s;
        failed = true;
      }
    }
  });
  std::mt19937_64 random(23);
  for (int crash = 0; crash < Crashes() && !failed; ++crash) {
    absl::SleepFor(absl::Milliseconds(20 + random() % 150));
    CrashServer(random());
    StartServer();
    put_outputs();
    // The terminal works on the new server before the next crash: each
    // crash is met by its own resynchronization.
    const size_t before = accepted_count;
    while (accepted_count < before + 2 && !failed) absl::SleepFor(absl::Milliseconds(1));
  }
  done = true;
  terminal.join();
  ASSERT_FALSE(failed);

  // Drain the outputs left.
  while (true) {
    absl::StatusOr<std::optional<Output>> output = session->Next(absl::Milliseconds(500));
    ASSERT_TRUE(output.ok()) << output.status();
    if (!output->has_value()) break;
    if (++received[(*output)->message.id()] > 1 && !(*output)->possible_duplicate) {
      ++silent_duplicates;
    }
    ASSERT_TRUE(session->Acknowledge(**output).ok());
  }
  absl::StatusOr<std::vector<v1::Message>> requests = engine()->Browse("REQUESTS", 1000000);
  ASSERT_TRUE(requests.ok()) << requests.status();
  std::vector<std::string> queued;
  for (const v1::Message& m : *requests) queued.push_back(m.payload());
  EXPECT_EQ(queued, accepted) << "exactly once, in order";
  std::set<uint64_t> seen;
  for (const auto& [id, times] : received) seen.insert(id);
  EXPECT_EQ(seen, expected_outputs);
  EXPECT_EQ(silent_duplicates, 0);
  absl::MutexLock lock(&reports_mu);
  EXPECT_GE(reports.size(), static_cast<size_t>(Crashes())) << "each crash forced a resync";
}

TEST_F(SessionEngineTest, TheTerminalsOwnPowerLossesLoseAndDuplicateNothingSilently) {
  // The terminal's machine loses power at a random point (its session
  // file's unsynced writes dropped) while it sends input and secures
  // output. After each reopen: every input it was told accepted is queued
  // exactly once, the one in flight at most once (and then reported
  // resent), and an output handed out twice is flagged the second time.
  constexpr int kOutputs = 300;
  std::set<uint64_t> expected_outputs;
  for (int i = 0; i < kOutputs; ++i) {
    MessageSpec spec;
    spec.queue = kOutput;
    spec.payload = absl::StrCat("out ", i);
    spec.message_class = v1::RECOVERABLE;
    absl::StatusOr<EnqueueResult> done = engine()->Enqueue(std::move(spec));
    ASSERT_TRUE(done.ok()) << done.status();
    expected_outputs.insert(done->message_id);
  }
  std::mt19937_64 random(29);
  std::vector<std::string> expected;  // REQUESTS, in order
  std::optional<std::string> in_flight;
  std::map<uint64_t, int> received;  // message id -> times handed out
  int silent_duplicates = 0;
  const auto take = [&](Session& session, absl::Duration wait) -> absl::StatusOr<bool> {
    absl::StatusOr<std::optional<Output>> output = session.Next(wait);
    if (!output.ok()) return output.status();
    if (!output->has_value()) return false;
    const Output& out = **output;
    if (++received[out.message.id()] > 1 && !out.possible_duplicate) ++silent_duplicates;
    if (absl::Status s = session.Acknowledge(out); !s.ok()) return s;
    return true;
  };
  for (int round = 0; round <= Crashes(); ++round) {
    std::unique_ptr<Session> session = MustOpen();
    ASSERT_NE(session, nullptr) << "round " << round;
    const std::vector<uint64_t>& resent = session->open_report().resent_inputs;
    ASSERT_LE(resent.size(), in_flight.has_value() ? 1u : 0u) << "round " << round;
    if (resent.size() == 1) expected.push_back(*in_flight);
    in_flight.reset();
    if (round == Crashes()) {
      absl::StatusOr<bool> more;
      while ((more = take(*session, absl::Milliseconds(500))).ok() && *more) {
      }
      ASSERT_TRUE(more.ok()) << more.status();
      break;
    }
    std::thread terminal([&] {
      for (int n = 0;; ++n) {
        const std::string payload = absl::StrCat("r", round, "-", n);
        in_flight = payload;
        if (!session->Send(Input(payload)).ok()) break;
        in_flight.reset();
        expected.push_back(payload);
        if (!take(*session, absl::Milliseconds(1)).ok()) break;
      }
    });
    absl::SleepFor(absl::Milliseconds(5 + random() % 40));
    // Sometimes an input is lost on its way as the power goes: recorded,
    // not queued, so the reopen must resend it.
    if (random() % 2 == 0) service_->Inject("Enqueue", Fault::kRefuse);
    client_fs_.Freeze();  // every later file operation of the terminal fails
    terminal.join();
    session.reset();
    client_fs_.SimulateCrash(CrashMode::kDropUnsynced, random());
    client_fs_.Thaw();
  }
  absl::StatusOr<std::vector<v1::Message>> requests = engine()->Browse("REQUESTS", 1000000);
  ASSERT_TRUE(requests.ok()) << requests.status();
  std::vector<std::string> queued;
  for (const v1::Message& m : *requests) queued.push_back(m.payload());
  EXPECT_EQ(queued, expected) << "exactly once, in order";
  std::set<uint64_t> seen;
  for (const auto& [id, times] : received) seen.insert(id);
  EXPECT_EQ(seen, expected_outputs);
  EXPECT_EQ(silent_duplicates, 0);
}

}  // namespace
}  // namespace qmgr::client
