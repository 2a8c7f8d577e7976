// qmgrd's observability against the real server on loopback ports: the
// Prometheus endpoint scraped over HTTP (a plain GET on a socket) with its
// counters moving with traffic (enqueues, gets, commits and backouts by
// queue and class; fsyncs; refusals by RPC, code and reason), the
// structured log lines for restarts, checkpoints, session resync and
// refusals (rate-limited), and `qmgrctl status` (table, --json, exit codes).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "qmgr/v1/qmgr.grpc.pb.h"
#include "tests/support/command.h"
#include "tests/support/metrics_scrape.h"
#include "tests/support/qmgrd_process.h"
#include "tests/support/temp_dir.h"

namespace qmgr {
namespace {

namespace v1 = qmgr::v1;
using qmgr::testing::CommandResult;
using qmgr::testing::QmgrdProcess;
using qmgr::testing::RunCommand;
using qmgr::testing::TempDir;

constexpr absl::Duration kCallTimeout = absl::Seconds(10);

// Small segments, no time-triggered checkpoints (the test asks for them),
// metrics on any free port.
std::vector<std::string> Flags() {
  return {"--log-segment-bytes",     "4MiB", "--shutdown-grace-ms", "200",
          "--checkpoint-interval-s", "0",    "--metrics-listen",    "127.0.0.1:0"};
}

CommandResult Qmgrctl(const std::string& args) { return RunCommand(QMGRCTL_PATH, args); }

// Lines of `text` that contain `part`.
int CountLines(const std::string& text, const std::string& part) {
  int n = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) n += absl::StrContains(line, part);
  return n;
}

class ObservabilityTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(Start()); }

  void Start() {
    process_ = std::make_unique<QmgrdProcess>(QMGRD_PATH, dir_.path() + "/data", Flags());
    const absl::Status started = process_->Start();
    ASSERT_TRUE(started.ok()) << started;
    auto channel = grpc::CreateChannel(process_->target(), grpc::InsecureChannelCredentials());
    qm_ = v1::QueueManager::NewStub(channel);
    admin_ = v1::Admin::NewStub(channel);
    absl::StatusOr<int> port = qmgr::testing::MetricsPort(process_->Stderr());
    ASSERT_TRUE(port.ok()) << port.status();
    metrics_port_ = *port;
  }

  std::map<std::string, double> Scrape() {
    absl::StatusOr<std::map<std::string, double>> samples =
        qmgr::testing::ScrapeMetrics(metrics_port_);
    EXPECT_TRUE(samples.ok()) << samples.status();
    return samples.ok() ? *samples : std::map<std::string, double>{};
  }

  std::unique_ptr<grpc::ClientContext> Ctx() {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
    return context;
  }
  void Define(const std::string& queue, v1::QueueAttributes attributes = {}) {
    v1::DefineQueueRequest request;
    request.set_queue(queue);
    *request.mutable_attributes() = attributes;
    v1::DefineQueueResponse response;
    const grpc::Status s = admin_->DefineQueue(Ctx().get(), request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  grpc::Status Enqueue(const std::string& queue, v1::MessageClass cls) {
    v1::EnqueueRequest request;
    request.mutable_message()->set_queue(queue);
    request.mutable_message()->set_payload("payload");
    request.mutable_message()->set_class_(cls);
    v1::EnqueueResponse response;
    return qm_->Enqueue(Ctx().get(), request, &response);
  }
  // Takes the next message of `queue` in a new unit; its uow.
  uint64_t Get(const std::string& queue) {
    v1::GetRequest request;
    request.set_queue(queue);
    v1::GetResponse response;
    const grpc::Status s = qm_->Get(Ctx().get(), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(response.has_message());
    return response.uow();
  }
  CommandResult Ctl(const std::string& args) {
    return Qmgrctl(absl::StrCat(args, " --server ", process_->target()));
  }

  TempDir dir_;
  std::unique_ptr<QmgrdProcess> process_;
  std::unique_ptr<v1::QueueManager::Stub> qm_;
  std::unique_ptr<v1::Admin::Stub> admin_;
  int metrics_port_ = 0;
};

// Counters by queue and class move with traffic; depth and the fsync count
// and histogram with them.
TEST_F(ObservabilityTest, MetricsCountTrafficByQueueAndClass) {
  Define("Q1");
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Enqueue("Q1", v1::RECOVERABLE).ok());
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(Enqueue("Q1", v1::IRRECOVERABLE).ok());
  std::map<std::string, double> m = Scrape();
  EXPECT_EQ(m[R"(qmgr_enqueues_total{queue="Q1",class="RECOVERABLE"})"], 3);
  EXPECT_EQ(m[R"(qmgr_enqueues_total{queue="Q1",class="IRRECOVERABLE"})"], 2);
  EXPECT_EQ(m[R"(qmgr_queue_depth{queue="Q1"})"], 5);
  const double fsyncs_before = m["qmgr_log_fsyncs_total"];
  EXPECT_GT(fsyncs_before, 0);
  EXPECT_EQ(m["qmgr_log_fsync_seconds_count"], fsyncs_before);
  EXPECT_GT(m["qmgr_log_written_bytes_total"], 0);
  EXPECT_GT(m["qmgr_log_group_commit_records_count"], 0);
  // qmgrd runs on tcmalloc, whose accounts it shows.
  EXPECT_GT(m["qmgr_heap_allocated_bytes"], 0);
  EXPECT_EQ(m.count("qmgr_heap_thread_cache_bytes"), 1u);

  v1::SyncPointRequest commit;
  commit.set_uow(Get("Q1"));
  v1::SyncPointResponse committed;
  ASSERT_TRUE(qm_->SyncPoint(Ctx().get(), commit, &committed).ok());
  v1::BackoutRequest backout;
  backout.set_uow(Get("Q1"));
  v1::BackoutResponse backed_out;
  ASSERT_TRUE(qm_->Backout(Ctx().get(), backout, &backed_out).ok());

  m = Scrape();
  EXPECT_EQ(m[R"(qmgr_gets_total{queue="Q1",class="RECOVERABLE"})"], 2);
  EXPECT_EQ(m[R"(qmgr_commits_total{queue="Q1",class="RECOVERABLE"})"], 1);
  EXPECT_EQ(m[R"(qmgr_backouts_total{queue="Q1",class="RECOVERABLE"})"], 1);
  EXPECT_EQ(m[R"(qmgr_gets_total{queue="Q1",class="IRRECOVERABLE"})"], 0);
  EXPECT_EQ(m[R"(qmgr_queue_depth{queue="Q1"})"], 4);
  EXPECT_EQ(m["qmgr_units_committed_total"], 1);
  EXPECT_EQ(m["qmgr_units_backed_out_total"], 1);
  EXPECT_GT(m["qmgr_log_fsyncs_total"], fsyncs_before) << "the commit waited for an fsync";
  EXPECT_EQ(m["qmgr_log_fsync_seconds_count"], m["qmgr_log_fsyncs_total"]);
  EXPECT_EQ(m[R"(qmgr_log_fsync_seconds_bucket{le="+Inf"})"], m["qmgr_log_fsyncs_total"]);
  EXPECT_EQ(m[R"(qmgr_restart_duration_seconds{mode="new"})"] > 0, true);
  EXPECT_EQ(m["qmgr_memory_budget_bytes"], double(1ull << 30));
  EXPECT_GT(m["qmgr_disk_free_bytes"], 0);
  EXPECT_EQ(m["qmgr_units_in_doubt"], 0);
}

// Refusals are counted by RPC, code and reason; their log lines do not
// flood: one line per kind per interval, every refusal in the metric.
TEST_F(ObservabilityTest, RefusalsCountedByReasonAndLoggedWithoutFlooding) {
  v1::QueueAttributes one_deep;
  one_deep.set_max_depth(1);
  Define("FULL", one_deep);
  ASSERT_TRUE(Enqueue("FULL", v1::RECOVERABLE).ok());
  constexpr int kRefusals = 40;
  const absl::Time burst_start = absl::Now();
  for (int i = 0; i < kRefusals; ++i) {
    EXPECT_EQ(Enqueue("FULL", v1::RECOVERABLE).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  EXPECT_EQ(Enqueue("NO.SUCH.QUEUE", v1::RECOVERABLE).error_code(), grpc::StatusCode::NOT_FOUND);

  const std::map<std::string, double> m = Scrape();
  EXPECT_EQ(
      m.at(
          R"(qmgr_requests_refused_total{rpc="QueueManager.Enqueue",code="RESOURCE_EXHAUSTED",reason="QUEUE_FULL"})"),
      kRefusals);
  EXPECT_EQ(
      m.at(R"(qmgr_requests_refused_total{rpc="QueueManager.Enqueue",code="NOT_FOUND",reason=""})"),
      1);
  const bool within_interval = absl::Now() - burst_start < absl::Seconds(9);
  const std::string err = process_->Stderr();
  EXPECT_EQ(CountLines(err,
                       "qmgrd: request.refused rpc=QueueManager.Enqueue "
                       "code=RESOURCE_EXHAUSTED reason=QUEUE_FULL count=1 message="),
            1)
      << err;
  // Unless the machine crawled, the burst took less than the 10 s interval:
  // one line for all of it.
  if (within_interval) {
    EXPECT_EQ(CountLines(err, "reason=QUEUE_FULL"), 1) << err;
  }
  EXPECT_CONTAINS(err,
                  "qmgrd: request.refused rpc=QueueManager.Enqueue code=NOT_FOUND reason=\"\"");
}

// Restart phases and the restart's outcome, checkpoints and session resync
// appear as events; the next restarts say normal, then emergency.
TEST_F(ObservabilityTest, StructuredLinesForRestartCheckpointAndResync) {
  std::string err = process_->Stderr();
  EXPECT_CONTAINS(err, "qmgrd: restart.phase phase=lock took_ms=");
  EXPECT_CONTAINS(err, "qmgrd: restart.phase phase=open_log took_ms=");
  EXPECT_CONTAINS(err, "qmgrd: restart.phase phase=redo took_ms=");
  EXPECT_CONTAINS(err, "qmgrd: restart.done mode=new ");

  const CommandResult checkpoint = Ctl("checkpoint");
  ASSERT_EQ(checkpoint.exit_code, 0) << checkpoint.err;
  EXPECT_CONTAINS(process_->Stderr(), " trigger=requested redo_lsn=");
  EXPECT_CONTAINS(process_->Stderr(), "qmgrd: checkpoint.done number=");

  v1::OpenSessionRequest bind;
  bind.set_session("TERM1");
  v1::OpenSessionResponse bound;
  ASSERT_TRUE(qm_->OpenSession(Ctx().get(), bind, &bound).ok());
  v1::RequestRecoveryRequest rqr;
  rqr.set_session("TERM1");
  v1::RequestRecoveryResponse recovering;
  ASSERT_TRUE(qm_->RequestRecovery(Ctx().get(), rqr, &recovering).ok());
  v1::SetAndTestSequenceNumbersRequest stsn;
  stsn.set_session("TERM1");
  stsn.mutable_input()->set_action(v1::SENSE);
  stsn.mutable_output()->set_action(v1::SENSE);
  v1::SetAndTestSequenceNumbersResponse answer;
  const grpc::Status stsn_status = qm_->SetAndTestSequenceNumbers(Ctx().get(), stsn, &answer);
  ASSERT_TRUE(stsn_status.ok()) << stsn_status.error_message();
  err = process_->Stderr();
  EXPECT_CONTAINS(err, "qmgrd: session.bind session=TERM1 cold=false resync_required=false");
  EXPECT_CONTAINS(err,
                  "qmgrd: session.resync session=TERM1 input_action=SENSE input_result=SENSED");

  process_->Signal(SIGTERM);
  ASSERT_EQ(process_->WaitExit(absl::Seconds(20)), 0) << process_->Stderr();
  EXPECT_CONTAINS(process_->Stderr(), "trigger=shutdown");
  ASSERT_NO_FATAL_FAILURE(Start());
  EXPECT_CONTAINS(process_->Stderr(), "qmgrd: restart.done mode=normal ");

  ASSERT_EQ(Enqueue("NOWHERE", v1::RECOVERABLE).error_code(), grpc::StatusCode::NOT_FOUND);
  process_->Signal(SIGKILL);
  process_->WaitExit(absl::Seconds(20));
  ASSERT_NO_FATAL_FAILURE(Start());
  EXPECT_CONTAINS(process_->Stderr(), "qmgrd: restart.done mode=emergency ");
  EXPECT_EQ(Scrape()[R"(qmgr_restart_duration_seconds{mode="emergency"})"] > 0, true);
}

// `qmgrctl status`: the table names every part, --json parses into
// StatusResponse with the live figures, and no server is exit 69.
TEST_F(ObservabilityTest, StatusVerb) {
  Define("Q1");
  ASSERT_TRUE(Enqueue("Q1", v1::RECOVERABLE).ok());
  ASSERT_EQ(Ctl("checkpoint").exit_code, 0);

  const CommandResult table = Ctl("status");
  ASSERT_EQ(table.exit_code, 0) << table.err;
  for (const char* part : {"qmgr        QM1, up ", "restart     new at ", "record(s) redone",
                           "phases: lock ", "log         ", " segment(s) of 4.0MiB", "checkpoint  ",
                           "estimate    emergency restart ", "memory      ", " of 1.0GiB budget",
                           "disk        ", " free of ", "units       0 open, 0 in doubt"}) {
    EXPECT_CONTAINS(table.out, part);
  }

  const CommandResult json = Ctl("status --json");
  ASSERT_EQ(json.exit_code, 0) << json.err;
  v1::StatusResponse status;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json.out, &status).ok()) << json.out;
  EXPECT_EQ(status.qmgr_name(), "QM1");
  EXPECT_EQ(status.restart().mode(), "new");
  EXPECT_GT(status.restart().phases_size(), 3);
  EXPECT_GE(status.log().segments(), 1u);
  EXPECT_EQ(status.log().segment_bytes(), 4u << 20);
  EXPECT_EQ(status.log().bytes_on_disk(), status.log().segments() * (4u << 20));
  EXPECT_GE(status.log().durable_lsn(), status.checkpoint().redo_lsn());
  EXPECT_GE(status.checkpoint().checkpoint_number(), 1u);
  EXPECT_GE(status.checkpoint().taken(), 1u);
  EXPECT_GT(status.checkpoint().written_time_us(), 0);
  EXPECT_LT(status.checkpoint().age_ms(), 60000u);
  EXPECT_GE(status.checkpoint().estimated_restart_seconds(), 0);
  EXPECT_GT(status.checkpoint().replay_bytes_per_second(), 0);
  EXPECT_EQ(status.memory().budget_bytes(), 1u << 30);
  EXPECT_GT(status.memory().payload_bytes_in_memory(), 0u);
  EXPECT_GT(status.disk().free_bytes(), 0u);
  EXPECT_GE(status.disk().total_bytes(), status.disk().free_bytes());
  EXPECT_EQ(status.disk().data_dir(), dir_.path() + "/data");

  const CommandResult unreachable = Qmgrctl("status --server 127.0.0.1:1 --connect-timeout-ms 300");
  EXPECT_EQ(unreachable.exit_code, 69) << unreachable.err;
  EXPECT_CONTAINS(unreachable.err, "cannot reach qmgrd");
}

// A metrics address that cannot be served stops qmgrd at startup (exit 4).
TEST_F(ObservabilityTest, MetricsAddressInUseIsRefused) {
  QmgrdProcess second(QMGRD_PATH, dir_.path() + "/other",
                      {"--metrics-listen", absl::StrCat("127.0.0.1:", metrics_port_)});
  EXPECT_EQ(second.RunToExit(), 4) << second.Stderr();
  EXPECT_CONTAINS(second.Stderr(), "cannot serve metrics on 127.0.0.1:");
}

}  // namespace
}  // namespace qmgr
