#include "tests/support/crash_workload.h"

#include <algorithm>
#include <limits>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace qmgr::testing {
namespace {

constexpr char kIn[] = "IN";
constexpr char kOut[] = "OUT";
constexpr char kIrrecoverable[] = "IRR";
constexpr char kFastPath[] = "FP";
constexpr char kPoison[] = "POISON";
constexpr uint64_t kDepthMax = 5000;

}  // namespace

std::string Event::ToLine() const {
  return absl::StrCat(std::string(1, kind), " ", id, " ", marker);
}

bool Event::FromLine(const std::string& line, Event* event) {
  std::vector<std::string> parts = absl::StrSplit(line, ' ');
  if (parts.size() != 3 || parts[0].size() != 1) return false;
  event->kind = parts[0][0];
  event->marker = parts[2];
  return absl::SimpleAtoi(parts[1], &event->id);
}

CrashWorkload::CrashWorkload(Engine* engine, std::string prefix,
                             std::function<void(const Event&)> on_event)
    : engine_(engine), prefix_(std::move(prefix)), on_event_(std::move(on_event)) {}

CrashWorkload::~CrashWorkload() { Stop(); }

absl::Status CrashWorkload::Start() {
  // Bounded, so that state (and restart time) stays flat over thousands of
  // crashes: producers meet QUEUE_FULL and retry.
  qmgr::v1::QueueAttributes in;
  in.set_max_depth(kDepthMax);
  in.set_backout_threshold(3);
  in.set_backout_queue(kPoison);
  const std::vector<std::pair<std::string, qmgr::v1::QueueAttributes>> queues = {
      {kPoison, {}}, {kIn, in}, {kOut, {}}, {kIrrecoverable, {}}, {kFastPath, {}}};
  for (const auto& [name, attributes] : queues) {
    absl::Status s = engine_->DefineQueue(name, attributes);
    if (!s.ok() && !absl::IsAlreadyExists(s)) return s;
  }
  // Units left in doubt by the last crash: the coordinator decides (backout).
  for (const InDoubtUnit& unit : engine_->InDoubtUnits(kCoordinator, kQualifier)) {
    Emit({'R', 0, unit.key.xid});
    engine_->Resolve(kCoordinator, kQualifier, {{unit.key.xid, qmgr::v1::BACKOUT}}, kCoordinator);
  }
  for (int i = 0; i < 2; ++i) threads_.emplace_back([this, i] { Producer(i); });
  for (int i = 0; i < 2; ++i) threads_.emplace_back([this, i] { Consumer(i); });
  threads_.emplace_back([this] { Terminal(); });
  threads_.emplace_back([this] { Coordinator(); });
  return absl::OkStatus();
}

void CrashWorkload::Stop() {
  stop_ = true;
  for (std::thread& t : threads_) t.join();
  threads_.clear();
}

void CrashWorkload::Emit(Event event) {
  absl::MutexLock lock(&emit_mu_);
  on_event_(event);
}

void CrashWorkload::Producer(int thread) {
  for (uint64_t n = 0; !stop_; ++n) {
    const std::string marker = absl::StrCat(prefix_, "-p", thread, "-", n);
    if (n % 8 == 7) {
      std::vector<MessageSpec> batch(4);
      for (size_t i = 0; i < batch.size(); ++i) {
        batch[i].queue = kIn;
        batch[i].payload = absl::StrCat(marker, "b", i);
      }
      std::vector<std::string> payloads;
      for (const MessageSpec& spec : batch) payloads.push_back(spec.payload);
      absl::StatusOr<std::vector<EnqueueResult>> r = engine_->EnqueueBatch(std::move(batch));
      if (!r.ok()) continue;
      for (size_t i = 0; i < r->size(); ++i) Emit({'E', (*r)[i].message_id, payloads[i]});
      continue;
    }
    MessageSpec spec;
    spec.payload = marker;
    if (n % 5 == 4) {
      spec.queue = kIrrecoverable;
      spec.message_class = qmgr::v1::IRRECOVERABLE;
      absl::StatusOr<EnqueueResult> r = engine_->Enqueue(std::move(spec));
      if (r.ok()) Emit({'X', r->message_id, marker});
      continue;
    }
    spec.queue = kIn;
    absl::StatusOr<EnqueueResult> r = engine_->Enqueue(std::move(spec));
    if (r.ok()) Emit({'E', r->message_id, marker});
  }
}

void CrashWorkload::Consumer(int thread) {
  std::mt19937_64 random(std::hash<std::string>()(prefix_) + thread);
  for (uint64_t n = 0; !stop_; ++n) {
    GetOptions get;
    get.queue = kIn;
    get.wait = absl::Milliseconds(20);
    absl::StatusOr<GetResult> got = engine_->Get(get);
    if (!got.ok()) continue;
    const uint64_t id = got->message.id();
    const int choice = static_cast<int>(random() % 10);
    if (choice == 0) {  // back out, sometimes with an insert that must vanish
      const std::string marker = absl::StrCat(prefix_, "-b", thread, "-", n);
      MessageSpec insert;
      insert.queue = kOut;
      insert.payload = marker;
      const bool inserted = engine_->Insert(got->uow, std::move(insert)).ok();
      if (engine_->Backout(got->uow).ok() && inserted) Emit({'B', 0, marker});
      continue;
    }
    std::string marker;
    absl::StatusOr<QueueStatus> out = engine_->DisplayQueue(kOut);
    if (choice <= 3 && out.ok() && out->depth < kDepthMax) {  // forward a reply
      marker = absl::StrCat(prefix_, "-i", thread, "-", n);
      MessageSpec insert;
      insert.queue = kOut;
      insert.payload = marker;
      if (!engine_->Insert(got->uow, std::move(insert)).ok()) marker.clear();
    }
    if (choice == 9) absl::SleepFor(absl::Milliseconds(3));  // a unit open for a while
    // From here a crash leaves the outcome open: the SYNCPOINT record may be
    // durable before this thread hears of it.
    Emit({'P', id, marker});
    absl::StatusOr<SyncPointResult> committed = engine_->SyncPoint(got->uow);
    if (!committed.ok()) {
      Emit({'U', id, ""});
      continue;
    }
    Emit({'C', id, ""});
    if (!marker.empty()) Emit({'I', 0, marker});
  }
}

void CrashWorkload::Terminal() {
  // BIND; after a crash, resync: this terminal keeps no numbers of its own,
  // so it takes the server's (IGNORE on both flows).
  absl::StatusOr<bool> resync = engine_->OpenSession(kSession, /*cold=*/false);
  if (!resync.ok()) return;
  if (*resync && (!engine_->SetAndTestSequenceNumbers(kSession, StsnRequest()).ok() ||
                  !engine_->StartDataTraffic(kSession).ok())) {
    return;
  }
  uint64_t seq = engine_->SessionInSeq(kSession);
  while (!stop_) {
    MessageSpec input;
    input.queue = kFastPath;
    input.payload = absl::StrCat(prefix_, "-f", seq + 1);
    input.message_class = qmgr::v1::FASTPATH;
    input.origin_session = kSession;
    input.input_seq = seq + 1;
    if (!engine_->Enqueue(std::move(input)).ok()) {
      absl::SleepFor(absl::Milliseconds(1));
      continue;
    }
    ++seq;
    GetOptions get;
    get.queue = kFastPath;
    get.wait = absl::Milliseconds(100);
    absl::StatusOr<GetResult> got = engine_->Get(get);
    if (!got.ok()) continue;
    if (engine_->SyncPoint(got->uow).ok()) Emit({'H', got->message.input_seq(), ""});
  }
}

// Two-phase commit: take a message in a coordinated unit, prepare it, and
// decide (mostly commit) a little later; a crash anywhere in between.
void CrashWorkload::Coordinator() {
  std::mt19937_64 random(std::hash<std::string>()(prefix_) + 99);
  for (uint64_t n = 0; !stop_; ++n) {
    const std::string xid = absl::StrCat(prefix_, "-x", n);
    absl::StatusOr<UowId> uow = engine_->BeginCoordinatedUnit({kCoordinator, kQualifier, xid});
    if (!uow.ok()) {
      absl::SleepFor(absl::Milliseconds(1));
      continue;
    }
    GetOptions get;
    get.uow = *uow;
    get.queue = kIn;
    get.wait = absl::Milliseconds(20);
    absl::StatusOr<GetResult> got = engine_->Get(get);
    const auto decide = [&](qmgr::v1::Outcome outcome) {
      Emit({'R', 0, xid});
      return engine_->Resolve(kCoordinator, kQualifier, {{xid, outcome}}, kCoordinator)
          .statuses.front();
    };
    if (!got.ok()) {
      decide(qmgr::v1::BACKOUT).IgnoreError();
      continue;
    }
    const uint64_t id = got->message.id();
    Emit({'P', id, xid});
    if (!engine_->Prepare(*uow).ok()) continue;
    Emit({'Q', id, xid});
    absl::SleepFor(absl::Microseconds(random() % 2000));  // in doubt for a while
    const bool commit = random() % 4 != 0;
    // Settled before the backout: the backout puts the message back at the
    // head of IN, where a consumer may take it and report 'P' before Resolve
    // returns here; an 'S' after that would settle the consumer's open
    // outcome. Until the backout is durable the message is locked in doubt.
    if (!commit) Emit({'S', id, ""});
    const absl::Status decided = decide(commit ? qmgr::v1::COMMIT : qmgr::v1::BACKOUT);
    if (commit && decided.ok()) Emit({'C', id, ""});
  }
}

absl::StatusOr<ObservedState> Observe(Engine* engine) {
  ObservedState state;
  for (const QueueStatus& queue : engine->DisplayQueues()) {
    absl::StatusOr<std::vector<qmgr::v1::Message>> messages =
        engine->Browse(queue.name, std::numeric_limits<size_t>::max());
    if (!messages.ok()) return messages.status();
    for (const qmgr::v1::Message& m : *messages) {
      state.messages.push_back({m.id(), m.queue(), m.payload(), m.backout_count()});
    }
  }
  for (const InDoubtUnit& unit :
       engine->InDoubtUnits(CrashWorkload::kCoordinator, CrashWorkload::kQualifier)) {
    state.in_doubt[unit.key.xid] = unit.locked_messages;
  }
  state.session_in_seq = engine->SessionInSeq(CrashWorkload::kSession);
  state.next_id = engine->next_free_id();
  return state;
}

namespace {

// The events that name message `id`, in the order reported: "E P:k3-x7 Q:k3-x7 S".
std::string History(const std::vector<Event>& events, uint64_t id) {
  std::string out;
  for (const Event& e : events) {
    if (e.id != id || e.kind == 'H') continue;
    absl::StrAppend(&out, out.empty() ? "" : " ", std::string(1, e.kind));
    if (e.kind == 'P' || e.kind == 'Q') absl::StrAppend(&out, ":", e.marker);
  }
  return out;
}

}  // namespace

std::vector<std::string> CheckInvariants(const std::vector<Event>& events,
                                         const ObservedState& state) {
  std::vector<std::string> broken;
  std::map<std::string, uint64_t> acked;  // marker -> id
  std::set<uint64_t> consumed, unknown;
  std::set<std::string> inserted, backed_out, pending_inserts, delivered;
  uint64_t max_id = 0, hardened = 0;
  std::map<std::string, uint64_t> prepared;  // XID -> its message: Prepare acknowledged
  std::set<std::string> prepare_asked, decided;
  for (const Event& e : events) {
    if (e.kind != 'H') max_id = std::max(max_id, e.id);  // H carries an input number
    switch (e.kind) {
      case 'E':
        acked[e.marker] = e.id;
        break;
      case 'C':
        consumed.insert(e.id);
        break;
      case 'P':
        unknown.insert(e.id);
        if (!e.marker.empty()) pending_inserts.insert(e.marker);
        prepare_asked.insert(e.marker);
        break;
      case 'Q':
        prepared[e.marker] = e.id;
        break;
      case 'R':
        decided.insert(e.marker);
        break;
      case 'U':
        unknown.insert(e.id);
        break;
      case 'S':
        unknown.erase(e.id);
        break;
      case 'I':
        inserted.insert(e.marker);
        break;
      case 'B':
        backed_out.insert(e.marker);
        break;
      case 'K':
        inserted.erase(e.marker);
        delivered.insert(e.marker);
        break;
      case 'H':
        hardened = std::max(hardened, e.id);
        break;
      default:
        break;
    }
  }
  for (const auto& [xid, id] : prepared) {
    if (decided.count(xid)) continue;
    auto unit = state.in_doubt.find(xid);
    if (unit == state.in_doubt.end()) {
      broken.push_back(absl::StrCat("prepared unit ", xid, " is not in doubt"));
    } else if (std::find(unit->second.begin(), unit->second.end(), id) == unit->second.end()) {
      broken.push_back(absl::StrCat("prepared unit ", xid, " does not lock message ", id));
    }
  }
  for (const auto& [xid, locked] : state.in_doubt) {
    if (!prepare_asked.count(xid)) {
      broken.push_back(absl::StrCat("unit ", xid, " is in doubt but was never prepared"));
    }
  }
  std::map<std::string, int> seen;
  std::set<uint64_t> ids, locked;
  for (const auto& [xid, messages] : state.in_doubt)
    locked.insert(messages.begin(), messages.end());
  for (const ObservedState::Message& m : state.messages) {
    ++seen[m.marker];
    if (!ids.insert(m.id).second) broken.push_back(absl::StrCat("id ", m.id, " appears twice"));
    if (m.queue == kIrrecoverable || m.queue == kFastPath) {
      broken.push_back(absl::StrCat("message ", m.id, " (", m.marker, ") survived on ", m.queue));
    }
    if (consumed.count(m.id)) {
      broken.push_back(absl::StrCat("message ", m.id, " (", m.marker,
                                    ") is back although its Get was committed"));
    }
    if (backed_out.count(m.marker)) {
      broken.push_back(absl::StrCat("insert ", m.marker, " of a backed-out unit is visible"));
    }
    if ((m.queue == kOut || m.queue == kSessionOutputQueue) && !inserted.count(m.marker) &&
        !pending_inserts.count(m.marker) && !delivered.count(m.marker)) {
      broken.push_back(
          absl::StrCat("insert ", m.marker, " is visible though its unit never asked to commit"));
    }
    if (m.id >= state.next_id) {
      broken.push_back(absl::StrCat("message ", m.id, " is not below the next id ", state.next_id));
    }
  }
  uint64_t last_fresh = 0;
  for (const ObservedState::Message& m : state.messages) {
    if (m.queue != kIn || m.backout_count > 0) continue;
    if (m.id < last_fresh) {
      broken.push_back(absl::StrCat("queue order: message ", m.id, " follows message ", last_fresh,
                                    " on ", kIn));
    }
    last_fresh = m.id;
  }
  for (const auto& [marker, count] : seen) {
    if (count > 1) broken.push_back(absl::StrCat(marker, " is present ", count, " times"));
  }
  for (const auto& [marker, id] : acked) {
    if (consumed.count(id) || unknown.count(id) || locked.count(id)) continue;
    if (!seen.count(marker)) {
      broken.push_back(absl::StrCat("acknowledged message ", id, " (", marker,
                                    ") is lost; its events: ", History(events, id)));
    }
  }
  for (const std::string& marker : inserted) {
    if (!seen.count(marker)) {
      broken.push_back(absl::StrCat("acknowledged insert ", marker, " is lost"));
    }
  }
  if (state.next_id <= max_id) {
    broken.push_back(absl::StrCat("the next id ", state.next_id,
                                  " does not exceed an id acknowledged before, ", max_id));
  }
  if (state.session_in_seq < hardened) {
    broken.push_back(absl::StrCat("session input ", hardened, " was hardened but in_seq is ",
                                  state.session_in_seq));
  }
  return broken;
}

std::vector<Event> Settle(const std::vector<Event>& events, const ObservedState& state) {
  std::set<uint64_t> open;
  for (const Event& e : events) {
    if (e.kind == 'P' || e.kind == 'U') open.insert(e.id);
    if (e.kind == 'C' || e.kind == 'S') open.erase(e.id);
  }
  std::vector<Event> settled;
  for (const ObservedState::Message& m : state.messages) {
    if (open.count(m.id)) settled.push_back({'S', m.id, ""});
  }
  return settled;
}

}  // namespace qmgr::testing
