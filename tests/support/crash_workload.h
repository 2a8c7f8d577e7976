// A load of every message class for crash tests, and the checker that holds
// a restarted queue manager to what the load was told before the crash.
//
// The workload reports each acknowledgement as an event, the moment the
// engine answers OK; the crash may come at any instant after. The checker
// then asserts the invariants of the checkpoint/restart issue:
//  - every acknowledged RECOVERABLE message is present exactly once, unless
//    a Get of it was committed;
//  - no committed Get is undone (the message does not come back);
//  - every acknowledged Insert is present exactly once; no Insert of a unit
//    that was backed out, or never asked to commit, is ever visible;
//  - queue order: messages never delivered (backout count 0) are in id
//    order on the input queue, which is their commit order;
//  - IRRECOVERABLE and unhardened deferred (FASTPATH) messages are gone;
//  - a session's hardened input number is never lost;
//  - a coordinated unit whose Prepare was acknowledged, and whose outcome
//    was never asked for, is in doubt with its message locked;
//  - ids are unique: the next id handed out is above every id acknowledged.
#ifndef QMGR_TESTS_SUPPORT_CRASH_WORKLOAD_H_
#define QMGR_TESTS_SUPPORT_CRASH_WORKLOAD_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "qmgr/engine.h"

namespace qmgr::testing {

// One acknowledgement. Kinds: 'E' RECOVERABLE enqueue acknowledged (id,
// marker), 'C' a Get of it committed (id), 'I' an Insert committed (marker),
// 'B' an Insert backed out (marker), 'X' an id handed out for an unlogged
// message (id), 'H' a FASTPATH input hardened at a committed sync point (its
// input number), 'P' a sync point about to be asked for (id of the message
// it consumes, marker of the insert it carries if any: from now on its
// outcome is open until 'C'), 'U' that sync point failed, so it may or may
// not have been committed (id), 'S' settled: a restart showed the message
// still there, so its open outcome was "not committed" (id). Coordinated
// units: 'P' also before a Prepare (id of the message the unit took, marker
// its XID), 'Q' the Prepare acknowledged (id, XID), 'R' an outcome asked for
// (XID), 'S' before a backout is asked for (id): the message stays locked in
// doubt until the backout, then is back on its queue, where another unit may
// take it and report its own 'P' at once. Session output: 'K' an insert into
// the session's output queue (kSessionOutputQueue) that the session may have
// taken since (marker): its delivery is checked by the session's client, not
// by its presence. A message locked by a unit in doubt is present.
struct Event {
  char kind = 0;
  uint64_t id = 0;
  std::string marker;

  std::string ToLine() const;  // "E 17 p3-1-9"
  static bool FromLine(const std::string& line, Event* event);
};

// The output queue of CrashWorkload::kSession (the seeded simulation's).
inline constexpr char kSessionOutputQueue[] = "TOUT";

class CrashWorkload {
 public:
  // Markers start with `prefix`, unique per run. `on_event` is called from
  // the workload's threads, serialized.
  CrashWorkload(Engine* engine, std::string prefix, std::function<void(const Event&)> on_event);
  ~CrashWorkload();

  // Defines the queues (those missing) and starts the threads.
  absl::Status Start();
  // Stops the threads; errors they met after a crash are expected.
  void Stop();

  static constexpr char kSession[] = "TERM1";
  static constexpr char kCoordinator[] = "CRASH";
  static constexpr char kQualifier[] = "QM1";

 private:
  void Producer(int thread);
  void Consumer(int thread);
  void Terminal();
  void Coordinator();
  void Emit(Event event);

  Engine* const engine_;
  const std::string prefix_;
  const std::function<void(const Event&)> on_event_;
  absl::Mutex emit_mu_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

// What a restarted queue manager holds, as the checker sees it.
struct ObservedState {
  struct Message {
    uint64_t id = 0;
    std::string queue;
    std::string marker;  // the payload
    uint32_t backout_count = 0;
  };
  std::vector<Message> messages;
  // Units in doubt: XID -> the messages they lock.
  std::map<std::string, std::vector<uint64_t>> in_doubt;
  uint64_t session_in_seq = 0;
  uint64_t next_id = 0;  // the next id the engine hands out
};

// Reads the state through the engine (Browse every queue).
absl::StatusOr<ObservedState> Observe(Engine* engine);

// What the acknowledgements require of a restarted queue manager, folded
// event by event, so that a check costs what is live rather than the whole
// history: it walks only the acknowledged messages not yet consumed (those
// whose outcome is open apart), the acknowledged inserts not yet delivered
// and the prepared units not yet decided; of what is done with it keeps only
// what a check looks up (ids consumed, hashes of the markers of inserts
// backed out, pending or delivered, XIDs prepared or decided).
class Model {
 public:
  void Apply(const Event& e);
  uint64_t events() const { return events_; }

  // Every invariant broken, one line each; empty when all hold.
  std::vector<std::string> Check(const ObservedState& state) const;

  // After a check that held: 'S' events for the messages whose outcome was
  // open and that are still there, so that later checks require them again.
  std::vector<Event> Settle(const ObservedState& state) const;

 private:
  struct Acked {
    std::string marker;
    std::string history;  // the events naming it: "E P:k3-x7 Q:k3-x7 S"
  };
  static uint64_t Key(const std::string& marker);

  uint64_t events_ = 0;
  uint64_t max_id_ = 0;
  uint64_t hardened_ = 0;
  // Acknowledged RECOVERABLE messages not consumed: required present, or
  // with an outcome open (a sync point or an outcome asked, unanswered).
  std::map<uint64_t, Acked> required_, open_acked_;
  absl::flat_hash_set<uint64_t> consumed_, open_;
  std::set<std::string> inserted_;  // acknowledged, not delivered
  absl::flat_hash_set<uint64_t> backed_out_, pending_inserts_, delivered_;  // Key(marker)
  std::map<std::string, uint64_t> undecided_;              // XID -> its message: prepared
  absl::flat_hash_set<uint64_t> prepare_asked_, decided_;  // Key(XID)
};

// The same, from the whole list of events (for the tests whose runs are short).
std::vector<std::string> CheckInvariants(const std::vector<Event>& events,
                                         const ObservedState& state);
std::vector<Event> Settle(const std::vector<Event>& events, const ObservedState& state);

}  // namespace qmgr::testing

#endif  // QMGR_TESTS_SUPPORT_CRASH_WORKLOAD_H_
