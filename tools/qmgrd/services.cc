#include "tools/qmgrd/services.h"

#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/rpc_status.h"
#include "qmgr/status.h"
#include "tools/qmgrd/unary_call.h"

namespace qmgr::server {
namespace {

using qmgr::rpc::ToGrpcStatus;
using qmgr::rpc::ToRpcStatus;
namespace v1 = qmgr::v1;

// A refusal answered inside a stream (calls' own statuses are recorded by
// the interceptor: refusals.h).
void RecordRefusal(const ServiceContext* c, absl::string_view rpc, const absl::Status& status) {
  if (c->refusals != nullptr) c->refusals->Record(rpc, status);
}

absl::Status PoolFull() { return qmgr::rpc::FromGrpcStatus(kPoolFull); }

absl::Status AllowRole(const ServiceContext* c, absl::string_view identity, absl::string_view rpc,
                       Role role, absl::string_view name) {
  if (c->security == nullptr) return absl::OkStatus();
  return c->security->Authorize(identity, rpc, role, name);
}

absl::Status AllowAnyOf(const ServiceContext* c, absl::string_view identity, absl::string_view rpc,
                        Role role) {
  if (c->security == nullptr) return absl::OkStatus();
  return c->security->AuthorizeAny(identity, rpc, role);
}

// A message put by a producer or a program: `role` for its queue; session
// input also needs the session (AllowSession).
absl::Status AllowMessage(const ServiceContext* c, absl::string_view identity,
                          absl::string_view rpc, Role role, const v1::NewMessage& message) {
  if (absl::Status s = AllowRole(c, identity, rpc, role, message.queue()); !s.ok()) return s;
  if (message.session().empty()) return absl::OkStatus();
  return AllowSession(c, identity, rpc, message.session());
}

// Admit for the main listener, then `check` of the identity.
template <typename Check>
absl::StatusOr<std::string> AdmitAnd(const ServiceContext* c, const grpc::ServerContextBase& ctx,
                                     absl::string_view rpc, Check check) {
  absl::StatusOr<std::string> who = Admit(c, ctx, Listener::kMain, rpc);
  if (!who.ok()) return who;
  if (absl::Status s = check(*who); !s.ok()) return s;
  return who;
}

absl::Time CallDeadline(const grpc::CallbackServerContext* ctx) {
  const std::chrono::system_clock::time_point deadline = ctx->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(deadline);
}

// The first step of a Get, on the calling (gRPC) thread: the same Get
// without waiting for a message, so that a Get that finds one costs no
// hand-off to a pool. True when that answers the call (a message, an error,
// or a caller that would not wait); else *rest is the Get still to run on the
// wait pool: in the unit the first step left, the previous unit (if asked)
// already committed. Either way *durable_lsn is what the answer waits for.
bool GetWithoutWaiting(Operations* ops, const v1::GetRequest& request, Owner owner,
                       absl::string_view identity, absl::Time call_deadline,
                       absl::StatusOr<v1::GetResponse>* answer, log::Lsn* durable_lsn,
                       v1::GetRequest* rest) {
  v1::GetRequest now = request;
  now.set_wait_ms(0);
  *answer = ops->Get(
      now, owner, call_deadline, [] { return false; }, identity, durable_lsn);
  if (!answer->ok() || (*answer)->has_message() || request.wait_ms() == 0) return true;
  *rest = request;
  rest->set_uow((*answer)->uow());
  rest->set_commit_previous(false);
  return false;
}

// A Get whose first step found no message, refused because the wait pool is
// full; a previous unit that first step committed is reported committed, as
// after any Get error that follows its commit.
absl::Status WaitPoolFull(const v1::GetRequest& request) {
  absl::Status full = absl::ResourceExhaustedError(kPoolFull.error_message());
  if (request.commit_previous() && request.uow() != 0) {
    return WithPreviousUnitCommitted(full, request.uow());
  }
  return full;
}

// EnqueueStream: reads ahead up to stream_window requests and answers them
// in request order. The requests read and not yet running are taken by a
// runner on the io pool as one group (Operations::EnqueueGroup: one record,
// one durability wait, per-message answers), one runner per stream: while it
// waits for its fsync, the next group forms. Two runners overlapped their
// waits but could append group B before group A, out of stream order (a
// session's next input then failed SEQUENCE_GAP); overlapping needs the
// engine to append and wait in separate calls. Flow control:
// once the window is full the reactor stops reading, and HTTP/2 flow control
// holds the client back.
//
// gRPC's Start* calls are made outside mu_: decisions are taken under it
// (the flags make each Start* happen once at a time), actions after it.
// Lifetime: gRPC holds one reference until OnDone, each runner another.
class EnqueueStreamReactor final
    : public grpc::ServerBidiReactor<v1::EnqueueRequest, v1::EnqueueStreamResponse> {
 public:
  EnqueueStreamReactor(const ServiceContext* c, grpc::CallbackServerContext* ctx) : c_(c) {
    absl::StatusOr<std::string> who = Admit(c, *ctx, Listener::kMain, "EnqueueStream");
    if (!who.ok()) {
      Finish(ToGrpcStatus(who.status()));
      return;
    }
    identity_ = *std::move(who);
    {
      absl::MutexLock lock(&mu_);
      reading_ = true;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    // Each message is checked alone: a refused one is answered with its
    // error, and the stream goes on.
    const absl::Status allowed =
        ok ? AllowMessage(c_, identity_, "EnqueueStream", Role::kProducer, request_.message())
           : absl::OkStatus();
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      reading_ = false;
      if (!ok) {
        read_closed_ = true;
      } else if (!allowed.ok()) {
        ++in_flight_;
        v1::EnqueueStreamResponse refused;
        *refused.mutable_error() = ToRpcStatus(allowed);
        CompleteLocked(next_seq_++, std::move(refused));
      } else {
        ++in_flight_;
        waiting_bytes_ += request_.message().payload().size();
        waiting_.emplace_back(next_seq_++, std::move(*request_.mutable_message()));
        if (runners_ < kRunnersMax) {
          ++runners_;
          Ref();
          if (!c_->io_pool->Submit([this] { RunGroups(); })) {
            --runners_;
            Unref();
            if (runners_ == 0) RefuseWaitingLocked();
          }
        }
      }
      actions = NextActionsLocked();
    }
    Act(actions);
  }

  void OnWriteDone(bool ok) override {
    Actions actions;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      --in_flight_;
      ++next_write_seq_;
      if (!ok) {
        // The client is gone: answers still coming are dropped, and what no
        // runner has taken yet is not enqueued (nobody would hear of it).
        broken_ = true;
        in_flight_ -= done_.size() + waiting_.size();
        done_.clear();
        waiting_.clear();
        waiting_bytes_ = 0;
      }
      actions = NextActionsLocked();
    }
    Act(actions);
  }

  void OnDone() override { Unref(); }

 private:
  static constexpr int kRunnersMax = 1;

  struct Actions {
    bool read = false;
    bool write = false;
    bool finish = false;
  };

  // A runner: takes the waiting requests as groups until none is left.
  void RunGroups() {
    while (true) {
      std::vector<uint64_t> seqs;
      std::vector<v1::NewMessage> group;
      {
        absl::MutexLock lock(&mu_);
        uint64_t bytes = 0;
        while (!waiting_.empty() && static_cast<int>(group.size()) < c_->group_messages_max &&
               (group.empty() ||
                bytes + waiting_.front().second.payload().size() <= c_->group_bytes_max)) {
          bytes += waiting_.front().second.payload().size();
          waiting_bytes_ -= waiting_.front().second.payload().size();
          seqs.push_back(waiting_.front().first);
          group.push_back(std::move(waiting_.front().second));
          waiting_.pop_front();
        }
        if (group.empty()) {
          --runners_;
          break;
        }
      }
      std::vector<absl::StatusOr<v1::EnqueueResponse>> results =
          c_->operations->EnqueueGroup(std::move(group));
      Actions actions;
      {
        absl::MutexLock lock(&mu_);
        for (size_t i = 0; i < seqs.size(); ++i) {
          v1::EnqueueStreamResponse response;
          if (results[i].ok()) {
            *response.mutable_enqueued() = *std::move(results[i]);
          } else {
            RecordRefusal(c_, "QueueManager.EnqueueStream", results[i].status());
            *response.mutable_error() = ToRpcStatus(results[i].status());
          }
          CompleteLocked(seqs[i], std::move(response));
        }
        actions = NextActionsLocked();
      }
      Act(actions);
    }
    Unref();
  }

  // No runner could be queued: the waiting requests are refused.
  void RefuseWaitingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (auto& [seq, message] : waiting_) {
      RecordRefusal(c_, "QueueManager.EnqueueStream", PoolFull());
      v1::EnqueueStreamResponse refused;
      refused.mutable_error()->set_code(kPoolFull.error_code());
      refused.mutable_error()->set_message(kPoolFull.error_message());
      CompleteLocked(seq, std::move(refused));
    }
    waiting_.clear();
    waiting_bytes_ = 0;
  }

  void CompleteLocked(uint64_t seq, v1::EnqueueStreamResponse response)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (broken_) {
      --in_flight_;
    } else {
      done_[seq] = std::move(response);
    }
  }

  Actions NextActionsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Actions a;
    if (!writing_ && !broken_) {
      auto next = done_.find(next_write_seq_);
      if (next != done_.end()) {
        response_ = std::move(next->second);
        done_.erase(next);
        writing_ = a.write = true;
      }
    }
    if (!reading_ && !read_closed_ && !broken_ && in_flight_ < c_->stream_window &&
        waiting_bytes_ < c_->stream_window_bytes) {
      reading_ = a.read = true;
    }
    if ((read_closed_ || broken_) && !reading_ && !writing_ && in_flight_ == 0 && !finished_) {
      finished_ = a.finish = true;
    }
    return a;
  }

  void Act(const Actions& a) {
    if (a.write) StartWrite(&response_);
    if (a.read) StartRead(&request_);
    if (a.finish) Finish(grpc::Status::OK);
  }

  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  const ServiceContext* const c_;
  std::string identity_;      // the caller's, set before the first read
  std::atomic<int> refs_{1};  // gRPC's, released at OnDone
  absl::Mutex mu_;
  v1::EnqueueRequest request_;          // the read in progress
  v1::EnqueueStreamResponse response_;  // the write in progress
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_closed_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;  // a write failed
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  int runners_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_write_seq_ ABSL_GUARDED_BY(mu_) = 0;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // read, answer not yet written
  // Read, not yet taken by a runner, by seq.
  std::deque<std::pair<uint64_t, v1::NewMessage>> waiting_ ABSL_GUARDED_BY(mu_);
  uint64_t waiting_bytes_ ABSL_GUARDED_BY(mu_) = 0;                          // their payloads
  std::map<uint64_t, v1::EnqueueStreamResponse> done_ ABSL_GUARDED_BY(mu_);  // by seq
};

// ProgramStream: one operation at a time (read, run, write, read...), so
// answers are in order and a unit is never ended under its own waiting Get.
// The stream owns the units it opens; when the stream ends, however it ends,
// they are backed out with BACKOUT_CALLER_GONE.
class ProgramStreamReactor final
    : public grpc::ServerBidiReactor<v1::ProgramRequest, v1::ProgramResponse> {
 public:
  ProgramStreamReactor(const ServiceContext* c, grpc::CallbackServerContext* ctx)
      : c_(c), ctx_(ctx), owner_(c->operations->NewStreamOwner()) {
    absl::StatusOr<std::string> who = Admit(c, *ctx, Listener::kMain, "ProgramStream");
    if (!who.ok()) {
      Finish(ToGrpcStatus(who.status()));
      return;
    }
    identity_ = *std::move(who);
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      End();  // the client closed its side, or is gone
      return;
    }
    first_lsn_ = log::kNoLsn;
    if (request_.has_get()) {
      // A Get first without waiting for a message, here (GetWithoutWaiting).
      absl::Status allowed =
          AllowRole(c_, identity_, "ProgramStream", Role::kProgram, request_.get().queue());
      if (!allowed.ok()) {
        response_.Clear();
        WriteWhenDurable(log::kNoLsn, std::move(allowed));
        return;
      }
      absl::StatusOr<v1::GetResponse> first;
      v1::GetRequest rest;
      if (GetWithoutWaiting(c_->operations, request_.get(), owner_, identity_, CallDeadline(ctx_),
                            &first, &first_lsn_, &rest)) {
        response_.Clear();
        WriteWhenDurable(first_lsn_, Fill(std::move(first), response_.mutable_get()));
        return;
      }
      const absl::Status full = WaitPoolFull(request_.get());
      *request_.mutable_get() = std::move(rest);
      if (!c_->wait_pool->Submit([this] { Run(); })) {
        response_.Clear();
        WriteWhenDurable(first_lsn_, full);
      }
      return;
    }
    // Insert, SyncPoint and Backout append to the log, and an append can wait
    // for the log to preallocate its next segment: on the pool.
    if (!c_->io_pool->Submit([this] { Run(); })) {
      RecordRefusal(c_, "QueueManager.ProgramStream", PoolFull());
      response_.Clear();
      response_.mutable_error()->set_code(kPoolFull.error_code());
      response_.mutable_error()->set_message(kPoolFull.error_message());
      StartWrite(&response_);
    }
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      End();
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  // Runs request_ into response_ and writes it once durable; touches
  // nothing after.
  void Run() {
    Operations* ops = c_->operations;
    absl::Status status;
    log::Lsn durable_lsn = log::kNoLsn;
    response_.Clear();
    constexpr absl::string_view kRpc = "ProgramStream";
    switch (request_.op_case()) {
      case v1::ProgramRequest::kGet:
        status = Fill(ops->Get(
                          request_.get(), owner_, CallDeadline(ctx_),
                          [this] { return ctx_->IsCancelled(); }, identity_, &durable_lsn),
                      response_.mutable_get());
        break;
      case v1::ProgramRequest::kInsert:
        status = AllowMessage(c_, identity_, kRpc, Role::kProgram, request_.insert().message());
        if (status.ok()) {
          status =
              Fill(ops->Insert(request_.insert(), owner_, identity_), response_.mutable_insert());
        }
        break;
      case v1::ProgramRequest::kSyncPoint:
        status = AllowAnyOf(c_, identity_, kRpc, Role::kProgram);
        if (status.ok()) {
          status = Fill(ops->SyncPoint(request_.sync_point(), owner_, identity_),
                        response_.mutable_sync_point());
        }
        break;
      case v1::ProgramRequest::kBackout:
        status = AllowAnyOf(c_, identity_, kRpc, Role::kProgram);
        if (status.ok()) {
          status = Fill(ops->Backout(request_.backout(), owner_, identity_),
                        response_.mutable_backout());
        }
        break;
      case v1::ProgramRequest::OP_NOT_SET:
        status = absl::InvalidArgumentError("ProgramRequest names no operation");
        break;
    }
    WriteWhenDurable(LaterLsn(first_lsn_, durable_lsn), std::move(status));
  }

  // Writes response_ (or `status` when not OK) once `lsn` is durable.
  void WriteWhenDurable(log::Lsn lsn, absl::Status status) {
    if (!status.ok()) RecordRefusal(c_, "QueueManager.ProgramStream", status);
    c_->completions->After(lsn, [this, status = std::move(status)](absl::Status durable) {
      if (!durable.ok()) {
        response_.Clear();
        *response_.mutable_error() = ToRpcStatus(durable);
      } else if (!status.ok()) {
        response_.Clear();
        *response_.mutable_error() = ToRpcStatus(status);
      }
      StartWrite(&response_);
    });
  }

  void End() {
    // No operation is running: reads and writes alternate with them.
    c_->operations->ReleaseOwner(owner_, v1::BACKOUT_CALLER_GONE);
    Finish(grpc::Status::OK);
  }

  const ServiceContext* const c_;
  grpc::CallbackServerContext* const ctx_;
  const Owner owner_;
  std::string identity_;  // the caller's, set before the first read
  v1::ProgramRequest request_;
  v1::ProgramResponse response_;
  // What the current Get's first step (GetWithoutWaiting) waits for.
  log::Lsn first_lsn_ = log::kNoLsn;
};

// Receive: the session's outputs, written one at a time. Each wait for
// output is one slice (receive_wait_slice) on the wait pool, a task of its
// own, so that streams waiting for output share the pool's threads and a
// cancelled stream or a shutdown ends within a slice. Slices and writes
// alternate, never overlap: whoever ends the current one starts the next or
// finishes. The engine's cursor keeps an output written here from being
// written again while it waits for its acknowledgement (exception-response
// output needs none); a rebind, Clear or CloseSession ends the stream
// ABORTED, a resync FAILED_PRECONDITION, a shutdown UNAVAILABLE.
class ReceiveReactor final : public grpc::ServerWriteReactor<v1::ReceiveResponse> {
 public:
  ReceiveReactor(const ServiceContext* c, grpc::CallbackServerContext* ctx,
                 const v1::ReceiveRequest* request)
      : c_(c), ctx_(ctx), request_(*request) {
    absl::StatusOr<std::string> who = Admit(c, *ctx, Listener::kMain, "Receive");
    absl::Status allowed =
        who.ok() ? AllowSession(c, *who, "Receive", request_.session()) : who.status();
    if (!allowed.ok()) {
      Finish(ToGrpcStatus(allowed));
      return;
    }
    NextSlice();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      // The client is gone; its output stays outstanding until a resync.
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the Receive stream broke"));
      return;
    }
    NextSlice();
  }

  void OnDone() override { delete this; }

 private:
  void NextSlice() {
    if (!c_->wait_pool->Submit([this] { Slice(); })) {
      Finish(c_->operations->intake_stopped()
                 ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "the queue manager is shutting down")
                 : kPoolFull);
    }
  }

  void Slice() {
    if (ctx_->IsCancelled()) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled its Receive"));
      return;
    }
    absl::StatusOr<std::optional<v1::ReceiveResponse>> output =
        c_->operations->Receive(request_, c_->receive_wait_slice, &cursor_);
    if (!output.ok()) {
      Finish(ToGrpcStatus(output.status()));
    } else if (!output->has_value()) {
      NextSlice();
    } else {
      response_ = **std::move(output);
      StartWrite(&response_);
    }
  }

  const ServiceContext* const c_;
  grpc::CallbackServerContext* const ctx_;
  const v1::ReceiveRequest request_;
  ReceiveCursor cursor_;          // touched only by the slice running
  v1::ReceiveResponse response_;  // the write in progress
};

}  // namespace

// ---- Admission -----------------------------------------------------------------

absl::StatusOr<std::string> Admit(const ServiceContext* c, const grpc::ServerContextBase& ctx,
                                  Listener listener, absl::string_view rpc) {
  if (c->security == nullptr) return std::string();
  return c->security->Authenticate(ctx, listener, rpc);
}

absl::Status AllowSession(const ServiceContext* c, absl::string_view identity,
                          absl::string_view rpc, const std::string& session) {
  if (absl::Status s = AllowRole(c, identity, rpc, Role::kTerminal, session); !s.ok()) return s;
  absl::Status bound = c->operations->CheckSessionClient(session, identity);
  if (!bound.ok() && c->security != nullptr) return c->security->Logged(identity, rpc, bound);
  return bound;
}

// ---- QueueManager ----------------------------------------------------------

grpc::ServerUnaryReactor* QueueManagerService::Enqueue(grpc::CallbackServerContext* ctx,
                                                       const v1::EnqueueRequest* request,
                                                       v1::EnqueueResponse* response) {
  absl::StatusOr<std::string> who = AdmitAnd(c_, *ctx, "Enqueue", [&](const std::string& id) {
    return AllowMessage(c_, id, "Enqueue", Role::kProducer, request->message());
  });
  if (!who.ok()) return Refuse(ctx, who.status());
  if (!request->message().session().empty()) {
    // A session's input may be refused after waiting for the durability of
    // its earlier copy: on the pool.
    return OnPoolThenDurable(
        c_->io_pool, c_->completions, ctx, [this, request, response](log::Lsn* durable_lsn) {
          return Fill(c_->operations->Enqueue(request->message(), durable_lsn), response);
        });
  }
  // Queuing waits for nothing but the latch (docs/server.md, "Threads"):
  // here, on gRPC's thread; the answer once durable.
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  log::Lsn durable_lsn = log::kNoLsn;
  absl::Status status = Fill(c_->operations->Enqueue(request->message(), &durable_lsn), response);
  FinishWhenDurable(c_->completions, reactor, durable_lsn, std::move(status));
  return reactor;
}

grpc::ServerUnaryReactor* QueueManagerService::EnqueueBatch(grpc::CallbackServerContext* ctx,
                                                            const v1::EnqueueBatchRequest* request,
                                                            v1::EnqueueBatchResponse* response) {
  absl::StatusOr<std::string> who = AdmitAnd(c_, *ctx, "EnqueueBatch", [&](const std::string& id) {
    for (const v1::NewMessage& message : request->messages()) {
      absl::Status s = AllowMessage(c_, id, "EnqueueBatch", Role::kProducer, message);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  });
  if (!who.ok()) return Refuse(ctx, who.status());
  return OnPool(c_->io_pool, ctx, [this, request, response] {
    return Fill(c_->operations->EnqueueBatch(*request), response);
  });
}

grpc::ServerBidiReactor<v1::EnqueueRequest, v1::EnqueueStreamResponse>*
QueueManagerService::EnqueueStream(grpc::CallbackServerContext* ctx) {
  return new EnqueueStreamReactor(c_, ctx);
}

grpc::ServerUnaryReactor* QueueManagerService::Get(grpc::CallbackServerContext* ctx,
                                                   const v1::GetRequest* request,
                                                   v1::GetResponse* response) {
  absl::StatusOr<std::string> who = AdmitAnd(c_, *ctx, "Get", [&](const std::string& id) {
    return AllowRole(c_, id, "Get", Role::kProgram, request->queue());
  });
  if (!who.ok()) return Refuse(ctx, who.status());
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<v1::GetResponse> first;
  log::Lsn first_lsn = log::kNoLsn;
  v1::GetRequest rest;
  if (GetWithoutWaiting(c_->operations, *request, kLeaseOwner, *who, CallDeadline(ctx), &first,
                        &first_lsn, &rest)) {
    FinishWhenDurable(c_->completions, reactor, first_lsn, Fill(std::move(first), response));
    return reactor;
  }
  if (!c_->wait_pool->Submit([this, ctx, reactor, response, rest = std::move(rest), first_lsn,
                              id = *std::move(who)] {
        log::Lsn lsn = log::kNoLsn;
        absl::Status status = Fill(c_->operations->Get(
                                       rest, kLeaseOwner, CallDeadline(ctx),
                                       [ctx] { return ctx->IsCancelled(); }, id, &lsn),
                                   response);
        FinishWhenDurable(c_->completions, reactor, LaterLsn(first_lsn, lsn), std::move(status));
      })) {
    FinishWhenDurable(c_->completions, reactor, first_lsn, WaitPoolFull(*request));
  }
  return reactor;
}

grpc::ServerUnaryReactor* QueueManagerService::Insert(grpc::CallbackServerContext* ctx,
                                                      const v1::InsertRequest* request,
                                                      v1::InsertResponse* response) {
  absl::StatusOr<std::string> who = AdmitAnd(c_, *ctx, "Insert", [&](const std::string& id) {
    return AllowMessage(c_, id, "Insert", Role::kProgram, request->message());
  });
  if (!who.ok()) return Refuse(ctx, who.status());
  // On the pool: an Insert may append an ID_RESERVE, which can wait for the
  // log's next segment.
  return OnPool(c_->io_pool, ctx, [this, request, response, id = *std::move(who)] {
    return Fill(c_->operations->Insert(*request, kLeaseOwner, id), response);
  });
}

grpc::ServerUnaryReactor* QueueManagerService::SyncPoint(grpc::CallbackServerContext* ctx,
                                                         const v1::SyncPointRequest* request,
                                                         v1::SyncPointResponse* response) {
  absl::StatusOr<std::string> who = AdmitAnd(c_, *ctx, "SyncPoint", [&](const std::string& id) {
    return AllowAnyOf(c_, id, "SyncPoint", Role::kProgram);
  });
  if (!who.ok()) return Refuse(ctx, who.status());
  return OnPool(c_->io_pool, ctx, [this, request, response, id = *std::move(who)] {
    return Fill(c_->operations->SyncPoint(*request, kLeaseOwner, id), response);
  });
}

grpc::ServerUnaryReactor* QueueManagerService::Backout(grpc::CallbackServerContext* ctx,
                                                       const v1::BackoutRequest* request,
                                                       v1::BackoutResponse* response) {
  absl::StatusOr<std::string> who = AdmitAnd(c_, *ctx, "Backout", [&](const std::string& id) {
    return AllowAnyOf(c_, id, "Backout", Role::kProgram);
  });
  if (!who.ok()) return Refuse(ctx, who.status());
  return OnPool(c_->io_pool, ctx, [this, request, response, id = *std::move(who)] {
    return Fill(c_->operations->Backout(*request, kLeaseOwner, id), response);
  });
}

grpc::ServerBidiReactor<v1::ProgramRequest, v1::ProgramResponse>*
QueueManagerService::ProgramStream(grpc::CallbackServerContext* ctx) {
  return new ProgramStreamReactor(c_, ctx);
}

// ---- Sessions ----------------------------------------------------------------
// OpenSession, STSN, CloseSession and Acknowledge may wait for durability;
// the rest change memory only. Each needs the terminal role for its session;
// all but OpenSession also the session bound by the caller.

grpc::ServerUnaryReactor* QueueManagerService::OpenSession(grpc::CallbackServerContext* ctx,
                                                           const v1::OpenSessionRequest* request,
                                                           v1::OpenSessionResponse* response) {
  absl::StatusOr<std::string> who = AdmitAnd(c_, *ctx, "OpenSession", [&](const std::string& id) {
    return AllowRole(c_, id, "OpenSession", Role::kTerminal, request->session());
  });
  if (!who.ok()) return Refuse(ctx, who.status());
  // Without security every caller is one identity: a rebind takes over.
  const bool may_take_over_others = c_->security == nullptr || c_->security->IsAdmin(*who);
  return OnPool(
      c_->io_pool, ctx, [this, request, response, may_take_over_others, id = *std::move(who)] {
        return Fill(c_->operations->OpenSession(*request, id, may_take_over_others), response);
      });
}

grpc::ServerUnaryReactor* QueueManagerService::SetAndTestSequenceNumbers(
    grpc::CallbackServerContext* ctx, const v1::SetAndTestSequenceNumbersRequest* request,
    v1::SetAndTestSequenceNumbersResponse* response) {
  absl::StatusOr<std::string> who =
      AdmitAnd(c_, *ctx, "SetAndTestSequenceNumbers", [&](const std::string& id) {
        return AllowSession(c_, id, "SetAndTestSequenceNumbers", request->session());
      });
  if (!who.ok()) return Refuse(ctx, who.status());
  // SET on a session not opened cold: an administrator's.
  const bool by_admin = c_->security != nullptr && c_->security->IsAdmin(*who);
  return OnPool(c_->io_pool, ctx, [this, request, response, by_admin] {
    return Fill(c_->operations->SetAndTestSequenceNumbers(*request, by_admin), response);
  });
}

grpc::ServerUnaryReactor* QueueManagerService::StartDataTraffic(
    grpc::CallbackServerContext* ctx, const v1::StartDataTrafficRequest* request,
    v1::StartDataTrafficResponse*) {
  absl::StatusOr<std::string> who =
      AdmitAnd(c_, *ctx, "StartDataTraffic", [&](const std::string& id) {
        return AllowSession(c_, id, "StartDataTraffic", request->session());
      });
  if (!who.ok()) return Refuse(ctx, who.status());
  return Inline(ctx, [&] { return c_->operations->StartDataTraffic(*request); });
}

grpc::ServerUnaryReactor* QueueManagerService::RequestRecovery(
    grpc::CallbackServerContext* ctx, const v1::RequestRecoveryRequest* request,
    v1::RequestRecoveryResponse*) {
  absl::StatusOr<std::string> who =
      AdmitAnd(c_, *ctx, "RequestRecovery", [&](const std::string& id) {
        return AllowSession(c_, id, "RequestRecovery", request->session());
      });
  if (!who.ok()) return Refuse(ctx, who.status());
  return Inline(ctx, [&] { return c_->operations->RequestRecovery(*request); });
}

grpc::ServerUnaryReactor* QueueManagerService::Clear(grpc::CallbackServerContext* ctx,
                                                     const v1::ClearRequest* request,
                                                     v1::ClearResponse* response) {
  absl::StatusOr<std::string> who = AdmitAnd(c_, *ctx, "Clear", [&](const std::string& id) {
    return AllowSession(c_, id, "Clear", request->session());
  });
  if (!who.ok()) return Refuse(ctx, who.status());
  return Inline(ctx, [&] { return Fill(c_->operations->Clear(*request), response); });
}

grpc::ServerUnaryReactor* QueueManagerService::CloseSession(grpc::CallbackServerContext* ctx,
                                                            const v1::CloseSessionRequest* request,
                                                            v1::CloseSessionResponse*) {
  absl::StatusOr<std::string> who = AdmitAnd(c_, *ctx, "CloseSession", [&](const std::string& id) {
    return AllowSession(c_, id, "CloseSession", request->session());
  });
  if (!who.ok()) return Refuse(ctx, who.status());
  return OnPool(c_->io_pool, ctx,
                [this, request] { return c_->operations->CloseSession(*request); });
}

grpc::ServerWriteReactor<v1::ReceiveResponse>* QueueManagerService::Receive(
    grpc::CallbackServerContext* ctx, const v1::ReceiveRequest* request) {
  return new ReceiveReactor(c_, ctx, request);
}

grpc::ServerUnaryReactor* QueueManagerService::Acknowledge(grpc::CallbackServerContext* ctx,
                                                           const v1::AcknowledgeRequest* request,
                                                           v1::AcknowledgeResponse* response) {
  absl::StatusOr<std::string> who = AdmitAnd(c_, *ctx, "Acknowledge", [&](const std::string& id) {
    return AllowSession(c_, id, "Acknowledge", request->session());
  });
  if (!who.ok()) return Refuse(ctx, who.status());
  return OnPool(c_->io_pool, ctx, [this, request, response] {
    return Fill(c_->operations->Acknowledge(*request), response);
  });
}

// ---- Admin -------------------------------------------------------------------
// Every call needs the admin role; a forced Assign is one of them.

absl::StatusOr<std::string> AdminService::AdmitAdmin(const grpc::CallbackServerContext& ctx,
                                                     absl::string_view rpc) const {
  absl::StatusOr<std::string> who = Admit(c_, ctx, listener_, rpc);
  if (!who.ok()) return who;
  if (listener_ == Listener::kMain && c_->admin_only_on_admin_listener) {
    absl::Status refused = absl::PermissionDeniedError(
        "the Admin service is served on the admin listener (--admin-listen) only");
    return c_->security != nullptr ? c_->security->Logged(*who, rpc, refused) : refused;
  }
  if (absl::Status s = AllowRole(c_, *who, rpc, Role::kAdmin, ""); !s.ok()) return s;
  return who;
}

grpc::ServerUnaryReactor* AdminService::DefineQueue(grpc::CallbackServerContext* ctx,
                                                    const v1::DefineQueueRequest* request,
                                                    v1::DefineQueueResponse*) {
  if (absl::StatusOr<std::string> who = AdmitAdmin(*ctx, "DefineQueue"); !who.ok()) {
    return Refuse(ctx, who.status());
  }
  return OnPool(c_->io_pool, ctx,
                [this, request] { return c_->operations->DefineQueue(*request); });
}

grpc::ServerUnaryReactor* AdminService::AlterQueue(grpc::CallbackServerContext* ctx,
                                                   const v1::AlterQueueRequest* request,
                                                   v1::AlterQueueResponse*) {
  if (absl::StatusOr<std::string> who = AdmitAdmin(*ctx, "AlterQueue"); !who.ok()) {
    return Refuse(ctx, who.status());
  }
  return OnPool(c_->io_pool, ctx, [this, request] { return c_->operations->AlterQueue(*request); });
}

grpc::ServerUnaryReactor* AdminService::DeleteQueue(grpc::CallbackServerContext* ctx,
                                                    const v1::DeleteQueueRequest* request,
                                                    v1::DeleteQueueResponse*) {
  if (absl::StatusOr<std::string> who = AdmitAdmin(*ctx, "DeleteQueue"); !who.ok()) {
    return Refuse(ctx, who.status());
  }
  return OnPool(c_->io_pool, ctx,
                [this, request] { return c_->operations->DeleteQueue(*request); });
}

grpc::ServerUnaryReactor* AdminService::DisplayQueues(grpc::CallbackServerContext* ctx,
                                                      const v1::DisplayQueuesRequest* request,
                                                      v1::DisplayQueuesResponse* response) {
  if (absl::StatusOr<std::string> who = AdmitAdmin(*ctx, "DisplayQueues"); !who.ok()) {
    return Refuse(ctx, who.status());
  }
  return Inline(ctx, [&] { return Fill(c_->operations->DisplayQueues(*request), response); });
}

grpc::ServerUnaryReactor* AdminService::Browse(grpc::CallbackServerContext* ctx,
                                               const v1::BrowseRequest* request,
                                               v1::BrowseResponse* response) {
  if (absl::StatusOr<std::string> who = AdmitAdmin(*ctx, "Browse"); !who.ok()) {
    return Refuse(ctx, who.status());
  }
  // A spilled payload is read back from RocksDB: off the gRPC thread.
  return OnPool(c_->io_pool, ctx, [this, request, response] {
    return Fill(c_->operations->Browse(*request), response);
  });
}

grpc::ServerUnaryReactor* AdminService::Checkpoint(grpc::CallbackServerContext* ctx,
                                                   const v1::CheckpointRequest*,
                                                   v1::CheckpointResponse* response) {
  if (absl::StatusOr<std::string> who = AdmitAdmin(*ctx, "Checkpoint"); !who.ok()) {
    return Refuse(ctx, who.status());
  }
  if (!c_->checkpoint) {
    return Inline(ctx, [] {
      return absl::UnimplementedError(
          "this qmgrd cannot take checkpoints yet: it does not start through restart/, which runs "
          "the checkpointer");
    });
  }
  return OnPool(c_->io_pool, ctx, [this, response] {
    absl::StatusOr<CheckpointInfo> info = c_->checkpoint();
    if (!info.ok()) return info.status();
    response->set_checkpoint_number(info->checkpoint_number);
    response->set_redo_lsn(info->redo_lsn);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::Shutdown(grpc::CallbackServerContext* ctx,
                                                 const v1::ShutdownRequest* request,
                                                 v1::ShutdownResponse*) {
  if (absl::StatusOr<std::string> who = AdmitAdmin(*ctx, "Shutdown"); !who.ok()) {
    return Refuse(ctx, who.status());
  }
  if (!v1::ShutdownMode_IsValid(request->mode())) {
    return Inline(ctx, [&] {
      return absl::InvalidArgumentError(
          absl::StrCat("shutdown mode ", request->mode(), " is unknown"));
    });
  }
  // The shutdown is requested once the answer is sent (OnDone): an immediate
  // shutdown cancels every call still running, and this one must not be.
  class ShutdownReactor final : public grpc::ServerUnaryReactor {
   public:
    ShutdownReactor(std::function<void(v1::ShutdownMode)> request, v1::ShutdownMode mode)
        : request_(std::move(request)), mode_(mode) {
      Finish(grpc::Status::OK);
    }
    // A caller that gave up (deadline, cancel) hears an error: it must not
    // find the queue manager shut down anyway.
    void OnCancel() override { cancelled_ = true; }
    void OnDone() override {
      if (!cancelled_) request_(mode_);
      delete this;
    }

   private:
    const std::function<void(v1::ShutdownMode)> request_;
    const v1::ShutdownMode mode_;
    std::atomic<bool> cancelled_{false};
  };
  return new ShutdownReactor(c_->request_shutdown,
                             request->mode() == v1::IMMEDIATE ? v1::IMMEDIATE : v1::NORMAL);
}

grpc::ServerUnaryReactor* AdminService::Assign(grpc::CallbackServerContext* ctx,
                                               const v1::AssignRequest* request,
                                               v1::AssignResponse* response) {
  if (absl::StatusOr<std::string> who = AdmitAdmin(*ctx, "Assign"); !who.ok()) {
    return Refuse(ctx, who.status());
  }
  return OnPool(c_->io_pool, ctx, [this, request, response] {
    return Fill(c_->operations->Assign(*request), response);
  });
}

grpc::ServerUnaryReactor* AdminService::DisplayUnits(grpc::CallbackServerContext* ctx,
                                                     const v1::DisplayUnitsRequest*,
                                                     v1::DisplayUnitsResponse* response) {
  if (absl::StatusOr<std::string> who = AdmitAdmin(*ctx, "DisplayUnits"); !who.ok()) {
    return Refuse(ctx, who.status());
  }
  return Inline(ctx, [&] {
    *response = c_->operations->DisplayUnits();
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::DisplaySessions(grpc::CallbackServerContext* ctx,
                                                        const v1::DisplaySessionsRequest* request,
                                                        v1::DisplaySessionsResponse* response) {
  if (absl::StatusOr<std::string> who = AdmitAdmin(*ctx, "DisplaySessions"); !who.ok()) {
    return Refuse(ctx, who.status());
  }
  return Inline(ctx, [&] { return Fill(c_->operations->DisplaySessions(*request), response); });
}

grpc::ServerUnaryReactor* AdminService::ListInDoubt(grpc::CallbackServerContext* ctx,
                                                    const v1::ListInDoubtRequest* request,
                                                    v1::ListInDoubtResponse* response) {
  if (absl::StatusOr<std::string> who = AdmitAdmin(*ctx, "ListInDoubt"); !who.ok()) {
    return Refuse(ctx, who.status());
  }
  return Inline(ctx, [&] { return Fill(c_->coordination->ListInDoubt(*request), response); });
}

grpc::ServerUnaryReactor* AdminService::ResolveInDoubt(grpc::CallbackServerContext* ctx,
                                                       const v1::ResolveInDoubtRequest* request,
                                                       v1::ResolveInDoubtResponse* response) {
  if (absl::StatusOr<std::string> who = AdmitAdmin(*ctx, "ResolveInDoubt"); !who.ok()) {
    return Refuse(ctx, who.status());
  }
  return OnPool(c_->io_pool, ctx, [this, request, response] {
    return Fill(c_->coordination->ResolveInDoubt(*request), response);
  });
}

grpc::ServerUnaryReactor* AdminService::Status(grpc::CallbackServerContext* ctx,
                                               const v1::StatusRequest*,
                                               v1::StatusResponse* response) {
  if (absl::StatusOr<std::string> who = AdmitAdmin(*ctx, "Status"); !who.ok()) {
    return Refuse(ctx, who.status());
  }
  if (!c_->status) {
    return Inline(ctx, [] { return absl::UnimplementedError("this qmgrd cannot report status"); });
  }
  // Asks the file system for the disk's free space: off the gRPC thread.
  return OnPool(c_->io_pool, ctx, [this, response] { return Fill(c_->status(), response); });
}

}  // namespace qmgr::server
