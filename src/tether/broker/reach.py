"""Reach for operators (``auditor``, ``admin``): who could use a secret and under which conditions,
what an agent could reach (secrets, egress destinations, MCP tools), and what is live now
(``GET /v1/reach/…``, ``tether reach …``).

The store reads live here; the computation is :mod:`tether.reach` (pure), decided by the active
policy set through Cedar, with contexts of the shape the broker builds. Paths and names only:
never a secret value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from tether.audit import MAX_QUERY_LIMIT, AuditFilter, AuditLog
from tether.broker._decisions import agent_entity, secret_entity
from tether.broker.access import authorize
from tether.broker.policies import PolicyService
from tether.clock import Clock
from tether.config import Settings
from tether.domain.agents import AgentRecord
from tether.domain.destinations import Destination
from tether.domain.operators import OperatorRecord, Permission
from tether.domain.secrets import SecretRecord, validate_path
from tether.domain.tasks import LIVE_STATUSES, Grant, Lease, Task
from tether.engines import EngineRegistry
from tether.errors import InvalidInputError, NotFoundError
from tether.mcp.servers import McpServer, tool_entity
from tether.reach import (
    DestinationRule,
    DestinationTarget,
    Grid,
    ReachRule,
    SecretTarget,
    ToolRule,
    ToolTarget,
    compute_reach,
    compute_tool_reach,
    destination_reach,
    group_agents,
)
from tether.reach.federation import MappedAgent, mapped_agents
from tether.reach.findings import Finding, find, parse_window
from tether.store.base import Storage

__all__ = ["FederatedReach", "LiveReach", "ReachReport", "ReachService"]

#: How many agents, secrets or live tasks one reach answer reads at most (then it says it stopped).
MAX_SCANNED: Final = 10_000
_PAGE: Final = 500
#: How many activation events the findings read from the audit window at most.
MAX_EVENTS_SCANNED: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class LiveReach:
    """What is live now: tasks that declare the secret(s), their usable grants and active leases,
    and the destinations that inject the secret(s)."""

    tasks: tuple[Task, ...] = ()
    grants: tuple[Grant, ...] = ()
    leases: tuple[Lease, ...] = ()
    destinations: tuple[Destination, ...] = ()
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class FederatedReach:
    """A trusted issuer's mapping and the agents of a reach answer its tokens can name (through
    token exchange an agent arrives as itself, so it reaches what the agent reaches)."""

    name: str
    issuer: str
    subject_claim: str
    subject_pattern: str
    agents: tuple[MappedAgent, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "issuer": self.issuer,
            "subject_claim": self.subject_claim,
            "subject_pattern": self.subject_pattern,
            "agents": [agent.to_json() for agent in self.agents],
        }


@dataclass(frozen=True, slots=True)
class ReachReport:
    """A reach answer: the rules (who may do what, under which conditions) and what is live."""

    subject: dict[str, Any]
    policy_version: int | None
    grid: Grid
    rules: tuple[ReachRule, ...]
    live: LiveReach
    agent_names: dict[str, str] = field(default_factory=dict)  # agent id -> name
    truncated: bool = False
    federated: tuple[FederatedReach, ...] = ()
    #: Reach of an agent only (None for a secret's answer): through egress destinations, of tools.
    destinations: tuple[DestinationRule, ...] | None = None
    tools: tuple[ToolRule, ...] | None = None


def callable_tools(servers: Sequence[McpServer]) -> list[ToolTarget]:
    """The tools of ``servers`` that may be called: pinned and not waiting in quarantine."""
    return [
        ToolTarget(tool_entity(server.name, name))
        for server in sorted(servers, key=lambda s: s.name)
        for name in sorted(server.tools)
        if server.usable(name, None) is not None
    ]


class ReachService:
    """Reach of a secret and of an agent (operators with ``audit.read``: auditors and admins)."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        clock: Clock,
        settings: Settings,
        policies: PolicyService,
        engines: EngineRegistry,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._settings = settings
        self._policies = policies
        self._engines = engines

    async def of_secret(self, actor: OperatorRecord, path: str) -> ReachReport:
        """Every agent that could issue or activate ``path``, under which conditions; what is live."""
        await authorize(self._audit, actor, Permission.AUDIT_READ, f"reach:secret:{path[:256]}")
        try:
            validate_path(path)
        except InvalidInputError:
            raise NotFoundError(f"no secret {path[:256]!r}") from None
        record = await self._storage.get_secret(path)
        if record is None or record.deleted:
            raise NotFoundError(f"no secret {path!r}")
        agents, agents_cut = await self._agents()
        destinations = await self._storage.list_destinations()
        grid = self._grid(destinations)
        compiled = await self._policies.active()
        rules: list[ReachRule] = []
        if compiled is not None:
            groups = group_agents(compiled, [(a.name, agent_entity(a)) for a in agents])
            rules = compute_reach(compiled, groups, [self._target(record)], grid)
        live = await self._live({path}, None, destinations)
        reaching = sorted({name for rule in rules for name in rule.agents})
        return ReachReport(
            subject={
                "secret": record.path,
                "sensitivity": int(record.metadata.sensitivity),
                "purposes": sorted(record.metadata.purposes),
                "destinations": sorted(record.metadata.destinations),
            },
            policy_version=await self._policies.active_version() if compiled is not None else None,
            grid=grid,
            rules=tuple(rules),
            live=live,
            agent_names={a.id: a.name for a in agents},
            truncated=agents_cut,
            federated=await self._federated(reaching),
        )

    async def of_agent(self, actor: OperatorRecord, name: str) -> ReachReport:
        """Every secret agent ``name`` could issue or activate, every destination it could send
        through and every MCP tool it could call, under which conditions; what is live."""
        await authorize(self._audit, actor, Permission.AUDIT_READ, f"reach:agent:{name[:128]}")
        agent = await self._storage.get_agent_by_name(name) if 0 < len(name) <= 256 else None
        if agent is None:
            raise NotFoundError(f"no agent {name[:256]!r}")
        secrets, secrets_cut = await self._secrets()
        destinations = await self._storage.list_destinations()
        grid = self._grid(destinations)
        compiled = await self._policies.active()
        servers = await self._storage.list_mcp_servers()
        rules: list[ReachRule] = []
        through: list[DestinationRule] = []
        tools: list[ToolRule] = []
        if compiled is not None and agent.disabled_at is None:
            named = [(agent.name, agent_entity(agent))]
            groups = group_agents(compiled, named)
            rules = compute_reach(compiled, groups, [self._target(s) for s in secrets], grid)
            # A destination's secret past the scan limit is still decided (for the destination only).
            listed = {s.path for s in secrets}
            extra = []
            for path in sorted({d.secret for d in destinations} - listed):
                record = await self._storage.get_secret(path)
                if record is not None and not record.deleted:
                    extra.append(self._target(record))
            through = destination_reach(
                [*rules, *compute_reach(compiled, groups, extra, grid)],
                [
                    DestinationTarget(d.name, d.secret, tuple(sorted(d.methods)), d.path_prefixes)
                    for d in sorted(destinations, key=lambda d: d.name)
                ],
                grid,
            )
            tool_groups = group_agents(compiled, named, actions=("call_tool",))
            tools = compute_tool_reach(compiled, tool_groups, callable_tools(servers), grid)
        reachable = {rule.secret for rule in rules}
        live = await self._live(None, agent, [d for d in destinations if d.secret in reachable])
        return ReachReport(
            subject={
                "agent": agent.name,
                "id": agent.id,
                "disabled": agent.disabled_at is not None,
                "attributes": {
                    "team": agent.attributes.team,
                    "environment": agent.attributes.environment,
                    "owner": agent.attributes.owner,
                    "labels": sorted(agent.attributes.labels),
                },
            },
            policy_version=await self._policies.active_version() if compiled is not None else None,
            grid=grid,
            rules=tuple(rules),
            live=live,
            agent_names={agent.id: agent.name},
            truncated=secrets_cut,
            federated=await self._federated([agent.name] if agent.disabled_at is None else []),
            destinations=tuple(through),
            tools=tuple(tools),
        )

    async def findings(self, actor: OperatorRecord, since: str) -> tuple[list[Finding], bool]:
        """Standing-privilege findings over every agent and secret (:mod:`tether.reach.findings`),
        with the audit window ``since`` (``30d``); True when a scan stopped at its limit."""
        await authorize(self._audit, actor, Permission.AUDIT_READ, "reach:findings")
        window = parse_window(since)
        now = self._clock.now()
        agents, agents_cut = await self._agents()
        secrets, secrets_cut = await self._secrets()
        destinations = await self._storage.list_destinations()
        compiled = await self._policies.active()
        rules: list[ReachRule] = []
        if compiled is not None:
            groups = group_agents(compiled, [(a.name, agent_entity(a)) for a in agents])
            rules = compute_reach(
                compiled, groups, [self._target(s) for s in secrets], self._grid(destinations)
            )
        names = {a.id: a.name for a in agents}
        used, used_cut = await self._used(now - window, names)
        live = await self._live(None, None, destinations)
        injected_by: dict[str, list[str]] = {}
        for destination in destinations:
            injected_by.setdefault(destination.secret, []).append(destination.name)
        found = find(
            rules,
            {s.path: int(s.metadata.sensitivity) for s in secrets},
            injected_by,
            used,
            live.grants,
            live.tasks,
            names,
            max_task_ttl_seconds=int(self._settings.task_max_ttl_seconds),
            window=since.strip(),
            now=now,
        )
        return found, agents_cut or secrets_cut or used_cut or live.truncated

    async def _federated(self, names: Sequence[str]) -> tuple[FederatedReach, ...]:
        """Each trusted issuer whose mapping can name one of ``names``, with those agents."""
        if not names:
            return ()
        found = []
        for issuer in await self._storage.list_trusted_issuers():
            agents = mapped_agents(issuer.subject_pattern, names)
            if agents:
                found.append(
                    FederatedReach(
                        issuer.name,
                        issuer.issuer,
                        issuer.subject_claim,
                        issuer.subject_pattern,
                        tuple(agents),
                    )
                )
        return tuple(found)

    async def _used(self, since: datetime, names: dict[str, str]) -> tuple[set[tuple[str, str]], bool]:
        """``(agent name, secret path)`` of every allowed activation since ``since``."""
        used: set[tuple[str, str]] = set()
        where = AuditFilter(kind="grant.activate", allowed=True, since=since)
        after, read = 0, 0
        while read < MAX_EVENTS_SCANNED:
            page = await self._audit.query(where, after_seq=after, limit=MAX_QUERY_LIMIT)
            read += len(page.events)
            for event in page.events:
                if event.resource is not None and event.resource.startswith("secret:"):
                    used.add(
                        (names.get(event.actor.id, event.actor.id), event.resource.removeprefix("secret:"))
                    )
            if page.next_after is None:
                return used, False
            after = page.next_after
        return used, True

    def _grid(self, destinations: Sequence[Destination]) -> Grid:
        return Grid(
            purposes=tuple(self._settings.task_purposes),
            destinations=tuple(sorted(d.name for d in destinations)),
            max_depth=int(self._settings.max_delegation_depth),
        )

    def _target(self, record: SecretRecord) -> SecretTarget:
        reveals = self._engines.for_secret(record.path).reveals_value
        return SecretTarget(secret_entity(record), dynamic_is_reveal=reveals)

    async def _agents(self) -> tuple[list[AgentRecord], bool]:
        """Enabled agents (a disabled agent cannot authenticate, so it reaches nothing)."""
        found: list[AgentRecord] = []
        after: str | None = None
        while len(found) < MAX_SCANNED:
            page = await self._storage.list_agents(after=after, limit=_PAGE)
            found.extend(a for a in page if a.disabled_at is None)
            if len(page) < _PAGE:
                return found, False
            after = page[-1].name
        return found[:MAX_SCANNED], True

    async def _secrets(self) -> tuple[list[SecretRecord], bool]:
        found: list[SecretRecord] = []
        after: str | None = None
        while len(found) < MAX_SCANNED:
            page = await self._storage.list_secrets("", after=after, limit=_PAGE)
            found.extend(page)
            if len(page) < _PAGE:
                return found, False
            after = page[-1].path
        return found[:MAX_SCANNED], True

    async def _live(
        self, paths: set[str] | None, agent: AgentRecord | None, destinations: Sequence[Destination]
    ) -> LiveReach:
        """Live tasks (of ``agent``, or declaring one of ``paths``; every live task when neither is
        given), their usable grants (for ``paths`` when given) and active leases, and the
        destinations that inject ``paths``."""
        now = self._clock.now()
        tasks: list[Task] = []
        after: str | None = None
        truncated = False
        statuses = tuple(s.value for s in LIVE_STATUSES)
        while True:
            page = await self._storage.list_tasks(
                agent_id=None if agent is None else agent.id, statuses=statuses, after=after, limit=_PAGE
            )
            for task in page:
                if task.effective_status(now) not in LIVE_STATUSES:
                    continue
                if paths is None or paths & set(task.intent.secrets):
                    tasks.append(task)
            if len(page) < _PAGE:
                break
            if len(tasks) >= MAX_SCANNED:
                truncated = True
                break
            after = page[-1].id
        grants: list[Grant] = []
        leases: list[Lease] = []
        for task in tasks:
            for grant in await self._storage.list_grants(task.id):
                if grant.unusable(now) is not None:
                    continue
                if paths is not None and grant.secret not in paths:
                    continue
                grants.append(grant)
            usable = {g.id for g in grants if g.task_id == task.id}
            if usable:
                listed = await self._storage.list_leases(now, state="active", task_id=task.id, limit=1000)
                leases.extend(lease for lease in listed if lease.grant_id in usable)
        injecting = tuple(d for d in destinations if paths is None or d.secret in paths)
        return LiveReach(tuple(tasks), tuple(grants), tuple(leases), injecting, truncated)


def live_to_json(live: LiveReach, names: dict[str, str], now: datetime) -> dict[str, Any]:
    """The live part as JSON: ids, names, paths, times and counts; never a value."""

    def agent(agent_id: str) -> str:
        return names.get(agent_id, agent_id)

    return {
        "tasks": [
            {
                "id": t.id,
                "agent": agent(t.agent_id),
                "status": t.effective_status(now).value,
                "purpose": t.intent.purpose,
                "secrets": sorted(t.intent.secrets),
                "depth": t.depth,
                "expires_at": t.expires_at.isoformat(),
            }
            for t in live.tasks
        ],
        "grants": [
            {
                "id": g.id,
                "agent": agent(g.agent_id),
                "task_id": g.task_id,
                "secret": g.secret,
                "destination": g.destination,
                "mode": g.mode.value,
                "expires_at": g.expires_at.isoformat(),
                "uses_left": g.uses_left,
            }
            for g in live.grants
        ],
        "leases": [
            {
                "id": lease.id,
                "task_id": lease.task_id,
                "grant_id": lease.grant_id,
                "engine": lease.engine,
                "expires_at": lease.expires_at.isoformat(),
            }
            for lease in live.leases
        ],
        "destinations": [
            {"name": d.name, "secret": d.secret, "base_url": d.base_url} for d in live.destinations
        ],
        "truncated": live.truncated,
    }


def report_to_json(report: ReachReport, now: datetime) -> dict[str, Any]:
    """A reach answer as the API returns it; an agent's answer adds ``destination_reach`` and
    ``tool_reach``."""
    answer = {
        **report.subject,
        "policy_version": report.policy_version,
        "grid": report.grid.to_json(),
        "reach": [rule.to_json() for rule in report.rules],
        "live": live_to_json(report.live, report.agent_names, now),
        "federated": [mapping.to_json() for mapping in report.federated],
        "truncated": report.truncated,
    }
    if report.destinations is not None:
        answer["destination_reach"] = [rule.to_json() for rule in report.destinations]
    if report.tools is not None:
        answer["tool_reach"] = [rule.to_json() for rule in report.tools]
    return answer
