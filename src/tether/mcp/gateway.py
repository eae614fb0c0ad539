"""The MCP gateway's governed tool path (agents), over the registry of :mod:`tether.mcp.registry`.

``tools/list`` shows the tools the task declared (``server/tool`` or ``server/*``) that are pinned,
not quarantined, and that policy would allow (``call_tool``). ``tools/call`` is an activation: it
reads the task, the active policy version and the server's record (one query), decides
``call_tool`` against the live task with the argument *shape* in the context, opens the task's
upstream if it is not open yet (recorded first: ``mcp.session.open``), refuses arguments that carry
an injected secret, checks the live definition against its pin and the arguments against the
pinned input schema, records one ``tool.call`` event (with the proof's single use) and forwards.
What comes back is redacted; a redaction is recorded (``tool.redact``) before the answer goes out.
Every refusal is a ``decision`` event. Any error on this path is a refusal (fail closed).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import contextvars
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema  # type: ignore[import-untyped]
import jsonschema.exceptions  # type: ignore[import-untyped]
from mcp.shared.exceptions import MCPError
from mcp_types import SERVER_INFO_META_KEY

from tether.audit import Actor
from tether.broker._decisions import DecisionPoint, agent_entity, summary
from tether.broker.auth import AgentCaller
from tether.domain.inputs import DecisionInputs
from tether.domain.tasks import Task, TaskStatus, decision_context, validate_id
from tether.egress.leakguard import LeakGuard
from tether.errors import (
    DeniedError,
    InvalidInputError,
    NotFoundError,
    TetherError,
)
from tether.mcp.guard import SecretGuard
from tether.mcp.registry import McpRegistry, registration_data
from tether.mcp.servers import (
    McpServer,
    PinnedTool,
    argument_shape,
    cedar_tool_id,
    declared,
    front_name,
    split_front_name,
    tool_entity,
    validate_server_name,
)
from tether.mcp.upstreams import (
    ProgressSink,
    UpstreamError,
    UpstreamPool,
    UpstreamSession,
    UpstreamSpec,
)
from tether.store.base import EffectFailedError, RememberJti

if TYPE_CHECKING:
    from mcp_types import CallToolResult

    from tether.broker import Broker

__all__ = ["DENIED", "UPSTREAM_FAILED", "CallOutcome", "McpGateway", "ToolRefusedError"]

log = logging.getLogger(__name__)

#: Receives an upstream's log notification (redacted, as JSON) during a call.
LogForward = Callable[[dict[str, Any]], Awaitable[None]]

#: JSON-RPC error codes of the gateway (server-defined range): a refusal and an upstream failure.
DENIED = -32001
UPSTREAM_FAILED = -32002
#: JSON-RPC's range of implementation-defined server errors, -32099 to -32000.
SERVER_ERROR_CODES = range(-32099, -31999)
#: How often the watch loop looks for ended tasks with open upstreams.
WATCH_INTERVAL_SECONDS = 0.5
MAX_VALIDATORS = 512


def _owned(caller: AgentCaller, task_id: str, task: Task | None) -> Task:
    """``task`` if it is the caller's; another agent's task is not found, as a missing one (no probing)."""
    if task is None or task.agent_id != caller.agent.id:
        raise NotFoundError(f"no task {task_id}")
    return task


class ToolRefusedError(DeniedError):
    """A tool call refused before it reached the upstream (recorded)."""


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """A tool's answer as the agent gets it (redacted), and how many redactions were made."""

    result: dict[str, Any]
    redactions: int


class McpGateway:
    """One per app (per process): the governed tool path, the open upstreams and the registry."""

    def __init__(self, broker: Broker, pool: UpstreamPool | None = None) -> None:
        self._broker = broker
        self._storage = broker.storage
        self._audit = broker.audit
        self._clock = broker.clock
        self._decisions = DecisionPoint(
            broker.storage,
            broker.audit,
            broker.clock,
            broker.settings,
            broker.policies,
            broker.engines,
            refuse_replay=broker.auth.refuse_replay,
        )
        self.pool = pool or UpstreamPool()
        self.registry = McpRegistry(broker, self.pool)
        self._validators: dict[str, Any] = {}
        self._uses: Counter[tuple[str, str]] = Counter()
        self._watch: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start_watch(self) -> None:
        """Start (once) the loop that closes the upstreams of tasks that ended."""
        if self._watch is None or self._watch.done():
            # A context of its own: not the request's that happened to start it (its request id
            # in the logs, its span).
            self._watch = asyncio.create_task(
                self._watch_loop(), name="mcp-gateway-watch", context=contextvars.Context()
            )

    async def aclose(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
            self._watch = None
        await self.pool.aclose()

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
            try:
                await self.close_ended()
            except TetherError as exc:  # the store is down: try again next round
                log.warning("MCP gateway: checking tasks failed (%s)", type(exc).__name__)

    async def close_ended(self) -> list[str]:
        """Close the upstreams of every task (with one open here) that is no longer active."""
        now = self._clock.now()
        closed = []
        for task_id in sorted(self.pool.tasks()):
            task = await self._storage.get_task(task_id)
            if task is None or task.effective_status(now) is not TaskStatus.ACTIVE:
                await self._close_task(task_id, task, "the task ended")
                closed.append(task_id)
        return closed

    async def _close_task(self, task_id: str, task: Task | None, reason: str) -> None:
        names = await self.pool.close_task(task_id)
        for key in [key for key in self._uses if key[0] == task_id]:
            del self._uses[key]
        if not names:
            return
        status = "gone" if task is None else task.effective_status(self._clock.now()).value
        with contextlib.suppress(TetherError):  # closing only narrows access; it stands regardless
            await self._audit.record(
                "mcp.session.close",
                self._audit.actor,
                resource=f"task:{task_id}",
                task_id=None if task is None else task.id,
                chain=() if task is None else task.chain,
                reason=reason,
                data={"servers": sorted(names), "status": status},
            )

    async def spend_proof(self, replay: RememberJti) -> None:
        """Record a deferred proof's use on its own (a call refused before anything was recorded)."""
        await self._decisions.spend_proof(replay)

    # -- agents: tools/list ----------------------------------------------------------------
    async def _task(self, caller: AgentCaller, task_id: str) -> Task:
        validate_id(task_id, "tsk", "Tether-Task")
        return _owned(caller, task_id, await self._storage.get_task(task_id))

    async def list_tools(self, caller: AgentCaller, task_id: str) -> builtins.list[dict[str, Any]]:
        """The tools this task may call now, as MCP ``Tool`` objects with gateway names."""
        task = await self._task(caller, task_id)
        now = self._clock.now()
        if task.effective_status(now) is not TaskStatus.ACTIVE:
            return []
        wanted = {item.split("/", 1)[0] for item in task.intent.tools if "/" in item}
        version = await self._decisions.active_policy_version()
        principal = agent_entity(caller.agent)
        listed: builtins.list[dict[str, Any]] = []
        for name in sorted(wanted):
            try:
                record = await self.registry.server(validate_server_name(name))
            except InvalidInputError:
                continue
            if record is None:
                continue
            for tool_name, pinned in sorted(record.tools.items()):
                if (
                    not declared(task.intent.tools, record.name, tool_name)
                    or record.usable(tool_name, None) is None
                ):
                    continue
                context = self._context(task, record.name, tool_name, None)
                decision = await self._decisions.decide(
                    "call_tool",
                    principal,
                    tool_entity(record.name, tool_name),
                    context,
                    policy_version=version,
                )
                if decision.allowed or decision.missing == ("approval",):
                    listed.append({**pinned.definition, "name": front_name(record.name, tool_name)})
        return listed

    def _context(self, task: Task, server: str, tool: str, shape: list[str] | None) -> dict[str, Any]:
        """The decision's context; ``shape``: the call's :func:`argument_shape` (a listing: None)."""
        context = decision_context(
            task,
            self._clock.now(),
            mode="call",
            destination=f"mcp:{server}",
            method="tools/call",
            path=cedar_tool_id(server, tool),
            uses=self._uses[(task.id, cedar_tool_id(server, tool))],
        )
        if shape is not None:
            context["arguments"] = shape
        return context

    # -- agents: tools/call ----------------------------------------------------------------
    async def call_tool(
        self,
        caller: AgentCaller,
        task_id: str,
        name: str,
        arguments: Mapping[str, Any] | None,
        *,
        progress: ProgressSink | None = None,
        on_log: LogForward | None = None,
    ) -> CallOutcome:
        """Decide, record and forward one tool call; the answer redacted.

        Raises:
            NotFoundError: not the caller's task.
            InvalidInputError: an unknown tool name, or arguments that do not fit the pinned schema
                (recorded).
            DeniedError: refused (recorded): the task is not active, the tool is not declared, is
                quarantined, policy denies it, or the arguments carry an injected secret.
            UpstreamError: the upstream failed, timed out or was closed (the task ended).
            MCPError: the upstream answered with an error (its message redacted).
        """
        args = dict(arguments or {})
        try:
            server_name, tool = split_front_name(name)
        except InvalidInputError as exc:
            task = await self._task(caller, task_id)
            raise await self._refuse(caller, task, f"tool:{name[:140]}", str(exc), invalid=True) from None
        # One read: the task, the active policy version and the server's record as they are now.
        validate_id(task_id, "tsk", "Tether-Task")
        state = await self._storage.tool_call_state(task_id, server_name)
        task = _owned(caller, task_id, None if state is None else state.task)
        resource = f"tool:{cedar_tool_id(server_name, tool)}"
        now = self._clock.now()
        status = task.effective_status(now)
        if status is not TaskStatus.ACTIVE:
            await self._close_task(task.id, task, f"the task is {status.value}")
            raise await self._refuse(caller, task, resource, f"task is {status.value}")
        assert state is not None  # _owned refused a missing task
        record = self.registry.seen(server_name, state.server)
        if record is None or (tool not in record.tools and tool not in record.quarantined):
            raise await self._refuse(caller, task, resource, f"unknown tool {name[:140]!r}", invalid=True)
        if not declared(task.intent.tools, server_name, tool):
            raise await self._refuse(caller, task, resource, "the task did not declare this tool")
        if record.usable(tool, None) is None:
            raise await self._refuse(caller, task, resource, "the tool's definition is quarantined")
        entity = tool_entity(server_name, tool)
        shape = argument_shape(args)  # names and types, never values: the decision's and the event's
        decision, inputs = await self._decisions.decide_recorded(
            "call_tool",
            agent_entity(caller.agent),
            entity,
            self._context(task, server_name, tool, shape),
            policy_version=state.policy_version,
        )
        decision, approval = await self._decisions.allowed_or_refuse(
            decision,
            task,
            "call_tool",
            entity,
            now,
            {"tool": cedar_tool_id(server_name, tool)},
            agent_id=caller.agent.id,
            label=resource,
            denied="policy denies this tool call",
            caller=caller,
            inputs=inputs,
        )
        if approval is not None:
            inputs = inputs.approved()
        session = await self._session(caller, task, record)
        if self._task_guard(task.id).holds_secret(args):
            raise await self._refuse(
                caller, task, resource, "the arguments carry a governed secret value (exfiltration refused)"
            )
        pinned = record.usable(tool, session.live.get(tool))
        if pinned is None:
            live = session.live.get(tool)
            if live is not None and live.sha256 != record.tools[tool].sha256:
                await self.registry.quarantine(record, record.drift([live]), Actor.agent(caller.agent.id))
            raise await self._refuse(caller, task, resource, "the tool's definition changed: quarantined")
        problem = self._invalid_arguments(pinned, args)
        if problem is not None:
            raise await self._refuse(caller, task, resource, problem, invalid=True)
        await self._record_call(
            caller, task, resource, pinned, shape, decision, approval_id=approval, inputs=inputs
        )
        key = (task.id, cedar_tool_id(server_name, tool))
        self._uses[key] += 1
        return await self._forward(caller, task, session, resource, tool, args, progress, on_log)

    async def _session(self, caller: AgentCaller, task: Task, record: McpServer) -> UpstreamSession:
        async def open_spec() -> UpstreamSpec:
            self.start_watch()  # whatever path the request took: an open session is watched
            await self._audit.record(
                "mcp.session.open",
                Actor.agent(caller.agent.id),
                resource=f"mcp_server:{record.name}",
                task_id=task.id,
                chain=task.chain,
                data=registration_data(record),
            )
            return await self.registry.spec(record)

        session, opened = await self.pool.session(task.id, record.name, open_spec)
        if opened:
            drift = record.drift(session.live.values())
            if drift:
                await self.registry.quarantine(record, drift, Actor.agent(caller.agent.id))
        return session

    def _task_guard(self, task_id: str) -> SecretGuard:
        guards: builtins.list[LeakGuard] = []
        for server in self.pool.names_of(task_id):
            session = self.pool.get(task_id, server)
            if session is not None:
                guards.extend(session.guard.guards)
        return SecretGuard(tuple(guards))

    def _invalid_arguments(self, pinned: PinnedTool, args: Mapping[str, Any]) -> str | None:
        try:
            # What cannot be sent as UTF-8 JSON (a lone surrogate) would fail the upstream's whole
            # session when the transport serializes it; refused here, for this call alone.
            json.dumps(args, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, ValueError, TypeError):
            return "the arguments cannot be sent as UTF-8 JSON text (a lone surrogate?)"
        validator = self._validators.get(pinned.sha256)
        if validator is None:
            schema = dict(pinned.input_schema)
            try:
                cls = jsonschema.validators.validator_for(schema)
                cls.check_schema(schema)
                validator = cls(schema)
            except jsonschema.exceptions.SchemaError:
                return "the tool's pinned input schema is not a valid JSON Schema"
            if len(self._validators) >= MAX_VALIDATORS:
                self._validators.clear()
            self._validators[pinned.sha256] = validator
        try:
            if validator.is_valid(args):  # the common case, without collecting errors
                return None
            error = jsonschema.exceptions.best_match(validator.iter_errors(dict(args)))
        except Exception:  # noqa: BLE001 - a schema that breaks the validator: refuse
            return "the arguments cannot be checked against the tool's input schema"
        if error is None:
            return None
        where = "/".join(str(part) for part in error.absolute_path)[:100] or "(arguments)"
        return f"the arguments do not match the tool's input schema at {where} ({error.validator})"

    async def _record_call(
        self,
        caller: AgentCaller,
        task: Task,
        resource: str,
        pinned: PinnedTool,
        shape: list[str],
        decision: Any,
        *,
        approval_id: Any,
        inputs: DecisionInputs,
    ) -> None:
        """Record the call (its decision, with the inputs that let policy replay make it again)
        and the proof's single use, in one write."""
        effects = (
            *(() if caller.replay is None else (caller.replay,)),
            *self._decisions.input_effects(inputs),
        )
        try:
            await self._audit.record(
                "tool.call",
                Actor.agent(caller.agent.id),
                resource=resource,
                task_id=task.id,
                chain=task.chain,
                decision=summary(decision),
                data={
                    "arguments": shape,
                    "definition_sha256": pinned.sha256,
                    **({"approval_id": approval_id.id} if approval_id is not None else {}),
                    **inputs.event_data(),
                },
                effects=effects,
            )
        except EffectFailedError as exc:
            if any(isinstance(effect, RememberJti) for effect in exc.failed.values()):
                raise await self._decisions.replayed(caller, f"tools/call {resource}") from None
            raise
        self._decisions.inputs_recorded(inputs)

    async def _forward(
        self,
        caller: AgentCaller,
        task: Task,
        session: UpstreamSession,
        resource: str,
        tool: str,
        args: dict[str, Any],
        progress: ProgressSink | None,
        on_log: LogForward | None,
    ) -> CallOutcome:
        guard = self._task_guard(task.id)
        redactions = 0

        sink = progress

        async def guarded_progress(progress: float, total: float | None, message: str | None) -> None:
            nonlocal redactions
            if sink is None:
                return
            if message is not None:
                message, count = guard.redact_text(message)
                redactions += count
            await sink(progress, total, message)

        async def guarded_log(params: Any) -> None:
            nonlocal redactions
            if on_log is None:
                return
            data, count = guard.redact(params.model_dump(mode="json", by_alias=True, exclude_none=True))
            redactions += count
            await on_log(data)

        try:
            # A sink that nobody asked for is not passed on: the upstream is then not asked for
            # log notifications, nor given a progress token.
            result: CallToolResult = await session.call_tool(
                tool,
                args,
                progress=None if progress is None else guarded_progress,
                on_log=None if on_log is None else guarded_log,
            )
        except UpstreamError:
            if session.take_retirement():  # it died: the next call opens a new one
                with contextlib.suppress(TetherError):  # recording it only informs
                    await self._audit.record(
                        "mcp.session.close",
                        self._audit.actor,
                        resource=f"task:{task.id}",
                        task_id=task.id,
                        chain=task.chain,
                        reason="the upstream session died",
                        data={"servers": [session.name], "status": "active"},
                    )
            raise
        except MCPError as exc:
            message, count = guard.redact_text(exc.error.message)
            data, in_data = guard.redact(exc.error.data) if exc.error.data is not None else (None, 0)
            redactions += count + in_data
            await self._record_redactions(caller, task, resource, redactions, "error")
            # An upstream's own error keeps its code unless the code is one of the server-defined
            # range, whose codes mean something to the agent's client: Tether's refusal (-32001),
            # and MCP's own (URL elicitation required, -32042, which would hand the agent a URL the
            # upstream chose; the reserved -32020..-32022). There it is the upstream having failed.
            code = UPSTREAM_FAILED if exc.error.code in SERVER_ERROR_CODES else exc.error.code
            raise MCPError(code, message[:1000], data) from None
        # A model's dump: every field the protocol requires is there (the front hands this dict to
        # the SDK's kernel, which validates it as it serializes).
        body = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        meta = body.get("_meta")
        if isinstance(meta, dict) and SERVER_INFO_META_KEY in meta:
            # The upstream's name for itself is not the gateway's: the SDK stamps Tether's own.
            del meta[SERVER_INFO_META_KEY]
            if not meta:
                del body["_meta"]
        clean, count = guard.redact(body)
        redactions += count
        await self._record_redactions(caller, task, resource, redactions, "result")
        return CallOutcome(result=clean, redactions=redactions)

    async def _record_redactions(
        self, caller: AgentCaller, task: Task, resource: str, count: int, where: str
    ) -> None:
        if not count:
            return
        await self._audit.record(
            "tool.redact",
            Actor.agent(caller.agent.id),
            resource=resource,
            task_id=task.id,
            chain=task.chain,
            reason="the upstream's answer held an injected secret (reflection or exfiltration attempt)",
            data={"count": count, "in": where},
        )
        log.warning(
            "MCP gateway redacted %d occurrence(s) of an injected secret (%s, task %s)",
            count,
            resource,
            task.id,
        )

    async def _refuse(
        self, caller: AgentCaller, task: Task, resource: str, why: str, *, invalid: bool = False
    ) -> TetherError:
        error = await self._decisions.refuse(caller.agent.id, resource, task, why, caller=caller)
        if invalid and isinstance(error, DeniedError):
            return InvalidInputError(why, field="arguments")
        return error
