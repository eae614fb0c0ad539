"""The MCP gateway's upstream registry (operators), and the records the tool path reads.

An operator registers an upstream; Tether opens it once with its secrets, lists its tools and pins
each definition (:mod:`tether.mcp.servers`). ``check`` opens it again and quarantines what changed;
``approve`` pins quarantined definitions. Operators need ``destination.write`` to change the
registry and ``destination.read`` to read it (an upstream is a destination for tools). The gateway
(:mod:`tether.mcp.gateway`) quarantines drift it sees during a task through :meth:`McpRegistry.quarantine`
and opens upstreams with what :meth:`McpRegistry.spec` decrypts.
"""

from __future__ import annotations

import builtins
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tether.audit import Actor
from tether.broker.access import authorize, operator_actor, record_failure
from tether.domain.destinations import Injection
from tether.domain.operators import OperatorRecord, Permission
from tether.errors import ConflictError, InvalidInputError, NotFoundError, TetherError
from tether.mcp.guard import SecretGuard
from tether.mcp.servers import (
    Drift,
    McpServer,
    PinnedTool,
    UpstreamKind,
    split_front_name,
    validate_server_name,
)
from tether.mcp.upstreams import UpstreamError, UpstreamPool, UpstreamSession, UpstreamSpec

if TYPE_CHECKING:
    from tether.broker import Broker

__all__ = ["MAX_REMEMBERED_SERVERS", "McpRegistry", "registration_data"]

#: Registry records remembered for :meth:`McpRegistry.pinned_input_schema` (the last one read per
#: server; never used to decide: every call reads its server's record with its task).
MAX_REMEMBERED_SERVERS = 1024


class McpRegistry:
    """One per gateway: the registry's operations, and the records this process read lately."""

    def __init__(self, broker: Broker, pool: UpstreamPool) -> None:
        self._broker = broker
        self._storage = broker.storage
        self._audit = broker.audit
        self._clock = broker.clock
        self._pool = pool
        self._servers: dict[str, McpServer] = {}

    # -- the records the tool path reads ---------------------------------------------------
    async def server(self, name: str) -> McpServer | None:
        """The record ``name``, read now (remembered for :meth:`pinned_input_schema`)."""
        return self.seen(name, await self._storage.get_mcp_server(name))

    def seen(self, name: str, record: McpServer | None) -> McpServer | None:
        """Remember ``record`` as the latest read of ``name`` (forget it when None); returns it."""
        if record is None:
            self._servers.pop(name, None)
            return None
        if len(self._servers) >= MAX_REMEMBERED_SERVERS and name not in self._servers:
            self._servers.clear()
        self._servers[name] = record
        return record

    def pinned_input_schema(self, name: str) -> Mapping[str, Any] | None:
        """The pinned input schema of the tool ``name`` (``server__tool``) from the registry
        records this process read lately; None if there is none (no I/O: the SDK asks this
        synchronously, to check a request's ``Mcp-Param-*`` headers, before the call is decided).
        """
        try:
            server, tool = split_front_name(name)
        except InvalidInputError:
            return None
        record = self._servers.get(server)
        pinned = None if record is None else record.tools.get(tool)
        return None if pinned is None else pinned.input_schema

    def forget(self, name: str) -> None:
        """Drop what was remembered of ``name`` (it is about to change)."""
        self._servers.pop(name, None)

    # -- operators -------------------------------------------------------------------------
    async def add(
        self,
        actor: OperatorRecord,
        *,
        name: str,
        command: str | None = None,
        args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        url: str | None = None,
        secret: str | None = None,
        inject: Injection | None = None,
        timeout_seconds: int = 30,
    ) -> McpServer:
        """Register an upstream: open it once (with its secrets), pin every tool it lists."""
        record = McpServer(
            name=name,
            kind=UpstreamKind.STDIO if command is not None else UpstreamKind.HTTP,
            created_at=self._clock.now(),
            created_by=actor.name,
            command=command,
            args=tuple(args),
            env=dict(env or {}),
            url=url,
            secret=secret,
            inject=inject,
            timeout_seconds=timeout_seconds,
        )
        resource = f"mcp_server:{record.name}"
        await authorize(self._audit, actor, Permission.DESTINATION_WRITE, resource)
        for path in record.secrets:
            if await self._storage.get_secret(path) is None:
                raise NotFoundError(f"no secret {path!r}: write it before giving it to an MCP server")
        if await self._storage.get_mcp_server(record.name) is not None:
            raise ConflictError(f"an MCP server named {record.name!r} already exists")
        live = await self._probe(record)
        record = McpServer(**{**_fields(record), "tools": live})
        data = {
            **registration_data(record),
            "tools": {tool.name: tool.sha256 for tool in live.values()},
        }
        await self._audit.record("mcp.server.add", operator_actor(actor), resource=resource, data=data)
        try:
            self.forget(record.name)
            await self._storage.put_mcp_server(record)
        except TetherError as exc:
            await record_failure(self._audit, "mcp.server.add", actor, resource, exc)
            raise
        return record

    async def _probe(self, record: McpServer) -> dict[str, PinnedTool]:
        """Open ``record`` once, outside any task, and list its tools."""
        spec = await self.spec(record)
        session = UpstreamSession("registration", spec)
        try:
            await session.start()
            return dict(session.live)
        except UpstreamError as exc:
            raise InvalidInputError(f"cannot list the upstream's tools: {exc}", field="name") from None
        finally:
            await session.close()

    async def list(self, actor: OperatorRecord) -> builtins.list[McpServer]:
        await authorize(self._audit, actor, Permission.DESTINATION_READ, "mcp_server:*")
        return await self._storage.list_mcp_servers()

    async def _authorized(self, actor: OperatorRecord, name: str, permission: Permission) -> McpServer:
        """The record ``name`` once ``actor`` holds ``permission`` on it (checked and recorded)."""
        validate_server_name(name)
        await authorize(self._audit, actor, permission, f"mcp_server:{name}")
        record = await self._storage.get_mcp_server(name)
        if record is None:
            raise NotFoundError(f"no MCP server {name!r}")
        return record

    async def show(self, actor: OperatorRecord, name: str) -> McpServer:
        return await self._authorized(actor, name, Permission.DESTINATION_READ)

    async def remove(self, actor: OperatorRecord, name: str) -> None:
        record = await self._authorized(actor, name, Permission.DESTINATION_WRITE)
        await self._audit.record(
            "mcp.server.remove",
            operator_actor(actor),
            resource=f"mcp_server:{name}",
            data=registration_data(record),
        )
        self.forget(name)
        if not await self._storage.delete_mcp_server(name):
            raise NotFoundError(f"no MCP server {name!r}")
        await self._pool.close_server(name)

    async def check(self, actor: OperatorRecord, name: str) -> McpServer:
        """Open the upstream now and quarantine every definition that differs from its pin."""
        record = await self.show(actor, name)
        await authorize(self._audit, actor, Permission.DESTINATION_WRITE, f"mcp_server:{name}")
        live = await self._probe(record)
        return await self.quarantine(record, record.drift(live.values()), operator_actor(actor))

    async def approve(
        self, actor: OperatorRecord, name: str, tools: Iterable[str] | None = None
    ) -> McpServer:
        """Pin the quarantined definitions ``tools`` (all if None)."""
        record = await self._authorized(actor, name, Permission.DESTINATION_WRITE)
        approved = record.approve(None if tools is None else list(tools))
        chosen = sorted(set(record.quarantined) - set(approved.quarantined))
        await self._audit.record(
            "mcp.server.approve",
            operator_actor(actor),
            resource=f"mcp_server:{name}",
            data={"tools": {tool: record.quarantined[tool].sha256 for tool in chosen}},
        )
        self.forget(name)
        if not await self._storage.replace_mcp_server(approved, expected_version=record.version):
            raise ConflictError(f"MCP server {name!r} changed meanwhile; look at it again")
        return approved

    async def quarantine(self, record: McpServer, drift: Drift, actor: Actor) -> McpServer:
        """Quarantine what ``drift`` found and is not in quarantine yet (``mcp.tool.quarantine``
        recorded first); compare-and-set, another worker may record the same drift. Returns the
        record as it is now."""
        fresh = [
            tool
            for tool in (*drift.changed, *drift.new)
            if record.quarantined.get(tool.name, None) is None
            or record.quarantined[tool.name].sha256 != tool.sha256
        ]
        if not fresh:
            return record
        for _ in range(3):  # compare-and-set: another worker may record the same drift
            updated = record.quarantine(Drift(changed=tuple(fresh)))
            await self._audit.record(
                "mcp.tool.quarantine",
                actor,
                resource=f"mcp_server:{record.name}",
                reason="a tool's definition changed or appeared after pinning",
                data={
                    "changed": {t.name: t.sha256 for t in drift.changed if t in fresh},
                    "new": {t.name: t.sha256 for t in drift.new if t in fresh},
                },
            )
            self.forget(record.name)
            if await self._storage.replace_mcp_server(updated, expected_version=record.version):
                return updated
            reread = await self._storage.get_mcp_server(record.name)
            if reread is None:
                return record
            record = reread
        raise ConflictError(f"MCP server {record.name!r} keeps changing")

    async def spec(self, record: McpServer) -> UpstreamSpec:
        """Decrypt what ``record`` is given (the caller has decided and recorded that use)."""
        values: list[tuple[bytes, list[bytes]]] = []
        env: dict[str, str] = {}
        headers: dict[str, str] = {}
        try:
            for var, path in sorted(record.env.items()):
                _, value = await self._broker.secrets.read_value(path)
                env[var] = value.decode("utf-8")
                values.append((value, []))
            if record.secret is not None and record.inject is not None:
                _, value = await self._broker.secrets.read_value(record.secret)
                rendered = record.inject.render(value.decode("utf-8"))
                if not rendered.isascii():
                    raise InvalidInputError("the secret cannot be sent in a header", field="inject")
                headers[record.inject.name] = rendered
                values.append((value, [rendered.encode("ascii")]))
        except UnicodeDecodeError:
            raise InvalidInputError(
                "a secret given to an MCP server must be UTF-8 text", field="env"
            ) from None
        return UpstreamSpec(server=record, env=env, headers=headers, guard=SecretGuard.of(values))


def _fields(record: McpServer) -> dict[str, Any]:
    return {name: getattr(record, name) for name in McpServer.__dataclass_fields__}


def registration_data(record: McpServer) -> dict[str, Any]:
    """What events say about an upstream: how it is reached and which secrets it gets (paths)."""
    data: dict[str, Any] = {"kind": record.kind.value, "secrets": list(record.secrets)}
    if record.kind is UpstreamKind.STDIO:
        digest = hashlib.sha256(json.dumps([record.command, *record.args]).encode()).hexdigest()
        data.update(command=(record.command or "")[:200], argv_sha256=digest, env=sorted(record.env))
    else:
        data.update(url=(record.url or "")[:300])
        if record.inject is not None:
            data["inject"] = record.inject.name
    return data
