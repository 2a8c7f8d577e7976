#include "client/session.h"

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

bool IsDeferred(v1::MessageClass c) {
  return c == v1::RESPONSE || c == v1::CONVERSATIONAL || c == v1::FASTPATH;
}

// Failures that reconnecting and resynchronizing may cure. CANCELLED: the
// session cancels only its own Receive stream, whose end it ignores, so a
// cancelled call was cancelled by a server going down.
bool Recoverable(const absl::Status& status) {
  if (absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status) || absl::IsAborted(status) ||
      absl::IsCancelled(status)) {
    return true;
  }
  const std::string reason = ReasonOf(status);
  return reason == reason::kSessionNotOpen || reason == reason::kResyncRequired ||
         reason == reason::kSequenceGap;
}

v1::ClientSentInput ToSentInput(const v1::NewMessage& m) {
  v1::ClientSentInput in;
  in.set_class_(m.class_());
  in.set_queue(m.queue());
  in.set_payload(m.payload());
  in.set_correlation_id(m.correlation_id());
  in.set_reply_to(m.reply_to());
  in.set_expiry_time_us(m.expiry_time_us());
  return in;
}

int Milliseconds(absl::Duration d) {
  return static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(d), 1, INT32_MAX));
}

}  // namespace

// ---- Opening and closing ------------------------------------------------------

absl::StatusOr<std::unique_ptr<Session>> Session::Open(SessionOptions options) {
  if (options.fs == nullptr) options.fs = log::PosixFileSystem();
  if (absl::Status s = ChannelCredentialsFor(options.credentials).status(); !s.ok()) return s;
  absl::StatusOr<SessionFile> file = SessionFile::Open(options.file_path, options.name, options.fs);
  if (!file.ok()) return file.status();
  if (options.file_lost && file->existed()) {
    return absl::InvalidArgumentError(
        absl::StrCat("session '", options.name, "': file_lost, but its file ", file->path(),
                     " exists: open it normally, or remove it first"));
  }
  std::unique_ptr<Session> session(new Session(std::move(options), *std::move(file)));
  {
    absl::MutexLock lock(&session->op_mu_);
    if (absl::Status s = session->Recover(nullptr); !s.ok()) return s;
    session->open_report_ = session->last_report_;
  }
  return session;
}

Session::Session(SessionOptions options, SessionFile file)
    : options_(std::move(options)),
      file_(std::move(file)),
      state_(file_.state()),
      cold_(options_.file_lost) {}

Session::~Session() {
  absl::MutexLock lock(&op_mu_);
  StopReceiving();
}

absl::Status Session::Close() {
  absl::MutexLock lock(&op_mu_);
  if (!broken_.ok()) return broken_;
  if (closed_) return absl::OkStatus();
  for (int attempt = 1;; ++attempt) {
    if (!ready_) {
      if (absl::Status s = Recover(nullptr); !s.ok()) return s;
    }
    v1::CloseSessionRequest request;
    request.set_session(options_.name);
    v1::CloseSessionResponse response;
    absl::Status s = FromGrpcStatus(stub_->CloseSession(NewContext().get(), request, &response));
    if (s.ok()) break;
    if (!Recoverable(s) || attempt >= 3) return s;
    ready_ = false;
  }
  StopReceiving();
  ready_ = false;
  closed_ = true;
  return Save();  // writes the inputs forgotten since the last save
}

qmgr::v1::ClientSessionState Session::state() const {
  absl::MutexLock lock(&op_mu_);
  return state_;
}

// ---- Resynchronization --------------------------------------------------------

absl::Status Session::Recover(InFlight* in_flight, bool rebind) {
  if (!broken_.ok()) return broken_;
  ready_ = false;
  StopReceiving();
  pending_.reset();  // an output handed out comes again if it was not secured
  const absl::Time deadline = absl::Now() + options_.reconnect_timeout;
  absl::Duration pause = options_.reconnect_backoff;
  while (true) {
    absl::Status status = Connect(deadline);
    if (status.ok()) status = BindAndResync(in_flight, rebind);
    if (status.ok()) {
      ready_ = true;
      StartReceiving();
      return absl::OkStatus();
    }
    if (!Recoverable(status)) {
      if (broken_.ok()) broken_ = status;
      return status;
    }
    rebind = true;
    if (absl::Now() + pause > deadline) {
      return absl::UnavailableError(
          absl::StrCat("session '", options_.name, "': not resynchronized within ",
                       absl::FormatDuration(options_.reconnect_timeout), ": ", status.message()));
    }
    absl::SleepFor(pause);
    pause = std::min(pause * 2, options_.reconnect_backoff_max);
  }
}

absl::Status Session::Connect(absl::Time deadline) {
  const std::string target = options_.resolve_target ? options_.resolve_target() : options_.target;
  if (channel_ == nullptr || target != target_) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(options_.max_receive_bytes);
    // gRPC's own reconnection backs off up to two minutes by default; a
    // session wants its server back as soon as it listens.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, Milliseconds(options_.reconnect_backoff));
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, Milliseconds(options_.reconnect_backoff));
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, Milliseconds(options_.reconnect_backoff_max));
    // Checked by Open: the credentials' files were readable then.
    absl::StatusOr<std::shared_ptr<grpc::Channel>> made =
        NewChannel(target, options_.credentials, args);
    if (!made.ok()) return made.status();
    channel_ = *std::move(made);
    stub_ = v1::QueueManager::NewStub(channel_);
    target_ = target;
  }
  // Bounded per attempt, so that a target that moved is asked for again;
  // the channel goes on connecting between attempts.
  const absl::Time attempt_deadline =
      std::min(deadline, absl::Now() + options_.reconnect_backoff_max);
  if (!channel_->WaitForConnected(absl::ToChronoTime(attempt_deadline))) {
    return absl::UnavailableError(absl::StrCat("cannot connect to the queue manager at ", target));
  }
  return absl::OkStatus();
}

absl::Status Session::BindAndResync(InFlight* in_flight, bool rebind) {
  const std::string& name = options_.name;
  ResyncReport report;
  report.cold = cold_;
  bool resync_required = true;
  if (rebind) {
    v1::OpenSessionRequest request;
    request.set_session(name);
    request.set_cold(cold_);
    v1::OpenSessionResponse response;
    absl::Status s = FromGrpcStatus(stub_->OpenSession(NewContext().get(), request, &response));
    if (!s.ok()) return s;
    resync_required = response.resync_required();
    accepted_seq_ = 0;
  }
  // The server saw a clean end, but inputs in the file were never seen
  // hardened (a Clear discarded a deferred one, or an answer was lost): the
  // numbers are checked all the same.
  const bool in_doubt = state_.unhardened_inputs_size() > 0;
  if (!resync_required && !in_doubt) {
    if (!file_.existed()) {
      if (absl::Status s = Save(); !s.ok()) return s;
    }
    last_report_ = report;
    if (options_.on_resync) options_.on_resync(report);
    return absl::OkStatus();
  }
  if (!resync_required || !rebind) {
    v1::RequestRecoveryRequest request;
    request.set_session(name);
    v1::RequestRecoveryResponse response;
    absl::Status s = FromGrpcStatus(stub_->RequestRecovery(NewContext().get(), request, &response));
    if (!s.ok()) return s;
  }

  v1::SetAndTestSequenceNumbersRequest request;
  request.set_session(name);
  // Cold: the numbers are lost, so the server's are taken (IGNORE).
  const v1::StsnAction action = cold_ ? v1::IGNORE : v1::SET_AND_TEST;
  request.mutable_input()->set_action(action);
  request.mutable_input()->set_last_sent(state_.last_input_sent());
  request.mutable_output()->set_action(action);
  request.mutable_output()->set_last_secured(state_.last_output_secured());
  request.mutable_output()->set_last_secured_message_id(state_.last_output_secured_message_id());
  v1::SetAndTestSequenceNumbersResponse answer;
  absl::Status s =
      FromGrpcStatus(stub_->SetAndTestSequenceNumbers(NewContext().get(), request, &answer));
  if (!s.ok()) return s;
  const v1::InputFlowAnswer& in = answer.input();
  const v1::OutputFlowAnswer& out = answer.output();
  if (in.result() == v1::TEST_NEGATIVE) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session '", name, "': the server holds input ", std::max(in.in_seq(), in.pending_input()),
        " but this client's file says it sent only ", state_.last_input_sent(),
        ": the file is stale (restored from a copy?) or another client uses the session; "
        "reopen with file_lost to take the server's numbers"));
  }
  if (out.result() == v1::TEST_NEGATIVE) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session '", name, "': this client secured output ", state_.last_output_secured(),
        " (message ", state_.last_output_secured_message_id(), ") but the server's last is ",
        out.out_seq(), " (message ", out.out_message_id(),
        "): the file is stale or another client uses the session; reopen with file_lost "
        "to take the server's numbers (the output in doubt is then flagged possibly "
        "duplicate)"));
  }
  std::vector<v1::ClientSentInput> resend;
  if (s = ApplyInputAnswer(in, in_flight, resend, report); !s.ok()) return s;
  ApplyOutputAnswer(out, report);
  // The new numbering is durable before anything is resent under it.
  if (s = Save(); !s.ok()) return s;

  v1::StartDataTrafficRequest sdt;
  sdt.set_session(name);
  v1::StartDataTrafficResponse sdt_response;
  if (s = FromGrpcStatus(stub_->StartDataTraffic(NewContext().get(), sdt, &sdt_response));
      !s.ok()) {
    return s;
  }
  if (s = Resend(std::move(resend), in_flight, report); !s.ok()) return s;
  cold_ = false;
  report.resynchronized = true;
  last_report_ = report;
  if (options_.on_resync) options_.on_resync(report);
  return absl::OkStatus();
}

absl::Status Session::ApplyInputAnswer(const v1::InputFlowAnswer& answer, InFlight* in_flight,
                                       std::vector<v1::ClientSentInput>& resend,
                                       ResyncReport& report) {
  if (answer.result() != v1::TEST_POSITIVE) {  // IGNORED: cold, nothing of ours is known
    state_.set_last_input_sent(std::max(answer.in_seq(), answer.pending_input()));
    state_.clear_unhardened_inputs();
    return absl::OkStatus();
  }
  for (const v1::ClientSentInput& input : state_.unhardened_inputs()) {
    if (input.input_seq() > answer.in_seq()) break;
    report.hardened_inputs.push_back(input.input_seq());
    if (in_flight != nullptr && in_flight->seq == input.input_seq()) {
      in_flight->outcome =
          Accepted{.input_seq = input.input_seq(), .durable = true, .recovered = true};
    }
  }
  ForgetThrough(answer.in_seq());
  const uint64_t from = answer.resend_from();
  const uint64_t to = answer.resend_to();
  if (from == 0) return absl::OkStatus();
  // Inputs in (in_seq, pending_input] stay: the server holds them. Those
  // in [from, to] are resent or reported for reissue; the resent ones are
  // numbered from `from` on, since the server expects no gap.
  google::protobuf::RepeatedPtrField<v1::ClientSentInput> kept;
  uint64_t next = from;
  uint64_t in_range = 0;
  for (v1::ClientSentInput& input : *state_.mutable_unhardened_inputs()) {
    const uint64_t seq = input.input_seq();
    if (seq < from) {
      *kept.Add() = std::move(input);
      continue;
    }
    if (seq > to) {
      return absl::InternalError(absl::StrCat("session '", options_.name,
                                              "': the file holds input ", seq,
                                              " beyond the last sent, ", to));
    }
    ++in_range;
    const bool is_in_flight = in_flight != nullptr && in_flight->seq == seq;
    // The Send still waiting for its answer resends its input whatever its
    // class: the application has not been told anything about it yet.
    if (IsDeferred(input.class_()) && !is_in_flight) {
      report.reissue_inputs.push_back(std::move(input));
      continue;
    }
    if (is_in_flight) in_flight->seq = next;
    input.set_input_seq(next++);
    resend.push_back(input);
    *kept.Add() = std::move(input);
  }
  if (in_range != to - from + 1) {
    return absl::DataLossError(absl::StrCat(
        "session '", options_.name, "': the server lacks inputs ", from, "..", to,
        " but the session file holds only ", in_range, " of them: they cannot be resent"));
  }
  state_.mutable_unhardened_inputs()->Swap(&kept);
  state_.set_last_input_sent(next - 1);
  return absl::OkStatus();
}

void Session::ApplyOutputAnswer(const v1::OutputFlowAnswer& answer, ResyncReport& report) {
  report.output_outcome = answer.outcome();
  report.output_seq = answer.out_seq();
  report.output_message_id = answer.out_message_id();
  report.output_possible_duplicate = answer.possible_duplicate();
  duplicate_seq_ = 0;
  if (answer.result() == v1::IGNORED && answer.outcome() == v1::STILL_UNACKNOWLEDGED) {
    // Cold: the output outstanding comes again with its number.
    state_.set_last_output_secured(answer.out_seq() - 1);
    state_.set_last_output_secured_message_id(0);
    duplicate_seq_ = answer.out_seq();
    report.output_possible_duplicate = true;
    return;
  }
  // TEST_POSITIVE (or IGNORED with nothing outstanding): the server's
  // numbers are ours now; after REASSIGNED they moved past our last.
  state_.set_last_output_secured(answer.out_seq());
  state_.set_last_output_secured_message_id(answer.out_message_id());
  if (answer.outcome() == v1::WILL_RESEND) {
    // It may have been handed to the application before the failure.
    duplicate_seq_ = answer.out_seq() + 1;
    report.output_possible_duplicate = true;
  }
}

absl::Status Session::Resend(std::vector<v1::ClientSentInput> resend, InFlight* in_flight,
                             ResyncReport& report) {
  for (size_t i = 0; i < resend.size(); ++i) {
    const v1::ClientSentInput& input = resend[i];
    const uint64_t seq = input.input_seq();
    const bool is_in_flight = in_flight != nullptr && in_flight->seq == seq;
    absl::StatusOr<v1::EnqueueResponse> answer = EnqueueCall(input, 0);
    // ALREADY_HARDENED: an earlier attempt of this resynchronization landed.
    if (answer.ok() || ReasonOf(answer.status()) == reason::kAlreadyHardened) {
      accepted_seq_ = std::max(accepted_seq_, seq);
      const bool durable = !answer.ok() || answer->durability() == v1::DURABLE;
      if (durable) ForgetThrough(seq);
      report.resent_inputs.push_back(seq);
      if (is_in_flight) {
        in_flight->outcome = Accepted{.input_seq = seq,
                                      .message_id = answer.ok() ? answer->message_id() : 0,
                                      .durable = durable,
                                      .recovered = true};
      }
      continue;
    }
    if (Recoverable(answer.status())) return answer.status();
    // Refused: its number goes to the inputs after it.
    report.refused_inputs.emplace_back(input, answer.status());
    if (is_in_flight) in_flight->outcome = answer.status();
    auto* inputs = state_.mutable_unhardened_inputs();
    for (int j = 0; j < inputs->size(); ++j) {
      if (inputs->Get(j).input_seq() == seq) {
        inputs->DeleteSubrange(j, 1);
        break;
      }
    }
    for (v1::ClientSentInput& later : *inputs) {
      if (later.input_seq() > seq) later.set_input_seq(later.input_seq() - 1);
    }
    for (size_t j = i + 1; j < resend.size(); ++j) {
      resend[j].set_input_seq(resend[j].input_seq() - 1);
    }
    if (in_flight != nullptr && in_flight->seq > seq) --in_flight->seq;
    state_.set_last_input_sent(state_.last_input_sent() - 1);
    if (absl::Status s = Save(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// ---- Input ----------------------------------------------------------------------

absl::StatusOr<Accepted> Session::Send(v1::NewMessage input, const Output* acknowledge) {
  absl::MutexLock lock(&op_mu_);
  if (!broken_.ok()) return broken_;
  if (closed_) return absl::FailedPreconditionError("the session is closed");
  if (!input.session().empty() && input.session() != options_.name) {
    return absl::InvalidArgumentError(
        absl::StrCat("input names session '", input.session(), "', not '", options_.name, "'"));
  }
  if (input.input_seq() != 0 || input.ack_out_seq() != 0) {
    return absl::InvalidArgumentError("input_seq and ack_out_seq are the session's to set");
  }
  if (input.class_() == v1::MESSAGE_CLASS_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        "session input needs an explicit class: the session resends RECOVERABLE input and "
        "reports deferred input for reissue");
  }
  if (!ready_) {
    if (absl::Status s = Recover(nullptr); !s.ok()) return s;
  }
  // After the readiness check: a resynchronization takes back the output
  // handed out (it comes again).
  if (acknowledge != nullptr && !acknowledge->exception_response &&
      (!pending_ || pending_->first != acknowledge->out_seq ||
       pending_->second != acknowledge->message.id())) {
    return absl::FailedPreconditionError(
        absl::StrCat("output ", acknowledge->out_seq, " is not the one outstanding"));
  }
  const bool numbered = input.class_() != v1::IRRECOVERABLE;
  uint64_t ack_seq = 0;
  if (acknowledge != nullptr && !acknowledge->exception_response) {
    ack_seq = acknowledge->out_seq;
    state_.set_last_output_secured(ack_seq);
    state_.set_last_output_secured_message_id(acknowledge->message.id());
  }
  v1::ClientSentInput record = ToSentInput(input);
  if (numbered) {
    record.set_input_seq(state_.last_input_sent() + 1);
    *state_.add_unhardened_inputs() = record;
    state_.set_last_input_sent(record.input_seq());
  }
  if (numbered || ack_seq != 0) {
    if (absl::Status s = Save(); !s.ok()) return s;
  }
  const uint64_t seq = record.input_seq();

  absl::StatusOr<v1::EnqueueResponse> answer = EnqueueCall(record, ack_seq);
  if (answer.ok()) {
    if (ack_seq != 0) pending_.reset();
    const bool durable = answer->durability() == v1::DURABLE;
    if (numbered) {
      accepted_seq_ = std::max(accepted_seq_, seq);
      if (durable) ForgetThrough(seq);
    }
    return Accepted{.input_seq = seq, .message_id = answer->message_id(), .durable = durable};
  }
  if (Recoverable(answer.status())) {
    // A secured output is confirmed by the resynchronization (DELIVERED).
    if (ack_seq != 0) pending_.reset();
    const bool gap = ReasonOf(answer.status()) == reason::kSequenceGap;
    if (!numbered) {
      // IRRECOVERABLE input is never resent: it may be lost.
      if (absl::Status s = Recover(nullptr, !gap); !s.ok()) return s;
      return answer.status();
    }
    InFlight in_flight{.seq = seq};
    if (absl::Status s = Recover(&in_flight, !gap); !s.ok()) return s;
    if (in_flight.outcome.has_value()) return *std::move(in_flight.outcome);
    // Neither resent nor found hardened: the server holds it before its
    // sync point (a deferred input whose answer was lost).
    const bool held =
        std::any_of(state_.unhardened_inputs().begin(), state_.unhardened_inputs().end(),
                    [&](const v1::ClientSentInput& i) { return i.input_seq() == in_flight.seq; });
    return Accepted{.input_seq = in_flight.seq, .durable = !held, .recovered = true};
  }
  if (ReasonOf(answer.status()) == reason::kAlreadyHardened) {
    // A first attempt cannot meet itself: the server had this number from
    // someone else.
    broken_ = absl::FailedPreconditionError(absl::StrCat(
        "session '", options_.name, "': the server already holds input ", seq,
        ", which this client is sending for the first time: the session file is stale or "
        "another client uses the session; reopen it"));
    return broken_;
  }
  // Refused: never queued, so its number is given back.
  if (numbered) {
    state_.mutable_unhardened_inputs()->RemoveLast();
    state_.set_last_input_sent(seq - 1);
    if (absl::Status s = Save(); !s.ok()) return s;
  }
  return answer.status();
}

absl::StatusOr<v1::EnqueueResponse> Session::EnqueueCall(const v1::ClientSentInput& input,
                                                         uint64_t ack_out_seq) {
  v1::EnqueueRequest request;
  v1::NewMessage* m = request.mutable_message();
  m->set_queue(input.queue());
  m->set_payload(input.payload());
  m->set_class_(input.class_());
  m->set_correlation_id(input.correlation_id());
  m->set_reply_to(input.reply_to());
  m->set_expiry_time_us(input.expiry_time_us());
  m->set_session(options_.name);
  m->set_input_seq(input.input_seq());
  m->set_ack_out_seq(ack_out_seq);
  v1::EnqueueResponse response;
  absl::Status s = FromGrpcStatus(stub_->Enqueue(NewContext().get(), request, &response));
  if (!s.ok()) return s;
  return response;
}

// ---- Output ---------------------------------------------------------------------

absl::StatusOr<std::optional<Output>> Session::Next(absl::Duration wait) {
  const absl::Time deadline = absl::Now() + wait;
  while (true) {
    {
      absl::MutexLock lock(&op_mu_);
      if (!broken_.ok()) return broken_;
      if (closed_) return absl::FailedPreconditionError("the session is closed");
      if (!ready_) {
        if (absl::Status s = Recover(nullptr); !s.ok()) return s;
      }
    }
    std::optional<Received> received;
    std::optional<absl::Status> ended;
    uint64_t generation = 0;
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithDeadline(absl::Condition(this, &Session::HasReceived), deadline);
      generation = generation_;
      if (!received_.empty()) {
        received = std::move(received_.front());
        received_.pop_front();
      } else if (receive_ended_.has_value()) {
        ended = receive_ended_;
      } else {
        return std::nullopt;
      }
    }
    absl::MutexLock lock(&op_mu_);
    {
      // A resynchronization in between made it stale.
      absl::MutexLock l(&mu_);
      if (generation_ != generation || (received && received->generation != generation)) continue;
    }
    if (ended.has_value()) {
      if (Recoverable(*ended)) {
        if (absl::Status s = Recover(nullptr); !s.ok()) return s;
        continue;
      }
      // Not the session's state (no output queue, ...): reported; the next
      // call receives again.
      StopReceiving();
      StartReceiving();
      return *ended;
    }
    absl::StatusOr<std::optional<Output>> output = Classify(*received);
    if (!output.ok() || output->has_value()) return output;
    if (absl::Now() >= deadline) return std::nullopt;
  }
}

absl::StatusOr<std::optional<Output>> Session::Classify(const Received& received) {
  const v1::ReceiveResponse& r = received.response;
  Output output;
  output.out_seq = r.out_seq();
  output.message = r.message();
  output.exception_response = r.exception_response();
  output.possible_duplicate = r.message().possible_duplicate();
  if (output.exception_response) return output;
  const uint64_t seq = r.out_seq();
  const uint64_t id = r.message().id();
  if (pending_ && pending_->first == seq && pending_->second == id) {
    return std::nullopt;  // sent again while the application holds it
  }
  if (seq == state_.last_output_secured() && id == state_.last_output_secured_message_id()) {
    // Secured before; its acknowledgement was lost. Confirm it again.
    absl::Status s = AcknowledgeCall(seq, true, 0);
    if (!s.ok() && Recoverable(s)) s = Recover(nullptr);
    if (!s.ok()) return s;
    return std::nullopt;
  }
  if (pending_ || seq != state_.last_output_secured() + 1) {
    // Out of sequence: RQR and STSN again.
    if (absl::Status s = Recover(nullptr, /*rebind=*/false); !s.ok()) return s;
    return std::nullopt;
  }
  if (seq == duplicate_seq_) {
    output.possible_duplicate = true;
    duplicate_seq_ = 0;
  }
  pending_.emplace(seq, id);
  return output;
}

absl::Status Session::Acknowledge(const Output& output) {
  absl::MutexLock lock(&op_mu_);
  if (!broken_.ok()) return broken_;
  if (output.exception_response) return absl::OkStatus();
  const uint64_t seq = output.out_seq;
  const uint64_t id = output.message.id();
  const bool secured =
      seq == state_.last_output_secured() && id == state_.last_output_secured_message_id();
  if (!pending_ || pending_->first != seq || pending_->second != id) {
    if (secured) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat("session '", options_.name, "': output ", seq,
                                                      " is not outstanding (last secured ",
                                                      state_.last_output_secured(), ")"));
  }
  if (!secured) {
    state_.set_last_output_secured(seq);
    state_.set_last_output_secured_message_id(id);
    if (absl::Status s = Save(); !s.ok()) return s;
  }
  pending_.reset();
  const uint64_t accepted = accepted_seq_;
  absl::Status s = AcknowledgeCall(seq, true, 0);
  if (s.ok()) {
    if (accepted > 0) ForgetThrough(accepted - 1);
    return absl::OkStatus();
  }
  if (Recoverable(s)) return Recover(nullptr);  // STSN confirms it: DELIVERED
  return s;
}

absl::Status Session::Reject(const Output& output, uint32_t sense_code) {
  absl::MutexLock lock(&op_mu_);
  if (!broken_.ok()) return broken_;
  if (output.exception_response) {
    return absl::FailedPreconditionError("an exception response cannot be rejected");
  }
  if (!pending_ || pending_->first != output.out_seq || pending_->second != output.message.id()) {
    return absl::FailedPreconditionError(
        absl::StrCat("output ", output.out_seq, " is not outstanding"));
  }
  pending_.reset();
  absl::Status s = AcknowledgeCall(output.out_seq, false, sense_code);
  if (!s.ok() && Recoverable(s)) return Recover(nullptr);  // it comes again (WILL_RESEND)
  return s;
}

absl::Status Session::AcknowledgeCall(uint64_t out_seq, bool positive, uint32_t sense_code) {
  v1::AcknowledgeRequest request;
  request.set_session(options_.name);
  request.set_out_seq(out_seq);
  request.set_positive(positive);
  request.set_sense_code(sense_code);
  v1::AcknowledgeResponse response;
  return FromGrpcStatus(stub_->Acknowledge(NewContext().get(), request, &response));
}

// ---- The Receive stream -------------------------------------------------------------

void Session::StartReceiving() {
  receive_context_ = std::make_unique<grpc::ClientContext>();  // no deadline: as long as it runs
  AddCallCredentials(options_.credentials, receive_context_.get());
  v1::ReceiveRequest request;
  request.set_session(options_.name);
  receive_reader_ = stub_->Receive(receive_context_.get(), request);
  uint64_t generation;
  {
    absl::MutexLock lock(&mu_);
    generation = ++generation_;
    received_.clear();
    receive_ended_.reset();
  }
  receiver_ = std::thread(&Session::ReceiveLoop, this, generation, receive_reader_.get());
}

void Session::StopReceiving() {
  {
    absl::MutexLock lock(&mu_);
    ++generation_;
    received_.clear();
    receive_ended_.reset();
  }
  if (receive_context_ != nullptr) receive_context_->TryCancel();
  if (receiver_.joinable()) receiver_.join();
  receive_reader_.reset();
  receive_context_.reset();
}

void Session::ReceiveLoop(uint64_t generation, grpc::ClientReader<v1::ReceiveResponse>* reader) {
  v1::ReceiveResponse response;
  while (reader->Read(&response)) {
    absl::MutexLock lock(&mu_);
    if (generation_ != generation) break;
    received_.push_back(Received{generation, std::move(response)});
    response = v1::ReceiveResponse();
  }
  const absl::Status status = FromGrpcStatus(reader->Finish());
  absl::MutexLock lock(&mu_);
  if (generation_ == generation) {
    receive_ended_ = status.ok()
                         ? absl::UnavailableError("the server ended the session's Receive stream")
                         : status;
  }
}

// ---- Helpers ----------------------------------------------------------------------

std::unique_ptr<grpc::ClientContext> Session::NewContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + options_.call_timeout));
  AddCallCredentials(options_.credentials, context.get());
  return context;
}

void Session::ForgetThrough(uint64_t seq) {
  auto* inputs = state_.mutable_unhardened_inputs();
  int n = 0;
  while (n < inputs->size() && inputs->Get(n).input_seq() <= seq) ++n;
  inputs->DeleteSubrange(0, n);
}

absl::Status Session::Save() {
  absl::Status s = file_.Save(state_);
  if (s.ok()) return s;
  // Whether the file now holds the new state or the old is unknown: only a
  // reopen (which resynchronizes from whatever it holds) is safe.
  broken_ = absl::Status(s.code(), absl::StrCat("session '", options_.name,
                                                "': its file could not be saved (", s.message(),
                                                "); reopen the session: its resynchronization "
                                                "reports what became of the last call"));
  return broken_;
}

}  // namespace qmgr::client
