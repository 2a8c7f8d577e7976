// `qmgrctl log print|stats|verify` run as a program on small fixed logs: its
// output matches golden files (tests/golden/, regenerated with
// QMGR_UPDATE_GOLDEN=1), --json parses, and exit codes say good, torn,
// corrupt, unreadable or bad arguments.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <regex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "log/log.h"
#include "qmgr/v1/log_tool.pb.h"
#include "tests/support/command.h"
#include "tests/support/temp_dir.h"

namespace qmgr::tools {
namespace {

using qmgr::testing::CommandResult;

CommandResult Qmgrctl(const std::string& args) {
  return qmgr::testing::RunCommand(QMGRCTL_PATH, args);
}

// Output with what differs between runs (temp paths, the log id) replaced.
std::string Normalize(std::string text, const std::string& dir) {
  text = std::regex_replace(text, std::regex(dir), "<dir>");
  return std::regex_replace(
      text, std::regex("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<log-id>");
}

void ExpectGolden(const std::string& name, const std::string& actual) {
  qmgr::testing::ExpectGolden(GOLDEN_DIR, name, actual);
}

// A small log with one record of several types, each its own batch, so its
// bytes are the same on every run.
void WriteFixedLog(const std::string& dir) {
  log::LogOptions options;
  options.segment_bytes = 32 * 1024;  // all six batches in the first segment
  absl::StatusOr<std::unique_ptr<log::Log>> log =
      log::Log::Open(log::PosixFileSystem(), dir, options);
  ASSERT_TRUE(log.ok()) << log.status();
  std::vector<qmgr::v1::LogRecord> records(6);
  records[0].mutable_id_reserve()->set_first_id(1);
  records[0].mutable_id_reserve()->set_count(1000);
  qmgr::v1::QueueDefineRecord* define = records[1].mutable_queue_define();
  define->set_queue("ORDERS");
  define->mutable_attributes()->set_default_class(qmgr::v1::RECOVERABLE);
  define->mutable_attributes()->set_max_depth(10000);
  define->mutable_attributes()->set_backout_threshold(3);
  for (uint64_t id : {1, 2}) {
    qmgr::v1::Message* m = records[2].mutable_enqueue()->add_messages();
    m->set_id(id);
    m->set_queue("ORDERS");
    m->set_class_(qmgr::v1::RECOVERABLE);
    m->set_payload(absl::StrCat("order #", id, ": ", std::string(60, 'x')));
    m->set_enqueue_time_us(1700000000000000 + id);
  }
  records[3].mutable_get()->set_uow_id(7);
  records[3].mutable_get()->set_message_id(1);
  records[3].mutable_get()->set_queue("ORDERS");
  records[4].mutable_syncpoint()->set_uow_id(7);
  records[4].mutable_syncpoint()->add_consumed_message_ids(1);
  records[5].mutable_shutdown()->set_checkpoint_number(1);
  for (const auto& record : records) ASSERT_TRUE((*log)->AppendDurable(record).ok());
  ASSERT_TRUE((*log)->Close().ok());
}

class QmgrctlLogTest : public ::testing::Test {
 protected:
  void SetUp() override { WriteFixedLog(dir_); }
  std::string Args(const std::string& verb) {
    return absl::StrCat("--log-dir ", dir_, " log ", verb);
  }

  qmgr::testing::TempDir tmp_;
  const std::string dir_ = tmp_.path() + "/log";
};

// print shows every record decoded, one per line; filters narrow it.
TEST_F(QmgrctlLogTest, Print) {
  CommandResult run = Qmgrctl(Args("print"));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  ExpectGolden("log_print.txt", Normalize(run.out, dir_));
  run = Qmgrctl(Args("print --type ENQUEUE,syncpoint --from 4100"));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  ExpectGolden("log_print_filtered.txt", Normalize(run.out, dir_));
  run = Qmgrctl(Args("print --to 4096"));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(std::count(run.out.begin(), run.out.end(), '\n'), 2) << "header and one record";
}

// print --json: one object per line, each a LogEntryView that parses back.
TEST_F(QmgrctlLogTest, PrintJson) {
  CommandResult run = Qmgrctl(Args("print --json"));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  ExpectGolden("log_print.json", Normalize(run.out, dir_));
  int lines = 0;
  for (absl::string_view line : absl::StrSplit(run.out, '\n', absl::SkipEmpty())) {
    qmgr::v1::LogEntryView view;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(std::string(line), &view).ok()) << line;
    EXPECT_FALSE(view.type().empty());
    ++lines;
  }
  EXPECT_EQ(lines, 6);
}

// stats counts records and bytes per type; verify passes a good log.
TEST_F(QmgrctlLogTest, StatsAndVerifyGoodLog) {
  CommandResult run = Qmgrctl(Args("stats"));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  ExpectGolden("log_stats.txt", Normalize(run.out, dir_));
  run = Qmgrctl(Args("stats --json"));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  qmgr::v1::LogStatsReport report;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(run.out, &report).ok()) << run.out;
  EXPECT_EQ(report.records(), 6u);
  EXPECT_EQ(report.types_size(), 6);
  run = Qmgrctl(Args("verify"));
  EXPECT_EQ(run.exit_code, 0) << run.out << run.err;
  ExpectGolden("log_verify_ok.txt", Normalize(run.out, dir_));
}

void FlipByte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(c ^ 0x20));
}

// A damaged last batch is a torn tail (exit 1); damage before a durable batch
// is corruption (exit 2), named by segment and offset.
TEST_F(QmgrctlLogTest, VerifyTornAndCorrupt) {
  const std::string segment = dir_ + "/" + log::SegmentFileName(0);
  const uint64_t last_batch_offset = log::kSegmentHeaderBytes + 5 * log::kBlockBytes;
  FlipByte(segment, last_batch_offset + 40);
  CommandResult run = Qmgrctl(Args("verify"));
  EXPECT_EQ(run.exit_code, 1) << run.out << run.err;
  ExpectGolden("log_verify_torn.txt", Normalize(run.out, dir_));
  run = Qmgrctl(Args("print"));
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_NE(run.err.find("torn tail"), std::string::npos);

  FlipByte(segment, last_batch_offset + 40);
  FlipByte(segment, log::kSegmentHeaderBytes + 2 * log::kBlockBytes + 50);
  run = Qmgrctl(Args("verify"));
  EXPECT_EQ(run.exit_code, 2) << run.out << run.err;
  ExpectGolden("log_verify_corrupt.txt", Normalize(run.out, dir_));
  run = Qmgrctl(Args("verify --json"));
  EXPECT_EQ(run.exit_code, 2);
  qmgr::v1::LogVerifyReport report;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(run.out, &report).ok()) << run.out;
  EXPECT_EQ(report.verdict(), "CORRUPT");
  EXPECT_EQ(report.tail().damage_file_offset(), log::kSegmentHeaderBytes + 2 * log::kBlockBytes);
  run = Qmgrctl(Args("print"));
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_NE(run.err.find("corruption"), std::string::npos) << run.err;
}

// Filters keep the records that mention the queue, unit, session or
// message; given together, a record must mention one of each.
TEST_F(QmgrctlLogTest, PrintFilters) {
  auto lsns = [&](const std::string& filters) {
    const CommandResult run = Qmgrctl(Args("print --json " + filters));
    EXPECT_EQ(run.exit_code, 0) << run.err;
    std::vector<uint64_t> out;
    for (absl::string_view line : absl::StrSplit(run.out, '\n', absl::SkipEmpty())) {
      qmgr::v1::LogEntryView view;
      EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(std::string(line), &view).ok());
      out.push_back(view.lsn());
    }
    return out;
  };
  // QUEUE_DEFINE, ENQUEUE (Message.queue), GET.
  EXPECT_EQ(lsns("--queue ORDERS"), (std::vector<uint64_t>{4128, 8224, 12320}));
  EXPECT_EQ(lsns("--uow 7"), (std::vector<uint64_t>{12320, 16416}));
  // The ENQUEUE (Message.id), the GET and the SYNCPOINT consuming it.
  EXPECT_EQ(lsns("--msg 1"), (std::vector<uint64_t>{8224, 12320, 16416}));
  EXPECT_EQ(lsns("--msg 2"), (std::vector<uint64_t>{8224}));
  EXPECT_EQ(lsns("--msg 1 --queue ORDERS"), (std::vector<uint64_t>{8224, 12320}));
  EXPECT_EQ(lsns("--msg 1 --uow 7 --type GET"), (std::vector<uint64_t>{12320}));
  EXPECT_TRUE(lsns("--session TERM1").empty());
  EXPECT_TRUE(lsns("--queue NOPE").empty());
  // Either of two values of one filter.
  EXPECT_EQ(lsns("--msg 2 --msg 99 --uow 7").size(), 0u);
  EXPECT_EQ(lsns("--uow 7 --uow 8").size(), 2u);
  const CommandResult table = Qmgrctl(Args("print --uow 7"));
  EXPECT_EQ(table.exit_code, 0);
  EXPECT_EQ(std::count(table.out.begin(), table.out.end(), '\n'), 3) << table.out;
  EXPECT_EQ(Qmgrctl(Args("print --uow x")).exit_code, 64);
  EXPECT_EQ(Qmgrctl(Args("print --msg -1")).exit_code, 64);
}

// --follow tails a log another process holds open (and LOCKs): records
// appended afterwards, in the same segment and in new ones, appear; SIGINT
// ends it cleanly.
TEST_F(QmgrctlLogTest, PrintFollow) {
  const std::string live = tmp_.path() + "/live";
  log::LogOptions options;
  options.segment_bytes = 3 * log::kBlockBytes;  // two batches a segment: new segments come
  absl::StatusOr<std::unique_ptr<log::Log>> log =
      log::Log::Open(log::PosixFileSystem(), live, options);
  ASSERT_TRUE(log.ok()) << log.status();
  auto append = [&](const std::string& session) {
    qmgr::v1::LogRecord record;
    record.mutable_session_open()->set_session(session);
    ASSERT_TRUE((*log)->AppendDurable(record).ok());
  };
  append("FIRST");
  const std::string out = tmp_.path() + "/follow.out";
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const std::string args =
        absl::StrCat(QMGRCTL_PATH, " --log-dir ", live,
                     " log print --follow --session S2 --session FIRST >", out, " 2>", out, ".err");
    execl("/bin/sh", "sh", "-c", absl::StrCat("exec ", args).c_str(), nullptr);
    _exit(127);
  }
  // Waits until `text` is in the output `times` times.
  auto output_has = [&](const std::string& text, int times = 1) {
    for (int i = 0; i < 200; ++i) {
      std::ifstream in(out);
      const std::string got(std::istreambuf_iterator<char>(in), {});
      int found = 0;
      for (size_t at = got.find(text); at != std::string::npos; at = got.find(text, at + 1)) {
        ++found;
      }
      if (found >= times) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  };
  EXPECT_TRUE(output_has("\"FIRST\""));
  for (int i = 1; i <= 6; ++i) append(absl::StrCat("S", i));  // three more segments
  EXPECT_TRUE(output_has("\"S2\""));
  append("S2");
  EXPECT_TRUE(output_has("\"S2\"", 2));
  kill(child, SIGINT);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  std::ifstream in(out);
  const std::string got(std::istreambuf_iterator<char>(in), {});
  EXPECT_EQ(std::count(got.begin(), got.end(), '\n'), 4) << got;  // header, FIRST, S2, S2
  EXPECT_EQ(got.find("S1"), std::string::npos) << got;
  EXPECT_GE((*log)->stats().segments_created, 3u);
  ASSERT_TRUE((*log)->Close().ok());
}

// Bad arguments and missing logs: clear messages and distinct exit codes.
TEST_F(QmgrctlLogTest, BadInput) {
  CommandResult run = Qmgrctl(Args("print --type NOSUCH"));
  EXPECT_EQ(run.exit_code, 64);
  EXPECT_NE(run.err.find("unknown record type 'NOSUCH'"), std::string::npos) << run.err;
  run = Qmgrctl(Args("print --from 10 --to 5"));
  EXPECT_EQ(run.exit_code, 64);
  run = Qmgrctl(Args("print --from notanumber"));
  EXPECT_EQ(run.exit_code, 64);
  run = Qmgrctl("log");
  EXPECT_EQ(run.exit_code, 64);
  run = Qmgrctl("--log-dir /nonexistent/log log verify");
  EXPECT_EQ(run.exit_code, 3);
  EXPECT_NE(run.err.find("/nonexistent/log"), std::string::npos) << run.err;
  run = Qmgrctl(absl::StrCat("--log-dir ", tmp_.path(), " log stats"));
  EXPECT_EQ(run.exit_code, 3);
  EXPECT_NE(run.err.find("no log segments"), std::string::npos) << run.err;
  run = Qmgrctl("--help");
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_NE(run.out.find("log"), std::string::npos);
}

}  // namespace
}  // namespace qmgr::tools
