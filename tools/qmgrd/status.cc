#include "tools/qmgrd/status.h"

#include <filesystem>
#include <system_error>

#include "absl/time/clock.h"

namespace qmgr::server {

qmgr::v1::StatusResponse QueueManagerStatus(const QueueManagerInstance& qm) {
  const absl::Time now = absl::Now();
  qmgr::v1::StatusResponse out;
  out.set_qmgr_name(qm.options().queue_manager_name);
  out.set_group_name(qm.options().group_name);
  out.set_uptime_ms(absl::ToInt64Milliseconds(now - qm.restart_began()));

  const restart::RestartReport& r = qm.restart_report();
  qmgr::v1::RestartStatus* restart = out.mutable_restart();
  restart->set_mode(std::string(restart::ModeName(r.mode)));
  restart->set_started_time_us(absl::ToUnixMicros(qm.restart_began()));
  restart->set_elapsed_us(absl::ToInt64Microseconds(r.elapsed));
  for (const auto& [name, elapsed] : r.steps) {
    qmgr::v1::RestartPhase* phase = restart->add_phases();
    phase->set_name(name);
    phase->set_elapsed_us(absl::ToInt64Microseconds(elapsed));
  }
  restart->set_redo_from_lsn(r.redo_from);
  restart->set_redo_to_lsn(r.redo_to);
  restart->set_records_redone(r.records_redone);
  restart->set_units_backed_out(r.units_backed_out);
  restart->set_messages_backed_out(r.messages_backed_out);
  restart->set_units_in_doubt(r.units_in_doubt);
  restart->set_messages_moved_to_backout_queues(r.messages_moved_to_backout_queues);
  restart->set_log_tail(r.log_tail);

  const log::LogStats log_stats = qm.log()->stats();
  const checkpoint::CheckpointStats cp = qm.checkpointer()->stats();
  qmgr::v1::LogStatus* log = out.mutable_log();
  log->set_segments(log_stats.segments);
  log->set_segment_bytes(qm.options().log_segment_bytes);
  log->set_bytes_on_disk(log_stats.segments * qm.options().log_segment_bytes);
  log->set_first_lsn(qm.log()->FirstLsn());
  log->set_next_lsn(qm.log()->NextLsn());
  log->set_durable_lsn(qm.log()->DurableLsn());
  log->set_bytes_since_checkpoint(
      log->next_lsn() > cp.last.redo_lsn() ? log->next_lsn() - cp.last.redo_lsn() : 0);

  qmgr::v1::CheckpointStatus* checkpoint = out.mutable_checkpoint();
  checkpoint->set_checkpoint_number(cp.last.checkpoint_number());
  checkpoint->set_redo_lsn(cp.last.redo_lsn());
  checkpoint->set_written_time_us(cp.last.written_time_us());
  if (cp.last.written_time_us() > 0) {
    checkpoint->set_age_ms(std::max<int64_t>(
        0, absl::ToInt64Milliseconds(now - absl::FromUnixMicros(cp.last.written_time_us()))));
  }
  checkpoint->set_taken(cp.taken);
  checkpoint->set_failed(cp.failed);
  checkpoint->set_estimated_restart_seconds(qm.EstimatedRestartSeconds());
  checkpoint->set_replay_bytes_per_second(cp.replay_bytes_per_second);
  checkpoint->set_max_restart_seconds(qm.checkpointer()->options().max_restart_seconds);

  const MemoryStatus memory = qm.engine()->Memory();
  qmgr::v1::MemoryInfo* m = out.mutable_memory();
  m->set_budget_bytes(memory.budget_bytes);
  m->set_payload_bytes_in_memory(memory.payload_bytes_in_memory);
  m->set_spilled_messages(memory.spilled_messages);
  m->set_spilled_bytes(memory.spilled_bytes);

  qmgr::v1::DiskStatus* disk = out.mutable_disk();
  disk->set_data_dir(qm.options().data_dir);
  std::error_code ec;
  const std::filesystem::space_info space = std::filesystem::space(qm.options().data_dir, ec);
  if (!ec) {
    disk->set_free_bytes(space.available);
    disk->set_total_bytes(space.capacity);
  }

  out.set_open_units(qm.engine()->OpenUnits().size());
  out.set_units_in_doubt(qm.engine()->InDoubtUnits("", "").size());
  absl::StatusOr<std::vector<qmgr::v1::SessionInfo>> sessions = qm.engine()->DisplaySessions({});
  if (sessions.ok()) {
    out.set_sessions_resync_required(
        std::count_if(sessions->begin(), sessions->end(),
                      [](const qmgr::v1::SessionInfo& s) { return s.resync_required(); }));
  }
  return out;
}

}  // namespace qmgr::server
