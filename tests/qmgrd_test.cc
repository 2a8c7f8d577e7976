// Integration tests of qmgrd: the real binary on a loopback port in a
// temporary directory, driven over gRPC (the generated stubs, and the client
// library where it is the subject). Each RPC's success and refusals (code and
// ErrorInfo reason), unit ownership by streams and leases, shutdown, health
// and reflection, and the refusal of a second qmgrd on one data directory.
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "client/rpc_status.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gtest/gtest.h"
#include "qmgr/status.h"
#include "tests/support/qmgrd_process.h"
#include "tests/support/temp_dir.h"

namespace qmgr {
namespace {

namespace v1 = qmgr::v1;
using qmgr::client::Client;
using qmgr::client::ClientOptions;
using qmgr::testing::QmgrdProcess;
using qmgr::testing::TempDir;

// Small segments: a test's qmgrd preallocates two of them at start.
const std::vector<std::string> kFastFlags = {"--log-segment-bytes", "4MiB"};

std::vector<std::string> Flags(std::vector<std::string> more) {
  std::vector<std::string> flags = kFastFlags;
  flags.insert(flags.end(), more.begin(), more.end());
  return flags;
}

// Code and reason of a refusal, as the client sees them.
struct Refusal {
  absl::StatusCode code;
  std::string reason;
};
Refusal Of(const grpc::Status& s) {
  absl::Status a = qmgr::rpc::FromGrpcStatus(s);
  return {a.code(), ReasonOf(a)};
}
Refusal Of(const absl::Status& s) { return {s.code(), ReasonOf(s)}; }
#define EXPECT_REFUSED(status, expected_code, expected_reason)                      \
  do {                                                                              \
    const Refusal r = Of(status);                                                   \
    EXPECT_EQ(r.code, absl::StatusCode::expected_code) << (status).error_message(); \
    EXPECT_EQ(r.reason, expected_reason);                                           \
  } while (0)
#define EXPECT_REFUSED_ABSL(status, expected_code, expected_reason) \
  do {                                                              \
    const Refusal r = Of(status);                                   \
    EXPECT_EQ(r.code, absl::StatusCode::expected_code) << (status); \
    EXPECT_EQ(r.reason, expected_reason);                           \
  } while (0)

class Server {
 public:
  explicit Server(std::vector<std::string> flags = {})
      : process_(QMGRD_PATH, dir_.path() + "/data", Flags(std::move(flags))) {}

  absl::Status Start() {
    if (absl::Status s = process_.Start(); !s.ok()) return s;
    ClientOptions options;
    options.target = process_.target();
    options.call_timeout = absl::Seconds(10);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    if (!client.ok()) return client.status();
    client_ = *std::move(client);
    return absl::OkStatus();
  }

  Client& client() { return *client_; }
  v1::QueueManager::Stub& qm() { return *client_->queue_manager(); }
  v1::Admin::Stub& admin() { return *client_->admin(); }
  QmgrdProcess& process() { return process_; }
  std::string data_dir() const { return dir_.path() + "/data"; }
  std::unique_ptr<grpc::ClientContext> Context() { return client_->NewContext(); }

  void Define(const std::string& queue, v1::QueueAttributes attributes = {}) {
    ASSERT_TRUE(client_->DefineQueue(queue, attributes).ok());
  }
  grpc::Status Enqueue(const std::string& queue, const std::string& payload,
                       v1::EnqueueResponse* response = nullptr) {
    v1::EnqueueRequest request;
    request.mutable_message()->set_queue(queue);
    request.mutable_message()->set_payload(payload);
    v1::EnqueueResponse ignored;
    return qm().Enqueue(Context().get(), request, response ? response : &ignored);
  }
  grpc::Status Get(const std::string& queue, v1::GetResponse* response, uint64_t uow = 0,
                   uint32_t wait_ms = 0) {
    v1::GetRequest request;
    request.set_queue(queue);
    request.set_uow(uow);
    request.set_wait_ms(wait_ms);
    return qm().Get(Context().get(), request, response);
  }
  // Session input needs the session bound first (docs/sessions.md).
  void OpenSession(const std::string& session) {
    v1::OpenSessionRequest request;
    request.set_session(session);
    v1::OpenSessionResponse response;
    const grpc::Status s = qm().OpenSession(Context().get(), request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_FALSE(response.resync_required());
  }
  uint64_t Depth(const std::string& queue) {
    absl::StatusOr<v1::DisplayQueuesResponse> d = client_->DisplayQueues({queue});
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? d->queues(0).depth() : 0;
  }

 private:
  TempDir dir_;
  QmgrdProcess process_;
  std::unique_ptr<Client> client_;
};

class QmgrdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const absl::Status started = server_.Start();
    ASSERT_TRUE(started.ok()) << started;
  }
  Server server_;
};

// --- Health and reflection -----------------------------------------------------

TEST_F(QmgrdTest, HealthAnswersServingForTheServerAndItsServices) {
  auto health = grpc::health::v1::Health::NewStub(server_.client().channel());
  for (const std::string service : {"", "qmgr.v1.QueueManager", "qmgr.v1.Admin"}) {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(health->Check(&context, request, &response).ok()) << service;
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
}

TEST_F(QmgrdTest, ReflectionListsTheServicesAndDescribesThem) {
  auto reflection =
      grpc::reflection::v1alpha::ServerReflection::NewStub(server_.client().channel());
  grpc::ClientContext context;
  auto stream = reflection->ServerReflectionInfo(&context);
  grpc::reflection::v1alpha::ServerReflectionRequest request;
  request.set_list_services("");
  ASSERT_TRUE(stream->Write(request));
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  ASSERT_TRUE(stream->Read(&response));
  std::vector<std::string> names;
  for (const auto& s : response.list_services_response().service()) names.push_back(s.name());
  EXPECT_NE(std::find(names.begin(), names.end(), "qmgr.v1.QueueManager"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "qmgr.v1.Admin"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "grpc.health.v1.Health"), names.end());

  request.set_file_containing_symbol("qmgr.v1.QueueManager");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  ASSERT_GT(response.file_descriptor_response().file_descriptor_proto_size(), 0);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

// --- Admin -----------------------------------------------------------------

TEST_F(QmgrdTest, AdminQueueDefinitionsSucceedAndRefuseWithTheirCodes) {
  v1::QueueAttributes attributes;
  attributes.set_max_depth(5);
  EXPECT_TRUE(server_.client().DefineQueue("ADM", attributes).ok());
  EXPECT_REFUSED_ABSL(server_.client().DefineQueue("ADM", attributes), kAlreadyExists, "");
  EXPECT_REFUSED_ABSL(server_.client().DefineQueue("bad name!", attributes), kInvalidArgument, "");
  attributes.set_max_depth(7);
  EXPECT_TRUE(server_.client().AlterQueue("ADM", attributes).ok());
  EXPECT_REFUSED_ABSL(server_.client().AlterQueue("NOPE", attributes), kNotFound, "");

  absl::StatusOr<v1::DisplayQueuesResponse> shown = server_.client().DisplayQueues();
  ASSERT_TRUE(shown.ok());
  ASSERT_EQ(shown->queues_size(), 1);
  EXPECT_EQ(shown->queues(0).name(), "ADM");
  EXPECT_EQ(shown->queues(0).attributes().max_depth(), 7u);
  EXPECT_GT(shown->memory().budget_bytes(), 0u);
  EXPECT_REFUSED_ABSL(server_.client().DisplayQueues({"NOPE"}).status(), kNotFound, "");

  ASSERT_TRUE(server_.Enqueue("ADM", "m").ok());
  EXPECT_REFUSED_ABSL(server_.client().DeleteQueue("ADM", /*purge=*/false), kFailedPrecondition,
                      "");
  EXPECT_TRUE(server_.client().DeleteQueue("ADM", /*purge=*/true).ok());
  EXPECT_REFUSED_ABSL(server_.client().DeleteQueue("ADM", false), kNotFound, "");
}

TEST_F(QmgrdTest, BrowseShowsMessagesOldestFirstAndSaysWhenTruncated) {
  server_.Define("BR");
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(server_.Enqueue("BR", absl::StrCat("m", i)).ok());
  absl::StatusOr<v1::BrowseResponse> all = server_.client().Browse("BR");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->messages_size(), 3);
  EXPECT_EQ(all->messages(0).payload(), "m0");
  EXPECT_FALSE(all->truncated());
  absl::StatusOr<v1::BrowseResponse> two = server_.client().Browse("BR", 2);
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->messages_size(), 2);
  EXPECT_TRUE(two->truncated());
  EXPECT_EQ(server_.Depth("BR"), 3u);  // browsing takes nothing
  EXPECT_REFUSED_ABSL(server_.client().Browse("NOPE").status(), kNotFound, "");
}

TEST_F(QmgrdTest, QmgrctlCheckpointAsksQmgrdForOne) {
  const std::string out = absl::StrCat(server_.data_dir(), "/../qmgrctl.out");
  const std::string command =
      absl::StrCat(QMGRCTL_PATH, " checkpoint --server ", server_.process().target(), " > ", out);
  EXPECT_EQ(std::system(command.c_str()), 0);
  std::ifstream file(out);
  std::string line;
  std::getline(file, line);
  EXPECT_TRUE(absl::StartsWith(line, "checkpoint ")) << line;
  EXPECT_TRUE(absl::StrContains(line, " taken, redo LSN ")) << line;
  // Nobody there: EX_UNAVAILABLE, with a message.
  const std::string nobody = absl::StrCat(
      QMGRCTL_PATH, " checkpoint --server 127.0.0.1:1 --connect-timeout-ms 200 2> ", out, ".err");
  EXPECT_EQ(WEXITSTATUS(std::system(nobody.c_str())), 69);
}

TEST_F(QmgrdTest, CheckpointAnswersItsNumberAndRedoLsn) {
  server_.Define("CP");
  ASSERT_TRUE(server_.Enqueue("CP", "x").ok());
  v1::CheckpointRequest request;
  v1::CheckpointResponse first, second;
  ASSERT_TRUE(server_.admin().Checkpoint(server_.Context().get(), request, &first).ok());
  ASSERT_TRUE(server_.Enqueue("CP", "y").ok());
  ASSERT_TRUE(server_.admin().Checkpoint(server_.Context().get(), request, &second).ok());
  EXPECT_GT(second.checkpoint_number(), first.checkpoint_number());
  EXPECT_GT(second.redo_lsn(), first.redo_lsn());
}

// --- Producers -------------------------------------------------------------

TEST_F(QmgrdTest, EnqueueAnswersDurableAndRefusesWithCodeAndReason) {
  v1::QueueAttributes small;
  small.set_max_depth(1);
  small.set_max_message_bytes(100);
  server_.Define("SMALL", small);
  v1::EnqueueResponse response;
  ASSERT_TRUE(server_.Enqueue("SMALL", "first", &response).ok());
  EXPECT_GT(response.message_id(), 0u);
  EXPECT_GT(response.lsn(), 0u);
  EXPECT_EQ(response.durability(), v1::DURABLE);

  EXPECT_REFUSED(server_.Enqueue("SMALL", "second"), kResourceExhausted, "QUEUE_FULL");
  EXPECT_REFUSED(server_.Enqueue("NOPE", "x"), kNotFound, "");
  EXPECT_REFUSED(server_.Enqueue("SMALL", std::string(101, 'x')), kInvalidArgument, "");

  v1::QueueAttributes inhibited;
  inhibited.set_put_inhibited(true);
  server_.Define("INH", inhibited);
  EXPECT_REFUSED(server_.Enqueue("INH", "x"), kFailedPrecondition, "PUT_INHIBITED");
}

TEST_F(QmgrdTest, EnqueueRefusesSessionInputOutOfOrderWithItsReason) {
  server_.Define("SESS");
  server_.OpenSession("T1");
  auto send = [&](uint64_t seq, v1::MessageClass cls) {
    v1::EnqueueRequest request;
    v1::NewMessage* m = request.mutable_message();
    m->set_queue("SESS");
    m->set_payload("in");
    m->set_class_(cls);
    m->set_session("T1");
    m->set_input_seq(seq);
    v1::EnqueueResponse response;
    return server_.qm().Enqueue(server_.Context().get(), request, &response);
  };
  ASSERT_TRUE(send(1, v1::RECOVERABLE).ok());
  EXPECT_REFUSED(send(1, v1::RECOVERABLE), kFailedPrecondition, "ALREADY_HARDENED");
  EXPECT_REFUSED(send(3, v1::RECOVERABLE), kFailedPrecondition, "SEQUENCE_GAP");
  ASSERT_TRUE(send(2, v1::RESPONSE).ok());
  EXPECT_REFUSED(send(3, v1::RESPONSE), kFailedPrecondition, "RESPONSE_OUTSTANDING");
}

TEST_F(QmgrdTest, OversizedRequestIsRefusedAndTheServerGoesOn) {
  server_.Define("BIG");
  // Beyond the largest request qmgrd accepts (unit_bytes_max and framing).
  EXPECT_REFUSED(server_.Enqueue("BIG", std::string(12 << 20, 'x')), kResourceExhausted, "");
  EXPECT_TRUE(server_.Enqueue("BIG", "small").ok());
}

TEST_F(QmgrdTest, EnqueueBatchIsAllOrNothing) {
  server_.Define("BATCH");
  v1::EnqueueBatchRequest request;
  for (const char* queue : {"BATCH", "BATCH", "NOPE"}) {
    v1::NewMessage* m = request.add_messages();
    m->set_queue(queue);
    m->set_payload("b");
  }
  v1::EnqueueBatchResponse response;
  EXPECT_REFUSED(server_.qm().EnqueueBatch(server_.Context().get(), request, &response), kNotFound,
                 "");
  EXPECT_EQ(server_.Depth("BATCH"), 0u);
  request.mutable_messages(2)->set_queue("BATCH");
  ASSERT_TRUE(server_.qm().EnqueueBatch(server_.Context().get(), request, &response).ok());
  ASSERT_EQ(response.results_size(), 3);
  EXPECT_EQ(response.results(0).lsn(), response.results(2).lsn());  // one record
  EXPECT_EQ(server_.Depth("BATCH"), 3u);
}

TEST_F(QmgrdTest, EnqueueStreamAnswersInOrderAndARefusalDoesNotEndIt) {
  server_.Define("STREAM");
  grpc::ClientContext context;
  auto stream = server_.qm().EnqueueStream(&context);
  constexpr int kMessages = 200;
  for (int i = 0; i < kMessages; ++i) {
    v1::EnqueueRequest request;
    request.mutable_message()->set_queue(i == 100 ? "NOPE" : "STREAM");
    request.mutable_message()->set_payload(absl::StrCat(i));
    ASSERT_TRUE(stream->Write(request));
  }
  stream->WritesDone();
  std::vector<uint64_t> ids;
  v1::EnqueueStreamResponse response;
  int answers = 0;
  while (stream->Read(&response)) {
    if (answers == 100) {
      ASSERT_TRUE(response.has_error());
      EXPECT_EQ(response.error().code(), static_cast<int>(absl::StatusCode::kNotFound));
    } else {
      ASSERT_TRUE(response.has_enqueued()) << answers << ": " << response.error().message();
      ids.push_back(response.enqueued().message_id());
    }
    ++answers;
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(answers, kMessages);
  // In request order: the payloads on the queue follow the answers' ids.
  absl::StatusOr<v1::BrowseResponse> queued = server_.client().Browse("STREAM", 1000);
  ASSERT_TRUE(queued.ok());
  EXPECT_EQ(queued->messages_size(), kMessages - 1);
  for (const v1::Message& m : queued->messages()) {
    const int i = std::stoi(m.payload());
    EXPECT_EQ(ids[i < 100 ? i : i - 1], m.id()) << i;
  }
}

// Read-ahead is bounded in bytes too: with a window smaller than one
// message the stream still answers every message, in order.
TEST(QmgrdStreamTest, ABytesBoundedWindowStillAnswersEveryMessageInOrder) {
  Server server({"--stream-window-bytes", "1024"});
  ASSERT_TRUE(server.Start().ok());
  server.Define("BIG");
  grpc::ClientContext context;
  auto stream = server.qm().EnqueueStream(&context);
  constexpr int kMessages = 40;
  for (int i = 0; i < kMessages; ++i) {
    v1::EnqueueRequest request;
    request.mutable_message()->set_queue("BIG");
    request.mutable_message()->set_payload(absl::StrCat(i, std::string(64 << 10, 'x')));
    ASSERT_TRUE(stream->Write(request));
  }
  stream->WritesDone();
  v1::EnqueueStreamResponse response;
  std::vector<uint64_t> ids;
  while (stream->Read(&response)) {
    ASSERT_TRUE(response.has_enqueued()) << response.error().message();
    ids.push_back(response.enqueued().message_id());
  }
  EXPECT_TRUE(stream->Finish().ok());
  ASSERT_EQ(ids.size(), static_cast<size_t>(kMessages));
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
}

// --- Programs (unary) ------------------------------------------------------

TEST_F(QmgrdTest, UnaryGetSyncPointBackoutAndInsert) {
  server_.Define("WORK");
  server_.Define("OUT");
  v1::GetResponse got;
  ASSERT_TRUE(server_.Get("WORK", &got, 0, /*wait_ms=*/50).ok());
  EXPECT_FALSE(got.has_message());  // no message is not an error
  EXPECT_EQ(got.uow(), 0u);

  ASSERT_TRUE(server_.Enqueue("WORK", "job").ok());
  ASSERT_TRUE(server_.Get("WORK", &got).ok());
  ASSERT_TRUE(got.has_message());
  EXPECT_EQ(got.message().payload(), "job");
  EXPECT_GT(got.lease_ms(), 0u);
  const uint64_t uow = got.uow();

  v1::BackoutRequest backout;
  backout.set_uow(uow);
  v1::BackoutResponse backed_out;
  ASSERT_TRUE(server_.qm().Backout(server_.Context().get(), backout, &backed_out).ok());
  EXPECT_REFUSED(server_.qm().Backout(server_.Context().get(), backout, &backed_out), kNotFound,
                 "");
  ASSERT_TRUE(server_.Get("WORK", &got).ok());
  EXPECT_EQ(got.message().backout_count(), 1u);

  v1::InsertRequest insert;
  insert.set_uow(got.uow());
  insert.mutable_message()->set_queue("OUT");
  insert.mutable_message()->set_payload("reply");
  v1::InsertResponse inserted;
  ASSERT_TRUE(server_.qm().Insert(server_.Context().get(), insert, &inserted).ok());
  EXPECT_EQ(inserted.uow(), got.uow());
  insert.mutable_message()->set_queue("NOPE");
  EXPECT_REFUSED(server_.qm().Insert(server_.Context().get(), insert, &inserted), kNotFound, "");
  EXPECT_EQ(server_.Depth("OUT"), 0u);  // not before the sync point

  v1::SyncPointRequest sync;
  sync.set_uow(got.uow());
  v1::SyncPointResponse synced;
  ASSERT_TRUE(server_.qm().SyncPoint(server_.Context().get(), sync, &synced).ok());
  EXPECT_EQ(synced.consumed(), 1u);
  EXPECT_EQ(synced.inserted(), 1u);
  EXPECT_EQ(server_.Depth("WORK"), 0u);
  EXPECT_EQ(server_.Depth("OUT"), 1u);
  EXPECT_REFUSED(server_.qm().SyncPoint(server_.Context().get(), sync, &synced), kNotFound, "");

  // Insert into a new unit (uow 0), then commit it.
  insert.set_uow(0);
  insert.mutable_message()->set_queue("OUT");
  ASSERT_TRUE(server_.qm().Insert(server_.Context().get(), insert, &inserted).ok());
  sync.set_uow(inserted.uow());
  ASSERT_TRUE(server_.qm().SyncPoint(server_.Context().get(), sync, &synced).ok());
  EXPECT_EQ(server_.Depth("OUT"), 2u);

  v1::QueueAttributes inhibited;
  inhibited.set_get_inhibited(true);
  ASSERT_TRUE(server_.client().AlterQueue("OUT", inhibited).ok());
  EXPECT_REFUSED(server_.Get("OUT", &got), kFailedPrecondition, "GET_INHIBITED");
  EXPECT_REFUSED(server_.Get("NOPE", &got), kNotFound, "");
}

TEST_F(QmgrdTest, GetWaitsForAMessageEnqueuedMeanwhile) {
  server_.Define("LATER");
  std::thread producer([&] {
    absl::SleepFor(absl::Milliseconds(200));
    EXPECT_TRUE(server_.Enqueue("LATER", "late").ok());
  });
  v1::GetResponse got;
  ASSERT_TRUE(server_.Get("LATER", &got, 0, /*wait_ms=*/5000).ok());
  producer.join();
  ASSERT_TRUE(got.has_message());
  EXPECT_EQ(got.message().payload(), "late");
}

// GetRequest.max_messages over unary Get: up to that many into one unit, in
// queue order, what is there; more than a Get takes is INVALID_ARGUMENT,
// refused before a commit_previous commits anything.
TEST_F(QmgrdTest, UnaryGetOfManyTakesWhatIsThereInOneUnit) {
  server_.Define("MANY");
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(server_.Enqueue("MANY", absl::StrCat(i)).ok());
  v1::GetRequest request;
  request.set_queue("MANY");
  request.set_max_messages(3);
  v1::GetResponse got;
  ASSERT_TRUE(server_.qm().Get(server_.Context().get(), request, &got).ok());
  EXPECT_EQ(got.message().payload(), "0");
  ASSERT_EQ(got.more_size(), 2);
  EXPECT_EQ(got.more(0).payload(), "1");
  EXPECT_EQ(got.more(1).payload(), "2");
  const uint64_t uow = got.uow();

  request.set_uow(uow);
  request.set_commit_previous(true);
  request.set_max_messages(1001);
  grpc::Status refused = server_.qm().Get(server_.Context().get(), request, &got);
  EXPECT_REFUSED(refused, kInvalidArgument, "");
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "max_messages"))
      << refused.error_message();

  request.set_max_messages(1000);
  request.set_wait_ms(5000);  // two are there: no wait for more
  const absl::Time start = absl::Now();
  ASSERT_TRUE(server_.qm().Get(server_.Context().get(), request, &got).ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
  EXPECT_NE(got.uow(), uow);
  EXPECT_EQ(got.message().payload(), "3");
  ASSERT_EQ(got.more_size(), 1);
  EXPECT_EQ(got.more(0).payload(), "4");
  EXPECT_EQ(server_.Depth("MANY"), 0u);

  // Backed out, the unit's messages return in order with their counts raised.
  v1::BackoutRequest backout;
  backout.set_uow(got.uow());
  v1::BackoutResponse backed_out;
  ASSERT_TRUE(server_.qm().Backout(server_.Context().get(), backout, &backed_out).ok());
  request.set_uow(0);
  request.set_commit_previous(false);
  request.set_wait_ms(0);
  ASSERT_TRUE(server_.qm().Get(server_.Context().get(), request, &got).ok());
  EXPECT_EQ(got.message().payload(), "3");
  EXPECT_EQ(got.message().backout_count(), 1u);
  ASSERT_EQ(got.more_size(), 1);
  EXPECT_EQ(got.more(0).backout_count(), 1u);
  v1::SyncPointRequest sync;
  sync.set_uow(got.uow());
  v1::SyncPointResponse synced;
  ASSERT_TRUE(server_.qm().SyncPoint(server_.Context().get(), sync, &synced).ok());
  EXPECT_EQ(synced.consumed(), 2u);
}

// The same on a ProgramStream through the client library, including a Get
// of many that waits for its first message, and a refusal that does not end
// the stream.
TEST_F(QmgrdTest, ProgramStreamGetOfMany) {
  server_.Define("SMANY");
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(server_.Enqueue("SMANY", absl::StrCat(i)).ok());
  absl::StatusOr<std::unique_ptr<client::Program>> program = server_.client().OpenProgram();
  ASSERT_TRUE(program.ok()) << program.status();
  client::UnitOfWork unit = (*program)->Begin();
  EXPECT_REFUSED_ABSL(unit.GetMany("SMANY", 5000, absl::ZeroDuration()).status(), kInvalidArgument,
                      "");
  absl::StatusOr<std::vector<v1::Message>> got = unit.GetMany("SMANY", 3, absl::ZeroDuration());
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ((*got)[i].payload(), absl::StrCat(i));
  const uint64_t first_unit = unit.id();
  got = unit.CommitAndGetMany("SMANY", 10, absl::ZeroDuration());
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].payload(), "3");
  EXPECT_NE(unit.id(), first_unit);
  ASSERT_TRUE(unit.Commit().ok());
  EXPECT_EQ(server_.Depth("SMANY"), 0u);

  // Waiting: a batch enqueued during the wait comes whole.
  std::thread producer([&] {
    absl::SleepFor(absl::Milliseconds(200));
    std::vector<v1::NewMessage> batch(3);
    for (int i = 0; i < 3; ++i) {
      batch[i].set_queue("SMANY");
      batch[i].set_payload(absl::StrCat("late", i));
    }
    EXPECT_TRUE(server_.client().EnqueueBatch(batch).ok());
  });
  got = unit.GetMany("SMANY", 10, absl::Seconds(5));
  producer.join();
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 3u);
  EXPECT_EQ((*got)[2].payload(), "late2");
  ASSERT_TRUE(unit.Commit().ok());
  EXPECT_TRUE((*program)->Close().ok());
}

// --- Programs (stream) and unit ownership ------------------------------------

TEST_F(QmgrdTest, ProgramStreamRunsUnitsAndRefusesWithoutEndingTheStream) {
  server_.Define("PS");
  server_.Define("PS.OUT");
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(server_.Enqueue("PS", absl::StrCat(i)).ok());
  absl::StatusOr<std::unique_ptr<client::Program>> program = server_.client().OpenProgram();
  ASSERT_TRUE(program.ok());
  {
    client::UnitOfWork unit = (*program)->Begin();
    absl::StatusOr<std::optional<v1::Message>> m = unit.Get("PS", absl::ZeroDuration());
    ASSERT_TRUE(m.ok() && m->has_value()) << m.status();
    EXPECT_EQ((*m)->payload(), "0");
    v1::NewMessage reply;
    reply.set_queue("NOPE");
    EXPECT_REFUSED_ABSL(unit.Insert(reply), kNotFound, "");  // the stream goes on
    reply.set_queue("PS.OUT");
    ASSERT_TRUE(unit.Insert(reply).ok());
    // Single mode: commits message 0 and its reply, takes message 1.
    m = unit.CommitAndGet("PS", absl::ZeroDuration());
    ASSERT_TRUE(m.ok() && m->has_value());
    EXPECT_EQ((*m)->payload(), "1");
    EXPECT_EQ(server_.Depth("PS.OUT"), 1u);

    // The stream's unit is not the unary calls' to end.
    v1::SyncPointRequest sync;
    sync.set_uow(unit.id());
    v1::SyncPointResponse synced;
    EXPECT_REFUSED(server_.qm().SyncPoint(server_.Context().get(), sync, &synced),
                   kFailedPrecondition, "");
    // Destroyed uncommitted: backed out.
  }
  absl::StatusOr<v1::BrowseResponse> left = server_.client().Browse("PS");
  ASSERT_TRUE(left.ok());
  ASSERT_EQ(left->messages_size(), 2);
  EXPECT_EQ(left->messages(0).payload(), "1");
  EXPECT_EQ(left->messages(0).backout_count(), 1u);
  EXPECT_TRUE((*program)->Close().ok());
}

TEST_F(QmgrdTest, UnitOwnedByAStreamIsBackedOutWhenTheStreamDies) {
  server_.Define("DIES");
  ASSERT_TRUE(server_.Enqueue("DIES", "held").ok());
  {
    grpc::ClientContext context;
    auto stream = server_.qm().ProgramStream(&context);
    v1::ProgramRequest request;
    request.mutable_get()->set_queue("DIES");
    ASSERT_TRUE(stream->Write(request));
    v1::ProgramResponse response;
    ASSERT_TRUE(stream->Read(&response));
    ASSERT_TRUE(response.get().has_message());
    EXPECT_EQ(server_.Depth("DIES"), 0u);
    context.TryCancel();  // the program vanishes without a word
  }
  // Backed out (BACKOUT_CALLER_GONE): back on the queue, counted.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (server_.Depth("DIES") == 0 && absl::Now() < deadline)
    absl::SleepFor(absl::Milliseconds(10));
  absl::StatusOr<v1::BrowseResponse> back = server_.client().Browse("DIES");
  ASSERT_TRUE(back.ok());
  ASSERT_EQ(back->messages_size(), 1);
  EXPECT_EQ(back->messages(0).backout_count(), 1u);
}

TEST_F(QmgrdTest, StreamCannotUseAUnitItDidNotOpen) {
  server_.Define("MINE");
  ASSERT_TRUE(server_.Enqueue("MINE", "x").ok());
  v1::GetResponse got;
  ASSERT_TRUE(server_.Get("MINE", &got).ok());  // a leased unit
  grpc::ClientContext context;
  auto stream = server_.qm().ProgramStream(&context);
  v1::ProgramRequest request;
  request.mutable_sync_point()->set_uow(got.uow());
  ASSERT_TRUE(stream->Write(request));
  v1::ProgramResponse response;
  ASSERT_TRUE(stream->Read(&response));
  ASSERT_TRUE(response.has_error());
  EXPECT_EQ(response.error().code(), static_cast<int>(absl::StatusCode::kNotFound));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

// --- Client library ------------------------------------------------------------

TEST_F(QmgrdTest, ProducerPipelinesAndReportsRefusalsPerMessage) {
  server_.Define("PROD");
  absl::StatusOr<std::unique_ptr<client::Producer>> producer = server_.client().OpenProducer(8);
  ASSERT_TRUE(producer.ok());
  std::vector<std::future<absl::StatusOr<client::Enqueued>>> answers;
  for (int i = 0; i < 50; ++i) {
    v1::NewMessage m;
    m.set_queue(i == 7 ? "NOPE" : "PROD");
    m.set_payload("p");
    answers.push_back((*producer)->EnqueueAsync(m));
  }
  for (int i = 0; i < 50; ++i) {
    absl::StatusOr<client::Enqueued> r = answers[i].get();
    if (i == 7) {
      EXPECT_TRUE(absl::IsNotFound(r.status()));
    } else {
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_TRUE(r->durable);
    }
  }
  EXPECT_TRUE((*producer)->Close().ok());
  EXPECT_EQ(server_.Depth("PROD"), 49u);
}

// A stream's messages are applied in stream order: a session's numbered
// inputs pipelined on one stream all harden, in order, none SEQUENCE_GAP.
TEST_F(QmgrdTest, PipelinedSessionInputOnAStreamHardensInOrder) {
  server_.Define("SEQ");
  server_.OpenSession("TERM9");
  absl::StatusOr<std::unique_ptr<client::Producer>> producer = server_.client().OpenProducer(32);
  ASSERT_TRUE(producer.ok());
  std::vector<std::future<absl::StatusOr<client::Enqueued>>> answers;
  for (int i = 1; i <= 300; ++i) {
    v1::NewMessage m;
    m.set_queue("SEQ");
    m.set_payload(absl::StrCat(i));
    m.set_session("TERM9");
    m.set_input_seq(i);
    answers.push_back((*producer)->EnqueueAsync(m));
  }
  for (auto& answer : answers) {
    absl::StatusOr<client::Enqueued> r = answer.get();
    EXPECT_TRUE(r.ok()) << r.status();
  }
  EXPECT_TRUE((*producer)->Close().ok());
  absl::StatusOr<v1::BrowseResponse> browsed = server_.client().Browse("SEQ", 1000);
  ASSERT_TRUE(browsed.ok());
  ASSERT_EQ(browsed->messages_size(), 300);
  for (int i = 0; i < 300; ++i) EXPECT_EQ(browsed->messages(i).payload(), absl::StrCat(i + 1));
}

TEST(QmgrdClientTest, CloseSaysWhenTheStreamEndedBadly) {
  Server server;
  ASSERT_TRUE(server.Start().ok());
  server.Define("GONE");
  absl::StatusOr<std::unique_ptr<client::Producer>> producer = server.client().OpenProducer(8);
  ASSERT_TRUE(producer.ok());
  v1::NewMessage m;
  m.set_queue("GONE");
  m.set_payload("x");
  ASSERT_TRUE((*producer)->Enqueue(m).ok());
  absl::StatusOr<std::unique_ptr<client::Program>> program = server.client().OpenProgram();
  ASSERT_TRUE(program.ok());
  server.process().Signal(SIGKILL);
  server.process().WaitExit(absl::Seconds(10));
  EXPECT_FALSE((*producer)->Enqueue(m).ok());
  EXPECT_FALSE((*producer)->Close().ok());
  client::UnitOfWork unit = (*program)->Begin();
  EXPECT_FALSE(unit.Get("GONE", absl::ZeroDuration()).ok());
  EXPECT_FALSE((*program)->Close().ok());
}

// --- Leases, shutdown, exclusivity -------------------------------------------

TEST(QmgrdLeaseTest, UnaryUnitIsBackedOutWhenItsLeaseExpires) {
  Server server({"--unit-lease-ms", "200"});
  ASSERT_TRUE(server.Start().ok());
  server.Define("LEASE");
  ASSERT_TRUE(server.Enqueue("LEASE", "x").ok());
  v1::GetResponse got;
  ASSERT_TRUE(server.Get("LEASE", &got).ok());
  EXPECT_EQ(got.lease_ms(), 200u);
  absl::SleepFor(absl::Milliseconds(600));
  v1::SyncPointRequest sync;
  sync.set_uow(got.uow());
  v1::SyncPointResponse synced;
  EXPECT_REFUSED(server.qm().SyncPoint(server.Context().get(), sync, &synced), kNotFound, "");
  ASSERT_TRUE(server.Get("LEASE", &got).ok());
  ASSERT_TRUE(got.has_message());
  EXPECT_EQ(got.message().backout_count(), 1u);
}

TEST(QmgrdLeaseTest, AStreamsUnitOutlivesTheLeaseAndCommits) {
  Server server({"--unit-lease-ms", "200"});
  ASSERT_TRUE(server.Start().ok());
  server.Define("HELD");
  ASSERT_TRUE(server.Enqueue("HELD", "x").ok());
  absl::StatusOr<std::unique_ptr<client::Program>> program = server.client().OpenProgram();
  ASSERT_TRUE(program.ok()) << program.status();
  client::UnitOfWork unit = (*program)->Begin();
  absl::StatusOr<std::optional<v1::Message>> got = unit.Get("HELD", absl::ZeroDuration());
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status();
  absl::SleepFor(absl::Milliseconds(600));  // three leases, thinking
  EXPECT_TRUE(unit.Commit().ok());
  EXPECT_EQ(server.Depth("HELD"), 0u);
}

TEST(QmgrdPoolTest, CallsBeyondTheQueuedLimitAreRefusedNotQueuedWithoutBound) {
  Server server({"--wait-threads", "1", "--queued-calls-max", "1"});
  ASSERT_TRUE(server.Start().ok());
  server.Define("EMPTY");
  // One waiting Get holds the only wait thread, a second waits in its queue.
  std::vector<std::thread> waiters;
  for (int i = 0; i < 2; ++i) {
    waiters.emplace_back([&] {
      v1::GetResponse got;
      EXPECT_TRUE(server.Get("EMPTY", &got, 0, /*wait_ms=*/600).ok());
    });
    absl::SleepFor(absl::Milliseconds(100));
  }
  v1::GetResponse got;
  EXPECT_REFUSED(server.Get("EMPTY", &got, 0, /*wait_ms=*/600), kResourceExhausted, "");
  // Gets that do not wait use the other pool.
  EXPECT_TRUE(server.Get("EMPTY", &got).ok());
  for (std::thread& t : waiters) t.join();
}

std::string BackoutRecords(const std::string& data_dir) {
  const std::string command =
      absl::StrCat(QMGRCTL_PATH, " --data-dir ", data_dir, " log print --type BACKOUT 2>&1");
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  char buffer[4096];
  while (size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) out.append(buffer, n);
  ::pclose(pipe);
  return out;
}

TEST(QmgrdShutdownTest, NormalShutdownLetsUnitsEndThenBacksOutTheRestAndExitsZero) {
  Server server({"--shutdown-grace-ms", "1500"});
  ASSERT_TRUE(server.Start().ok());
  server.Define("SD");
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(server.Enqueue("SD", "x").ok());
  v1::GetResponse first, second;
  ASSERT_TRUE(server.Get("SD", &first).ok());
  ASSERT_TRUE(server.Get("SD", &second).ok());

  ASSERT_TRUE(server.client().Shutdown(v1::NORMAL).ok());
  // Intake is stopped, but an open unit may still commit during the grace.
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_REFUSED(server.Enqueue("SD", "late"), kUnavailable, "");
  v1::SyncPointRequest sync;
  sync.set_uow(first.uow());
  v1::SyncPointResponse synced;
  EXPECT_TRUE(server.qm().SyncPoint(server.Context().get(), sync, &synced).ok());

  EXPECT_EQ(server.process().WaitExit(absl::Seconds(10)), 0) << server.process().Stderr();
  EXPECT_TRUE(absl::StrContains(server.process().Stderr(), "1 open unit(s) of work backed out"))
      << server.process().Stderr();
  EXPECT_TRUE(absl::StrContains(BackoutRecords(server.data_dir()), "BACKOUT_SHUTDOWN"))
      << BackoutRecords(server.data_dir());
}

TEST(QmgrdShutdownTest, SigtermIsANormalShutdown) {
  Server server;
  ASSERT_TRUE(server.Start().ok());
  server.process().Signal(SIGTERM);
  EXPECT_EQ(server.process().WaitExit(absl::Seconds(10)), 0) << server.process().Stderr();
  EXPECT_TRUE(absl::StrContains(server.process().Stderr(), "qmgrd: stopped"));
}

TEST(QmgrdShutdownTest, ImmediateShutdownBacksOutAStreamWaitingInAGet) {
  Server server;
  ASSERT_TRUE(server.Start().ok());
  server.Define("IMM");
  absl::StatusOr<std::unique_ptr<client::Program>> program = server.client().OpenProgram();
  ASSERT_TRUE(program.ok());
  std::thread waiter([&] {
    client::UnitOfWork unit = (*program)->Begin();
    // Ends when the server goes: no message, or the stream broken.
    unit.Get("IMM", absl::Seconds(30)).IgnoreError();
  });
  absl::SleepFor(absl::Milliseconds(200));
  const absl::Time start = absl::Now();
  EXPECT_TRUE(server.client().Shutdown(v1::IMMEDIATE).ok());  // EXPECT: the waiter must be joined
  EXPECT_EQ(server.process().WaitExit(absl::Seconds(10)), 0) << server.process().Stderr();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  waiter.join();
}

TEST(QmgrdExclusiveTest, SecondQmgrdOnTheSameDataDirectoryIsRefused) {
  TempDir dir;
  QmgrdProcess first(QMGRD_PATH, dir.path() + "/data", kFastFlags);
  ASSERT_TRUE(first.Start().ok());
  QmgrdProcess second(QMGRD_PATH, dir.path() + "/data", kFastFlags);
  EXPECT_EQ(second.RunToExit(), 3);
  EXPECT_TRUE(absl::StrContains(second.Stderr(), "is in use by another queue manager"))
      << second.Stderr();
}

}  // namespace
}  // namespace qmgr
