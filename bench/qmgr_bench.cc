// qmgr-bench: load over gRPC against a running qmgrd, then the very same
// load against a no-op server (bench/noop.proto: the same calls and message
// sizes, answered at once) in a child process: the ceiling gRPC itself sets
// on this machine for that number and size of calls.
//
// Producers (--producers) enqueue --size byte messages of --class onto
// --queue, --batch per call (EnqueueBatch when > 1); consumers
// (--consumers) take them in units of work: unbatched, Get with
// commit_previous (one call per message, IMS single mode); batched
// (--consume many, the default), a Get of up to --batch messages
// (max_messages) with commit_previous, one call per unit; batched with
// --consume units, --batch single Gets then a SyncPoint. --mode unary: one call in flight per
// producer or consumer; --mode stream: producers keep --window requests in flight on an
// EnqueueStream (batched: --window EnqueueBatch calls in flight), consumers
// use a ProgramStream. Each producer and consumer has its own channel and
// connection.
//
// Reported per server: messages enqueued and consumed per second, calls per
// second, p50/p99/p999 latency of enqueue calls and of consumer calls, and
// the ratio of qmgrd's calls/s to the no-op's. Only calls that complete
// within --seconds count. A progress line per second goes to stderr.
//
// --messages N (--mode unary) replaces the time limit by a count: producers
// enqueue N messages in all, consumers stop once N have been received, and
// commit what they hold (bench/callgrind.sh divides qmgrd's instruction
// count by it).
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <deque>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "bench/bench_support.h"
#include "bench/noop.grpc.pb.h"
#include "qmgr/v1/qmgr.grpc.pb.h"

namespace {

using qmgr::bench::Clock;
using qmgr::bench::DescribeMachine;
using qmgr::bench::Die;
using qmgr::bench::Machine;
using qmgr::bench::MachineCpu;
using qmgr::bench::MachineShares;
using qmgr::bench::Percentile;
using qmgr::bench::ReadMachineCpu;
using qmgr::bench::SharesBetween;
namespace v1 = qmgr::v1;

struct Config {
  std::string target;
  int producers = 1;
  int consumers = 1;
  size_t size = 1024;
  std::string class_name = "RECOVERABLE";
  v1::MessageClass cls = v1::RECOVERABLE;
  int batch = 1;
  std::string mode = "stream";
  int window = 16;
  double seconds = 5;
  std::string queue = "BENCH";
  uint32_t wait_ms = 100;
  // Batched consumers: "many" (a Get of up to --batch messages per unit) or
  // "units" (--batch single Gets, then a SyncPoint).
  std::string consume = "many";
  bool noop = true;
  int64_t messages = -1;  // >= 0: a count of messages instead of --seconds
};

// What one producer or consumer measured.
struct Stats {
  absl::Mutex mu;  // stream readers and async callbacks record from other threads
  uint64_t calls = 0;
  uint64_t messages = 0;
  uint64_t errors = 0;
  std::string first_error;
  std::vector<Clock::duration> latencies;

  void Record(Clock::duration latency, uint64_t messages_done, const grpc::Status& s) {
    absl::MutexLock lock(&mu);
    ++calls;
    latencies.push_back(latency);
    if (s.ok()) {
      messages += messages_done;
    } else if (errors++ == 0) {
      first_error = s.error_message();
    }
  }
};

// Live counters for the progress line.
struct Progress {
  std::atomic<uint64_t> enqueued{0};
  std::atomic<uint64_t> consumed{0};
  std::atomic<uint64_t> calls{0};
};

struct Run {
  const Config* c;
  Clock::time_point deadline;
  Progress progress;
  // --messages: what producers have still to enqueue and consumers to take.
  bool counted = false;
  std::atomic<int64_t> to_enqueue{0};
  std::atomic<int64_t> to_receive{0};
  std::atomic<bool> finished{false};
  bool Over(Clock::time_point t) const { return t > deadline; }
};

std::shared_ptr<grpc::Channel> NewChannel(const std::string& target) {
  grpc::ChannelArguments args;
  // Own connection per caller, as separate client processes would have.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

v1::NewMessage Message(const Config& c) {
  v1::NewMessage m;
  m.set_queue(c.queue);
  m.set_payload(std::string(c.size, 'x'));
  m.set_class_(c.cls);
  return m;
}

// ---- Producers ----------------------------------------------------------------

template <typename Stub>
void ProduceUnary(Stub* stub, Run* run, Stats* st) {
  const Config& c = *run->c;
  v1::EnqueueRequest one;
  *one.mutable_message() = Message(c);
  v1::EnqueueBatchRequest many;
  for (int i = 0; i < c.batch; ++i) *many.add_messages() = Message(c);
  while (true) {
    if (run->counted && run->to_enqueue.fetch_sub(c.batch) < c.batch) return;
    grpc::ClientContext context;
    const Clock::time_point t0 = Clock::now();
    grpc::Status s;
    if (c.batch == 1) {
      v1::EnqueueResponse response;
      s = stub->Enqueue(&context, one, &response);
    } else {
      v1::EnqueueBatchResponse response;
      s = stub->EnqueueBatch(&context, many, &response);
    }
    const Clock::time_point t1 = Clock::now();
    if (run->Over(t1)) return;
    st->Record(t1 - t0, c.batch, s);
    run->progress.calls++;
    if (s.ok()) run->progress.enqueued += c.batch;
  }
}

// --window EnqueueStream requests in flight; answers come in order.
template <typename Stub>
void ProduceStream(Stub* stub, Run* run, Stats* st) {
  const Config& c = *run->c;
  v1::EnqueueRequest request;
  *request.mutable_message() = Message(c);
  grpc::ClientContext context;
  auto stream = stub->EnqueueStream(&context);
  absl::Mutex mu;
  std::deque<Clock::time_point> sent;
  std::thread reader([&] {
    v1::EnqueueStreamResponse response;
    while (stream->Read(&response)) {
      const Clock::time_point t1 = Clock::now();
      Clock::time_point t0;
      {
        absl::MutexLock lock(&mu);
        t0 = sent.front();
        sent.pop_front();
      }
      if (run->Over(t1)) continue;
      const grpc::Status s =
          response.has_error() ? grpc::Status(grpc::StatusCode::UNKNOWN, response.error().message())
                               : grpc::Status::OK;
      st->Record(t1 - t0, 1, s);
      run->progress.calls++;
      if (s.ok()) run->progress.enqueued++;
    }
  });
  const size_t window = c.window;
  while (!run->Over(Clock::now())) {
    {
      absl::MutexLock lock(&mu);
      auto room = [&] { return sent.size() < window; };
      mu.Await(absl::Condition(&room));
      sent.push_back(Clock::now());
    }
    if (!stream->Write(request)) break;
  }
  stream->WritesDone();
  reader.join();
  stream->Finish();
}

// Batched "stream" mode: --window EnqueueBatch calls in flight (there is no
// streaming batch call).
template <typename Stub>
void ProduceBatchPipelined(Stub* stub, Run* run, Stats* st) {
  const Config& c = *run->c;
  v1::EnqueueBatchRequest request;
  for (int i = 0; i < c.batch; ++i) *request.add_messages() = Message(c);
  struct Call {
    grpc::ClientContext context;
    v1::EnqueueBatchResponse response;
    Clock::time_point t0;
  };
  absl::Mutex mu;
  int in_flight = 0;
  while (!run->Over(Clock::now())) {
    {
      absl::MutexLock lock(&mu);
      auto room = [&] { return in_flight < c.window; };
      mu.Await(absl::Condition(&room));
      ++in_flight;
    }
    auto* call = new Call;
    call->t0 = Clock::now();
    stub->async()->EnqueueBatch(&call->context, &request, &call->response,
                                [&, call](grpc::Status s) {
                                  const Clock::time_point t1 = Clock::now();
                                  if (!run->Over(t1)) {
                                    st->Record(t1 - call->t0, c.batch, s);
                                    run->progress.calls++;
                                    if (s.ok()) run->progress.enqueued += c.batch;
                                  }
                                  delete call;
                                  absl::MutexLock lock(&mu);
                                  --in_flight;
                                });
  }
  absl::MutexLock lock(&mu);
  auto none = [&] { return in_flight == 0; };
  mu.Await(absl::Condition(&none));
}

// ---- Consumers ------------------------------------------------------------------

// One consumer operation, unary or on a ProgramStream.
template <typename Stub>
class ConsumerCalls {
 public:
  ConsumerCalls(Stub* stub, bool stream) : stub_(stub) {
    if (stream) stream_ = stub->ProgramStream(&stream_context_);
  }
  ~ConsumerCalls() {
    if (stream_) {
      stream_->WritesDone();
      stream_->Finish();
    }
  }
  grpc::Status Get(const v1::GetRequest& request, v1::GetResponse* response) {
    if (!stream_) {
      grpc::ClientContext context;
      return stub_->Get(&context, request, response);
    }
    v1::ProgramRequest op;
    *op.mutable_get() = request;
    v1::ProgramResponse answer;
    grpc::Status s = Call(op, &answer);
    if (s.ok()) *response = answer.get();
    return s;
  }
  grpc::Status SyncPoint(uint64_t uow) {
    v1::SyncPointRequest request;
    request.set_uow(uow);
    if (!stream_) {
      grpc::ClientContext context;
      v1::SyncPointResponse response;
      return stub_->SyncPoint(&context, request, &response);
    }
    v1::ProgramRequest op;
    *op.mutable_sync_point() = request;
    v1::ProgramResponse answer;
    return Call(op, &answer);
  }

 private:
  grpc::Status Call(const v1::ProgramRequest& op, v1::ProgramResponse* answer) {
    if (!stream_->Write(op) || !stream_->Read(answer)) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "program stream ended");
    }
    if (answer->has_error()) {
      return grpc::Status(static_cast<grpc::StatusCode>(answer->error().code()),
                          answer->error().message());
    }
    return grpc::Status::OK;
  }

  Stub* stub_;
  grpc::ClientContext stream_context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ProgramRequest, v1::ProgramResponse>> stream_;
};

template <typename Stub>
void Consume(Stub* stub, Run* run, Stats* st) {
  const Config& c = *run->c;
  ConsumerCalls<Stub> calls(stub, c.mode == "stream");
  // One call per unit: each Get commits the previous unit (commit_previous)
  // and takes the next message, or up to --batch of them.
  const bool get_commits = c.batch == 1 || c.consume == "many";
  uint64_t uow = 0;
  uint64_t held = 0;  // messages in the open unit
  while (true) {
    if (run->counted && run->to_receive <= 0) break;
    v1::GetRequest request;
    request.set_queue(c.queue);
    request.set_wait_ms(c.wait_ms);
    request.set_uow(uow);
    request.set_commit_previous(get_commits && uow != 0);
    if (c.batch > 1 && c.consume == "many") request.set_max_messages(c.batch);
    v1::GetResponse response;
    Clock::time_point t0 = Clock::now();
    grpc::Status s = calls.Get(request, &response);
    Clock::time_point t1 = Clock::now();
    // The unit the server now holds for us, counted or not.
    uow = s.ok() ? response.uow() : 0;
    if (run->Over(t1)) break;
    const uint64_t committed = s.ok() && request.commit_previous() ? held : 0;
    st->Record(t1 - t0, committed, s);
    run->progress.calls++;
    run->progress.consumed += committed;
    if (!s.ok()) {
      held = 0;
      continue;
    }
    const uint64_t got = response.has_message() ? 1 + response.more_size() : 0;
    if (run->counted) run->to_receive -= got;
    held = get_commits ? got : held + got;
    if (!get_commits && uow != 0 && (held == uint64_t(c.batch) || got == 0)) {
      t0 = Clock::now();
      s = calls.SyncPoint(std::exchange(uow, 0));
      t1 = Clock::now();
      if (run->Over(t1)) break;
      st->Record(t1 - t0, s.ok() ? held : 0, s);
      run->progress.calls++;
      if (s.ok()) run->progress.consumed += held;
      held = 0;
    }
  }
  // Whatever is still held is committed so it is not redelivered; counted
  // only when the run is a count of messages (they were taken within it).
  if (uow != 0) {
    const Clock::time_point t0 = Clock::now();
    const grpc::Status s = calls.SyncPoint(uow);
    if (run->counted) {
      st->Record(Clock::now() - t0, s.ok() ? held : 0, s);
      if (s.ok()) run->progress.consumed += held;
    }
  }
}

// ---- One run against one server ---------------------------------------------------

struct Result {
  std::string server;
  double seconds = 0;
  uint64_t enqueued = 0;
  uint64_t consumed = 0;
  uint64_t calls = 0;
  uint64_t errors = 0;
  std::string first_error;
  double enq_p50 = 0, enq_p99 = 0, enq_p999 = 0;
  double get_p50 = 0, get_p99 = 0, get_p999 = 0;
  MachineShares machine;  // the whole machine's idle and steal over the run
};

template <typename Service>
Result RunAgainst(const std::string& name, const std::string& target, const Config& c) {
  Run run;
  run.c = &c;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<typename Service::Stub>> stubs;
  for (int i = 0; i < c.producers + c.consumers; ++i) {
    channels.push_back(NewChannel(target));
    if (!channels.back()->WaitForConnected(std::chrono::system_clock::now() +
                                           std::chrono::seconds(5))) {
      Die(absl::StrCat("cannot connect to ", target));
    }
    stubs.push_back(Service::NewStub(channels.back()));
  }
  std::vector<std::unique_ptr<Stats>> producer_stats, consumer_stats;
  std::vector<std::thread> threads;
  const MachineCpu machine0 = ReadMachineCpu();
  const Clock::time_point start = Clock::now();
  run.counted = c.messages >= 0;
  run.to_enqueue = c.messages;
  run.to_receive = c.messages;
  run.deadline = run.counted
                     ? Clock::time_point::max()
                     : start + std::chrono::microseconds(static_cast<int64_t>(c.seconds * 1e6));
  for (int i = 0; i < c.producers; ++i) {
    producer_stats.push_back(std::make_unique<Stats>());
    auto* stub = stubs[i].get();
    Stats* st = producer_stats.back().get();
    threads.emplace_back([&, stub, st] {
      if (c.mode == "unary") {
        ProduceUnary(stub, &run, st);
      } else if (c.batch == 1) {
        ProduceStream(stub, &run, st);
      } else {
        ProduceBatchPipelined(stub, &run, st);
      }
    });
  }
  for (int i = 0; i < c.consumers; ++i) {
    consumer_stats.push_back(std::make_unique<Stats>());
    auto* stub = stubs[c.producers + i].get();
    Stats* st = consumer_stats.back().get();
    threads.emplace_back([&, stub, st] { Consume(stub, &run, st); });
  }
  std::thread progress([&] {
    uint64_t enq = 0, got = 0, calls = 0;
    for (int second = 1; run.counted ? !run.finished
                                     : Clock::now() + std::chrono::seconds(1) <=
                                           run.deadline + std::chrono::milliseconds(100);
         ++second) {
      std::this_thread::sleep_until(start + std::chrono::seconds(second));
      if (run.counted && run.finished) break;
      const uint64_t e = run.progress.enqueued, g = run.progress.consumed, k = run.progress.calls;
      std::cerr << absl::StrFormat(
          "[%s] %2ds  enqueued %8d/s  consumed %8d/s  calls %8d/s  backlog %d\n", name, second,
          e - enq, g - got, k - calls, e - g);
      enq = e;
      got = g;
      calls = k;
    }
  });
  for (std::thread& t : threads) t.join();
  run.finished = true;
  progress.join();

  Result r;
  r.machine = SharesBetween(machine0, ReadMachineCpu());
  r.server = name;
  r.seconds = run.counted ? std::chrono::duration<double>(Clock::now() - start).count() : c.seconds;
  std::vector<Clock::duration> enq_lat, get_lat;
  for (auto& st : producer_stats) {
    r.enqueued += st->messages;
    r.calls += st->calls;
    r.errors += st->errors;
    if (r.first_error.empty()) r.first_error = st->first_error;
    enq_lat.insert(enq_lat.end(), st->latencies.begin(), st->latencies.end());
  }
  for (auto& st : consumer_stats) {
    r.consumed += st->messages;
    r.calls += st->calls;
    r.errors += st->errors;
    if (r.first_error.empty()) r.first_error = st->first_error;
    get_lat.insert(get_lat.end(), st->latencies.begin(), st->latencies.end());
  }
  r.enq_p50 = Percentile(enq_lat, 50);
  r.enq_p99 = Percentile(enq_lat, 99);
  r.enq_p999 = Percentile(enq_lat, 99.9);
  r.get_p50 = Percentile(get_lat, 50);
  r.get_p99 = Percentile(get_lat, 99);
  r.get_p999 = Percentile(get_lat, 99.9);
  return r;
}

// ---- The no-op server (a child process: qmgr-bench --serve-noop) ------------------

class NoOpService final : public qmgr::bench::v1::NoOp::CallbackService {
 public:
  explicit NoOpService(size_t size) : payload_(size, 'x') {}

  grpc::ServerUnaryReactor* Enqueue(grpc::CallbackServerContext* ctx, const v1::EnqueueRequest*,
                                    v1::EnqueueResponse* response) override {
    Fill(response);
    return Done(ctx);
  }
  grpc::ServerUnaryReactor* EnqueueBatch(grpc::CallbackServerContext* ctx,
                                         const v1::EnqueueBatchRequest* request,
                                         v1::EnqueueBatchResponse* response) override {
    for (int i = 0; i < request->messages_size(); ++i) Fill(response->add_results());
    return Done(ctx);
  }
  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* ctx, const v1::GetRequest* request,
                                v1::GetResponse* response) override {
    FillGet(*request, response);
    return Done(ctx);
  }
  grpc::ServerUnaryReactor* SyncPoint(grpc::CallbackServerContext* ctx, const v1::SyncPointRequest*,
                                      v1::SyncPointResponse* response) override {
    response->set_lsn(next_++);
    return Done(ctx);
  }
  grpc::ServerBidiReactor<v1::EnqueueRequest, v1::EnqueueStreamResponse>* EnqueueStream(
      grpc::CallbackServerContext*) override {
    return new EnqueueEcho(this);
  }
  grpc::ServerBidiReactor<v1::ProgramRequest, v1::ProgramResponse>* ProgramStream(
      grpc::CallbackServerContext*) override {
    return new ProgramEcho(this);
  }

 private:
  // Reads ahead while answers are written, like qmgrd's EnqueueStream.
  class EnqueueEcho final
      : public grpc::ServerBidiReactor<v1::EnqueueRequest, v1::EnqueueStreamResponse> {
   public:
    explicit EnqueueEcho(NoOpService* s) : s_(s) { StartRead(&request_); }
    void OnReadDone(bool ok) override {
      bool write = false;
      {
        absl::MutexLock lock(&mu_);
        if (!ok) {
          read_closed_ = true;
        } else {
          v1::EnqueueStreamResponse r;
          s_->Fill(r.mutable_enqueued());
          queued_.push_back(std::move(r));
          write = StartNextWriteLocked();
        }
        if (ok) reading_ = true;
      }
      if (write) StartWrite(&writing_msg_);
      if (ok) StartRead(&request_);
      MaybeFinish();
    }
    void OnWriteDone(bool ok) override {
      bool write = false;
      {
        absl::MutexLock lock(&mu_);
        writing_ = false;
        if (!ok) {
          broken_ = true;
          queued_.clear();
        } else {
          write = StartNextWriteLocked();
        }
      }
      if (write) StartWrite(&writing_msg_);
      MaybeFinish();
    }
    void OnDone() override { delete this; }

   private:
    bool StartNextWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      if (writing_ || queued_.empty() || broken_) return false;
      writing_msg_ = std::move(queued_.front());
      queued_.pop_front();
      writing_ = true;
      return true;
    }
    void MaybeFinish() {
      {
        absl::MutexLock lock(&mu_);
        if (!read_closed_ || writing_ || (!queued_.empty() && !broken_) || finished_) return;
        finished_ = true;
      }
      Finish(grpc::Status::OK);
    }
    NoOpService* s_;
    absl::Mutex mu_;
    v1::EnqueueRequest request_;
    v1::EnqueueStreamResponse writing_msg_;
    std::deque<v1::EnqueueStreamResponse> queued_ ABSL_GUARDED_BY(mu_);
    bool reading_ ABSL_GUARDED_BY(mu_) = true;
    bool writing_ ABSL_GUARDED_BY(mu_) = false;
    bool read_closed_ ABSL_GUARDED_BY(mu_) = false;
    bool broken_ ABSL_GUARDED_BY(mu_) = false;
    bool finished_ ABSL_GUARDED_BY(mu_) = false;
  };

  // One operation at a time, like qmgrd's ProgramStream.
  class ProgramEcho final
      : public grpc::ServerBidiReactor<v1::ProgramRequest, v1::ProgramResponse> {
   public:
    explicit ProgramEcho(NoOpService* s) : s_(s) { StartRead(&request_); }
    void OnReadDone(bool ok) override {
      if (!ok) {
        Finish(grpc::Status::OK);
        return;
      }
      response_.Clear();
      if (request_.has_get()) {
        s_->FillGet(request_.get(), response_.mutable_get());
      } else {
        response_.mutable_sync_point()->set_lsn(s_->next_++);
      }
      StartWrite(&response_);
    }
    void OnWriteDone(bool ok) override {
      if (!ok) {
        Finish(grpc::Status::OK);
        return;
      }
      StartRead(&request_);
    }
    void OnDone() override { delete this; }

   private:
    NoOpService* s_;
    v1::ProgramRequest request_;
    v1::ProgramResponse response_;
  };

  grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx) {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  void Fill(v1::EnqueueResponse* r) {
    const uint64_t n = next_++;
    r->set_message_id(n);
    r->set_lsn(n * 4096);
    r->set_durability(v1::DURABLE);
  }
  // As many messages as asked for (max_messages), like a full queue.
  void FillGet(const v1::GetRequest& request, v1::GetResponse* r) {
    const uint64_t n = next_++;
    r->set_uow(n);
    r->set_lease_ms(60000);
    FillMessage(n, r->mutable_message());
    for (uint32_t i = 1; i < request.max_messages(); ++i) FillMessage(n, r->add_more());
  }
  void FillMessage(uint64_t n, v1::Message* m) {
    m->set_id(n);
    m->set_queue("BENCH");
    m->set_class_(v1::RECOVERABLE);
    m->set_payload(payload_);
    m->set_enqueue_time_us(1700000000000000 + n);
  }

  const std::string payload_;
  std::atomic<uint64_t> next_{1};
};

int ServeNoOp(size_t size) {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  NoOpService service(size);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) Die("no-op server: cannot listen");
  std::printf("127.0.0.1:%d\n", port);
  std::fflush(stdout);
  int signal = 0;
  sigwait(&stop, &signal);
  server->Shutdown(std::chrono::system_clock::now());
  return 0;
}

// Starts `self --serve-noop` and returns its pid and address.
std::pair<pid_t, std::string> SpawnNoOp(const char* self, size_t size) {
  int fds[2];
  if (::pipe(fds) != 0) Die("pipe");
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::close(fds[0]);
    const std::string size_arg = std::to_string(size);
    ::execl(self, self, "--serve-noop", "--size", size_arg.c_str(), nullptr);
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string address;
  char ch;
  while (::read(fds[0], &ch, 1) == 1 && ch != '\n') address.push_back(ch);
  ::close(fds[0]);
  if (address.empty()) Die("the no-op server did not start");
  return {pid, address};
}

void PrintResult(const Result& r, const Config& c) {
  std::cout << absl::StrFormat(
      "| %-6s | %9.0f | %9.0f | %9.0f | %7.0f / %7.0f / %7.0f | %7.0f / %7.0f / %7.0f | %llu | "
      "%3.0f / %3.0f |\n",
      r.server, r.enqueued / r.seconds, r.consumed / r.seconds, r.calls / r.seconds, r.enq_p50,
      r.enq_p99, r.enq_p999, r.get_p50, r.get_p99, r.get_p999,
      static_cast<unsigned long long>(r.errors), 100 * r.machine.idle, 100 * r.machine.steal);
  if (r.errors > 0) std::cout << "  first error (" << r.server << "): " << r.first_error << "\n";
  // The line bench/peers/run.sh collects (qmgr-peer-bench prints the same).
  std::cout << absl::StrFormat("RESULT,%s,%d,%d,%d,%.0f,%.0f,%.0f,%.0f,%.0f,%.0f,%d,%d\n", r.server,
                               c.producers, c.consumers, c.batch, r.enqueued / r.seconds,
                               r.consumed / r.seconds, r.enq_p50, r.enq_p99, r.get_p50, r.get_p99,
                               r.errors, r.enqueued > r.consumed ? r.enqueued - r.consumed : 0);
}

void PrepareQueue(const std::string& target, const Config& c) {
  auto admin = v1::Admin::NewStub(NewChannel(target));
  grpc::ClientContext delete_context;
  v1::DeleteQueueRequest del;
  del.set_queue(c.queue);
  del.set_purge(true);
  v1::DeleteQueueResponse deleted;
  const grpc::Status d = admin->DeleteQueue(&delete_context, del, &deleted);
  if (!d.ok() && d.error_code() != grpc::StatusCode::NOT_FOUND) {
    Die(absl::StrCat("DeleteQueue ", c.queue, ": ", d.error_message()));
  }
  grpc::ClientContext define_context;
  v1::DefineQueueRequest def;
  def.set_queue(c.queue);
  v1::DefineQueueResponse defined;
  const grpc::Status s = admin->DefineQueue(&define_context, def, &defined);
  if (!s.ok()) Die(absl::StrCat("DefineQueue ", c.queue, ": ", s.error_message()));
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  bool serve_noop = false;
  CLI::App app{"qmgr-bench: producers and consumers over gRPC against qmgrd, then a no-op server"};
  app.add_option("--target", c.target, "qmgrd's address (HOST:PORT)");
  app.add_option("--producers", c.producers, "Producer callers")->capture_default_str();
  app.add_option("--consumers", c.consumers, "Consumer callers")->capture_default_str();
  app.add_option("--size", c.size, "Payload bytes")->capture_default_str();
  app.add_option("--class", c.class_name, "Message class")->capture_default_str();
  app.add_option("--batch", c.batch, "Messages per EnqueueBatch, and per consumer unit of work")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app.add_option("--mode", c.mode, "unary or stream")
      ->check(CLI::IsMember({"unary", "stream"}))
      ->capture_default_str();
  app.add_option("--window", c.window, "Stream mode: requests in flight per producer")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--seconds", c.seconds, "Duration of each run")->capture_default_str();
  app.add_option("--queue", c.queue, "Queue (deleted with its messages, then defined)")
      ->capture_default_str();
  app.add_option("--wait-ms", c.wait_ms, "Consumers' Get wait")->capture_default_str();
  app.add_option("--messages", c.messages,
                 "Unary mode: this many messages in all instead of --seconds (a multiple of "
                 "--batch; 0: connect and define the queue only)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--consume", c.consume,
                 "Batched consumers: many (a Get of up to --batch messages per unit, "
                 "max_messages) or units (--batch single Gets, then a SyncPoint)")
      ->check(CLI::IsMember({"many", "units"}))
      ->capture_default_str();
  bool no_noop = false;
  app.add_flag("--no-noop", no_noop, "Skip the no-op reference run");
  app.add_flag("--serve-noop", serve_noop, "(internal) serve the no-op service, print its address");
  CLI11_PARSE(app, argc, argv);
  if (serve_noop) return ServeNoOp(c.size);
  c.noop = !no_noop;
  if (c.target.empty()) Die("--target (qmgrd's address) is required");
  if (c.consume == "many" && c.batch > 1000) {
    Die("--consume many takes at most 1000 messages per Get: --batch 1000 or less");
  }
  if (!v1::MessageClass_Parse(c.class_name, &c.cls))
    Die(absl::StrCat("unknown class ", c.class_name));
  if (c.messages >= 0 && c.mode != "unary") Die("--messages needs --mode unary");
  if (c.messages > 0 && c.messages % c.batch != 0) Die("--messages must be a multiple of --batch");

  const Machine m = DescribeMachine(".");
  std::cout << "machine: nproc=" << m.nproc << " kernel=" << m.kernel << " date=" << m.date << "\n";
  std::cout << absl::StrFormat(
      "load: producers=%d consumers=%d size=%d class=%s batch=%d consume=%s mode=%s window=%d "
      "%s\n",
      c.producers, c.consumers, c.size, c.class_name, c.batch, c.consume, c.mode, c.window,
      c.messages >= 0 ? absl::StrCat("messages=", c.messages)
                      : absl::StrCat("seconds=", c.seconds));

  PrepareQueue(c.target, c);
  const Result q = RunAgainst<v1::QueueManager>("qmgrd", c.target, c);
  std::optional<Result> n;
  if (c.noop) {
    auto [pid, address] = SpawnNoOp(argv[0], c.size);
    n = RunAgainst<qmgr::bench::v1::NoOp>("no-op", address, c);
    ::kill(pid, SIGTERM);
    ::waitpid(pid, nullptr, 0);
  }
  std::cout << "| server | enq msg/s | get msg/s |   calls/s | enqueue call p50 / p99 / p999 µs | "
               "consumer call p50 / p99 / p999 µs | errors | machine idle / steal % |\n";
  PrintResult(q, c);
  if (n) {
    PrintResult(*n, c);
    std::cout << absl::StrFormat("qmgrd calls/s / no-op calls/s = %.2f\n",
                                 n->calls > 0 ? static_cast<double>(q.calls) / n->calls : 0.0);
  }
  return 0;
}
