// The memory budget of the real qmgrd, tiny here (--memory-budget 64KiB,
// --spill-limit 256KiB): payloads beyond the budget are spilled to the
// store; once the spill is at its limit and memory at 5/4 of the budget,
// Enqueue answers RESOURCE_EXHAUSTED with a message naming the limit (never
// an OOM kill); the server keeps serving, every message acknowledged comes
// back intact and in order, and intake resumes once messages are consumed.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/support/qmgrd_process.h"
#include "tests/support/temp_dir.h"

namespace qmgr {
namespace {

using qmgr::testing::QmgrdProcess;

constexpr uint64_t kBudget = 64 << 10;
constexpr uint64_t kSpillLimit = 256 << 10;
constexpr size_t kPayloadBytes = 4 << 10;

v1::NewMessage Message(int i) {
  v1::NewMessage m;
  m.set_queue("Q");
  m.set_payload(absl::StrCat(i, "-", std::string(kPayloadBytes, 'm')));
  return m;
}

TEST(QmgrdMemoryTest, SpillsThenRefusesAtTheSpillLimitAndKeepsEverythingAcknowledged) {
  qmgr::testing::TempDir dir;
  QmgrdProcess process(
      QMGRD_PATH, dir.path() + "/data",
      {"--log-segment-bytes", "4MiB", "--memory-budget", "64KiB", "--spill-limit", "256KiB"});
  ASSERT_TRUE(process.Start().ok());
  absl::StatusOr<std::unique_ptr<client::Client>> connected =
      client::Client::Connect({.target = process.target(), .call_timeout = absl::Seconds(10)});
  ASSERT_TRUE(connected.ok()) << connected.status();
  client::Client& client = **connected;
  ASSERT_TRUE(client.DefineQueue("Q", {}).ok());

  int accepted = 0;
  absl::Status refused;
  while (accepted < 1000) {
    absl::StatusOr<client::Enqueued> done = client.Enqueue(Message(accepted));
    if (!done.ok()) {
      refused = done.status();
      break;
    }
    ++accepted;
  }
  ASSERT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "memory budget exhausted")) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), absl::StrCat("spill limit ", kSpillLimit)))
      << refused;
  // Everything within the budget's 5/4 and the spill's limit was taken.
  EXPECT_GE(uint64_t(accepted) * kPayloadBytes, kSpillLimit - kPayloadBytes + kBudget);
  EXPECT_LE(uint64_t(accepted) * kPayloadBytes, kSpillLimit + kBudget * 5 / 4);

  // Alive, and it says what it holds where.
  absl::StatusOr<v1::DisplayQueuesResponse> display = client.DisplayQueues();
  ASSERT_TRUE(display.ok()) << display.status();
  const v1::MemoryInfo& memory = display->memory();
  EXPECT_GT(memory.spilled_bytes(), kSpillLimit - 2 * kPayloadBytes);
  EXPECT_LE(memory.spilled_bytes(), kSpillLimit);
  EXPECT_LE(memory.payload_bytes_in_memory(), kBudget * 5 / 4);
  EXPECT_GT(memory.spilled_messages(), 0u);
  std::printf("accepted %d messages of %zu bytes; spilled %llu (%llu bytes); refused: %s\n",
              accepted, kPayloadBytes, static_cast<unsigned long long>(memory.spilled_messages()),
              static_cast<unsigned long long>(memory.spilled_bytes()),
              std::string(refused.message()).c_str());

  // Every acknowledged message back, in order and intact.
  absl::StatusOr<std::unique_ptr<client::Program>> program = client.OpenProgram();
  ASSERT_TRUE(program.ok()) << program.status();
  for (int i = 0; i < accepted; ++i) {
    client::UnitOfWork unit = (*program)->Begin();
    absl::StatusOr<std::optional<v1::Message>> got = unit.Get("Q", absl::Seconds(1));
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(got->has_value()) << "message " << i << " of " << accepted;
    ASSERT_EQ((*got)->payload(), Message(i).payload()) << "message " << i;
    ASSERT_TRUE(unit.Commit().ok());
  }
  display = client.DisplayQueues();
  ASSERT_TRUE(display.ok()) << display.status();
  EXPECT_EQ(display->memory().spilled_bytes(), 0u);
  EXPECT_TRUE(client.Enqueue(Message(accepted)).ok()) << "intake resumes";
}

}  // namespace
}  // namespace qmgr
