#include "tests/support/seeded_sim.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "qmgr/clock.h"
#include "restart/restart.h"
#include "rocksdb/env.h"
#include "rocksdb/system_clock.h"
#include "tests/support/crash_workload.h"
#include "tests/support/fault_file_system.h"
#include "tests/support/fault_rocksdb_fs.h"

namespace qmgr::testing {
namespace {

constexpr char kIn[] = "IN";
constexpr char kOut[] = "OUT";
constexpr char kIrrecoverable[] = "IRR";
constexpr char kFastPath[] = "FP";
constexpr char kPoison[] = "POISON";
constexpr uint64_t kDepthMax = 400;  // keeps each restart, and the checker, quick
constexpr absl::Duration kUnitIdleTimeout = absl::Seconds(60);
constexpr uint64_t kSegmentBytes = 64 << 10;

// The store's Env with RocksDB's pauses cut to a millisecond: after the
// store is frozen at a crash, its background flush fails and RocksDB sleeps a
// second before retrying, and closing waits for that; the pause is of no use
// here, where the store is closed right after, and it was half a run's time.
class ShortPauseClock : public rocksdb::SystemClockWrapper {
 public:
  using SystemClockWrapper::SystemClockWrapper;
  const char* Name() const override { return "ShortPauseClock"; }
  void SleepForMicroseconds(int micros) override {
    SystemClockWrapper::SleepForMicroseconds(std::min(micros, 1000));
  }
};

class ShortPauseEnv : public rocksdb::EnvWrapper {
 public:
  explicit ShortPauseEnv(std::unique_ptr<rocksdb::Env> target) : EnvWrapper(std::move(target)) {
    file_system_ = this->target()->GetFileSystem();
    system_clock_ = std::make_shared<ShortPauseClock>(this->target()->GetSystemClock());
  }
  const char* Name() const override { return "ShortPauseEnv"; }
  void SleepForMicroseconds(int micros) override {
    EnvWrapper::SleepForMicroseconds(std::min(micros, 1000));
  }
};

std::string Code(const absl::Status& status) { return absl::StatusCodeToString(status.code()); }

// A unit of work the driver holds open across operations.
struct HeldUnit {
  UowId uow = 0;
  uint64_t taken = 0;  // the message it took (0: none)
  std::vector<std::string> inserts;
  std::string xid;  // a coordinator's unit
  bool prepared = false;
  std::string drained_insert;  // the marker of the OUT message it took
};

// A session input the client keeps until the server holds it.
struct SentInput {
  MessageSpec spec;
  bool deferred = false;
};

class Simulation {
 public:
  explicit Simulation(const SimOptions& options) : options_(options), random_(options.seed) {
    result_.seed = options.seed;
  }

  SimResult Run() {
    if (!Setup()) return result_;
    for (int crash = 0; crash <= options_.crashes && result_.broken.empty(); ++crash) {
      life_ = crash;
      if (!RestartAndCheck()) break;
      if (crash == options_.crashes) {
        Drain();
        break;
      }
      if (crash == options_.lying_fsync_from_crash) log_fs_.SetLyingSync(true);
      const int ops = 1 + static_cast<int>(random_() % options_.ops_per_life_max);
      for (int i = 0; i < ops && result_.broken.empty(); ++i) {
        RunOp(PickOp());
        // Records appended without a wait (a backout's) would otherwise join
        // the next operation's batch or not, as the writer thread happens to
        // run: what a crash finds unsynced would differ between two runs.
        qm_->log()->WaitAllDurable().IgnoreError();
      }
      if (!result_.broken.empty()) break;
      Crash();
      if (options_.progress_every > 0 && result_.crash_points % options_.progress_every == 0) {
        result_.events = model_.events();
        options_.progress(result_);
      }
    }
    if (qm_ != nullptr) {
      qm_.reset();
    }
    result_.events = model_.events();
    return result_;
  }

 private:
  enum Op {
    kEnqueue,
    kEnqueueBatch,
    kEnqueueIrrecoverable,
    kGet,
    kInsert,
    kSyncPoint,
    kBackout,
    kCoordinatedGet,
    kPrepare,
    kResolve,
    kInput,
    kDeferredInput,
    kReceive,
    kAcknowledge,
    kCheckpoint,
    kIdleTimeout,
    kForget,
    kOpCount,
  };
  static constexpr const char* kOpNames[kOpCount] = {
      "enqueue", "batch", "irrecoverable", "get",     "insert", "syncpoint",
      "backout", "cget",  "prepare",       "resolve", "input",  "deferred",
      "receive", "ack",   "checkpoint",    "idle",    "forget"};

  bool Setup() {
    std::string path;
    for (absl::string_view part : absl::StrSplit(options_.dir, '/', absl::SkipEmpty())) {
      absl::StrAppend(&path, "/", part);
      if (!log_fs_.CreateDir(path).ok()) return Fail("cannot create the log's directories");
    }
    std::filesystem::create_directory(options_.dir + "/qm");
    env_ = std::make_unique<ShortPauseEnv>(rocksdb::NewCompositeEnv(store_fs_));
    return true;
  }

  restart::RestartOptions Options() {
    restart::RestartOptions options;
    options.data_dir = options_.dir + "/qm";
    options.qmgr_name = CrashWorkload::kQualifier;
    options.fs = &log_fs_;
    options.store_env = env_.get();
    options.store_write_buffer_bytes = 1 << 20;
    options.log.segment_bytes = kSegmentBytes;  // a switch every few dozen operations
    options.log.write_only_for_waiters = true;  // LSNs a function of the seed alone
    options.engine.clock = &clock_;
    options.engine.reaper_interval = absl::ZeroDuration();  // the driver reaps
    options.engine.unit_idle_timeout = kUnitIdleTimeout;
    options.automatic_checkpoints = false;  // the driver checkpoints
    options.checkpoint.step_hook = [this](checkpoint::Step step) {
      if (freeze_at_step_ != step) return;
      log_fs_.Freeze();
      // Only between the log's wait and the store's write does the store
      // have a write to lose; at the other steps everything it holds is
      // synced (and freezing it costs a second: RocksDB pauses before
      // retrying the background work the frozen files fail).
      if (step == checkpoint::Step::kLogDurable) store_fs_->Freeze();
    };
    return options;
  }

  Engine* engine() { return qm_->engine(); }

  void Trace(const std::string& line) {
    for (unsigned char c : line) {
      hash_ ^= c;
      hash_ *= 1099511628211ull;
    }
    hash_ ^= '\n';
    hash_ *= 1099511628211ull;
    result_.trace_hash = hash_;
    if (options_.trace) options_.trace(line);
  }

  bool Fail(const std::string& why) {
    result_.broken.push_back(absl::StrCat("crash ", life_, ": ", why));
    return false;
  }

  void Emit(const Event& e) {
    model_.Apply(e);
    if (e.kind == 'I' && IsSessionOutput(e.marker) && !received_.contains(e.marker)) {
      undelivered_.insert(e.marker);
    }
  }

  std::string Marker(absl::string_view kind) {
    std::string marker = absl::StrCat("l", life_, "-", kind, ++marker_seq_);
    // Now and then a payload that spans blocks, so that a crash tears it.
    if (random_() % 8 == 0) marker.append(1 + random_() % 6000, 'x');
    return marker;
  }

  // --- Restart and the checks -----------------------------------------------

  bool RestartAndCheck() {
    absl::StatusOr<std::unique_ptr<restart::QueueManager>> qm = restart::Restart(Options());
    if (!qm.ok()) return Fail(absl::StrCat("restart failed: ", qm.status().ToString()));
    qm_ = std::move(*qm);
    Trace(absl::StrCat("restart ", life_, " ", restart::ModeName(qm_->restart_report().mode)));
    if (life_ == 0) {
      if (!DefineQueues()) return false;
    }
    absl::StatusOr<ObservedState> state = Observe(engine());
    if (!state.ok()) return Fail(absl::StrCat("observe: ", state.status().ToString()));
    ++result_.invariant_checks;
    result_.queued_at_last_check.clear();
    for (const ObservedState::Message& m : state->messages) ++result_.queued_at_last_check[m.queue];
    std::vector<std::string> broken = model_.Check(*state);
    if (!broken.empty()) {
      for (const std::string& line : broken) Fail(line);
      Fail(qm_->restart_report().ToString());
      return false;
    }
    for (const Event& e : model_.Settle(*state)) Emit(e);
    std::string head;
    for (const ObservedState::Message& m : state->messages) {
      if (m.queue == kIn && head.size() < 120)
        absl::StrAppend(&head, " ", m.id, "/", m.backout_count);
    }
    Trace(absl::StrCat("head of IN:", head));
    Trace(absl::StrCat("state messages=", state->messages.size(),
                       " in_doubt=", state->in_doubt.size(), " in_seq=", state->session_in_seq,
                       " next_id=", state->next_id));
    ResolveInDoubt();
    return Resync();
  }

  bool DefineQueues() {
    qmgr::v1::QueueAttributes in;
    in.set_max_depth(kDepthMax);
    in.set_backout_threshold(3);
    in.set_backout_queue(kPoison);
    qmgr::v1::QueueAttributes out;
    out.set_output_of_session(CrashWorkload::kSession);
    const std::vector<std::pair<std::string, qmgr::v1::QueueAttributes>> queues = {
        {kPoison, {}},        {kIn, in},       {kOut, {}},
        {kIrrecoverable, {}}, {kFastPath, {}}, {kSessionOutputQueue, out}};
    for (const auto& [name, attributes] : queues) {
      absl::Status s = engine()->DefineQueue(name, attributes);
      if (!s.ok()) return Fail(absl::StrCat("define ", name, ": ", s.ToString()));
    }
    return true;
  }

  // The coordinator's resync: each unit in doubt gets a random outcome.
  void ResolveInDoubt() {
    for (const InDoubtUnit& unit :
         engine()->InDoubtUnits(CrashWorkload::kCoordinator, CrashWorkload::kQualifier)) {
      const bool commit = random_() % 2 == 0;
      Emit({'R', 0, unit.key.xid});
      const absl::Status s =
          engine()
              ->Resolve(CrashWorkload::kCoordinator, CrashWorkload::kQualifier,
                        {{unit.key.xid, commit ? qmgr::v1::COMMIT : qmgr::v1::BACKOUT}},
                        CrashWorkload::kCoordinator)
              .statuses.front();
      Trace(absl::StrCat("indoubt ", unit.key.xid.substr(0, 24), " ", commit, " ", Code(s)));
      if (!s.ok()) continue;
      decided_xids_.push_back(unit.key.xid);
      for (uint64_t id : unit.locked_messages) Emit({commit ? 'C' : 'S', id, ""});
      for (const std::string& marker : xid_inserts_[unit.key.xid]) {
        Emit({commit ? 'I' : 'B', 0, marker});
        if (commit && IsSessionOutput(marker)) Emit({'K', 0, marker});
      }
      xid_inserts_.erase(unit.key.xid);
    }
  }

  // The session's client after a failure of either side: BIND, STSN with
  // its own numbers (SET_AND_TEST on both flows), resend what the server
  // lacks, SDT.
  bool Resync() {
    absl::StatusOr<bool> resync = engine()->OpenSession(CrashWorkload::kSession, /*cold=*/false);
    if (!resync.ok()) return Fail(absl::StrCat("bind: ", resync.status().ToString()));
    if (!*resync) {
      Trace("bind no-resync");
      return true;
    }
    StsnRequest request;
    request.input.set_action(qmgr::v1::SET_AND_TEST);
    request.input.set_last_sent(last_sent_);
    request.output.set_action(qmgr::v1::SET_AND_TEST);
    request.output.set_last_secured(secured_seq_);
    request.output.set_last_secured_message_id(secured_id_);
    absl::StatusOr<StsnAnswer> answer =
        engine()->SetAndTestSequenceNumbers(CrashWorkload::kSession, request);
    if (!answer.ok()) return Fail(absl::StrCat("STSN: ", answer.status().ToString()));
    Trace(absl::StrCat("stsn in ", answer->input.result(), " ", answer->input.in_seq(), " ",
                       answer->input.resend_from(), "-", answer->input.resend_to(), " out ",
                       answer->output.result(), " ", answer->output.outcome()));
    if (answer->input.result() != qmgr::v1::TEST_POSITIVE) {
      return Fail(absl::StrCat("STSN input: the server holds input ", answer->input.in_seq(),
                               " beyond the last the client sent, ", last_sent_));
    }
    if (answer->output.result() != qmgr::v1::TEST_POSITIVE) {
      return Fail(absl::StrCat("STSN output: the server's output ", answer->output.out_seq(),
                               " disagrees with the last the client secured, ", secured_seq_));
    }
    output_outstanding_ = false;  // delivered, resent or nothing outstanding: settled
    const absl::Status started = engine()->StartDataTraffic(CrashWorkload::kSession);
    if (!started.ok()) return Fail(absl::StrCat("SDT: ", started.ToString()));
    if (answer->input.resend_from() != 0) {
      for (uint64_t seq = answer->input.resend_from(); seq <= answer->input.resend_to(); ++seq) {
        const auto sent = inputs_.find(seq);
        if (sent == inputs_.end()) return Fail(absl::StrCat("resend of unknown input ", seq));
        ++result_.inputs_resent;
        if (!SendInput(sent->second)) break;  // refused: it and those after are not sent
      }
    }
    // Inputs the server holds need not be kept.
    inputs_.erase(inputs_.begin(),
                  inputs_.upper_bound(engine()->SessionInSeq(CrashWorkload::kSession)));
    return true;
  }

  // At the end: every output committed to the session arrives.
  void Drain() {
    for (int i = 0; i < 100000; ++i) {
      if (output_outstanding_) {
        Acknowledge();
        continue;
      }
      if (!Receive()) break;
    }
    for (const std::string& marker : undelivered_) {
      Fail(absl::StrCat("session output ", marker.substr(0, 40), " committed, never delivered"));
    }
  }

  // --- The crash --------------------------------------------------------------

  void Crash() {
    ++result_.crash_points;
    const int kind = static_cast<int>(random_() % 10);
    std::string kind_name;
    if (kind < 6) {
      kind_name = "mid-operation";
      CrashInOperation();
    } else if (kind < 8) {
      kind_name = "mid-checkpoint";
      freeze_at_step_ = static_cast<checkpoint::Step>(random_() % 4);
      const absl::Status checkpointed =
          qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested).status();
      Trace(absl::StrCat("checkpoint crash at step ", static_cast<int>(*freeze_at_step_), " ",
                         Code(checkpointed)));
      freeze_at_step_.reset();
    } else {
      kind_name = "between-operations";
      const absl::Status durable = qm_->log()->WaitAllDurable();
      Trace(absl::StrCat("crash between ", Code(durable)));
      log_fs_.Freeze();
    }
    ++result_.crash_kinds[kind_name];
    qm_.reset();
    // The client's units died with the server's.
    for (const HeldUnit& unit : units_) {
      if (!unit.prepared) {
        for (const std::string& marker : unit.inserts) Emit({'B', 0, marker});
      }
    }
    units_.clear();
    const int mode = static_cast<int>(random_() % 10);
    CrashMode crash_mode = CrashMode::kRandomBlocksTorn;
    std::string mode_name = "random-blocks-torn";
    if (mode == 7) {
      crash_mode = CrashMode::kDropUnsynced;
      mode_name = "drop-unsynced";
    } else if (mode == 8) {
      crash_mode = CrashMode::kTearLastWrite;
      mode_name = "tear-last-write";
    } else if (mode == 9) {
      crash_mode = CrashMode::kKeepRandomBlocks;
      mode_name = "keep-random-blocks";
    }
    ++result_.crash_modes[mode_name];
    Trace(absl::StrCat("crash ", life_, " ", kind_name, " ", mode_name));
    log_fs_.SimulateCrash(crash_mode, random_());
    store_fs_->Freeze();  // if it was not yet: the store is closed by now
    if (absl::Status s = store_fs_->DropUnsyncedData(); !s.ok()) Fail(s.ToString());
    log_fs_.Thaw();
    store_fs_->Thaw();
  }

  // Holds the segment's fdatasync at the gate, runs one operation on a
  // helper thread, and cuts the power once its batch is written (or once it
  // finished, when it needed no fdatasync).
  void CrashInOperation() {
    Op op = PickOp();
    if (op == kCheckpoint) op = kEnqueue;  // checkpoints crash at their steps
    const absl::Status durable = qm_->log()->WaitAllDurable();
    Trace(absl::StrCat("crash in ", kOpNames[op], " ", Code(durable)));
    log_fs_.CloseSyncGate(".qlog");
    std::atomic<bool> done{false};
    std::thread helper([&] {
      RunOp(op);
      done = true;
    });
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (log_fs_.SyncsWaitingAtGate() == 0 && absl::Now() < deadline) {
      // Done without waiting for durability: no sync comes (the log writes
      // only for waiters), and what it appended is lost with the crash.
      if (done) break;
      absl::SleepFor(absl::Microseconds(50));
    }
    log_fs_.Freeze();
    log_fs_.OpenSyncGate();
    helper.join();
  }

  // --- Operations ---------------------------------------------------------------

  Op PickOp() {
    static constexpr int kWeights[kOpCount] = {10, 3, 3, 8, 8, 6, 2, 4, 3, 3, 5, 3, 5, 5, 1, 1, 1};
    int total = 0;
    for (int w : kWeights) total += w;
    int pick = static_cast<int>(random_() % total);
    for (int op = 0; op < kOpCount; ++op) {
      if ((pick -= kWeights[op]) < 0) return static_cast<Op>(op);
    }
    return kEnqueue;
  }

  static bool IsSessionOutput(const std::string& marker) {
    return marker.find("-o") != std::string::npos;
  }

  HeldUnit* PickUnit(bool coordinated, bool prepared) {
    std::vector<HeldUnit*> fit;
    for (HeldUnit& unit : units_) {
      if (unit.xid.empty() != !coordinated) continue;
      if (coordinated && unit.prepared != prepared) continue;
      fit.push_back(&unit);
    }
    return fit.empty() ? nullptr : fit[random_() % fit.size()];
  }

  void ForgetUnit(const HeldUnit* unit) {
    for (auto it = units_.begin(); it != units_.end(); ++it) {
      if (&*it == unit) {
        units_.erase(it);
        return;
      }
    }
  }

  void RunOp(Op op) {
    ++result_.operations;
    switch (op) {
      case kEnqueue: {
        MessageSpec spec;
        spec.queue = kIn;
        spec.payload = Marker("e");
        const std::string marker = spec.payload;
        absl::StatusOr<EnqueueResult> r = engine()->Enqueue(std::move(spec));
        Trace(absl::StrCat("enqueue ", Code(r.status()), " ", r.ok() ? r->message_id : 0));
        if (r.ok()) Emit({'E', r->message_id, marker});
        break;
      }
      case kEnqueueBatch: {
        std::vector<MessageSpec> batch(2 + random_() % 4);
        std::vector<std::string> markers;
        for (MessageSpec& spec : batch) {
          spec.queue = kIn;
          spec.payload = Marker("b");
          markers.push_back(spec.payload);
        }
        absl::StatusOr<std::vector<EnqueueResult>> r = engine()->EnqueueBatch(std::move(batch));
        Trace(absl::StrCat("batch ", markers.size(), " ", Code(r.status())));
        if (!r.ok()) break;
        for (size_t i = 0; i < r->size(); ++i) Emit({'E', (*r)[i].message_id, markers[i]});
        break;
      }
      case kEnqueueIrrecoverable: {
        MessageSpec spec;
        spec.queue = kIrrecoverable;
        spec.message_class = qmgr::v1::IRRECOVERABLE;
        spec.payload = Marker("x");
        const std::string marker = spec.payload;
        absl::StatusOr<EnqueueResult> r = engine()->Enqueue(std::move(spec));
        Trace(absl::StrCat("irrecoverable ", Code(r.status())));
        if (r.ok()) Emit({'X', r->message_id, marker});
        break;
      }
      case kGet: {
        // Mostly from IN; sometimes from the queues nothing else drains, so
        // that every queue's depth, and with it each restart and check,
        // stays bounded. POISON is drained as an operator would, each
        // message committed at once: crashes back units out, so messages
        // reach the backout threshold more often than held units commit.
        static constexpr const char* kGetFrom[] = {kIn, kIn, kIn, kIn, kIn, kPoison, kPoison, kOut};
        GetOptions get;
        get.queue = kGetFrom[random_() % std::size(kGetFrom)];
        absl::StatusOr<GetResult> got = engine()->Get(get);
        Trace(absl::StrCat("get ", get.queue, " ", Code(got.status()), " ",
                           got.ok() ? got->message.id() : 0));
        if (!got.ok()) break;
        if (get.queue == kPoison) {
          Emit({'P', got->message.id(), ""});
          absl::StatusOr<SyncPointResult> r = engine()->SyncPoint(got->uow);
          Trace(absl::StrCat("poison drained ", Code(r.status())));
          Emit({r.ok() ? 'C' : 'U', got->message.id(), ""});
          break;
        }
        units_.push_back({got->uow,
                          got->message.id(),
                          {},
                          "",
                          false,
                          get.queue == kOut ? got->message.payload() : ""});
        break;
      }
      case kInsert: {
        HeldUnit* unit = random_() % 3 == 0 ? PickUnit(true, false) : PickUnit(false, false);
        if (unit == nullptr) {
          Trace("insert none");
          break;
        }
        const bool to_session = random_() % 3 != 0;
        MessageSpec spec;
        spec.queue = to_session ? kSessionOutputQueue : kOut;
        spec.payload = Marker(to_session ? "o" : "i");
        const std::string marker = spec.payload;
        absl::StatusOr<QueueStatus> depth = engine()->DisplayQueue(spec.queue);
        if (!depth.ok() || depth->depth >= kDepthMax) {
          Trace("insert full");
          break;
        }
        const absl::Status s = engine()->Insert(unit->uow, std::move(spec));
        Trace(absl::StrCat("insert ", Code(s)));
        if (s.ok()) {
          unit->inserts.push_back(marker);
          if (!unit->xid.empty()) xid_inserts_[unit->xid].push_back(marker);
        }
        break;
      }
      case kSyncPoint: {
        HeldUnit* unit = PickUnit(false, false);
        if (unit == nullptr) {
          Trace("syncpoint none");
          break;
        }
        // From here a crash leaves the outcome open; an insert being taken
        // off OUT may be gone from then on, as a delivered output may.
        if (!unit->drained_insert.empty()) Emit({'K', 0, unit->drained_insert});
        Emit({'P', unit->taken, ""});
        for (const std::string& marker : unit->inserts) Emit({'P', unit->taken, marker});
        absl::StatusOr<SyncPointResult> r = engine()->SyncPoint(unit->uow);
        Trace(absl::StrCat("syncpoint ", Code(r.status())));
        if (r.ok()) {
          Emit({'C', unit->taken, ""});
          for (const std::string& marker : unit->inserts) {
            Emit({'I', 0, marker});
            if (IsSessionOutput(marker)) Emit({'K', 0, marker});
          }
        } else {
          Emit({'U', unit->taken, ""});
        }
        ForgetUnit(unit);
        break;
      }
      case kBackout: {
        HeldUnit* unit = PickUnit(false, false);
        if (unit == nullptr) {
          Trace("backout none");
          break;
        }
        for (const std::string& marker : unit->inserts) Emit({'B', 0, marker});
        const absl::Status s = engine()->Backout(unit->uow);
        Trace(absl::StrCat("backout ", Code(s)));
        ForgetUnit(unit);
        break;
      }
      case kCoordinatedGet: {
        const std::string xid = absl::StrCat("l", life_, "-x", ++marker_seq_);
        absl::StatusOr<UowId> uow = engine()->BeginCoordinatedUnit(
            {CrashWorkload::kCoordinator, CrashWorkload::kQualifier, xid});
        Trace(absl::StrCat("cbegin ", Code(uow.status())));
        if (!uow.ok()) break;
        GetOptions get;
        get.uow = *uow;
        get.queue = kIn;
        absl::StatusOr<GetResult> got = engine()->Get(get);
        Trace(absl::StrCat("cget ", Code(got.status()), " ", got.ok() ? got->message.id() : 0));
        units_.push_back({*uow, got.ok() ? got->message.id() : 0, {}, xid, false, ""});
        break;
      }
      case kPrepare: {
        HeldUnit* unit = PickUnit(true, false);
        if (unit == nullptr) {
          Trace("prepare none");
          break;
        }
        Emit({'P', unit->taken, unit->xid});
        for (const std::string& marker : unit->inserts) Emit({'P', unit->taken, marker});
        const absl::Status s = engine()->Prepare(unit->uow);
        Trace(absl::StrCat("prepare ", Code(s)));
        if (s.ok()) {
          Emit({'Q', unit->taken, unit->xid});
          unit->prepared = true;
        } else {
          ForgetUnit(unit);  // backed out (or its outcome is for the restart to tell)
        }
        break;
      }
      case kResolve: {
        HeldUnit* unit = random_() % 3 == 0 ? PickUnit(true, false) : PickUnit(true, true);
        if (unit == nullptr) {
          Trace("resolve none");
          break;
        }
        const bool commit = random_() % 4 != 0;
        if (!unit->prepared) {  // one phase: the outcome is open from here
          Emit({'P', unit->taken, unit->xid});
          for (const std::string& marker : unit->inserts) Emit({'P', unit->taken, marker});
        }
        Emit({'R', 0, unit->xid});
        const absl::Status s =
            engine()
                ->Resolve(CrashWorkload::kCoordinator, CrashWorkload::kQualifier,
                          {{unit->xid, commit ? qmgr::v1::COMMIT : qmgr::v1::BACKOUT}},
                          CrashWorkload::kCoordinator)
                .statuses.front();
        Trace(absl::StrCat("resolve ", commit, " ", Code(s)));
        if (s.ok()) {
          xid_inserts_.erase(unit->xid);
          decided_xids_.push_back(unit->xid);
          if (unit->taken != 0) Emit({commit ? 'C' : 'S', unit->taken, ""});
          for (const std::string& marker : unit->inserts) {
            Emit({commit ? 'I' : 'B', 0, marker});
            if (commit && IsSessionOutput(marker)) Emit({'K', 0, marker});
          }
        } else if (unit->taken != 0) {
          Emit({'U', unit->taken, ""});
        }
        ForgetUnit(unit);
        break;
      }
      case kInput:
      case kDeferredInput: {
        SentInput input;
        input.deferred = op == kDeferredInput;
        input.spec.origin_session = CrashWorkload::kSession;
        input.spec.input_seq = ++last_sent_;
        input.spec.payload = Marker("t");
        if (input.deferred) {
          static constexpr MessageClass kDeferred[] = {qmgr::v1::FASTPATH, qmgr::v1::RESPONSE,
                                                       qmgr::v1::CONVERSATIONAL};
          input.spec.queue = kFastPath;
          input.spec.message_class = kDeferred[random_() % 3];
        } else {
          input.spec.queue = kIn;
        }
        inputs_[input.spec.input_seq] = input;
        SendInput(input);
        break;
      }
      case kReceive:
        if (output_outstanding_) {
          Acknowledge();
        } else {
          Receive();
        }
        break;
      case kAcknowledge:
        if (output_outstanding_) {
          Acknowledge();
        } else {
          Trace("ack none");
        }
        break;
      case kCheckpoint: {
        absl::StatusOr<checkpoint::CheckpointReport> report =
            qm_->checkpointer()->Checkpoint(checkpoint::Trigger::kRequested);
        Trace(absl::StrCat("checkpoint ", Code(report.status())));
        if (report.ok()) ++result_.checkpoints;
        break;
      }
      case kIdleTimeout: {
        clock_.Advance(kUnitIdleTimeout + absl::Seconds(1));
        int expected = 0;
        for (const HeldUnit& unit : units_) {
          if (unit.prepared) continue;
          ++expected;
          for (const std::string& marker : unit.inserts) Emit({'B', 0, marker});
        }
        const int reaped = engine()->ReapIdleUnits();
        Trace(absl::StrCat("idle reaped ", reaped));
        if (reaped != expected) {
          Fail(absl::StrCat("the idle timeout backed out ", reaped, " units, not ", expected));
        }
        std::erase_if(units_, [](const HeldUnit& unit) { return !unit.prepared; });
        break;
      }
      case kForget: {
        // The coordinator no longer needs the outcomes it was told: else the
        // queue manager remembers every one (and each restart reads them).
        if (decided_xids_.empty()) {
          Trace("forget none");
          break;
        }
        const absl::Status s =
            engine()->Forget(CrashWorkload::kCoordinator, CrashWorkload::kQualifier, decided_xids_);
        Trace(absl::StrCat("forget ", decided_xids_.size(), " ", Code(s)));
        if (s.ok()) decided_xids_.clear();  // else (a crash) forgotten again later
        break;
      }
      case kOpCount:
        break;
    }
  }

  // Sends (or resends) a session input; a deferred one is taken and
  // committed at once, which hardens it.
  // False when refused (not for a crash): the number is free again.
  bool SendInput(const SentInput& input) {
    MessageSpec spec = input.spec;
    const std::string marker = spec.payload;
    const uint64_t seq = spec.input_seq;
    absl::StatusOr<EnqueueResult> r = engine()->Enqueue(std::move(spec));
    Trace(absl::StrCat("input ", seq, " ", input.deferred, " ", Code(r.status())));
    if (!r.ok()) {
      if (absl::IsUnavailable(r.status())) return true;  // the server may hold it
      inputs_.erase(inputs_.find(seq), inputs_.end());
      last_sent_ = seq - 1;
      return false;
    }
    // Exactly once: a recoverable input is held from its acceptance, a
    // deferred one from its sync point; before that a crash loses it and the
    // resync asks for it again.
    const auto held_once = [&] {
      if (inputs_held_.insert(std::hash<std::string>()(marker)).second) return true;
      Fail(absl::StrCat("input ", seq, " is held twice"));
      return false;
    };
    if (!input.deferred) {
      if (!held_once()) return true;
      Emit({'E', r->message_id, marker});
      Emit({'H', seq, ""});
      return true;
    }
    GetOptions get;
    get.queue = kFastPath;
    absl::StatusOr<GetResult> got = engine()->Get(get);
    Trace(absl::StrCat("deferred get ", Code(got.status())));
    if (!got.ok()) return true;
    absl::StatusOr<SyncPointResult> committed = engine()->SyncPoint(got->uow);
    Trace(absl::StrCat("deferred syncpoint ", Code(committed.status())));
    if (committed.ok() && held_once()) Emit({'H', got->message.input_seq(), ""});
    return true;
  }

  // ReceiveOutput, secured by the client at once; false when none came.
  bool Receive() {
    absl::StatusOr<SessionOutput> out =
        engine()->ReceiveOutput(CrashWorkload::kSession, absl::ZeroDuration());
    Trace(absl::StrCat("receive ", Code(out.status()), " ", out.ok() ? out->out_seq : 0, " ",
                       out.ok() ? out->message.possible_duplicate() : false));
    if (!out.ok()) return false;
    ++result_.outputs_received;
    const std::string& marker = out->message.payload();
    undelivered_.erase(marker);
    if (!received_.insert(marker).second && !out->message.possible_duplicate()) {
      Fail(absl::StrCat("output ", out->out_seq, " (", marker.substr(0, 40),
                        ") came again without the possible-duplicate flag"));
    }
    if (out->out_seq == 0) return true;  // an exception response: done when sent
    secured_seq_ = out->out_seq;
    secured_id_ = out->message.id();
    output_outstanding_ = true;
    return true;
  }

  void Acknowledge() {
    absl::StatusOr<bool> acked =
        engine()->Acknowledge(CrashWorkload::kSession, secured_seq_, true, 0);
    Trace(absl::StrCat("ack ", secured_seq_, " ", Code(acked.status())));
    if (acked.ok()) output_outstanding_ = false;
  }

  const SimOptions options_;
  std::mt19937_64 random_;
  SimResult result_;
  uint64_t hash_ = 14695981039346656037ull;
  int life_ = 0;
  uint64_t marker_seq_ = 0;

  FaultFileSystem log_fs_;
  std::shared_ptr<FaultRocksFileSystem> store_fs_ = std::make_shared<FaultRocksFileSystem>();
  std::unique_ptr<rocksdb::Env> env_;
  ManualClock clock_;
  std::optional<checkpoint::Step> freeze_at_step_;
  std::unique_ptr<restart::QueueManager> qm_;

  // The model and the clients' memory: it survives every crash.
  Model model_;
  std::vector<HeldUnit> units_;
  std::map<std::string, std::vector<std::string>> xid_inserts_;
  std::vector<std::string> decided_xids_;  // outcomes the engine remembers
  uint64_t last_sent_ = 0;
  std::map<uint64_t, SentInput> inputs_;     // sent, not yet known to be held
  absl::flat_hash_set<size_t> inputs_held_;  // hashes of their markers
  uint64_t secured_seq_ = 0;
  uint64_t secured_id_ = 0;
  bool output_outstanding_ = false;  // received and secured, not yet acknowledged
  std::set<std::string> received_;
  std::set<std::string> undelivered_;  // session outputs committed, not yet received
};

}  // namespace

std::string SimResult::Summary() const {
  std::vector<std::string> kinds, modes, queued;
  for (const auto& [name, n] : crash_kinds) kinds.push_back(absl::StrCat(name, "=", n));
  for (const auto& [name, n] : crash_modes) modes.push_back(absl::StrCat(name, "=", n));
  for (const auto& [name, n] : queued_at_last_check) queued.push_back(absl::StrCat(name, "=", n));
  return absl::StrCat(
      "seed=", seed, " crash_points=", crash_points, " (", absl::StrJoin(kinds, " "), "; ",
      absl::StrJoin(modes, " "), ") operations=", operations, " events=", events,
      " invariant_checks=", invariant_checks, " checkpoints=", checkpoints,
      " outputs_received=", outputs_received, " inputs_resent=", inputs_resent, " queued=(",
      absl::StrJoin(queued, " "), ")", " trace_hash=", absl::Hex(trace_hash, absl::kZeroPad16));
}

SimResult RunSeededSimulation(const SimOptions& options) { return Simulation(options).Run(); }

}  // namespace qmgr::testing
