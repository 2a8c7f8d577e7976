#include "qmgr/engine.h"

#include <algorithm>
#include <cassert>
#include <ctime>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "qmgr/engine_internal.h"

namespace qmgr {

using qmgr::v1::LogRecord;

bool IsValidQueueName(absl::string_view name) {
  if (name.empty() || name.size() > 48) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

Engine::Engine(log::Log* log, EngineOptions options, RestoredState restored)
    : log_(log),
      options_(std::move(options)),
      record_bytes_max_(std::min(options_.unit_bytes_max,
                                 log->record_payload_bytes_max() > 2 * kRecordSlackBytes
                                     ? log->record_payload_bytes_max() - kRecordSlackBytes
                                     : log->record_payload_bytes_max() / 2)) {
  assert(options_.first_free_id > 0 && options_.id_block > 1);
  next_id_ = block_end_ = next_block_end_ = options_.first_free_id;
  {
    absl::MutexLock lock(&mu_);
    Restore(std::move(restored));
  }
  if (options_.reaper_interval > absl::ZeroDuration()) {
    reaper_ = std::thread([this] { ReaperLoop(); });
  }
}

Engine::~Engine() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (reaper_.joinable()) reaper_.join();
}

// ---- Queue definitions ---------------------------------------------------

namespace {

absl::Status ValidateAttributes(const std::string& name, const qmgr::v1::QueueAttributes& a) {
  if (!IsValidQueueName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("queue name '", name, "' must be 1..48 characters of [A-Za-z0-9._-]"));
  }
  if (!qmgr::v1::MessageClass_IsValid(a.default_class())) {
    return absl::InvalidArgumentError(
        absl::StrCat("default class ", a.default_class(), " is unknown"));
  }
  if (!a.backout_queue().empty() && !IsValidQueueName(a.backout_queue())) {
    return absl::InvalidArgumentError(
        absl::StrCat("backout queue name '", a.backout_queue(), "' is not a valid queue name"));
  }
  if (a.backout_queue() == name) {
    return absl::InvalidArgumentError("a queue cannot be its own backout queue");
  }
  if (!a.output_of_session().empty() && !IsValidQueueName(a.output_of_session())) {
    return absl::InvalidArgumentError(
        absl::StrCat("session name '", a.output_of_session(),
                     "' (output_of_session) must be 1..48 characters of [A-Za-z0-9._-]"));
  }
  return absl::OkStatus();
}

// A name that cannot be a queue's is malformed input, not an unknown queue.
absl::Status QueueNotDefined(const std::string& name) {
  if (!IsValidQueueName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("queue name '", name, "' must be 1..48 characters of [A-Za-z0-9._-]"));
  }
  return absl::NotFoundError(absl::StrCat("queue '", name, "' is not defined"));
}

}  // namespace

absl::Status Engine::DefineQueue(const std::string& name,
                                 const qmgr::v1::QueueAttributes& attributes) {
  if (absl::Status s = ValidateAttributes(name, attributes); !s.ok()) return s;
  absl::StatusOr<log::Lsn> lsn;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = CheckOpen(); !s.ok()) return s;
    if (queues_.count(name)) {
      return absl::AlreadyExistsError(absl::StrCat("queue '", name, "' is already defined"));
    }
    LogRecord record;
    record.mutable_queue_define()->set_queue(name);
    *record.mutable_queue_define()->mutable_attributes() = attributes;
    lsn = log_->Append(record);
    if (!lsn.ok()) return lsn.status();
    auto queue = std::make_shared<Queue>();
    queue->name = name;
    queue->attributes = attributes;
    queue->rates = QueueRates(options_.clock->NowMicros());
    queues_[name] = std::move(queue);
    changed_queues_.insert(name);
    deleted_queues_.erase(name);
  }
  return WaitDurable(*lsn);
}

absl::Status Engine::AlterQueue(const std::string& name,
                                const qmgr::v1::QueueAttributes& attributes) {
  if (absl::Status s = ValidateAttributes(name, attributes); !s.ok()) return s;
  absl::StatusOr<log::Lsn> lsn;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = CheckOpen(); !s.ok()) return s;
    auto it = queues_.find(name);
    if (it == queues_.end()) {
      return QueueNotDefined(name);
    }
    LogRecord record;
    record.mutable_queue_alter()->set_queue(name);
    *record.mutable_queue_alter()->mutable_attributes() = attributes;
    lsn = log_->Append(record);
    if (!lsn.ok()) return lsn.status();
    it->second->attributes = attributes;
    changed_queues_.insert(name);
    it->second->available.SignalAll();  // get-inhibit may have been lifted
  }
  return WaitDurable(*lsn);
}

absl::Status Engine::DeleteQueue(const std::string& name, bool purge) {
  absl::StatusOr<log::Lsn> lsn;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = CheckOpen(); !s.ok()) return s;
    auto it = queues_.find(name);
    if (it == queues_.end()) {
      return QueueNotDefined(name);
    }
    Queue& queue = *it->second;
    if (queue.taken > 0) {
      return absl::FailedPreconditionError(absl::StrCat("queue '", name, "' has ", queue.taken,
                                                        " messages taken by open units of work"));
    }
    if (!queue.visible.empty() && !purge) {
      return absl::FailedPreconditionError(absl::StrCat(
          "queue '", name, "' holds ", queue.visible.size(), " messages; delete with purge"));
    }
    LogRecord record;
    record.mutable_queue_delete()->set_queue(name);
    record.mutable_queue_delete()->set_purged(purge);
    record.mutable_queue_delete()->set_purged_messages(queue.visible.size());
    lsn = log_->Append(record);
    if (!lsn.ok()) return lsn.status();
    for (const auto& message : queue.visible) {
      if (message->spilled) DropSpilled(*message);
      ForgetDeferredInput(*message);
      Retire(*message);
    }
    changed_queues_.erase(name);
    deleted_queues_.insert(name);
    queue.deleted = true;
    queue.available.SignalAll();
    // Waiting Gets keep the queue alive (shared_ptr) and look it up again by name.
    queues_.erase(it);
  }
  return WaitDurable(*lsn);
}

void QueueRates::Sample(int64_t now_us) {
  if (!samples_.empty() && now_us - samples_.back().time_us < kSampleEveryUs) return;
  samples_.push_back({now_us, arrived_, got_});
  // The oldest sample still needed is the first at or after the window's
  // start; the ones before it never will be.
  const int64_t window_start = now_us - absl::ToInt64Microseconds(kRateWindow);
  while (samples_.size() > 1 && samples_[1].time_us <= window_start) samples_.pop_front();
}

double QueueRates::PerSecond(int64_t now_us, uint64_t Counts::*count) const {
  const Counts now{now_us, arrived_, got_};
  int64_t start_us = now_us - absl::ToInt64Microseconds(kRateWindow);
  uint64_t at_start = 0;  // counting began inside the window, at zero
  if (since_us_ < start_us) {
    // The counts at the window's start are those of the first sample taken
    // at or after it: nothing changed between (beyond the second after the
    // sample before). No such sample: nothing changed since.
    at_start = now.*count;
    for (const Counts& sample : samples_) {
      if (sample.time_us >= start_us) {
        at_start = sample.*count;
        break;
      }
    }
  } else {
    start_us = since_us_;
  }
  if (now_us <= start_us) return 0;
  return static_cast<double>(now.*count - at_start) * 1e6 / static_cast<double>(now_us - start_us);
}

QueueStatus Engine::StatusOf(const Queue& q, int64_t now_us,
                             const absl::flat_hash_map<std::string, uint64_t>& in_doubt) {
  QueueStatus status;
  status.name = q.name;
  status.attributes = q.attributes;
  status.depth = q.visible.size();
  status.taken = q.taken;
  status.expired_discarded = q.expired_discarded;
  status.backout_moved_in = q.backout_moved_in;
  if (auto it = in_doubt.find(q.name); it != in_doubt.end()) status.in_doubt = it->second;
  if (!q.visible.empty()) {
    status.oldest_message_age =
        absl::Microseconds(std::max<int64_t>(0, now_us - q.visible.front()->m.enqueue_time_us()));
  }
  status.enqueue_rate = q.rates.ArrivedPerSecond(now_us);
  status.get_rate = q.rates.GotPerSecond(now_us);
  // A walk of the queue: display is rare, and counters kept at every place a
  // message enters or leaves a queue would cost every call.
  for (const auto& message : q.visible) ++status.by_class[message->m.class_()];
  return status;
}

absl::flat_hash_map<std::string, uint64_t> Engine::InDoubtByQueue() const {
  absl::flat_hash_map<std::string, uint64_t> held;
  for (const auto& [id, unit] : units_) {
    if (!unit->in_doubt()) continue;
    for (const auto& message : unit->taken) ++held[message->m.queue()];
  }
  return held;
}

absl::StatusOr<QueueStatus> Engine::DisplayQueue(const std::string& name) const {
  const int64_t now_us = options_.clock->NowMicros();
  absl::MutexLock lock(&mu_);
  auto it = queues_.find(name);
  if (it == queues_.end()) {
    return QueueNotDefined(name);
  }
  return StatusOf(*it->second, now_us, InDoubtByQueue());
}

std::vector<QueueStatus> Engine::DisplayQueues() const {
  const int64_t now_us = options_.clock->NowMicros();
  absl::MutexLock lock(&mu_);
  const absl::flat_hash_map<std::string, uint64_t> in_doubt = InDoubtByQueue();
  std::vector<QueueStatus> out;
  for (const auto& [name, q] : queues_) out.push_back(StatusOf(*q, now_us, in_doubt));
  return out;
}

absl::StatusOr<std::vector<qmgr::v1::Message>> Engine::Browse(const std::string& name,
                                                              size_t max_messages) const {
  absl::MutexLock lock(&mu_);
  auto it = queues_.find(name);
  if (it == queues_.end()) {
    return QueueNotDefined(name);
  }
  std::vector<qmgr::v1::Message> out;
  for (const auto& message : it->second->visible) {
    if (out.size() == max_messages) break;
    qmgr::v1::Message whole = message->Whole();
    if (message->unloaded()) {
      absl::StatusOr<std::string> payload = ReadUnloaded(*message);
      if (!payload.ok()) return payload.status();
      whole.set_payload(*std::move(payload));
    }
    out.push_back(std::move(whole));
  }
  return out;
}

// ---- Producers -------------------------------------------------------------

absl::Status Engine::ValidateSpec(const MessageSpec& spec, uint64_t payload_bytes, int64_t now_us,
                                  Queue** queue, MessageClass* cls) {
  auto it = queues_.find(spec.queue);
  if (it == queues_.end()) {
    return QueueNotDefined(spec.queue);
  }
  *queue = it->second.get();
  const qmgr::v1::QueueAttributes& a = (*queue)->attributes;
  if (a.put_inhibited()) {
    return WithReason(
        absl::FailedPreconditionError(absl::StrCat("queue '", spec.queue, "' is put-inhibited")),
        reason::kPutInhibited);
  }
  const uint64_t size_max =
      a.max_message_bytes() > 0 ? a.max_message_bytes() : options_.default_max_message_bytes;
  if (payload_bytes > size_max) {
    return absl::InvalidArgumentError(absl::StrCat("message of ", payload_bytes,
                                                   " bytes exceeds the max message size of queue '",
                                                   spec.queue, "' (", size_max, " bytes)"));
  }
  *cls = spec.message_class;
  if (!qmgr::v1::MessageClass_IsValid(*cls)) {
    return absl::InvalidArgumentError(absl::StrCat("message class ", *cls, " is unknown"));
  }
  if (*cls == qmgr::v1::MESSAGE_CLASS_UNSPECIFIED) *cls = a.default_class();
  if (*cls == qmgr::v1::MESSAGE_CLASS_UNSPECIFIED) *cls = qmgr::v1::RECOVERABLE;
  if (spec.expiry_time_us != 0 && spec.expiry_time_us <= now_us) {
    return absl::InvalidArgumentError("message expiry time is in the past");
  }
  return absl::OkStatus();
}

absl::Status Engine::CheckSessionInput(const MessageSpec& spec, MessageClass cls,
                                       uint64_t expected_seq, log::Lsn* hardened_lsn) {
  if (spec.origin_session.empty()) {
    if (IsDeferred(cls)) {
      return absl::InvalidArgumentError(
          absl::StrCat(qmgr::v1::MessageClass_Name(cls), " input requires an origin session"));
    }
    if (spec.input_seq != 0) {
      return absl::InvalidArgumentError("an input number requires an origin session");
    }
    if (spec.ack_out_seq != 0) {
      return absl::InvalidArgumentError("an implied acknowledgement requires an origin session");
    }
    return absl::OkStatus();
  }
  if (cls == qmgr::v1::IRRECOVERABLE && spec.input_seq != 0) {
    return absl::InvalidArgumentError("IRRECOVERABLE input is not numbered");
  }
  absl::StatusOr<Session*> bound = BoundSession(spec.origin_session, /*data_traffic=*/true);
  if (!bound.ok()) return bound.status();
  Session& s = **bound;
  if (spec.ack_out_seq != 0) {
    if (absl::Status st = CheckAcknowledge(spec.origin_session, s, spec.ack_out_seq); !st.ok()) {
      return st;
    }
  }
  // The reply an implied acknowledgement confirms ends the outstanding input.
  const bool reply_acked = spec.ack_out_seq != 0 && s.sent != nullptr &&
                           s.sent->m.id() == s.awaited_reply && s.out_seq == spec.ack_out_seq;
  if (s.outstanding_seq != 0 && spec.input_seq == s.outstanding_seq && IsDeferred(cls)) {
    // A retry of the pending input itself: it is held (until its sync
    // point), so the retry must not be read as a refusal of it.
    return WithReason(absl::FailedPreconditionError(absl::StrCat(
                          "input ", spec.input_seq, " of session '", spec.origin_session,
                          "' is already accepted; it waits for its sync point")),
                      reason::kAlreadyHardened);
  }
  if (s.outstanding_seq != 0 && !reply_acked) {
    return WithReason(absl::FailedPreconditionError(absl::StrCat(
                          "session '", spec.origin_session, "' has input ", s.outstanding_seq,
                          " outstanding (response mode): wait for its reply")),
                      reason::kResponseOutstanding);
  }
  if (cls == qmgr::v1::IRRECOVERABLE) return absl::OkStatus();
  if (spec.input_seq == 0) {
    return absl::InvalidArgumentError(absl::StrCat(qmgr::v1::MessageClass_Name(cls),
                                                   " input from a session needs its input number"));
  }
  if (expected_seq != 0 && spec.input_seq < expected_seq) {
    return absl::InvalidArgumentError(
        absl::StrCat("input ", spec.input_seq, " of session '", spec.origin_session,
                     "' repeats or precedes an earlier input of the same batch"));
  }
  if (expected_seq == 0) expected_seq = s.in_seq + 1;
  if (spec.input_seq < expected_seq) {
    *hardened_lsn = s.last_lsn;
    return WithReason(absl::FailedPreconditionError(absl::StrCat(
                          "input ", spec.input_seq, " of session '", spec.origin_session,
                          "' is already hardened (expected ", expected_seq, ")")),
                      reason::kAlreadyHardened);
  }
  if (spec.input_seq != expected_seq) {
    return WithReason(absl::FailedPreconditionError(absl::StrCat(
                          "input ", spec.input_seq, " of session '", spec.origin_session,
                          "' leaves a gap: expected ", expected_seq)),
                      reason::kSequenceGap);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Engine::NextId(log::Lsn* reserve_lsn) {
  const auto reserve = [this](uint64_t first) -> absl::StatusOr<log::Lsn> {
    LogRecord record;
    record.mutable_id_reserve()->set_first_id(first);
    record.mutable_id_reserve()->set_count(options_.id_block);
    return log_->Append(record);
  };
  if (next_id_ == block_end_) {
    if (next_block_end_ > block_end_) {
      block_lsn_ = next_block_lsn_;
    } else {
      absl::StatusOr<log::Lsn> lsn = reserve(block_end_);
      if (!lsn.ok()) return lsn.status();
      block_lsn_ = *lsn;
      next_block_end_ = block_end_ + options_.id_block;
    }
    block_end_ = next_block_end_;
  }
  // Reserve the next block half-way through this one, so that it is durable
  // long before an unlogged message needs an id from it.
  if (next_block_end_ == block_end_ && block_end_ - next_id_ <= options_.id_block / 2) {
    absl::StatusOr<log::Lsn> lsn = reserve(block_end_);
    if (!lsn.ok()) return lsn.status();
    next_block_lsn_ = *lsn;
    next_block_end_ = block_end_ + options_.id_block;
  }
  *reserve_lsn = block_lsn_;
  return next_id_++;
}

std::unique_ptr<Engine::Message> Engine::NewMessage(MessageSpec& spec, int64_t now_us) {
  auto message = std::make_unique<Message>();
  message->payload = std::make_shared<const std::string>(std::move(spec.payload));
  qmgr::v1::Message& m = message->m;
  m.set_queue(spec.queue);
  m.set_enqueue_time_us(now_us);
  // Each string field set is an allocation, in every copy of the message.
  if (!spec.origin_session.empty()) m.set_origin_session(spec.origin_session);
  m.set_input_seq(spec.input_seq);
  if (!spec.correlation_id.empty()) m.set_correlation_id(spec.correlation_id);
  if (!spec.reply_to.empty()) m.set_reply_to(spec.reply_to);
  m.set_expiry_time_us(spec.expiry_time_us);
  return message;
}

void Engine::Admit(Message* message, MessageClass cls, uint64_t id) {
  message->m.set_id(id);
  message->m.set_class_(cls);
  message->Charge(&payload_bytes_);
}

absl::Status Engine::CheckMemory(uint64_t incoming) const {
  const uint64_t budget = options_.memory_budget_bytes;
  if (budget == 0) return absl::OkStatus();
  const uint64_t limit = options_.spill != nullptr ? budget + budget / 4 : budget;
  if (payload_bytes_ + incoming <= limit) return absl::OkStatus();
  std::string why = " and no spill store";
  if (options_.spill != nullptr && SpillAtLimit(incoming)) {
    why = absl::StrCat(", and the spill store is at its limit: ", options_.spill->spilled_bytes(),
                       " bytes spilled, spill limit ", options_.spill_limit_bytes);
  } else if (options_.spill != nullptr) {
    why = " (spilling to the store is failing)";
  }
  return absl::ResourceExhaustedError(absl::StrCat("memory budget exhausted: ", payload_bytes_,
                                                   " payload bytes in memory, budget ", budget,
                                                   why));
}

bool Engine::SpillAtLimit(uint64_t bytes) const {
  return options_.spill_limit_bytes != 0 &&
         options_.spill->spilled_bytes() + bytes > options_.spill_limit_bytes;
}

void Engine::Spill(Message* message) {
  // Kept in memory at the limit (or when the Put fails): CheckMemory then
  // refuses new messages once memory reaches 5/4 of the budget.
  if (SpillAtLimit(message->payload->size())) return;
  deferred_spill_drops_.erase(message->m.id());  // a pending drop would now lose it
  if (!options_.spill->Put(message->m.id(), *message->payload).ok()) {
    return;
  }
  message->Uncharge();
  message->payload.reset();
  message->spilled = true;
}

absl::StatusOr<std::string> Engine::ReadUnloaded(const Message& message) const {
  absl::StatusOr<std::string> payload = message.spilled
                                            ? options_.spill->Get(message.m.id())
                                            : options_.stored_payloads->ReadPayload(message.m.id());
  if (payload.ok()) return payload;
  return absl::Status(payload.status().code(),
                      absl::StrCat("reading the payload of message ", message.m.id(), " from ",
                                   message.spilled ? "the spill" : "the checkpoint store", ": ",
                                   payload.status().message()));
}

absl::Status Engine::Unspill(Message* message) {
  absl::StatusOr<std::string> payload = ReadUnloaded(*message);
  if (!payload.ok()) return payload.status();
  message->payload = std::make_shared<const std::string>(*std::move(payload));
  message->Charge(&payload_bytes_);
  if (message->spilled) DropSpilled(*message);
  message->spilled = false;
  message->in_store = false;
  return absl::OkStatus();
}

void Engine::ForgetDeferredInput(const Message& message) {
  // A deferred input discarded before its sync point never hardens: its
  // session may go on (resync will report it for reissue).
  if (!IsDeferred(message.m.class_()) || message.m.origin_session().empty()) return;
  Session* session = FindSession(message.m.origin_session());
  if (session != nullptr && session->outstanding_seq == message.m.input_seq()) {
    session->outstanding_seq = 0;
  }
}

void Engine::DropSpilled(const Message& message) {
  if (checkpointing_) {
    deferred_spill_drops_.insert(message.m.id());
    return;
  }
  // A failure leaves garbage that the next start drops with the spill.
  options_.spill->Delete(message.m.id()).IgnoreError();
}

void Engine::MarkChanged(Message* message) {
  if (message->logged) changed_messages_[message->m.id()] = message;
}

void Engine::Retire(const Message& message) {
  if (!message.logged) return;
  changed_messages_.erase(message.m.id());
  if (message.stored) deleted_messages_.push_back(message.m.id());
}

MemoryStatus Engine::Memory() const {
  absl::MutexLock lock(&mu_);
  MemoryStatus status;
  status.budget_bytes = options_.memory_budget_bytes;
  status.payload_bytes_in_memory = payload_bytes_;
  if (options_.spill != nullptr) {
    status.spilled_messages = options_.spill->spilled_count();
    status.spilled_bytes = options_.spill->spilled_bytes();
  }
  return status;
}

EngineTraffic Engine::Traffic() const {
  EngineTraffic out;
  absl::MutexLock lock(&mu_);
  out.queues.reserve(queues_.size());
  for (const auto& [name, q] : queues_) {
    out.queues.push_back({name, q->visible.size(), q->taken, q->traffic});
  }
  out.units_committed = units_committed_;
  out.units_backed_out = units_backed_out_;
  return out;
}

void Engine::MakeVisible(Queue* queue, std::unique_ptr<Message> message, bool at_head) {
  MakeVisible(queue, std::move(message), at_head, options_.clock->NowMicros());
}

void Engine::MakeVisible(Queue* queue, std::unique_ptr<Message> message, bool at_head,
                         int64_t now_us) {
  // Beyond the budget, newly queued payloads go to the spill store: the tail
  // of a queue is read last. Returning (backed-out) ones stay in memory.
  if (!at_head && options_.spill != nullptr && options_.memory_budget_bytes > 0 &&
      payload_bytes_ > options_.memory_budget_bytes && !message->unloaded()) {
    Spill(message.get());
  }
  message->taken_by = 0;
  message->taken_from = nullptr;
  MarkChanged(message.get());
  if (at_head) {
    message->position = --queue->next_head;
    queue->visible.push_front(std::move(message));
  } else {
    message->position = queue->next_tail++;
    queue->visible.push_back(std::move(message));
    queue->rates.Arrived(now_us);
  }
  queue->available.Signal();
}

// Messages admitted under the latch but not queued: uncharged while the latch
// is held, since they are freed after it is released.
absl::Status Engine::Abandon(absl::Span<const std::unique_ptr<Message>> messages,
                             absl::Status status) {
  for (const auto& message : messages) {
    if (message != nullptr) message->Uncharge();
  }
  return status;
}

absl::StatusOr<EnqueueResult> Engine::Enqueue(MessageSpec spec) {
  EnqueueResult result;
  if (absl::Status s = EnqueueMany(absl::MakeSpan(&spec, 1), absl::MakeSpan(&result, 1)); !s.ok()) {
    return s;
  }
  return result;
}

absl::StatusOr<std::vector<EnqueueResult>> Engine::EnqueueBatch(std::vector<MessageSpec> specs) {
  return EnqueueAll(absl::MakeSpan(specs), nullptr);
}

absl::StatusOr<std::vector<EnqueueResult>> Engine::EnqueueBatchNoWait(
    std::vector<MessageSpec> specs, log::Lsn* durable_lsn) {
  *durable_lsn = log::kNoLsn;
  return EnqueueAll(absl::MakeSpan(specs), durable_lsn);
}

absl::StatusOr<std::vector<EnqueueResult>> Engine::EnqueueAll(absl::Span<MessageSpec> specs,
                                                              log::Lsn* durable_lsn) {
  if (specs.empty()) return absl::InvalidArgumentError("an empty batch");
  std::vector<EnqueueResult> results(specs.size());
  if (absl::Status s = EnqueueMany(specs, absl::MakeSpan(results), durable_lsn); !s.ok()) return s;
  return results;
}

absl::Status Engine::EnqueueMany(absl::Span<MessageSpec> specs, absl::Span<EnqueueResult> results,
                                 log::Lsn* durable_lsn) {
  assert(results.size() == specs.size());
  log::Lsn wait_lsn = log::kNoLsn;
  log::Lsn hardened_lsn = log::kNoLsn;  // ALREADY_HARDENED: answered once it is durable
  absl::Status refusal;
  // Messages (payload copies, allocations) and the clock outside the latch.
  const int64_t now_us = options_.clock->NowMicros();
  absl::InlinedVector<std::unique_ptr<Message>, 1> messages;
  messages.reserve(specs.size());
  for (MessageSpec& spec : specs) messages.push_back(NewMessage(spec, now_us));
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = CheckOpen(); !s.ok()) return s;
    refusal =
        EnqueueLocked(specs, now_us, absl::MakeSpan(messages), results, &wait_lsn, &hardened_lsn);
  }
  if (!refusal.ok()) {
    if (hardened_lsn != log::kNoLsn) {
      if (absl::Status s = WaitDurable(hardened_lsn); !s.ok()) return s;
    }
    return refusal;
  }
  if (durable_lsn != nullptr) {
    *durable_lsn = wait_lsn;
  } else if (wait_lsn != log::kNoLsn) {
    return WaitDurable(wait_lsn);
  }
  return absl::OkStatus();
}

absl::Status Engine::EnqueueLocked(absl::Span<MessageSpec> specs, int64_t now_us,
                                   absl::Span<std::unique_ptr<Message>> messages,
                                   absl::Span<EnqueueResult> results, log::Lsn* wait_lsn,
                                   log::Lsn* hardened_lsn) {
  {
    // Validate everything first: all or nothing.
    absl::InlinedVector<Queue*, 1> queues(specs.size());
    absl::InlinedVector<MessageClass, 1> classes(specs.size());
    absl::InlinedVector<std::pair<Queue*, uint64_t>, 1> added;  // messages per queue
    struct BatchSession {
      uint64_t next_seq = 0;  // 0: no numbered input yet
      bool deferred = false;
    };
    absl::flat_hash_map<std::string, BatchSession> batch_sessions;  // sessions in this batch
    uint64_t record_bytes = 0;
    for (size_t i = 0; i < specs.size(); ++i) {
      const MessageSpec& spec = specs[i];
      const uint64_t payload_bytes = messages[i]->payload->size();
      if (absl::Status s = ValidateSpec(spec, payload_bytes, now_us, &queues[i], &classes[i]);
          !s.ok()) {
        return s;
      }
      if (!spec.origin_session.empty()) {
        BatchSession& in_batch = batch_sessions[spec.origin_session];
        if (in_batch.deferred) {
          return WithReason(absl::FailedPreconditionError(absl::StrCat(
                                "batch input of session '", spec.origin_session,
                                "' follows a deferred input that must be answered first")),
                            reason::kResponseOutstanding);
        }
        if (absl::Status s = CheckSessionInput(spec, classes[i], in_batch.next_seq, hardened_lsn);
            !s.ok()) {
          return s;
        }
        if (spec.ack_out_seq != 0 && i > 0) {
          return absl::InvalidArgumentError(
              "only a batch's first input may carry an implied acknowledgement");
        }
        in_batch.deferred = IsDeferred(classes[i]);
        if (classes[i] != qmgr::v1::IRRECOVERABLE) in_batch.next_seq = spec.input_seq + 1;
      } else if (absl::Status s = CheckSessionInput(spec, classes[i], 0, hardened_lsn); !s.ok()) {
        return s;
      }
      const uint64_t depth_max = queues[i]->depth_max();
      auto count = std::find_if(added.begin(), added.end(),
                                [&](const auto& a) { return a.first == queues[i]; });
      if (count == added.end()) count = added.insert(added.end(), {queues[i], 0});
      const uint64_t n = ++count->second;
      if (depth_max > 0 && queues[i]->visible.size() + queues[i]->taken + n > depth_max) {
        return WithReason(absl::ResourceExhaustedError(absl::StrCat(
                              "queue '", spec.queue, "' is full: its max depth is ", depth_max)),
                          reason::kQueueFull);
      }
      if (classes[i] == qmgr::v1::RECOVERABLE) record_bytes += RecordCost(spec, payload_bytes);
      if (IsDeferred(classes[i]) &&
          RecordCost(spec, payload_bytes) + kMessageOverheadBytes > record_bytes_max_) {
        // It could never be taken: the unit that consumes it logs it whole.
        return absl::InvalidArgumentError(absl::StrCat(
            qmgr::v1::MessageClass_Name(classes[i]), " message of ", payload_bytes,
            " bytes exceeds what a unit of work can log (", record_bytes_max_, " bytes)"));
      }
    }
    uint64_t incoming = 0;
    for (const auto& message : messages) incoming += message->payload->size();
    if (absl::Status s = CheckMemory(incoming); !s.ok()) return s;
    if (record_bytes > record_bytes_max_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "batch of about ", record_bytes, " bytes exceeds the limit of ", record_bytes_max_,
          " bytes per record (unit_bytes_max, bounded by the log's maximum record)"));
    }

    // An implied acknowledgement precedes the input in the log; waiting for
    // the input covers it.
    log::Lsn ack_lsn = log::kNoLsn;
    if (specs.front().ack_out_seq != 0) {
      Session& session = *FindSession(specs.front().origin_session);
      absl::StatusOr<bool> acked =
          AcknowledgeLocked(specs.front().origin_session, session, specs.front().ack_out_seq,
                            /*positive=*/true, 0, &ack_lsn);
      if (!acked.ok()) return Abandon(messages, acked.status());
    }
    // The ENQUEUE record, made at the batch's first RECOVERABLE message.
    qmgr::v1::EnqueueRecord* enqueue = nullptr;
    log::Lsn reserve_lsn = 0;
    log::Lsn unlogged_reserve_lsn = log::kNoLsn;
    for (size_t i = 0; i < specs.size(); ++i) {
      log::Lsn block_lsn = 0;
      absl::StatusOr<uint64_t> id = NextId(&block_lsn);
      if (!id.ok()) return Abandon(messages, id.status());
      reserve_lsn = std::max(reserve_lsn, block_lsn);
      Admit(messages[i].get(), classes[i], *id);
      results[i].message_id = *id;
      if (classes[i] == qmgr::v1::RECOVERABLE) {
        if (enqueue == nullptr) enqueue = ScratchRecord(enqueue_record_).mutable_enqueue();
        qmgr::v1::Message* logged = enqueue->add_messages();
        *logged = messages[i]->m;
        logged->set_payload(*messages[i]->payload);
        messages[i]->logged = true;
      } else {
        unlogged_reserve_lsn = reserve_lsn;
      }
    }
    for (size_t i = 0; i < specs.size(); ++i) {
      if (classes[i] != qmgr::v1::RECOVERABLE || specs[i].origin_session.empty()) continue;
      qmgr::v1::SessionAdvance* advance = enqueue->add_sessions();
      advance->set_session(specs[i].origin_session);
      advance->set_in_seq(specs[i].input_seq);
    }
    if (enqueue != nullptr) {
      absl::StatusOr<log::Lsn> lsn = AppendScratch(enqueue_record_);
      if (!lsn.ok()) return Abandon(messages, lsn.status());
      *wait_lsn = *lsn;
    } else if (unlogged_reserve_lsn != log::kNoLsn) {
      // An unlogged message's id must not be reused after a crash: its block's
      // reservation is durable before the id is handed out.
      *wait_lsn = std::max(unlogged_reserve_lsn, ack_lsn == log::kNoLsn ? 0 : ack_lsn);
    }
    for (size_t i = 0; i < specs.size(); ++i) {
      const MessageSpec& spec = specs[i];
      if (!spec.origin_session.empty()) {
        Session& session = *FindSession(spec.origin_session);
        if (classes[i] == qmgr::v1::RECOVERABLE) {
          session.in_seq = spec.input_seq;
          MarkSessionChanged(spec.origin_session, session, *wait_lsn);
        }
        if (IsDeferred(classes[i])) session.outstanding_seq = spec.input_seq;
      }
      if (messages[i]->logged) {
        results[i].lsn = *wait_lsn;
        results[i].durability = Durability::kDurable;
      }
      ++queues[i]->traffic_of(*messages[i]).enqueued;
      MakeVisible(queues[i], std::move(messages[i]), /*at_head=*/false, now_us);
    }
  }
  return absl::OkStatus();
}

LogRecord& Engine::ScratchRecord(LogRecord& record) {
  // Clearing a body keeps its sub-messages and strings allocated; the next
  // record of the same type fills them again.
  switch (record.body_case()) {
    case LogRecord::kEnqueue:
      record.mutable_enqueue()->Clear();
      break;
    case LogRecord::kGet:
      record.mutable_get()->Clear();
      break;
    case LogRecord::kSyncpoint:
      record.mutable_syncpoint()->Clear();
      break;
    default:
      record.Clear();
  }
  return record;
}

absl::StatusOr<log::Lsn> Engine::AppendScratch(LogRecord& record) {
  absl::StatusOr<log::Lsn> lsn = log_->Append(record);
  // A large record (a batch, a big unit) is not kept allocated.
  constexpr size_t kScratchBytesMax = 64 << 10;
  if (record.GetCachedSize() > static_cast<int>(kScratchBytesMax)) record.Clear();
  return lsn;
}

// ---- Units of work -----------------------------------------------------------

Engine::Unit* Engine::NewUnit(absl::Time now) {
  const UowId id = next_uow_++;
  assert(units_.empty() || units_.rbegin()->first < id);
  UnitMap::iterator it;
  if (free_units_.empty()) {
    it = units_.emplace_hint(units_.end(), id, std::make_unique<Unit>());
  } else {
    UnitMap::node_type node = std::move(free_units_.back());
    free_units_.pop_back();
    node.key() = id;
    it = units_.insert(units_.end(), std::move(node));
  }
  Unit* unit = it->second.get();
  unit->id = id;
  unit->begun = now;
  unit->last_used = now;
  return unit;
}

void Engine::EndUnit(UowId uow) {
  auto it = units_.find(uow);
  assert(it != units_.end());
  UnitMap::node_type node = units_.extract(it);
  Unit* unit = node.mapped().get();
  assert(unit->busy.load(std::memory_order_relaxed) == 0);
  if (!unit->coordinated_key.empty()) {
    coordinated_.erase(unit->coordinated_key);
    unit->coordinated_key.clear();
  }
  // Keep a few, emptied; a unit that grew large is freed.
  constexpr size_t kFreeUnitsMax = 256;
  if (free_units_.size() < kFreeUnitsMax && unit->taken.capacity() <= 64) {
    unit->taken.clear();
    unit->inserted.clear();
    unit->record_bytes = 0;
    unit->reserve_lsn = log::kNoLsn;
    unit->first_lsn = log::kNoLsn;
    unit->exempt = false;
    unit->prepared.reset();
    unit->prepared_time_us = 0;
    free_units_.push_back(std::move(node));
  }
}

absl::StatusOr<Engine::Unit*> Engine::FindUnit(UowId uow, absl::Time now) {
  auto it = units_.find(uow);
  if (it == units_.end()) {
    return absl::NotFoundError(absl::StrCat("unit of work ", uow, " is not open"));
  }
  if (absl::Status s = CheckNotInDoubt(*it->second); !s.ok()) return s;
  it->second->last_used = now;
  return it->second.get();
}

absl::Status Engine::CheckNotInDoubt(const Unit& unit) {
  if (!unit.in_doubt()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("unit of work ", unit.id,
                   " is in doubt: only its coordinator's outcome (or an operator's) ends it"));
}

namespace {
// The program API's sync point and backout are not for coordinated units.
absl::Status CheckNotCoordinated(UowId uow, const std::string& coordinated_key) {
  if (coordinated_key.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "unit of work ", uow, " belongs to a coordinator: it ends by its Commit or Backout"));
}
}  // namespace

UowId Engine::BeginUnit() {
  const absl::Time now = options_.clock->Now();
  absl::MutexLock lock(&mu_);
  return NewUnit(now)->id;
}

Engine::Message* Engine::TakeNext(Queue* queue, int64_t now_us) {
  while (!queue->visible.empty()) {
    Message* front = queue->visible.front().get();
    const int64_t expiry = front->m.expiry_time_us();
    if (expiry == 0 || expiry > now_us) return front;
    if (front->logged) {
      // Discarded as if consumed by a unit of its own, so that a restart does
      // not bring it back. No wait: losing this record only means a later Get
      // discards it again.
      LogRecord record;
      record.mutable_syncpoint()->add_consumed_message_ids(front->m.id());
      if (!log_->Append(record).ok()) return front;  // the Get fails on its own record
    }
    ++queue->expired_discarded;
    if (front->spilled) DropSpilled(*front);
    ForgetDeferredInput(*front);
    Retire(*front);
    queue->visible.pop_front();
  }
  return nullptr;
}

absl::StatusOr<GetResult> Engine::Get(const GetOptions& options) {
  log::Lsn durable_lsn = log::kNoLsn;
  absl::StatusOr<GetResult> result = GetNoWait(options, &durable_lsn);
  // The previous unit's sync point is durable before the caller hears of it,
  // whether a message came or not.
  if (durable_lsn != log::kNoLsn) {
    if (absl::Status s = WaitDurable(durable_lsn); !s.ok()) return s;
  }
  return result;
}

absl::StatusOr<GetResult> Engine::GetNoWait(const GetOptions& options, log::Lsn* durable_lsn) {
  *durable_lsn = log::kNoLsn;
  log::Lsn commit_lsn = log::kNoLsn;
  log::Lsn get_lsn = log::kNoLsn;
  Copies copies;
  Consumed consumed;
  const absl::Time now = options_.clock->Now();
  GetResult result;
  absl::Status status;
  {
    absl::MutexLock lock(&mu_);
    status = GetLocked(options, now, &commit_lsn, &get_lsn, &copies, &consumed, &result);
  }
  consumed.clear();
  if (!status.ok() && commit_lsn != log::kNoLsn) {
    // The previous unit is committed even though this Get failed: the caller
    // hears so, once the commit is durable.
    *durable_lsn = commit_lsn;
    return WithPreviousUnitCommitted(status, options.uow);
  }
  if (!status.ok()) return status;
  if (options_.before_answer_copy) options_.before_answer_copy(result.uow);
  CopyOut(copies, &result);
  // The log is written in LSN order: the later record durable, both are.
  for (const log::Lsn lsn : {commit_lsn, get_lsn}) {
    if (lsn != log::kNoLsn)
      *durable_lsn = *durable_lsn == log::kNoLsn ? lsn : std::max(*durable_lsn, lsn);
  }
  return result;
}

void Engine::CopyOut(Copies& copies, GetResult* result) {
  const auto copy = [](const Message& from, qmgr::v1::Message* to) {
    *to = from.m;
    to->set_payload(*from.payload);
  };
  copy(*copies.messages[0], &result->message);
  result->more.resize(copies.messages.size() - 1);
  for (size_t i = 1; i < copies.messages.size(); ++i) {
    copy(*copies.messages[i], &result->more[i - 1]);
  }
  // Release: the copies are made before the unit can end.
  copies.unit->busy.fetch_sub(1, std::memory_order_release);
}

absl::Status Engine::GetLocked(const GetOptions& options, absl::Time now, log::Lsn* commit_lsn,
                               log::Lsn* get_lsn, Copies* copies, Consumed* consumed,
                               GetResult* out) {
  GetResult& result = *out;
  int64_t now_us = absl::ToUnixMicros(now);
  absl::Time deadline = absl::InfinitePast();  // set when a wait begins
  bool woken = false;                          // this call consumed a wake-up
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  {
    Unit* unit = nullptr;
    bool created = false;
    // The queue, looked up once per latch hold: commits never erase a queue.
    auto it = queues_.end();
    if (options.commit_previous && options.uow != 0) {
      absl::StatusOr<Unit*> previous = FindUnit(options.uow, now);
      if (!previous.ok()) return previous.status();
      if (absl::Status s = CheckNotCoordinated(options.uow, (*previous)->coordinated_key);
          !s.ok()) {
        return s;
      }
      if (absl::Status s = CheckNotWaiting(**previous); !s.ok()) return s;
      // Refuse before committing what would fail after it, so that an error
      // always means the previous unit is still open.
      it = queues_.find(options.queue);
      if (it == queues_.end()) {
        return QueueNotDefined(options.queue);
      }
      if (it->second->attributes.get_inhibited()) {
        return WithReason(absl::FailedPreconditionError(
                              absl::StrCat("queue '", options.queue, "' is get-inhibited")),
                          reason::kGetInhibited);
      }
      SyncPointResult committed;
      absl::StatusOr<log::Lsn> lsn = CommitLocked(*previous, &committed, consumed);
      if (!lsn.ok()) return lsn.status();
      *commit_lsn = *lsn;
    }
    if (options.uow == 0 || options.commit_previous) {
      unit = NewUnit(now);
      created = true;
    } else {
      absl::StatusOr<Unit*> found = FindUnit(options.uow, now);
      if (!found.ok()) return found.status();
      unit = *found;
    }
    const UowId uow = unit->id;
    Message* message = nullptr;
    Queue* queue = nullptr;
    // On a failure: end a unit this call made for nothing, and pass on a
    // wake-up this call consumed, so a message it leaves is not left unseen.
    auto drop_if_empty = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      auto u = units_.find(uow);
      if (created && u != units_.end() && u->second->messages() == 0) EndUnit(uow);
      if (woken && queues_.count(options.queue)) queues_.at(options.queue)->available.Signal();
    };
    while (true) {
      if (woken || it == queues_.end()) it = queues_.find(options.queue);
      if (it == queues_.end()) {
        drop_if_empty();
        return QueueNotDefined(options.queue);
      }
      queue = it->second.get();
      if (queue->attributes.get_inhibited()) {
        drop_if_empty();
        return WithReason(absl::FailedPreconditionError(
                              absl::StrCat("queue '", options.queue, "' is get-inhibited")),
                          reason::kGetInhibited);
      }
      if (woken) {  // another call may have ended the unit during the wait
        absl::StatusOr<Unit*> current = FindUnit(uow, now);
        if (!current.ok()) {
          drop_if_empty();
          return current.status();
        }
        unit = *current;
      }
      if (unit->messages() >= options_.unit_messages_max) {
        drop_if_empty();
        return absl::ResourceExhaustedError(
            absl::StrCat("unit of work ", uow, " holds ", unit->messages(),
                         " messages, the limit per unit (unit_messages_max)"));
      }
      message = TakeNext(queue, now_us);
      if (message != nullptr) break;
      if (deadline == absl::InfinitePast()) deadline = absl::Now() + options.wait;
      if (absl::Now() >= deadline) {
        drop_if_empty();
        return absl::DeadlineExceededError(absl::StrCat("no message on queue '", options.queue,
                                                        "' within ",
                                                        absl::FormatDuration(options.wait)));
      }
      ++unit->busy;
      const std::shared_ptr<Queue> waiting_on = it->second;  // alive through a DeleteQueue
      waiting_on->available.WaitWithDeadline(&mu_, deadline);
      woken = true;
      // The unit cannot have ended (ending refuses a unit with a Get waiting),
      // but look it up by id rather than trust the pointer.
      if (auto u = units_.find(uow); u != units_.end()) --u->second->busy;
      if (absl::Status s = CheckOpen(); !s.ok()) {
        drop_if_empty();
        return s;
      }
      now = options_.clock->Now();  // the wait took time: idle and expiry go by now
      now_us = absl::ToUnixMicros(now);
    }
    if (absl::Status s = TakeInto(*unit, *queue, message, now_us, get_lsn); !s.ok()) {
      drop_if_empty();
      return s;
    }
    result.uow = uow;
    copies->messages.push_back(message);
    // The rest only as available now, under the same latch hold: a limit
    // (the unit's, the answer's size) or a failure ends the batch early
    // rather than failing it, since the first is taken. A Get of one (most)
    // does not size its message under the latch.
    uint64_t bytes =
        options.max_messages > 1 ? message->m.ByteSizeLong() + message->payload->size() : 0;
    for (uint32_t n = 1; n < options.max_messages; ++n) {
      if (unit->messages() >= options_.unit_messages_max) break;
      message = TakeNext(queue, now_us);
      if (message == nullptr) break;
      if (message->unloaded() && !Unspill(message).ok()) break;
      bytes += message->m.ByteSizeLong() + message->payload->size();
      if (bytes > options.max_bytes) break;
      if (!TakeInto(*unit, *queue, message, now_us, get_lsn).ok()) break;
      copies->messages.push_back(message);
    }
    copies->unit = unit;
    unit->busy.fetch_add(1, std::memory_order_relaxed);
  }
  return absl::OkStatus();
}

absl::Status Engine::TakeInto(Unit& unit, Queue& queue, Message* message, int64_t now_us,
                              log::Lsn* get_lsn) {
  if (message->unloaded()) {
    if (absl::Status s = Unspill(message); !s.ok()) return s;
  }
  const bool deferred = !message->logged && message->m.class_() != qmgr::v1::IRRECOVERABLE;
  const uint64_t cost =
      deferred ? message->m.ByteSizeLong() + message->payload->size() + kMessageOverheadBytes
      : message->logged ? kConsumedIdBytes
                        : 0;
  if (absl::Status s = CheckUnitBytes(unit, cost); !s.ok()) return s;
  if (message->logged) {
    LogRecord& record = ScratchRecord(get_record_);
    qmgr::v1::GetRecord* get = record.mutable_get();
    get->set_uow_id(unit.id);
    get->set_message_id(message->m.id());
    get->set_queue(queue.name);
    get->set_backout_count(message->m.backout_count());
    absl::StatusOr<log::Lsn> lsn = AppendScratch(record);
    if (!lsn.ok()) return lsn.status();
    if (unit.first_lsn == log::kNoLsn) unit.first_lsn = *lsn;
    // Wait only for a message delivered before, so that one that keeps
    // killing its consumers is counted even across a server crash. Records
    // are durable in LSN order: the latest such (this one) is the one to wait for.
    if (message->m.backout_count() > 0) *get_lsn = *lsn;
  }
  unit.record_bytes += cost;
  message->taken_by = unit.id;
  message->taken_from = &queue;
  MarkChanged(message);
  ++queue.traffic_of(*message).got;
  unit.taken.push_back(std::move(queue.visible.front()));
  queue.visible.pop_front();
  ++queue.taken;
  queue.rates.Got(now_us);
  return absl::OkStatus();
}

absl::Status Engine::Insert(UowId uow, MessageSpec spec) {
  const absl::Time now = options_.clock->Now();
  std::unique_ptr<Message> message = NewMessage(spec, absl::ToUnixMicros(now));
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  absl::StatusOr<Unit*> unit = FindUnit(uow, now);
  if (!unit.ok()) return unit.status();
  if (!spec.origin_session.empty() || spec.input_seq != 0) {
    return absl::InvalidArgumentError("an inserted message is output: it has no origin session");
  }
  Queue* queue = nullptr;
  MessageClass cls;
  const uint64_t payload_bytes = message->payload->size();
  if (absl::Status s = ValidateSpec(spec, payload_bytes, absl::ToUnixMicros(now), &queue, &cls);
      !s.ok()) {
    return s;
  }
  if ((*unit)->messages() >= options_.unit_messages_max) {
    return absl::ResourceExhaustedError(absl::StrCat("unit of work ", uow, " holds ",
                                                     (*unit)->messages(),
                                                     " messages, the limit per unit "
                                                     "(unit_messages_max)"));
  }
  const uint64_t cost = cls == qmgr::v1::IRRECOVERABLE ? 0 : RecordCost(spec, payload_bytes);
  if (absl::Status s = CheckUnitBytes(**unit, cost); !s.ok()) return s;
  if (absl::Status s = CheckMemory(payload_bytes); !s.ok()) return s;
  log::Lsn reserve_lsn = 0;
  absl::StatusOr<uint64_t> id = NextId(&reserve_lsn);
  if (!id.ok()) return id.status();
  (*unit)->record_bytes += cost;
  Admit(message.get(), cls, *id);
  Unit& u = **unit;
  u.reserve_lsn = u.reserve_lsn == log::kNoLsn ? reserve_lsn : std::max(u.reserve_lsn, reserve_lsn);
  u.inserted.push_back(std::move(message));
  return absl::OkStatus();
}

absl::Status Engine::CheckNotWaiting(const Unit& unit) const {
  if (!unit.in_use()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "unit of work ", unit.id, " has a Get waiting for a message (or answering); end it after"));
}

absl::Status Engine::CheckUnitBytes(const Unit& unit, uint64_t more) const {
  if (unit.record_bytes + more <= record_bytes_max_) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("unit of work ", unit.id, " would carry about ", unit.record_bytes + more,
                   " bytes in its sync point record; the limit per unit is ", record_bytes_max_,
                   " (unit_bytes_max, bounded by the log's maximum record)"));
}

// This unit's messages taken from `queue`: they leave it at the sync point.
uint64_t Engine::TakenFrom(const Unit& unit, const std::string& queue) {
  return std::count_if(unit.taken.begin(), unit.taken.end(),
                       [&](const auto& message) { return message->m.queue() == queue; });
}

absl::Status Engine::CheckInsertDepth(const Unit& unit) const {
  // Depth is checked again for inserts: queues may have filled since.
  std::map<std::string, uint64_t> added;
  for (const auto& message : unit.inserted) ++added[message->m.queue()];
  for (const auto& [name, n] : added) {
    auto it = queues_.find(name);
    if (it == queues_.end()) {
      return absl::NotFoundError(
          absl::StrCat("sync point backed out: queue '", name, "' was deleted"));
    }
    const uint64_t max = it->second->depth_max();
    if (max > 0 &&
        it->second->visible.size() + it->second->taken - TakenFrom(unit, name) + n > max) {
      return WithReason(
          absl::ResourceExhaustedError(absl::StrCat("sync point backed out: queue '", name,
                                                    "' is full: its max depth is ", max)),
          reason::kQueueFull);
    }
  }
  return absl::OkStatus();
}

template <typename UnitRecord>
bool Engine::FillUnitRecord(const Unit& unit, UnitRecord* record,
                            std::vector<std::pair<std::string, uint64_t>>* hardened) const {
  bool logged = false;
  record->set_uow_id(unit.id);
  for (const auto& message : unit.taken) {
    if (message->logged) {
      record->add_consumed_message_ids(message->m.id());
      logged = true;
    } else if (message->m.class_() != qmgr::v1::IRRECOVERABLE) {
      *record->add_deferred_inputs() = message->Whole();
      logged = true;
      if (!message->m.origin_session().empty()) {
        hardened->emplace_back(message->m.origin_session(), message->m.input_seq());
      }
    }
  }
  for (const auto& message : unit.inserted) {
    if (message->m.class_() == qmgr::v1::IRRECOVERABLE) continue;
    *record->add_inserted() = message->Whole();
    logged = true;
  }
  for (const auto& [session, seq] : *hardened) {
    qmgr::v1::SessionAdvance* advance = record->add_sessions();
    advance->set_session(session);
    advance->set_in_seq(seq);
  }
  return logged;
}

// Prepare (coordinated.cc) fills a PREPARE the same way.
template bool Engine::FillUnitRecord(const Unit&, qmgr::v1::PrepareRecord*,
                                     std::vector<std::pair<std::string, uint64_t>>*) const;

absl::StatusOr<log::Lsn> Engine::CommitLocked(Unit* unit, SyncPointResult* result,
                                              Consumed* consumed) {
  assert(!unit->in_doubt());
  if (absl::Status refusal = CheckInsertDepth(*unit); !refusal.ok()) {
    BackoutLocked(unit, qmgr::v1::BACKOUT_QUEUE_FULL);
    return refusal;
  }
  // The record, when anything in the unit is (or becomes) recoverable.
  std::vector<std::pair<std::string, uint64_t>> hardened;  // session, input number
  LogRecord& record = ScratchRecord(syncpoint_record_);
  log::Lsn lsn = log::kNoLsn;
  if (FillUnitRecord(*unit, record.mutable_syncpoint(), &hardened)) {
    absl::StatusOr<log::Lsn> appended = AppendScratch(record);
    if (!appended.ok()) return appended.status();
    lsn = *appended;
  }
  const log::Lsn wait_lsn = lsn != log::kNoLsn ? lsn : unit->reserve_lsn;
  ApplyCommit(unit, lsn, hardened, result, consumed);
  return wait_lsn;
}

void Engine::ApplyCommit(Unit* unit, log::Lsn lsn,
                         const std::vector<std::pair<std::string, uint64_t>>& hardened,
                         SyncPointResult* result, Consumed* consumed) {
  std::vector<std::pair<std::string, uint64_t>> replied;  // session, reply message id
  for (auto& message : unit->inserted) {
    Queue* queue = queues_.at(message->m.queue()).get();
    if (!queue->attributes.output_of_session().empty()) {
      replied.emplace_back(queue->attributes.output_of_session(), message->m.id());
    }
    message->logged = message->m.class_() != qmgr::v1::IRRECOVERABLE;
    ++queue->traffic_of(*message).enqueued;
    MakeVisible(queue, std::move(message), /*at_head=*/false);
  }
  for (auto& message : unit->taken) {
    Queue* queue = message->taken_from;
    assert(queue != nullptr && "a queue with taken messages is never deleted");
    --queue->taken;
    ++queue->traffic_of(*message).committed;
    Retire(*message);
    // Freed by the caller after the latch is released.
    message->Uncharge();
    consumed->push_back(std::move(message));
  }
  for (const auto& [name, seq] : hardened) {
    Session& session = SessionNamed(name);
    session.in_seq = std::max(session.in_seq, seq);
    MarkSessionChanged(name, session, lsn);
    // Response mode: the terminal waits for the reply. Without one the input
    // is done at its sync point; with one, when the reply is acknowledged.
    auto reply =
        std::find_if(replied.begin(), replied.end(),
                     [&session_name = name](const auto& r) { return r.first == session_name; });
    if (session.outstanding_seq == seq) {
      if (reply == replied.end()) {
        session.outstanding_seq = 0;
      } else {
        session.awaited_reply = reply->second;
      }
    }
  }
  result->lsn = lsn;
  result->consumed = unit->taken.size();
  result->inserted = unit->inserted.size();
  ++units_committed_;
  EndUnit(unit->id);
}

absl::StatusOr<SyncPointResult> Engine::SyncPoint(UowId uow) {
  SyncPointResult result;
  log::Lsn wait_lsn = log::kNoLsn;
  Consumed consumed;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = CheckOpen(); !s.ok()) return s;
    absl::StatusOr<Unit*> unit = FindUnit(uow, options_.clock->Now());
    if (!unit.ok()) return unit.status();
    if (absl::Status s = CheckNotWaiting(**unit); !s.ok()) return s;
    if (absl::Status s = CheckNotCoordinated(uow, (*unit)->coordinated_key); !s.ok()) return s;
    absl::StatusOr<log::Lsn> lsn = CommitLocked(*unit, &result, &consumed);
    if (!lsn.ok()) return lsn.status();
    wait_lsn = *lsn;
  }
  if (wait_lsn != log::kNoLsn) {
    if (absl::Status s = WaitDurable(wait_lsn); !s.ok()) return s;
  }
  return result;
}

void Engine::BackoutLocked(Unit* unit, qmgr::v1::BackoutReason reason) {
  LogRecord record;
  qmgr::v1::BackoutRecord* backout = record.mutable_backout();
  backout->set_uow_id(unit->id);
  backout->set_reason(reason);
  for (const auto& message : unit->taken) {
    message->m.set_backout_count(message->m.backout_count() + 1);
    if (message->logged) {
      backout->add_message_ids(message->m.id());
      backout->add_backout_counts(message->m.backout_count());
    }
  }
  // No wait: a lost BACKOUT leaves the unit without outcome, and restart
  // backs it out the same way.
  if (unit->messages() > 0) {
    log_->Append(record).IgnoreError();
    ++units_backed_out_;
  }

  std::vector<std::unique_ptr<Message>> returning;
  for (auto& message : unit->taken) {
    Queue* queue = message->taken_from;
    assert(queue != nullptr && "a queue with taken messages is never deleted");
    --queue->taken;
    ++queue->traffic_of(*message).backed_out;
    const uint32_t threshold = queue->attributes.backout_threshold();
    auto to = queues_.find(queue->attributes.backout_queue());
    if (threshold > 0 && message->m.backout_count() >= threshold && to != queues_.end()) {
      if (message->logged) {
        LogRecord move;
        qmgr::v1::BackoutMoveRecord* m = move.mutable_backout_move();
        m->set_message_id(message->m.id());
        m->set_from_queue(queue->name);
        m->set_to_queue(to->first);
        m->set_backout_count(message->m.backout_count());
        log_->Append(move).IgnoreError();
      }
      message->m.set_queue(to->first);
      ++to->second->backout_moved_in;
      MakeVisible(to->second.get(), std::move(message), /*at_head=*/false);
    } else {
      returning.push_back(std::move(message));
    }
  }
  // Back to the head of their queues, in the order they were taken.
  for (auto it = returning.rbegin(); it != returning.rend(); ++it) {
    Queue* queue = (*it)->taken_from;
    MakeVisible(queue, std::move(*it), /*at_head=*/true);
  }
  EndUnit(unit->id);
}

absl::Status Engine::Backout(UowId uow, qmgr::v1::BackoutReason reason) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  absl::StatusOr<Unit*> unit = FindUnit(uow, options_.clock->Now());
  if (!unit.ok()) return unit.status();
  if (absl::Status s = CheckNotWaiting(**unit); !s.ok()) return s;
  BackoutLocked(*unit, reason);
  return absl::OkStatus();
}

int Engine::ReapIdleUnits() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = options_.clock->Now();
  // Oldest first (units_ is in id order): the messages of units reaped
  // together return to the heads of their queues in an order that one run
  // repeats.
  std::vector<Unit*> idle;
  for (const auto& [id, unit] : units_) {
    if (!unit->in_use() && !unit->exempt && now - unit->last_used > options_.unit_idle_timeout) {
      idle.push_back(unit.get());
    }
  }
  for (Unit* unit : idle) BackoutLocked(unit, qmgr::v1::BACKOUT_IDLE_TIMEOUT);
  return static_cast<int>(idle.size());
}

absl::Status Engine::ExemptFromIdleTimeout(UowId uow) {
  absl::MutexLock lock(&mu_);
  auto it = units_.find(uow);
  if (it == units_.end()) {
    return absl::NotFoundError(absl::StrCat("unit of work ", uow, " is not open"));
  }
  it->second->exempt = true;
  return absl::OkStatus();
}

absl::Status Engine::CheckOpen() const {
  if (!quiesced_) return absl::OkStatus();
  return absl::UnavailableError("the queue manager is shutting down");
}

bool Engine::NoGetWaiting() const {
  return receivers_waiting_ == 0 && std::all_of(units_.begin(), units_.end(), [](const auto& unit) {
           return !unit.second->in_use();
         });
}

int Engine::Quiesce(qmgr::v1::BackoutReason reason) {
  int backed_out = 0;
  {
    absl::MutexLock lock(&mu_);
    quiesced_ = true;
    stopping_ = true;
    CloseIdleSessions();
    for (const auto& [name, queue] : queues_) queue->available.SignalAll();
    // Answers being copied end without the latch, which is what wakes an
    // Await: look again every millisecond.
    while (!mu_.AwaitWithTimeout(absl::Condition(this, &Engine::NoGetWaiting),
                                 absl::Milliseconds(1))) {
    }
    std::vector<Unit*> open;
    for (const auto& [id, unit] : units_) {
      if (!unit->in_doubt()) open.push_back(unit.get());  // in doubt: kept for its coordinator
    }
    for (Unit* unit : open) BackoutLocked(unit, reason);
    backed_out = static_cast<int>(open.size());
  }
  if (reaper_.joinable()) reaper_.join();
  return backed_out;
}

void Engine::ReaperLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.reaper_interval);
      if (stopping_) return;
    }
    ReapIdleUnits();
  }
}

namespace {
int64_t ThreadCpuNanos() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}
}  // namespace

log::Lsn Engine::DurableLsn() const { return log_->DurableLsn(); }

absl::Status Engine::WaitDurable(log::Lsn lsn) {
  // Most waits of unlogged messages are for an id reservation made long ago;
  // the log answers those without its mutex.
  if (!options_.measure_wait_cpu || log_->DurableLsn() > lsn) return log_->WaitDurable(lsn);
  const int64_t start = ThreadCpuNanos();
  absl::Status status = log_->WaitDurable(lsn);
  wait_cpu_nanos_.fetch_add(ThreadCpuNanos() - start, std::memory_order_relaxed);
  return status;
}

// ---- Checkpoint and restart -------------------------------------------------

void Engine::Restore(RestoredState restored) {
  next_uow_ = std::max<UowId>(next_uow_, restored.next_uow);
  absl::flat_hash_map<UowId, std::vector<std::unique_ptr<Message>>> held;  // by units in doubt
  for (RestoredQueue& rq : restored.queues) {
    auto queue = std::make_shared<Queue>();
    queue->name = rq.name;
    queue->attributes = rq.attributes;
    queue->rates = QueueRates(options_.clock->NowMicros());
    if (rq.changed) changed_queues_.insert(rq.name);
    if (!rq.messages.empty()) {
      queue->next_head = rq.messages.front().position;
      queue->next_tail = rq.messages.back().position + 1;
    }
    for (RestoredMessage& rm : rq.messages) {
      assert(rm.position >= queue->next_head && rm.position < queue->next_tail);
      const UowId taken_by = rm.taken_by;
      auto message = std::make_unique<Message>();
      if (rm.payload_in_store && rm.message.payload().empty()) {
        assert(options_.stored_payloads != nullptr);
        message->in_store = true;
      } else {
        message->payload =
            std::make_shared<const std::string>(std::move(*rm.message.mutable_payload()));
        message->Charge(&payload_bytes_);
      }
      rm.message.clear_payload();
      message->m = std::move(rm.message);
      message->logged = true;
      message->position = rm.position;
      message->stored = rm.stored;
      message->payload_in_store = rm.payload_in_store;
      if (rm.changed || !rm.stored) MarkChanged(message.get());
      if (!message->in_store && options_.spill != nullptr && options_.memory_budget_bytes > 0 &&
          payload_bytes_ > options_.memory_budget_bytes) {
        Spill(message.get());
      }
      if (taken_by != 0) {
        // Held by a unit in doubt (restored below).
        message->taken_by = taken_by;
        message->taken_from = queue.get();
        ++queue->taken;
        held[taken_by].push_back(std::move(message));
        continue;
      }
      queue->visible.push_back(std::move(message));
    }
    queues_[rq.name] = std::move(queue);
  }
  changed_coordinated_.insert(restored.forgotten.begin(), restored.forgotten.end());
  for (RestoredCoordinatedUnit& rc : restored.coordinated) {
    const std::string key = CoordinatedStoreKey(rc.key);
    if (rc.changed) changed_coordinated_.insert(key);
    if (!rc.unit.has_prepared()) {
      remembered_[key] = Remembered{rc.unit.outcome(), rc.unit.decided_by(), rc.unit.heuristic()};
      continue;
    }
    const qmgr::v1::PrepareRecord& prepared = rc.unit.prepared();
    auto unit = std::make_unique<Unit>();
    unit->id = prepared.uow_id();
    unit->begun = unit->last_used = options_.clock->Now();
    unit->exempt = true;
    unit->coordinated_key = key;
    unit->prepared_time_us = rc.unit.prepared_time_us();
    unit->taken = std::move(held[unit->id]);
    held.erase(unit->id);
    for (const qmgr::v1::Message& m : prepared.inserted()) {
      auto message = std::make_unique<Message>();
      message->m = m;
      message->payload = std::make_shared<const std::string>(m.payload());
      message->m.clear_payload();
      message->logged = true;
      message->Charge(&payload_bytes_);
      unit->inserted.push_back(std::move(message));
    }
    for (const qmgr::v1::Message& m : prepared.deferred_inputs()) {
      // Deferred inputs the unit took: restored as taken, not from a queue.
      auto message = std::make_unique<Message>();
      message->m = m;
      message->payload = std::make_shared<const std::string>(m.payload());
      message->m.clear_payload();
      message->taken_by = unit->id;
      message->Charge(&payload_bytes_);
      if (auto q = queues_.find(m.queue()); q != queues_.end()) {
        ++q->second->taken;
        message->taken_from = q->second.get();
      }
      unit->taken.push_back(std::move(message));
    }
    unit->prepared = std::make_shared<const qmgr::v1::PrepareRecord>(std::move(prepared));
    coordinated_[key] = unit->id;
    next_uow_ = std::max(next_uow_, unit->id + 1);
    units_[unit->id] = std::move(unit);
  }
  assert(held.empty() && "every held message belongs to a unit in doubt");
  for (const auto& [name, image] : restored.sessions) {
    Session& session = SessionNamed(name);
    session.in_seq = image.in_seq();
    session.out_seq = image.out_seq();
    session.out_message_id = image.out_message_id();
    session.closed = image.closed();
    session.reassigned = image.reassigned();
    session.opened_time_us = image.opened_time_us();
    session.closed_time_us = image.closed_time_us();
    if (image.output_acknowledged()) continue;
    // The output sent before the crash waits for its acknowledgement again.
    Queue* output = OutputQueueOf(name);
    if (output == nullptr) continue;
    auto sent =
        std::find_if(output->visible.begin(), output->visible.end(),
                     [id = image.out_message_id()](const auto& m) { return m->m.id() == id; });
    if (sent == output->visible.end()) continue;
    session.output_acked = false;
    session.sent = std::move(*sent);
    output->visible.erase(sent);
    ++output->taken;
  }
  changed_sessions_.insert(restored.changed_sessions.begin(), restored.changed_sessions.end());
  deleted_messages_ = std::move(restored.deleted_messages);
  deleted_queues_.insert(restored.deleted_queues.begin(), restored.deleted_queues.end());
}

CheckpointDelta Engine::BeginCheckpoint() {
  absl::MutexLock lock(&mu_);
  assert(!checkpointing_ && "one checkpoint at a time");
  checkpointing_ = true;
  CheckpointDelta delta;
  delta.redo_lsn = log_->NextLsn();
  delta.first_free_id = std::max(block_end_, next_block_end_);
  delta.next_uow = next_uow_;
  delta.messages.reserve(changed_messages_.size());
  for (const auto& [id, message] : changed_messages_) {
    CheckpointDelta::MessageImage& out = delta.messages.emplace_back();
    *out.image.mutable_message() = message->m;
    out.image.set_position(message->position);
    out.image.set_taken_by_uow(message->taken_by);
    if (!message->payload_in_store) {
      if (message->spilled) {
        out.payload_in_spill = true;
      } else {
        out.payload = message->payload;
      }
      message->payload_in_store = true;
    }
    message->stored = true;
  }
  changed_messages_.clear();
  delta.deleted_messages = std::move(deleted_messages_);
  deleted_messages_.clear();
  for (const std::string& name : changed_queues_) {
    delta.queues.emplace_back(name, queues_.at(name)->attributes);
  }
  changed_queues_.clear();
  delta.deleted_queues.assign(deleted_queues_.begin(), deleted_queues_.end());
  deleted_queues_.clear();
  for (const std::string& name : changed_sessions_) {
    delta.sessions.emplace_back(name, ImageOf(*sessions_.at(name)));
  }
  for (const std::string& key : changed_coordinated_) {
    qmgr::v1::StoredCoordinatedUnit image;
    if (auto open = coordinated_.find(key);
        open != coordinated_.end() && units_.at(open->second)->in_doubt()) {
      const Unit& unit = *units_.at(open->second);
      *image.mutable_prepared() = *unit.prepared;
      image.set_prepared_time_us(unit.prepared_time_us);
    } else if (auto remembered = remembered_.find(key); remembered != remembered_.end()) {
      image.set_outcome(remembered->second.outcome);
      image.set_decided_by(remembered->second.decided_by);
      image.set_heuristic(remembered->second.heuristic);
    } else {
      delta.forgotten.push_back(key);
      continue;
    }
    delta.coordinated.emplace_back(key, std::move(image));
  }
  changed_coordinated_.clear();
  changed_sessions_.clear();
  return delta;
}

void Engine::EndCheckpoint() {
  absl::MutexLock lock(&mu_);
  assert(checkpointing_);
  checkpointing_ = false;
  for (const uint64_t id : deferred_spill_drops_) options_.spill->Delete(id).IgnoreError();
  deferred_spill_drops_.clear();
}

std::vector<OpenUnit> Engine::OpenUnits() const {
  const absl::Time now = options_.clock->Now();
  absl::MutexLock lock(&mu_);
  const log::Lsn next_lsn = log_->NextLsn();
  std::vector<OpenUnit> out;
  for (const auto& [id, unit] : units_) {
    OpenUnit& o = out.emplace_back();
    o.id = id;
    o.age = now - unit->begun;
    o.idle = now - unit->last_used;
    o.messages = unit->messages();
    o.first_lsn = unit->first_lsn;
    if (unit->first_lsn != log::kNoLsn && next_lsn > unit->first_lsn) {
      o.log_bytes_since_first = next_lsn - unit->first_lsn;
    }
    o.in_doubt = unit->in_doubt();
    if (!unit->coordinated_key.empty()) {
      absl::StatusOr<CoordinatedKey> key = ParseCoordinatedStoreKey(unit->coordinated_key);
      if (key.ok()) o.coordinated = *std::move(key);
    }
  }
  std::sort(out.begin(), out.end(),
            [](const OpenUnit& a, const OpenUnit& b) { return a.age > b.age; });
  return out;
}

uint64_t Engine::SessionInSeq(const std::string& session) const {
  absl::MutexLock lock(&mu_);
  const Session* found = FindSession(session);
  return found == nullptr ? 0 : found->in_seq;
}

uint64_t Engine::next_free_id() const {
  absl::MutexLock lock(&mu_);
  return next_id_;
}

}  // namespace qmgr
