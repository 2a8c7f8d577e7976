// The C++ client library of the queue manager: what producers and
// application programs link (examples/ shows both). A thin layer over the
// generated stubs of proto/qmgr/v1/qmgr.proto:
//
//  - Client: a channel to qmgrd, connected within a deadline; unary
//    Enqueue/EnqueueBatch with retries only where they are safe; the Admin
//    calls; the stubs themselves for anything else.
//  - Producer: pipelined enqueues over one EnqueueStream.
//  - Program and UnitOfWork: Get/Insert/SyncPoint/Backout over one
//    ProgramStream; a UnitOfWork backs itself out when destroyed uncommitted,
//    and the server backs out whatever the stream still holds if the
//    program dies.
//
// Errors are absl::Status with the gRPC code; a reason the server attached
// (QUEUE_FULL, RESPONSE_OUTSTANDING, ...) is qmgr::ReasonOf(status).
#ifndef QMGR_CLIENT_CLIENT_H_
#define QMGR_CLIENT_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/credentials.h"
#include "qmgr/v1/qmgr.grpc.pb.h"

namespace qmgr::client {

struct ClientOptions {
  std::string target = "127.0.0.1:7430";
  // Connect fails (Unavailable) when the channel is not ready within this.
  absl::Duration connect_timeout = absl::Seconds(5);
  // Deadline of each unary call.
  absl::Duration call_timeout = absl::Seconds(30);
  // Attempts of a call that is safe to retry (see Retry), with this pause,
  // doubled after each attempt.
  int max_attempts = 3;
  absl::Duration retry_backoff = absl::Milliseconds(50);
  // Largest response accepted (a Get of a big message, a Browse).
  int max_receive_bytes = 64 << 20;
  // TLS, client certificate, token (docs/security.md); empty: plaintext.
  Credentials credentials = {};
};

// Whether a unary Enqueue that failed in transit (UNAVAILABLE or
// DEADLINE_EXCEEDED: it may or may not have reached the queue manager) is
// sent again.
enum class Retry {
  // Only a message with a session and input number: the server refuses a
  // second copy of the same input (ALREADY_HARDENED), so it cannot be queued
  // twice. A message without a session is not retried.
  kSafeOnly,
  // Any message. A message without a session MAY BE QUEUED TWICE: the first
  // attempt may have been queued before its answer was lost.
  kMayDuplicate,
};

struct Enqueued {
  uint64_t message_id = 0;
  uint64_t lsn = 0;
  bool durable = false;
  // A retry of session input found that the first attempt had been queued
  // (ALREADY_HARDENED): the message is queued once; its id is unknown here.
  // `durable` is false for a deferred class (held until its sync point).
  bool first_attempt_landed = false;
};

class Producer;
class Program;

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);

  absl::StatusOr<Enqueued> Enqueue(const qmgr::v1::NewMessage& message,
                                   Retry retry = Retry::kSafeOnly);
  // All or nothing: one ENQUEUE record. Retried under the same rule as
  // Enqueue, where every message must have a session for kSafeOnly.
  absl::StatusOr<std::vector<Enqueued>> EnqueueBatch(
      absl::Span<const qmgr::v1::NewMessage> messages, Retry retry = Retry::kSafeOnly);

  // Pipelined enqueues on one stream, at most `window` unanswered.
  absl::StatusOr<std::unique_ptr<Producer>> OpenProducer(int window = 64);
  // A program's stream of units of work.
  absl::StatusOr<std::unique_ptr<Program>> OpenProgram();

  // Admin (all safe to retry but DeleteQueue with purge, which is not
  // retried).
  absl::Status DefineQueue(const std::string& queue, const qmgr::v1::QueueAttributes& attributes);
  absl::Status AlterQueue(const std::string& queue, const qmgr::v1::QueueAttributes& attributes);
  absl::Status DeleteQueue(const std::string& queue, bool purge);
  absl::StatusOr<qmgr::v1::DisplayQueuesResponse> DisplayQueues(
      const std::vector<std::string>& queues = {});
  absl::StatusOr<qmgr::v1::BrowseResponse> Browse(const std::string& queue,
                                                  uint32_t max_messages = 0);
  absl::Status Shutdown(qmgr::v1::ShutdownMode mode = qmgr::v1::NORMAL);

  // For calls this class does not wrap (unary Get/Insert/SyncPoint/Backout).
  qmgr::v1::QueueManager::Stub* queue_manager() { return queue_manager_.get(); }
  qmgr::v1::Admin::Stub* admin() { return admin_.get(); }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  // A context with the call deadline and the token set.
  std::unique_ptr<grpc::ClientContext> NewContext() const;

 private:
  Client(ClientOptions options, std::shared_ptr<grpc::Channel> channel);
  // Makes up to max_attempts calls of `call` (a grpc::Status from a fresh
  // context) while `retryable` says the failure may be retried.
  template <typename Call>
  absl::Status Attempt(bool retryable, Call call);
  // A stream's context: the token, no deadline (a stream lasts).
  std::unique_ptr<grpc::ClientContext> StreamContext() const;

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<qmgr::v1::QueueManager::Stub> queue_manager_;
  std::unique_ptr<qmgr::v1::Admin::Stub> admin_;
};

// Enqueues pipelined over one EnqueueStream: answers come in order, at most
// `window` are outstanding (EnqueueAsync blocks beyond that). Thread-safe.
// If the stream breaks, every outstanding and later enqueue fails with its
// status; whether an unanswered message was queued is then unknown (the
// retry rules of Retry apply to resending it).
class Producer {
 public:
  ~Producer();  // Close()s
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;

  std::future<absl::StatusOr<Enqueued>> EnqueueAsync(qmgr::v1::NewMessage message);
  absl::StatusOr<Enqueued> Enqueue(qmgr::v1::NewMessage message) {
    return EnqueueAsync(std::move(message)).get();
  }
  // Waits for every answer, then ends the stream. An error when the stream
  // ended badly (the server went away): answers may be missing.
  absl::Status Close();

 private:
  friend class Client;
  // `context`: its token set.
  Producer(std::unique_ptr<grpc::ClientContext> context, qmgr::v1::QueueManager::Stub* stub,
           int window);
  void ReadLoop();
  bool HasRoom() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t window_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<
      grpc::ClientReaderWriter<qmgr::v1::EnqueueRequest, qmgr::v1::EnqueueStreamResponse>>
      stream_;
  absl::Mutex write_mu_;  // one Write (or WritesDone) at a time
  mutable absl::Mutex mu_;
  std::deque<std::promise<absl::StatusOr<Enqueued>>> pending_ ABSL_GUARDED_BY(mu_);
  absl::Status broken_ ABSL_GUARDED_BY(mu_);    // set once the stream failed
  absl::Status finished_ ABSL_GUARDED_BY(mu_);  // what the stream ended with
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::thread reader_;
};

class UnitOfWork;

// One ProgramStream: the units of work of one program thread. Not
// thread-safe (a program's operations are a sequence). Units still open when
// the stream ends (Close, destruction, a crash) are backed out by the server.
class Program {
 public:
  ~Program();  // Close()s
  Program(const Program&) = delete;
  Program& operator=(const Program&) = delete;

  // A unit of work; it opens at its first Get or Insert.
  UnitOfWork Begin();
  // Ends the stream; an error when it had broken (its open units were
  // backed out).
  absl::Status Close();

 private:
  friend class Client;
  friend class UnitOfWork;
  Program(std::unique_ptr<grpc::ClientContext> context, qmgr::v1::QueueManager::Stub* stub);
  // One operation: the answer, or its refusal as a status.
  absl::StatusOr<qmgr::v1::ProgramResponse> Call(const qmgr::v1::ProgramRequest& request);

  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<qmgr::v1::ProgramRequest, qmgr::v1::ProgramResponse>>
      stream_;
  absl::Status broken_;
  bool closed_ = false;
};

// A unit of work on a Program's stream (DESIGN.md, "Units of work"). Backs
// out in its destructor unless committed or backed out. After Commit or
// Backout the object stands for a fresh unit, opened by the next Get or
// Insert. REQUIRES: the Program outlives it.
class UnitOfWork {
 public:
  UnitOfWork(UnitOfWork&& other) noexcept;
  UnitOfWork& operator=(UnitOfWork&&) = delete;
  ~UnitOfWork();

  // Takes the next message of `queue` into this unit, waiting up to `wait`
  // (bounded by the server's --get-wait-max-ms); nullopt if none came.
  absl::StatusOr<std::optional<qmgr::v1::Message>> Get(const std::string& queue,
                                                       absl::Duration wait);
  // Up to `max_messages` (at most 1000) messages into this unit, in queue
  // order: waits up to `wait` for the first only, then takes those there at
  // once (fewer at the unit's limits); empty if none came.
  absl::StatusOr<std::vector<qmgr::v1::Message>> GetMany(const std::string& queue,
                                                         uint32_t max_messages,
                                                         absl::Duration wait);
  // Buffers a message; it becomes visible at Commit.
  absl::Status Insert(qmgr::v1::NewMessage message);
  absl::StatusOr<qmgr::v1::SyncPointResponse> Commit();
  absl::Status Backout();
  // IMS single mode in one round trip: commits this unit and takes the next
  // message into a fresh one that this object then stands for. On an error
  // other than "no message", this unit is still open and uncommitted.
  absl::StatusOr<std::optional<qmgr::v1::Message>> CommitAndGet(const std::string& queue,
                                                                absl::Duration wait);
  // CommitAndGet of up to `max_messages`, as GetMany takes them.
  absl::StatusOr<std::vector<qmgr::v1::Message>> CommitAndGetMany(const std::string& queue,
                                                                  uint32_t max_messages,
                                                                  absl::Duration wait);
  // The server's id of the unit; 0 while it holds nothing.
  uint64_t id() const { return uow_; }

 private:
  friend class Program;
  explicit UnitOfWork(Program* program) : program_(program) {}
  absl::StatusOr<std::vector<qmgr::v1::Message>> DoGet(const std::string& queue,
                                                       uint32_t max_messages, absl::Duration wait,
                                                       bool commit);

  Program* program_;
  uint64_t uow_ = 0;
};

}  // namespace qmgr::client

#endif  // QMGR_CLIENT_CLIENT_H_
