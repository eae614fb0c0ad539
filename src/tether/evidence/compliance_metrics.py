"""The compliance report's metrics: the facts the broker reads and the evidence computed from them
(pure). Each metric says, for people and for machines, what this deployment shows over the window;
one with nothing to show says so."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from tether.domain.events import Event

__all__ = ["METRICS", "EventTally", "Facts", "Metric", "TaskTimes", "compute_metrics"]

#: The metrics a control can name as its evidence: id → what it shows.
METRICS: Final[Mapping[str, str]] = {
    "use_time_decisions": "Secret uses decided at the moment of use",
    "decisions": "Policy decisions (tasks, issuance, delegation, tools)",
    "task_lifetimes": "Task lifetimes",
    "standing_grants": "Standing grants",
    "revocation_at_end": "Grants revoked when tasks end, and how fast",
    "reveal_exposure": "Secrets revealable versus injection-only",
    "leak_redactions": "Injected secrets redacted from answers",
    "approvals": "Approvals requested, approved and denied",
    "audit_chain": "Audit chain verification and the last signed checkpoint",
    "sprawl_scans": "Sprawl scans and their findings",
    "agent_identity": "Agent identities and access tokens",
    "dpop_replays": "DPoP proof replays refused",
    "reach_findings": "Standing-privilege findings (reach)",
    "delegations": "Delegations",
    "tool_governance": "Tool calls through the MCP gateway",
    "secret_inventory": "Secret inventory and rotation",
    "operator_separation": "Operators by role",
    "policy_versions": "Policy set versions",
    "context_changes": "Task context changes re-decided",
    "revocation_signals": "Endings and revocations pushed to relying parties (Shared Signals)",
}

_SENSITIVITY: Final = ("public", "internal", "confidential", "restricted")


# -- the facts the broker gathers ---------------------------------------------------------------


@dataclass(slots=True)
class EventTally:
    """Counts over the audit events of one kind in the window."""

    count: int = 0
    allowed: int = 0
    denied: int = 0
    by: Counter[str] = field(default_factory=Counter)  # a data field's values ("mode", "status")
    sums: Counter[str] = field(default_factory=Counter)  # integer data fields summed
    reasons: Counter[str] = field(default_factory=Counter)  # refusal codes ("invalid_dpop_proof")
    replays: int = 0
    missing: Counter[str] = field(default_factory=Counter)  # what denials lacked ("approval")
    capped: bool = False

    def add(self, events: Iterable[Event], *, by: str | None = None, sums: Sequence[str] = ()) -> None:
        for event in events:
            self.count += 1
            if event.decision is not None:
                if event.decision.allowed:
                    self.allowed += 1
                else:
                    self.denied += 1
                    self.missing.update(event.decision.missing)
            data = event.data
            if by is not None and isinstance(data.get(by), str):
                self.by[str(data[by])] += 1
            for key in sums:
                value = data.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    self.sums[key] += value
            if event.reason.startswith("refused: "):
                self.reasons[event.reason.removeprefix("refused: ").split(":", 1)[0]] += 1
                if "replayed" in event.reason:
                    self.replays += 1
            elif event.reason.startswith("rate limited"):
                self.reasons["rate_limited"] += 1


@dataclass(frozen=True, slots=True)
class TaskTimes:
    status: str
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    depth: int


@dataclass(slots=True)
class Facts:
    """What the broker read for one report. Event tallies are by kind (``grant.activate``…)."""

    since: str
    window_start: datetime
    window_end: datetime
    trust_domain: str
    events: dict[str, EventTally] = field(default_factory=dict)
    tasks: list[TaskTimes] = field(default_factory=list)
    max_task_ttl_seconds: int = 0
    ended_grants_live: int = 0  # grants of tasks ended in the window that are still usable
    ended_tasks_checked: int = 0
    live_grants: int = 0
    live_grants_unbounded: int = 0
    live_grant_max_remaining_seconds: int = 0
    secrets: list[tuple[str, int, int | None, bool]] = field(default_factory=list)  # path, sens, period, due
    revealable: list[str] = field(default_factory=list)
    inject_only: list[str] = field(default_factory=list)
    policy_active: int | None = None
    policy_versions: int = 0
    audit_ok: bool | None = None
    audit_verified_to: int = 0
    audit_problem: str = ""
    checkpoint: tuple[int, datetime, str] | None = None  # seq, time, key id
    agents: int = 0
    agents_disabled: int = 0
    issuers: int = 0
    reach_findings: Counter[str] = field(default_factory=Counter)
    reach_available: bool = False
    operators: Counter[str] = field(default_factory=Counter)
    signal_streams: int = 0
    signal_deliveries: Counter[str] = field(default_factory=Counter)  # status → SETs made in the window
    truncated: bool = False

    def tally(self, kind: str) -> EventTally:
        return self.events.get(kind) or EventTally()


# -- metrics --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metric:
    """One piece of evidence: statements for people, values for machines; ``evidence`` is False
    when the deployment had nothing to show for it in the window."""

    id: str
    title: str
    evidence: bool
    statements: tuple[str, ...]
    values: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "evidence": self.evidence,
            "statements": list(self.statements),
            "values": dict(self.values),
        }


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def _none(what: str) -> tuple[bool, tuple[str, ...]]:
    return False, (f"No evidence in this window: {what}.",)


def _m_use_time(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    t = f.tally("grant.activate")
    decided = t.allowed + t.denied
    values = {
        "activations": t.count,
        "decided_at_use": decided,
        "allowed": t.allowed,
        "denied": t.denied,
        "by_mode": dict(t.by),
        "share_decided_at_use": round(decided / t.count, 4) if t.count else None,
    }
    if not t.count:
        return *_none("no secret was used"), values
    modes = ", ".join(f"{n} {m}" for m, n in sorted(t.by.items())) or "no mode recorded"
    return (
        True,
        (
            f"{_pct(decided, t.count)} of {t.count} secret uses were decided by policy at the moment of use "
            f"({t.allowed} allowed, {t.denied} denied; {modes}).",
        ),
        values,
    )


def _m_decisions(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    t = f.tally("decision")
    values = {"decisions": t.count, "allowed": t.allowed, "denied": t.denied, "missing": dict(t.missing)}
    if not t.count:
        return *_none("no policy decision was recorded"), values
    missing = ", ".join(f"{n} lacking {m}" for m, n in sorted(t.missing.items()))
    return (
        True,
        (
            f"{t.count} policy decisions: {t.allowed} allowed, {t.denied} denied"
            + (f" ({missing})." if missing else "."),
        ),
        values,
    )


def _m_lifetimes(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    granted = [(t.expires_at - t.created_at).total_seconds() for t in f.tasks]
    lived = [(t.ended_at - t.created_at).total_seconds() for t in f.tasks if t.ended_at is not None]
    values: dict[str, Any] = {
        "tasks": len(f.tasks),
        "max_lifetime_seconds": round(max(granted)) if granted else None,
        "median_lifetime_seconds": round(statistics.median(granted)) if granted else None,
        "median_lived_seconds": round(statistics.median(lived)) if lived else None,
        "configured_max_seconds": f.max_task_ttl_seconds,
    }
    if not granted:
        return *_none("no task was opened"), values
    statements = [
        f"{len(granted)} tasks opened; lifetime granted: maximum {_duration(max(granted))}, "
        f"median {_duration(statistics.median(granted))} (configured maximum "
        f"{_duration(f.max_task_ttl_seconds)}).",
    ]
    if lived:
        statements.append(f"Tasks that ended lived a median {_duration(statistics.median(lived))}.")
    return True, tuple(statements), values


def _m_standing(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    values = {
        "live_grants": f.live_grants,
        "live_grants_without_use_budget": f.live_grants_unbounded,
        "live_grant_max_remaining_seconds": f.live_grant_max_remaining_seconds,
        "grants_outliving_their_task": f.ended_grants_live,
        "ended_tasks_checked": f.ended_tasks_checked,
    }
    statements = [
        f"{f.ended_grants_live} grants still usable after their task ended "
        f"(checked every grant of {f.ended_tasks_checked} tasks that ended in the window).",
        f"{f.live_grants} grants are live now, each tied to a live task"
        + (
            f"; the longest expires in {_duration(f.live_grant_max_remaining_seconds)}"
            if f.live_grants
            else ""
        )
        + f"; {f.live_grants_unbounded} without a use budget.",
    ]
    return bool(f.ended_tasks_checked or f.live_grants), tuple(statements), values


def _m_revocation(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    ends = f.tally("task.end")
    revokes = f.tally("grant.revoke")
    by_status = Counter(t.status for t in f.tasks if t.ended_at is not None)
    lags = [
        max(0.0, (t.ended_at - t.expires_at).total_seconds())
        for t in f.tasks
        if t.status == "expired" and t.ended_at is not None
    ]
    grants_revoked = revokes.sums["grants_revoked"] + ends.sums["grants_revoked"]
    values: dict[str, Any] = {
        "task_end_events": ends.count,
        "tasks_ended_by_status": dict(by_status),
        "grants_revoked": grants_revoked,
        "expiry_sweep_lag_max_seconds": round(max(lags), 3) if lags else None,
        "expiry_sweep_lag_median_seconds": round(statistics.median(lags), 3) if lags else None,
    }
    if not ends.count and not by_status:
        return *_none("no task ended"), values
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "none of those opened in it"
    statements = [
        f"{ends.count} task endings recorded ({statuses}); {grants_revoked} grants revoked with them, in the "
        "same transaction as the ending (completed, failed and revoked tasks: at once).",
    ]
    if lags:
        statements.append(
            f"Expired tasks were ended by the sweeper a median {_duration(statistics.median(lags))} "
            f"after expiry (maximum {_duration(max(lags))}); an expired grant is refused at once regardless."
        )
    return True, tuple(statements), values


def _m_reveal(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    reveals = f.tally("grant.activate").by.get("reveal", 0)
    values = {
        "secrets": len(f.secrets),
        "revealable": sorted(f.revealable),
        "injection_only": len(f.inject_only),
        "reveal_activations": reveals,
        "policy_version": f.policy_active,
    }
    if f.policy_active is None or not f.secrets:
        return *_none("no policy set is active or no secret is stored"), values
    shown = ", ".join(sorted(f.revealable)[:10]) + (" …" if len(f.revealable) > 10 else "")
    return (
        True,
        (
            f"Of {len(f.secrets)} secrets, {len(f.revealable)} can be revealed to some agent under policy "
            f"version {f.policy_active}" + (f" ({shown})" if f.revealable else "") + f"; "
            f"{len(f.inject_only)} can only be injected (or issued dynamically); "
            f"{reveals} reveals in the window.",
        ),
        values,
    )


def _m_redactions(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    egress, tool = f.tally("egress.redact").count, f.tally("tool.redact").count
    values = {"egress_redactions": egress, "tool_redactions": tool}
    if not egress and not tool:
        return *_none("no injected secret came back in an answer"), values
    return (
        True,
        (f"Injected secrets redacted from answers: {egress} by egress, {tool} by the MCP gateway.",),
        values,
    )


def _m_approvals(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    requested = f.tally("approval.request").count
    decided = f.tally("approval.decide").by
    values = {
        "requested": requested,
        "approved": decided.get("approved", 0),
        "denied": decided.get("denied", 0),
    }
    if not requested and not decided:
        return *_none("no approval was requested"), values
    return (
        True,
        (
            f"{requested} approvals requested; {values['approved']} approved, {values['denied']} denied "
            "(each bound to one task, action, resource and context).",
        ),
        values,
    )


def _m_audit(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    values: dict[str, Any] = {
        "verified": f.audit_ok,
        "verified_to_seq": f.audit_verified_to,
        "problem": f.audit_problem or None,
        "checkpoint": None
        if f.checkpoint is None
        else {"seq": f.checkpoint[0], "time": f.checkpoint[1].isoformat(), "key_id": f.checkpoint[2]},
    }
    if f.audit_ok is None:
        return *_none("the audit chain is empty"), values
    if f.audit_ok:
        first = f"The audit chain verified intact from event 1 to {f.audit_verified_to}."
    else:
        first = f"The audit chain FAILED verification: {f.audit_problem}."
    if f.checkpoint is None:
        second = "No signed checkpoint has been taken yet."
    else:
        second = (
            f"Last signed checkpoint: event {f.checkpoint[0]} at {f.checkpoint[1].isoformat()} "
            f"(key {f.checkpoint[2]})."
        )
    return True, (first, second), values


def _m_scans(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    t = f.tally("scan.run")
    values = {
        "scans": t.count,
        "governed_findings": t.sums["governed_findings"],
        "ungoverned_findings": t.sums["ungoverned_findings"],
        "bytes_scanned": t.sums["scanned_bytes"],
    }
    if not t.count:
        return *_none("no sprawl scan ran"), values
    return (
        True,
        (
            f"{t.count} sprawl scans over {t.sums['scanned_bytes']} bytes found "
            f"{t.sums['governed_findings']} governed and {t.sums['ungoverned_findings']} ungoverned secrets.",
        ),
        values,
    )


def _m_identity(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    tokens = f.tally("auth.token")
    failed = f.tally("auth.failed")
    values = {
        "agents": f.agents,
        "agents_disabled": f.agents_disabled,
        "trusted_issuers": f.issuers,
        "tokens_issued": tokens.count - sum(tokens.reasons.values()),
        "token_refusals": sum(tokens.reasons.values()),
        "request_auth_failures": failed.count,
    }
    if not f.agents:
        return *_none("no agent is registered"), values
    return (
        True,
        (
            f"{f.agents} agents registered ({f.agents_disabled} disabled), {f.issuers} trusted issuers; "
            f"{values['tokens_issued']} DPoP-bound access tokens issued, {failed.count} agent requests "
            "refused authentication.",
        ),
        values,
    )


def _m_replays(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    failed = f.tally("auth.failed")
    tokens = f.tally("auth.token")
    replays = failed.replays + tokens.replays
    values = {"replays_refused": replays, "refusals_by_code": dict(failed.reasons + tokens.reasons)}
    if not failed.count and not tokens.count:
        return *_none("no agent authenticated"), values
    return True, (f"{replays} replayed DPoP proofs or client assertions refused.",), values


def _m_reach(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    values = {"findings": dict(f.reach_findings), "computed": f.reach_available}
    if not f.reach_available:
        return *_none("no policy set is active, so reach was not computed"), values
    if not f.reach_findings:
        return True, ("Reach review: no standing-privilege finding.",), values
    found = ", ".join(f"{n} {k}" for k, n in sorted(f.reach_findings.items()))
    return True, (f"Reach review: {sum(f.reach_findings.values())} findings ({found}).",), values


def _m_delegations(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    t = f.tally("delegation")
    depth = max((task.depth for task in f.tasks), default=0)
    values = {"delegations": t.count, "allowed": t.allowed, "denied": t.denied, "max_depth": depth}
    if not t.count:
        return *_none("no task was delegated"), values
    return (
        True,
        (f"{t.count} delegations decided ({t.allowed} allowed, {t.denied} denied); deepest chain {depth}.",),
        values,
    )


def _m_tools(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    calls = f.tally("tool.call")
    quarantined = f.tally("mcp.tool.quarantine").count
    values = {
        "tool_calls": calls.count,
        "allowed": calls.allowed,
        "denied": calls.denied,
        "quarantined": quarantined,
    }
    if not calls.count and not quarantined:
        return *_none("no tool was called through the MCP gateway"), values
    return (
        True,
        (
            f"{calls.count} tool calls decided ({calls.allowed} allowed, {calls.denied} denied); "
            f"{quarantined} changed tool definitions quarantined.",
        ),
        values,
    )


def _m_inventory(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    by_sensitivity = Counter(_SENSITIVITY[s] for _, s, _, _ in f.secrets)
    no_period = sum(1 for _, _, period, _ in f.secrets if period is None)
    overdue = sorted(path for path, _, _, due in f.secrets if due)
    values = {
        "secrets": len(f.secrets),
        "by_sensitivity": dict(by_sensitivity),
        "without_rotation_period": no_period,
        "rotation_overdue": overdue,
    }
    if not f.secrets:
        return *_none("no secret is stored"), values
    sens = ", ".join(f"{by_sensitivity[s]} {s}" for s in _SENSITIVITY if by_sensitivity[s])
    return (
        True,
        (
            f"{len(f.secrets)} secrets governed ({sens}); {no_period} without a rotation period; "
            f"{len(overdue)} overdue for rotation" + (f" ({', '.join(overdue[:10])})." if overdue else "."),
        ),
        values,
    )


def _m_operators(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    values = {"by_role": dict(f.operators)}
    roles = ", ".join(f"{n} {r}" for r, n in sorted(f.operators.items()))
    return (
        bool(f.operators),
        (f"Active operators by role: {roles or 'none'}; none can read a value back.",),
        values,
    )


def _m_policy(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    deploys = f.tally("policy.deploy").count
    values = {"active_version": f.policy_active, "versions": f.policy_versions, "deployed_in_window": deploys}
    if f.policy_active is None:
        return *_none("no policy set is deployed (everything is denied)"), values
    return (
        True,
        (
            f"Policy set version {f.policy_active} is active ({f.policy_versions} versions kept; "
            f"{deploys} deployed in the window).",
        ),
        values,
    )


def _m_context(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    t = f.tally("task.update")
    values = {"context_changes": t.count}
    if not t.count:
        return *_none("no task changed its context"), values
    return (
        True,
        (f"{t.count} task context changes, each re-deciding the task's live grants at once.",),
        values,
    )


def _m_signals(f: Facts) -> tuple[bool, tuple[str, ...], dict[str, Any]]:
    d = f.signal_deliveries
    values = {
        "streams": f.signal_streams,
        "delivered": d.get("delivered", 0),
        "pending": d.get("pending", 0),
        "failed": d.get("failed", 0),
    }
    if not f.signal_streams:
        return *_none("no Shared Signals receiver is registered"), values
    return (
        True,
        (
            f"{f.signal_streams} Shared Signals receivers; {sum(d.values())} security events made "
            "in the window: "
            f"{values['delivered']} delivered, {values['pending']} pending retry, {values['failed']} failed.",
        ),
        values,
    )


_COMPUTE: Final = {
    "use_time_decisions": _m_use_time,
    "decisions": _m_decisions,
    "task_lifetimes": _m_lifetimes,
    "standing_grants": _m_standing,
    "revocation_at_end": _m_revocation,
    "reveal_exposure": _m_reveal,
    "leak_redactions": _m_redactions,
    "approvals": _m_approvals,
    "audit_chain": _m_audit,
    "sprawl_scans": _m_scans,
    "agent_identity": _m_identity,
    "dpop_replays": _m_replays,
    "reach_findings": _m_reach,
    "delegations": _m_delegations,
    "tool_governance": _m_tools,
    "secret_inventory": _m_inventory,
    "operator_separation": _m_operators,
    "policy_versions": _m_policy,
    "context_changes": _m_context,
    "revocation_signals": _m_signals,
}
assert set(_COMPUTE) == set(METRICS)


def compute_metrics(facts: Facts) -> dict[str, Metric]:
    result = {}
    for metric_id, compute in _COMPUTE.items():
        evidence, statements, values = compute(facts)
        result[metric_id] = Metric(metric_id, METRICS[metric_id], evidence, statements, values)
    return result
