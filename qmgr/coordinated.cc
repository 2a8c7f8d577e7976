// Units of work of external coordinators: two-phase commit and in-doubt
// resolution (DESIGN.md, "In-doubt units of work"). A coordinated unit is an
// ordinary unit tagged with (coordinator, qualifier, XID); Prepare makes it
// in doubt until Resolve gives its outcome, which is then remembered until
// Forget.
#include <algorithm>
#include <cassert>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "qmgr/engine.h"
#include "qmgr/engine_internal.h"

namespace qmgr {

using qmgr::v1::LogRecord;

namespace {

absl::Status CheckKey(const CoordinatedKey& key) {
  if (key.coordinator.empty() || key.coordinator.size() > kCoordinatorNameBytesMax) {
    return absl::InvalidArgumentError(
        absl::StrCat("a coordinator name is 1..", kCoordinatorNameBytesMax, " bytes"));
  }
  if (key.qualifier.empty() || key.qualifier.size() > kCoordinatorNameBytesMax) {
    return absl::InvalidArgumentError(
        absl::StrCat("a resync qualifier is 1..", kCoordinatorNameBytesMax, " bytes"));
  }
  if (key.xid.empty() || key.xid.size() > kXidBytesMax) {
    return absl::InvalidArgumentError(
        absl::StrCat("an XID is 1..", kXidBytesMax, " bytes; this one has ", key.xid.size()));
  }
  return absl::OkStatus();
}

std::string Describe(const CoordinatedKey& key) {
  return absl::StrCat("XID ", absl::BytesToHexString(key.xid), " of coordinator '", key.coordinator,
                      "' (qualifier '", key.qualifier, "')");
}

absl::string_view OutcomeName(qmgr::v1::Outcome outcome) {
  return outcome == qmgr::v1::COMMIT ? "commit" : "backout";
}

}  // namespace

// Length-prefixed, so that no name can be confused with another's prefix.
std::string CoordinatedStoreKey(const CoordinatedKey& key) {
  return absl::StrCat(key.coordinator.size(), ":", key.coordinator, key.qualifier.size(), ":",
                      key.qualifier, key.xid);
}

absl::StatusOr<CoordinatedKey> ParseCoordinatedStoreKey(absl::string_view stored) {
  CoordinatedKey key;
  for (std::string* field : {&key.coordinator, &key.qualifier}) {
    const size_t colon = stored.find(':');
    size_t length = 0;
    if (colon == absl::string_view::npos || !absl::SimpleAtoi(stored.substr(0, colon), &length) ||
        stored.size() - colon - 1 < length) {
      return absl::DataLossError("a coordinated unit's store key is malformed");
    }
    *field = std::string(stored.substr(colon + 1, length));
    stored.remove_prefix(colon + 1 + length);
  }
  key.xid = std::string(stored);
  return key;
}

absl::StatusOr<UowId> Engine::BeginCoordinatedUnit(const CoordinatedKey& key) {
  if (absl::Status s = CheckKey(key); !s.ok()) return s;
  const std::string stored = CoordinatedStoreKey(key);
  const absl::Time now = options_.clock->Now();
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  if (coordinated_.contains(stored) || remembered_.contains(stored)) {
    return absl::AlreadyExistsError(
        absl::StrCat(Describe(key),
                     " is already in use (open, in doubt, or remembered until "
                     "the coordinator forgets it)"));
  }
  Unit* unit = NewUnit(now);
  unit->coordinated_key = stored;
  coordinated_[stored] = unit->id;
  return unit->id;
}

absl::StatusOr<UowId> Engine::CoordinatedUnit(const CoordinatedKey& key) const {
  if (absl::Status s = CheckKey(key); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  auto it = coordinated_.find(CoordinatedStoreKey(key));
  if (it == coordinated_.end()) {
    return absl::NotFoundError(absl::StrCat(Describe(key), " has no open unit of work"));
  }
  return it->second;
}

absl::Status Engine::Prepare(UowId uow) {
  log::Lsn lsn = log::kNoLsn;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = CheckOpen(); !s.ok()) return s;
    absl::StatusOr<Unit*> found = FindUnit(uow, options_.clock->Now());
    if (!found.ok()) return found.status();
    Unit* unit = *found;
    if (unit->coordinated_key.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "unit of work ", uow, " has no coordinator: Prepare is for coordinated units"));
    }
    if (absl::Status s = CheckNotWaiting(*unit); !s.ok()) return s;
    if (absl::Status refusal = CheckInsertDepth(*unit); !refusal.ok()) {
      BackoutLocked(unit, qmgr::v1::BACKOUT_QUEUE_FULL);
      return refusal;
    }
    absl::StatusOr<CoordinatedKey> key = ParseCoordinatedStoreKey(unit->coordinated_key);
    assert(key.ok());
    LogRecord record;
    qmgr::v1::PrepareRecord* prepare = record.mutable_prepare();
    std::vector<std::pair<std::string, uint64_t>> hardened;
    FillUnitRecord(*unit, prepare, &hardened);
    prepare->set_coordinator(key->coordinator);
    prepare->set_qualifier(key->qualifier);
    prepare->set_xid(key->xid);
    prepare->set_prepared_time_us(options_.clock->NowMicros());
    absl::StatusOr<log::Lsn> appended = log_->Append(record);
    if (!appended.ok()) return appended.status();
    lsn = *appended;
    if (unit->first_lsn == log::kNoLsn) unit->first_lsn = lsn;
    // Its inserts hold their ids until the outcome: they are in the record.
    for (auto& message : unit->inserted) message->logged = true;
    unit->prepared =
        std::make_shared<const qmgr::v1::PrepareRecord>(std::move(*record.mutable_prepare()));
    unit->prepared_time_us = unit->prepared->prepared_time_us();
    unit->exempt = true;
    changed_coordinated_.insert(unit->coordinated_key);
  }
  return WaitDurable(lsn);
}

absl::Status Engine::ResolveOne(const CoordinatedKey& key, qmgr::v1::Outcome outcome,
                                const std::string& decided_by, bool* was_in_doubt, log::Lsn* wait,
                                Consumed* consumed) {
  *was_in_doubt = false;
  if (absl::Status s = CheckKey(key); !s.ok()) return s;
  if (outcome != qmgr::v1::COMMIT && outcome != qmgr::v1::BACKOUT) {
    return absl::InvalidArgumentError("an outcome is COMMIT or BACKOUT");
  }
  const std::string stored = CoordinatedStoreKey(key);
  const auto resolve_record = [&](bool heuristic) {
    LogRecord record;
    qmgr::v1::ResolveRecord* resolve = record.mutable_resolve();
    resolve->set_coordinator(key.coordinator);
    resolve->set_qualifier(key.qualifier);
    resolve->set_xid(key.xid);
    resolve->set_outcome(outcome);
    resolve->set_decided_by(decided_by);
    resolve->set_heuristic(heuristic);
    return record;
  };

  if (auto remembered = remembered_.find(stored); remembered != remembered_.end()) {
    if (remembered->second.outcome == outcome) return absl::OkStatus();  // a retry
    // Heuristic damage: the unit went the other way. Logged, never undone.
    LogRecord record = resolve_record(/*heuristic=*/true);
    absl::StatusOr<log::Lsn> lsn = log_->Append(record);
    if (lsn.ok()) *wait = std::max(*wait == log::kNoLsn ? 0 : *wait, *lsn);
    return WithReason(
        absl::FailedPreconditionError(absl::StrCat(
            Describe(key), ": asked to ", OutcomeName(outcome), " but it was ",
            remembered->second.outcome == qmgr::v1::COMMIT ? "committed" : "backed out", " by ",
            remembered->second.decided_by, " (heuristic damage, logged)")),
        reason::kHeuristicMismatch);
  }
  auto open = coordinated_.find(stored);
  if (open == coordinated_.end()) {
    return absl::NotFoundError(absl::StrCat(Describe(key), " was never seen"));
  }
  Unit* unit = units_.at(open->second).get();
  if (absl::Status s = CheckNotWaiting(*unit); !s.ok()) return s;
  const UowId uow = unit->id;
  *was_in_doubt = unit->in_doubt();

  if (!unit->in_doubt()) {
    // One phase: the coordinator never prepared it. Its outcome is not
    // remembered: no record names its XID.
    if (outcome == qmgr::v1::BACKOUT) {
      BackoutLocked(unit, qmgr::v1::BACKOUT_COORDINATOR);
      return absl::OkStatus();
    }
    SyncPointResult result;
    absl::StatusOr<log::Lsn> lsn = CommitLocked(unit, &result, consumed);
    if (!lsn.ok()) return lsn.status();
    if (*lsn != log::kNoLsn) *wait = std::max(*wait == log::kNoLsn ? 0 : *wait, *lsn);
    return absl::OkStatus();
  }

  LogRecord record = resolve_record(/*heuristic=*/false);
  record.mutable_resolve()->set_uow_id(uow);
  absl::StatusOr<log::Lsn> lsn = log_->Append(record);
  if (!lsn.ok()) return lsn.status();
  *wait = std::max(*wait == log::kNoLsn ? 0 : *wait, *lsn);
  remembered_[stored] = Remembered{outcome, decided_by, false};
  changed_coordinated_.insert(stored);
  if (outcome == qmgr::v1::COMMIT) {
    std::vector<std::pair<std::string, uint64_t>> hardened;
    for (const qmgr::v1::SessionAdvance& a : unit->prepared->sessions()) {
      hardened.emplace_back(a.session(), a.in_seq());
    }
    SyncPointResult result;
    ApplyCommit(unit, *lsn, hardened, &result, consumed);
  } else {
    unit->prepared.reset();
    BackoutLocked(unit, qmgr::v1::BACKOUT_COORDINATOR);
  }
  return absl::OkStatus();
}

ResolveResult Engine::Resolve(
    const std::string& coordinator, const std::string& qualifier,
    const std::vector<std::pair<std::string, qmgr::v1::Outcome>>& outcomes,
    const std::string& decided_by) {
  ResolveResult result;
  log::Lsn wait = log::kNoLsn;
  Consumed consumed;
  {
    absl::MutexLock lock(&mu_);
    absl::Status open = CheckOpen();
    for (const auto& [xid, outcome] : outcomes) {
      bool was_in_doubt = false;
      absl::Status status = open.ok() ? ResolveOne({coordinator, qualifier, xid}, outcome,
                                                   decided_by, &was_in_doubt, &wait, &consumed)
                                      : open;
      result.in_doubt += was_in_doubt;
      if (!status.ok()) {
        ++result.unresolved;
      } else if (outcome == qmgr::v1::COMMIT) {
        ++result.committed;
      } else {
        ++result.backed_out;
      }
      result.statuses.push_back(std::move(status));
    }
  }
  consumed.clear();
  if (wait != log::kNoLsn) {
    if (absl::Status s = WaitDurable(wait); !s.ok()) {
      // Not durable: nothing may be reported as decided.
      result.committed = result.backed_out = 0;
      result.unresolved = outcomes.size();
      for (absl::Status& status : result.statuses) {
        if (status.ok()) status = s;
      }
    }
  }
  return result;
}

std::vector<InDoubtUnit> Engine::InDoubtUnits(const std::string& coordinator,
                                              const std::string& qualifier) const {
  const int64_t now_us = options_.clock->NowMicros();
  absl::MutexLock lock(&mu_);
  std::vector<InDoubtUnit> out;
  for (const auto& [stored, uow] : coordinated_) {
    const Unit& unit = *units_.at(uow);
    if (!unit.in_doubt()) continue;
    absl::StatusOr<CoordinatedKey> key = ParseCoordinatedStoreKey(stored);
    assert(key.ok());
    if (!coordinator.empty() && key->coordinator != coordinator) continue;
    if (!qualifier.empty() && key->qualifier != qualifier) continue;
    InDoubtUnit& u = out.emplace_back();
    u.key = *std::move(key);
    u.uow = uow;
    u.age = absl::Microseconds(now_us - unit.prepared_time_us);
    for (const auto& message : unit.taken) {
      u.locked_messages.push_back(message->m.id());
      if (std::find(u.queues.begin(), u.queues.end(), message->m.queue()) == u.queues.end()) {
        u.queues.push_back(message->m.queue());
      }
    }
    u.inserted = unit.inserted.size();
  }
  // Units are numbered as they begin: the tie-break keeps the order stable
  // for units prepared within one clock tick.
  std::sort(out.begin(), out.end(), [](const InDoubtUnit& a, const InDoubtUnit& b) {
    return a.age != b.age ? a.age > b.age : a.uow < b.uow;
  });
  return out;
}

absl::Status Engine::Forget(const std::string& coordinator, const std::string& qualifier,
                            const std::vector<std::string>& xids) {
  absl::StatusOr<log::Lsn> lsn;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = CheckOpen(); !s.ok()) return s;
    LogRecord record;
    qmgr::v1::ForgetRecord* forget = record.mutable_forget();
    forget->set_coordinator(coordinator);
    forget->set_qualifier(qualifier);
    for (const std::string& xid : xids) {
      const CoordinatedKey key{coordinator, qualifier, xid};
      if (absl::Status s = CheckKey(key); !s.ok()) return s;
      const std::string stored = CoordinatedStoreKey(key);
      if (auto open = coordinated_.find(stored);
          open != coordinated_.end() && units_.at(open->second)->in_doubt()) {
        return absl::FailedPreconditionError(
            absl::StrCat(Describe(key), " is in doubt: resolve it before forgetting it"));
      }
      if (remembered_.contains(stored)) forget->add_xids(xid);
    }
    if (forget->xids().empty()) return absl::OkStatus();
    lsn = log_->Append(record);
    if (!lsn.ok()) return lsn.status();
    for (const std::string& xid : forget->xids()) {
      const std::string stored = CoordinatedStoreKey({coordinator, qualifier, xid});
      remembered_.erase(stored);
      changed_coordinated_.insert(stored);
    }
  }
  return WaitDurable(*lsn);
}

}  // namespace qmgr
