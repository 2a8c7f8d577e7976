#include "tools/log_commands.h"

#include <csignal>
#include <map>
#include <memory>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"
#include "log/reader.h"
#include "qmgr/v1/log_tool.pb.h"

namespace qmgr::tools {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

// Bytes fields longer than this are cut in printed records (unless --full).
constexpr size_t kBytesShownMax = 32;

int ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kFailedPrecondition:  // a foreign segment in the directory
      return kExitCorrupt;
    default:
      return kExitUnreadable;
  }
}

int Fail(const absl::Status& status, std::ostream& err) {
  err << "qmgrctl: " << status.message() << "\n";
  return ExitCodeFor(status);
}

absl::StatusOr<std::unique_ptr<log::LogReader>> OpenReader(const std::string& log_dir,
                                                           log::Lsn from_lsn) {
  absl::StatusOr<std::unique_ptr<log::LogReader>> reader =
      log::LogReader::Open(log::PosixFileSystem(), log_dir, from_lsn);
  if (!reader.ok()) return reader;
  if ((*reader)->segments().empty()) {
    return absl::NotFoundError(absl::StrCat("no log segments in ", log_dir));
  }
  return reader;
}

void CutBytesFields(Message* message) {
  const Reflection* reflection = message->GetReflection();
  std::vector<const FieldDescriptor*> fields;
  reflection->ListFields(*message, &fields);
  for (const FieldDescriptor* field : fields) {
    if (field->type() == FieldDescriptor::TYPE_BYTES) {
      if (field->is_repeated()) {
        for (int i = 0; i < reflection->FieldSize(*message, field); ++i) {
          std::string value = reflection->GetRepeatedString(*message, field, i);
          if (value.size() > kBytesShownMax) {
            reflection->SetRepeatedString(message, field, i, value.substr(0, kBytesShownMax));
          }
        }
      } else {
        std::string value = reflection->GetString(*message, field);
        if (value.size() > kBytesShownMax) {
          reflection->SetString(message, field, value.substr(0, kBytesShownMax));
        }
      }
    } else if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      if (field->is_repeated()) {
        for (int i = 0; i < reflection->FieldSize(*message, field); ++i) {
          CutBytesFields(reflection->MutableRepeatedMessage(message, field, i));
        }
      } else {
        CutBytesFields(reflection->MutableMessage(message, field));
      }
    }
  }
}

std::string Json(const Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

// The record's body on one line, long strings and bytes cut.
std::string OneLine(const qmgr::v1::LogRecord& record, bool full) {
  const Reflection* reflection = record.GetReflection();
  const FieldDescriptor* body = reflection->GetOneofFieldDescriptor(
      record, qmgr::v1::LogRecord::descriptor()->FindOneofByName("body"));
  if (body == nullptr) return "";
  google::protobuf::TextFormat::Printer printer;
  printer.SetSingleLineMode(true);
  if (!full) printer.SetTruncateStringFieldLongerThan(kBytesShownMax);
  std::string text;
  printer.PrintToString(reflection->GetMessage(record, body), &text);
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

// Decodes an entry; a payload that is not a LogRecord of its frame's type is
// damage the checksums cannot see (a bug, or a newer format).
absl::Status Decode(const log::LogEntry& entry, qmgr::v1::LogRecord* record) {
  if (!record->ParseFromString(entry.payload) || record->body_case() != entry.type) {
    return absl::DataLossError(absl::StrCat("record at LSN ", entry.lsn, " of type ",
                                            RecordTypeName(entry.type),
                                            ": payload is not a LogRecord of that type"));
  }
  return absl::OkStatus();
}

// What a record mentions, by field name wherever it sits in the record
// (Message.queue inside an ENQUEUE, PrepareRecord.uow_id, ...), so that a new
// record type is filtered right without changes here.
struct Mentions {
  std::vector<std::string> queues;
  std::vector<uint64_t> units;
  std::vector<std::string> sessions;
  std::vector<uint64_t> messages;
};

void Collect(const Message& message, Mentions* mentions) {
  static const absl::flat_hash_set<std::string> kQueueFields = {"queue", "from_queue", "to_queue",
                                                                "backout_queue", "reply_to"};
  static const absl::flat_hash_set<std::string> kSessionFields = {
      "session", "origin_session", "from_session", "to_session", "output_of_session"};
  static const absl::flat_hash_set<std::string> kMessageFields = {
      "message_id", "message_ids", "consumed_message_ids", "out_message_id",
      "possible_duplicate_message_id"};
  const Reflection* reflection = message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const FieldDescriptor* field : fields) {
    const std::string& name = field->name();
    const int n = field->is_repeated() ? reflection->FieldSize(message, field) : 1;
    for (int i = 0; i < n; ++i) {
      switch (field->cpp_type()) {
        case FieldDescriptor::CPPTYPE_MESSAGE:
          Collect(field->is_repeated() ? reflection->GetRepeatedMessage(message, field, i)
                                       : reflection->GetMessage(message, field),
                  mentions);
          break;
        case FieldDescriptor::CPPTYPE_STRING: {
          if (field->type() == FieldDescriptor::TYPE_BYTES) break;
          std::string value = field->is_repeated()
                                  ? reflection->GetRepeatedString(message, field, i)
                                  : reflection->GetString(message, field);
          if (kQueueFields.contains(name)) mentions->queues.push_back(value);
          if (kSessionFields.contains(name)) mentions->sessions.push_back(std::move(value));
          break;
        }
        case FieldDescriptor::CPPTYPE_UINT64: {
          const uint64_t value = field->is_repeated()
                                     ? reflection->GetRepeatedUInt64(message, field, i)
                                     : reflection->GetUInt64(message, field);
          if (name == "uow_id") mentions->units.push_back(value);
          // A Message's own id.
          const bool message_id =
              kMessageFields.contains(name) ||
              (name == "id" && message.GetDescriptor() == qmgr::v1::Message::descriptor());
          if (message_id) mentions->messages.push_back(value);
          break;
        }
        default:
          break;
      }
    }
  }
}

template <typename T>
bool AnyOf(const std::vector<T>& wanted, const std::vector<T>& mentioned) {
  if (wanted.empty()) return true;
  for (const T& w : wanted) {
    if (std::find(mentioned.begin(), mentioned.end(), w) != mentioned.end()) return true;
  }
  return false;
}

bool Matches(const LogPrintOptions& options, const qmgr::v1::LogRecord& record) {
  if (options.queues.empty() && options.units.empty() && options.sessions.empty() &&
      options.messages.empty()) {
    return true;
  }
  Mentions mentions;
  Collect(record, &mentions);
  return AnyOf(options.queues, mentions.queues) && AnyOf(options.units, mentions.units) &&
         AnyOf(options.sessions, mentions.sessions) && AnyOf(options.messages, mentions.messages);
}

// Set by SIGINT or SIGTERM: `log print --follow` stops.
volatile std::sig_atomic_t stop_following = 0;
extern "C" void StopFollowing(int) { stop_following = 1; }

qmgr::v1::TailView TailViewOf(const log::LogTail& tail) {
  qmgr::v1::TailView view;
  view.set_kind(std::string(log::TailKindName(tail.kind)));
  view.set_end_lsn(tail.end_lsn);
  if (tail.kind != log::TailKind::kClean) {
    view.set_damage_lsn(tail.damage_lsn);
    view.set_damage_segment(tail.damage_segment);
    view.set_damage_file_offset(tail.damage_file_offset);
    view.set_damage_reason(tail.damage_reason);
  }
  if (tail.kind == log::TailKind::kCorrupt) {
    view.set_claimed_by_lsn(tail.claimed_by_lsn);
    view.set_lost_batches(tail.lost_batches);
    view.set_lost_records(tail.lost_records);
  }
  return view;
}

}  // namespace

std::string RecordTypeName(uint8_t type) {
  const FieldDescriptor* field = qmgr::v1::LogRecord::descriptor()->FindFieldByNumber(type);
  if (field == nullptr || field->containing_oneof() == nullptr) return absl::StrCat("TYPE_", type);
  return absl::AsciiStrToUpper(field->name());
}

uint8_t RecordTypeByName(const std::string& name) {
  uint32_t number = 0;
  if (absl::SimpleAtoi(name, &number)) {
    return number > 0 && number < 256 &&
                   RecordTypeName(static_cast<uint8_t>(number)).find("TYPE_") != 0
               ? static_cast<uint8_t>(number)
               : 0;
  }
  const FieldDescriptor* field =
      qmgr::v1::LogRecord::descriptor()->FindFieldByName(absl::AsciiStrToLower(name));
  if (field == nullptr || field->containing_oneof() == nullptr) return 0;
  return static_cast<uint8_t>(field->number());
}

int LogPrint(const std::string& log_dir, const LogPrintOptions& options, std::ostream& out,
             std::ostream& err) {
  absl::StatusOr<std::unique_ptr<log::LogReader>> reader = OpenReader(log_dir, options.from_lsn);
  if (!reader.ok()) return Fail(reader.status(), err);
  if (options.follow) {
    (*reader)->Follow();
    stop_following = 0;
    std::signal(SIGINT, StopFollowing);
    std::signal(SIGTERM, StopFollowing);
  }
  if (!options.json)
    out << absl::StrFormat("%-12s %-14s %8s  %s\n", "LSN", "TYPE", "SIZE", "RECORD");
  log::LogEntry entry;
  // Following: a segment being listed while it is created or retired fails
  // one look; this many in a row is a real failure.
  constexpr int kFailedLooksMax = 25;
  int failed_looks = 0;
  while (true) {
    absl::StatusOr<bool> more = (*reader)->Next(&entry);
    if (!more.ok()) return Fail(more.status(), err);
    if (*more && entry.lsn > options.to_lsn) break;
    if (!*more) {
      if (!options.follow) break;
      out.flush();
      if (stop_following) break;
      absl::SleepFor(options.follow_poll);
      if (stop_following) break;
      if (absl::Status s = (*reader)->Refresh(log::PosixFileSystem(), log_dir); !s.ok()) {
        if (++failed_looks == kFailedLooksMax) return Fail(s, err);
      } else {
        failed_looks = 0;
      }
      continue;
    }
    if (!options.types.empty() &&
        std::find(options.types.begin(), options.types.end(), entry.type) == options.types.end()) {
      continue;
    }
    qmgr::v1::LogEntryView view;
    view.set_lsn(entry.lsn);
    view.set_type(RecordTypeName(entry.type));
    view.set_size(static_cast<uint32_t>(log::kRecordHeaderBytes + entry.payload.size()));
    if (absl::Status s = Decode(entry, view.mutable_record()); !s.ok()) return Fail(s, err);
    if (!Matches(options, view.record())) continue;
    if (options.json) {
      if (!options.full) CutBytesFields(view.mutable_record());
      out << Json(view) << "\n";
    } else {
      out << absl::StrFormat("%-12u %-14s %8u  %s\n", view.lsn(), view.type(), view.size(),
                             OneLine(view.record(), options.full));
    }
  }
  if ((*reader)->tail().kind == log::TailKind::kTorn) {
    err << "note: " << (*reader)->tail().ToString() << "\n";
  }
  return kExitOk;
}

int LogStats(const std::string& log_dir, bool json, std::ostream& out, std::ostream& err) {
  absl::StatusOr<std::unique_ptr<log::LogReader>> reader = OpenReader(log_dir, 0);
  if (!reader.ok()) return Fail(reader.status(), err);
  qmgr::v1::LogStatsReport report;
  const std::vector<log::SegmentFile>& segments = (*reader)->segments();
  report.set_log_id(segments.front().header.log_id.ToString());
  for (const log::SegmentFile& segment : segments) {
    qmgr::v1::SegmentView* view = report.add_segments();
    view->set_file(segment.path.substr(segment.path.rfind('/') + 1));
    view->set_first_lsn(segment.header.first_lsn);
    view->set_end_lsn(segment.header.end_lsn());
    view->set_segment_bytes(segment.header.segment_bytes);
  }
  report.set_first_lsn(segments.front().header.first_lsn);
  std::map<uint8_t, qmgr::v1::TypeStats> types;
  log::LogEntry entry;
  while (true) {
    absl::StatusOr<bool> more = (*reader)->Next(&entry);
    if (!more.ok()) return Fail(more.status(), err);
    if (!*more) break;
    const uint64_t bytes = log::kRecordHeaderBytes + entry.payload.size();
    qmgr::v1::TypeStats& stats = types[entry.type];
    stats.set_type(RecordTypeName(entry.type));
    stats.set_records(stats.records() + 1);
    stats.set_bytes(stats.bytes() + bytes);
    report.set_records(report.records() + 1);
    report.set_record_bytes(report.record_bytes() + bytes);
    report.set_last_record_lsn(entry.lsn);
  }
  for (auto& [type, stats] : types) *report.add_types() = stats;
  report.set_batches((*reader)->batches_read());
  report.set_end_lsn((*reader)->tail().end_lsn);
  *report.mutable_tail() = TailViewOf((*reader)->tail());
  if (json) {
    out << Json(report) << "\n";
    return kExitOk;
  }
  out << absl::StrFormat("log id      %s\n", report.log_id());
  out << absl::StrFormat("segments    %d of %u bytes: %s .. %s\n", report.segments_size(),
                         segments.front().header.segment_bytes, report.segments(0).file(),
                         report.segments(report.segments_size() - 1).file());
  out << absl::StrFormat("LSN         first %u, last record %u, end %u\n", report.first_lsn(),
                         report.last_record_lsn(), report.end_lsn());
  out << absl::StrFormat("records     %u in %u batches, %u bytes\n", report.records(),
                         report.batches(), report.record_bytes());
  out << absl::StrFormat("tail        %s\n", (*reader)->tail().ToString());
  out << absl::StrFormat("\n%-16s %10s %12s\n", "TYPE", "RECORDS", "BYTES");
  for (const qmgr::v1::TypeStats& stats : report.types()) {
    out << absl::StrFormat("%-16s %10u %12u\n", stats.type(), stats.records(), stats.bytes());
  }
  return kExitOk;
}

int LogVerify(const std::string& log_dir, bool json, std::ostream& out, std::ostream& err) {
  qmgr::v1::LogVerifyReport report;
  auto finish = [&](std::string verdict, std::string problem, int code) {
    report.set_verdict(std::move(verdict));
    report.set_problem(std::move(problem));
    if (json) {
      out << Json(report) << "\n";
    } else {
      out << absl::StrFormat("log %s: %u segments, LSN %u .. %u, %u batches, %u records\n",
                             report.log_id(), report.segments(), report.first_lsn(),
                             report.end_lsn(), report.batches(), report.records());
      out << report.verdict();
      if (code == kExitOk) {
        out << ": every segment header, batch and record checksum and the LSN chain verified\n";
      } else {
        out << ": " << report.problem() << "\n";
      }
    }
    return code;
  };
  absl::StatusOr<std::unique_ptr<log::LogReader>> reader = OpenReader(log_dir, 0);
  if (!reader.ok()) {
    const int code = ExitCodeFor(reader.status());
    if (code == kExitUnreadable) return Fail(reader.status(), err);
    return finish("CORRUPT", std::string(reader.status().message()), code);
  }
  const std::vector<log::SegmentFile>& segments = (*reader)->segments();
  report.set_log_id(segments.front().header.log_id.ToString());
  report.set_segments(segments.size());
  report.set_first_lsn(segments.front().header.first_lsn);
  log::LogEntry entry;
  qmgr::v1::LogRecord record;
  while (true) {
    absl::StatusOr<bool> more = (*reader)->Next(&entry);
    report.set_batches((*reader)->batches_read());
    report.set_end_lsn((*reader)->tail().end_lsn);
    if (!more.ok()) {
      *report.mutable_tail() = TailViewOf((*reader)->tail());
      if (ExitCodeFor(more.status()) == kExitUnreadable) return Fail(more.status(), err);
      return finish("CORRUPT", std::string(more.status().message()), kExitCorrupt);
    }
    if (!*more) break;
    if (absl::Status s = Decode(entry, &record); !s.ok()) {
      return finish("CORRUPT", std::string(s.message()), kExitCorrupt);
    }
    report.set_records(report.records() + 1);
  }
  *report.mutable_tail() = TailViewOf((*reader)->tail());
  if ((*reader)->tail().kind == log::TailKind::kTorn) {
    return finish("TORN_TAIL",
                  absl::StrCat((*reader)->tail().ToString(),
                               "; the next start truncates it (nothing acknowledged is there)"),
                  kExitTornTail);
  }
  return finish("OK", "", kExitOk);
}

}  // namespace qmgr::tools
