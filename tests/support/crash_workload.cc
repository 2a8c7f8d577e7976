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

uint64_t Model::Key(const std::string& marker) {
  uint64_t hash = 14695981039346656037ull;  // FNV-1a
  for (unsigned char c : marker) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash;
}

void Model::Apply(const Event& e) {
  ++events_;
  if (e.kind != 'H') max_id_ = std::max(max_id_, e.id);  // H carries an input number
  Acked* acked = nullptr;
  if (auto it = required_.find(e.id); it != required_.end()) acked = &it->second;
  if (auto it = open_acked_.find(e.id); it != open_acked_.end()) acked = &it->second;
  if (acked != nullptr && e.kind != 'H') {
    absl::StrAppend(&acked->history, " ", std::string(1, e.kind));
    if (e.kind == 'P' || e.kind == 'Q') absl::StrAppend(&acked->history, ":", e.marker);
  }
  // An outcome opens (P, U) or settles (S) for a message not consumed.
  const auto move = [&](std::map<uint64_t, Acked>& from, std::map<uint64_t, Acked>& to) {
    auto it = from.find(e.id);
    if (it == from.end()) return;
    to[e.id] = std::move(it->second);
    from.erase(it);
  };
  switch (e.kind) {
    case 'E':
      if (consumed_.contains(e.id)) break;
      (open_.contains(e.id) ? open_acked_ : required_)[e.id] = {e.marker, "E"};
      break;
    case 'C':
      consumed_.insert(e.id);
      open_.erase(e.id);
      required_.erase(e.id);
      open_acked_.erase(e.id);
      break;
    case 'P':
      open_.insert(e.id);
      move(required_, open_acked_);
      if (!e.marker.empty()) pending_inserts_.insert(Key(e.marker));
      prepare_asked_.insert(Key(e.marker));
      break;
    case 'Q':
      if (!decided_.contains(Key(e.marker))) undecided_[e.marker] = e.id;
      break;
    case 'R':
      decided_.insert(Key(e.marker));
      undecided_.erase(e.marker);
      break;
    case 'U':
      open_.insert(e.id);
      move(required_, open_acked_);
      break;
    case 'S':
      open_.erase(e.id);
      move(open_acked_, required_);
      break;
    case 'I':
      inserted_.insert(e.marker);
      break;
    case 'B':
      backed_out_.insert(Key(e.marker));
      break;
    case 'K':
      inserted_.erase(e.marker);
      delivered_.insert(Key(e.marker));
      break;
    case 'H':
      hardened_ = std::max(hardened_, e.id);
      break;
    default:
      break;
  }
}

std::vector<std::string> Model::Check(const ObservedState& state) const {
  std::vector<std::string> broken;
  for (const auto& [xid, id] : undecided_) {
    auto unit = state.in_doubt.find(xid);
    if (unit == state.in_doubt.end()) {
      broken.push_back(absl::StrCat("prepared unit ", xid, " is not in doubt"));
    } else if (id != 0 &&  // 0: the unit took no message
               std::find(unit->second.begin(), unit->second.end(), id) == unit->second.end()) {
      broken.push_back(absl::StrCat("prepared unit ", xid, " does not lock message ", id));
    }
  }
  for (const auto& [xid, locked] : state.in_doubt) {
    if (!prepare_asked_.contains(Key(xid))) {
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
    if (consumed_.contains(m.id)) {
      broken.push_back(absl::StrCat("message ", m.id, " (", m.marker,
                                    ") is back although its Get was committed"));
    }
    const uint64_t key = Key(m.marker);
    if (backed_out_.contains(key)) {
      broken.push_back(absl::StrCat("insert ", m.marker, " of a backed-out unit is visible"));
    }
    if ((m.queue == kOut || m.queue == kSessionOutputQueue) && !inserted_.contains(m.marker) &&
        !pending_inserts_.contains(key) && !delivered_.contains(key)) {
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
  for (const auto& [id, acked] : required_) {
    if (locked.contains(id) || seen.contains(acked.marker)) continue;
    broken.push_back(absl::StrCat("acknowledged message ", id, " (", acked.marker,
                                  ") is lost; its events: ", acked.history));
  }
  for (const std::string& marker : inserted_) {
    if (!seen.contains(marker)) {
      broken.push_back(absl::StrCat("acknowledged insert ", marker, " is lost"));
    }
  }
  if (state.next_id <= max_id_) {
    broken.push_back(absl::StrCat("the next id ", state.next_id,
                                  " does not exceed an id acknowledged before, ", max_id_));
  }
  if (state.session_in_seq < hardened_) {
    broken.push_back(absl::StrCat("session input ", hardened_, " was hardened but in_seq is ",
                                  state.session_in_seq));
  }
  return broken;
}

std::vector<Event> Model::Settle(const ObservedState& state) const {
  std::vector<Event> settled;
  for (const ObservedState::Message& m : state.messages) {
    if (open_.contains(m.id)) settled.push_back({'S', m.id, ""});
  }
  return settled;
}

namespace {

Model Fold(const std::vector<Event>& events) {
  Model model;
  for (const Event& e : events) model.Apply(e);
  return model;
}

}  // namespace

std::vector<std::string> CheckInvariants(const std::vector<Event>& events,
                                         const ObservedState& state) {
  return Fold(events).Check(state);
}

std::vector<Event> Settle(const std::vector<Event>& events, const ObservedState& state) {
  return Fold(events).Settle(state);
}

}  // namespace qmgr::testing
