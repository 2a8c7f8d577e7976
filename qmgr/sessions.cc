// Sessions: resynchronization (BIND / STSN / SDT / RQR / CLEAR / UNBIND) and
// confirmed output delivery. docs/sessions.md is the contract; its tables are
// the two Stsn* functions below, and qmgr's session_table_test checks them
// row by row.
#include <algorithm>
#include <cassert>

#include "absl/strings/str_cat.h"
#include "qmgr/engine.h"
#include "qmgr/engine_internal.h"

namespace qmgr {

using qmgr::v1::LogRecord;
using qmgr::v1::StsnAction;

namespace {

absl::Status CheckSessionName(const std::string& name) {
  if (IsValidQueueName(name)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("session name '", name, "' must be 1..48 characters of [A-Za-z0-9._-]"));
}

absl::Status CheckAction(StsnAction action, absl::string_view flow) {
  if (qmgr::v1::StsnAction_IsValid(action)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("STSN action ", action, " for the ", flow, " flow is unknown"));
}

}  // namespace

// ---- Lookups ------------------------------------------------------------------

Engine::Session* Engine::FindSession(const std::string& name) const {
  auto it = sessions_.find(name);
  return it == sessions_.end() ? nullptr : it->second.get();
}

Engine::Session& Engine::SessionNamed(const std::string& name) {
  std::unique_ptr<Session>& session = sessions_[name];
  if (session == nullptr) session = std::make_unique<Session>();
  return *session;
}

Engine::Queue* Engine::OutputQueueOf(const std::string& session) const {
  for (const auto& [name, queue] : queues_) {
    if (queue->attributes.output_of_session() == session) return queue.get();
  }
  return nullptr;
}

absl::StatusOr<Engine::Session*> Engine::BoundSession(const std::string& name, bool data_traffic) {
  if (absl::Status s = CheckSessionName(name); !s.ok()) return s;
  Session* session = FindSession(name);
  if (session == nullptr || !session->bound) {
    return WithReason(absl::FailedPreconditionError(
                          absl::StrCat("session '", name, "' is not open: OpenSession first")),
                      reason::kSessionNotOpen);
  }
  if (data_traffic && !session->data_traffic) {
    return WithReason(
        absl::FailedPreconditionError(absl::StrCat(
            "session '", name, "' needs resynchronization: STSN, then StartDataTraffic")),
        reason::kResyncRequired);
  }
  return session;
}

void Engine::MarkSessionChanged(const std::string& name, Session& session, log::Lsn lsn) {
  changed_sessions_.insert(name);
  if (lsn != log::kNoLsn) session.last_lsn = std::max(session.last_lsn, lsn);
}

qmgr::v1::StoredSession Engine::ImageOf(const Session& session) const {
  qmgr::v1::StoredSession image;
  image.set_in_seq(session.in_seq);
  image.set_out_seq(session.out_seq);
  image.set_out_message_id(session.out_message_id);
  image.set_output_acknowledged(session.output_acked);
  image.set_closed(session.closed);
  image.set_reassigned(session.reassigned);
  image.set_opened_time_us(session.opened_time_us);
  image.set_closed_time_us(session.closed_time_us);
  return image;
}

// ---- BIND, SDT, RQR, CLEAR, UNBIND ----------------------------------------------

absl::StatusOr<bool> Engine::OpenSession(const std::string& name, bool cold) {
  absl::StatusOr<SessionBinding> binding =
      BindSession(name, cold, /*client=*/"", /*may_take_over_others=*/true);
  if (!binding.ok()) return binding.status();
  return binding->resync_required;
}

absl::StatusOr<SessionBinding> Engine::BindSession(const std::string& name, bool cold,
                                                   const std::string& client,
                                                   bool may_take_over_others) {
  if (absl::Status s = CheckSessionName(name); !s.ok()) return s;
  absl::StatusOr<log::Lsn> lsn;
  SessionBinding binding;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = CheckOpen(); !s.ok()) return s;
    const bool known = FindSession(name) != nullptr;
    Session& session = SessionNamed(name);
    if (session.bound) {
      if (session.client != client && !may_take_over_others) {
        return WithReason(absl::FailedPreconditionError(absl::StrCat(
                              "session '", name, "' is bound by another client ('", session.client,
                              "'): only that client, or an administrator, can take it over")),
                          reason::kSessionBound);
      }
      binding.superseded_client = session.client;
    }
    // A client that lost its numbers must agree on them (SET) whatever the
    // session's last record says.
    binding.resync_required = cold || (known && !session.closed);
    LogRecord record;
    record.mutable_session_open()->set_session(name);
    record.mutable_session_open()->set_cold(cold);
    const int64_t now_us = options_.clock->NowMicros();
    record.mutable_session_open()->set_time_us(now_us);
    lsn = log_->Append(record);
    if (!lsn.ok()) return lsn.status();
    session.closed = false;
    session.opened_time_us = now_us;
    session.bound = true;
    session.client = client;
    session.cold = cold;
    ++session.binding;
    session.data_traffic = !binding.resync_required;
    if (session.data_traffic) ++session.traffic_epoch;
    session.input_agreed = session.output_agreed = !binding.resync_required;
    if (cold && session.sent != nullptr) {
      session.sent->m.set_possible_duplicate(true);
      MarkChanged(session.sent.get());
    }
    MarkSessionChanged(name, session, *lsn);
    if (Queue* output = OutputQueueOf(name)) output->available.SignalAll();
  }
  if (absl::Status s = WaitDurable(*lsn); !s.ok()) return s;
  return binding;
}

std::optional<std::string> Engine::SessionClient(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  const Session* session = FindSession(name);
  if (session == nullptr || !session->bound) return std::nullopt;
  return session->client;
}

absl::Status Engine::StartDataTraffic(const std::string& name) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  absl::StatusOr<Session*> session = BoundSession(name, /*data_traffic=*/false);
  if (!session.ok()) return session.status();
  Session& s = **session;
  if (!s.input_agreed || !s.output_agreed) {
    return WithReason(absl::FailedPreconditionError(absl::StrCat(
                          "session '", name, "': STSN has not agreed on the ",
                          !s.input_agreed && !s.output_agreed ? "input and output flows"
                          : !s.input_agreed                   ? "input flow"
                                                              : "output flow")),
                      reason::kResyncRequired);
  }
  s.data_traffic = true;
  ++s.traffic_epoch;
  s.cold = false;
  if (Queue* output = OutputQueueOf(name)) output->available.SignalAll();
  return absl::OkStatus();
}

absl::Status Engine::RequestRecovery(const std::string& name) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  absl::StatusOr<Session*> session = BoundSession(name, /*data_traffic=*/false);
  if (!session.ok()) return session.status();
  (*session)->data_traffic = false;
  (*session)->input_agreed = (*session)->output_agreed = false;
  if (Queue* output = OutputQueueOf(name)) output->available.SignalAll();
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Engine::Clear(const std::string& name) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  absl::StatusOr<Session*> session = BoundSession(name, /*data_traffic=*/false);
  if (!session.ok()) return session.status();
  Session& s = **session;
  // Input not yet hardened: deferred inputs no unit has taken (a unit that
  // took one decides its fate at its sync point).
  uint64_t discarded = 0;
  for (const auto& [queue_name, queue] : queues_) {
    auto& visible = queue->visible;
    for (auto it = visible.begin(); it != visible.end();) {
      const Message& m = **it;
      if (!m.logged && IsDeferred(m.m.class_()) && m.m.origin_session() == name) {
        if (m.spilled) DropSpilled(m);
        ForgetDeferredInput(m);
        Retire(m);
        it = visible.erase(it);
        ++discarded;
      } else {
        ++it;
      }
    }
  }
  ++s.binding;
  s.data_traffic = false;
  s.input_agreed = s.output_agreed = false;
  if (Queue* output = OutputQueueOf(name)) output->available.SignalAll();
  return discarded;
}

absl::Status Engine::CloseSession(const std::string& name) {
  absl::StatusOr<log::Lsn> lsn;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = CheckOpen(); !s.ok()) return s;
    absl::StatusOr<Session*> session = BoundSession(name, /*data_traffic=*/false);
    if (!session.ok()) return session.status();
    Session& s = **session;
    if (s.sent != nullptr) {
      return WithReason(absl::FailedPreconditionError(
                            absl::StrCat("session '", name, "' has output ", s.out_seq,
                                         " (message ", s.out_message_id, ") unacknowledged")),
                        reason::kOutputUnacknowledged);
    }
    if (s.outstanding_seq != 0) {
      return WithReason(absl::FailedPreconditionError(absl::StrCat(
                            "session '", name, "' has input ", s.outstanding_seq, " outstanding")),
                        reason::kResponseOutstanding);
    }
    LogRecord record;
    record.mutable_session_close()->set_session(name);
    const int64_t now_us = options_.clock->NowMicros();
    record.mutable_session_close()->set_time_us(now_us);
    lsn = log_->Append(record);
    if (!lsn.ok()) return lsn.status();
    s.closed = true;
    s.closed_time_us = now_us;
    s.bound = s.data_traffic = false;
    ++s.binding;
    MarkSessionChanged(name, s, *lsn);
    if (Queue* output = OutputQueueOf(name)) output->available.SignalAll();
  }
  return WaitDurable(*lsn);
}

void Engine::CloseIdleSessions() {
  for (auto& [name, session] : sessions_) {
    if (!session->bound || session->sent != nullptr || session->outstanding_seq != 0) continue;
    LogRecord record;
    record.mutable_session_close()->set_session(name);
    const int64_t now_us = options_.clock->NowMicros();
    record.mutable_session_close()->set_time_us(now_us);
    // No wait: the shutdown checkpoint and SHUTDOWN record come after it.
    absl::StatusOr<log::Lsn> lsn = log_->Append(record);
    if (!lsn.ok()) continue;  // it stays open: it resynchronizes after the restart
    session->closed = true;
    session->closed_time_us = now_us;
    session->bound = session->data_traffic = false;
    ++session->binding;
    MarkSessionChanged(name, *session, *lsn);
  }
}

// ---- STSN -----------------------------------------------------------------------

absl::StatusOr<StsnAnswer> Engine::SetAndTestSequenceNumbers(const std::string& name,
                                                             const StsnRequest& request) {
  const StsnAction in_action = request.input.action();
  const StsnAction out_action = request.output.action();
  if (absl::Status s = CheckAction(in_action, "input"); !s.ok()) return s;
  if (absl::Status s = CheckAction(out_action, "output"); !s.ok()) return s;
  StsnAnswer answer;
  log::Lsn wait_lsn = log::kNoLsn;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = CheckOpen(); !s.ok()) return s;
    absl::StatusOr<Session*> session = BoundSession(name, /*data_traffic=*/false);
    if (!session.ok()) return session.status();
    Session& s = **session;
    if (s.data_traffic) {
      return absl::FailedPreconditionError(absl::StrCat(
          "session '", name, "' is in data traffic: RequestRecovery or Clear before STSN"));
    }
    // Refusals first, so that a refused STSN changes nothing.
    const bool set_allowed = s.cold || request.by_admin;
    for (const StsnAction action : {in_action, out_action}) {
      if (action == qmgr::v1::SET && !set_allowed) {
        return absl::FailedPreconditionError(
            absl::StrCat("STSN SET on session '", name,
                         "' needs a cold OpenSession or an administrator: use SET_AND_TEST"));
      }
    }
    if (in_action == qmgr::v1::SET && s.outstanding_seq != 0) {
      return WithReason(
          absl::FailedPreconditionError(absl::StrCat("STSN SET on session '", name, "': input ",
                                                     s.outstanding_seq, " is outstanding")),
          reason::kResponseOutstanding);
    }

    LogRecord seq_record;  // SESSION_SEQ, when a flow is set or moved back
    bool log_seq = false;
    qmgr::v1::SessionSeqRecord* seq = seq_record.mutable_session_seq();
    seq->set_session(name);
    seq->set_set_by_admin(request.by_admin);

    // Input flow (docs/sessions.md, first table).
    qmgr::v1::InputFlowAnswer& in = answer.input;
    const uint64_t client_in = request.input.last_sent();
    const uint64_t held = std::max(s.in_seq, s.outstanding_seq);
    switch (in_action) {
      case qmgr::v1::SENSE:
        in.set_result(qmgr::v1::SENSED);
        break;
      case qmgr::v1::SET_AND_TEST:
        if (client_in >= held) {
          in.set_result(qmgr::v1::TEST_POSITIVE);
          s.input_agreed = true;
          if (client_in > held) {
            in.set_resend_from(held + 1);
            in.set_resend_to(client_in);
          }
        } else {
          in.set_result(qmgr::v1::TEST_NEGATIVE);
          s.input_agreed = false;
        }
        break;
      case qmgr::v1::SET:
        if (client_in > s.in_seq) {
          seq->set_skipped_from(s.in_seq + 1);
          seq->set_skipped_to(client_in);
        }
        s.in_seq = client_in;
        log_seq = true;
        in.set_result(qmgr::v1::SET_DONE);
        s.input_agreed = true;
        break;
      default:
        in.set_result(qmgr::v1::IGNORED);
        s.input_agreed = true;
        break;
    }

    // Output flow (docs/sessions.md, second table).
    qmgr::v1::OutputFlowAnswer& out = answer.output;
    const uint64_t client_out = request.output.last_secured();
    const uint64_t client_id = request.output.last_secured_message_id();
    const bool outstanding = s.sent != nullptr;
    out.set_outcome(outstanding ? qmgr::v1::STILL_UNACKNOWLEDGED : qmgr::v1::NO_OUTPUT_OUTSTANDING);
    switch (out_action) {
      case qmgr::v1::SENSE:
        out.set_result(qmgr::v1::SENSED);
        break;
      case qmgr::v1::SET_AND_TEST: {
        Queue* output = OutputQueueOf(name);
        const Message* head =
            output != nullptr && !output->visible.empty() ? output->visible.front().get() : nullptr;
        out.set_result(qmgr::v1::TEST_POSITIVE);
        s.output_agreed = true;
        if (s.reassigned) {
          out.set_outcome(qmgr::v1::REASSIGNED);
          s.reassigned = false;
          MarkSessionChanged(name, s, log::kNoLsn);
        } else if (client_out == s.out_seq && outstanding &&
                   (client_id == 0 || client_id == s.out_message_id)) {
          log::Lsn acked = log::kNoLsn;
          absl::StatusOr<bool> done = AcknowledgeLocked(name, s, s.out_seq, true, 0, &acked);
          if (!done.ok()) return done.status();
          wait_lsn = acked;
          out.set_outcome(qmgr::v1::DELIVERED);
        } else if (client_out == s.out_seq && !outstanding) {
          // Agreed: nothing outstanding.
        } else if (outstanding && client_out + 1 == s.out_seq) {
          // The client never secured the last output: it is sent again with
          // the same number.
          s.out_seq = client_out;
          s.out_message_id = client_id;
          ReturnSentOutput(s, output, /*at_head=*/true);
          log_seq = true;
          out.set_outcome(qmgr::v1::WILL_RESEND);
        } else if (!outstanding && client_out == s.out_seq + 1 && head != nullptr &&
                   client_id == head->m.id() && head->m.class_() != qmgr::v1::IRRECOVERABLE) {
          // OUTPUT_SENT was lost in a crash: the message id recognises it.
          s.sent = std::move(output->visible.front());
          output->visible.pop_front();
          ++output->taken;
          s.out_seq = client_out;
          s.out_message_id = client_id;
          s.output_acked = false;
          log::Lsn acked = log::kNoLsn;
          absl::StatusOr<bool> done = AcknowledgeLocked(name, s, s.out_seq, true, 0, &acked);
          if (!done.ok()) return done.status();
          wait_lsn = acked;
          out.set_outcome(qmgr::v1::DELIVERED);
        } else {
          out.set_result(qmgr::v1::TEST_NEGATIVE);
          s.output_agreed = false;
        }
        break;
      }
      case qmgr::v1::SET:
        if (s.sent != nullptr) {
          s.sent->m.set_possible_duplicate(true);
          ReturnSentOutput(s, OutputQueueOf(name), /*at_head=*/true);
        }
        s.out_seq = client_out;
        s.out_message_id = client_id;
        log_seq = true;
        out.set_result(qmgr::v1::SET_DONE);
        s.output_agreed = true;
        break;
      default:
        out.set_result(qmgr::v1::IGNORED);
        s.output_agreed = true;
        break;
    }
    if (log_seq) {
      seq->set_in_seq(s.in_seq);
      seq->set_out_seq(s.out_seq);
      seq->set_out_message_id(s.out_message_id);
      seq->set_output_outstanding(s.sent != nullptr);
      absl::StatusOr<log::Lsn> lsn = log_->Append(seq_record);
      if (!lsn.ok()) return lsn.status();
      MarkSessionChanged(name, s, *lsn);
    }
    in.set_in_seq(s.in_seq);
    in.set_pending_input(s.outstanding_seq);
    out.set_out_seq(s.out_seq);
    out.set_out_message_id(s.out_message_id);
    out.set_possible_duplicate(s.sent != nullptr && s.sent->m.possible_duplicate());
    // The numbers answered are durable ones: wait for the last record that
    // moved them (an ENQUEUE or SYNCPOINT may still be on its way).
    wait_lsn = wait_lsn == log::kNoLsn ? s.last_lsn : std::max(wait_lsn, s.last_lsn);
  }
  if (wait_lsn != log::kNoLsn && wait_lsn != 0) {
    if (absl::Status st = WaitDurable(wait_lsn); !st.ok()) return st;
  }
  return answer;
}

// ---- Output ---------------------------------------------------------------------

void Engine::ReturnSentOutput(Session& session, Queue* to, bool at_head) {
  assert(session.sent != nullptr);
  std::unique_ptr<Message> message = std::move(session.sent);
  session.output_acked = true;
  auto from = queues_.find(message->m.queue());
  if (from != queues_.end()) --from->second->taken;
  if (to == nullptr) return;  // its queue is gone
  message->m.set_queue(to->name);
  MakeVisible(to, std::move(message), at_head);
}

void Engine::ReplyDone(Session& session, uint64_t message_id) {
  if (session.awaited_reply != 0 && session.awaited_reply == message_id) {
    session.awaited_reply = 0;
    session.outstanding_seq = 0;
  }
}

absl::StatusOr<SessionOutput> Engine::ReceiveOutput(const std::string& name, absl::Duration wait,
                                                    ReceiveCursor* cursor) {
  log::Lsn sent_lsn = log::kNoLsn;
  SessionOutput result;
  std::shared_ptr<const std::string> payload;
  ReceiveCursor one_call;
  if (cursor == nullptr) cursor = &one_call;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = CheckOpen(); !s.ok()) return s;
    if (cursor->binding == 0) {
      absl::StatusOr<Session*> bound = BoundSession(name, /*data_traffic=*/true);
      if (!bound.ok()) return bound.status();
      cursor->binding = (*bound)->binding;
      cursor->epoch = (*bound)->traffic_epoch;
    }
    const absl::Time deadline = absl::Now() + wait;
    Message* message = nullptr;
    Queue* output = nullptr;
    while (true) {
      Session* s = FindSession(name);
      assert(s != nullptr && "sessions are never forgotten");
      if (s->binding != cursor->binding) {
        return absl::AbortedError(
            absl::StrCat("session '", name, "' was rebound, cleared or closed"));
      }
      if (absl::StatusOr<Session*> again = BoundSession(name, true); !again.ok()) {
        return again.status();
      }
      if (s->traffic_epoch != cursor->epoch) {
        return WithReason(absl::FailedPreconditionError(absl::StrCat(
                              "session '", name, "' was resynchronized: receive again")),
                          reason::kResyncRequired);
      }
      const bool answered = s->sent != nullptr && s->out_seq == cursor->sent;
      if (s->sent != nullptr && !answered) {  // answered again, same number
        result.out_seq = s->out_seq;
        result.message = s->sent->m;
        payload = s->sent->payload;
        if (s->sent->unloaded()) {
          absl::StatusOr<std::string> read = ReadUnloaded(*s->sent);
          if (!read.ok()) return read.status();
          payload = std::make_shared<const std::string>(*std::move(read));
        }
        break;
      }
      output = OutputQueueOf(name);
      if (output == nullptr) {
        return absl::FailedPreconditionError(
            absl::StrCat("session '", name,
                         "' has no output queue (a queue with output_of_session '", name, "')"));
      }
      // One output outstanding: the next waits for the acknowledgement.
      if (!answered && !output->attributes.get_inhibited()) {
        message = TakeNext(output, options_.clock->NowMicros());
      }
      if (message != nullptr) break;
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("no output for session '", name, "' within ", absl::FormatDuration(wait)));
      }
      const std::shared_ptr<Queue> waiting_on = queues_.at(output->name);
      ++receivers_waiting_;
      waiting_on->available.WaitWithDeadline(&mu_, deadline);
      --receivers_waiting_;
      if (absl::Status st = CheckOpen(); !st.ok()) return st;
    }
    if (message != nullptr) {
      Session& s = *FindSession(name);
      if (message->unloaded()) {
        if (absl::Status st = Unspill(message); !st.ok()) return st;
      }
      std::unique_ptr<Message> taken = std::move(output->visible.front());
      output->visible.pop_front();
      ++output->traffic_of(*taken).got;
      if (taken->m.class_() == qmgr::v1::IRRECOVERABLE) {
        ++output->traffic_of(*taken).committed;
        // Exception response: done when sent, not numbered, never logged.
        result.exception_response = true;
        result.message = taken->m;
        payload = taken->payload;
        ReplyDone(s, taken->m.id());
        Retire(*taken);
      } else {
        LogRecord record;
        qmgr::v1::OutputSentRecord* sent = record.mutable_output_sent();
        sent->set_session(name);
        sent->set_out_seq(s.out_seq + 1);
        sent->set_message_id(taken->m.id());
        absl::StatusOr<log::Lsn> lsn = log_->Append(record);
        if (!lsn.ok()) {
          output->visible.push_front(std::move(taken));
          return lsn.status();
        }
        sent_lsn = *lsn;
        s.out_seq += 1;
        s.out_message_id = taken->m.id();
        s.output_acked = false;
        result.out_seq = s.out_seq;
        result.message = taken->m;
        payload = taken->payload;
        ++output->taken;
        output->rates.Got(options_.clock->NowMicros());
        s.sent = std::move(taken);
        MarkSessionChanged(name, s, log::kNoLsn);
      }
    }
    if (result.out_seq != 0) cursor->sent = result.out_seq;
  }
  // OUTPUT_SENT is durable before the output leaves: a client that got it
  // and crashed before securing it would otherwise, after a crash that lost
  // the record, get it again unflagged (a silent duplicate). With the record
  // the resync answers WILL_RESEND and the repeat is flagged. The wait is a
  // share of a group commit, off the enqueue path.
  if (sent_lsn != log::kNoLsn) {
    if (absl::Status s = WaitDurable(sent_lsn); !s.ok()) return s;
  }
  if (payload != nullptr) result.message.set_payload(*payload);
  return result;
}

absl::Status Engine::CheckAcknowledge(const std::string& name, const Session& session,
                                      uint64_t out_seq) const {
  if (out_seq == 0) return absl::InvalidArgumentError("output number 0 does not exist");
  if (session.sent != nullptr && out_seq == session.out_seq) return absl::OkStatus();
  // The last acknowledged number again (a retry whose answer was lost) is
  // OK, also once the next output is sent, as a Receive stream does at once.
  const uint64_t last_acked = session.sent != nullptr ? session.out_seq - 1 : session.out_seq;
  if (out_seq == last_acked) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "session '", name, "': output ", out_seq, " is not outstanding (last sent ", session.out_seq,
      session.sent != nullptr ? ", unacknowledged)" : ", acknowledged)"));
}

absl::StatusOr<bool> Engine::AcknowledgeLocked(const std::string& name, Session& session,
                                               uint64_t out_seq, bool positive, uint32_t sense_code,
                                               log::Lsn* lsn) {
  if (absl::Status s = CheckAcknowledge(name, session, out_seq); !s.ok()) return s;
  *lsn = log::kNoLsn;
  if (session.sent == nullptr || out_seq != session.out_seq) return false;  // acknowledged before
  Message& message = *session.sent;
  if (!positive) message.m.set_backout_count(message.m.backout_count() + 1);
  LogRecord record;
  qmgr::v1::OutputAckedRecord* acked = record.mutable_output_acked();
  acked->set_session(name);
  acked->set_out_seq(out_seq);
  acked->set_message_id(message.m.id());
  acked->set_positive(positive);
  acked->set_sense_code(sense_code);
  acked->set_backout_count(message.m.backout_count());
  absl::StatusOr<log::Lsn> appended = log_->Append(record);
  if (!appended.ok()) {
    if (!positive) message.m.set_backout_count(message.m.backout_count() - 1);
    return appended.status();
  }
  *lsn = *appended;
  MarkSessionChanged(name, session, *lsn);
  const uint64_t id = message.m.id();
  if (positive) {
    std::unique_ptr<Message> done = std::move(session.sent);
    session.output_acked = true;
    if (auto queue = queues_.find(done->m.queue()); queue != queues_.end()) {
      --queue->second->taken;
      ++queue->second->traffic_of(*done).committed;
      queue->second->available.SignalAll();  // a receiver waits for this acknowledgement
    }
    if (done->spilled) DropSpilled(*done);
    Retire(*done);
    ReplyDone(session, id);
    return false;
  }
  // Negative: kept, unless its queue's backout threshold moves it away.
  auto from = queues_.find(message.m.queue());
  Queue* queue = from != queues_.end() ? from->second.get() : nullptr;
  const uint32_t threshold = queue != nullptr ? queue->attributes.backout_threshold() : 0;
  auto to = queue != nullptr ? queues_.find(queue->attributes.backout_queue()) : queues_.end();
  if (queue != nullptr) ++queue->traffic_of(message).backed_out;
  if (threshold > 0 && message.m.backout_count() >= threshold && to != queues_.end()) {
    LogRecord move;
    qmgr::v1::BackoutMoveRecord* m = move.mutable_backout_move();
    m->set_message_id(id);
    m->set_from_queue(queue->name);
    m->set_to_queue(to->first);
    m->set_backout_count(message.m.backout_count());
    if (absl::StatusOr<log::Lsn> moved = log_->Append(move); moved.ok()) *lsn = *moved;
    ++to->second->backout_moved_in;
    ReturnSentOutput(session, to->second.get(), /*at_head=*/false);
    ReplyDone(session, id);
    return true;
  }
  ReturnSentOutput(session, queue, /*at_head=*/true);
  return false;
}

absl::StatusOr<bool> Engine::Acknowledge(const std::string& name, uint64_t out_seq, bool positive,
                                         uint32_t sense_code) {
  if (!positive && sense_code == 0) {
    return absl::InvalidArgumentError("a negative acknowledgement needs a nonzero sense code");
  }
  if (positive && sense_code != 0) {
    return absl::InvalidArgumentError("a positive acknowledgement carries no sense code");
  }
  log::Lsn lsn = log::kNoLsn;
  absl::StatusOr<bool> moved;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = CheckOpen(); !s.ok()) return s;
    absl::StatusOr<Session*> session = BoundSession(name, /*data_traffic=*/true);
    if (!session.ok()) return session.status();
    moved = AcknowledgeLocked(name, **session, out_seq, positive, sense_code, &lsn);
    if (moved.ok() && lsn == log::kNoLsn) lsn = (*session)->last_lsn;
  }
  if (!moved.ok()) return moved.status();
  if (lsn != log::kNoLsn && lsn != 0) {
    if (absl::Status s = WaitDurable(lsn); !s.ok()) return s;
  }
  return moved;
}

size_t Engine::OutputsUnacknowledged() const {
  absl::MutexLock lock(&mu_);
  return std::count_if(sessions_.begin(), sessions_.end(),
                       [](const auto& s) { return s.second->sent != nullptr; });
}

// ---- Assign and display --------------------------------------------------------

absl::StatusOr<AssignResult> Engine::Assign(const std::string& from, const std::string& to,
                                            bool force) {
  if (absl::Status s = CheckSessionName(from); !s.ok()) return s;
  if (absl::Status s = CheckSessionName(to); !s.ok()) return s;
  if (from == to) return absl::InvalidArgumentError("Assign needs two different sessions");
  AssignResult result;
  absl::StatusOr<log::Lsn> lsn;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = CheckOpen(); !s.ok()) return s;
    Queue* from_queue = OutputQueueOf(from);
    Queue* to_queue = OutputQueueOf(to);
    for (const auto& [session, queue] : {std::pair{&from, from_queue}, std::pair{&to, to_queue}}) {
      if (queue == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat(
            "session '", *session, "' has no output queue (a queue with output_of_session '",
            *session, "')"));
      }
    }
    Session* source = FindSession(from);
    const bool sent = source != nullptr && source->sent != nullptr;
    if (sent && !force) {
      return WithReason(
          absl::FailedPreconditionError(absl::StrCat(
              "session '", from, "' has output ", source->out_seq, " (message ",
              source->out_message_id,
              ") sent but unacknowledged: resynchronize it first, or force (that message "
              "is then marked possibly duplicate)")),
          reason::kOutputUnacknowledged);
    }
    LogRecord record;
    qmgr::v1::AssignRecord* assign = record.mutable_assign();
    assign->set_from_session(from);
    assign->set_to_session(to);
    assign->set_forced(force);
    if (sent) assign->set_possible_duplicate_message_id(source->sent->m.id());
    lsn = log_->Append(record);
    if (!lsn.ok()) return lsn.status();
    if (sent) {
      result.possible_duplicate_message_id = source->sent->m.id();
      source->sent->m.set_possible_duplicate(true);
      ReplyDone(*source, source->sent->m.id());
      ReturnSentOutput(*source, to_queue, /*at_head=*/false);
      source->reassigned = true;
      ++result.moved;
    }
    if (source != nullptr) MarkSessionChanged(from, *source, *lsn);
    while (!from_queue->visible.empty()) {
      std::unique_ptr<Message> message = std::move(from_queue->visible.front());
      from_queue->visible.pop_front();
      if (source != nullptr) ReplyDone(*source, message->m.id());
      message->m.set_queue(to_queue->name);
      MakeVisible(to_queue, std::move(message), /*at_head=*/false);
      ++result.moved;
    }
  }
  if (absl::Status s = WaitDurable(*lsn); !s.ok()) return s;
  return result;
}

absl::StatusOr<std::vector<qmgr::v1::SessionInfo>> Engine::DisplaySessions(
    const std::vector<std::string>& names) const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> wanted = names;
  if (wanted.empty()) {
    for (const auto& [name, session] : sessions_) wanted.push_back(name);
    std::sort(wanted.begin(), wanted.end());
  }
  std::vector<qmgr::v1::SessionInfo> out;
  for (const std::string& name : wanted) {
    const Session* s = FindSession(name);
    if (s == nullptr) return absl::NotFoundError(absl::StrCat("session '", name, "' is unknown"));
    qmgr::v1::SessionInfo& info = out.emplace_back();
    info.set_name(name);
    info.set_in_seq(s->in_seq);
    info.set_out_seq(s->out_seq);
    info.set_out_message_id(s->out_message_id);
    info.set_output_acknowledged(s->sent == nullptr);
    info.set_resync_required(!s->closed && !s->data_traffic);
    info.set_bound(s->bound);
    info.set_data_traffic(s->data_traffic);
    info.set_pending_input(s->outstanding_seq);
    info.set_opened_time_us(s->opened_time_us);
    info.set_closed_time_us(s->closed_time_us);
    if (const Queue* output = OutputQueueOf(name)) {
      info.set_output_queue(output->name);
      info.set_output_depth(output->visible.size());
    }
  }
  return out;
}

}  // namespace qmgr
