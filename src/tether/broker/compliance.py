"""The compliance report for auditors and admins (``GET /v1/compliance/report``,
``tether compliance report``): read-only, from this deployment's own store and audit log.

The reads live here; the mapping, the metrics and the rendering are :mod:`tether.evidence.compliance`
(pure). Every read is bounded: audit events of each kind up to :data:`MAX_EVENTS_PER_KIND`, tasks up
to :data:`MAX_TASKS`; a report that stopped at a bound says so (``truncated``).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Final

from tether.audit import MAX_QUERY_LIMIT, AuditFilter, AuditLog
from tether.broker._decisions import agent_entity, secret_entity
from tether.broker.access import authorize
from tether.broker.policies import PolicyService
from tether.broker.reach import ReachService
from tether.clock import Clock
from tether.config import Settings
from tether.domain.agents import AgentRecord
from tether.domain.operators import OperatorRecord, Permission
from tether.domain.secrets import SecretRecord
from tether.domain.tasks import LIVE_STATUSES
from tether.engines import EngineRegistry
from tether.evidence.compliance import (
    ControlMapping,
    EventTally,
    Facts,
    Report,
    TaskTimes,
    build_report,
    load_mapping,
)
from tether.reach import Grid, SecretTarget, compute_reach, group_agents
from tether.reach.findings import parse_window
from tether.store._signals import SignalStore
from tether.store.base import Storage

__all__ = ["MAX_EVENTS_PER_KIND", "MAX_TASKS", "ComplianceService"]

#: Audit events of one kind read for one report at most (then counts are lower bounds).
MAX_EVENTS_PER_KIND: Final = 200_000
#: Tasks read for one report at most (newest ids last: tasks are listed by id).
MAX_TASKS: Final = 20_000
#: Deliveries of one Shared Signals stream read at most (newest first).
MAX_DELIVERIES_PER_STREAM: Final = 1000
#: Ended tasks whose grants are checked one by one for still being usable.
MAX_ENDED_TASKS_CHECKED: Final = 2_000
_PAGE: Final = 500

# kind → (data field to count values of, integer data fields to sum)
_KINDS: Final[dict[str, tuple[str | None, tuple[str, ...]]]] = {
    "grant.activate": ("mode", ()),
    "decision": (None, ()),
    "task.end": ("status", ("grants_revoked", "tasks_ended_count")),
    "task.update": (None, ()),
    "grant.revoke": (None, ("grants_revoked",)),
    "approval.request": (None, ()),
    "approval.decide": ("status", ()),
    "scan.run": (None, ("governed_findings", "ungoverned_findings", "scanned_bytes")),
    "auth.token": (None, ()),
    "auth.failed": (None, ()),
    "delegation": (None, ()),
    "tool.call": (None, ()),
    "mcp.tool.quarantine": (None, ()),
    "egress.redact": (None, ()),
    "tool.redact": (None, ()),
    "policy.deploy": (None, ()),
}


class ComplianceService:
    """Builds compliance reports (permission ``audit.read``: auditors and admins)."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        clock: Clock,
        settings: Settings,
        policies: PolicyService,
        engines: EngineRegistry,
        *,
        mapping: ControlMapping | None = None,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._settings = settings
        self._policies = policies
        self._engines = engines
        self._mapping = mapping

    @property
    def mapping(self) -> ControlMapping:
        if self._mapping is None:
            self._mapping = load_mapping()
        return self._mapping

    async def report(self, actor: OperatorRecord, since: str = "30d") -> Report:
        """The report over the window ``since`` (``30d``, ``12h``; at most 366 days)."""
        await authorize(self._audit, actor, Permission.AUDIT_READ, "compliance:report")
        window = parse_window(since)
        mapping = self.mapping
        now = self._clock.now()
        facts = Facts(
            since=since.strip(),
            window_start=now - window,
            window_end=now,
            trust_domain=self._settings.trust_domain,
            max_task_ttl_seconds=int(self._settings.task_max_ttl_seconds),
        )
        for kind, (by, sums) in _KINDS.items():
            facts.events[kind] = await self._tally(kind, facts.window_start, now, by, sums)
            facts.truncated |= facts.events[kind].capped
        await self._tasks(facts, now)
        await self._secrets_and_reach(facts, actor, now)
        await self._audit_chain(facts)
        await self._identities(facts)
        await self._signals(facts)
        return build_report(mapping, facts, now)

    async def _tally(
        self, kind: str, since: datetime, until: datetime, by: str | None, sums: tuple[str, ...]
    ) -> EventTally:
        tally = EventTally()
        where = AuditFilter(kind=kind, since=since, until=until)
        after = 0
        while True:
            page = await self._audit.query(where, after_seq=after, limit=MAX_QUERY_LIMIT)
            tally.add(page.events, by=by, sums=sums)
            if page.next_after is None:
                return tally
            if tally.count >= MAX_EVENTS_PER_KIND:
                tally.capped = True
                return tally
            after = page.next_after

    async def _tasks(self, facts: Facts, now: datetime) -> None:
        """Tasks opened or ended in the window; the grants of ended ones; live grants now."""
        after: str | None = None
        read = 0
        ended_checked = 0
        live = {status.value for status in LIVE_STATUSES}
        while read < MAX_TASKS:
            page = await self._storage.list_tasks(after=after, limit=_PAGE)
            read += len(page)
            for task in page:
                in_window = task.created_at >= facts.window_start or (
                    task.ended_at is not None and task.ended_at >= facts.window_start
                )
                if not in_window:
                    continue
                facts.tasks.append(
                    TaskTimes(task.status.value, task.created_at, task.expires_at, task.ended_at, task.depth)
                )
                if task.status.value in live and task.expires_at > now:
                    for grant in await self._storage.list_grants(task.id):
                        if grant.revoked_at is None and grant.expires_at > now:
                            facts.live_grants += 1
                            facts.live_grants_unbounded += grant.max_uses is None
                            remaining = int((grant.expires_at - now).total_seconds())
                            facts.live_grant_max_remaining_seconds = max(
                                facts.live_grant_max_remaining_seconds, remaining
                            )
                elif task.ended_at is not None and ended_checked < MAX_ENDED_TASKS_CHECKED:
                    ended_checked += 1
                    for grant in await self._storage.list_grants(task.id):
                        usable = grant.revoked_at is None and grant.expires_at > now
                        facts.ended_grants_live += usable
            if len(page) < _PAGE:
                break
            after = page[-1].id
        else:
            facts.truncated = True
        facts.ended_tasks_checked = ended_checked

    async def _secrets_and_reach(self, facts: Facts, actor: OperatorRecord, now: datetime) -> None:
        secrets: list[SecretRecord] = []
        after: str | None = None
        while True:
            page = await self._storage.list_secrets("", after=after, limit=_PAGE)
            secrets.extend(page)
            if len(page) < _PAGE or len(secrets) >= MAX_TASKS:
                facts.truncated |= len(page) == _PAGE
                break
            after = page[-1].path
        facts.secrets = [
            (
                s.path,
                int(s.metadata.sensitivity),
                s.metadata.rotation_period_seconds,
                s.rotation_due(now),
            )
            for s in secrets
        ]
        facts.policy_active = await self._policies.active_version()
        facts.policy_versions = len(await self._storage.list_policy_sets(limit=1000))
        compiled = await self._policies.active()
        if compiled is None:
            facts.inject_only = []
            return
        agents: list[AgentRecord] = []
        agent_after: str | None = None
        while True:
            agent_page = await self._storage.list_agents(after=agent_after, limit=_PAGE)
            agents.extend(a for a in agent_page if a.disabled_at is None)
            if len(agent_page) < _PAGE or len(agents) >= MAX_TASKS:
                break
            agent_after = agent_page[-1].name
        destinations = await self._storage.list_destinations()
        grid = Grid(
            purposes=tuple(self._settings.task_purposes),
            destinations=tuple(sorted(d.name for d in destinations)),
            max_depth=int(self._settings.max_delegation_depth),
        )
        targets = [
            SecretTarget(secret_entity(s), dynamic_is_reveal=self._engines.for_secret(s.path).reveals_value)
            for s in secrets
        ]
        groups = group_agents(compiled, [(a.name, agent_entity(a)) for a in agents])
        rules = compute_reach(compiled, groups, targets, grid)
        revealable = {
            rule.secret for rule in rules if rule.action == "activate" and "reveal" in rule.values["mode"]
        }
        facts.revealable = sorted(revealable)
        facts.inject_only = sorted(s.path for s in secrets if s.path not in revealable)
        reach = ReachService(
            self._storage, self._audit, self._clock, self._settings, self._policies, self._engines
        )
        found, cut = await reach.findings(actor, facts.since)
        facts.reach_findings = Counter(finding.kind for finding in found)
        facts.reach_available = True
        facts.truncated |= cut

    async def _audit_chain(self, facts: Facts) -> None:
        result = await self._audit.verify()
        if result.checked == 0 and result.ok:
            facts.audit_ok = None
        else:
            facts.audit_ok = result.ok
            facts.audit_verified_to = result.head_seq
            facts.audit_problem = "" if result.ok else f"event {result.first_bad_seq}: {result.detail}"
        checkpoint = await self._audit.latest_checkpoint()
        if checkpoint is not None:
            facts.checkpoint = (checkpoint.seq, checkpoint.time, checkpoint.key_id)

    async def _identities(self, facts: Facts) -> None:
        after: str | None = None
        while True:
            page = await self._storage.list_agents(after=after, limit=_PAGE)
            facts.agents += len(page)
            facts.agents_disabled += sum(1 for a in page if a.disabled_at is not None)
            if len(page) < _PAGE:
                break
            after = page[-1].name
        facts.issuers = len(await self._storage.list_trusted_issuers())
        facts.operators = Counter(op.role.value for op in await self._storage.list_operators() if op.active)

    async def _signals(self, facts: Facts) -> None:
        store = SignalStore(self._storage)
        streams = await store.list_streams()
        facts.signal_streams = len(streams)
        for stream in streams:
            found = await store.list_deliveries(stream.id, limit=MAX_DELIVERIES_PER_STREAM)
            facts.truncated |= len(found) == MAX_DELIVERIES_PER_STREAM
            facts.signal_deliveries.update(d.status for d in found if d.created_at >= facts.window_start)
