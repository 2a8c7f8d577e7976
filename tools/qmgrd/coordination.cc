#include "tools/qmgrd/coordination.h"

#include <algorithm>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/rpc_status.h"
#include "qmgr/status.h"
#include "tools/qmgrd/server_log.h"

namespace qmgr::server {
namespace {

namespace v1 = qmgr::v1;

// Log lines name at most this many XIDs or coordinators, then "...".
constexpr size_t kListedMax = 10;
// Per InDoubtInfo of a ListInDoubtResponse beyond its own size: tag and length.
constexpr uint64_t kInfoFramingBytes = 16;

absl::Status CheckName(absl::string_view what, const std::string& name) {
  if (name.empty() || name.size() > kCoordinatorNameBytesMax) {
    return absl::InvalidArgumentError(absl::StrCat("a ", what, " is 1..", kCoordinatorNameBytesMax,
                                                   " bytes; this one has ", name.size()));
  }
  return absl::OkStatus();
}

absl::Status CheckXid(const std::string& xid) {
  if (xid.empty() || xid.size() > kXidBytesMax) {
    return absl::InvalidArgumentError(
        absl::StrCat("an XID is 1..", kXidBytesMax, " bytes; this one has ", xid.size()));
  }
  return absl::OkStatus();
}

absl::Status CheckOutcome(v1::Outcome outcome) {
  if (outcome == v1::COMMIT || outcome == v1::BACKOUT) return absl::OkStatus();
  return absl::InvalidArgumentError("an outcome is COMMIT or BACKOUT");
}

std::string Who(const std::string& coordinator, const std::string& qualifier) {
  return absl::StrCat("coordinator '", coordinator, "' (qualifier '", qualifier, "')");
}

std::string Hex(const std::string& xid) { return absl::BytesToHexString(xid); }

// "a, b, c" over at most kListedMax items, then how many more.
template <typename Range, typename Format>
std::string ListSome(const Range& items, Format format) {
  std::vector<std::string> shown;
  size_t n = 0;
  for (const auto& item : items) {
    if (n++ < kListedMax) shown.push_back(format(item));
  }
  std::string out = absl::StrJoin(shown, ", ");
  if (n > kListedMax) absl::StrAppend(&out, ", ... (", n - kListedMax, " more)");
  return out;
}

}  // namespace

Coordination::Coordination(Engine* engine, Operations* operations, CoordinationOptions options)
    : engine_(engine), operations_(operations), options_(std::move(options)) {}

void Coordination::Progress(absl::string_view line) const {
  if (options_.progress) options_.progress(line);
}

absl::Status Coordination::CheckIdentity(const std::string& coordinator,
                                         const std::string& qualifier) const {
  if (absl::Status s = CheckName("coordinator name", coordinator); !s.ok()) return s;
  if (absl::Status s = CheckName("resync qualifier", qualifier); !s.ok()) return s;
  if (qualifier == options_.qmgr_name ||
      (!options_.group_name.empty() && qualifier == options_.group_name)) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "resync qualifier '", qualifier, "' is neither this queue manager's name '",
      options_.qmgr_name, "' nor its group's",
      options_.group_name.empty() ? " (it has none)" : absl::StrCat(" '", options_.group_name, "'"),
      ": connect with one of them"));
}

void Coordination::Settle(const CoordinatedKey& key, UowId uow) {
  absl::StatusOr<UowId> open = engine_->CoordinatedUnit(key);
  if (!open.ok() || *open != uow) operations_->RemoveUnit(uow);
}

absl::StatusOr<v1::ConnectResponse> Coordination::Connect(const v1::ConnectRequest& request) {
  if (absl::Status s = CheckIdentity(request.coordinator(), request.qualifier()); !s.ok()) {
    return s;
  }
  v1::ConnectResponse response;
  response.set_qmgr_name(options_.qmgr_name);
  response.set_group_name(options_.group_name);
  // Others' units, by coordinator and qualifier: an operator sees that they
  // remain locked until their own coordinators come back (or a decision by
  // hand).
  std::map<std::pair<std::string, std::string>, size_t> others;
  std::vector<std::string> mine;
  for (const InDoubtUnit& unit : engine_->InDoubtUnits("", "")) {
    if (unit.key.coordinator == request.coordinator() &&
        unit.key.qualifier == request.qualifier()) {
      response.add_in_doubt_xids(unit.key.xid);
      mine.push_back(Hex(unit.key.xid));
    } else {
      ++others[{unit.key.coordinator, unit.key.qualifier}];
    }
  }
  std::string line = absl::StrCat(Who(request.coordinator(), request.qualifier()),
                                  " connected: ", mine.size(), " unit(s) in doubt for it");
  if (!mine.empty()) {
    absl::StrAppend(&line, " (XIDs ", ListSome(mine, [](const std::string& x) { return x; }), ")");
  }
  if (!others.empty()) {
    size_t total = 0;
    for (const auto& [who, n] : others) total += n;
    absl::StrAppend(
        &line, "; ", total,
        " more remain in doubt for other coordinators: ", ListSome(others, [](const auto& entry) {
          return absl::StrCat(entry.first.first, "/", entry.first.second, ": ", entry.second);
        }));
  }
  Progress(line);
  LogEvent("coordinator.connect")
      .Add("coordinator", request.coordinator())
      .Add("qualifier", request.qualifier())
      .Add("in_doubt", static_cast<uint64_t>(mine.size()))
      .Add("in_doubt_for_others", static_cast<uint64_t>(others.size()));
  return response;
}

absl::StatusOr<v1::BeginResponse> Coordination::Begin(const v1::BeginRequest& request,
                                                      absl::string_view identity) {
  if (absl::Status s = CheckIdentity(request.coordinator(), request.qualifier()); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckXid(request.xid()); !s.ok()) return s;
  if (operations_->intake_stopped()) {
    return absl::UnavailableError("the queue manager is shutting down: no new units of work");
  }
  absl::StatusOr<UowId> uow =
      engine_->BeginCoordinatedUnit({request.coordinator(), request.qualifier(), request.xid()});
  if (!uow.ok()) return uow.status();
  operations_->AddUnit(*uow, kLeaseOwner, identity);
  v1::BeginResponse response;
  response.set_uow(*uow);
  response.set_lease_ms(operations_->lease_ms());
  return response;
}

absl::Status Coordination::Prepare(const v1::PrepareRequest& request) {
  if (absl::Status s = CheckIdentity(request.coordinator(), request.qualifier()); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckXid(request.xid()); !s.ok()) return s;
  const CoordinatedKey key{request.coordinator(), request.qualifier(), request.xid()};
  absl::StatusOr<UowId> uow = engine_->CoordinatedUnit(key);
  if (!uow.ok()) {
    return absl::Status(uow.status().code(),
                        absl::StrCat(uow.status().message(),
                                     " (never begun, backed out when its lease expired, or "
                                     "already resolved)"));
  }
  const absl::Status prepared = engine_->Prepare(*uow);
  if (prepared.ok()) {
    operations_->RemoveUnit(*uow);  // in doubt: no lease, no owner but its coordinator
  } else {
    Settle(key, *uow);  // QUEUE_FULL backed it out
  }
  return prepared;
}

absl::Status Coordination::Decide(const CoordinatedKey& key, v1::Outcome outcome) {
  const absl::StatusOr<UowId> open = engine_->CoordinatedUnit(key);
  ResolveResult result =
      engine_->Resolve(key.coordinator, key.qualifier, {{key.xid, outcome}}, key.coordinator);
  if (open.ok()) Settle(key, *open);
  return result.statuses.front();
}

absl::Status Coordination::Commit(const v1::CommitRequest& request) {
  if (absl::Status s = CheckIdentity(request.coordinator(), request.qualifier()); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckXid(request.xid()); !s.ok()) return s;
  return Decide({request.coordinator(), request.qualifier(), request.xid()}, v1::COMMIT);
}

absl::Status Coordination::Backout(const v1::CoordinatorBackoutRequest& request) {
  if (absl::Status s = CheckIdentity(request.coordinator(), request.qualifier()); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckXid(request.xid()); !s.ok()) return s;
  return Decide({request.coordinator(), request.qualifier(), request.xid()}, v1::BACKOUT);
}

absl::StatusOr<v1::ResolveResponse> Coordination::Resolve(const v1::ResolveRequest& request) {
  if (absl::Status s = CheckIdentity(request.coordinator(), request.qualifier()); !s.ok()) {
    return s;
  }
  if (request.outcomes().size() > static_cast<int>(kResolveXidsMax)) {
    return absl::InvalidArgumentError(absl::StrCat("a Resolve names at most ", kResolveXidsMax,
                                                   " XIDs; this one ", request.outcomes().size()));
  }
  std::vector<std::pair<std::string, v1::Outcome>> outcomes;
  std::vector<std::optional<UowId>> open;  // units open or in doubt before
  outcomes.reserve(request.outcomes().size());
  for (const v1::XidOutcome& o : request.outcomes()) {
    outcomes.emplace_back(o.xid(), o.outcome());
    // A malformed XID is refused here too; the engine's Resolve says why.
    absl::StatusOr<UowId> uow =
        engine_->CoordinatedUnit({request.coordinator(), request.qualifier(), o.xid()});
    open.push_back(uow.ok() ? std::optional<UowId>(*uow) : std::nullopt);
  }
  ResolveResult result =
      engine_->Resolve(request.coordinator(), request.qualifier(), outcomes, request.coordinator());
  v1::ResolveResponse response;
  response.set_in_doubt(result.in_doubt);
  response.set_committed(result.committed);
  response.set_backed_out(result.backed_out);
  response.set_unresolved(result.unresolved);
  std::vector<std::string> refused;
  for (size_t i = 0; i < outcomes.size(); ++i) {
    if (open[i].has_value()) {
      Settle({request.coordinator(), request.qualifier(), outcomes[i].first}, *open[i]);
    }
    *response.add_results() = qmgr::rpc::ToRpcStatus(result.statuses[i]);
    if (!result.statuses[i].ok()) {
      refused.push_back(absl::StrCat(Hex(outcomes[i].first), " (",
                                     absl::StatusCodeToString(result.statuses[i].code()), ")"));
    }
  }
  std::string line =
      absl::StrCat(Who(request.coordinator(), request.qualifier()), " resolve: ", outcomes.size(),
                   " XID(s), ", result.in_doubt, " in doubt; ", result.committed, " committed, ",
                   result.backed_out, " backed out, ", result.unresolved, " unresolved");
  if (!refused.empty()) {
    absl::StrAppend(&line, ": ", ListSome(refused, [](const std::string& x) { return x; }));
  }
  Progress(line);
  const auto mismatches = std::count_if(
      result.statuses.begin(), result.statuses.end(),
      [](const absl::Status& s) { return ReasonOf(s) == reason::kHeuristicMismatch; });
  LogEvent("coordinator.resolve")
      .Add("coordinator", request.coordinator())
      .Add("qualifier", request.qualifier())
      .Add("xids", static_cast<uint64_t>(outcomes.size()))
      .Add("in_doubt", result.in_doubt)
      .Add("committed", result.committed)
      .Add("backed_out", result.backed_out)
      .Add("unresolved", result.unresolved)
      .Add("heuristic_mismatches", static_cast<int64_t>(mismatches));
  return response;
}

absl::Status Coordination::Forget(const v1::ForgetRequest& request) {
  if (absl::Status s = CheckIdentity(request.coordinator(), request.qualifier()); !s.ok()) {
    return s;
  }
  if (request.xids().size() > static_cast<int>(kResolveXidsMax)) {
    return absl::InvalidArgumentError(absl::StrCat("a Forget names at most ", kResolveXidsMax,
                                                   " XIDs; this one ", request.xids().size()));
  }
  for (const std::string& xid : request.xids()) {
    if (absl::Status s = CheckXid(xid); !s.ok()) return s;
  }
  return engine_->Forget(request.coordinator(), request.qualifier(),
                         std::vector<std::string>(request.xids().begin(), request.xids().end()));
}

absl::StatusOr<v1::ListInDoubtResponse> Coordination::ListInDoubt(
    const v1::ListInDoubtRequest& request) const {
  if (request.coordinator().size() > kCoordinatorNameBytesMax ||
      request.qualifier().size() > kCoordinatorNameBytesMax) {
    return absl::InvalidArgumentError(absl::StrCat("coordinator names and qualifiers are at most ",
                                                   kCoordinatorNameBytesMax, " bytes"));
  }
  v1::ListInDoubtResponse response;
  uint64_t bytes = 0;
  for (const InDoubtUnit& unit :
       engine_->InDoubtUnits(request.coordinator(), request.qualifier())) {
    v1::InDoubtInfo* info = response.add_units();
    info->set_coordinator(unit.key.coordinator);
    info->set_qualifier(unit.key.qualifier);
    info->set_xid(unit.key.xid);
    info->set_uow(unit.uow);
    info->set_age_ms(std::max<int64_t>(0, absl::ToInt64Milliseconds(unit.age)));
    for (uint64_t id : unit.locked_messages) info->add_locked_message_ids(id);
    for (const std::string& queue : unit.queues) info->add_queues(queue);
    info->set_inserted(unit.inserted);
    // A unit lists up to unit_messages_max message ids: many units may not
    // fit in one answer.
    bytes += info->ByteSizeLong() + kInfoFramingBytes;
    if (bytes > options_.max_send_bytes) {
      response.mutable_units()->RemoveLast();
      response.set_truncated(true);
      break;
    }
  }
  return response;
}

absl::StatusOr<v1::ResolveInDoubtResponse> Coordination::ResolveInDoubt(
    const v1::ResolveInDoubtRequest& request) {
  if (absl::Status s = CheckXid(request.xid()); !s.ok()) return s;
  if (absl::Status s = CheckOutcome(request.outcome()); !s.ok()) return s;
  if (!request.coordinator().empty()) {
    if (absl::Status s = CheckName("coordinator name", request.coordinator()); !s.ok()) return s;
  }
  if (!request.qualifier().empty()) {
    if (absl::Status s = CheckName("resync qualifier", request.qualifier()); !s.ok()) return s;
  }
  if (request.operator_name().size() > kCoordinatorNameBytesMax) {
    return absl::InvalidArgumentError(
        absl::StrCat("an operator name is at most ", kCoordinatorNameBytesMax, " bytes"));
  }
  std::vector<CoordinatedKey> matches;
  for (InDoubtUnit& unit : engine_->InDoubtUnits(request.coordinator(), request.qualifier())) {
    if (unit.key.xid == request.xid()) matches.push_back(std::move(unit.key));
  }
  CoordinatedKey key{request.coordinator(), request.qualifier(), request.xid()};
  if (matches.size() > 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "XID ", Hex(request.xid()), " is in doubt for ", matches.size(), " units: ",
        ListSome(matches, [](const CoordinatedKey& k) { return Who(k.coordinator, k.qualifier); }),
        "; name the coordinator (and qualifier) to resolve one"));
  }
  if (matches.size() == 1) {
    key = matches.front();
  } else if (key.coordinator.empty() || key.qualifier.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "no unit in doubt has XID ", Hex(request.xid()),
        request.coordinator().empty() ? ""
                                      : absl::StrCat(" for coordinator '", key.coordinator, "'"),
        " (an outcome already decided is found only by naming its coordinator and qualifier)"));
  } else if (engine_->CoordinatedUnit(key).ok()) {
    // Open but never prepared: its coordinator still owns it and may commit
    // it in one phase; an operator's guess could only do harm.
    return absl::FailedPreconditionError(
        absl::StrCat("XID ", Hex(request.xid()), " of ", Who(key.coordinator, key.qualifier),
                     " is not in doubt (not prepared): its coordinator decides it"));
  }
  // Named in full and not in doubt: a remembered outcome answers OK when the
  // same (a retry) and HEURISTIC_MISMATCH when not; NOT_FOUND when never seen.
  const std::string op = request.operator_name().empty() ? "qmgrctl" : request.operator_name();
  ResolveResult result = engine_->Resolve(key.coordinator, key.qualifier,
                                          {{key.xid, request.outcome()}}, "operator:" + op);
  const absl::Status& status = result.statuses.front();
  // A decision by hand is the heuristic decision: its coordinator may later
  // decide otherwise (HEURISTIC_MISMATCH).
  LogEvent("indoubt.heuristic_decision")
      .Add("decided_by", "operator:" + op)
      .Add("coordinator", key.coordinator)
      .Add("qualifier", key.qualifier)
      .Add("xid", Hex(key.xid))
      .Add("outcome", request.outcome() == v1::COMMIT ? "commit" : "backout")
      .Add("code", absl::StatusCodeToString(status.code()))
      .Add("reason", ReasonOf(status));
  Progress(absl::StrCat("operator '", op, "' resolved XID ", Hex(key.xid), " of ",
                        Who(key.coordinator, key.qualifier), ": ",
                        request.outcome() == v1::COMMIT ? "commit" : "backout",
                        status.ok() ? "" : absl::StrCat(" refused: ", status.message())));
  if (!status.ok()) return status;
  v1::ResolveInDoubtResponse response;
  response.set_coordinator(key.coordinator);
  response.set_qualifier(key.qualifier);
  return response;
}

}  // namespace qmgr::server
