#include "client/session_file.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "log/format.h"

namespace qmgr::client {
namespace {

std::string DirOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

uint64_t ChecksumOf(absl::string_view version_and_length, absl::string_view body) {
  return log::Checksum(0, absl::StrCat(version_and_length, body));
}

absl::StatusOr<std::string> ReadWhole(log::FileSystem* fs, const std::string& path) {
  absl::StatusOr<std::unique_ptr<log::File>> file = fs->Open(path, log::OpenMode::kRead);
  if (!file.ok()) return file.status();
  absl::StatusOr<uint64_t> size = (*file)->Size();
  if (!size.ok()) return size.status();
  // Anything longer than the largest valid file is damage; reading one byte
  // more than that shows it without reading all of it.
  const uint64_t cap = kSessionFileHeaderBytes + uint64_t{kSessionBodyBytesMax} + 1;
  std::string bytes(std::min(*size, cap), '\0');
  absl::StatusOr<size_t> read = (*file)->Read(0, bytes.size(), bytes.data());
  if (!read.ok()) return read.status();
  bytes.resize(*read);
  return bytes;
}

absl::Status Damaged(const std::string& where, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(
      "session file ", where, " is damaged (", what,
      "): the session's numbers are lost; open it cold to start again, knowing that inputs "
      "in flight may be lost and output may be repeated"));
}

}  // namespace

absl::StatusOr<SessionFile> SessionFile::Open(std::string path, const std::string& name,
                                              log::FileSystem* fs) {
  SessionFile file(std::move(path), fs);
  absl::StatusOr<bool> exists = fs->Exists(file.path_);
  if (!exists.ok()) return exists.status();
  if (!*exists) {
    file.state_.set_session(name);
    return file;
  }
  absl::StatusOr<std::string> bytes = ReadWhole(fs, file.path_);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<qmgr::v1::ClientSessionState> state = Decode(*bytes, file.path_);
  if (!state.ok()) return state.status();
  if (state->session() != name) {
    return absl::DataLossError(absl::StrCat("session file ", file.path_, " belongs to session '",
                                            state->session(), "', not '", name, "'"));
  }
  file.existed_ = true;
  file.state_ = *std::move(state);
  return file;
}

absl::StatusOr<std::string> SessionFile::Encode(const qmgr::v1::ClientSessionState& state) {
  const size_t body_bytes = state.ByteSizeLong();
  if (body_bytes > kSessionBodyBytesMax) {
    return absl::ResourceExhaustedError(
        absl::StrCat("session '", state.session(), "': its state is ", body_bytes,
                     " bytes, more than the session file's limit of ", kSessionBodyBytesMax,
                     " (too many inputs awaiting their sync point)"));
  }
  std::string bytes(kSessionFileHeaderBytes, '\0');
  std::memcpy(bytes.data(), kSessionFileMagic, sizeof(kSessionFileMagic));
  log::PutFixed32(bytes.data() + kSessionFileVersionOffset, kSessionFileVersion);
  log::PutFixed32(bytes.data() + kSessionFileLengthOffset, static_cast<uint32_t>(body_bytes));
  if (!state.AppendToString(&bytes)) {
    return absl::InternalError(
        absl::StrCat("session '", state.session(), "': its state does not serialize"));
  }
  const absl::string_view header(bytes.data(), kSessionFileHeaderBytes);
  log::PutFixed64(bytes.data() + kSessionFileChecksumOffset,
                  ChecksumOf(header.substr(kSessionFileVersionOffset, 8),
                             absl::string_view(bytes).substr(kSessionFileHeaderBytes)));
  return bytes;
}

absl::StatusOr<qmgr::v1::ClientSessionState> SessionFile::Decode(const std::string& bytes,
                                                                 const std::string& where) {
  if (bytes.size() < kSessionFileHeaderBytes) {
    return Damaged(where, absl::StrCat(bytes.size(), " bytes, shorter than its header"));
  }
  if (std::memcmp(bytes.data(), kSessionFileMagic, sizeof(kSessionFileMagic)) != 0) {
    return Damaged(where, "not a session file: bad magic");
  }
  const uint32_t version = log::GetFixed32(bytes.data() + kSessionFileVersionOffset);
  if (version != kSessionFileVersion) {
    return Damaged(where,
                   absl::StrCat("format version ", version, ", expected ", kSessionFileVersion));
  }
  const uint32_t length = log::GetFixed32(bytes.data() + kSessionFileLengthOffset);
  if (length > kSessionBodyBytesMax || bytes.size() != kSessionFileHeaderBytes + length) {
    return Damaged(
        where, absl::StrCat("body length ", length, " but ", bytes.size() - kSessionFileHeaderBytes,
                            " bytes follow the header"));
  }
  const absl::string_view all(bytes);
  const absl::string_view body = all.substr(kSessionFileHeaderBytes);
  if (log::GetFixed64(bytes.data() + kSessionFileChecksumOffset) !=
      ChecksumOf(all.substr(kSessionFileVersionOffset, 8), body)) {
    return Damaged(where, "checksum mismatch");
  }
  qmgr::v1::ClientSessionState state;
  if (!state.ParseFromArray(body.data(), static_cast<int>(body.size()))) {
    return Damaged(where, "its body does not parse");
  }
  return state;
}

absl::Status SessionFile::Save(const qmgr::v1::ClientSessionState& state) {
  assert(state.session() == state_.session());
  absl::StatusOr<std::string> bytes = Encode(state);
  if (!bytes.ok()) return bytes.status();
  const std::string temp = absl::StrCat(path_, ".tmp");
  {
    absl::StatusOr<std::unique_ptr<log::File>> file =
        fs_->Open(temp, log::OpenMode::kCreateTruncate);
    if (!file.ok()) return file.status();
    if (absl::Status s = (*file)->Write(0, *bytes); !s.ok()) return s;
    if (absl::Status s = (*file)->Sync(); !s.ok()) return s;
  }
  if (absl::Status s = fs_->Rename(temp, path_); !s.ok()) return s;
  if (absl::Status s = fs_->SyncDir(DirOf(path_)); !s.ok()) return s;
  state_ = state;
  existed_ = true;
  return absl::OkStatus();
}

}  // namespace qmgr::client
