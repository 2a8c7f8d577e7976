#include "tools/explain_command.h"

#include <algorithm>
#include <map>
#include <memory>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "checkpoint/store.h"
#include "google/protobuf/util/json_util.h"
#include "log/reader.h"
#include "qmgr/v1/log_tool.pb.h"
#include "tools/log_commands.h"

namespace qmgr::tools {
namespace {

namespace v1 = qmgr::v1;

enum class State { kUnknown, kQueued, kTaken, kInDoubt, kSent, kConsumed, kExpired, kGone };

const char* StateName(State state) {
  switch (state) {
    case State::kUnknown:
      return "UNKNOWN";
    case State::kQueued:
      return "QUEUED";
    case State::kTaken:
      return "TAKEN";
    case State::kInDoubt:
      return "IN_DOUBT";
    case State::kSent:
      return "SENT_UNACKNOWLEDGED";
    case State::kConsumed:
      return "CONSUMED";
    case State::kExpired:
      return "EXPIRED";
    case State::kGone:
      return "GONE";
  }
  return "UNKNOWN";
}

bool Live(State state) {
  return state == State::kQueued || state == State::kTaken || state == State::kInDoubt ||
         state == State::kSent;
}

std::string Time(int64_t unix_us) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::FromUnixMicros(unix_us),
                          absl::UTCTimeZone());
}

std::string ClassOf(const v1::Message& m) {
  return m.class_() == v1::MESSAGE_CLASS_UNSPECIFIED ? std::string("its queue's default class")
                                                     : v1::MessageClass_Name(m.class_());
}

std::string Hex(const std::string& bytes) { return absl::BytesToHexString(bytes); }

template <typename Ids>
bool Names(const Ids& ids, uint64_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

template <typename Messages>
const v1::Message* Find(const Messages& messages, uint64_t id) {
  for (const v1::Message& m : messages) {
    if (m.id() == id) return &m;
  }
  return nullptr;
}

// The message's part in a prepared unit.
enum class Role { kTaken, kInserted };

struct PreparedUnit {
  Role role = Role::kTaken;
  std::string coordinator;
  std::string qualifier;
  std::string xid;
};

// Follows one message through the store's image and the log's records.
class Explainer {
 public:
  explicit Explainer(uint64_t id) : id_(id) { report_.set_message_id(id); }

  // Reads what the checkpoint store says; nothing when there is no store.
  absl::Status ReadStore(const std::string& store_dir) {
    absl::StatusOr<std::unique_ptr<checkpoint::StoreReader>> store =
        checkpoint::StoreReader::Open(store_dir);
    if (absl::IsNotFound(store.status())) return absl::OkStatus();
    if (!store.ok()) return store.status();
    absl::StatusOr<std::optional<v1::CheckpointMeta>> meta = (*store)->ReadMeta();
    if (!meta.ok()) return meta.status();
    if (!meta->has_value()) return absl::OkStatus();
    meta_ = **meta;
    absl::StatusOr<std::optional<v1::StoredMessage>> image = (*store)->ReadMessage(id_);
    if (!image.ok()) return image.status();
    image_ = *std::move(image);
    if (absl::Status s = (*store)->ForEachQueue([&](std::string name, v1::StoredQueue q) {
          queues_[name] = q.attributes();
          return absl::OkStatus();
        });
        !s.ok()) {
      return s;
    }
    if (absl::Status s = (*store)->ForEachSession([&](std::string name, v1::StoredSession session) {
          if (session.out_message_id() == id_ && !session.output_acknowledged()) {
            stored_sent_to_ = name;
            stored_out_seq_ = session.out_seq();
          }
          return absl::OkStatus();
        });
        !s.ok()) {
      return s;
    }
    return (*store)->ForEachCoordinated([&](std::string, v1::StoredCoordinatedUnit unit) {
      if (!unit.has_prepared()) return absl::OkStatus();
      const v1::PrepareRecord& p = unit.prepared();
      std::optional<Role> role;
      if (Names(p.consumed_message_ids(), id_) || Find(p.deferred_inputs(), id_) != nullptr) {
        role = Role::kTaken;
      } else if (const v1::Message* m = Find(p.inserted(), id_); m != nullptr) {
        role = Role::kInserted;
        stored_insert_ = *m;
      }
      if (role.has_value()) {
        stored_prepared_uow_ = p.uow_id();
        stored_prepared_ = {*role, p.coordinator(), p.qualifier(), p.xid()};
      }
      return absl::OkStatus();
    });
  }

  void Record(log::Lsn lsn, const v1::LogRecord& record) {
    if (meta_.has_value() && !crossed_ && lsn >= meta_->redo_lsn()) CrossCheckpoint();
    switch (record.body_case()) {
      case v1::LogRecord::kEnqueue:
        if (const v1::Message* m = Find(record.enqueue().messages(), id_); m != nullptr) {
          Enqueued(lsn, *m);
        }
        break;
      case v1::LogRecord::kGet:
        if (record.get().message_id() == id_) Taken(lsn, record.get());
        break;
      case v1::LogRecord::kSyncpoint:
        SyncPoint(lsn, record.syncpoint());
        break;
      case v1::LogRecord::kBackout:
        Backout(lsn, record.backout());
        break;
      case v1::LogRecord::kBackoutMove:
        if (record.backout_move().message_id() == id_)
          MovedToBackoutQueue(lsn, record.backout_move());
        break;
      case v1::LogRecord::kPrepare:
        Prepare(lsn, record.prepare());
        break;
      case v1::LogRecord::kResolve:
        Resolve(lsn, record.resolve());
        break;
      case v1::LogRecord::kOutputSent:
        if (record.output_sent().message_id() == id_) Sent(lsn, record.output_sent());
        break;
      case v1::LogRecord::kOutputAcked:
        if (record.output_acked().message_id() == id_) Acked(lsn, record.output_acked());
        break;
      case v1::LogRecord::kSessionSeq:
        if (record.session_seq().out_message_id() == id_) Resync(lsn, record.session_seq());
        break;
      case v1::LogRecord::kAssign:
        Assigned(lsn, record.assign());
        break;
      case v1::LogRecord::kQueueDefine:
        queues_[record.queue_define().queue()] = record.queue_define().attributes();
        break;
      case v1::LogRecord::kQueueAlter:
        queues_[record.queue_alter().queue()] = record.queue_alter().attributes();
        break;
      case v1::LogRecord::kQueueDelete:
        QueueDeleted(lsn, record.queue_delete());
        break;
      case v1::LogRecord::kIdReserve: {
        const v1::IdReserveRecord& r = record.id_reserve();
        if (id_ >= r.first_id() && id_ - r.first_id() < r.count()) {
          Add("log", lsn, "ID_RESERVED",
              absl::StrCat("its id was reserved, with ids ", r.first_id(), "..",
                           r.first_id() + r.count() - 1));
        }
        break;
      }
      default:
        break;
    }
  }

  // After the last record: the checkpoint if no record came after its redo
  // LSN, then the verdict. False when nothing but an id reservation
  // mentions the message.
  bool Finish(const log::LogTail& tail, log::Lsn first_lsn, absl::Time now) {
    if (meta_.has_value() && !crossed_) CrossCheckpoint();
    report_.set_log_first_lsn(first_lsn);
    report_.set_log_end_lsn(tail.end_lsn);
    report_.set_log_tail(std::string(log::TailKindName(tail.kind)));
    if (meta_.has_value()) {
      report_.set_checkpoint_number(meta_->checkpoint_number());
      report_.set_checkpoint_redo_lsn(meta_->redo_lsn());
    }
    const bool known =
        std::any_of(report_.events().begin(), report_.events().end(),
                    [](const v1::ExplainEvent& e) { return e.event() != "ID_RESERVED"; });
    if (!known) return false;
    if (have_message_) {
      v1::Message shown = message_;
      report_.set_payload_bytes(shown.payload().size());
      shown.clear_payload();
      shown.set_backout_count(backout_count_);
      *report_.mutable_message() = shown;
    }
    report_.set_state(StateName(state_));
    report_.set_where(Where(now));
    report_.set_backouts(backouts_);
    report_.set_poisoned(poisoned_);
    report_.set_recoverable(Live(state_));
    report_.set_why(Why());
    return true;
  }

  const v1::MessageExplanation& report() const { return report_; }

 private:
  void Add(const std::string& source, log::Lsn lsn, const std::string& event, std::string detail,
           uint64_t uow = 0, const std::string& session = "") {
    v1::ExplainEvent* e = report_.add_events();
    e->set_source(source);
    e->set_lsn(lsn);
    e->set_event(event);
    e->set_detail(std::move(detail));
    e->set_uow(uow);
    e->set_queue(queue_);
    e->set_session(session);
    e->set_backout_count(backout_count_);
  }

  void Learn(const v1::Message& m) {
    message_ = m;
    have_message_ = true;
    backout_count_ = m.backout_count();
  }

  // The session whose output queue `queue` is, if any.
  std::string OutputOf(const std::string& queue) const {
    auto it = queues_.find(queue);
    return it == queues_.end() ? "" : it->second.output_of_session();
  }
  std::string OutputQueueOf(const std::string& session) const {
    for (const auto& [name, attributes] : queues_) {
      if (attributes.output_of_session() == session) return name;
    }
    return "";
  }
  std::string OnQueue(const std::string& queue) const {
    const std::string session = OutputOf(queue);
    return session.empty() ? absl::StrCat("on ", queue)
                           : absl::StrCat("on ", queue, " (output of session ", session, ")");
  }

  void Enqueued(log::Lsn lsn, const v1::Message& m) {
    Learn(m);
    state_ = State::kQueued;
    queue_ = m.queue();
    last_lsn_ = lsn;
    std::string by =
        m.origin_session().empty()
            ? std::string("by a program (not a session's input)")
            : absl::StrCat("by session ", m.origin_session(), " (input ", m.input_seq(), ")");
    std::string detail = absl::StrCat(OnQueue(m.queue()), ", ", ClassOf(m), ", ", by, ", at ",
                                      Time(m.enqueue_time_us()));
    if (m.expiry_time_us() != 0) absl::StrAppend(&detail, ", expires ", Time(m.expiry_time_us()));
    Add("log", lsn, "ENQUEUED", std::move(detail));
  }

  void Taken(log::Lsn lsn, const v1::GetRecord& get) {
    state_ = State::kTaken;
    uow_ = get.uow_id();
    queue_ = get.queue();
    backout_count_ = get.backout_count();
    last_lsn_ = lsn;
    Add("log", lsn, "TAKEN",
        absl::StrCat("by unit ", uow_, " from ", queue_, " (delivery ", backout_count_ + 1, ")"),
        uow_);
  }

  void SyncPoint(log::Lsn lsn, const v1::SyncPointRecord& sync) {
    if (Names(sync.consumed_message_ids(), id_)) {
      last_lsn_ = lsn;
      if (sync.uow_id() == 0) {
        state_ = State::kExpired;
        Add("log", lsn, "EXPIRED",
            absl::StrCat("discarded from ", queue_, " by a Get after its expiry time"));
      } else {
        state_ = State::kConsumed;
        Add("log", lsn, "COMMITTED",
            absl::StrCat("consumed: unit ", sync.uow_id(), " committed (SYNCPOINT)"),
            sync.uow_id());
      }
    } else if (const v1::Message* m = Find(sync.inserted(), id_); m != nullptr) {
      Learn(*m);
      state_ = State::kQueued;
      queue_ = m->queue();
      last_lsn_ = lsn;
      Add("log", lsn, "INSERTED",
          absl::StrCat("by unit ", sync.uow_id(), ", visible at its sync point ",
                       OnQueue(m->queue()), ", ", ClassOf(*m), ", enqueued ",
                       Time(m->enqueue_time_us())),
          sync.uow_id());
    } else if (const v1::Message* m = Find(sync.deferred_inputs(), id_); m != nullptr) {
      Learn(*m);
      state_ = State::kConsumed;
      queue_ = m->queue();
      last_lsn_ = lsn;
      Add("log", lsn, "COMMITTED",
          absl::StrCat("consumed: unit ", sync.uow_id(), " committed it; a ", ClassOf(*m),
                       " input from ", queue_, ", logged first here (with its payload)"),
          sync.uow_id());
    }
  }

  void Backout(log::Lsn lsn, const v1::BackoutRecord& backout) {
    for (int i = 0; i < backout.message_ids_size(); ++i) {
      if (backout.message_ids(i) != id_) continue;
      if (i < backout.backout_counts_size()) backout_count_ = backout.backout_counts(i);
      ++backouts_;
      state_ = State::kQueued;
      uow_ = 0;
      last_lsn_ = lsn;
      const bool restart = backout.reason() == v1::BACKOUT_RESTART;
      Add("log", lsn, restart ? "RESTART_BACKOUT" : "BACKED_OUT",
          absl::StrCat(
              restart ? "a restart backed out unit " : "unit ", backout.uow_id(),
              restart ? " (open at the crash)" : " backed out",
              restart ? "" : absl::StrCat(" (", v1::BackoutReason_Name(backout.reason()), ")"),
              ": back at the head of ", queue_, ", backout count ", backout_count_),
          backout.uow_id());
    }
  }

  void MovedToBackoutQueue(log::Lsn lsn, const v1::BackoutMoveRecord& move) {
    backout_count_ = move.backout_count();
    poisoned_ = true;
    state_ = State::kQueued;
    queue_ = move.to_queue();
    last_lsn_ = lsn;
    Add("log", lsn, "MOVED_TO_BACKOUT_QUEUE",
        absl::StrCat("poison: backout count ", backout_count_, " reached ", move.from_queue(),
                     "'s threshold; moved to ", move.to_queue()));
  }

  void Prepare(log::Lsn lsn, const v1::PrepareRecord& p) {
    std::optional<Role> role;
    if (Names(p.consumed_message_ids(), id_)) {
      role = Role::kTaken;
    } else if (const v1::Message* m = Find(p.deferred_inputs(), id_); m != nullptr) {
      Learn(*m);
      role = Role::kTaken;
    } else if (const v1::Message* m = Find(p.inserted(), id_); m != nullptr) {
      Learn(*m);
      queue_ = m->queue();
      role = Role::kInserted;
    }
    if (!role.has_value()) return;
    prepared_[p.uow_id()] = {*role, p.coordinator(), p.qualifier(), p.xid()};
    state_ = State::kInDoubt;
    uow_ = p.uow_id();
    last_lsn_ = lsn;
    Add("log", lsn, "PREPARED",
        absl::StrCat("unit ", uow_, " of coordinator ", p.coordinator(), " (qualifier ",
                     p.qualifier(), ", XID ", Hex(p.xid()), ") prepared; it ",
                     *role == Role::kTaken ? "holds the message" : "inserts the message onto ",
                     *role == Role::kTaken ? "" : queue_, " in doubt until the outcome"),
        uow_);
  }

  void Resolve(log::Lsn lsn, const v1::ResolveRecord& r) {
    auto it = prepared_.find(r.uow_id());
    if (it == prepared_.end()) return;
    const Role role = it->second.role;
    std::string detail = absl::StrCat("XID ", Hex(r.xid()), " resolved ",
                                      v1::Outcome_Name(r.outcome()), " by ", r.decided_by());
    if (r.heuristic()) {
      // A decision that contradicts one already taken changes nothing.
      Add("log", lsn, "RESOLVED", absl::StrCat(detail, " (heuristic: damage reported, no change)"),
          r.uow_id());
      return;
    }
    prepared_.erase(it);
    last_lsn_ = lsn;
    if (r.outcome() == v1::COMMIT) {
      if (role == Role::kTaken) {
        state_ = State::kConsumed;
        absl::StrAppend(&detail, ": consumed");
      } else {
        state_ = State::kQueued;
        absl::StrAppend(&detail, ": visible ", OnQueue(queue_));
      }
    } else if (role == Role::kInserted) {
      state_ = State::kGone;
      absl::StrAppend(&detail, ": its insert is dropped");
    } else {
      // The BACKOUT record that follows returns it.
      state_ = State::kTaken;
      absl::StrAppend(&detail, ": returned by the BACKOUT that follows");
    }
    Add("log", lsn, "RESOLVED", std::move(detail), r.uow_id());
  }

  void Sent(log::Lsn lsn, const v1::OutputSentRecord& sent) {
    state_ = State::kSent;
    session_ = sent.session();
    out_seq_ = sent.out_seq();
    last_lsn_ = lsn;
    Add("log", lsn, "OUTPUT_SENT",
        absl::StrCat("sent to session ", session_, " as output ", out_seq_,
                     "; it stays until acknowledged"),
        0, session_);
  }

  void Acked(log::Lsn lsn, const v1::OutputAckedRecord& acked) {
    last_lsn_ = lsn;
    if (acked.positive()) {
      state_ = State::kConsumed;
      Add("log", lsn, "OUTPUT_ACKED",
          absl::StrCat("session ", acked.session(), " acknowledged output ", acked.out_seq(),
                       ": delivered, dequeued"),
          0, acked.session());
      return;
    }
    backout_count_ = acked.backout_count();
    ++backouts_;
    state_ = State::kQueued;
    Add("log", lsn, "NEGATIVE_ACK",
        absl::StrCat("session ", acked.session(), " refused output ", acked.out_seq(),
                     " (sense code ", acked.sense_code(), "): back at the head of ", queue_,
                     ", backout count ", backout_count_),
        0, acked.session());
  }

  void Resync(log::Lsn lsn, const v1::SessionSeqRecord& seq) {
    Add("log", lsn, "RESYNC",
        absl::StrCat("session ", seq.session(), " resynchronized at output ", seq.out_seq(),
                     seq.output_outstanding() ? ": still waiting for its acknowledgement"
                                              : ": the client has it"),
        0, seq.session());
  }

  void Assigned(log::Lsn lsn, const v1::AssignRecord& assign) {
    const bool forced_move = assign.forced() && assign.possible_duplicate_message_id() == id_;
    const bool queued_move =
        state_ == State::kQueued && !queue_.empty() && OutputOf(queue_) == assign.from_session();
    if (!forced_move && !queued_move) return;
    const std::string to = OutputQueueOf(assign.to_session());
    state_ = State::kQueued;
    if (!to.empty()) queue_ = to;
    last_lsn_ = lsn;
    if (forced_move) message_.set_possible_duplicate(true);
    Add("log", lsn, "ASSIGNED",
        absl::StrCat(
            "session ", assign.from_session(), "'s output moved to session ", assign.to_session(),
            to.empty() ? "" : absl::StrCat(" (", to, ")"),
            forced_move ? ", forced: sent but unacknowledged, so possibly a duplicate" : ""),
        0, assign.to_session());
  }

  void QueueDeleted(log::Lsn lsn, const v1::QueueDeleteRecord& d) {
    queues_.erase(d.queue());
    if (!Live(state_) || queue_ != d.queue()) return;
    state_ = State::kGone;
    last_lsn_ = lsn;
    Add("log", lsn, "PURGED", absl::StrCat("queue ", d.queue(), " was deleted with its messages"));
  }

  // The checkpoint's image, placed at its redo LSN: the state as of there.
  void CrossCheckpoint() {
    crossed_ = true;
    const log::Lsn redo = meta_->redo_lsn();
    const std::string which = absl::StrCat("checkpoint ", meta_->checkpoint_number(), " (written ",
                                           Time(meta_->written_time_us()), ")");
    if (image_.has_value()) {
      if (!have_message_) Learn(image_->message());
      backout_count_ = image_->message().backout_count();
      queue_ = image_->message().queue();
      const uint64_t holder = image_->taken_by_uow();
      std::string detail;
      if (holder != 0 && stored_prepared_.has_value() && stored_prepared_uow_ == holder) {
        state_ = State::kInDoubt;
        uow_ = holder;
        prepared_[holder] = *stored_prepared_;
        detail = absl::StrCat("held in doubt by unit ", holder, " (XID ",
                              Hex(stored_prepared_->xid), ")");
      } else if (holder != 0) {
        state_ = State::kTaken;
        uow_ = holder;
        detail = absl::StrCat("taken by unit ", holder, ", open then");
      } else if (!stored_sent_to_.empty()) {
        state_ = State::kSent;
        session_ = stored_sent_to_;
        out_seq_ = stored_out_seq_;
        detail = absl::StrCat("sent to session ", session_, " as output ", out_seq_,
                              ", not acknowledged");
      } else {
        state_ = State::kQueued;
        detail = OnQueue(queue_);
      }
      stored_ = true;
      Add("store", redo, "CHECKPOINTED",
          absl::StrCat(which, " holds it: ", detail, ", backout count ", backout_count_), uow_,
          state_ == State::kSent ? session_ : "");
      return;
    }
    if (stored_insert_.has_value() && stored_prepared_.has_value()) {
      if (!have_message_) Learn(*stored_insert_);
      queue_ = stored_insert_->queue();
      state_ = State::kInDoubt;
      uow_ = stored_prepared_uow_;
      prepared_[uow_] = *stored_prepared_;
      stored_ = true;
      Add("store", redo, "CHECKPOINTED",
          absl::StrCat(which, " holds it as an insert onto ", queue_, " of unit ", uow_,
                       " in doubt (XID ", Hex(stored_prepared_->xid), ")"),
          uow_);
      return;
    }
    if (Live(state_)) {
      state_ = State::kGone;
      Add("store", redo, "NOT_IN_CHECKPOINT",
          absl::StrCat(which,
                       " does not hold it: it was gone by then (a cold start discards "
                       "messages)"));
    }
  }

  std::string Where(absl::Time now) const {
    switch (state_) {
      case State::kQueued: {
        std::string where = absl::StrCat("queued ", OnQueue(queue_));
        if (message_.expiry_time_us() != 0 &&
            message_.expiry_time_us() <= absl::ToUnixMicros(now)) {
          absl::StrAppend(&where, "; expired at ", Time(message_.expiry_time_us()),
                          ": the next Get discards it");
        }
        return where;
      }
      case State::kTaken:
        return absl::StrCat("taken by unit ", uow_, " from ", queue_,
                            " (open, or open when qmgrd stopped: then a restart backs it out)");
      case State::kInDoubt: {
        auto it = prepared_.find(uow_);
        if (it == prepared_.end()) return absl::StrCat("in doubt in unit ", uow_);
        return absl::StrCat("in doubt under XID ", Hex(it->second.xid), " (coordinator ",
                            it->second.coordinator, ", qualifier ", it->second.qualifier, ", unit ",
                            uow_, ")");
      }
      case State::kSent:
        return absl::StrCat("sent to session ", session_, " as output ", out_seq_,
                            ", not acknowledged");
      case State::kConsumed:
        return absl::StrCat("consumed at LSN ", last_lsn_);
      case State::kExpired:
        return absl::StrCat("expired and discarded at LSN ", last_lsn_);
      case State::kGone:
        return "gone";
      case State::kUnknown:
        break;
    }
    return "unknown";
  }

  std::string Why() const {
    // The checkpoint alone when no record after its redo LSN changed where
    // the message is.
    std::string held_by = absl::StrCat("the log holds it (LSN ", last_lsn_, ")");
    if (stored_) {
      const bool log_since = last_lsn_ != log::kNoLsn && last_lsn_ >= meta_->redo_lsn();
      held_by = log_since ? absl::StrCat("checkpoint ", meta_->checkpoint_number(),
                                         " and the log (LSN ", last_lsn_, ") hold it")
                          : absl::StrCat("checkpoint ", meta_->checkpoint_number(), " holds it");
    }
    const std::string cls = have_message_ ? ClassOf(message_) : std::string("logged");
    switch (state_) {
      case State::kQueued:
        return absl::StrCat(cls, " and ", held_by, ": a restart puts it back ", OnQueue(queue_));
      case State::kTaken:
        return absl::StrCat(cls, " and ", held_by, ": if unit ", uow_,
                            " backs out or qmgrd restarts first, it returns to ", queue_,
                            " with backout count ", backout_count_ + 1);
      case State::kInDoubt:
        return absl::StrCat(cls, " and ", held_by,
                            ": a restart keeps it in doubt until the coordinator's outcome (or "
                            "qmgrctl indoubt resolve)");
      case State::kSent:
        return absl::StrCat(cls, " and ", held_by, ": it stays on session ", session_,
                            "'s output queue until acknowledged, and is sent again after resync");
      case State::kConsumed:
        return "consumed: nothing brings it back";
      case State::kExpired:
        return "discarded after its expiry time: nothing brings it back";
      case State::kGone:
        return "no record or checkpoint holds it any more";
      case State::kUnknown:
        break;
    }
    return "";
  }

  const uint64_t id_;
  v1::MessageExplanation report_;
  // The store, as of meta_->redo_lsn().
  std::optional<v1::CheckpointMeta> meta_;
  std::optional<v1::StoredMessage> image_;
  std::string stored_sent_to_;
  uint64_t stored_out_seq_ = 0;
  std::optional<PreparedUnit> stored_prepared_;
  uint64_t stored_prepared_uow_ = 0;
  std::optional<v1::Message> stored_insert_;
  bool crossed_ = false;
  bool stored_ = false;  // the checkpoint holds it

  // Queue definitions (store, then the log's changes): output queues.
  std::map<std::string, v1::QueueAttributes> queues_;
  std::map<uint64_t, PreparedUnit> prepared_;  // units in doubt that involve it

  // Where it is.
  State state_ = State::kUnknown;
  v1::Message message_;
  bool have_message_ = false;
  std::string queue_;
  uint64_t uow_ = 0;
  std::string session_;
  uint64_t out_seq_ = 0;
  uint32_t backout_count_ = 0;
  uint32_t backouts_ = 0;
  bool poisoned_ = false;
  log::Lsn last_lsn_ = log::kNoLsn;  // the last record that changed where it is
};

void PrintTable(const v1::MessageExplanation& r, std::ostream& out) {
  out << "message " << r.message_id();
  if (r.has_message()) {
    const v1::Message& m = r.message();
    out << ": " << ClassOf(m) << ", " << r.payload_bytes() << " payload bytes";
    if (!m.correlation_id().empty()) out << ", correlation id " << Hex(m.correlation_id());
    if (!m.reply_to().empty()) out << ", reply to " << m.reply_to();
    if (m.possible_duplicate()) out << ", possibly a duplicate";
  }
  out << "\n";
  out << absl::StrFormat("log:        LSN %u .. %u (%s end)\n", r.log_first_lsn(), r.log_end_lsn(),
                         r.log_tail());
  if (r.checkpoint_number() == 0) {
    out << "checkpoint: none (no checkpoint store, or nothing checkpointed yet)\n";
  } else {
    out << absl::StrFormat("checkpoint: %u, redo LSN %u\n", r.checkpoint_number(),
                           r.checkpoint_redo_lsn());
  }
  out << absl::StrFormat("\n%-6s %-12s %-22s %s\n", "SOURCE", "LSN", "EVENT", "DETAIL");
  for (const v1::ExplainEvent& e : r.events()) {
    out << absl::StrFormat("%-6s %-12u %-22s %s\n", e.source(), e.lsn(), e.event(), e.detail());
  }
  out << "\nnow:         " << r.state() << ": " << r.where() << "\n";
  out << "backouts:    " << r.backouts() << (r.poisoned() ? " (poisoned: on a backout queue)" : "")
      << "\n";
  out << "recoverable: " << (r.recoverable() ? "yes" : "no") << ": " << r.why() << "\n";
}

}  // namespace

absl::StatusOr<uint64_t> ParseMessageId(const std::string& text) {
  uint64_t id = 0;
  if (text.empty() || !std::all_of(text.begin(), text.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(text, &id) || id == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a message id (a whole number from 1)"));
  }
  return id;
}

int Explain(const ExplainOptions& options, std::ostream& out, std::ostream& err) {
  auto fail = [&](const absl::Status& status) {
    err << "qmgrctl: " << status.message() << "\n";
    return status.code() == absl::StatusCode::kDataLoss ? kExitCorrupt : kExitUnreadable;
  };
  // The store first: a checkpoint taken meanwhile only retires log below a
  // redo LSN later than the one read here, so nothing falls between them.
  Explainer explainer(options.message_id);
  if (absl::Status s = explainer.ReadStore(options.store_dir); !s.ok()) return fail(s);
  absl::StatusOr<std::unique_ptr<log::LogReader>> reader =
      log::LogReader::Open(log::PosixFileSystem(), options.log_dir);
  if (!reader.ok()) return fail(reader.status());
  if ((*reader)->segments().empty()) {
    return fail(absl::NotFoundError(absl::StrCat("no log segments in ", options.log_dir)));
  }
  log::LogEntry entry;
  v1::LogRecord record;
  while (true) {
    absl::StatusOr<bool> more = (*reader)->Next(&entry);
    if (!more.ok()) return fail(more.status());
    if (!*more) break;
    if (!record.ParseFromString(entry.payload) || record.body_case() != entry.type) {
      return fail(absl::DataLossError(
          absl::StrCat("record at LSN ", entry.lsn, " is not a LogRecord of its type")));
    }
    explainer.Record(entry.lsn, record);
  }
  if (!explainer.Finish((*reader)->tail(), (*reader)->segments().front().header.first_lsn,
                        absl::Now())) {
    const v1::MessageExplanation& r = explainer.report();
    err << "qmgrctl: no record in the log (LSN " << r.log_first_lsn() << " .. " << r.log_end_lsn()
        << ")";
    if (r.checkpoint_number() != 0) err << " or checkpoint " << r.checkpoint_number();
    err << " mentions message " << options.message_id;
    if (r.events_size() > 0) {
      err << "; its id was reserved at LSN " << r.events(0).lsn()
          << ", but nothing logged it: an IRRECOVERABLE message, a RESPONSE, CONVERSATIONAL or "
             "FASTPATH one no unit has committed, an id never used, or one consumed before the "
             "log's oldest record";
    }
    err << "\n";
    return kExitUnknownMessage;
  }
  if (options.json) {
    std::string json;
    google::protobuf::util::JsonPrintOptions print;
    print.preserve_proto_field_names = true;
    print.always_print_primitive_fields = true;
    (void)google::protobuf::util::MessageToJsonString(explainer.report(), &json, print);
    out << json << "\n";
  } else {
    PrintTable(explainer.report(), out);
  }
  return kExitOk;
}

}  // namespace qmgr::tools
