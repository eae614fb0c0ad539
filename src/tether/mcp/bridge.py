"""``tether mcp connect``: MCP over stdio for clients that only start local processes (desktop
assistants, IDEs), forwarded to Tether's ``/mcp`` with DPoP.

The bridge holds the agent's key, not a secret: it signs a fresh DPoP proof for every request it
forwards (with the ``Tether-Task`` header) and pumps JSON-RPC messages both ways, unchanged — the
client's ``initialize``, ``tools/list``, ``tools/call`` and notifications go to Tether, Tether's
answers and notifications come back. Everything is decided at Tether; nothing here is trusted.

:class:`DPoPAuth` is the piece any Python MCP client can reuse: an ``httpx2`` auth that adds the
access token, a proof for exactly this request and the task header.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import Any

import anyio
import httpx2

from tether.sdk import AsyncAgent

__all__ = ["DPoPAuth", "bridge", "mcp_client_http"]


class DPoPAuth(httpx2.Auth):
    """Sign each request to ``/mcp`` as ``agent``: ``Authorization: DPoP <token>``, a fresh
    ``DPoP`` proof for its method and URL, and ``Tether-Task``."""

    def __init__(self, agent: AsyncAgent, task_id: str) -> None:
        self._agent = agent
        self._task_id = task_id

    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, Any, None]:
        raise RuntimeError("DPoPAuth signs requests of an async client only")

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, Any]:
        token = await self._agent.token()
        url = str(request.url.copy_with(query=None, fragment=None))
        for name, value in self._agent._session.signed_headers(request.method, url, token).items():
            request.headers[name] = value
        request.headers["Tether-Task"] = self._task_id
        yield request


def mcp_client_http(agent: AsyncAgent, task_id: str, timeout_seconds: float = 300.0) -> httpx2.AsyncClient:
    """An ``httpx2`` client for the SDK's ``streamable_http_client`` that authenticates to ``/mcp``."""
    return httpx2.AsyncClient(
        auth=DPoPAuth(agent, task_id),
        timeout=httpx2.Timeout(30.0, read=timeout_seconds),
        follow_redirects=False,
        trust_env=False,
    )


async def bridge(url: str, agent: AsyncAgent, task_id: str) -> None:
    """Pump MCP messages between this process's stdio and Tether's ``/mcp`` until stdin closes."""
    from mcp.client.streamable_http import streamable_http_client
    from mcp.server.stdio import stdio_server

    endpoint = url.rstrip("/") + "/mcp"
    async with (
        mcp_client_http(agent, task_id) as http,
        streamable_http_client(endpoint, http_client=http, terminate_on_close=False) as (up_read, up_write),
        stdio_server() as (local_read, local_write),
        anyio.create_task_group() as group,
    ):

        async def upward() -> None:
            async for message in local_read:
                if isinstance(message, Exception):
                    continue  # a line that is not JSON-RPC: the SDK already answered nothing
                await up_write.send(message)
            group.cancel_scope.cancel()  # the client closed stdin: done

        async def downward() -> None:
            async for message in up_read:
                if isinstance(message, Exception):
                    continue  # a transport error: the pending request fails by timeout on the client
                await local_write.send(message)

        group.start_soon(upward)
        group.start_soon(downward)
