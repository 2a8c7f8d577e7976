#include "checkpoint/checkpointer.h"

#include <sys/statvfs.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace qmgr::checkpoint {

absl::string_view TriggerName(Trigger trigger) {
  switch (trigger) {
    case Trigger::kLogBytes:
      return "log-bytes";
    case Trigger::kTime:
      return "time";
    case Trigger::kRestartTarget:
      return "restart-target";
    case Trigger::kRequested:
      return "requested";
    case Trigger::kShutdown:
      return "shutdown";
    case Trigger::kRestart:
      return "restart";
  }
  return "?";
}

std::string CheckpointReport::ToString() const {
  std::string out = absl::StrCat(
      "checkpoint ", checkpoint_number, " (", TriggerName(trigger), "): redo LSN ", redo_lsn, ", ",
      counts.messages_written, " messages written (", counts.payloads_written, " payloads), ",
      counts.messages_deleted, " deleted, ", counts.queues_written + counts.queues_deleted,
      " queue changes, ", counts.sessions_written, " sessions, ", counts.batch_bytes,
      " bytes, latch held ", absl::FormatDuration(latch_held), ", took ",
      absl::FormatDuration(elapsed));
  if (!long_open_units.empty()) {
    absl::StrAppend(&out, "; units open long: ",
                    absl::StrJoin(long_open_units, ", ", [](std::string* s, const OpenUnit& u) {
                      absl::StrAppend(s, u.id, " (age ", absl::FormatDuration(u.age), ", idle ",
                                      absl::FormatDuration(u.idle), ")");
                    }));
  }
  return out;
}

Checkpointer::Checkpointer(log::Log* log, Engine* engine, Store* store, CheckpointOptions options,
                           qmgr::v1::CheckpointMeta last)
    : log_(log),
      engine_(engine),
      store_(store),
      options_(std::move(options)),
      last_(std::move(last)),
      last_time_(absl::Now()) {}

Checkpointer::~Checkpointer() { Stop(); }

void Checkpointer::Start(std::function<void(const absl::StatusOr<CheckpointReport>&)> on_report,
                         std::optional<Trigger> first) {
  thread_ = std::thread(
      [this, on_report = std::move(on_report), first] { TriggerLoop(on_report, first); });
}

void Checkpointer::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

double Checkpointer::EstimatedRestartSeconds() const {
  absl::MutexLock lock(&mu_);
  const double rate = last_.replay_bytes_per_second() > 0
                          ? last_.replay_bytes_per_second()
                          : options_.assumed_replay_bytes_per_second;
  const log::Lsn next = log_->NextLsn();
  return next > last_.redo_lsn() ? static_cast<double>(next - last_.redo_lsn()) / rate : 0;
}

void Checkpointer::SetReplayRate(double bytes_per_second) {
  absl::MutexLock lock(&mu_);
  last_.set_replay_bytes_per_second(bytes_per_second);
}

uint64_t Checkpointer::checkpoint_number() const {
  absl::MutexLock lock(&mu_);
  return last_.checkpoint_number();
}

log::Lsn Checkpointer::redo_lsn() const {
  absl::MutexLock lock(&mu_);
  return last_.redo_lsn();
}

CheckpointStats Checkpointer::stats() const {
  absl::MutexLock lock(&mu_);
  CheckpointStats stats;
  stats.taken = taken_;
  stats.failed = failures_;
  stats.seconds = seconds_;
  stats.last = last_;
  stats.replay_bytes_per_second = last_.replay_bytes_per_second() > 0
                                      ? last_.replay_bytes_per_second()
                                      : options_.assumed_replay_bytes_per_second;
  return stats;
}

absl::Status Checkpointer::CheckStoreRoom() const {
  if (options_.store_free_bytes_min == 0) return absl::OkStatus();
  struct statvfs fs;
  if (::statvfs(store_->path().c_str(), &fs) != 0) return absl::OkStatus();  // cannot tell
  const uint64_t free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  uint64_t needed = options_.store_free_bytes_min;
  {
    absl::MutexLock lock(&mu_);
    needed = std::max(needed, 2 * last_batch_bytes_);
  }
  if (free_bytes >= needed) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("checkpoint refused: the store's file system has ", free_bytes,
                   " bytes free, and a checkpoint starts only with ", needed));
}

absl::StatusOr<CheckpointReport> Checkpointer::Checkpoint(Trigger trigger) {
  absl::MutexLock one_at_a_time(&checkpoint_mu_);
  absl::StatusOr<CheckpointReport> report = TakeCheckpoint(trigger);
  {
    absl::MutexLock lock(&mu_);
    if (report.ok()) {
      ++taken_;
      seconds_.Observe(absl::ToDoubleSeconds(report->elapsed));
    } else {
      ++failures_;
    }
  }
  if (options_.on_checkpoint) options_.on_checkpoint(trigger, report);
  return report;
}

absl::StatusOr<CheckpointReport> Checkpointer::TakeCheckpoint(Trigger trigger) {
  qmgr::v1::CheckpointMeta meta;
  {
    absl::MutexLock lock(&mu_);
    if (!failed_.ok()) return failed_;
    meta = last_;
  }
  if (absl::Status room = CheckStoreRoom(); !room.ok()) return room;
  const absl::Time start = absl::Now();
  CheckpointReport report;
  report.trigger = trigger;

  // Steps 1-2.
  const CheckpointDelta delta = engine_->BeginCheckpoint();
  report.latch_held = absl::Now() - start;
  Hook(Step::kDeltaTaken);
  // Step 3.
  absl::Status status = log_->WaitAllDurable();
  if (status.ok()) Hook(Step::kLogDurable);
  // Step 4.
  meta.set_checkpoint_number(meta.checkpoint_number() + 1);
  meta.set_redo_lsn(delta.redo_lsn);
  meta.set_log_id(log_->id().ToString());
  meta.set_first_free_id(delta.first_free_id);
  meta.set_next_uow(delta.next_uow);
  meta.set_written_time_us(absl::ToUnixMicros(absl::Now()));
  if (status.ok()) status = store_->Write(delta, meta, &report.counts);
  engine_->EndCheckpoint();
  if (!status.ok()) {
    status = absl::Status(status.code(), absl::StrCat("checkpoint ", meta.checkpoint_number(),
                                                      " failed; no further checkpoint will be "
                                                      "taken until a restart: ",
                                                      status.message()));
    absl::MutexLock lock(&mu_);
    failed_ = status;
    return status;
  }
  {
    absl::MutexLock lock(&mu_);
    last_ = meta;
    last_time_ = absl::Now();
    last_batch_bytes_ = report.counts.batch_bytes;
  }
  Hook(Step::kStoreWritten);
  // In the background: RocksDB's WAL then stays short, and so does the
  // store's open at the next restart. Not flushing only makes that open
  // slower: the checkpoint itself is durable in the WAL.
  store_->Flush(/*wait=*/false).IgnoreError();
  // Step 5. CHECKPOINT_END is for tools: losing it loses nothing, so no wait.
  qmgr::v1::LogRecord end;
  qmgr::v1::CheckpointEndRecord* e = end.mutable_checkpoint_end();
  e->set_checkpoint_number(meta.checkpoint_number());
  e->set_redo_lsn(meta.redo_lsn());
  e->set_messages_written(report.counts.messages_written);
  e->set_messages_deleted(report.counts.messages_deleted);
  e->set_sessions_written(report.counts.sessions_written);
  e->set_prepared_units_written(report.counts.coordinated_written);
  absl::StatusOr<log::Lsn> end_lsn = log_->Append(end);
  if (!end_lsn.ok()) return end_lsn.status();
  Hook(Step::kEndAppended);
  {
    absl::MutexLock lock(&mu_);
    quiet_lsn_ = log_->NextLsn();
  }
  if (absl::Status s = log_->RetireBefore(meta.redo_lsn()); !s.ok()) return s;

  report.checkpoint_number = meta.checkpoint_number();
  report.redo_lsn = meta.redo_lsn();
  for (const OpenUnit& unit : engine_->OpenUnits()) {
    if (unit.age <= options_.report_units_open_over) break;  // oldest first
    report.long_open_units.push_back(unit);
  }
  report.elapsed = absl::Now() - start;
  return report;
}

void Checkpointer::TriggerLoop(
    std::function<void(const absl::StatusOr<CheckpointReport>&)> on_report,
    std::optional<Trigger> first) {
  if (first) {
    absl::StatusOr<CheckpointReport> report = Checkpoint(*first);
    if (on_report) on_report(report);
  }
  while (true) {
    std::optional<Trigger> trigger;
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.poll_interval);
      if (stopping_) return;
      if (!failed_.ok()) continue;
      const log::Lsn next = log_->NextLsn();
      const uint64_t since = next > last_.redo_lsn() ? next - last_.redo_lsn() : 0;
      if (options_.log_bytes > 0 && since >= options_.log_bytes) {
        trigger = Trigger::kLogBytes;
      } else if (options_.interval > absl::ZeroDuration() && next > quiet_lsn_ &&
                 absl::Now() - last_time_ >= options_.interval) {
        trigger = Trigger::kTime;
      }
    }
    if (!trigger && options_.max_restart_seconds > 0 &&
        EstimatedRestartSeconds() > options_.max_restart_seconds) {
      trigger = Trigger::kRestartTarget;
    }
    if (!trigger) continue;
    absl::StatusOr<CheckpointReport> report = Checkpoint(*trigger);
    if (on_report) on_report(report);
  }
}

}  // namespace qmgr::checkpoint
