#include "tools/admin_commands.h"

#include <algorithm>
#include <iterator>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/json_util.h"
#include "tools/log_commands.h"

namespace qmgr::tools {
namespace {

void PrintJson(const google::protobuf::Message& message, std::ostream& out) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  // Printing a message we built cannot fail.
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  out << json << "\n";
}

int Refused(const std::string& verb, const grpc::Status& status, std::ostream& err) {
  err << "qmgrctl: " << verb << " refused: " << status.error_message() << "\n";
  return kExitRefused;
}

std::string YesNo(bool b) { return b ? "yes" : "no"; }
// 0 means "no limit" or "the default" for the attributes shown with it.
std::string OrDash(uint64_t n) { return n == 0 ? "-" : absl::StrCat(n); }
std::string OrDash(const std::string& s) { return s.empty() ? "-" : s; }

std::string Describe(const v1::QueueAttributes& a) {
  const std::string text = a.ShortDebugString();
  return text.empty() ? "default attributes" : text;
}

std::string ClassName(v1::MessageClass c) {
  return c == v1::MESSAGE_CLASS_UNSPECIFIED ? "-" : v1::MessageClass_Name(c);
}

std::string Inhibit(const v1::QueueAttributes& a) {
  if (a.put_inhibited() && a.get_inhibited()) return "put,get";
  if (a.put_inhibited()) return "put";
  if (a.get_inhibited()) return "get";
  return "-";
}

std::string Backout(const v1::QueueAttributes& a) {
  if (a.backout_queue().empty() && a.backout_threshold() == 0) return "-";
  return absl::StrCat(OrDash(a.backout_queue()), "/", a.backout_threshold());
}

// A duration the way an operator reads it: 850ms, 12.5s, 7m, 3h, 2d.
std::string Age(uint64_t ms) {
  if (ms < 1000) return absl::StrCat(ms, "ms");
  if (ms < 60'000) return absl::StrFormat("%.1fs", ms / 1000.0);
  if (ms < 3'600'000) return absl::StrCat(ms / 60'000, "m");
  if (ms < 86'400'000) return absl::StrCat(ms / 3'600'000, "h");
  return absl::StrCat(ms / 86'400'000, "d");
}

std::string Rate(double per_second) {
  return per_second == 0 ? "0" : absl::StrFormat(per_second < 10 ? "%.1f" : "%.0f", per_second);
}

// RECOVERABLE:3,FASTPATH:1; "-" when the queue is empty.
std::string Classes(const v1::QueueInfo& q) {
  std::string out;
  for (const v1::ClassCount& c : q.classes()) {
    absl::StrAppend(&out, out.empty() ? "" : ",", ClassName(c.class_()), ":", c.messages());
  }
  return out.empty() ? "-" : out;
}

// Widest of `header` and each name, so that long names keep the columns aligned.
template <typename Rows, typename Name>
int Width(const char* header, const Rows& rows, Name name) {
  size_t width = std::string(header).size();
  for (const auto& row : rows) width = std::max(width, name(row).size());
  return static_cast<int>(width);
}

// The queue's current QueueInfo (a refusal already reported when absent).
std::optional<v1::QueueInfo> ReadQueue(client::Client& client, const std::string& verb,
                                       const std::string& name, std::ostream& err) {
  v1::DisplayQueuesRequest request;
  request.add_queues(name);
  v1::DisplayQueuesResponse response;
  const grpc::Status status =
      client.admin()->DisplayQueues(client.NewContext().get(), request, &response);
  if (!status.ok()) {
    Refused(verb, status, err);
    return std::nullopt;
  }
  if (response.queues_size() != 1) {
    err << "qmgrctl: " << verb << ": qmgrd answered " << response.queues_size() << " queues for '"
        << name << "'\n";
    return std::nullopt;
  }
  return response.queues(0);
}

// Sends `request` (the queue's whole set of attributes) to AlterQueue.
int WriteQueue(client::Client& client, const std::string& verb,
               const v1::AlterQueueRequest& request, std::ostream& err) {
  v1::AlterQueueResponse response;
  const grpc::Status status =
      client.admin()->AlterQueue(client.NewContext().get(), request, &response);
  return status.ok() ? kExitOk : Refused(verb, status, err);
}

}  // namespace

std::string Bytes(uint64_t n) {
  if (n < 1024) return absl::StrCat(n, "B");
  constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = n / 1024.0;
  size_t unit = 0;
  while (v >= 1024 && unit + 1 < std::size(kUnits)) {
    v /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.1f%s", v, kUnits[unit]);
}

absl::StatusOr<v1::MessageClass> MessageClassByName(const std::string& name) {
  v1::MessageClass c;
  if (!v1::MessageClass_Parse(absl::AsciiStrToUpper(name), &c) ||
      c == v1::MESSAGE_CLASS_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown message class '", name,
                     "' (RECOVERABLE, RESPONSE, CONVERSATIONAL, FASTPATH, IRRECOVERABLE)"));
  }
  return c;
}

absl::StatusOr<v1::QueueAttributes> ApplyQueueFlags(const QueueAttributeFlags& flags,
                                                    v1::QueueAttributes attributes) {
  if (flags.message_class.has_value()) {
    absl::StatusOr<v1::MessageClass> c = MessageClassByName(*flags.message_class);
    if (!c.ok()) return c.status();
    attributes.set_default_class(*c);
  }
  if (flags.max_depth.has_value()) attributes.set_max_depth(*flags.max_depth);
  if (flags.max_message_bytes.has_value()) {
    attributes.set_max_message_bytes(*flags.max_message_bytes);
  }
  if (flags.backout_threshold.has_value()) {
    attributes.set_backout_threshold(*flags.backout_threshold);
  }
  if (flags.backout_queue.has_value()) attributes.set_backout_queue(*flags.backout_queue);
  if (flags.output_of_session.has_value()) {
    attributes.set_output_of_session(*flags.output_of_session);
  }
  return attributes;
}

int DisplayQueues(client::Client& client, const std::vector<std::string>& names, bool json,
                  std::ostream& out, std::ostream& err) {
  v1::DisplayQueuesRequest request;
  for (const std::string& name : names) request.add_queues(name);
  v1::DisplayQueuesResponse response;
  const grpc::Status status =
      client.admin()->DisplayQueues(client.NewContext().get(), request, &response);
  if (!status.ok()) return Refused("display queues", status, err);
  if (json) {
    PrintJson(response, out);
    return kExitOk;
  }
  const int name_width =
      Width("QUEUE", response.queues(), [](const v1::QueueInfo& q) { return q.name(); });
  const int output_width = Width("OUTPUT-OF", response.queues(), [](const v1::QueueInfo& q) {
    return OrDash(q.attributes().output_of_session());
  });
  out << absl::StrFormat(
      "%-*s %8s %6s %8s %7s %7s %7s %7s %6s  %-14s %9s %9s  %-7s  %-20s %-*s  %s\n", name_width,
      "QUEUE", "DEPTH", "TAKEN", "IN-DOUBT", "OLDEST", "ENQ/S", "GET/S", "EXPIRED", "BO-IN",
      "CLASS", "MAX-DEPTH", "MAX-BYTES", "INHIBIT", "BACKOUT/THRESHOLD", output_width, "OUTPUT-OF",
      "BY-CLASS");
  for (const v1::QueueInfo& q : response.queues()) {
    const v1::QueueAttributes& a = q.attributes();
    out << absl::StrFormat(
        "%-*s %8d %6d %8d %7s %7s %7s %7d %6d  %-14s %9s %9s  %-7s  %-20s %-*s  %s\n", name_width,
        q.name(), q.depth(), q.taken(), q.in_doubt(),
        q.depth() == 0 ? "-" : Age(q.oldest_message_age_ms()), Rate(q.enqueue_rate()),
        Rate(q.get_rate()), q.expired_discarded(), q.backout_moved_in(),
        ClassName(a.default_class()), OrDash(a.max_depth()), OrDash(a.max_message_bytes()),
        Inhibit(a), Backout(a), output_width, OrDash(a.output_of_session()), Classes(q));
  }
  const v1::MemoryInfo& m = response.memory();
  out << response.queues_size() << " queue(s); memory " << Bytes(m.payload_bytes_in_memory())
      << " of " << Bytes(m.budget_bytes()) << " budget, " << m.spilled_messages()
      << " message(s) spilled (" << Bytes(m.spilled_bytes()) << "); " << response.open_units()
      << " open unit(s)\n";
  return kExitOk;
}

int DisplaySessions(client::Client& client, const std::vector<std::string>& names, bool json,
                    std::ostream& out, std::ostream& err) {
  v1::DisplaySessionsRequest request;
  for (const std::string& name : names) request.add_sessions(name);
  v1::DisplaySessionsResponse response;
  const grpc::Status status =
      client.admin()->DisplaySessions(client.NewContext().get(), request, &response);
  if (!status.ok()) return Refused("display sessions", status, err);
  if (json) {
    PrintJson(response, out);
    return kExitOk;
  }
  if (response.sessions().empty()) {
    out << "no sessions\n";
    return kExitOk;
  }
  const int name_width =
      Width("SESSION", response.sessions(), [](const v1::SessionInfo& s) { return s.name(); });
  const int queue_width = Width("OUTPUT-QUEUE", response.sessions(),
                                [](const v1::SessionInfo& s) { return OrDash(s.output_queue()); });
  // How long ago, as the server's clock and ours agree; "-": never.
  const int64_t now_us = absl::ToUnixMicros(absl::Now());
  auto ago = [now_us](int64_t time_us) {
    return time_us == 0 ? std::string("-") : Age(std::max<int64_t>(0, now_us - time_us) / 1000);
  };
  out << absl::StrFormat("%-*s %8s %8s %10s %5s %6s %5s %7s %7s %8s %8s  %-*s %s\n", name_width,
                         "SESSION", "IN-SEQ", "OUT-SEQ", "OUT-MSG", "ACKED", "RESYNC", "BOUND",
                         "TRAFFIC", "PENDING", "OPENED", "CLOSED", queue_width, "OUTPUT-QUEUE",
                         "DEPTH");
  for (const v1::SessionInfo& s : response.sessions()) {
    out << absl::StrFormat("%-*s %8d %8d %10s %5s %6s %5s %7s %7d %8s %8s  %-*s %d\n", name_width,
                           s.name(), s.in_seq(), s.out_seq(), OrDash(s.out_message_id()),
                           YesNo(s.output_acknowledged()), YesNo(s.resync_required()),
                           YesNo(s.bound()), YesNo(s.data_traffic()), s.pending_input(),
                           ago(s.opened_time_us()), ago(s.closed_time_us()), queue_width,
                           OrDash(s.output_queue()), s.output_depth());
  }
  out << response.sessions_size() << " session(s)\n";
  return kExitOk;
}

int DisplayUnits(client::Client& client, bool json, std::ostream& out, std::ostream& err) {
  v1::DisplayUnitsResponse response;
  const grpc::Status status =
      client.admin()->DisplayUnits(client.NewContext().get(), v1::DisplayUnitsRequest(), &response);
  if (!status.ok()) return Refused("display uow", status, err);
  if (json) {
    PrintJson(response, out);
    return kExitOk;
  }
  if (response.units().empty()) {
    out << "no open units of work\n";
    return kExitOk;
  }
  const int owner_width =
      Width("OWNER", response.units(), [](const v1::UnitInfo& u) { return OrDash(u.owner()); });
  out << absl::StrFormat("%10s  %-*s %10s %10s %8s %8s %12s %10s %s\n", "UOW", owner_width, "OWNER",
                         "AGE-MS", "IDLE-MS", "MESSAGES", "IN-DOUBT", "FIRST-LSN", "LOG-SINCE",
                         "XID");
  for (const v1::UnitInfo& u : response.units()) {
    out << absl::StrFormat("%10d  %-*s %10d %10d %8d %8s %12s %10s %s\n", u.uow(), owner_width,
                           OrDash(u.owner()), u.age_ms(), u.idle_ms(), u.messages(),
                           YesNo(u.in_doubt()), OrDash(u.first_lsn()),
                           u.first_lsn() == 0 ? "-" : Bytes(u.log_bytes_since_first()),
                           u.xid().empty() ? "-" : absl::BytesToHexString(u.xid()));
  }
  out << response.units_size() << " open unit(s)\n";
  return kExitOk;
}

int QueueDefine(client::Client& client, const std::string& name, const QueueAttributeFlags& flags,
                bool json, std::ostream& out, std::ostream& err) {
  absl::StatusOr<v1::QueueAttributes> attributes = ApplyQueueFlags(flags, {});
  if (!attributes.ok()) {
    err << "qmgrctl: " << attributes.status().message() << "\n";
    return kExitUsage;
  }
  v1::DefineQueueRequest request;
  request.set_queue(name);
  *request.mutable_attributes() = *std::move(attributes);
  v1::DefineQueueResponse response;
  const grpc::Status status =
      client.admin()->DefineQueue(client.NewContext().get(), request, &response);
  if (!status.ok()) return Refused("queue define", status, err);
  if (json) {
    PrintJson(request, out);
  } else {
    out << "queue " << name << " defined: " << Describe(request.attributes()) << "\n";
  }
  return kExitOk;
}

int QueueAlter(client::Client& client, const std::string& name, const QueueAttributeFlags& flags,
               bool json, std::ostream& out, std::ostream& err) {
  std::optional<v1::QueueInfo> current = ReadQueue(client, "queue alter", name, err);
  if (!current.has_value()) return kExitRefused;
  absl::StatusOr<v1::QueueAttributes> attributes = ApplyQueueFlags(flags, current->attributes());
  if (!attributes.ok()) {
    err << "qmgrctl: " << attributes.status().message() << "\n";
    return kExitUsage;
  }
  v1::AlterQueueRequest request;
  request.set_queue(name);
  *request.mutable_attributes() = *std::move(attributes);
  if (const int code = WriteQueue(client, "queue alter", request, err); code != kExitOk) {
    return code;
  }
  if (json) {
    PrintJson(request, out);
  } else {
    out << "queue " << name << " altered: " << Describe(request.attributes()) << "\n";
  }
  return kExitOk;
}

int QueueDelete(client::Client& client, const std::string& name, bool purge, bool json,
                std::ostream& out, std::ostream& err) {
  v1::DeleteQueueRequest request;
  request.set_queue(name);
  request.set_purge(purge);
  v1::DeleteQueueResponse response;
  const grpc::Status status =
      client.admin()->DeleteQueue(client.NewContext().get(), request, &response);
  if (!status.ok()) return Refused("queue delete", status, err);
  if (json) {
    PrintJson(request, out);
  } else {
    out << "queue " << name << " deleted" << (purge ? " with its messages" : "") << "\n";
  }
  return kExitOk;
}

int QueueInhibit(client::Client& client, const std::string& name, const InhibitChange& change,
                 bool json, std::ostream& out, std::ostream& err) {
  const std::string verb = change.inhibit ? "queue stop" : "queue start";
  std::optional<v1::QueueInfo> current = ReadQueue(client, verb, name, err);
  if (!current.has_value()) return kExitRefused;
  v1::AlterQueueRequest request;
  request.set_queue(name);
  v1::QueueAttributes& attributes = *request.mutable_attributes();
  attributes = current->attributes();
  if (change.put) attributes.set_put_inhibited(change.inhibit);
  if (change.get) attributes.set_get_inhibited(change.inhibit);
  if (const int code = WriteQueue(client, verb, request, err); code != kExitOk) return code;
  if (json) {
    PrintJson(request, out);
  } else {
    out << "queue " << name << ": put " << (attributes.put_inhibited() ? "inhibited" : "allowed")
        << ", get " << (attributes.get_inhibited() ? "inhibited" : "allowed") << "\n";
  }
  return kExitOk;
}

int Shutdown(client::Client& client, bool immediate, bool json, std::ostream& out,
             std::ostream& err) {
  v1::ShutdownRequest request;
  request.set_mode(immediate ? v1::IMMEDIATE : v1::NORMAL);
  v1::ShutdownResponse response;
  const grpc::Status status =
      client.admin()->Shutdown(client.NewContext().get(), request, &response);
  if (!status.ok()) return Refused("shutdown", status, err);
  if (json) {
    PrintJson(request, out);
  } else {
    out << "qmgrd is shutting down (" << v1::ShutdownMode_Name(request.mode()) << ")\n";
  }
  return kExitOk;
}

int Assign(client::Client& client, const std::string& from_session, const std::string& to_session,
           bool force, bool json, std::ostream& out, std::ostream& err) {
  v1::AssignRequest request;
  request.set_from_session(from_session);
  request.set_to_session(to_session);
  request.set_force(force);
  v1::AssignResponse response;
  const grpc::Status status = client.admin()->Assign(client.NewContext().get(), request, &response);
  if (!status.ok()) return Refused("assign", status, err);
  if (json) {
    PrintJson(response, out);
    return kExitOk;
  }
  out << response.moved() << " output message(s) moved from session " << from_session
      << " to session " << to_session << "\n";
  if (response.possible_duplicate_message_id() != 0) {
    out << "message " << response.possible_duplicate_message_id() << " was sent to " << from_session
        << " and not acknowledged: moved too, marked possibly duplicate\n";
  }
  return kExitOk;
}

}  // namespace qmgr::tools
