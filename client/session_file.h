// The client's half of a session on disk (docs/client.md): one small file
// holding a qmgr.v1.ClientSessionState, replaced whole and durably on every
// save.
//
// Layout (little endian):
//
//   offset  bytes  field
//   0       8      magic "QMGRSES\0"
//   8       4      format version (1)
//   12      4      body length L (at most kSessionBodyBytesMax)
//   16      8      checksum: XXH3-64, seed 0, of bytes [8, 16) then the body
//   24      L      body: a serialized qmgr.v1.ClientSessionState
//
// The file is exactly 24 + L bytes. Save writes "<path>.tmp", fsyncs it,
// renames it over <path> and fsyncs the directory, so a crash leaves either
// the old state or the new one, never a mix. Load refuses anything else
// (short, long, bad magic or version, checksum, protobuf parse, another
// session's name) as DataLoss naming the path: starting a session from zero
// after its numbers were lost must be the caller's decision (a cold open).
#ifndef QMGR_CLIENT_SESSION_FILE_H_
#define QMGR_CLIENT_SESSION_FILE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "log/file.h"
#include "qmgr/v1/client_session.pb.h"

namespace qmgr::client {

inline constexpr char kSessionFileMagic[8] = {'Q', 'M', 'G', 'R', 'S', 'E', 'S', '\0'};
inline constexpr uint32_t kSessionFileVersion = 1;
inline constexpr size_t kSessionFileVersionOffset = 8;
inline constexpr size_t kSessionFileLengthOffset = 12;
inline constexpr size_t kSessionFileChecksumOffset = 16;
inline constexpr size_t kSessionFileHeaderBytes = 24;
// The body holds the payloads of the inputs not yet known hardened: at most
// one RECOVERABLE input in flight plus deferred inputs awaiting their sync
// point, each at most a 16 MiB log record. 64 MiB leaves room for a few of
// the largest; Save refuses more (ResourceExhausted) rather than write a
// file no Load would accept.
inline constexpr uint32_t kSessionBodyBytesMax = 64u << 20;

static_assert(sizeof(kSessionFileMagic) == 8);
static_assert(kSessionFileVersionOffset == sizeof(kSessionFileMagic));
static_assert(kSessionFileLengthOffset == kSessionFileVersionOffset + sizeof(uint32_t));
static_assert(kSessionFileChecksumOffset == kSessionFileLengthOffset + sizeof(uint32_t));
static_assert(kSessionFileHeaderBytes == kSessionFileChecksumOffset + sizeof(uint64_t));

class SessionFile {
 public:
  // The state kept at `path` for session `name`. A missing file yields a
  // fresh state (nothing sent, nothing secured) with existed() false; it is
  // written by the first Save. DataLoss when the file is damaged or belongs
  // to another session. `fs` must outlive the object.
  static absl::StatusOr<SessionFile> Open(std::string path, const std::string& name,
                                          log::FileSystem* fs = log::PosixFileSystem());

  // Whether Open found a file.
  bool existed() const { return existed_; }
  const std::string& path() const { return path_; }
  const qmgr::v1::ClientSessionState& state() const { return state_; }

  // Replaces the file with `state`, durably: on OK a crash keeps it. On an
  // error the file holds the previous state or `state` (a failed directory
  // sync cannot tell which), and the object's state() is unchanged.
  // REQUIRES: state.session() is this file's session.
  absl::Status Save(const qmgr::v1::ClientSessionState& state);

  // The file's bytes for `state`, and the state in `bytes` (Load's checks,
  // `where` naming the source in errors). Exposed for tests.
  static absl::StatusOr<std::string> Encode(const qmgr::v1::ClientSessionState& state);
  static absl::StatusOr<qmgr::v1::ClientSessionState> Decode(const std::string& bytes,
                                                             const std::string& where);

 private:
  SessionFile(std::string path, log::FileSystem* fs) : path_(std::move(path)), fs_(fs) {}

  std::string path_;
  log::FileSystem* fs_;
  bool existed_ = false;
  qmgr::v1::ClientSessionState state_;
};

}  // namespace qmgr::client

#endif  // QMGR_CLIENT_SESSION_FILE_H_
