#include "client/client.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/rpc_status.h"
#include "qmgr/status.h"

namespace qmgr::client {
namespace {

namespace v1 = qmgr::v1;
using qmgr::rpc::FromGrpcStatus;
using qmgr::rpc::FromRpcStatus;

// Failures after which the request may or may not have been carried out.
bool InTransit(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status);
}

bool HasSession(const v1::NewMessage& message) {
  return !message.session().empty() && message.input_seq() != 0;
}

Enqueued FromResponse(const v1::EnqueueResponse& response) {
  Enqueued e;
  e.message_id = response.message_id();
  e.lsn = response.lsn();
  e.durable = response.durability() == v1::DURABLE;
  return e;
}

absl::Status Broken(absl::string_view what, const absl::Status& cause) {
  return absl::Status(cause.code(), absl::StrCat(what, " ended: ", cause.message()));
}

}  // namespace

// ---- Client ----------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_receive_bytes);
  absl::StatusOr<std::shared_ptr<grpc::Channel>> made =
      NewChannel(options.target, options.credentials, args);
  if (!made.ok()) return made.status();
  std::shared_ptr<grpc::Channel> channel = *std::move(made);
  if (!channel->WaitForConnected(absl::ToChronoTime(absl::Now() + options.connect_timeout))) {
    return absl::UnavailableError(absl::StrCat("cannot connect to the queue manager at ",
                                               options.target, " within ",
                                               absl::FormatDuration(options.connect_timeout)));
  }
  return std::unique_ptr<Client>(new Client(options, std::move(channel)));
}

Client::Client(ClientOptions options, std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      queue_manager_(v1::QueueManager::NewStub(channel_)),
      admin_(v1::Admin::NewStub(channel_)) {}

std::unique_ptr<grpc::ClientContext> Client::NewContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + options_.call_timeout));
  AddCallCredentials(options_.credentials, context.get());
  return context;
}

std::unique_ptr<grpc::ClientContext> Client::StreamContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  AddCallCredentials(options_.credentials, context.get());
  return context;
}

template <typename Call>
absl::Status Client::Attempt(bool retryable, Call call) {
  absl::Duration pause = options_.retry_backoff;
  for (int attempt = 1;; ++attempt) {
    std::unique_ptr<grpc::ClientContext> context = NewContext();
    absl::Status status = FromGrpcStatus(call(context.get()));
    if (status.ok() || !retryable || !InTransit(status) || attempt >= options_.max_attempts) {
      return status;
    }
    absl::SleepFor(pause);
    pause *= 2;
  }
}

absl::StatusOr<Enqueued> Client::Enqueue(const v1::NewMessage& message, Retry retry) {
  v1::EnqueueRequest request;
  *request.mutable_message() = message;
  v1::EnqueueResponse response;
  bool retried = false;
  bool landed = false;
  const absl::Status status =
      Attempt(retry == Retry::kMayDuplicate || HasSession(message), [&](grpc::ClientContext* c) {
        const bool first = !std::exchange(retried, true);
        grpc::Status s = queue_manager_->Enqueue(c, request, &response);
        // Only a retry can meet its own first attempt.
        if (!first && qmgr::ReasonOf(FromGrpcStatus(s)) == reason::kAlreadyHardened) {
          landed = true;
          return grpc::Status::OK;
        }
        return s;
      });
  if (!status.ok()) return status;
  // A deferred input that landed is held until its sync point, not durable.
  const bool deferred = message.class_() == v1::RESPONSE ||
                        message.class_() == v1::CONVERSATIONAL || message.class_() == v1::FASTPATH;
  if (landed) return Enqueued{.durable = !deferred, .first_attempt_landed = true};
  return FromResponse(response);
}

absl::StatusOr<std::vector<Enqueued>> Client::EnqueueBatch(
    absl::Span<const v1::NewMessage> messages, Retry retry) {
  v1::EnqueueBatchRequest request;
  bool all_sessions = true;
  for (const v1::NewMessage& m : messages) {
    *request.add_messages() = m;
    all_sessions = all_sessions && HasSession(m);
  }
  v1::EnqueueBatchResponse response;
  // A retried batch that was queued the first time is refused whole
  // (ALREADY_HARDENED); that is reported as an error, since its ids are lost.
  const absl::Status status = Attempt(
      retry == Retry::kMayDuplicate || (all_sessions && !messages.empty()),
      [&](grpc::ClientContext* c) { return queue_manager_->EnqueueBatch(c, request, &response); });
  if (!status.ok()) return status;
  std::vector<Enqueued> results;
  results.reserve(response.results_size());
  for (const v1::EnqueueResponse& r : response.results()) results.push_back(FromResponse(r));
  return results;
}

absl::Status Client::DefineQueue(const std::string& queue, const v1::QueueAttributes& attributes) {
  v1::DefineQueueRequest request;
  request.set_queue(queue);
  *request.mutable_attributes() = attributes;
  v1::DefineQueueResponse response;
  // A retry after the first attempt defined it answers ALREADY_EXISTS.
  return Attempt(
      true, [&](grpc::ClientContext* c) { return admin_->DefineQueue(c, request, &response); });
}

absl::Status Client::AlterQueue(const std::string& queue, const v1::QueueAttributes& attributes) {
  v1::AlterQueueRequest request;
  request.set_queue(queue);
  *request.mutable_attributes() = attributes;
  v1::AlterQueueResponse response;
  return Attempt(true,
                 [&](grpc::ClientContext* c) { return admin_->AlterQueue(c, request, &response); });
}

absl::Status Client::DeleteQueue(const std::string& queue, bool purge) {
  v1::DeleteQueueRequest request;
  request.set_queue(queue);
  request.set_purge(purge);
  v1::DeleteQueueResponse response;
  return Attempt(
      !purge, [&](grpc::ClientContext* c) { return admin_->DeleteQueue(c, request, &response); });
}

absl::StatusOr<v1::DisplayQueuesResponse> Client::DisplayQueues(
    const std::vector<std::string>& queues) {
  v1::DisplayQueuesRequest request;
  for (const std::string& q : queues) request.add_queues(q);
  v1::DisplayQueuesResponse response;
  absl::Status s = Attempt(
      true, [&](grpc::ClientContext* c) { return admin_->DisplayQueues(c, request, &response); });
  if (!s.ok()) return s;
  return response;
}

absl::StatusOr<v1::BrowseResponse> Client::Browse(const std::string& queue, uint32_t max_messages) {
  v1::BrowseRequest request;
  request.set_queue(queue);
  request.set_max_messages(max_messages);
  v1::BrowseResponse response;
  absl::Status s =
      Attempt(true, [&](grpc::ClientContext* c) { return admin_->Browse(c, request, &response); });
  if (!s.ok()) return s;
  return response;
}

absl::Status Client::Shutdown(v1::ShutdownMode mode) {
  v1::ShutdownRequest request;
  request.set_mode(mode);
  v1::ShutdownResponse response;
  return Attempt(false,
                 [&](grpc::ClientContext* c) { return admin_->Shutdown(c, request, &response); });
}

absl::StatusOr<std::unique_ptr<Producer>> Client::OpenProducer(int window) {
  if (window < 1) return absl::InvalidArgumentError("a producer's window must be at least 1");
  // Streams live as long as the caller wants: no deadline.
  return std::unique_ptr<Producer>(new Producer(StreamContext(), queue_manager_.get(), window));
}

absl::StatusOr<std::unique_ptr<Program>> Client::OpenProgram() {
  return std::unique_ptr<Program>(new Program(StreamContext(), queue_manager_.get()));
}

// ---- Producer --------------------------------------------------------------

Producer::Producer(std::unique_ptr<grpc::ClientContext> context, v1::QueueManager::Stub* stub,
                   int window)
    : window_(window), context_(std::move(context)) {
  stream_ = stub->EnqueueStream(context_.get());
  reader_ = std::thread([this] { ReadLoop(); });
}

Producer::~Producer() { Close().IgnoreError(); }

bool Producer::HasRoom() const { return pending_.size() < window_ || !broken_.ok(); }

std::future<absl::StatusOr<Enqueued>> Producer::EnqueueAsync(v1::NewMessage message) {
  v1::EnqueueRequest request;
  *request.mutable_message() = std::move(message);
  // Held from queuing the promise to writing the request, so that requests
  // go out in the order of the promises the reader fulfils.
  absl::MutexLock write_lock(&write_mu_);
  std::future<absl::StatusOr<Enqueued>> answer;
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &Producer::HasRoom));
    if (!broken_.ok() || closed_) {
      std::promise<absl::StatusOr<Enqueued>> failed;
      failed.set_value(closed_ && broken_.ok()
                           ? absl::FailedPreconditionError("the producer is closed")
                           : broken_);
      return failed.get_future();
    }
    pending_.emplace_back();
    answer = pending_.back().get_future();
  }
  // A failed write shows up as a failed read: the reader fails what is pending.
  stream_->Write(request);
  return answer;
}

void Producer::ReadLoop() {
  v1::EnqueueStreamResponse response;
  while (stream_->Read(&response)) {
    absl::StatusOr<Enqueued> result =
        response.has_enqueued() ? absl::StatusOr<Enqueued>(FromResponse(response.enqueued()))
                                : absl::StatusOr<Enqueued>(FromRpcStatus(response.error()));
    std::promise<absl::StatusOr<Enqueued>> promise;
    {
      absl::MutexLock lock(&mu_);
      if (pending_.empty()) break;  // an answer to nothing: the server broke the protocol
      promise = std::move(pending_.front());
      pending_.pop_front();
    }
    promise.set_value(std::move(result));
  }
  absl::Status status = FromGrpcStatus(stream_->Finish());
  absl::MutexLock lock(&mu_);
  finished_ = status;
  broken_ = Broken("the enqueue stream", status.ok() ? absl::UnavailableError("closed") : status);
  for (auto& promise : pending_) promise.set_value(broken_);
  pending_.clear();
}

absl::Status Producer::Close() {
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::OkStatus();
    closed_ = true;
  }
  {
    absl::MutexLock write_lock(&write_mu_);
    stream_->WritesDone();
  }
  if (reader_.joinable()) reader_.join();
  absl::MutexLock lock(&mu_);
  return finished_.ok() ? absl::OkStatus() : broken_;
}

// ---- Program ---------------------------------------------------------------

Program::Program(std::unique_ptr<grpc::ClientContext> context, v1::QueueManager::Stub* stub)
    : context_(std::move(context)), stream_(stub->ProgramStream(context_.get())) {}

Program::~Program() { Close().IgnoreError(); }

UnitOfWork Program::Begin() { return UnitOfWork(this); }

absl::StatusOr<v1::ProgramResponse> Program::Call(const v1::ProgramRequest& request) {
  if (closed_) return absl::FailedPreconditionError("the program's stream is closed");
  if (!broken_.ok()) return broken_;
  v1::ProgramResponse response;
  if (!stream_->Write(request) || !stream_->Read(&response)) {
    absl::Status status = FromGrpcStatus(stream_->Finish());
    broken_ = Broken("the program stream (its open units were backed out)",
                     status.ok() ? absl::UnavailableError("closed by the server") : status);
    return broken_;
  }
  if (response.has_error()) return FromRpcStatus(response.error());
  return response;
}

absl::Status Program::Close() {
  if (closed_) return absl::OkStatus();
  closed_ = true;
  if (!broken_.ok()) return broken_;  // Finish was already called
  stream_->WritesDone();
  return FromGrpcStatus(stream_->Finish());
}

// ---- UnitOfWork --------------------------------------------------------------

UnitOfWork::UnitOfWork(UnitOfWork&& other) noexcept
    : program_(other.program_), uow_(std::exchange(other.uow_, 0)) {}

UnitOfWork::~UnitOfWork() {
  // If the stream is gone the server has backed the unit out already.
  if (uow_ != 0) Backout().IgnoreError();
}

absl::StatusOr<std::vector<v1::Message>> UnitOfWork::DoGet(const std::string& queue,
                                                           uint32_t max_messages,
                                                           absl::Duration wait, bool commit) {
  v1::ProgramRequest request;
  v1::GetRequest* get = request.mutable_get();
  get->set_uow(uow_);
  get->set_queue(queue);
  get->set_wait_ms(
      static_cast<uint32_t>(std::clamp<int64_t>(absl::ToInt64Milliseconds(wait), 0, UINT32_MAX)));
  get->set_commit_previous(commit);
  get->set_max_messages(max_messages);
  absl::StatusOr<v1::ProgramResponse> response = program_->Call(request);
  if (!response.ok()) return response.status();
  v1::GetResponse& answer = *response->mutable_get();
  uow_ = answer.uow();
  std::vector<v1::Message> messages;
  if (!answer.has_message()) return messages;
  messages.reserve(1 + answer.more_size());
  messages.push_back(std::move(*answer.mutable_message()));
  for (v1::Message& more : *answer.mutable_more()) messages.push_back(std::move(more));
  return messages;
}

namespace {
std::optional<v1::Message> First(std::vector<v1::Message> messages) {
  if (messages.empty()) return std::nullopt;
  return std::move(messages.front());
}
}  // namespace

absl::StatusOr<std::optional<v1::Message>> UnitOfWork::Get(const std::string& queue,
                                                           absl::Duration wait) {
  absl::StatusOr<std::vector<v1::Message>> got = DoGet(queue, 1, wait, false);
  if (!got.ok()) return got.status();
  return First(*std::move(got));
}

absl::StatusOr<std::optional<v1::Message>> UnitOfWork::CommitAndGet(const std::string& queue,
                                                                    absl::Duration wait) {
  absl::StatusOr<std::vector<v1::Message>> got = DoGet(queue, 1, wait, uow_ != 0);
  if (!got.ok()) return got.status();
  return First(*std::move(got));
}

absl::StatusOr<std::vector<v1::Message>> UnitOfWork::GetMany(const std::string& queue,
                                                             uint32_t max_messages,
                                                             absl::Duration wait) {
  return DoGet(queue, max_messages, wait, false);
}

absl::StatusOr<std::vector<v1::Message>> UnitOfWork::CommitAndGetMany(const std::string& queue,
                                                                      uint32_t max_messages,
                                                                      absl::Duration wait) {
  return DoGet(queue, max_messages, wait, uow_ != 0);
}

absl::Status UnitOfWork::Insert(v1::NewMessage message) {
  v1::ProgramRequest request;
  request.mutable_insert()->set_uow(uow_);
  *request.mutable_insert()->mutable_message() = std::move(message);
  absl::StatusOr<v1::ProgramResponse> response = program_->Call(request);
  if (!response.ok()) return response.status();
  uow_ = response->insert().uow();
  return absl::OkStatus();
}

absl::StatusOr<v1::SyncPointResponse> UnitOfWork::Commit() {
  if (uow_ == 0) return v1::SyncPointResponse();  // nothing taken or inserted
  v1::ProgramRequest request;
  request.mutable_sync_point()->set_uow(uow_);
  absl::StatusOr<v1::ProgramResponse> response = program_->Call(request);
  // Whatever the outcome, the server no longer holds the unit open, except
  // when it refused because a Get of it still waits, which this sequential
  // stream cannot produce.
  uow_ = 0;
  if (!response.ok()) return response.status();
  return response->sync_point();
}

absl::Status UnitOfWork::Backout() {
  if (uow_ == 0) return absl::OkStatus();
  v1::ProgramRequest request;
  request.mutable_backout()->set_uow(std::exchange(uow_, 0));
  absl::StatusOr<v1::ProgramResponse> response = program_->Call(request);
  return response.status();
}

}  // namespace qmgr::client
