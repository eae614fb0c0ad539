"""An upstream call runs in its caller's own task: closing the session cancels it there and takes
the cancellation back (the caller gets an ``UpstreamError`` and goes on), while a cancellation of
the caller's own is never swallowed, alone or together with a close. Against the real stdio test
upstream (its ``slow`` tool sleeps a minute)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tether.mcp.guard import SecretGuard
from tether.mcp.servers import McpServer, UpstreamKind
from tether.mcp.upstreams import UpstreamError, UpstreamSession, UpstreamSpec

UPSTREAM = Path(__file__).parent / "mcp_upstreams" / "upstream.py"


def stdio_upstream(tmp_path: Path, token: str | None = None) -> UpstreamSession:
    """A session (not started) of the test upstream as a stdio child, given ``token`` (guarded)."""
    server = McpServer(
        name="gh",
        kind=UpstreamKind.STDIO,
        created_at=datetime.now(UTC),
        created_by="test",
        command=sys.executable,
        args=(str(UPSTREAM), "--rug-file", str(tmp_path / "rug")),
        env={} if token is None else {"UPSTREAM_TOKEN": "prod/github/token"},
        timeout_seconds=30,
    )
    if token is None:
        return UpstreamSession("tsk_test", UpstreamSpec(server, {}, {}, SecretGuard()))
    guard = SecretGuard.of([(token.encode(), [])])
    return UpstreamSession("tsk_test", UpstreamSpec(server, {"UPSTREAM_TOKEN": token}, {}, guard))


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[UpstreamSession]:
    opened = stdio_upstream(tmp_path)
    await opened.start()
    try:
        yield opened
    finally:
        await opened.close()


async def _in_flight(session: UpstreamSession) -> asyncio.Task[object]:
    call = asyncio.create_task(session.call_tool("slow", {}))
    await asyncio.sleep(0.3)  # sent, and waiting for the answer
    assert not call.done()
    return call


async def test_closing_the_session_answers_a_call_in_flight_and_leaves_its_task_uncancelled(
    session: UpstreamSession,
) -> None:
    async def caller() -> tuple[str, int]:
        try:
            await session.call_tool("slow", {})
        except UpstreamError as exc:
            await asyncio.sleep(0)  # the task goes on: it is not being cancelled
            task = asyncio.current_task()
            assert task is not None
            return str(exc), task.cancelling()
        raise AssertionError("the call was answered")

    call = asyncio.create_task(caller())
    await asyncio.sleep(0.3)
    await session.close()
    message, cancelling = await asyncio.wait_for(call, 10)
    assert message == "upstream 'gh' was closed (the task ended)"
    assert cancelling == 0


async def test_a_callers_own_cancellation_is_not_swallowed(session: UpstreamSession) -> None:
    call = await _in_flight(session)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(call, 10)
    # The session is still good for the next call.
    assert (await session.call_tool("whoami", {})).structured_content is not None


async def test_a_callers_cancellation_together_with_a_close_stays_a_cancellation(
    session: UpstreamSession,
) -> None:
    call = await _in_flight(session)
    call.cancel()
    await session.close()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(call, 10)
