// `qmgrctl display queues|sessions`, `queue define|alter|delete|stop|start`,
// `shutdown` and `assign`: the online display and operation verbs over
// qmgrd's Admin service, the /DISPLAY, /STOP, /START, /CHECKPOINT FREEZE and
// /ASSIGN of IMS. Each returns the process exit code (log_commands.h), having
// written its report to `out` and any error to `err`. With `json`, `out`
// gets one proto3 JSON object (field names as in the .proto, zero values
// included so that scripts always find every key).
#ifndef QMGR_TOOLS_ADMIN_COMMANDS_H_
#define QMGR_TOOLS_ADMIN_COMMANDS_H_

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "qmgr/v1/qmgr.pb.h"

namespace qmgr::tools {

// The attributes given on the command line of `queue define|alter`; those
// not given keep the server's default (define) or their current value
// (alter).
struct QueueAttributeFlags {
  std::optional<std::string> message_class;   // a MessageClass name, any case
  std::optional<uint64_t> max_depth;          // 0: unlimited
  std::optional<uint64_t> max_message_bytes;  // 0: qmgrd's --max-message-bytes
  std::optional<uint32_t> backout_threshold;  // 0: never moved to the backout queue
  std::optional<std::string> backout_queue;
  std::optional<std::string> output_of_session;
};

// A byte count for people: 512B, 3.5KiB, 64.0MiB.
std::string Bytes(uint64_t n);

// A message class by name (RECOVERABLE, fastpath, ...); not
// MESSAGE_CLASS_UNSPECIFIED, which is no class a queue can default to.
absl::StatusOr<v1::MessageClass> MessageClassByName(const std::string& name);

// `attributes` with the flags given applied. Fails (a bad argument) on an
// unknown class name.
absl::StatusOr<v1::QueueAttributes> ApplyQueueFlags(const QueueAttributeFlags& flags,
                                                    v1::QueueAttributes attributes);

// `names` empty: every queue (session).
int DisplayQueues(client::Client& client, const std::vector<std::string>& names, bool json,
                  std::ostream& out, std::ostream& err);
int DisplaySessions(client::Client& client, const std::vector<std::string>& names, bool json,
                    std::ostream& out, std::ostream& err);
int DisplayUnits(client::Client& client, bool json, std::ostream& out, std::ostream& err);

int QueueDefine(client::Client& client, const std::string& name, const QueueAttributeFlags& flags,
                bool json, std::ostream& out, std::ostream& err);
// Reads the queue's attributes and writes them back with the flags given
// applied. Not atomic: an alter by someone else in between is overwritten.
int QueueAlter(client::Client& client, const std::string& name, const QueueAttributeFlags& flags,
               bool json, std::ostream& out, std::ostream& err);
int QueueDelete(client::Client& client, const std::string& name, bool purge, bool json,
                std::ostream& out, std::ostream& err);

// `queue stop` (inhibit true) and `queue start` (false): sets or clears
// put- and/or get-inhibited, read-modify-write like QueueAlter.
struct InhibitChange {
  bool inhibit = true;
  bool put = true;
  bool get = true;
};
int QueueInhibit(client::Client& client, const std::string& name, const InhibitChange& change,
                 bool json, std::ostream& out, std::ostream& err);

int Shutdown(client::Client& client, bool immediate, bool json, std::ostream& out,
             std::ostream& err);
int Assign(client::Client& client, const std::string& from_session, const std::string& to_session,
           bool force, bool json, std::ostream& out, std::ostream& err);

}  // namespace qmgr::tools

#endif  // QMGR_TOOLS_ADMIN_COMMANDS_H_
