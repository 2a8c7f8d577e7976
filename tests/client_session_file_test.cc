// client::SessionFile: the client's half of a session survives a crash at
// any point of a save (old state or new, never a mix), and a damaged file is
// refused, never read as a fresh session.
#include <errno.h>

#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "client/session_file.h"
#include "gtest/gtest.h"
#include "log/format.h"
#include "tests/support/fault_file_system.h"
#include "tests/support/temp_dir.h"

namespace qmgr::client {
namespace {

using qmgr::testing::CrashMode;
using qmgr::testing::FaultFileSystem;

constexpr char kPath[] = "/s/T1.session";

qmgr::v1::ClientSessionState SampleState(uint64_t last_sent) {
  qmgr::v1::ClientSessionState state;
  state.set_session("T1");
  state.set_last_input_sent(last_sent);
  for (uint64_t seq = last_sent - 1; seq <= last_sent; ++seq) {
    qmgr::v1::ClientSentInput* input = state.add_unhardened_inputs();
    input->set_input_seq(seq);
    input->set_class_(seq % 2 == 0 ? qmgr::v1::RESPONSE : qmgr::v1::RECOVERABLE);
    input->set_queue("IN");
    input->set_payload(absl::StrCat("payload ", seq, std::string(1, '\0'), "binary"));
    input->set_correlation_id(absl::StrCat("c", seq));
    input->set_reply_to("T1.OUT");
    input->set_expiry_time_us(1234567);
  }
  state.set_last_output_secured(last_sent * 10);
  state.set_last_output_secured_message_id(last_sent * 100);
  return state;
}

void ExpectSameState(const qmgr::v1::ClientSessionState& a, const qmgr::v1::ClientSessionState& b) {
  EXPECT_EQ(a.SerializeAsString(), b.SerializeAsString()) << a.DebugString() << "\nvs\n"
                                                          << b.DebugString();
}

class SessionFileTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(fs_.CreateDir("/s").ok()); }

  SessionFile MustOpen() {
    absl::StatusOr<SessionFile> file = SessionFile::Open(kPath, "T1", &fs_);
    EXPECT_TRUE(file.ok()) << file.status();
    return *std::move(file);
  }

  FaultFileSystem fs_;
};

TEST_F(SessionFileTest, MissingFileIsAFreshSession) {
  SessionFile file = MustOpen();
  EXPECT_FALSE(file.existed());
  EXPECT_EQ(file.state().session(), "T1");
  EXPECT_EQ(file.state().last_input_sent(), 0u);
  EXPECT_EQ(file.state().unhardened_inputs_size(), 0);
  EXPECT_EQ(file.state().last_output_secured(), 0u);
  // Opening writes nothing: the first Save does.
  EXPECT_FALSE(*fs_.Exists(kPath));
}

TEST_F(SessionFileTest, SaveIsDurableAtOnce) {
  SessionFile file = MustOpen();
  const int64_t syncs = fs_.SyncCount();
  const int64_t dir_syncs = fs_.DirSyncCount();
  ASSERT_TRUE(file.Save(SampleState(7)).ok());
  EXPECT_EQ(fs_.SyncCount(), syncs + 1);
  EXPECT_EQ(fs_.DirSyncCount(), dir_syncs + 1);
  ExpectSameState(file.state(), SampleState(7));
  // Power loss right after Save returned: everything it wrote survives.
  fs_.DropUnsyncedData();
  SessionFile reopened = MustOpen();
  EXPECT_TRUE(reopened.existed());
  ExpectSameState(reopened.state(), SampleState(7));
  EXPECT_FALSE(*fs_.Exists(absl::StrCat(kPath, ".tmp")));
}

TEST_F(SessionFileTest, FailedSyncKeepsTheOldStateAcrossACrash) {
  SessionFile file = MustOpen();
  ASSERT_TRUE(file.Save(SampleState(3)).ok());
  for (CrashMode mode :
       {CrashMode::kDropUnsynced, CrashMode::kKeepRandomBlocks, CrashMode::kTearLastWrite}) {
    fs_.FailSyncAfter(0, EIO);
    absl::Status saved = file.Save(SampleState(4));
    EXPECT_FALSE(saved.ok());
    ExpectSameState(file.state(), SampleState(3));  // unchanged on error
    fs_.SimulateCrash(mode, 42);
    SessionFile reopened = MustOpen();
    ExpectSameState(reopened.state(), SampleState(3));
    file = std::move(reopened);
  }
  EXPECT_EQ(fs_.SyncsAfterFailure(), 0);  // never syncs a file whose sync failed
}

TEST_F(SessionFileTest, FailedWriteKeepsTheOldState) {
  SessionFile file = MustOpen();
  ASSERT_TRUE(file.Save(SampleState(3)).ok());
  fs_.FailWriteAfter(0, ENOSPC);
  EXPECT_TRUE(absl::IsResourceExhausted(file.Save(SampleState(4))));
  fs_.SimulateCrash(CrashMode::kTearLastWrite, 7);
  ExpectSameState(MustOpen().state(), SampleState(3));
}

TEST_F(SessionFileTest, EveryDamagedByteIsRefused) {
  SessionFile file = MustOpen();
  ASSERT_TRUE(file.Save(SampleState(5)).ok());
  const std::string good = *fs_.ReadWholeFile(kPath);
  for (uint64_t offset = 0; offset < good.size(); ++offset) {
    ASSERT_TRUE(fs_.CorruptByte(kPath, offset).ok());
    absl::StatusOr<SessionFile> damaged = SessionFile::Open(kPath, "T1", &fs_);
    EXPECT_TRUE(absl::IsDataLoss(damaged.status()))
        << "byte " << offset << ": " << damaged.status();
    ASSERT_TRUE(fs_.CorruptByte(kPath, offset).ok());  // XOR again: restored
  }
  ExpectSameState(MustOpen().state(), SampleState(5));
}

TEST_F(SessionFileTest, EveryTruncationAndAnExtraByteAreRefused) {
  SessionFile file = MustOpen();
  ASSERT_TRUE(file.Save(SampleState(5)).ok());
  const std::string good = *fs_.ReadWholeFile(kPath);
  for (size_t length = 0; length < good.size(); ++length) {
    ASSERT_TRUE(fs_.WriteWholeFileDurably(kPath, good.substr(0, length)).ok());
    absl::StatusOr<SessionFile> damaged = SessionFile::Open(kPath, "T1", &fs_);
    EXPECT_TRUE(absl::IsDataLoss(damaged.status())) << length << " bytes: " << damaged.status();
  }
  ASSERT_TRUE(fs_.WriteWholeFileDurably(kPath, good + "x").ok());
  EXPECT_TRUE(absl::IsDataLoss(SessionFile::Open(kPath, "T1", &fs_).status()));
}

TEST_F(SessionFileTest, ABodyThatDoesNotParseIsRefusedDespiteItsChecksum) {
  // A valid frame around bytes that are no ClientSessionState (field 1 as a
  // varint where a string is declared, then a truncated length).
  const std::string body = "\x08\x01\x12\xff";
  std::string bytes(kSessionFileHeaderBytes, '\0');
  std::memcpy(bytes.data(), kSessionFileMagic, sizeof(kSessionFileMagic));
  log::PutFixed32(bytes.data() + kSessionFileVersionOffset, kSessionFileVersion);
  log::PutFixed32(bytes.data() + kSessionFileLengthOffset, body.size());
  log::PutFixed64(bytes.data() + kSessionFileChecksumOffset,
                  log::Checksum(0, absl::StrCat(bytes.substr(8, 8), body)));
  bytes += body;
  absl::StatusOr<qmgr::v1::ClientSessionState> decoded = SessionFile::Decode(bytes, "test");
  ASSERT_TRUE(absl::IsDataLoss(decoded.status())) << decoded.status();
  EXPECT_NE(decoded.status().message().find("does not parse"), std::string::npos);
}

TEST_F(SessionFileTest, AnotherSessionsFileIsRefused) {
  SessionFile file = MustOpen();
  ASSERT_TRUE(file.Save(SampleState(2)).ok());
  absl::StatusOr<SessionFile> other = SessionFile::Open(kPath, "T2", &fs_);
  EXPECT_TRUE(absl::IsDataLoss(other.status())) << other.status();
}

TEST_F(SessionFileTest, AStateBeyondTheLimitIsNotWritten) {
  SessionFile file = MustOpen();
  ASSERT_TRUE(file.Save(SampleState(2)).ok());
  qmgr::v1::ClientSessionState big = SampleState(3);
  big.mutable_unhardened_inputs(0)->set_payload(std::string(kSessionBodyBytesMax, 'x'));
  EXPECT_TRUE(absl::IsResourceExhausted(file.Save(big)));
  ExpectSameState(MustOpen().state(), SampleState(2));
}

TEST(SessionFilePosixTest, RoundTripOnARealDisk) {
  qmgr::testing::TempDir dir;
  const std::string path = absl::StrCat(dir.path(), "/T1.session");
  absl::StatusOr<SessionFile> file = SessionFile::Open(path, "T1");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_FALSE(file->existed());
  ASSERT_TRUE(file->Save(SampleState(9)).ok());
  ASSERT_TRUE(file->Save(SampleState(10)).ok());  // a replace, not an append
  absl::StatusOr<SessionFile> reopened = SessionFile::Open(path, "T1");
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_TRUE(reopened->existed());
  ExpectSameState(reopened->state(), SampleState(10));
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  EXPECT_EQ(static_cast<size_t>(in.tellg()),
            kSessionFileHeaderBytes + SampleState(10).ByteSizeLong());
}

}  // namespace
}  // namespace qmgr::client
