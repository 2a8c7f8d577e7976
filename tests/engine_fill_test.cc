// Many queued messages under the default memory budget: payloads beyond it
// are spilled to the RocksDB store, the process stays within memory, and
// messages come back intact and in order. QMGR_FILL_MESSAGES sets how many
// (the default suite: 100,000 with a small budget; the `long` run: 10 million
// 1 KiB messages with the default budget). Prints RSS and spill figures.
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "log/log.h"
#include "qmgr/engine.h"
#include "tests/support/temp_dir.h"

namespace qmgr {
namespace {

uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* value = std::getenv(name);
  uint64_t parsed = 0;
  return value != nullptr && absl::SimpleAtoi(value, &parsed) ? parsed : fallback;
}

uint64_t RssBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    uint64_t kib = 0;
    if (line.rfind("VmRSS:", 0) == 0 &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(6, line.size() - 9)), &kib)) {
      return kib * 1024;
    }
  }
  return 0;
}

std::string PayloadOf(uint64_t i) {
  std::string payload = absl::StrCat(i, ":");
  payload.resize(1024, static_cast<char>('a' + i % 26));
  return payload;
}

// The concern: a queue far larger than the memory budget neither runs out of
// memory nor loses or reorders a message.
TEST(EngineFillTest, QueueBeyondTheMemoryBudget) {
  const uint64_t messages = EnvOr("QMGR_FILL_MESSAGES", 100000);
  const uint64_t budget = EnvOr("QMGR_FILL_BUDGET_BYTES", 16 << 20);
  qmgr::testing::TempDir tmp;
  absl::StatusOr<std::unique_ptr<log::Log>> log =
      log::Log::Open(log::PosixFileSystem(), tmp.path() + "/log");
  ASSERT_TRUE(log.ok()) << log.status();
  absl::StatusOr<std::unique_ptr<SpillStore>> spill = SpillStore::Open({tmp.path() + "/store"});
  ASSERT_TRUE(spill.ok()) << spill.status();
  EngineOptions options;
  options.memory_budget_bytes = budget;
  options.spill = spill->get();
  options.reaper_interval = absl::ZeroDuration();
  Engine engine(log->get(), options);
  ASSERT_TRUE(engine.DefineQueue("BIG", {}).ok());

  const uint64_t rss_before = RssBytes();
  const absl::Time start = absl::Now();
  constexpr uint64_t kBatch = 1000;
  for (uint64_t i = 0; i < messages; i += kBatch) {
    std::vector<MessageSpec> batch;
    for (uint64_t j = i; j < std::min(messages, i + kBatch); ++j) {
      MessageSpec spec;
      spec.queue = "BIG";
      spec.payload = PayloadOf(j);
      batch.push_back(std::move(spec));
    }
    ASSERT_TRUE(engine.EnqueueBatch(batch).ok()) << "at message " << i;
  }
  const double fill_s = absl::ToDoubleSeconds(absl::Now() - start);
  const MemoryStatus memory = engine.Memory();
  const uint64_t rss = RssBytes();
  std::printf(
      "filled %llu x 1 KiB RECOVERABLE in %.1f s (%.0f msgs/s): RSS %.1f MiB (%.0f bytes per "
      "queued message beyond the start), payload in memory %.1f MiB of a %.1f MiB budget, "
      "%llu spilled (%.1f MiB)\n",
      static_cast<unsigned long long>(messages), fill_s, messages / fill_s, rss / 1048576.0,
      double(rss - rss_before) / messages, memory.payload_bytes_in_memory / 1048576.0,
      budget / 1048576.0, static_cast<unsigned long long>(memory.spilled_messages),
      memory.spilled_bytes / 1048576.0);
  std::fflush(stdout);
  EXPECT_EQ(engine.DisplayQueue("BIG")->depth, messages);
  EXPECT_LE(memory.payload_bytes_in_memory, budget + 1024);
  EXPECT_GE(memory.spilled_messages, messages - budget / 1024 - 1);

  // Every message back, in order, intact: units of 100 with commit_previous.
  UowId uow = 0;
  for (uint64_t i = 0; i < messages; ++i) {
    absl::StatusOr<GetResult> got =
        engine.Get({uow, "BIG", absl::ZeroDuration(), uow != 0 && i % 100 == 0});
    ASSERT_TRUE(got.ok()) << got.status() << " at message " << i;
    ASSERT_EQ(got->message.payload(), PayloadOf(i));
    uow = got->uow;
  }
  ASSERT_TRUE(engine.SyncPoint(uow).ok());
  EXPECT_EQ(engine.DisplayQueue("BIG")->depth, 0u);
  EXPECT_EQ(engine.Memory().spilled_messages, 0u);
  std::printf("drained in %.1f s total\n", absl::ToDoubleSeconds(absl::Now() - start));
}

}  // namespace
}  // namespace qmgr
