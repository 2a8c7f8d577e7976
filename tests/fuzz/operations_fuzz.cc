// Fuzz target for the server's request handling (tools/qmgrd/operations.h:
// what every QueueManager and Admin RPC does once gRPC has parsed it). The
// input is a sequence of calls, each [RPC (1 byte)] [length, 2 bytes little-
// endian] [the request's protobuf bytes], made on one engine over the
// in-memory log (remade every 256 inputs). Every call must answer, OK or a
// refusal with a code a client can act on (never UNKNOWN or INTERNAL),
// without crashing, hanging or allocating without bound.
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "google/protobuf/stubs/logging.h"
#include "tests/support/engine_on_log.h"
#include "tests/support/fault_file_system.h"
#include "tools/qmgrd/operations.h"

namespace {

namespace v1 = qmgr::v1;

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

void CheckAnswer(const absl::Status& status) {
  Check(status.code() != absl::StatusCode::kUnknown &&
        status.code() != absl::StatusCode::kInternal);
  Check(status.ok() || !status.message().empty());
}

enum Rpc : uint8_t {
  kEnqueue,
  kEnqueueBatch,
  kGet,
  kInsert,
  kSyncPoint,
  kBackout,
  kOpenSession,
  kStsn,
  kStartDataTraffic,
  kRequestRecovery,
  kClear,
  kCloseSession,
  kReceive,
  kAcknowledge,
  kDefineQueue,
  kAlterQueue,
  kDeleteQueue,
  kDisplayQueues,
  kBrowse,
  kAssign,
  kDisplaySessions,
  kRpcCount,
};

struct World {
  qmgr::testing::FaultFileSystem fs;
  std::unique_ptr<qmgr::log::Log> log;
  std::unique_ptr<qmgr::Engine> engine;
  std::unique_ptr<qmgr::server::Operations> operations;
  // A Receive stream's cursor belongs to one session, as in the server.
  std::map<std::string, qmgr::ReceiveCursor> cursors;

  World() {
    qmgr::EngineOptions options = qmgr::testing::NoReaper();
    options.memory_budget_bytes = 64 << 20;
    Check(qmgr::testing::OpenEngineOnLog(fs, &log, &engine, options).ok());
    qmgr::server::OperationsOptions ops;
    ops.get_wait_max = absl::Milliseconds(2);
    ops.get_wait_slice = absl::Milliseconds(1);
    operations = std::make_unique<qmgr::server::Operations>(engine.get(), ops);
  }
};

template <typename Request>
bool Parse(absl::string_view bytes, Request* request) {
  return request->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
}

void Call(World& w, Rpc rpc, absl::string_view bytes) {
  qmgr::server::Operations& ops = *w.operations;
  switch (rpc) {
    case kEnqueue: {
      v1::NewMessage r;
      if (Parse(bytes, &r)) CheckAnswer(ops.Enqueue(r).status());
      break;
    }
    case kEnqueueBatch: {
      v1::EnqueueBatchRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.EnqueueBatch(r).status());
      break;
    }
    case kGet: {
      v1::GetRequest r;
      if (Parse(bytes, &r)) {
        CheckAnswer(ops.Get(r, qmgr::server::kLeaseOwner, absl::Now() + absl::Milliseconds(5),
                            [] { return false; })
                        .status());
      }
      break;
    }
    case kInsert: {
      v1::InsertRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.Insert(r, qmgr::server::kLeaseOwner).status());
      break;
    }
    case kSyncPoint: {
      v1::SyncPointRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.SyncPoint(r, qmgr::server::kLeaseOwner).status());
      break;
    }
    case kBackout: {
      v1::BackoutRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.Backout(r, qmgr::server::kLeaseOwner).status());
      break;
    }
    case kOpenSession: {
      v1::OpenSessionRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.OpenSession(r).status());
      break;
    }
    case kStsn: {
      v1::SetAndTestSequenceNumbersRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.SetAndTestSequenceNumbers(r).status());
      break;
    }
    case kStartDataTraffic: {
      v1::StartDataTrafficRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.StartDataTraffic(r));
      break;
    }
    case kRequestRecovery: {
      v1::RequestRecoveryRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.RequestRecovery(r));
      break;
    }
    case kClear: {
      v1::ClearRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.Clear(r).status());
      break;
    }
    case kCloseSession: {
      v1::CloseSessionRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.CloseSession(r));
      break;
    }
    case kReceive: {
      v1::ReceiveRequest r;
      if (Parse(bytes, &r)) {
        CheckAnswer(ops.Receive(r, absl::ZeroDuration(), &w.cursors[r.session()]).status());
      }
      break;
    }
    case kAcknowledge: {
      v1::AcknowledgeRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.Acknowledge(r).status());
      break;
    }
    case kDefineQueue: {
      v1::DefineQueueRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.DefineQueue(r));
      break;
    }
    case kAlterQueue: {
      v1::AlterQueueRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.AlterQueue(r));
      break;
    }
    case kDeleteQueue: {
      v1::DeleteQueueRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.DeleteQueue(r));
      break;
    }
    case kDisplayQueues: {
      v1::DisplayQueuesRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.DisplayQueues(r).status());
      break;
    }
    case kBrowse: {
      v1::BrowseRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.Browse(r).status());
      break;
    }
    case kAssign: {
      v1::AssignRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.Assign(r).status());
      break;
    }
    case kDisplaySessions: {
      v1::DisplaySessionsRequest r;
      if (Parse(bytes, &r)) CheckAnswer(ops.DisplaySessions(r).status());
      break;
    }
    case kRpcCount:
      break;
  }
}

std::string Entry(Rpc rpc, const google::protobuf::Message& request) {
  const std::string bytes = request.SerializeAsString();
  std::string entry(1, static_cast<char>(rpc));
  entry.push_back(static_cast<char>(bytes.size() & 0xff));
  entry.push_back(static_cast<char>(bytes.size() >> 8));
  return entry + bytes;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* world = nullptr;
  static int inputs = 0;
  static const bool quiet = [] {  // invalid UTF-8 in string fields is expected here
    google::protobuf::SetLogHandler(nullptr);
    return true;
  }();
  (void)quiet;
  if (world == nullptr || ++inputs % 256 == 0) {
    delete world;
    world = new World();
  }
  size_t at = 0;
  while (at + 3 <= size) {
    const Rpc rpc = static_cast<Rpc>(data[at] % kRpcCount);
    const size_t n = std::min<size_t>(data[at + 1] | (data[at + 2] << 8), size - at - 3);
    Call(*world, rpc, absl::string_view(reinterpret_cast<const char*>(data + at + 3), n));
    at += 3 + n;
  }
  return 0;
}

// Seeds: a program's and a terminal's calls, valid, in an order that works.
std::vector<std::string> FuzzSeeds() {
  std::vector<std::string> seeds;
  std::string program;
  v1::DefineQueueRequest define;
  define.set_queue("Q");
  define.mutable_attributes()->set_max_depth(10);
  define.mutable_attributes()->set_backout_threshold(1);
  define.mutable_attributes()->set_backout_queue("BQ");
  program += Entry(kDefineQueue, define);
  define.set_queue("BQ");
  define.clear_attributes();
  program += Entry(kDefineQueue, define);
  v1::NewMessage m;
  m.set_queue("Q");
  m.set_payload("hello");
  m.set_correlation_id("c1");
  program += Entry(kEnqueue, m);
  v1::EnqueueBatchRequest batch;
  *batch.add_messages() = m;
  *batch.add_messages() = m;
  program += Entry(kEnqueueBatch, batch);
  v1::GetRequest get;
  get.set_queue("Q");
  program += Entry(kGet, get);
  v1::InsertRequest insert;
  insert.set_uow(1);
  *insert.mutable_message() = m;
  program += Entry(kInsert, insert);
  v1::SyncPointRequest sync;
  sync.set_uow(1);
  program += Entry(kSyncPoint, sync);
  get.set_uow(0);
  program += Entry(kGet, get);
  v1::BackoutRequest backout;
  backout.set_uow(2);
  program += Entry(kBackout, backout);
  v1::BrowseRequest browse;
  browse.set_queue("Q");
  program += Entry(kBrowse, browse);
  program += Entry(kDisplayQueues, v1::DisplayQueuesRequest());
  v1::AlterQueueRequest alter;
  alter.set_queue("Q");
  alter.mutable_attributes()->set_get_inhibited(true);
  program += Entry(kAlterQueue, alter);
  v1::DeleteQueueRequest del;
  del.set_queue("Q");
  del.set_purge(true);
  program += Entry(kDeleteQueue, del);
  seeds.push_back(program);

  std::string terminal;
  define.set_queue("OUT");
  define.mutable_attributes()->set_output_of_session("T1");
  terminal += Entry(kDefineQueue, define);
  v1::OpenSessionRequest open;
  open.set_session("T1");
  terminal += Entry(kOpenSession, open);
  v1::SetAndTestSequenceNumbersRequest stsn;
  stsn.set_session("T1");
  stsn.mutable_input()->set_action(v1::SET_AND_TEST);
  stsn.mutable_output()->set_action(v1::SET_AND_TEST);
  terminal += Entry(kStsn, stsn);
  v1::StartDataTrafficRequest sdt;
  sdt.set_session("T1");
  terminal += Entry(kStartDataTraffic, sdt);
  v1::NewMessage input;
  input.set_queue("OUT");
  input.set_payload("reply");
  input.set_session("T1");
  input.set_input_seq(1);
  terminal += Entry(kEnqueue, input);
  v1::ReceiveRequest receive;
  receive.set_session("T1");
  terminal += Entry(kReceive, receive);
  v1::AcknowledgeRequest ack;
  ack.set_session("T1");
  ack.set_out_seq(1);
  ack.set_positive(true);
  terminal += Entry(kAcknowledge, ack);
  v1::AssignRequest assign;
  assign.set_from_session("T1");
  assign.set_to_session("T2");
  terminal += Entry(kAssign, assign);
  terminal += Entry(kDisplaySessions, v1::DisplaySessionsRequest());
  v1::RequestRecoveryRequest rqr;
  rqr.set_session("T1");
  terminal += Entry(kRequestRecovery, rqr);
  v1::ClearRequest clear;
  clear.set_session("T1");
  terminal += Entry(kClear, clear);
  v1::CloseSessionRequest close;
  close.set_session("T1");
  terminal += Entry(kCloseSession, close);
  seeds.push_back(terminal);
  return seeds;
}
