// The queue engine: queues, message classes, units of work, sync points.
//
// An in-process API (the gRPC server calls it). Every recoverable change is
// appended to the system log under the engine's latch, applied in memory in
// the same critical section (so queue order is log order), and acknowledged
// only once the log says it is durable (DESIGN.md, "Message classes",
// "Units of work"):
//
// | class           | logged                                   | acknowledged       |
// |-----------------|------------------------------------------|--------------------|
// | RECOVERABLE     | ENQUEUE record at Enqueue                | when it is durable |
// | RESPONSE, CONVERSATIONAL, FASTPATH | with payload in the SYNCPOINT of the first unit that
// commits after Getting it | when queued in memory | | IRRECOVERABLE   | never (no record at
// Enqueue or Get)      | when queued in memory |
//
// Early visibility: a message is visible to Gets once its record is
// appended, before it is durable. That is safe because every effect of taking
// it (a SYNCPOINT) lies later in the log, so it is durable only if the
// message's own record is.
#ifndef QMGR_QMGR_ENGINE_H_
#define QMGR_QMGR_ENGINE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "log/log.h"
#include "qmgr/clock.h"
#include "qmgr/spill_store.h"
#include "qmgr/status.h"
#include "qmgr/v1/log.pb.h"
#include "qmgr/v1/session.pb.h"
#include "qmgr/v1/store.pb.h"

namespace qmgr {

using UowId = uint64_t;
using MessageClass = qmgr::v1::MessageClass;

// Two-phase commit with external coordinators (DESIGN.md, "In-doubt units
// of work"; qmgr/coordinated.cc).
struct CoordinatedKey {
  std::string coordinator;  // like a CICS APPLID
  std::string qualifier;    // this queue manager's name or its group's
  std::string xid;          // bytes, 1..kXidBytesMax
};
// An X/Open XID: three 4-byte fields and up to 128 bytes of ids.
inline constexpr size_t kXidBytesMax = 140;
inline constexpr size_t kCoordinatorNameBytesMax = 64;  // also the qualifier's

// Reads payloads that only the checkpoint store holds: a restart leaves the
// payloads of checkpointed messages on disk until a Get needs them.
class StoredPayloads {
 public:
  virtual ~StoredPayloads() = default;
  virtual absl::StatusOr<std::string> ReadPayload(uint64_t message_id) = 0;
};

struct EngineOptions {
  // Bounds per unit of work, so that no SYNCPOINT record exceeds the log's
  // maximum record (16 MiB): messages taken or inserted, and payload bytes
  // the sync point must carry (inserts and deferred inputs).
  uint64_t unit_messages_max = 10000;
  uint64_t unit_bytes_max = 8u << 20;
  // A unit with no call for this long is backed out (IDLE_TIMEOUT).
  absl::Duration unit_idle_timeout = absl::Seconds(60);
  // How often the idle reaper looks; zero: no reaper thread (tests call
  // ReapIdleUnits themselves).
  absl::Duration reaper_interval = absl::Seconds(1);
  // The max message size of a queue that does not set one.
  uint64_t default_max_message_bytes = 4u << 20;
  // Message ids are reserved in blocks of this many (one ID_RESERVE each).
  uint64_t id_block = 1u << 16;
  // The first id never used before (restart gives it; a new queue manager 1).
  uint64_t first_free_id = 1;
  Clock* clock = RealClock::Get();
  // Payload bytes held in memory. Beyond it, payloads of newly queued
  // messages go to `spill` (read back at Get); without a spill store, or when
  // spilling fails and memory reaches 5/4 of the budget, Enqueue answers
  // RESOURCE_EXHAUSTED. 0: no budget.
  uint64_t memory_budget_bytes = 1ull << 30;
  SpillStore* spill = nullptr;  // not owned; may be null
  // Payload bytes the spill store may hold, so that spilling stops before it
  // fills the data directory's disk (which the log and the checkpoint store
  // share). At the limit new payloads stay in memory until 5/4 of the
  // budget, then Enqueue answers RESOURCE_EXHAUSTED naming the limit. 0: no
  // limit.
  uint64_t spill_limit_bytes = 16ull << 30;
  // Payloads of restored messages (RestoredMessage::payload_in_store). Not
  // owned; required when a restored message has its payload there.
  StoredPayloads* stored_payloads = nullptr;
  // Account the CPU that calling threads spend waiting for durability
  // (wait_cpu_nanos): two thread-CPU clock reads per wait, so off by default.
  bool measure_wait_cpu = false;
  // Tests: runs after a Get has released the latch, before it copies its
  // answer out of the messages it took (Engine::CopyOut).
  std::function<void(UowId)> before_answer_copy;
};

struct MemoryStatus {
  uint64_t budget_bytes = 0;
  uint64_t payload_bytes_in_memory = 0;
  uint64_t spilled_messages = 0;
  uint64_t spilled_bytes = 0;
};

enum class Durability { kDurable, kInMemory };

// A message as a producer sends it (Enqueue) or a program inserts it.
struct MessageSpec {
  std::string queue;
  std::string payload;
  MessageClass message_class = qmgr::v1::MESSAGE_CLASS_UNSPECIFIED;  // queue default
  std::string correlation_id;
  std::string reply_to;
  int64_t expiry_time_us = 0;  // 0: never
  // Input from a session: its name and the input number (1, 2, 3, ...).
  std::string origin_session;
  uint64_t input_seq = 0;
  // Implied acknowledgement of the origin session's output with this number
  // (Enqueue only; 0: none).
  uint64_t ack_out_seq = 0;
};

struct EnqueueResult {
  uint64_t message_id = 0;
  log::Lsn lsn = log::kNoLsn;  // the ENQUEUE record; kNoLsn when not logged
  Durability durability = Durability::kInMemory;
};

struct GetOptions {
  UowId uow = 0;  // 0: start a new unit
  std::string queue;
  absl::Duration wait = absl::ZeroDuration();  // how long to wait for a message
  // Commit the unit `uow` first, then take the message in a new unit: one
  // call per message for an IMS single-mode program.
  bool commit_previous = false;
  // Up to this many messages into the unit (0 or 1: one). The wait is for the
  // first only; the others are those available at once, in queue order.
  uint32_t max_messages = 1;
  // The messages after the first stop before their sizes (message and payload
  // bytes) would bring the total above this: what one answer can carry.
  uint64_t max_bytes = UINT64_MAX;
};

struct GetResult {
  UowId uow = 0;  // the unit now holding the message(s)
  qmgr::v1::Message message;
  // With max_messages > 1: the messages taken after `message`, in queue order.
  std::vector<qmgr::v1::Message> more;
};

struct SyncPointResult {
  log::Lsn lsn = log::kNoLsn;  // the SYNCPOINT record; kNoLsn when nothing was logged
  uint64_t consumed = 0;
  uint64_t inserted = 0;
};

struct QueueStatus {
  std::string name;
  qmgr::v1::QueueAttributes attributes;
  uint64_t depth = 0;  // visible messages
  uint64_t taken = 0;  // taken by open units
  uint64_t expired_discarded = 0;
  uint64_t backout_moved_in = 0;
  // Of `taken`: held by units in doubt (until their coordinator's outcome).
  uint64_t in_doubt = 0;
  // Since the head message (the oldest in commit order) was enqueued; zero
  // when the queue is empty.
  absl::Duration oldest_message_age;
  // Per second over the last 10 s: messages arriving at the tail (puts,
  // committed inserts, backout moves, assigned output) and taken (Gets,
  // output sent).
  double enqueue_rate = 0;
  double get_rate = 0;
  // Visible messages by class (classes with none left out).
  std::map<MessageClass, uint64_t> by_class;
};

// Messages that went through a queue since the engine started, per class
// (counted under the latch the operation already holds; read by qmgrd's
// metrics).
struct ClassTraffic {
  uint64_t enqueued = 0;    // made visible by Enqueue, or inserted by a unit that committed
  uint64_t got = 0;         // taken by a unit's Get
  uint64_t committed = 0;   // consumed by a unit's commit
  uint64_t backed_out = 0;  // returned (or moved to the backout queue) by a backout
};
// Indexed by MessageClass number (0, MESSAGE_CLASS_UNSPECIFIED, stays zero).
inline constexpr size_t kMessageClassSlots = qmgr::v1::MessageClass_ARRAYSIZE;

struct QueueTraffic {
  std::string name;
  uint64_t depth = 0;
  uint64_t taken = 0;
  std::array<ClassTraffic, kMessageClassSlots> by_class{};
};

struct EngineTraffic {
  std::vector<QueueTraffic> queues;  // by name
  uint64_t units_committed = 0;      // sync points (and coordinated commits)
  uint64_t units_backed_out = 0;     // backouts of units that held messages
};

// What restart (restart/) rebuilt from the store and the log, for the engine
// it starts. Everything restored is visible except what units in doubt hold:
// restart has backed out the units that were open at the crash.
struct RestoredMessage {
  qmgr::v1::Message message;      // with its payload, unless payload_in_store
  int64_t position = 0;           // StoredMessage.position
  bool stored = false;            // the store holds an image of it
  bool payload_in_store = false;  // the store holds its payload (read at Get)
  bool changed = false;           // its image differs from the store's
  UowId taken_by = 0;             // an in-doubt unit holds it
};

struct RestoredQueue {
  std::string name;
  qmgr::v1::QueueAttributes attributes;
  bool changed = false;                   // the store's definition differs
  std::vector<RestoredMessage> messages;  // head first, positions ascending
};

// A coordinated unit restart found: in doubt (`prepared` set, its taken
// messages are the RestoredMessages with taken_by == uow), or resolved and
// remembered.
struct RestoredCoordinatedUnit {
  CoordinatedKey key;
  qmgr::v1::StoredCoordinatedUnit unit;
  bool changed = false;  // differs from the store's image
};

struct RestoredState {
  std::vector<RestoredQueue> queues;
  std::vector<RestoredCoordinatedUnit> coordinated;
  std::vector<std::string> forgotten;  // store keys of coordinated units gone since
  std::map<std::string, qmgr::v1::StoredSession> sessions;
  std::vector<std::string> changed_sessions;
  std::vector<uint64_t> deleted_messages;  // in the store, gone since
  std::vector<std::string> deleted_queues;
  UowId next_uow = 1;
};

// What changed since the last checkpoint (DESIGN.md, "Checkpoints", step 2),
// taken under the engine latch: the state as of redo_lsn.
struct CheckpointDelta {
  log::Lsn redo_lsn = 0;
  uint64_t first_free_id = 0;  // no id at or above it has been reserved
  UowId next_uow = 0;
  struct MessageImage {
    qmgr::v1::StoredMessage image;
    // The payload, when the store lacks it: here, or in the spill store.
    std::shared_ptr<const std::string> payload;
    bool payload_in_spill = false;
  };
  std::vector<MessageImage> messages;
  std::vector<uint64_t> deleted_messages;
  std::vector<std::pair<std::string, qmgr::v1::QueueAttributes>> queues;
  std::vector<std::string> deleted_queues;
  std::vector<std::pair<std::string, qmgr::v1::StoredSession>> sessions;
  // Coordinated units by store key (CoordinatedStoreKey): in doubt or
  // remembered; and keys whose units were forgotten or committed in one phase.
  std::vector<std::pair<std::string, qmgr::v1::StoredCoordinatedUnit>> coordinated;
  std::vector<std::string> forgotten;
};

// The store key of a coordinated unit, and back.
std::string CoordinatedStoreKey(const CoordinatedKey& key);
absl::StatusOr<CoordinatedKey> ParseCoordinatedStoreKey(absl::string_view stored);

// Sessions (DESIGN.md, "Session resynchronization"; docs/sessions.md).
struct StsnRequest {
  qmgr::v1::InputFlow input;
  qmgr::v1::OutputFlow output;
  bool by_admin = false;  // SET allowed on a session not opened cold
};

struct StsnAnswer {
  qmgr::v1::InputFlowAnswer input;
  qmgr::v1::OutputFlowAnswer output;
};

struct SessionOutput {
  uint64_t out_seq = 0;
  qmgr::v1::Message message;
  bool exception_response = false;  // irrecoverable: done when sent
};

// What one receiver (a Receive stream) has been answered, across its
// ReceiveOutput calls.
struct ReceiveCursor {
  uint64_t binding = 0;  // the binding it began on (0: not begun)
  uint64_t epoch = 0;    // the data traffic it began in
  uint64_t sent = 0;     // the last numbered output answered to it
};

// OpenSession's answer (BindSession).
struct SessionBinding {
  bool resync_required = false;
  // The session was bound already and this binding took it over: the
  // client that had bound it.
  std::optional<std::string> superseded_client;
};

struct AssignResult {
  uint64_t moved = 0;
  uint64_t possible_duplicate_message_id = 0;
};

struct InDoubtUnit {
  CoordinatedKey key;
  UowId uow = 0;
  absl::Duration age;                     // since Prepare
  std::vector<uint64_t> locked_messages;  // taken, neither consumed nor returned
  std::vector<std::string> queues;        // the queues those messages hold back
  uint64_t inserted = 0;                  // invisible until the outcome
};

struct ResolveResult {
  // Over the XIDs asked about: `in_doubt` were in doubt before the call;
  // each XID then counts once in `committed` or `backed_out` (its outcome,
  // new or remembered) or in `unresolved` (refused: `statuses` says why).
  uint64_t in_doubt = 0;
  uint64_t committed = 0;
  uint64_t backed_out = 0;
  uint64_t unresolved = 0;
  std::vector<absl::Status> statuses;  // per XID, in request order
};

struct OpenUnit {
  UowId id = 0;
  absl::Duration age;   // since it began
  absl::Duration idle;  // since its last call
  uint64_t messages = 0;
  // Its oldest log record (first GET or PREPARE; kNoLsn: none known), and
  // the log written since it.
  log::Lsn first_lsn = log::kNoLsn;
  uint64_t log_bytes_since_first = 0;
  bool in_doubt = false;                      // prepared, waiting for its coordinator's outcome
  std::optional<CoordinatedKey> coordinated;  // a coordinator's unit
};

class Engine {
 public:
  // `log` must outlive the engine. Starts the idle reaper. `restored`: the
  // state restart rebuilt (empty for a new queue manager).
  Engine(log::Log* log, EngineOptions options, RestoredState restored = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queue definitions (QUEUE_DEFINE / QUEUE_ALTER / QUEUE_DELETE), durable on
  // return. Names: 1..48 of [A-Za-z0-9._-]. DeleteQueue refuses a queue with
  // messages unless `purge`, and always one with messages taken by open units.
  absl::Status DefineQueue(const std::string& name, const qmgr::v1::QueueAttributes& attributes);
  absl::Status AlterQueue(const std::string& name, const qmgr::v1::QueueAttributes& attributes);
  absl::Status DeleteQueue(const std::string& name, bool purge);
  absl::StatusOr<QueueStatus> DisplayQueue(const std::string& name) const;
  std::vector<QueueStatus> DisplayQueues() const;

  // Puts a message on its queue. RECOVERABLE returns once its ENQUEUE record
  // is durable; other classes once queued in memory.
  // Specs are taken by value: a caller that moves them in saves a payload copy.
  absl::StatusOr<EnqueueResult> Enqueue(MessageSpec spec);
  // Many messages in one ENQUEUE record: all or nothing.
  absl::StatusOr<std::vector<EnqueueResult>> EnqueueBatch(std::vector<MessageSpec> specs);
  // EnqueueBatch without the durability wait of a success: returns once the
  // messages are queued and sets *durable_lsn to the LSN that must be durable
  // (WaitDurable) before the caller reports them enqueued (kNoLsn: none). A
  // server completes many calls per fsync this way, with no thread blocked
  // per call. Refusals are returned as EnqueueBatch returns them.
  absl::StatusOr<std::vector<EnqueueResult>> EnqueueBatchNoWait(std::vector<MessageSpec> specs,
                                                                log::Lsn* durable_lsn);

  // Starts an empty unit of work.
  UowId BeginUnit();
  // Takes the next message off a queue into a unit, waiting up to
  // options.wait. NotFound for an unknown queue or unit; DeadlineExceeded
  // when no message came.
  absl::StatusOr<GetResult> Get(const GetOptions& options);
  // Get without the durability wait: the result (message, or error) must not
  // be reported before *durable_lsn is durable (kNoLsn: nothing to wait for):
  // the previous unit's commit with commit_previous, the GET record of a
  // redelivered message. It may still wait for a message (options.wait).
  absl::StatusOr<GetResult> GetNoWait(const GetOptions& options, log::Lsn* durable_lsn);
  // Returns once the record at `lsn` is durable (the NoWait calls' waits), or
  // with the log's failure.
  absl::Status WaitDurable(log::Lsn lsn);
  // Every record below this LSN is durable.
  log::Lsn DurableLsn() const;
  // Buffers a message in the unit; it becomes visible at the sync point.
  absl::Status Insert(UowId uow, MessageSpec spec);
  // Commits the unit: one SYNCPOINT record, one wait. QUEUE_FULL for an
  // insert beyond its queue's depth backs the unit out instead.
  absl::StatusOr<SyncPointResult> SyncPoint(UowId uow);
  // Returns the unit's Gets to the head of their queues, in order, backout
  // count + 1; poison messages move to the backout queue.
  absl::Status Backout(UowId uow, qmgr::v1::BackoutReason reason = qmgr::v1::BACKOUT_REQUESTED);

  // Messages visible on a queue, oldest first, without taking them.
  absl::StatusOr<std::vector<qmgr::v1::Message>> Browse(const std::string& queue,
                                                        size_t max_messages) const;

  // Backs out units idle longer than the timeout; returns how many.
  int ReapIdleUnits();
  // The unit's owner ends it (a stream that backs it out when it goes): the
  // idle timeout no longer applies to it. NotFound for a unit not open.
  absl::Status ExemptFromIdleTimeout(UowId uow);
  // A normal shutdown's last step on the engine: from now on every call that
  // changes anything answers UNAVAILABLE, waiting Gets end (UNAVAILABLE), the
  // idle reaper stops, and every open unit not in doubt is backed out with
  // `reason`.
  // Returns how many units were backed out.
  int Quiesce(qmgr::v1::BackoutReason reason);

  // Checkpoint steps 1 and 2: under the latch, redo_lsn and the changes since
  // the last checkpoint. Until EndCheckpoint, spilled payloads are kept (the
  // checkpoint reads them outside the latch). One checkpoint at a time.
  CheckpointDelta BeginCheckpoint();
  void EndCheckpoint();
  // Open units of work, the oldest first.
  std::vector<OpenUnit> OpenUnits() const;

  MemoryStatus Memory() const;
  // Counts of messages through each queue and of units ended, since start.
  EngineTraffic Traffic() const;
  // CPU spent by calling threads inside durability waits (measure_wait_cpu).
  int64_t wait_cpu_nanos() const { return wait_cpu_nanos_.load(std::memory_order_relaxed); }

  // ---- Coordinated units (qmgr/coordinated.cc) ----
  // A unit owned by (coordinator, qualifier, xid); Get and Insert work on it
  // as on any unit. ALREADY_EXISTS while that key is open, in doubt or
  // remembered.
  absl::StatusOr<UowId> BeginCoordinatedUnit(const CoordinatedKey& key);
  // The unit open or in doubt under `key` (NotFound: none).
  absl::StatusOr<UowId> CoordinatedUnit(const CoordinatedKey& key) const;
  // Phase one: one self-contained PREPARE, durable on return. From then the
  // unit is in doubt: its Gets stay taken, its Inserts invisible, no timeout,
  // lease or shutdown ends it; only Resolve does. QUEUE_FULL backs it out.
  absl::Status Prepare(UowId uow);
  // Outcomes for XIDs of (coordinator, qualifier): an in-doubt unit gets its
  // outcome (RESOLVE, durable); an open one commits or backs out in one
  // phase; a remembered outcome answers OK when equal and FAILED_PRECONDITION
  // / HEURISTIC_MISMATCH (logged as heuristic damage) when not; NOT_FOUND for
  // an XID never seen. `decided_by`: the coordinator, or the operator.
  ResolveResult Resolve(const std::string& coordinator, const std::string& qualifier,
                        const std::vector<std::pair<std::string, qmgr::v1::Outcome>>& outcomes,
                        const std::string& decided_by);
  // Units in doubt, the oldest first; empty names: every coordinator.
  std::vector<InDoubtUnit> InDoubtUnits(const std::string& coordinator,
                                        const std::string& qualifier) const;
  // Remembered outcomes the coordinator no longer needs (FORGET). XIDs still
  // in doubt are refused (FAILED_PRECONDITION), unknown ones ignored.
  absl::Status Forget(const std::string& coordinator, const std::string& qualifier,
                      const std::vector<std::string>& xids);

  // ---- Sessions (qmgr/sessions.cc) ----
  // BIND. A rebind supersedes the previous binding: its ReceiveOutput ends
  // (ABORTED). Returns whether resync is required (the session's last record
  // is not SESSION_CLOSE). Durable on return (SESSION_OPEN).
  absl::StatusOr<bool> OpenSession(const std::string& session, bool cold);
  // BIND by `client` (the caller's identity): a session bound by another
  // client is refused (FAILED_PRECONDITION, reason SESSION_BOUND) unless
  // `may_take_over_others`; the same client takes it over (a client that
  // crashed binds its session again). OpenSession is a bind that may take
  // over any binding.
  absl::StatusOr<SessionBinding> BindSession(const std::string& session, bool cold,
                                             const std::string& client, bool may_take_over_others);
  // The client that bound `session`, or nullopt when it is not bound.
  std::optional<std::string> SessionClient(const std::string& session) const;
  // STSN, one action per flow. The numbers answered are durable.
  absl::StatusOr<StsnAnswer> SetAndTestSequenceNumbers(const std::string& session,
                                                       const StsnRequest& request);
  // SDT: FAILED_PRECONDITION (RESYNC_REQUIRED) until both flows agree.
  absl::Status StartDataTraffic(const std::string& session);
  // RQR: data traffic stops until STSN and SDT again.
  absl::Status RequestRecovery(const std::string& session);
  // CLEAR: ends the session's ReceiveOutput, discards its queued input not
  // yet hardened (returns how many), requires resync.
  absl::StatusOr<uint64_t> Clear(const std::string& session);
  // UNBIND after a normal end (SESSION_CLOSE, durable on return): refused
  // while output is unacknowledged or a deferred input is outstanding.
  absl::Status CloseSession(const std::string& session);
  // The session's next output, waiting up to `wait` (DeadlineExceeded when
  // none came). One outstanding at a time: while an output waits for its
  // acknowledgement it is answered again (same number). OUTPUT_SENT is
  // durable before it returns. A rebind, Clear or CloseSession ends the wait
  // (ABORTED); RequestRecovery too (RESYNC_REQUIRED). Irrecoverable output
  // is not numbered (out_seq 0) and is done when sent.
  // `cursor` (may be null) ties calls of one receiver together: the output
  // it was answered is not answered to it again (the call waits for its
  // acknowledgement, then the next output); after a rebind, Clear or
  // CloseSession since its first call: ABORTED; after a resync (STSN and SDT
  // again, even if no call saw the RequestRecovery): RESYNC_REQUIRED.
  absl::StatusOr<SessionOutput> ReceiveOutput(const std::string& session, absl::Duration wait,
                                              ReceiveCursor* cursor = nullptr);
  // Positive: the output is dequeued (OUTPUT_ACKED, durable on return);
  // acknowledging the last acknowledged number again is OK. Negative (sense
  // code nonzero): kept, backout count + 1, moved to the backout queue at
  // its threshold; returns whether it moved.
  absl::StatusOr<bool> Acknowledge(const std::string& session, uint64_t out_seq, bool positive,
                                   uint32_t sense_code);
  // Moves `from`'s queued output to `to`'s output queue (ASSIGN, durable).
  absl::StatusOr<AssignResult> Assign(const std::string& from, const std::string& to, bool force);
  // Every known session (or the named ones; NotFound for an unknown name).
  absl::StatusOr<std::vector<qmgr::v1::SessionInfo>> DisplaySessions(
      const std::vector<std::string>& names) const;
  // Sessions whose sent output waits for its acknowledgement.
  size_t OutputsUnacknowledged() const;
  // A session's last hardened input number (0 if none).
  uint64_t SessionInSeq(const std::string& session) const;
  uint64_t next_free_id() const;

 private:
  struct Message;
  struct Queue;
  struct Unit;
  struct Session;  // qmgr/sessions.cc
  // Messages a commit consumed, freed by the caller after the latch is
  // released; one inline, since most units hold one.
  using Consumed = absl::InlinedVector<std::unique_ptr<Message>, 1>;
  // What a unit's SYNCPOINT or PREPARE carries (consumed ids, inserts and
  // deferred inputs with payloads, session advances); false when nothing in
  // it is recoverable.
  template <typename UnitRecord>
  bool FillUnitRecord(const Unit& unit, UnitRecord* record,
                      std::vector<std::pair<std::string, uint64_t>>* hardened) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Inserts beyond their queue's max depth (or into a deleted queue).
  absl::Status CheckInsertDepth(const Unit& unit) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The unit's commit is in the log at `lsn`: apply it and end the unit.
  void ApplyCommit(Unit* unit, log::Lsn lsn,
                   const std::vector<std::pair<std::string, uint64_t>>& hardened,
                   SyncPointResult* result, Consumed* consumed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // One XID's outcome (Resolve); sets *wait to a record to wait for.
  absl::Status ResolveOne(const CoordinatedKey& key, qmgr::v1::Outcome outcome,
                          const std::string& decided_by, bool* was_in_doubt, log::Lsn* wait,
                          Consumed* consumed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Refuses calls of the program API on a unit in doubt.
  static absl::Status CheckNotInDoubt(const Unit& unit);
  // What DisplayQueue(s) answer for one queue; `in_doubt`: the messages units
  // in doubt hold, by queue.
  static QueueStatus StatusOf(const Queue& queue, int64_t now_us,
                              const absl::flat_hash_map<std::string, uint64_t>& in_doubt);
  absl::flat_hash_map<std::string, uint64_t> InDoubtByQueue() const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  struct Remembered {
    qmgr::v1::Outcome outcome = qmgr::v1::OUTCOME_UNSPECIFIED;
    std::string decided_by;
    bool heuristic = false;
  };

  absl::Status ValidateSpec(const MessageSpec& spec, uint64_t payload_bytes, int64_t now_us,
                            Queue** queue, MessageClass* cls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Input numbering of a session (DESIGN.md): `expected_seq` is the number
  // due next, 0 for the session's in_seq + 1.
  // A number already hardened sets *hardened_lsn: the refusal waits for it.
  absl::Status CheckSessionInput(const MessageSpec& spec, MessageClass cls, uint64_t expected_seq,
                                 log::Lsn* hardened_lsn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A session bound by OpenSession (SESSION_NOT_OPEN otherwise), with data
  // traffic started when `data_traffic` (RESYNC_REQUIRED otherwise).
  absl::StatusOr<Session*> BoundSession(const std::string& name, bool data_traffic)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Session* FindSession(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Session& SessionNamed(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The queue whose output_of_session names the session (null: none).
  Queue* OutputQueueOf(const std::string& session) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // An implied or explicit acknowledgement: checks, appends OUTPUT_ACKED and
  // applies it. Sets *lsn to the record (kNoLsn: nothing to log).
  absl::Status CheckAcknowledge(const std::string& name, const Session& session,
                                uint64_t out_seq) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<bool> AcknowledgeLocked(const std::string& name, Session& session,
                                         uint64_t out_seq, bool positive, uint32_t sense_code,
                                         log::Lsn* lsn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The reply a session's outstanding deferred input waited for is done.
  void ReplyDone(Session& session, uint64_t message_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves a session's sent output into `to` (head or tail); it is no longer
  // outstanding.
  void ReturnSentOutput(Session& session, Queue* to, bool at_head)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MarkSessionChanged(const std::string& name, Session& session, log::Lsn lsn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  qmgr::v1::StoredSession ImageOf(const Session& session) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Normal shutdown: SESSION_CLOSE for bound sessions with nothing outstanding.
  void CloseIdleSessions() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<uint64_t> NextId(log::Lsn* reserve_lsn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A message from its spec, made before taking the latch (allocations and
  // the payload copy); Admit gives it its id and class and charges its memory.
  // Moves the payload out of `spec`.
  static std::unique_ptr<Message> NewMessage(MessageSpec& spec, int64_t now_us);
  void Admit(Message* message, MessageClass cls, uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Abandon(absl::Span<const std::unique_ptr<Message>> messages, absl::Status status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A batch (EnqueueBatch, EnqueueBatchNoWait): refuses an empty one.
  absl::StatusOr<std::vector<EnqueueResult>> EnqueueAll(absl::Span<MessageSpec> specs,
                                                        log::Lsn* durable_lsn);
  // Fills `results`, one per spec. durable_lsn null: waits for durability;
  // else sets it (EnqueueBatchNoWait).
  absl::Status EnqueueMany(absl::Span<MessageSpec> specs, absl::Span<EnqueueResult> results,
                           log::Lsn* durable_lsn = nullptr);
  // EnqueueMany under the latch: validates all, appends, queues. Sets the LSN
  // to wait for, or on ALREADY_HARDENED the one that refusal waits for.
  absl::Status EnqueueLocked(absl::Span<MessageSpec> specs, int64_t now_us,
                             absl::Span<std::unique_ptr<Message>> messages,
                             absl::Span<EnqueueResult> results, log::Lsn* wait_lsn,
                             log::Lsn* hardened_lsn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The messages a Get took (the first, then those of result.more), to be
  // copied into its answer after the latch is released. Their unit's
  // `busy` count, raised when `unit` is set, keeps them unchanged until
  // CopyOut lowers it. Inline room for one: a Get of one allocates nothing.
  struct Copies {
    Unit* unit = nullptr;
    absl::InlinedVector<const Message*, 1> messages;
  };
  // Get under the latch; sets the LSNs the caller must wait for. Fills the
  // caller's `result` (its unit), so that no GetResult is moved or
  // destroyed while the latch is held.
  absl::Status GetLocked(const GetOptions& options, absl::Time now, log::Lsn* commit_lsn,
                         log::Lsn* get_lsn, Copies* copies, Consumed* consumed, GetResult* result)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Outside the latch: the messages into `result`, then lets their unit end.
  static void CopyOut(Copies& copies, GetResult* result);
  // A record reused under the latch for one record type (ENQUEUE, GET,
  // SYNCPOINT): emptied, with its allocations kept, saving a dozen
  // allocations and frees per message while the latch is held.
  static qmgr::v1::LogRecord& ScratchRecord(qmgr::v1::LogRecord& record);
  // Appends a scratch record; frees it if it grew large.
  absl::StatusOr<log::Lsn> AppendScratch(qmgr::v1::LogRecord& record)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves `message`, the front of `queue`'s visible list, into `unit`: its
  // GET record (when logged), within the unit's byte limit. Raises *get_lsn
  // to that record for a redelivered message. On an error it stays queued.
  absl::Status TakeInto(Unit& unit, Queue& queue, Message* message, int64_t now_us,
                        log::Lsn* get_lsn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ending a unit while a Get of it waits (or copies its answer) would pull
  // the unit from under it.
  absl::Status CheckNotWaiting(const Unit& unit) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static uint64_t TakenFrom(const Unit& unit, const std::string& queue);
  void ForgetDeferredInput(const Message& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckUnitBytes(const Unit& unit, uint64_t more) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Unit*> FindUnit(UowId uow, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Unit* NewUnit(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EndUnit(UowId uow) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves the consumed messages to `consumed`, to be freed outside the latch.
  absl::StatusOr<log::Lsn> CommitLocked(Unit* unit, SyncPointResult* result, Consumed* consumed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void BackoutLocked(Unit* unit, qmgr::v1::BackoutReason reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Message* TakeNext(Queue* queue, int64_t now_us) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Refuses new payload bytes when memory is over budget and spilling cannot
  // relieve it.
  absl::Status CheckMemory(uint64_t incoming) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether `bytes` more would take the spill store beyond its limit.
  bool SpillAtLimit(uint64_t bytes) const;
  void Spill(Message* message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The payload of a message whose payload is not in memory.
  absl::StatusOr<std::string> ReadUnloaded(const Message& message) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Unspill(Message* message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropSpilled(const Message& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MakeVisible(Queue* queue, std::unique_ptr<Message> message, bool at_head)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The same, with the clock already read outside the latch.
  void MakeVisible(Queue* queue, std::unique_ptr<Message> message, bool at_head, int64_t now_us)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The next checkpoint writes this message's image (if it is recoverable).
  void MarkChanged(Message* message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The message leaves the engine for good (consumed, expired, purged).
  void Retire(const Message& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Restore(RestoredState restored) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReaperLoop();
  // UNAVAILABLE once Quiesce began.
  absl::Status CheckOpen() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool NoGetWaiting() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  log::Log* const log_;
  const EngineOptions options_;
  // What one unit's (or batch's) record may carry: unit_bytes_max, bounded
  // by the log's largest record.
  const uint64_t record_bytes_max_;

  // The engine latch: every mutation appends its record and applies its
  // effect while holding it, so memory and log stay in the same order.
  mutable absl::Mutex mu_;
  // Payload bytes of messages held in memory; declared before the queues and
  // units so that it outlives the messages that uncharge it.
  uint64_t payload_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // shared_ptr: a Get waiting on a queue's condition variable keeps it alive
  // through a concurrent DeleteQueue.
  std::map<std::string, std::shared_ptr<Queue>> queues_ ABSL_GUARDED_BY(mu_);
  // Open units by id. Ids only grow, so a new unit goes at the end (with a
  // hint: no search), and most of the few open ones are found in a handful
  // of comparisons. A hash table did worse here: one unit ends and the next
  // begins per message, and its tombstones from that churn were cleaned up
  // under the latch again and again.
  using UnitMap = std::map<UowId, std::unique_ptr<Unit>>;
  UnitMap units_ ABSL_GUARDED_BY(mu_);
  // Ended units, in their map nodes, reused as they are (one unit per message
  // in single mode): neither the unit nor its node is allocated again.
  std::vector<UnitMap::node_type> free_units_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<Session>> sessions_ ABSL_GUARDED_BY(mu_);
  // Coordinated units by store key: open or in doubt; and remembered outcomes.
  absl::flat_hash_map<std::string, UowId> coordinated_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Remembered> remembered_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> changed_coordinated_ ABSL_GUARDED_BY(mu_);
  int receivers_waiting_ ABSL_GUARDED_BY(mu_) = 0;  // ReceiveOutput calls waiting
  UowId next_uow_ ABSL_GUARDED_BY(mu_) = 1;
  // Message ids: [next_id_, block_end_) are reserved; the next block
  // [block_end_, next_block_end_) is reserved ahead by next_block_lsn_.
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t block_end_ ABSL_GUARDED_BY(mu_) = 0;
  log::Lsn block_lsn_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_block_end_ ABSL_GUARDED_BY(mu_) = 0;
  log::Lsn next_block_lsn_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;  // the reaper ends
  bool quiesced_ ABSL_GUARDED_BY(mu_) = false;
  // Changes since the last checkpoint. Recoverable messages only, by id; a
  // message leaves changed_messages_ when it is destroyed.
  absl::flat_hash_map<uint64_t, Message*> changed_messages_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> deleted_messages_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> changed_queues_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> deleted_queues_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> changed_sessions_ ABSL_GUARDED_BY(mu_);
  // Between BeginCheckpoint and EndCheckpoint: spill deletions wait, since
  // the checkpoint may still read those payloads.
  bool checkpointing_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_set<uint64_t> deferred_spill_drops_ ABSL_GUARDED_BY(mu_);
  // Scratch records (ScratchRecord).
  qmgr::v1::LogRecord enqueue_record_ ABSL_GUARDED_BY(mu_);
  qmgr::v1::LogRecord get_record_ ABSL_GUARDED_BY(mu_);
  qmgr::v1::LogRecord syncpoint_record_ ABSL_GUARDED_BY(mu_);
  uint64_t units_committed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t units_backed_out_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<int64_t> wait_cpu_nanos_{0};
  std::thread reaper_;
};

// Queue names: 1..48 characters of [A-Za-z0-9._-].
bool IsValidQueueName(absl::string_view name);

}  // namespace qmgr

#endif  // QMGR_QMGR_ENGINE_H_
