// The engine's inner types, shared by engine.cc (queues, units of work)
// and sessions.cc (sessions). Not for use outside qmgr/.
#ifndef QMGR_QMGR_ENGINE_INTERNAL_H_
#define QMGR_QMGR_ENGINE_INTERNAL_H_

#include <array>
#include <atomic>
#include <cassert>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "qmgr/engine.h"

namespace qmgr {

inline bool IsDeferred(MessageClass cls) {
  return cls == qmgr::v1::RESPONSE || cls == qmgr::v1::CONVERSATIONAL || cls == qmgr::v1::FASTPATH;
}

// An upper bound of what a message adds to a record: its fields, plus room
// for field tags, lengths and a session advance.
constexpr uint64_t kMessageOverheadBytes = 64;
// What a consumed message's id adds to a SYNCPOINT.
constexpr uint64_t kConsumedIdBytes = 11;
// Left for the record's own fields.
constexpr uint64_t kRecordSlackBytes = 4096;

inline uint64_t RecordCost(const MessageSpec& spec, uint64_t payload_bytes) {
  return payload_bytes + spec.queue.size() + spec.correlation_id.size() + spec.reply_to.size() +
         spec.origin_session.size() + kMessageOverheadBytes;
}

struct Engine::Message {
  qmgr::v1::Message m;  // without its payload: that is `payload`
  // Immutable once made, so a Get copies it out after releasing the latch.
  // Null while spilled.
  std::shared_ptr<const std::string> payload;
  // A log record holds it (ENQUEUE, or a SYNCPOINT that inserted or hardened
  // it): a restart restores it, so taking and dropping it must be logged too.
  bool logged = false;
  bool spilled = false;  // the payload is in the spill store
  // The payload is only in the checkpoint store (restored lazily).
  bool in_store = false;
  int64_t position = 0;  // order within its queue (StoredMessage.position)
  UowId taken_by = 0;    // the open unit holding it
  // Its queue while a unit holds it: a queue with taken messages is never
  // deleted, so commit and backout need not look it up by name.
  Queue* taken_from = nullptr;
  bool stored = false;            // a checkpoint wrote (or is writing) its image
  bool payload_in_store = false;  // ... and its payload
  // The engine's count of payload bytes in memory, charged while this holds
  // its payload. Messages are created and destroyed under the engine latch.
  uint64_t* memory = nullptr;
  uint64_t charged = 0;

  ~Message() { Uncharge(); }
  void Charge(uint64_t* counter) {
    Uncharge();
    memory = counter;
    charged = payload->size();
    *memory += charged;
  }
  void Uncharge() {
    if (memory != nullptr) *memory -= charged;
    memory = nullptr;
    charged = 0;
  }
  // The message as logged or handed out: with its payload.
  bool unloaded() const { return spilled || in_store; }
  qmgr::v1::Message Whole() const {
    qmgr::v1::Message whole = m;
    if (payload != nullptr) whole.set_payload(*payload);
    return whole;
  }
};

// Messages arriving on a queue and taken from it, and their rates over the
// last kRateWindow without a timer: a sample of the counts is kept at most
// once a second, just before the first change after a quiet second, so the
// counts at any moment of the window are known to within one second's
// changes.
class QueueRates {
 public:
  static constexpr absl::Duration kRateWindow = absl::Seconds(10);

  explicit QueueRates(int64_t now_us = 0) : since_us_(now_us) {}
  void Arrived(int64_t now_us) {
    Sample(now_us);
    ++arrived_;
  }
  void Got(int64_t now_us) {
    Sample(now_us);
    ++got_;
  }
  // Per second over the window (or since counting began, if later).
  double ArrivedPerSecond(int64_t now_us) const { return PerSecond(now_us, &Counts::arrived); }
  double GotPerSecond(int64_t now_us) const { return PerSecond(now_us, &Counts::got); }

 private:
  struct Counts {
    int64_t time_us = 0;
    uint64_t arrived = 0;
    uint64_t got = 0;
  };
  static constexpr int64_t kSampleEveryUs = 1000000;
  void Sample(int64_t now_us);
  double PerSecond(int64_t now_us, uint64_t Counts::*count) const;

  int64_t since_us_;
  uint64_t arrived_ = 0;
  uint64_t got_ = 0;
  std::deque<Counts> samples_;  // oldest first, none long before the window
};

struct Engine::Queue {
  std::string name;
  qmgr::v1::QueueAttributes attributes;
  std::deque<std::unique_ptr<Message>> visible;  // commit order
  uint64_t taken = 0;                            // held by open units
  uint64_t expired_discarded = 0;
  uint64_t backout_moved_in = 0;
  QueueRates rates;
  std::array<ClassTraffic, kMessageClassSlots> traffic{};  // by MessageClass number
  bool deleted = false;
  // Positions: the next message made visible at the tail takes next_tail;
  // one returned to the head takes next_head - 1.
  int64_t next_tail = 0;
  int64_t next_head = 0;
  absl::CondVar available;  // a message became visible, or the queue was deleted

  uint64_t depth_max() const { return attributes.max_depth(); }
  ClassTraffic& traffic_of(const Message& message) {
    const auto slot = static_cast<size_t>(message.m.class_());
    assert(slot < kMessageClassSlots);
    return traffic[slot];
  }
};

struct Engine::Unit {
  UowId id = 0;
  std::vector<std::unique_ptr<Message>> taken;     // in Get order
  std::vector<std::unique_ptr<Message>> inserted;  // visible at the sync point
  uint64_t record_bytes = 0;  // what its SYNCPOINT record will carry (estimate, from above)
  // The ID_RESERVE covering its inserts' ids: an unlogged insert's id is
  // handed out at the sync point, so that waits for it when nothing is logged.
  log::Lsn reserve_lsn = log::kNoLsn;
  // Its oldest record (its first GET, or its PREPARE): how far back in the
  // log it reaches. kNoLsn: it wrote none (or a restart rebuilt it).
  log::Lsn first_lsn = log::kNoLsn;
  absl::Time begun;
  absl::Time last_used;
  // Calls working on it now: a Get waiting for a message, or one copying
  // messages of it into its answer after releasing the latch. While any
  // does, the unit neither ends nor is idle, so those messages neither change
  // (backout counts, queue) nor are freed. Raised under the latch; a copy
  // lowers it outside.
  std::atomic<int> busy{0};
  bool exempt = false;  // from the idle timeout (ExemptFromIdleTimeout)

  // A coordinated unit: its key (CoordinatedStoreKey), and once prepared
  // its PREPARE image (what the checkpoint stores while it is in doubt).
  std::string coordinated_key;
  std::shared_ptr<const qmgr::v1::PrepareRecord> prepared;
  int64_t prepared_time_us = 0;

  uint64_t messages() const { return taken.size() + inserted.size(); }
  // A call still works on it: it must not end, nor be idle.
  bool in_use() const { return busy.load(std::memory_order_acquire) > 0; }
  bool in_doubt() const { return prepared != nullptr; }
};

struct Engine::Session {
  // Durable (log records, checkpoint): see docs/sessions.md.
  uint64_t in_seq = 0;   // last input hardened
  uint64_t out_seq = 0;  // last output sent
  uint64_t out_message_id = 0;
  bool output_acked = true;
  bool closed = false;         // its last record is SESSION_CLOSE
  bool reassigned = false;     // a forced Assign moved its sent output away
  int64_t opened_time_us = 0;  // last SESSION_OPEN
  int64_t closed_time_us = 0;  // last SESSION_CLOSE
  // In memory only.
  uint64_t outstanding_seq = 0;  // a deferred input waiting for its sync point or reply
  uint64_t awaited_reply = 0;    // the reply (message id) that ends outstanding_seq
  bool bound = false;            // OpenSession since the last start, not closed
  std::string client;            // who bound it (BindSession): only it may use it
  bool cold = false;             // bound cold: STSN SET allowed
  bool data_traffic = false;     // SDT (or no resync was needed)
  bool input_agreed = false;
  bool output_agreed = false;
  // Bumped by OpenSession, Clear and CloseSession: a waiting ReceiveOutput
  // of an older binding ends.
  uint64_t binding = 0;
  // Bumped each time data traffic starts (OpenSession without resync, SDT):
  // a receiver that began before a resync ends (ReceiveCursor).
  uint64_t traffic_epoch = 0;
  // The sent output waiting for its acknowledgement: off its queue, counted
  // as taken there.
  std::unique_ptr<Message> sent;
  log::Lsn last_lsn = 0;  // the last record that changed its numbers
};

}  // namespace qmgr

#endif  // QMGR_QMGR_ENGINE_INTERNAL_H_
