"""Upstream MCP sessions, one per (task, server), opened with the task's credentials and closed
(a stdio child's whole process tree killed) when the task ends.

Each session is a :class:`mcp.Client` owned by one asyncio task (the SDK's transports are entered
and left in the same task): it connects, lists the upstream's tools (their live definitions, for
the pins), then waits until it is closed. Calls come from request handlers in other tasks; every
call in flight is cancelled when the session closes.

- **stdio**: the command runs without a shell, in its own process group, with a clean environment
  (the SDK's safe defaults — ``HOME``, ``LOGNAME``, ``PATH``, ``SHELL``, ``TERM``, ``USER`` — plus the
  registered ``VAR=<secret>``); its stderr goes to ``/dev/null`` (it could echo the secret into
  Tether's logs). Closing SIGKILLs the whole process group at once, so children it started die
  with it (a task's end is a revocation, not a polite request).
- **http**: the SDK's ``Client`` on Tether's streamable HTTP dispatcher
  (:mod:`tether.mcp.dispatcher`): the injected header on every request, each call one POST on a
  kept-alive pooled connection in the caller's own task, redirects never followed, and the
  server's own timeout.

Sampling, elicitation and roots requests from an upstream are refused (the client declares none of
those capabilities; the SDK answers them with an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import anyio
from mcp import Client
from mcp.client.session import LoggingFnT
from mcp.client.stdio import get_default_environment
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types import (
    CONNECTION_CLOSED,
    LOG_LEVEL_META_KEY,
    REQUEST_TIMEOUT,
    CallToolResult,
    ErrorData,
    LoggingMessageNotificationParams,
    RequestParamsMeta,
    jsonrpc_message_adapter,
)

from tether.errors import TetherError
from tether.mcp.dispatcher import http_client
from tether.mcp.guard import SecretGuard
from tether.mcp.servers import MAX_TOOLS, McpServer, PinnedTool, UpstreamKind, pin
from tether.mcp.streamable import CLOSED, SESSION_ENDED, TIMED_OUT, is_transport_failure
from tether.tracing import inner_span

__all__ = [
    "LogSink",
    "ProgressSink",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamSession",
    "UpstreamSpec",
]

log = logging.getLogger(__name__)

#: How long opening an upstream (start, handshake, tools/list) may take.
OPEN_TIMEOUT_SECONDS = 20.0
#: Pages of tools/list read from an upstream at most.
MAX_LIST_PAGES = 16
#: One JSON-RPC message from a stdio upstream is at most this long.
MAX_LINE_BYTES = 16 * 1024 * 1024

ProgressSink = ProgressFnT
LogSink = Callable[[LoggingMessageNotificationParams], Awaitable[None]]


class UpstreamError(TetherError):
    """An upstream could not be opened, failed or timed out. Messages never hold a secret, a
    URL, or the upstream's own error text (which could)."""


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """What opening one upstream needs: the server and the secret values it is given (never
    logged; the guard redacts them)."""

    server: McpServer
    env: Mapping[str, str]
    headers: Mapping[str, str]
    guard: SecretGuard

    def __repr__(self) -> str:
        return f"UpstreamSpec({self.server.name})"


def clean_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """A stdio child's environment: the SDK's safe defaults of Tether's own (``HOME``, ``LOGNAME``,
    ``PATH``, ``SHELL``, ``TERM``, ``USER``) and ``extra``; nothing else of Tether's (no ``TETHER_*``)."""
    return {**get_default_environment(), **extra}


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (the child started it: ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@asynccontextmanager
async def _stdio(spec: UpstreamSpec, started: Callable[[int], None]) -> AsyncIterator[Any]:
    """The SDK's stdio framing (one JSON-RPC message per line) over a child Tether controls: no
    shell, its own process group, a clean environment, stderr discarded, and at the end the whole
    group killed at once (the SDK's own shutdown leaves a group alive when the leader exits)."""
    server = spec.server
    assert server.command is not None
    process = await anyio.open_process(
        [server.command, *server.args],
        env=clean_environment(spec.env),
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    started(process.pid)
    assert process.stdout is not None
    assert process.stdin is not None
    stdout, stdin = process.stdout, process.stdin
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)

    async def reader() -> None:
        buffer = b""
        async with read_writer:
            with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                async for chunk in stdout:
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if not line.strip():
                            continue
                        item: SessionMessage | Exception
                        try:
                            item = SessionMessage(jsonrpc_message_adapter.validate_json(line, by_name=False))
                        except ValueError:
                            item = UpstreamError("the upstream wrote a line that is not JSON-RPC")
                        await read_writer.send(item)
                    if len(buffer) > MAX_LINE_BYTES:
                        await read_writer.send(UpstreamError("the upstream wrote an over-long line"))
                        return

    async def writer() -> None:
        async with write_reader:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                async for message in write_reader:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await stdin.send((data + "\n").encode("utf-8"))

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(reader)
            group.start_soon(writer)
            try:
                yield read_stream, write_stream
            finally:
                group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            kill_group(process.pid)
            with anyio.move_on_after(5):
                await process.wait()
            for stream in (stdin, stdout, read_stream, write_stream):
                with contextlib.suppress(Exception):
                    await stream.aclose()


def _client(spec: UpstreamSpec, started: Callable[[int], None], on_log: LoggingFnT) -> Client:
    server = spec.server
    if server.kind is UpstreamKind.STDIO:
        return Client(_stdio(spec, started), logging_callback=on_log)
    assert server.url is not None
    return http_client(server.url, spec.headers, float(server.timeout_seconds), logging_callback=on_log)


def _failure_of(error: ErrorData, *, stdio: bool) -> tuple[str, bool] | None:
    """What went wrong, and whether the session is gone for good, when a JSON-RPC error answering
    a call means the exchange failed rather than that the upstream answered with an error: made up
    by Tether's HTTP dispatcher (its mark), or on a stdio upstream the SDK's own error when its read
    timeout passed or the child's pipes closed mid-call. None for an upstream's own error (an HTTP
    upstream that spells the SDK's errors is not taken at its word). The text is Tether's, never
    the upstream's."""
    if is_transport_failure(error):
        return _FAILURES.get(error.message) or (f"failed: {error.message}", error.message == SESSION_ENDED)
    if not stdio or error.data is not None:
        return None
    if error.code == REQUEST_TIMEOUT and error.message.endswith(" timed out"):
        return _FAILURES[TIMED_OUT]
    if error.code == CONNECTION_CLOSED and error.message == "Connection closed":
        return _FAILURES[CLOSED]
    return None


#: What a marked failure means, in the gateway's words, and whether the session is gone.
_FAILURES = {
    TIMED_OUT: ("did not answer in time", False),
    CLOSED: ("closed the connection during the call", True),
}


def _why(exc: BaseException, *, stdio: bool) -> str:
    """Why a session failed, in Tether's words, for the operator: the first marked failure (the
    SDK's ``Client`` wraps it in its task group: "the upstream answered HTTP 401"), else the code
    of a JSON-RPC error the upstream answered with, else the failing exception's type. Never an
    exception's own text, which can quote what the upstream sent."""
    leaves: list[BaseException] = [exc]
    found: BaseException | None = None
    while leaves:
        leaf = leaves.pop(0)
        if isinstance(leaf, BaseExceptionGroup):
            leaves[:0] = leaf.exceptions
        elif isinstance(leaf, MCPError):
            if is_transport_failure(leaf.error):
                why = _FAILURES.get(leaf.error.message, (leaf.error.message, False))[0]
                return why.removesuffix(" during the call")  # not a call: opening, or the session
            failure = _failure_of(leaf.error, stdio=stdio)
            if failure is not None:
                return failure[0].removesuffix(" during the call")
            found = found or leaf
        elif not isinstance(leaf, asyncio.CancelledError):
            found = found or leaf
    if isinstance(found, MCPError):
        return f"it answered with JSON-RPC error {found.error.code}"
    return type(found or exc).__name__


class UpstreamSession:
    """One upstream opened for one task."""

    def __init__(self, task_id: str, spec: UpstreamSpec) -> None:
        self.task_id = task_id
        self.spec = spec
        self.live: dict[str, PinnedTool] = {}
        self._client: Client | None = None
        self._ready = asyncio.Event()
        self._closing = asyncio.Event()
        self._died = False  # it died on its own (a stdio child exited, an HTTP session ended)
        self._retired = False  # ... and the gateway has not recorded that yet
        self._closed = asyncio.Event()
        self._failure: str | None = None
        #: The tasks calling through this session now, and those of them it cancelled (closing).
        self._calls: set[asyncio.Task[Any]] = set()
        self._interrupted: set[asyncio.Task[Any]] = set()
        self._log_sinks: set[LogSink] = set()
        self._owner: asyncio.Task[None] | None = None
        #: What a call's span says: the server's name and the method only, as for an egress call
        #: (never the tool's arguments or answer); made once, not on every call.
        self._span_attributes = {"tether.mcp_server": spec.server.name, "mcp.method.name": "tools/call"}
        #: A stdio upstream's process id (the leader of its process group), once started.
        self.pid: int | None = None

    def _started(self, pid: int) -> None:
        self.pid = pid

    @property
    def name(self) -> str:
        return self.spec.server.name

    @property
    def guard(self) -> SecretGuard:
        return self.spec.guard

    @property
    def open(self) -> bool:
        return self._client is not None and not self._closing.is_set()

    async def start(self) -> None:
        """Connect and list the upstream's tools; :class:`UpstreamError` if that fails."""
        self._owner = asyncio.create_task(self._run(), name=f"mcp-upstream-{self.name}")
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_SECONDS):
                await self._ready.wait()
        except TimeoutError:
            await self.close()
            raise UpstreamError(f"upstream {self.name!r} did not start in time") from None
        if self._failure is not None:
            await self.close()
            raise UpstreamError(f"upstream {self.name!r} could not be opened ({self._failure})")

    def take_retirement(self) -> bool:
        """Whether this session died on its own (and was retired); True once, for one record."""
        retired, self._retired = self._retired, False
        return retired

    async def _on_log(self, params: LoggingMessageNotificationParams) -> None:
        for sink in list(self._log_sinks):
            try:
                await sink(params)
            except Exception as exc:  # noqa: BLE001 - a client gone meanwhile: drop the notification
                log.debug(
                    "MCP upstream %s: a log notification was dropped (%s)", self.name, type(exc).__name__
                )

    async def _run(self) -> None:
        try:
            async with _client(self.spec, self._started, self._on_log) as client:
                self.live = await self._list(client)
                self._client = client
                self._ready.set()
                await self._closing.wait()
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - any failure closes the session; never its text
            self._failure = _why(exc, stdio=self.spec.server.kind is UpstreamKind.STDIO)
            log.warning("MCP upstream %s (task %s) failed: %s", self.name, self.task_id, self._failure)
        finally:
            self._client = None
            self._ready.set()
            self._closed.set()
            self._interrupt()

    @staticmethod
    async def _list(client: Client) -> dict[str, PinnedTool]:
        tools: dict[str, PinnedTool] = {}
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await client.list_tools(cursor=cursor)
            for tool in page.tools:
                pinned = pin(tool.model_dump(by_alias=True, exclude_none=True, mode="json"))
                tools[pinned.name] = pinned
                if len(tools) > MAX_TOOLS:
                    raise UpstreamError(f"the upstream lists more than {MAX_TOOLS} tools")
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    async def list_live(self) -> dict[str, PinnedTool]:
        """List the upstream's tools again (after a ``list_changed``, or for a check)."""
        client = self._client
        if client is None:
            raise UpstreamError(f"upstream {self.name!r} is closed")
        self.live = await self._list(client)
        return self.live

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        progress: ProgressSink | None = None,
        on_log: LogSink | None = None,
    ) -> CallToolResult:
        """Call ``name``; cancelled if the session closes meanwhile. :class:`UpstreamError` on
        a transport failure or timeout; an upstream's JSON-RPC error is raised as ``MCPError``."""
        client = self._client
        if client is None or self._closing.is_set():
            raise UpstreamError(f"upstream {self.name!r} is closed")
        timeout = float(self.spec.server.timeout_seconds)
        # Log notifications are a per-request opt-in since 2026-07-28: ask for every level (the
        # front passes on what its own client opted into).
        meta: RequestParamsMeta | None = None
        if on_log is not None:
            meta = cast(RequestParamsMeta, {LOG_LEVEL_META_KEY: "debug"})
        # The call runs in the caller's own task (no task of its own, no shield): closing the
        # session cancels that task, and the cancellation it asked for is taken back here.
        call = asyncio.current_task()
        assert call is not None
        self._calls.add(call)
        if on_log is not None:
            self._log_sinks.add(on_log)
        try:
            with inner_span("tether.mcp.upstream", self._span_attributes):  # one check while tracing is off
                async with asyncio.timeout(timeout + 1):
                    return await client.call_tool(
                        name, arguments, read_timeout_seconds=timeout, progress_callback=progress, meta=meta
                    )
        except TimeoutError:
            raise UpstreamError(f"upstream {self.name!r} did not answer in time") from None
        except asyncio.CancelledError:
            if self._taken_back(call):  # the session's doing alone: the caller goes on
                raise UpstreamError(f"upstream {self.name!r} {self._why_interrupted()}") from None
            raise
        except MCPError as exc:
            failure = _failure_of(exc.error, stdio=self.spec.server.kind is UpstreamKind.STDIO)
            if failure is None:
                raise
            what, gone = failure
            if gone and not self._closing.is_set():
                # Retired: closing lets _run end (a stdio child's group killed), and the pool opens
                # a new session for the task's next call instead of handing out a dead one.
                self._died = self._retired = True
                self._closing.set()
            raise UpstreamError(f"upstream {self.name!r} {what}") from None
        except Exception as exc:  # noqa: BLE001 - transport failures: the type only
            raise UpstreamError(f"upstream {self.name!r} failed ({type(exc).__name__})") from None
        finally:
            self._calls.discard(call)
            self._taken_back(call)  # asked for, but the call ended without it
            if on_log is not None:
                self._log_sinks.discard(on_log)

    def _interrupt(self) -> None:
        """Cancel every call in flight (each in its caller's task; see :meth:`call_tool`)."""
        for call in self._calls - self._interrupted:
            self._interrupted.add(call)
            call.cancel()

    def _taken_back(self, call: asyncio.Task[Any]) -> bool:
        """Take back the cancellation :meth:`_interrupt` asked of ``call``, if it did: whether
        nothing else (its caller) asks for one too."""
        if call not in self._interrupted:
            return False
        self._interrupted.discard(call)
        return call.uncancel() == 0

    def _why_interrupted(self) -> str:
        if self._died:
            return "closed the connection during the call"
        if self._closing.is_set():
            return "was closed (the task ended)"
        return "failed (its session ended)"

    async def close(self) -> None:
        """Close the session: calls in flight are cancelled, the transport shut (a stdio child's
        process group is terminated). Idempotent; waits a bounded time."""
        self._closing.set()
        self._interrupt()
        owner = self._owner
        if owner is None:
            return
        try:
            # The SDK's stdio shutdown waits up to 2 s for exit after stdin closes, then 2 s after
            # SIGTERM before SIGKILL; this bound leaves it room.
            async with asyncio.timeout(10):
                await asyncio.shield(owner)
        except TimeoutError:
            owner.cancel()
        except asyncio.CancelledError:
            owner.cancel()
            raise


class UpstreamPool:
    """The open upstream sessions of this process, by (task, server). A loop (:meth:`watch`)
    closes the sessions of tasks that have ended; the gateway also closes a task's sessions as
    soon as it sees the task is no longer active."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, str], UpstreamSession] = {}
        self._opening: dict[tuple[str, str], asyncio.Lock] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def tasks(self) -> set[str]:
        return {task_id for task_id, _ in self._sessions}

    def names_of(self, task_id: str) -> list[str]:
        """The servers with a session for ``task_id``."""
        return [server for task, server in self._sessions if task == task_id]

    def get(self, task_id: str, server: str) -> UpstreamSession | None:
        session = self._sessions.get((task_id, server))
        return session if session is not None and session.open else None

    async def session(
        self,
        task_id: str,
        server: str,
        open_spec: Callable[[], Awaitable[UpstreamSpec]],
    ) -> tuple[UpstreamSession, bool]:
        """The open session for ``(task_id, server)``, opened with ``open_spec()`` if there is
        none (one opening at a time per key). Returns the session and whether it was opened now."""
        key = (task_id, server)
        existing = self.get(task_id, server)
        if existing is not None:
            return existing, False
        lock = self._opening.setdefault(key, asyncio.Lock())
        async with lock:
            existing = self.get(task_id, server)
            if existing is not None:
                return existing, False
            stale = self._sessions.pop(key, None)
            if stale is not None:
                await stale.close()
            spec = await open_spec()
            session = UpstreamSession(task_id, spec)
            await session.start()
            self._sessions[key] = session
            return session, True

    async def close_task(self, task_id: str) -> list[str]:
        """Close every session of ``task_id``; the names of the servers closed."""
        keys = [key for key in self._sessions if key[0] == task_id]
        sessions = [self._sessions.pop(key) for key in keys]
        for key in keys:
            self._opening.pop(key, None)
        await asyncio.gather(*(session.close() for session in sessions), return_exceptions=True)
        return [session.name for session in sessions]

    async def close_server(self, server: str) -> None:
        keys = [key for key in self._sessions if key[1] == server]
        sessions = [self._sessions.pop(key) for key in keys]
        await asyncio.gather(*(session.close() for session in sessions), return_exceptions=True)

    async def aclose(self) -> None:
        sessions = list(self._sessions.values())
        self._sessions.clear()
        self._opening.clear()
        await asyncio.gather(*(session.close() for session in sessions), return_exceptions=True)
