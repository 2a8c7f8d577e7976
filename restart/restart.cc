// The restart algorithm (DESIGN.md, "Restart"), one named step per function,
// called in order by Restart() at the bottom of this file:
//
//   LockDataDirectory   one queue manager per data directory
//   OpenStore           RocksDB under <data>/store; read the checkpoint meta
//   OpenLog             the decision table below; torn tail truncated,
//                       corruption refused (or cut when told to)
//   ColdStart           (cold only) old log set aside, store emptied
//   LoadCheckpoint      queues, sessions and message images; payloads stay
//                       on disk until a Get needs them
//   Redo                every record from redo_lsn, in LSN order
//   BackOutOpenUnits    units with no outcome: backout count + 1, poison
//                       messages to their backout queue (logged)
//   CheckInDoubt        units in doubt (prepared, no outcome) stay, their
//                       messages locked; refused under changed names
//   StartEngine         the engine from the rebuilt state; sessions restored
//   Checkpoint, Open    so the next crash redoes from here; with automatic
//                       checkpoints it is their first, taken while traffic
//                       starts
//
// The decision (store meta x log on disk x what the log holds). Rows are
// tried in order; the first that matches decides. The code: DecideLogAction
// (rows 1-4), Log::Open (5, 6), CheckRedoRange (7, 8), DecideMode after Redo
// (9-11); restart_test tests every row.
//
// | #  | store meta | log on disk                              | decision |
// |----|------------|------------------------------------------|-----------------------------------|
// | 1  | none       | no segments                              | NEW: create the log | | 2  | none
// | segments, the first where a new log      | EMERGENCY, redo from there (crash | |    | | starts
// (0, or where a cold start put it) | before the first checkpoint)      | | 3  | none       |
// segments, the first elsewhere            | REFUSE: the store that retired    | |    | | | them is
// gone                      | | 4  | present    | no segments                              |
// REFUSE: the log is missing        | | 5  | present    | another log id | REFUSE (Log::Open) | | 6
// | any        | corrupt: a later batch claims the damage | REFUSE with segment and offset;   | |
// |            | durable                                  | with --truncate-log-at-corruption | |
// |            |                                          | cut there, report the loss, go on | | 7
// | present    | redo_lsn below the first LSN             | REFUSE: segments it needs are gone| | 8
// | present    | log ends below redo_lsn                  | REFUSE: the log lost records the  | |
// |            |                                          | checkpoint reflects               | | 9
// | present    | clean; from redo_lsn only CHECKPOINT_END | NORMAL (nothing to redo)          | |
// |            | records, the last record SHUTDOWN        |                                   | |
// 10 | present    | torn tail                                | truncated (Log::Open); EMERGENCY  |
// | 11 | present    | anything else                            | EMERGENCY | | C  | any        |
// --cold                                   | COLD: refused while prepared units| |    | | | exist
// unless forced (lists them)  |
#include "restart/restart.h"

#include <algorithm>
#include <cassert>
#include <optional>
#include <set>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "log/reader.h"
#include "log/segment.h"

namespace qmgr::restart {

absl::string_view ModeName(Mode mode) {
  switch (mode) {
    case Mode::kNew:
      return "new";
    case Mode::kNormal:
      return "normal";
    case Mode::kEmergency:
      return "emergency";
    case Mode::kCold:
      return "cold";
  }
  return "?";
}

std::string RestartReport::ToString() const {
  std::string out =
      absl::StrCat("restart: ", ModeName(mode), ", redo LSN ", redo_from, "..", redo_to, " (",
                   (redo_to > redo_from ? redo_to - redo_from : 0) >> 20, " MiB), ", records_redone,
                   " records redone in ", absl::FormatDuration(replay_elapsed), ", ",
                   units_backed_out, " units backed out (", messages_backed_out, " messages, ",
                   messages_moved_to_backout_queues, " to backout queues), ", units_in_doubt,
                   " in doubt, open after ", absl::FormatDuration(elapsed));
  if (!log_tail.empty()) absl::StrAppend(&out, "; log tail: ", log_tail);
  absl::StrAppend(&out, "; messages per queue: {",
                  absl::StrJoin(messages_per_queue, ", ", absl::PairFormatter("=")), "}");
  absl::StrAppend(&out,
                  "; steps: ", absl::StrJoin(steps, ", ", [](std::string* s, const auto& step) {
                    absl::StrAppend(s, step.first, " ", absl::FormatDuration(step.second));
                  }));
  return out;
}

namespace internal {

LogAction DecideLogAction(bool has_meta, log::Lsn new_log_lsn, const LogOnDisk& disk,
                          std::string* why) {
  if (!has_meta && !disk.has_segments) return LogAction::kCreate;                    // row 1
  if (!has_meta && disk.first_lsn == new_log_lsn) return LogAction::kRedoFromStart;  // row 2
  if (!has_meta) {                                                                   // row 3
    *why = absl::StrCat("the log begins at LSN ", disk.first_lsn,
                        " but the store holds no checkpoint: the store that retired the "
                        "earlier segments is missing (or a cold start was interrupted: run it "
                        "again)");
    return LogAction::kRefuse;
  }
  if (!disk.has_segments) {  // row 4
    *why = "the store holds a checkpoint but the log directory has no segments";
    return LogAction::kRefuse;
  }
  return LogAction::kRedoFromCheckpoint;  // rows 5-11 need the opened log
}

// Rows 7 and 8, once the log is open.
absl::Status CheckRedoRange(log::Lsn redo_lsn, log::Lsn first_lsn, log::Lsn end_lsn) {
  if (redo_lsn < first_lsn) {
    return absl::FailedPreconditionError(absl::StrCat("the checkpoint redoes from LSN ", redo_lsn,
                                                      " but the log begins at LSN ", first_lsn,
                                                      ": segments it needs were removed"));
  }
  // The next batch after the log's end starts at the next block: a
  // checkpoint taken while no batch was open names that LSN.
  if (log::AlignUp(end_lsn) < redo_lsn) {
    return absl::DataLossError(
        absl::StrCat("the log ends at LSN ", end_lsn, " below the checkpoint's redo LSN ", redo_lsn,
                     ": the log lost records the checkpoint reflects (was an fsync lost?)"));
  }
  return absl::OkStatus();
}

// Rows 9-11, after Redo.
Mode DecideMode(bool clean_tail, bool only_markers, bool ends_in_shutdown) {
  return clean_tail && only_markers && ends_in_shutdown ? Mode::kNormal : Mode::kEmergency;
}

}  // namespace internal

namespace {

using internal::LogAction;
using qmgr::v1::LogRecord;

// A message as restart rebuilds it.
struct RecoveredMessage {
  qmgr::v1::Message m;  // payload set when it came from the log
  int64_t position = 0;
  UowId taken_by = 0;
  bool stored = false;  // loaded from the store (its payload is there)
  bool changed = false;
};

struct RecoveredQueue {
  qmgr::v1::QueueAttributes attributes;
  bool changed = false;
  int64_t next_head = 0;
  int64_t next_tail = 0;
};

// The state being rebuilt: the checkpoint, then every record redone on it.
struct State {
  std::map<std::string, RecoveredQueue> queues;
  absl::flat_hash_map<uint64_t, RecoveredMessage> messages;
  std::map<std::string, qmgr::v1::StoredSession> sessions;
  std::set<std::string> changed_sessions;
  // Coordinated units by store key: in doubt (prepared set) or remembered.
  std::map<std::string, qmgr::v1::StoredCoordinatedUnit> coordinated;
  std::set<std::string> changed_coordinated;
  std::set<std::string> stored_coordinated;  // keys the store holds
  std::vector<uint64_t> deleted_messages;
  std::set<std::string> deleted_queues;
  uint64_t first_free_id = 1;
  UowId next_uow = 1;
  // Redo bookkeeping.
  bool only_markers = true;
  bool ends_in_shutdown = false;
};

absl::Status Inconsistent(log::Lsn lsn, absl::string_view what) {
  return absl::DataLossError(absl::StrCat("redo of the record at LSN ", lsn, ": ", what));
}

// A session record redone: the session as it is now, marked for the checkpoint.
qmgr::v1::StoredSession& SessionOf(State& state, const std::string& session) {
  state.changed_sessions.insert(session);
  return state.sessions[session];
}

void AdvanceSession(State& state, const std::string& session, uint64_t in_seq) {
  qmgr::v1::StoredSession& s = SessionOf(state, session);
  s.set_in_seq(std::max(s.in_seq(), in_seq));
  s.set_closed(false);
}

// The output queue of a session: the queue whose output_of_session names it.
RecoveredQueue* OutputQueueOf(State& state, const std::string& session, std::string* name) {
  for (auto& [queue_name, queue] : state.queues) {
    if (queue.attributes.output_of_session() == session) {
      *name = queue_name;
      return &queue;
    }
  }
  return nullptr;
}

// What the engine relies on in a message it is given back; the checksums
// cannot vouch for it when the record or the store was written wrong.
absl::Status CheckRecoverable(const qmgr::v1::Message& m) {
  if (!qmgr::v1::MessageClass_IsValid(m.class_())) {
    return absl::DataLossError(
        absl::StrCat("message ", m.id(), " has class ", m.class_(), ", which is no class"));
  }
  return absl::OkStatus();
}

absl::Status AddAtTail(State& state, log::Lsn lsn, qmgr::v1::Message&& m) {
  state.first_free_id = std::max(state.first_free_id, m.id() + 1);
  if (state.messages.contains(m.id())) return absl::OkStatus();  // redo is idempotent
  if (absl::Status s = CheckRecoverable(m); !s.ok()) return Inconsistent(lsn, s.message());
  auto queue = state.queues.find(m.queue());
  if (queue == state.queues.end()) {
    return Inconsistent(lsn, absl::StrCat("message ", m.id(), " is for queue '", m.queue(),
                                          "', which is not defined"));
  }
  RecoveredMessage& r = state.messages[m.id()];
  r.position = queue->second.next_tail++;
  r.m = std::move(m);
  r.changed = true;
  return absl::OkStatus();
}

absl::StatusOr<RecoveredMessage*> Find(State& state, log::Lsn lsn, uint64_t id) {
  auto it = state.messages.find(id);
  if (it == state.messages.end()) {
    return Inconsistent(lsn, absl::StrCat("message ", id, " is not on any queue"));
  }
  return &it->second;
}

void Remove(State& state, uint64_t id) {
  auto it = state.messages.find(id);
  if (it == state.messages.end()) return;
  if (it->second.stored) state.deleted_messages.push_back(id);
  state.messages.erase(it);
}

// Back to the head of their queues, in the order given (the order taken).
void ReturnToHead(State& state, const std::vector<RecoveredMessage*>& messages) {
  for (auto it = messages.rbegin(); it != messages.rend(); ++it) {
    RecoveredMessage& r = **it;
    r.position = --state.queues.at(r.m.queue()).next_head;
    r.taken_by = 0;
    r.changed = true;
  }
}

void MoveToTail(State& state, RecoveredMessage& r, const std::string& to_queue) {
  r.m.set_queue(to_queue);
  r.position = state.queues.at(to_queue).next_tail++;
  r.taken_by = 0;
  r.changed = true;
}

// Moves the messages out of `record`.
absl::Status RedoRecord(State& state, log::Lsn lsn, LogRecord& record) {
  if (record.body_case() != LogRecord::kCheckpointEnd &&
      record.body_case() != LogRecord::kShutdown) {
    state.only_markers = false;
  }
  state.ends_in_shutdown = record.body_case() == LogRecord::kShutdown;
  switch (record.body_case()) {
    case LogRecord::kEnqueue:
      for (qmgr::v1::Message& m : *record.mutable_enqueue()->mutable_messages()) {
        if (absl::Status s = AddAtTail(state, lsn, std::move(m)); !s.ok()) return s;
      }
      for (const qmgr::v1::SessionAdvance& a : record.enqueue().sessions()) {
        AdvanceSession(state, a.session(), a.in_seq());
      }
      return absl::OkStatus();
    case LogRecord::kGet: {
      const qmgr::v1::GetRecord& get = record.get();
      absl::StatusOr<RecoveredMessage*> r = Find(state, lsn, get.message_id());
      if (!r.ok()) return r.status();
      (*r)->taken_by = get.uow_id();
      (*r)->m.set_backout_count(get.backout_count());
      (*r)->changed = true;
      state.next_uow = std::max(state.next_uow, get.uow_id() + 1);
      return absl::OkStatus();
    }
    case LogRecord::kSyncpoint: {
      const qmgr::v1::SyncPointRecord& sync = record.syncpoint();
      for (const uint64_t id : sync.consumed_message_ids()) Remove(state, id);
      for (qmgr::v1::Message& m : *record.mutable_syncpoint()->mutable_inserted()) {
        if (absl::Status s = AddAtTail(state, lsn, std::move(m)); !s.ok()) return s;
      }
      for (const qmgr::v1::Message& m : sync.deferred_inputs()) {
        state.first_free_id = std::max(state.first_free_id, m.id() + 1);
      }
      for (const qmgr::v1::SessionAdvance& a : sync.sessions()) {
        AdvanceSession(state, a.session(), a.in_seq());
      }
      state.next_uow = std::max(state.next_uow, sync.uow_id() + 1);
      return absl::OkStatus();
    }
    case LogRecord::kBackout: {
      const qmgr::v1::BackoutRecord& backout = record.backout();
      if (backout.message_ids_size() != backout.backout_counts_size()) {
        return Inconsistent(lsn, "BACKOUT lists unequal numbers of ids and counts");
      }
      std::vector<RecoveredMessage*> returning;
      for (int i = 0; i < backout.message_ids_size(); ++i) {
        absl::StatusOr<RecoveredMessage*> r = Find(state, lsn, backout.message_ids(i));
        if (!r.ok()) return r.status();
        (*r)->m.set_backout_count(backout.backout_counts(i));
        returning.push_back(*r);
      }
      ReturnToHead(state, returning);
      return absl::OkStatus();
    }
    case LogRecord::kBackoutMove: {
      const qmgr::v1::BackoutMoveRecord& move = record.backout_move();
      absl::StatusOr<RecoveredMessage*> r = Find(state, lsn, move.message_id());
      if (!r.ok()) return r.status();
      if (!state.queues.contains(move.to_queue())) {
        return Inconsistent(lsn,
                            absl::StrCat("backout queue '", move.to_queue(), "' is not defined"));
      }
      (*r)->m.set_backout_count(move.backout_count());
      MoveToTail(state, **r, move.to_queue());
      return absl::OkStatus();
    }
    case LogRecord::kQueueDefine: {
      RecoveredQueue& q = state.queues[record.queue_define().queue()];
      q.attributes = record.queue_define().attributes();
      q.changed = true;
      state.deleted_queues.erase(record.queue_define().queue());
      return absl::OkStatus();
    }
    case LogRecord::kQueueAlter: {
      auto it = state.queues.find(record.queue_alter().queue());
      if (it == state.queues.end()) {
        return Inconsistent(lsn, absl::StrCat("QUEUE_ALTER of undefined queue '",
                                              record.queue_alter().queue(), "'"));
      }
      it->second.attributes = record.queue_alter().attributes();
      it->second.changed = true;
      return absl::OkStatus();
    }
    case LogRecord::kQueueDelete: {
      const std::string& name = record.queue_delete().queue();
      std::vector<uint64_t> purged;
      for (const auto& [id, r] : state.messages) {
        if (r.m.queue() == name) purged.push_back(id);
      }
      for (const uint64_t id : purged) Remove(state, id);
      state.queues.erase(name);
      state.deleted_queues.insert(name);
      return absl::OkStatus();
    }
    case LogRecord::kIdReserve:
      state.first_free_id = std::max(state.first_free_id,
                                     record.id_reserve().first_id() + record.id_reserve().count());
      return absl::OkStatus();
    case LogRecord::kSessionOpen: {
      qmgr::v1::StoredSession& s = SessionOf(state, record.session_open().session());
      s.set_closed(false);
      s.set_opened_time_us(record.session_open().time_us());
      return absl::OkStatus();
    }
    case LogRecord::kSessionSeq: {
      const qmgr::v1::SessionSeqRecord& seq = record.session_seq();
      qmgr::v1::StoredSession& s = SessionOf(state, seq.session());
      s.set_in_seq(seq.in_seq());
      s.set_out_seq(seq.out_seq());
      s.set_out_message_id(seq.out_message_id());
      s.set_output_acknowledged(!seq.output_outstanding());
      s.set_reassigned(false);
      return absl::OkStatus();
    }
    case LogRecord::kSessionClose: {
      qmgr::v1::StoredSession& s = SessionOf(state, record.session_close().session());
      s.set_closed(true);
      s.set_closed_time_us(record.session_close().time_us());
      return absl::OkStatus();
    }
    case LogRecord::kOutputSent: {
      const qmgr::v1::OutputSentRecord& sent = record.output_sent();
      qmgr::v1::StoredSession& s = SessionOf(state, sent.session());
      s.set_out_seq(sent.out_seq());
      s.set_out_message_id(sent.message_id());
      s.set_output_acknowledged(!state.messages.contains(sent.message_id()));
      return absl::OkStatus();
    }
    case LogRecord::kOutputAcked: {
      const qmgr::v1::OutputAckedRecord& acked = record.output_acked();
      qmgr::v1::StoredSession& s = SessionOf(state, acked.session());
      s.set_out_seq(acked.out_seq());
      s.set_out_message_id(acked.message_id());
      s.set_output_acknowledged(true);
      if (acked.positive()) {
        Remove(state, acked.message_id());
        return absl::OkStatus();
      }
      auto it = state.messages.find(acked.message_id());
      if (it != state.messages.end()) {
        it->second.m.set_backout_count(acked.backout_count());
        ReturnToHead(state, {&it->second});
      }
      return absl::OkStatus();
    }
    case LogRecord::kAssign: {
      const qmgr::v1::AssignRecord& assign = record.assign();
      std::string from_name, to_name;
      RecoveredQueue* from = OutputQueueOf(state, assign.from_session(), &from_name);
      RecoveredQueue* to = OutputQueueOf(state, assign.to_session(), &to_name);
      if (from == nullptr || to == nullptr) {
        return Inconsistent(lsn,
                            absl::StrCat("ASSIGN from session '", assign.from_session(), "' to '",
                                         assign.to_session(), "': an output queue is not defined"));
      }
      std::vector<RecoveredMessage*> moving;
      for (auto& [id, r] : state.messages) {
        if (r.m.queue() == from_name && r.taken_by == 0) moving.push_back(&r);
      }
      std::sort(moving.begin(), moving.end(),
                [](const RecoveredMessage* a, const RecoveredMessage* b) {
                  return a->position < b->position;
                });
      for (RecoveredMessage* r : moving) {
        if (r->m.id() == assign.possible_duplicate_message_id()) r->m.set_possible_duplicate(true);
        MoveToTail(state, *r, to_name);
      }
      qmgr::v1::StoredSession& s = SessionOf(state, assign.from_session());
      if (assign.forced() && assign.possible_duplicate_message_id() != 0) {
        s.set_output_acknowledged(true);
        s.set_reassigned(true);
      }
      return absl::OkStatus();
    }
    case LogRecord::kPrepare: {
      qmgr::v1::PrepareRecord& prepare = *record.mutable_prepare();
      const std::string key =
          CoordinatedStoreKey({prepare.coordinator(), prepare.qualifier(), prepare.xid()});
      for (const qmgr::v1::Message& m : prepare.inserted()) {
        state.first_free_id = std::max(state.first_free_id, m.id() + 1);
      }
      for (const qmgr::v1::Message& m : prepare.deferred_inputs()) {
        state.first_free_id = std::max(state.first_free_id, m.id() + 1);
      }
      state.next_uow = std::max(state.next_uow, prepare.uow_id() + 1);
      qmgr::v1::StoredCoordinatedUnit& unit = state.coordinated[key];
      unit.Clear();
      // Older records carry no time: the unit is then as old as this restart.
      unit.set_prepared_time_us(prepare.prepared_time_us() != 0 ? prepare.prepared_time_us()
                                                                : absl::ToUnixMicros(absl::Now()));
      *unit.mutable_prepared() = std::move(prepare);
      state.changed_coordinated.insert(key);
      return absl::OkStatus();
    }
    case LogRecord::kResolve: {
      const qmgr::v1::ResolveRecord& resolve = record.resolve();
      if (resolve.heuristic()) return absl::OkStatus();  // damage reported, nothing changed
      const std::string key =
          CoordinatedStoreKey({resolve.coordinator(), resolve.qualifier(), resolve.xid()});
      auto it = state.coordinated.find(key);
      if (it == state.coordinated.end() || !it->second.has_prepared()) {
        return absl::OkStatus();  // redone before (the checkpoint holds its outcome)
      }
      qmgr::v1::StoredCoordinatedUnit& unit = it->second;
      if (resolve.outcome() == qmgr::v1::COMMIT) {
        qmgr::v1::PrepareRecord& prepared = *unit.mutable_prepared();
        for (const uint64_t id : prepared.consumed_message_ids()) Remove(state, id);
        for (qmgr::v1::Message& m : *prepared.mutable_inserted()) {
          if (absl::Status s = AddAtTail(state, lsn, std::move(m)); !s.ok()) return s;
        }
        for (const qmgr::v1::SessionAdvance& a : prepared.sessions()) {
          AdvanceSession(state, a.session(), a.in_seq());
        }
      }
      // BACKOUT: the BACKOUT record that follows returns its messages (or,
      // if it was lost, BackOutOpenUnits does).
      unit.Clear();
      unit.set_outcome(resolve.outcome());
      unit.set_decided_by(resolve.decided_by());
      state.changed_coordinated.insert(key);
      return absl::OkStatus();
    }
    case LogRecord::kForget: {
      const qmgr::v1::ForgetRecord& forget = record.forget();
      for (const std::string& xid : forget.xids()) {
        const std::string key =
            CoordinatedStoreKey({forget.coordinator(), forget.qualifier(), xid});
        auto it = state.coordinated.find(key);
        if (it == state.coordinated.end() || it->second.has_prepared()) continue;
        state.coordinated.erase(it);
        state.changed_coordinated.insert(key);
      }
      return absl::OkStatus();
    }
    case LogRecord::kCheckpointEnd:
    case LogRecord::kShutdown:
      return absl::OkStatus();
    default:
      // A record type this version does not know: refusing beats dropping
      // its state.
      return absl::UnimplementedError(
          absl::StrCat("the record at LSN ", lsn, " (type ", static_cast<int>(record.body_case()),
                       ") is not restored by this version of the queue manager"));
  }
}

// ---- The steps ----------------------------------------------------------------

absl::StatusOr<std::unique_ptr<log::FileLock>> LockDataDirectory(const RestartOptions& options) {
  if (absl::Status s = options.fs->CreateDir(options.data_dir); !s.ok()) return s;
  const std::string path = options.data_dir + "/LOCK";
  absl::StatusOr<std::unique_ptr<log::FileLock>> lock = options.fs->Lock(path);
  if (!lock.ok() && absl::IsFailedPrecondition(lock.status())) {
    return absl::FailedPreconditionError(absl::StrCat("data directory ", options.data_dir,
                                                      " is in use by another queue manager (", path,
                                                      " is locked)"));
  }
  return lock;
}

absl::StatusOr<std::unique_ptr<checkpoint::Store>> OpenStore(const RestartOptions& options) {
  SpillOptions spill;
  spill.path = options.data_dir + "/store";
  spill.env = options.store_env;
  spill.statistics = options.store_statistics;
  spill.write_buffer_bytes = options.store_write_buffer_bytes;
  spill.write_bytes_per_second = options.store_write_bytes_per_second;
  return checkpoint::Store::Open(std::move(spill));
}

absl::StatusOr<internal::LogOnDisk> LookAtLog(const RestartOptions& options,
                                              const std::string& dir) {
  internal::LogOnDisk disk;
  absl::StatusOr<bool> exists = options.fs->Exists(dir);
  if (!exists.ok()) return exists.status();
  if (!*exists) return disk;
  absl::StatusOr<std::vector<log::SegmentFile>> segments =
      log::ListSegments(options.fs, dir, nullptr);
  if (!segments.ok()) return segments.status();
  disk.has_segments = !segments->empty();
  if (disk.has_segments) disk.first_lsn = segments->front().header.first_lsn;
  return disk;
}

// Cold start: the store keeps only what the options say, then the old log
// is set aside (moved, never deleted), and a new log continues the LSN.
//
// The store is emptied first, its meta naming no log but the old log's end
// and the first id never reserved. A crash after that leaves this meta: a
// cold start run again takes it as its floor (the moved segments can no
// longer tell it), and any other restart refuses (row 3) or, once every
// segment is moved, starts the new log there (row 1).
absl::Status ColdStart(const RestartOptions& options, checkpoint::Store* store,
                       const std::optional<qmgr::v1::CheckpointMeta>& meta,
                       const std::string& log_dir, log::LogOptions* log_options,
                       std::string* note) {
  // The units in doubt the last checkpoint holds: a cold start does not read
  // the log (it may be unreadable), so one prepared since is not seen.
  std::vector<std::string> in_doubt;
  absl::Status listed =
      store->ForEachCoordinated([&](std::string, qmgr::v1::StoredCoordinatedUnit unit) {
        if (unit.has_prepared()) {
          in_doubt.push_back(absl::StrCat(unit.prepared().coordinator(), "/",
                                          unit.prepared().qualifier(), "/",
                                          absl::BytesToHexString(unit.prepared().xid())));
        }
        return absl::OkStatus();
      });
  if (!listed.ok()) return listed;
  if (!in_doubt.empty() && !options.force) {
    return absl::FailedPreconditionError(
        absl::StrCat("cold start refused: ", in_doubt.size(), " units are in doubt (",
                     absl::StrJoin(in_doubt, ", "), "); resolve them, or force"));
  }
  const bool resumed = meta && meta->log_id().empty();
  log::Lsn end = meta ? meta->redo_lsn() : 0;
  uint64_t first_free_id = meta ? std::max<uint64_t>(meta->first_free_id(), 1) : 1;
  std::map<std::string, std::optional<qmgr::v1::QueueAttributes>> definitions;
  absl::StatusOr<std::vector<log::SegmentFile>> segments = std::vector<log::SegmentFile>();
  absl::StatusOr<internal::LogOnDisk> disk = LookAtLog(options, log_dir);
  if (!disk.ok()) return disk.status();
  if (disk->has_segments) {
    segments = log::ListSegments(options.fs, log_dir, nullptr);
    if (!segments.ok()) return segments.status();
    end = std::max(end, segments->back().header.end_lsn());
  }
  // Ids reserved after the checkpoint, and queue definitions changed since,
  // are in the old log: read what can be read. When it cannot be read from
  // the checkpoint on to its end, ids skip a margin no log could fill, and
  // without any segment the LSN does too.
  const log::Lsn scan_from = meta && !resumed ? meta->redo_lsn() : 0;
  bool read_to_end = resumed;
  if (disk->has_segments && segments->front().header.first_lsn <= scan_from) {
    absl::StatusOr<std::unique_ptr<log::LogReader>> reader =
        log::LogReader::Open(options.fs, log_dir, scan_from);
    if (reader.ok()) {
      log::LogEntry entry;
      while (true) {
        absl::StatusOr<bool> more = (*reader)->Next(&entry);
        if (!more.ok()) break;
        if (!*more) {
          read_to_end = (*reader)->tail().kind != log::TailKind::kCorrupt;
          break;
        }
        LogRecord record;
        if (!record.ParseFromString(entry.payload)) continue;
        if (record.has_id_reserve()) {
          first_free_id =
              std::max(first_free_id, record.id_reserve().first_id() + record.id_reserve().count());
        } else if (record.has_queue_define()) {
          definitions[record.queue_define().queue()] = record.queue_define().attributes();
        } else if (record.has_queue_alter()) {
          definitions[record.queue_alter().queue()] = record.queue_alter().attributes();
        } else if (record.has_queue_delete()) {
          definitions[record.queue_delete().queue()] = std::nullopt;
        }
      }
    }
  } else if (!meta) {
    read_to_end = true;  // a new queue manager: nothing was ever reserved
  }
  constexpr uint64_t kUnreadIdMargin = uint64_t{1} << 48;
  constexpr log::Lsn kUnreadLsnMargin = log::Lsn{1} << 40;
  if (!read_to_end) {
    first_free_id += kUnreadIdMargin;
    if (!disk->has_segments) end += kUnreadLsnMargin;
  }
  log_options->first_lsn_if_new = log::AlignUp(end);
  log_options->create_if_missing = true;
  log_options->expected_log_id.reset();
  qmgr::v1::CheckpointMeta cold;
  cold.set_checkpoint_number(meta ? meta->checkpoint_number() : 0);
  cold.set_redo_lsn(log_options->first_lsn_if_new);
  cold.set_first_free_id(first_free_id);
  cold.set_next_uow(meta ? meta->next_uow() : 1);
  cold.set_replay_bytes_per_second(meta ? meta->replay_bytes_per_second() : 0);
  if (absl::Status s = store->Discard(options.cold_keep_definitions, definitions, cold); !s.ok()) {
    return s;
  }
  *note =
      absl::StrCat("cold start: the new log begins at LSN ", cold.redo_lsn(), ", message ids at ",
                   first_free_id, read_to_end ? "" : " (the old log was not readable to its end)");
  if (!in_doubt.empty()) {
    absl::StrAppend(note, "; units in doubt discarded (forced): ", absl::StrJoin(in_doubt, ", "));
  }
  if (!disk->has_segments) return absl::OkStatus();
  const std::string aside =
      absl::StrCat(options.data_dir, "/log.cold-", absl::ToUnixSeconds(absl::Now()));
  if (absl::Status s = options.fs->CreateDir(aside); !s.ok()) return s;
  if (absl::Status s = options.fs->SyncDir(options.data_dir); !s.ok()) return s;
  for (const log::SegmentFile& segment : *segments) {
    const std::string name = segment.path.substr(segment.path.rfind('/') + 1);
    if (absl::Status s = options.fs->Rename(segment.path, aside + "/" + name); !s.ok()) return s;
  }
  if (absl::Status s = options.fs->SyncDir(aside); !s.ok()) return s;
  if (absl::Status s = options.fs->SyncDir(log_dir); !s.ok()) return s;
  absl::StrAppend(note, "; the old log's segments are in ", aside);
  return absl::OkStatus();
}

absl::Status LoadCheckpoint(checkpoint::Store* store, const qmgr::v1::CheckpointMeta& meta,
                            State& state) {
  state.first_free_id = std::max<uint64_t>(meta.first_free_id(), 1);
  state.next_uow = std::max<UowId>(meta.next_uow(), 1);
  absl::Status s = store->ForEachQueue([&](std::string name, qmgr::v1::StoredQueue q) {
    state.queues[name].attributes = std::move(*q.mutable_attributes());
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  s = store->ForEachSession([&](std::string name, qmgr::v1::StoredSession session) {
    state.sessions[name] = std::move(session);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  s = store->ForEachCoordinated([&](std::string key, qmgr::v1::StoredCoordinatedUnit unit) {
    if (absl::Status parsed = ParseCoordinatedStoreKey(key).status(); !parsed.ok()) return parsed;
    state.stored_coordinated.insert(key);
    state.coordinated[key] = std::move(unit);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  s = store->ForEachMessage([&](qmgr::v1::StoredMessage stored) {
    const uint64_t id = stored.message().id();
    auto queue = state.queues.find(stored.message().queue());
    if (queue == state.queues.end()) {
      return absl::DataLossError(absl::StrCat("checkpoint store: message ", id, " is for queue '",
                                              stored.message().queue(),
                                              "', which the store does not define"));
    }
    if (absl::Status checked = CheckRecoverable(stored.message()); !checked.ok()) {
      return absl::DataLossError(absl::StrCat("checkpoint store: ", checked.message()));
    }
    RecoveredQueue& q = queue->second;
    RecoveredMessage& r = state.messages[id];
    r.m = std::move(*stored.mutable_message());
    r.position = stored.position();
    r.taken_by = stored.taken_by_uow();
    r.stored = true;
    // Every position, taken ones too, so that new ones never collide.
    q.next_head = std::min(q.next_head, r.position);
    q.next_tail = std::max(q.next_tail, r.position + 1);
    return absl::OkStatus();
  });
  return s;
}

absl::Status Redo(const RestartOptions& options, const std::string& log_dir, log::Lsn from,
                  log::Lsn to, State& state, RestartReport& report) {
  report.redo_from = from;
  report.redo_to = to;
  const absl::Time start = absl::Now();
  absl::Time next_progress = start + absl::Seconds(1);
  absl::StatusOr<std::unique_ptr<log::LogReader>> reader =
      log::LogReader::Open(options.fs, log_dir, from, to);
  if (!reader.ok()) return reader.status();
  log::LogEntry entry;
  LogRecord record;
  while (true) {
    absl::StatusOr<bool> more = (*reader)->Next(&entry);
    if (!more.ok()) return more.status();
    if (!*more) break;
    if (!record.ParseFromString(entry.payload) || record.body_case() != entry.type) {
      return absl::DataLossError(absl::StrCat("the record at LSN ", entry.lsn,
                                              " has a valid checksum but does not parse"));
    }
    if (absl::Status s = RedoRecord(state, entry.lsn, record); !s.ok()) return s;
    ++report.records_redone;
    if (options.progress && absl::Now() >= next_progress) {
      next_progress += absl::Seconds(1);
      const double done = static_cast<double>(entry.lsn - from);
      const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
      options.progress(absl::StrCat(
          "redo: ", report.records_redone, " records, ", static_cast<uint64_t>(done) >> 20, " of ",
          (to - from) >> 20, " MiB (",
          static_cast<int>(100 * done / static_cast<double>(std::max<log::Lsn>(to - from, 1))),
          "%), ", static_cast<uint64_t>(done / seconds) >> 20, " MiB/s"));
    }
  }
  report.replay_elapsed = absl::Now() - start;
  // The log may end just below a redo LSN at a block boundary (row 8).
  const log::Lsn bytes = to > from ? to - from : 0;
  constexpr log::Lsn kMeasurableBytes = 16 << 20;
  const double seconds = absl::ToDoubleSeconds(report.replay_elapsed);
  if (bytes >= kMeasurableBytes && seconds > 0) {
    report.replay_bytes_per_second = static_cast<double>(bytes) / seconds;
  }
  return absl::OkStatus();
}

// Units with no outcome: what they held goes back with backout count + 1,
// and to the backout queue at the threshold, as a live backout would do.
// Logged, so that tools see it and a crash during restart counts once.
std::set<UowId> UnitsInDoubt(const State& state) {
  std::set<UowId> in_doubt;
  for (const auto& [key, unit] : state.coordinated) {
    if (unit.has_prepared()) in_doubt.insert(unit.prepared().uow_id());
  }
  return in_doubt;
}

absl::Status BackOutOpenUnits(log::Log* log, State& state, RestartReport& report) {
  const std::set<UowId> in_doubt = UnitsInDoubt(state);
  std::map<UowId, std::vector<RecoveredMessage*>> units;
  for (auto& [id, r] : state.messages) {
    if (r.taken_by != 0 && !in_doubt.contains(r.taken_by)) units[r.taken_by].push_back(&r);
  }
  for (auto& [uow, taken] : units) {
    // Taken from the head, so position order is the order taken.
    std::sort(taken.begin(), taken.end(), [](const RecoveredMessage* a, const RecoveredMessage* b) {
      return a->position < b->position;
    });
    LogRecord record;
    qmgr::v1::BackoutRecord* backout = record.mutable_backout();
    backout->set_uow_id(uow);
    backout->set_reason(qmgr::v1::BACKOUT_RESTART);
    std::vector<RecoveredMessage*> returning;
    std::vector<LogRecord> moves;
    for (RecoveredMessage* r : taken) {
      r->m.set_backout_count(r->m.backout_count() + 1);
      backout->add_message_ids(r->m.id());
      backout->add_backout_counts(r->m.backout_count());
      const qmgr::v1::QueueAttributes& a = state.queues.at(r->m.queue()).attributes;
      if (a.backout_threshold() > 0 && r->m.backout_count() >= a.backout_threshold() &&
          state.queues.contains(a.backout_queue())) {
        qmgr::v1::BackoutMoveRecord* m = moves.emplace_back().mutable_backout_move();
        m->set_message_id(r->m.id());
        m->set_from_queue(r->m.queue());
        m->set_to_queue(a.backout_queue());
        m->set_backout_count(r->m.backout_count());
        MoveToTail(state, *r, a.backout_queue());
        ++report.messages_moved_to_backout_queues;
      } else {
        returning.push_back(r);
      }
    }
    ReturnToHead(state, returning);
    if (absl::StatusOr<log::Lsn> lsn = log->Append(record); !lsn.ok()) return lsn.status();
    for (const LogRecord& move : moves) {
      if (absl::StatusOr<log::Lsn> lsn = log->Append(move); !lsn.ok()) return lsn.status();
    }
    ++report.units_backed_out;
    report.messages_backed_out += taken.size();
  }
  return absl::OkStatus();
}

// Units in doubt were prepared under this queue manager's names: under
// others their coordinators could not find them (seed 004: do not change
// the qualifier while units are outstanding).
absl::Status CheckInDoubt(const RestartOptions& options, const qmgr::v1::CheckpointMeta& meta,
                          const State& state, RestartReport& report) {
  report.units_in_doubt = UnitsInDoubt(state).size();
  if (report.units_in_doubt == 0 || options.force) return absl::OkStatus();
  // A unit whose qualifier is neither new name could not be found by its
  // coordinator.
  for (const auto& [key, unit] : state.coordinated) {
    if (!unit.has_prepared()) continue;
    const std::string& qualifier = unit.prepared().qualifier();
    if (qualifier != options.qmgr_name && qualifier != options.group_name) {
      return absl::FailedPreconditionError(absl::StrCat(
          report.units_in_doubt, " units are in doubt; one of coordinator '",
          unit.prepared().coordinator(), "' has resync qualifier '", qualifier,
          "', which is neither queue manager '", options.qmgr_name, "' nor group '",
          options.group_name,
          "': its coordinator could not resolve it; start under the old names, or force"));
    }
  }
  // No checkpoint recorded names yet (a crash before the first one): the
  // qualifiers above are all there is to check.
  const bool recorded = !meta.qmgr_name().empty() || !meta.group_name().empty();
  if (!recorded ||
      (meta.qmgr_name() == options.qmgr_name && meta.group_name() == options.group_name)) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      report.units_in_doubt, " units are in doubt, prepared under queue manager '",
      meta.qmgr_name(), "' group '", meta.group_name(), "'; starting as '", options.qmgr_name,
      "' group '", options.group_name,
      "' would hide them from their coordinators: start under the old names, or force"));
}

RestoredState ToRestoredState(State& state, RestartReport& report) {
  RestoredState out;
  out.next_uow = state.next_uow;
  std::map<std::string, std::vector<RecoveredMessage*>> by_queue;
  for (auto& [id, r] : state.messages) by_queue[r.m.queue()].push_back(&r);
  for (auto& [name, q] : state.queues) {
    RestoredQueue& rq = out.queues.emplace_back();
    rq.name = name;
    rq.attributes = q.attributes;
    rq.changed = q.changed;
    std::vector<RecoveredMessage*>& messages = by_queue[name];
    std::sort(messages.begin(), messages.end(),
              [](const RecoveredMessage* a, const RecoveredMessage* b) {
                return a->position < b->position;
              });
    rq.messages.reserve(messages.size());
    for (RecoveredMessage* r : messages) {
      RestoredMessage& m = rq.messages.emplace_back();
      m.taken_by = r->taken_by;  // a unit in doubt: the others were backed out
      m.message = std::move(r->m);
      m.position = r->position;
      m.stored = r->stored;
      m.payload_in_store = r->stored;
      m.changed = r->changed;
    }
    report.messages_per_queue[name] = messages.size();
  }
  out.sessions = std::move(state.sessions);
  out.changed_sessions.assign(state.changed_sessions.begin(), state.changed_sessions.end());
  for (auto& [key, unit] : state.coordinated) {
    absl::StatusOr<CoordinatedKey> parsed = ParseCoordinatedStoreKey(key);
    assert(parsed.ok() && "LoadCheckpoint checked the store's keys");
    out.coordinated.push_back(
        {*std::move(parsed), std::move(unit), state.changed_coordinated.contains(key)});
  }
  for (const std::string& key : state.stored_coordinated) {
    if (!state.coordinated.contains(key)) out.forgotten.push_back(key);
  }
  out.deleted_messages = std::move(state.deleted_messages);
  out.deleted_queues.assign(state.deleted_queues.begin(), state.deleted_queues.end());
  return out;
}

}  // namespace

QueueManager::~QueueManager() {
  if (checkpointer_ != nullptr) checkpointer_->Stop();
}

absl::Status QueueManager::Shutdown() {
  if (shut_down_) return absl::OkStatus();
  shut_down_ = true;
  checkpointer_->Stop();
  engine_->Quiesce(qmgr::v1::BACKOUT_SHUTDOWN);
  absl::StatusOr<checkpoint::CheckpointReport> checkpoint =
      checkpointer_->Checkpoint(checkpoint::Trigger::kShutdown);
  if (!checkpoint.ok()) return checkpoint.status();
  LogRecord record;
  record.mutable_shutdown()->set_checkpoint_number(checkpoint->checkpoint_number);
  if (absl::StatusOr<log::Lsn> lsn = log_->AppendDurable(record); !lsn.ok()) return lsn.status();
  if (absl::Status s = store_->Flush(/*wait=*/true); !s.ok()) return s;
  return log_->Close();
}

absl::StatusOr<std::unique_ptr<QueueManager>> Restart(RestartOptions options) {
  const absl::Time start = absl::Now();
  auto qm = std::unique_ptr<QueueManager>(new QueueManager());
  RestartReport& report = qm->report_;
  const std::string log_dir = options.data_dir + "/log";
  absl::Time step_start = start;
  const auto step_done = [&](absl::string_view step) {
    const absl::Time now = absl::Now();
    report.steps.emplace_back(step, now - step_start);
    if (options.on_step) options.on_step(step, now - step_start);
    step_start = now;
  };

  absl::StatusOr<std::unique_ptr<log::FileLock>> lock = LockDataDirectory(options);
  if (!lock.ok()) return lock.status();
  qm->lock_ = *std::move(lock);
  step_done("lock");

  absl::StatusOr<std::unique_ptr<checkpoint::Store>> store = OpenStore(options);
  if (!store.ok()) return store.status();
  qm->store_ = *std::move(store);
  absl::StatusOr<std::optional<qmgr::v1::CheckpointMeta>> meta = qm->store_->ReadMeta();
  if (!meta.ok()) return meta.status();
  step_done("store");
  log::LogOptions log_options = options.log;
  log_options.truncate_at_corruption = options.truncate_log_at_corruption;
  if (options.archive) {
    log_options.archive_dir = options.data_dir + "/archive";
    if (absl::Status s = options.fs->CreateDir(log_options.archive_dir); !s.ok()) return s;
  }
  std::string cold_note;
  if (options.cold) {
    if (absl::Status s =
            ColdStart(options, qm->store_.get(), *meta, log_dir, &log_options, &cold_note);
        !s.ok()) {
      return s;
    }
    meta = qm->store_->ReadMeta();
    if (!meta.ok()) return meta.status();
  }

  // OpenLog: rows 1-8 of the decision table. A meta without a log id is a
  // cold start's (its store emptied, its new log not yet checkpointed): no
  // checkpoint, and a new log starts at its redo LSN.
  const bool has_meta = meta->has_value() && !(*meta)->log_id().empty();
  const log::Lsn new_log_lsn = meta->has_value() && !has_meta ? (*meta)->redo_lsn() : 0;
  absl::StatusOr<internal::LogOnDisk> disk = LookAtLog(options, log_dir);
  if (!disk.ok()) return disk.status();
  std::string why;
  const LogAction action = internal::DecideLogAction(has_meta, new_log_lsn, *disk, &why);
  if (action == LogAction::kRefuse) return absl::FailedPreconditionError(why);
  log_options.create_if_missing = action == LogAction::kCreate;
  if (action == LogAction::kRedoFromCheckpoint) {
    absl::StatusOr<log::LogId> id = log::LogId::Parse((*meta)->log_id());
    if (!id.ok()) return id.status();
    log_options.expected_log_id = *id;
  }
  if (!has_meta) log_options.first_lsn_if_new = new_log_lsn;
  absl::StatusOr<std::unique_ptr<log::Log>> log = log::Log::Open(options.fs, log_dir, log_options);
  if (!log.ok()) return log.status();
  qm->log_ = *std::move(log);
  step_done("open log");
  const log::LogOpenReport& opened = qm->log_->open_report();
  if (opened.tail.kind != log::TailKind::kClean) report.log_tail = opened.tail.ToString();
  if (opened.truncated && opened.tail.kind == log::TailKind::kCorrupt) {
    report.log_tail = absl::StrCat("cut at the corruption: ", opened.tail.lost_records,
                                   " records lost (LSN ", opened.tail.damage_lsn, " to ",
                                   opened.tail.lost_end_lsn, "); ", report.log_tail);
  }
  report.log_truncated = opened.truncated;

  State state;
  log::Lsn redo_from = opened.first_lsn;
  if (has_meta) {
    redo_from = (*meta)->redo_lsn();
    if (absl::Status s = internal::CheckRedoRange(redo_from, opened.first_lsn, opened.end_lsn);
        !s.ok()) {
      return s;
    }
  }
  // A cold start's store holds no messages, but its definitions and ids.
  if (meta->has_value()) {
    if (absl::Status s = LoadCheckpoint(qm->store_.get(), **meta, state); !s.ok()) return s;
  }
  step_done("load checkpoint");
  if (absl::Status s = Redo(options, log_dir, redo_from, opened.end_lsn, state, report); !s.ok()) {
    return s;
  }
  step_done("redo");
  if (absl::Status s =
          CheckInDoubt(options, meta->value_or(qmgr::v1::CheckpointMeta()), state, report);
      !s.ok()) {
    return s;
  }
  if (options.cold) {
    report.mode = Mode::kCold;
  } else if (action == LogAction::kCreate) {
    report.mode = Mode::kNew;
  } else {
    report.mode = internal::DecideMode(opened.tail.kind == log::TailKind::kClean && has_meta,
                                       state.only_markers, state.ends_in_shutdown);
  }
  if (!cold_note.empty()) report.log_tail = cold_note;
  if (absl::Status s = BackOutOpenUnits(qm->log_.get(), state, report); !s.ok()) return s;
  step_done("back out");

  // StartEngine.
  EngineOptions engine_options = options.engine;
  engine_options.first_free_id = state.first_free_id;
  engine_options.spill = qm->store_->spill();
  engine_options.stored_payloads = qm->store_.get();
  qm->engine_ = std::make_unique<Engine>(qm->log_.get(), std::move(engine_options),
                                         ToRestoredState(state, report));
  step_done("start engine");

  // Checkpoint, then Open. With automatic checkpoints the restart's
  // checkpoint is the checkpointer's first act, taken while traffic runs:
  // that is as safe as taking it before (docs/checkpoint-restart.md), and a
  // large redo does not keep the queue manager closed while it is written.
  qmgr::v1::CheckpointMeta last = meta->value_or(qmgr::v1::CheckpointMeta());
  last.set_qmgr_name(options.qmgr_name);  // every checkpoint from now names them
  last.set_group_name(options.group_name);
  qm->checkpointer_ = std::make_unique<checkpoint::Checkpointer>(
      qm->log_.get(), qm->engine_.get(), qm->store_.get(), options.checkpoint, last);
  if (report.replay_bytes_per_second > 0) {
    qm->checkpointer_->SetReplayRate(report.replay_bytes_per_second);
  }
  if (options.automatic_checkpoints) {
    // With an on_checkpoint observer every checkpoint is reported there.
    qm->checkpointer_->Start(
        [progress = options.checkpoint.on_checkpoint ? nullptr : options.progress](
            const absl::StatusOr<checkpoint::CheckpointReport>& r) {
          if (!progress) return;
          progress(r.ok() ? r->ToString()
                          : absl::StrCat("checkpoint failed: ", r.status().message()));
        },
        checkpoint::Trigger::kRestart);
  } else {
    absl::StatusOr<checkpoint::CheckpointReport> first =
        qm->checkpointer_->Checkpoint(checkpoint::Trigger::kRestart);
    if (!first.ok()) return first.status();
    step_done("checkpoint");
  }
  report.elapsed = absl::Now() - start;
  if (options.progress) options.progress(report.ToString());
  return qm;
}

}  // namespace qmgr::restart
