// client::Session against the real engine behind an in-process gRPC service
// that loses calls and answers on demand: each test checks one promise of
// docs/client.md (exactly-once input across lost answers, resend or reissue,
// secure-before-acknowledge, possibly-duplicate output flagged, a stale file
// refused rather than guessed). The service here is a test harness, not
// qmgrd's; tests/client_session_test.cc runs the same client against qmgrd.
#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/rpc_status.h"
#include "client/session.h"
#include "client/session_file.h"
#include "gtest/gtest.h"
#include "log/log.h"
#include "qmgr/engine.h"
#include "qmgr/status.h"
#include "tests/support/fault_file_system.h"

namespace qmgr::client {
namespace {

namespace v1 = qmgr::v1;
using qmgr::rpc::ToGrpcStatus;
using qmgr::testing::FaultFileSystem;

constexpr char kName[] = "T1";
constexpr char kOutput[] = "T1.OUT";
constexpr char kFile[] = "/c/T1.session";

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
    ASSERT_TRUE(server_fs_.CreateDir("/data").ok());
    ASSERT_TRUE(client_fs_.CreateDir("/c").ok());
    log::LogOptions log_options;
    log_options.segment_bytes = 1 << 20;
    absl::StatusOr<std::unique_ptr<log::Log>> log =
        log::Log::Open(&server_fs_, "/data/log", log_options);
    ASSERT_TRUE(log.ok()) << log.status();
    log_ = *std::move(log);
    EngineOptions options;
    options.reaper_interval = absl::ZeroDuration();
    engine_ = std::make_unique<Engine>(log_.get(), options);
    ASSERT_TRUE(engine_->DefineQueue("REQUESTS", {}).ok());
    v1::QueueAttributes output;
    output.set_output_of_session(kName);
    ASSERT_TRUE(engine_->DefineQueue(kOutput, output).ok());

    service_ = std::make_unique<EngineService>(engine_.get());
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    target_ = absl::StrCat("127.0.0.1:", port);
  }

  void TearDown() override {
    server_->Shutdown(std::chrono::system_clock::now());  // cancels Receive streams
    server_.reset();
    engine_.reset();
    log_.reset();
  }

  SessionOptions Options() {
    return SessionOptions{.name = kName,
                          .file_path = kFile,
                          .target = target_,
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
    ASSERT_TRUE(engine_->Enqueue(std::move(spec)).ok());
  }

  uint64_t Depth(const std::string& queue) { return engine_->DisplayQueue(queue)->depth; }

  v1::SessionInfo ServerSide() { return engine_->DisplaySessions({kName})->front(); }

  Output MustNext(Session& session) {
    absl::StatusOr<std::optional<Output>> output = session.Next(absl::Seconds(5));
    EXPECT_TRUE(output.ok()) << output.status();
    EXPECT_TRUE(output.ok() && output->has_value());
    return output.ok() && output->has_value() ? **output : Output();
  }

  FaultFileSystem server_fs_;
  FaultFileSystem client_fs_;
  std::unique_ptr<log::Log> log_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<EngineService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string target_;
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
  ASSERT_EQ(*engine_->Clear(kName), 1u);  // gone before any unit took it
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
  ASSERT_EQ(*engine_->Clear(kName), 1u);
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
          engine_->Get(GetOptions{.queue = "REQUESTS", .wait = absl::Milliseconds(50)});
      if (!got.ok()) continue;
      MessageSpec reply;
      reply.queue = got->message.reply_to();
      reply.payload = absl::StrCat("reply to ", got->message.payload());
      reply.message_class = v1::RECOVERABLE;
      ASSERT_TRUE(engine_->Insert(got->uow, std::move(reply)).ok());
      ASSERT_TRUE(engine_->SyncPoint(got->uow).ok());
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
  ASSERT_TRUE(engine_->RequestRecovery(kName).ok());
  PutOutput("out");
  Output output = MustNext(*session);
  EXPECT_GE(service_->Calls("Receive"), 3);
  EXPECT_EQ(output.message.payload(), "out");
  ASSERT_TRUE(session->Acknowledge(output).ok());
  EXPECT_EQ(Depth(kOutput), 0u);
}

}  // namespace
}  // namespace qmgr::client
