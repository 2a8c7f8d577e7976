#include "tools/qmgrd/operations.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "qmgr/status.h"
#include "tools/qmgrd/server_log.h"

namespace qmgr::server {
namespace {

using qmgr::v1::NewMessage;

// A Get answers this long before its caller's deadline: a message taken
// after the caller left would come back only when its lease ends, with its
// backout count raised.
constexpr absl::Duration kDeadlineMargin = absl::Milliseconds(50);
// The most messages one Get takes (GetRequest.max_messages).
constexpr uint32_t kGetMessagesMax = 1000;
// Per message of a GetResponse beyond its own size: tag and length.
constexpr uint64_t kGetFramingBytes = 16;
constexpr uint32_t kBrowseDefaultMessages = 100;
constexpr uint32_t kBrowseMessagesMax = 10000;
// Per message of a BrowseResponse beyond its own size: tag and length.
constexpr uint64_t kBrowseFramingBytes = 16;

MessageSpec ToSpec(NewMessage message) {
  MessageSpec spec;
  spec.queue = std::move(*message.mutable_queue());
  spec.payload = std::move(*message.mutable_payload());
  spec.message_class = message.class_();
  spec.correlation_id = std::move(*message.mutable_correlation_id());
  spec.reply_to = std::move(*message.mutable_reply_to());
  spec.expiry_time_us = message.expiry_time_us();
  spec.origin_session = std::move(*message.mutable_session());
  spec.input_seq = message.input_seq();
  spec.ack_out_seq = message.ack_out_seq();
  return spec;
}

qmgr::v1::EnqueueResponse ToResponse(const EnqueueResult& result) {
  qmgr::v1::EnqueueResponse response;
  response.set_message_id(result.message_id);
  response.set_lsn(result.lsn == log::kNoLsn ? 0 : result.lsn);
  response.set_durability(result.durability == Durability::kDurable ? qmgr::v1::DURABLE
                                                                    : qmgr::v1::IN_MEMORY);
  return response;
}

}  // namespace

Operations::Operations(Engine* engine, OperationsOptions options)
    : engine_(engine), options_(std::move(options)) {}

absl::Status Operations::CheckIntake() const {
  if (!intake_stopped()) return absl::OkStatus();
  return absl::UnavailableError(
      "the queue manager is shutting down: no new messages or units of work");
}

uint32_t Operations::lease_ms() const {
  return static_cast<uint32_t>(
      std::min<int64_t>(absl::ToInt64Milliseconds(options_.unit_lease), UINT32_MAX));
}

absl::Status Operations::CheckOwner(UowId uow, Owner owner, absl::string_view identity) {
  absl::MutexLock lock(&mu_);
  auto it = units_.find(uow);
  // A unit the server does not know (ended, or in doubt) is the engine's to
  // refuse; one it knows answers to its opener only.
  if (it != units_.end() && it->second.identity != identity) {
    return absl::PermissionDeniedError(
        absl::StrCat("unit of work ", uow,
                     " belongs to another identity: only the one that opened it can use it"));
  }
  if (owner != kLeaseOwner) {
    if (it == units_.end() || it->second.owner != owner) {
      return absl::NotFoundError(absl::StrCat("unit of work ", uow, " is not open on this stream"));
    }
  } else if (it != units_.end() && it->second.owner != kLeaseOwner) {
    return absl::FailedPreconditionError(absl::StrCat(
        "unit of work ", uow, " belongs to a ProgramStream: only that stream can use it"));
  }
  if (it != units_.end()) it->second.last_used = absl::Now();
  return absl::OkStatus();
}

void Operations::AddUnit(UowId uow, Owner owner, absl::string_view identity) {
  // A stream's unit lives as long as the stream (ReleaseOwner ends it), not
  // a lease. It was opened by the call now running, so it is still open.
  if (owner != kLeaseOwner) engine_->ExemptFromIdleTimeout(uow).IgnoreError();
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  units_[uow] = UnitEntry{owner, std::string(identity), now};
  constexpr int kPruneEvery = 1024;
  if (++adds_since_prune_ < kPruneEvery) return;
  adds_since_prune_ = 0;
  // Twice the lease: the reaper, which looks every quarter lease, has ended
  // these (a call that finds one gone gets NOT_FOUND from the engine anyway).
  absl::erase_if(units_, [&](const auto& entry) {
    return entry.second.owner == kLeaseOwner &&
           now - entry.second.last_used > 2 * options_.unit_lease;
  });
}

void Operations::RemoveUnit(UowId uow) {
  absl::MutexLock lock(&mu_);
  units_.erase(uow);
}

absl::StatusOr<qmgr::v1::EnqueueResponse> Operations::Enqueue(NewMessage message,
                                                              log::Lsn* durable_lsn) {
  if (durable_lsn != nullptr) *durable_lsn = log::kNoLsn;
  if (absl::Status s = CheckIntake(); !s.ok()) return s;
  if (durable_lsn == nullptr) {
    absl::StatusOr<EnqueueResult> result = engine_->Enqueue(ToSpec(std::move(message)));
    if (!result.ok()) return result.status();
    return ToResponse(*result);
  }
  std::vector<MessageSpec> specs;
  specs.push_back(ToSpec(std::move(message)));
  absl::StatusOr<std::vector<EnqueueResult>> results =
      engine_->EnqueueBatchNoWait(std::move(specs), durable_lsn);
  if (!results.ok()) return results.status();
  return ToResponse(results->front());
}

absl::StatusOr<qmgr::v1::EnqueueBatchResponse> Operations::EnqueueBatch(
    const qmgr::v1::EnqueueBatchRequest& request) {
  if (absl::Status s = CheckIntake(); !s.ok()) return s;
  std::vector<MessageSpec> specs;
  specs.reserve(request.messages_size());
  for (const NewMessage& message : request.messages()) specs.push_back(ToSpec(message));
  absl::StatusOr<std::vector<EnqueueResult>> results = engine_->EnqueueBatch(std::move(specs));
  if (!results.ok()) return results.status();
  qmgr::v1::EnqueueBatchResponse response;
  for (const EnqueueResult& result : *results) *response.add_results() = ToResponse(result);
  return response;
}

std::vector<absl::StatusOr<qmgr::v1::EnqueueResponse>> Operations::EnqueueGroup(
    std::vector<NewMessage> messages) {
  std::vector<absl::StatusOr<qmgr::v1::EnqueueResponse>> answers;
  answers.reserve(messages.size());
  if (absl::Status s = CheckIntake(); !s.ok()) {
    answers.assign(messages.size(), s);
    return answers;
  }
  if (messages.size() == 1) {
    answers.push_back(Enqueue(std::move(messages[0])));
    return answers;
  }
  std::vector<MessageSpec> specs;
  specs.reserve(messages.size());
  for (const NewMessage& message : messages) specs.push_back(ToSpec(message));
  absl::StatusOr<std::vector<EnqueueResult>> results = engine_->EnqueueBatch(std::move(specs));
  if (results.ok()) {
    for (const EnqueueResult& result : *results) answers.push_back(ToResponse(result));
    return answers;
  }
  // A refusal of these kinds comes before anything is logged (validation,
  // limits, memory, a full disk: the log's Append assigns nothing then), and
  // one message's refusal must not be the others': each is enqueued alone.
  // (FailedPrecondition from a log closed under a waiting call cannot happen:
  // qmgrd closes the log only after every call ended.) Anything else, above
  // all Unavailable from a failed log, may come after the record was
  // appended: enqueuing again could queue twice, so every message shares the
  // outcome, as a lone Enqueue would.
  switch (results.status().code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kResourceExhausted:
      break;
    default:
      answers.assign(messages.size(), results.status());
      return answers;
  }
  for (NewMessage& message : messages) answers.push_back(Enqueue(std::move(message)));
  return answers;
}

absl::StatusOr<qmgr::v1::GetResponse> Operations::Get(const qmgr::v1::GetRequest& request,
                                                      Owner owner, absl::Time call_deadline,
                                                      absl::FunctionRef<bool()> stop_waiting,
                                                      absl::string_view identity,
                                                      log::Lsn* durable_lsn) {
  // The latest LSN the answer depends on (the log is durable in LSN order).
  log::Lsn wait = log::kNoLsn;
  auto answer = [&](absl::StatusOr<qmgr::v1::GetResponse> a) -> decltype(a) {
    if (durable_lsn != nullptr) {
      *durable_lsn = wait;
    } else if (wait != log::kNoLsn) {
      if (absl::Status s = engine_->WaitDurable(wait); !s.ok()) return s;
    }
    return a;
  };
  if (durable_lsn != nullptr) *durable_lsn = log::kNoLsn;
  if (request.max_messages() > kGetMessagesMax) {
    return absl::InvalidArgumentError(absl::StrCat("max_messages ", request.max_messages(),
                                                   " is more than a Get takes (", kGetMessagesMax,
                                                   ")"));
  }
  if (request.uow() != 0) {
    if (absl::Status s = CheckOwner(request.uow(), owner, identity); !s.ok()) return s;
  }
  if (absl::Status s = CheckIntake(); !s.ok()) {
    // A single-mode program still reaches its sync point while the shutdown
    // lets open units finish; it gets no new message.
    if (!request.commit_previous() || request.uow() == 0) return s;
    absl::StatusOr<SyncPointResult> committed = engine_->SyncPoint(request.uow());
    if (!committed.ok()) return committed.status();
    RemoveUnit(request.uow());
    return WithPreviousUnitCommitted(s, request.uow());
  }
  absl::Time deadline =
      absl::Now() + std::min(absl::Milliseconds(request.wait_ms()), options_.get_wait_max);
  if (call_deadline != absl::InfiniteFuture()) {
    deadline = std::min(deadline, call_deadline - kDeadlineMargin);
  }
  GetOptions options;
  options.uow = request.uow();
  options.queue = request.queue();
  options.commit_previous = request.commit_previous() && request.uow() != 0;
  options.max_messages = std::max<uint32_t>(request.max_messages(), 1);
  // What the answer (or its ProgramResponse envelope) carries besides the
  // messages' own bytes.
  const uint64_t framing = (options.max_messages + 1) * kGetFramingBytes;
  options.max_bytes = options_.max_send_bytes > framing ? options_.max_send_bytes - framing : 0;
  qmgr::v1::GetResponse response;
  response.set_lease_ms(lease_ms());
  // The wait goes in slices, so that a caller that left, or a shutdown, ends
  // it within a slice; after the first slice with commit_previous, the
  // previous unit is committed and the next slices take into a new unit.
  while (true) {
    options.wait =
        std::clamp(deadline - absl::Now(), absl::ZeroDuration(), options_.get_wait_slice);
    log::Lsn get_wait = log::kNoLsn;
    absl::StatusOr<GetResult> result = engine_->GetNoWait(options, &get_wait);
    if (get_wait != log::kNoLsn) wait = wait == log::kNoLsn ? get_wait : std::max(wait, get_wait);
    if (result.ok()) {
      if (options.commit_previous) RemoveUnit(options.uow);
      if (result->uow != options.uow) AddUnit(result->uow, owner, identity);  // a new unit
      response.set_uow(result->uow);
      *response.mutable_message() = std::move(result->message);
      response.mutable_more()->Reserve(static_cast<int>(result->more.size()));
      for (qmgr::v1::Message& more : result->more) *response.add_more() = std::move(more);
      return answer(std::move(response));
    }
    if (!absl::IsDeadlineExceeded(result.status())) {
      if (options.commit_previous && PreviousUnitCommitted(result.status()) != 0) {
        RemoveUnit(options.uow);
      }
      return answer(result.status());
    }
    if (options.commit_previous) {
      RemoveUnit(options.uow);
      options.commit_previous = false;
      options.uow = 0;
    }
    if (absl::Now() >= deadline || stop_waiting() || intake_stopped()) {
      response.set_uow(options.uow);
      return answer(std::move(response));
    }
  }
}

absl::StatusOr<qmgr::v1::InsertResponse> Operations::Insert(const qmgr::v1::InsertRequest& request,
                                                            Owner owner,
                                                            absl::string_view identity) {
  UowId uow = request.uow();
  const bool created = uow == 0;
  if (created) {
    if (absl::Status s = CheckIntake(); !s.ok()) return s;
    uow = engine_->BeginUnit();
  } else if (absl::Status s = CheckOwner(uow, owner, identity); !s.ok()) {
    return s;
  }
  if (absl::Status s = engine_->Insert(uow, ToSpec(request.message())); !s.ok()) {
    // A unit made for this insert holds nothing: end it rather than leave it
    // to the reaper.
    if (created) engine_->Backout(uow).IgnoreError();
    return s;
  }
  if (created) AddUnit(uow, owner, identity);
  qmgr::v1::InsertResponse response;
  response.set_uow(uow);
  response.set_lease_ms(lease_ms());
  return response;
}

absl::StatusOr<qmgr::v1::SyncPointResponse> Operations::SyncPoint(
    const qmgr::v1::SyncPointRequest& request, Owner owner, absl::string_view identity) {
  if (absl::Status s = CheckOwner(request.uow(), owner, identity); !s.ok()) return s;
  absl::StatusOr<SyncPointResult> result = engine_->SyncPoint(request.uow());
  // Only a refusal because a Get of the unit still waits leaves it open;
  // after any other failure (QUEUE_FULL backs it out) it is gone.
  if (result.ok() || !absl::IsFailedPrecondition(result.status())) RemoveUnit(request.uow());
  if (!result.ok()) return result.status();
  qmgr::v1::SyncPointResponse response;
  response.set_lsn(result->lsn == log::kNoLsn ? 0 : result->lsn);
  response.set_consumed(result->consumed);
  response.set_inserted(result->inserted);
  return response;
}

absl::StatusOr<qmgr::v1::BackoutResponse> Operations::Backout(
    const qmgr::v1::BackoutRequest& request, Owner owner, absl::string_view identity) {
  if (absl::Status s = CheckOwner(request.uow(), owner, identity); !s.ok()) return s;
  absl::Status s = engine_->Backout(request.uow(), qmgr::v1::BACKOUT_REQUESTED);
  if (s.ok() || absl::IsNotFound(s)) RemoveUnit(request.uow());
  if (!s.ok()) return s;
  return qmgr::v1::BackoutResponse();
}

absl::StatusOr<qmgr::v1::OpenSessionResponse> Operations::OpenSession(
    const qmgr::v1::OpenSessionRequest& request, absl::string_view identity,
    bool may_take_over_others) {
  absl::StatusOr<SessionBinding> binding = engine_->BindSession(
      request.session(), request.cold(), std::string(identity), may_take_over_others);
  if (!binding.ok()) return binding.status();
  if (binding->superseded_client.has_value() && options_.progress) {
    options_.progress(absl::StrCat("session ", request.session(), " taken over by '", identity,
                                   "' from '", *binding->superseded_client,
                                   "': the previous binding's Receive ends"));
  }
  LogEvent("session.bind")
      .Add("session", request.session())
      .Add("cold", request.cold())
      .Add("resync_required", binding->resync_required);
  qmgr::v1::OpenSessionResponse response;
  response.set_resync_required(binding->resync_required);
  return response;
}

absl::Status Operations::CheckSessionClient(const std::string& session,
                                            absl::string_view identity) const {
  std::optional<std::string> client = engine_->SessionClient(session);
  if (!client.has_value() || *client == identity) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat("session '", session,
                   "' is bound by another client: OpenSession to take it "
                   "over (your own binding) or ask an administrator"));
}

absl::StatusOr<qmgr::v1::SetAndTestSequenceNumbersResponse> Operations::SetAndTestSequenceNumbers(
    const qmgr::v1::SetAndTestSequenceNumbersRequest& request, bool by_admin) {
  StsnRequest stsn;
  stsn.by_admin = by_admin;
  stsn.input = request.input();
  stsn.output = request.output();
  absl::StatusOr<StsnAnswer> answer = engine_->SetAndTestSequenceNumbers(request.session(), stsn);
  if (!answer.ok()) return answer.status();
  LogEvent("session.resync")
      .Add("session", request.session())
      .Add("input_action", v1::StsnAction_Name(request.input().action()))
      .Add("input_result", v1::StsnResult_Name(answer->input.result()))
      .Add("in_seq", answer->input.in_seq())
      .Add("resend_from", answer->input.resend_from())
      .Add("resend_to", answer->input.resend_to())
      .Add("pending_input", answer->input.pending_input())
      .Add("output_action", v1::StsnAction_Name(request.output().action()))
      .Add("output_result", v1::StsnResult_Name(answer->output.result()))
      .Add("out_seq", answer->output.out_seq())
      .Add("output_outcome", v1::OutputOutcome_Name(answer->output.outcome()))
      .Add("possible_duplicate", answer->output.possible_duplicate());
  qmgr::v1::SetAndTestSequenceNumbersResponse response;
  *response.mutable_input() = std::move(answer->input);
  *response.mutable_output() = std::move(answer->output);
  return response;
}

absl::Status Operations::StartDataTraffic(const qmgr::v1::StartDataTrafficRequest& request) {
  return engine_->StartDataTraffic(request.session());
}

absl::Status Operations::RequestRecovery(const qmgr::v1::RequestRecoveryRequest& request) {
  return engine_->RequestRecovery(request.session());
}

absl::StatusOr<qmgr::v1::ClearResponse> Operations::Clear(const qmgr::v1::ClearRequest& request) {
  absl::StatusOr<uint64_t> discarded = engine_->Clear(request.session());
  if (!discarded.ok()) return discarded.status();
  qmgr::v1::ClearResponse response;
  response.set_discarded_inputs(*discarded);
  return response;
}

absl::Status Operations::CloseSession(const qmgr::v1::CloseSessionRequest& request) {
  return engine_->CloseSession(request.session());
}

absl::StatusOr<std::optional<qmgr::v1::ReceiveResponse>> Operations::Receive(
    const qmgr::v1::ReceiveRequest& request, absl::Duration wait, ReceiveCursor* cursor) {
  if (intake_stopped()) {
    return absl::UnavailableError("the queue manager is shutting down: receive after its restart");
  }
  absl::StatusOr<SessionOutput> output = engine_->ReceiveOutput(request.session(), wait, cursor);
  if (absl::IsDeadlineExceeded(output.status())) return std::nullopt;
  if (!output.ok()) return output.status();
  qmgr::v1::ReceiveResponse response;
  response.set_out_seq(output->out_seq);
  *response.mutable_message() = std::move(output->message);
  response.set_exception_response(output->exception_response);
  return response;
}

absl::StatusOr<qmgr::v1::AcknowledgeResponse> Operations::Acknowledge(
    const qmgr::v1::AcknowledgeRequest& request) {
  absl::StatusOr<bool> moved = engine_->Acknowledge(request.session(), request.out_seq(),
                                                    request.positive(), request.sense_code());
  if (!moved.ok()) return moved.status();
  qmgr::v1::AcknowledgeResponse response;
  response.set_moved_to_backout_queue(*moved);
  return response;
}

void Operations::ReleaseOwner(Owner owner, qmgr::v1::BackoutReason reason) {
  std::vector<UowId> held;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [uow, entry] : units_) {
      if (entry.owner == owner) held.push_back(uow);
    }
    for (UowId uow : held) units_.erase(uow);
  }
  // NotFound: the reaper or a shutdown ended it first.
  for (UowId uow : held) engine_->Backout(uow, reason).IgnoreError();
}

void Operations::StopIntake() { intake_stopped_.store(true, std::memory_order_release); }

size_t Operations::OutputsUnacknowledged() const { return engine_->OutputsUnacknowledged(); }

size_t Operations::LiveUnits() const {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  // A stream's unit lives as long as its stream; a leased one as its lease.
  return std::count_if(units_.begin(), units_.end(), [&](const auto& entry) {
    return entry.second.owner != kLeaseOwner || now - entry.second.last_used <= options_.unit_lease;
  });
}

int Operations::BackoutAll(qmgr::v1::BackoutReason reason) {
  std::vector<UowId> all;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [uow, entry] : units_) all.push_back(uow);
  }
  int ended = 0;
  for (UowId uow : all) {
    absl::Status s = engine_->Backout(uow, reason);
    if (s.ok()) ++ended;
    if (s.ok() || absl::IsNotFound(s)) RemoveUnit(uow);
  }
  return ended;
}

absl::Status Operations::DefineQueue(const qmgr::v1::DefineQueueRequest& request) {
  return engine_->DefineQueue(request.queue(), request.attributes());
}

absl::Status Operations::AlterQueue(const qmgr::v1::AlterQueueRequest& request) {
  return engine_->AlterQueue(request.queue(), request.attributes());
}

absl::Status Operations::DeleteQueue(const qmgr::v1::DeleteQueueRequest& request) {
  return engine_->DeleteQueue(request.queue(), request.purge());
}

absl::StatusOr<qmgr::v1::DisplayQueuesResponse> Operations::DisplayQueues(
    const qmgr::v1::DisplayQueuesRequest& request) const {
  std::vector<QueueStatus> queues;
  if (request.queues().empty()) {
    queues = engine_->DisplayQueues();
  } else {
    for (const std::string& name : request.queues()) {
      absl::StatusOr<QueueStatus> queue = engine_->DisplayQueue(name);
      if (!queue.ok()) return queue.status();
      queues.push_back(*std::move(queue));
    }
  }
  qmgr::v1::DisplayQueuesResponse response;
  for (const QueueStatus& q : queues) {
    qmgr::v1::QueueInfo* info = response.add_queues();
    info->set_name(q.name);
    *info->mutable_attributes() = q.attributes;
    info->set_depth(q.depth);
    info->set_taken(q.taken);
    info->set_expired_discarded(q.expired_discarded);
    info->set_backout_moved_in(q.backout_moved_in);
    info->set_in_doubt(q.in_doubt);
    info->set_oldest_message_age_ms(absl::ToInt64Milliseconds(q.oldest_message_age));
    info->set_enqueue_rate(q.enqueue_rate);
    info->set_get_rate(q.get_rate);
    for (const auto& [message_class, messages] : q.by_class) {
      qmgr::v1::ClassCount* count = info->add_classes();
      count->set_class_(message_class);
      count->set_messages(messages);
    }
  }
  const MemoryStatus memory = engine_->Memory();
  qmgr::v1::MemoryInfo* m = response.mutable_memory();
  m->set_budget_bytes(memory.budget_bytes);
  m->set_payload_bytes_in_memory(memory.payload_bytes_in_memory);
  m->set_spilled_messages(memory.spilled_messages);
  m->set_spilled_bytes(memory.spilled_bytes);
  absl::MutexLock lock(&mu_);
  response.set_open_units(units_.size());
  return response;
}

absl::StatusOr<qmgr::v1::BrowseResponse> Operations::Browse(
    const qmgr::v1::BrowseRequest& request) const {
  const uint32_t wanted = request.max_messages() == 0
                              ? kBrowseDefaultMessages
                              : std::min(request.max_messages(), kBrowseMessagesMax);
  // One more than wanted, to tell whether there were more.
  absl::StatusOr<std::vector<qmgr::v1::Message>> messages =
      engine_->Browse(request.queue(), wanted + 1);
  if (!messages.ok()) return messages.status();
  qmgr::v1::BrowseResponse response;
  uint64_t bytes = 0;
  for (qmgr::v1::Message& message : *messages) {
    const uint64_t size = message.ByteSizeLong() + kBrowseFramingBytes;
    if (static_cast<uint32_t>(response.messages_size()) == wanted ||
        bytes + size > options_.max_send_bytes) {
      response.set_truncated(true);
      break;
    }
    bytes += size;
    *response.add_messages() = std::move(message);
  }
  return response;
}

absl::StatusOr<qmgr::v1::AssignResponse> Operations::Assign(
    const qmgr::v1::AssignRequest& request) {
  absl::StatusOr<AssignResult> result =
      engine_->Assign(request.from_session(), request.to_session(), request.force());
  if (!result.ok()) return result.status();
  qmgr::v1::AssignResponse response;
  response.set_moved(result->moved);
  response.set_possible_duplicate_message_id(result->possible_duplicate_message_id);
  return response;
}

absl::StatusOr<qmgr::v1::DisplaySessionsResponse> Operations::DisplaySessions(
    const qmgr::v1::DisplaySessionsRequest& request) const {
  absl::StatusOr<std::vector<qmgr::v1::SessionInfo>> sessions = engine_->DisplaySessions(
      std::vector<std::string>(request.sessions().begin(), request.sessions().end()));
  if (!sessions.ok()) return sessions.status();
  qmgr::v1::DisplaySessionsResponse response;
  for (qmgr::v1::SessionInfo& info : *sessions) *response.add_sessions() = std::move(info);
  return response;
}

qmgr::v1::DisplayUnitsResponse Operations::DisplayUnits() const {
  const std::vector<OpenUnit> open = engine_->OpenUnits();
  qmgr::v1::DisplayUnitsResponse response;
  absl::MutexLock lock(&mu_);
  for (const OpenUnit& unit : open) {
    qmgr::v1::UnitInfo& info = *response.add_units();
    info.set_uow(unit.id);
    info.set_age_ms(absl::ToInt64Milliseconds(unit.age));
    info.set_idle_ms(absl::ToInt64Milliseconds(unit.idle));
    info.set_messages(unit.messages);
    info.set_in_doubt(unit.in_doubt);
    if (unit.first_lsn != log::kNoLsn) {
      info.set_first_lsn(unit.first_lsn);
      info.set_log_bytes_since_first(unit.log_bytes_since_first);
    }
    if (unit.coordinated.has_value()) {
      info.set_owner(absl::StrCat("coordinator ", unit.coordinated->coordinator));
      info.set_xid(unit.coordinated->xid);
    } else if (auto it = units_.find(unit.id); it != units_.end()) {
      info.set_owner(it->second.owner == kLeaseOwner ? std::string("lease")
                                                     : absl::StrCat("stream ", it->second.owner));
    }
  }
  return response;
}

}  // namespace qmgr::server
