"""The MCP gateway end to end: Tether on uvicorn (127.0.0.1), the MCP SDK's real ``Client`` over
streamable HTTP at ``/mcp`` with DPoP, and real upstream MCP servers written with the SDK — a stdio
child Tether starts per task, and a streamable HTTP server — including a malicious one that hands
the injected token back, and one whose tool definitions change after registration.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import LOG_LEVEL_META_KEY

from tests.integration.governed import deploy_policies
from tests.integration.test_egress import _serve, _stop
from tests.security.canaries import new_canary
from tether.api import create_app
from tether.api.routes_mcp import close_mcp
from tether.broker import Broker
from tether.crypto.jose import generate_private_jwk
from tether.mcp.bridge import mcp_client_http
from tether.mcp.front import DENIED, UPSTREAM_FAILED, same_origin
from tether.mcp.servers import pin
from tether.sdk import AsyncAgent

UPSTREAM = Path(__file__).resolve().parent / "mcp_upstreams" / "upstream.py"
SECRET = "prod/gh/token"
POLICIES = """
@id("open") permit(principal, action == Action::"open_task", resource);
@id("gh-tools") permit(principal, action == Action::"call_tool", resource) when { resource.server == "gh" };
@id("no-debug") forbid(principal, action == Action::"call_tool", resource)
  when { context has arguments && context.arguments.contains("debug:boolean") };
@id("no-spawn-in-incidents") forbid(principal, action == Action::"call_tool", resource == Tool::"gh/spawn")
  when { context.task.purpose == "incident" };
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


async def wait_dead(pid: int, seconds: float = 10) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


@dataclass
class Gateway:
    broker: Broker
    url: str
    http: httpx.AsyncClient
    admin: dict[str, str]
    agent: AsyncAgent
    secret: str
    rug: Path
    tasks: list[str] = field(default_factory=list)
    #: Stops the HTTP upstream (the HTTP fixture's), to see how a call fails when it is gone.
    stop_upstream: Callable[[], Awaitable[None]] | None = None

    async def open_task(self, tools: list[str], agent: AsyncAgent | None = None, **extra: Any) -> str:
        body = {"purpose": "deploy", "objective": "mcp tests", "tools": tools, "ttl_seconds": 600, **extra}
        response = await (agent or self.agent).request("POST", "/v1/tasks", json=body)
        assert response.status_code == 201, response.text
        task_id: str = response.json()["id"]
        return task_id

    @asynccontextmanager
    async def client(
        self, task_id: str, agent: AsyncAgent | None = None, **kwargs: Any
    ) -> AsyncIterator[Client]:
        """The SDK's own client, over streamable HTTP, signing each request as ``agent``."""
        async with mcp_client_http(agent or self.agent, task_id) as http:
            transport = streamable_http_client(self.url + "/mcp", http_client=http)
            async with Client(transport, **kwargs) as client:
                yield client

    async def events(self, kind: str, task_id: str | None = None) -> list[dict[str, Any]]:
        params = {"kind": kind, **({"task": task_id} if task_id else {})}
        response = await self.http.get("/v1/audit/events", params=params, headers=self.admin)
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    async def eventually(self, kind: str, task_id: str, seconds: float = 10) -> list[dict[str, Any]]:
        """The ``kind`` events of ``task_id`` once there is one (an upstream's session is recorded
        closed after its process group is killed and its transport shut: a moment after the kill)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while (
            not (found := await self.events(kind, task_id)) and asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.05)
        return found

    async def register_stdio(self, name: str = "gh", timeout_seconds: int = 10) -> httpx.Response:
        body = {
            "name": name,
            "command": sys.executable,
            "args": [str(UPSTREAM), "--rug-file", str(self.rug)],
            "env": {"UPSTREAM_TOKEN": SECRET},
            "timeout_seconds": timeout_seconds,
        }
        return await self.http.post("/v1/mcp-servers", json=body, headers=self.admin)


async def new_agent(http: httpx.AsyncClient, url: str, admin: dict[str, str], name: str) -> AsyncAgent:
    private = generate_private_jwk()
    public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
    attributes = {"team": "platform", "environment": "prod", "owner": "alice", "labels": ["deploy"]}
    response = await http.post(
        "/v1/agents", json={"name": name, "public_key": public, "attributes": attributes}, headers=admin
    )
    assert response.status_code == 201, response.text
    return AsyncAgent(url, response.json()["id"], private, http=http)


@pytest.fixture
async def gw(broker: Broker, tmp_path: Path) -> AsyncIterator[Gateway]:
    app = create_app(broker)
    server, task, port = await _serve(app)
    url = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {broker.root_token}"}  # type: ignore[attr-defined]
    secret = new_canary("mcp")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            await deploy_policies(http, admin, POLICIES)
            response = await http.put(
                f"/v1/secrets/{SECRET}",
                json={"value": secret, "sensitivity": "internal", "purposes": ["deploy"], "destinations": []},
                headers=admin,
            )
            assert response.status_code in (200, 201), response.text
            agent = await new_agent(http, url, admin, "mcp-bot")
            gateway = Gateway(broker, url, http, admin, agent, secret, tmp_path / "rug")
            response = await gateway.register_stdio()
            assert response.status_code == 201, response.text
            yield gateway
    finally:
        await close_mcp(app)
        await _stop(server, task)


async def test_stock_client_lists_and_calls_a_declared_tool(gw: Gateway) -> None:
    task_id = await gw.open_task(["gh/search", "gh/whoami"])
    async with gw.client(task_id) as client:
        listed = await client.list_tools()
        assert sorted(tool.name for tool in listed.tools) == ["gh__search", "gh__whoami"]
        search = next(tool for tool in listed.tools if tool.name == "gh__search")
        assert search.description == "Search the issues."
        result = await client.call_tool("gh__search", {"query": "flaky test", "limit": 3})
        assert not result.is_error
        assert result.content[0].text == "results for flaky test (limit 3)"  # type: ignore[union-attr]
        who = await client.call_tool("gh__whoami", {})
        # The secret reached the child's environment (its length, never its value, comes back).
        assert who.structured_content is not None
        assert who.structured_content["has_token"] is True
        assert who.structured_content["token_chars"] == len(gw.secret)
    calls = await gw.events("tool.call", task_id)
    assert [event["resource"] for event in calls] == ["tool:gh/search", "tool:gh/whoami"]
    assert calls[0]["data"]["arguments"] == ["limit:integer", "query:string"]
    assert calls[0]["decision"]["allowed"] is True
    assert calls[0]["decision"]["policies"] == ["gh-tools"]
    opened = await gw.events("mcp.session.open", task_id)
    assert len(opened) == 1
    assert opened[0]["data"]["env"] == ["UPSTREAM_TOKEN"]


async def test_server_wildcard_declares_every_pinned_tool(gw: Gateway) -> None:
    task_id = await gw.open_task(["gh/*"])
    async with gw.client(task_id) as client:
        names = sorted(tool.name for tool in (await client.list_tools()).tools)
    assert names == [
        "gh__die",
        "gh__echo_secret",
        "gh__env",
        "gh__fail_secret",
        "gh__notify_secret",
        "gh__refuse",
        "gh__sample",
        "gh__search",
        "gh__slow",
        "gh__spawn",
        "gh__whoami",
    ]


async def test_policy_filters_the_list_and_refuses_the_call(gw: Gateway) -> None:
    task_id = await gw.open_task(["gh/*"], purpose="incident")
    async with gw.client(task_id) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert "gh__spawn" not in names
        assert "gh__search" in names
        with pytest.raises(MCPError) as refused:
            await client.call_tool("gh__spawn", {})
    assert refused.value.error.code == DENIED
    assert refused.value.error.data["decision"]["policies"] == ["no-spawn-in-incidents"]


async def test_argument_shape_reaches_policy(gw: Gateway) -> None:
    task_id = await gw.open_task(["gh/search"])
    async with gw.client(task_id) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("gh__search", {"query": "x", "debug": True})
    assert refused.value.error.code == DENIED
    assert refused.value.error.data["decision"]["policies"] == ["no-debug"]


async def test_undeclared_tool_is_hidden_and_refused(gw: Gateway) -> None:
    task_id = await gw.open_task(["gh/search"])
    async with gw.client(task_id) as client:
        assert [tool.name for tool in (await client.list_tools()).tools] == ["gh__search"]
        with pytest.raises(MCPError) as refused:
            await client.call_tool("gh__whoami", {})
    assert refused.value.error.code == DENIED
    assert "did not declare" in refused.value.error.message
    refusals = await gw.events("decision", task_id)
    assert refusals[-1]["resource"] == "tool:gh/whoami"
    assert refusals[-1]["decision"]["allowed"] is False


async def test_schema_invalid_and_unknown_tools_get_json_rpc_errors(gw: Gateway) -> None:
    task_id = await gw.open_task(["gh/*"])
    async with gw.client(task_id) as client:
        for name, arguments in (
            ("gh__search", {"limit": 3}),  # query is required
            ("gh__search", {"query": 7}),  # not a string
            ("gh__search", {"query": "x", "limit": 0}),  # below the minimum
            ("gh__nope", {}),
            ("nosuchserver__search", {}),
            ("search", {}),
        ):
            with pytest.raises(MCPError) as refused:
                await client.call_tool(name, arguments)
            assert refused.value.error.code == -32602, (name, refused.value.error)
        # The gateway still serves after every refusal.
        assert not (await client.call_tool("gh__search", {"query": "ok"})).is_error


async def test_secret_echoed_by_the_upstream_is_redacted_everywhere(gw: Gateway) -> None:
    task_id = await gw.open_task(["gh/*"])
    logs: list[Any] = []
    progress: list[str | None] = []

    async def on_log(params: Any) -> None:
        logs.append(params)

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message)

    async with gw.client(task_id, logging_callback=on_log) as client:
        echoed = await client.call_tool("gh__echo_secret", {})
        dumped = echoed.model_dump_json()
        assert gw.secret not in dumped
        assert base64.b64encode(gw.secret.encode()).decode() not in dumped
        assert gw.secret.encode().hex() not in dumped
        assert "[REDACTED]" in dumped
        with pytest.raises(MCPError) as failed:
            await client.call_tool("gh__fail_secret", {})
        assert gw.secret not in failed.value.error.message
        assert "[REDACTED]" in failed.value.error.message
        assert gw.secret not in str(failed.value.error.data)
        notified = await client.call_tool(
            "gh__notify_secret", {}, progress_callback=on_progress, meta={LOG_LEVEL_META_KEY: "debug"}
        )
        assert not notified.is_error
    assert logs
    assert gw.secret not in str(logs)
    assert "[REDACTED]" in str(logs)
    assert progress == ["halfway with [REDACTED]"]
    redactions = await gw.events("tool.redact", task_id)
    assert [event["data"]["in"] for event in redactions] == ["result", "error", "result"]


async def test_arguments_carrying_the_secret_are_refused(gw: Gateway) -> None:
    task_id = await gw.open_task(["gh/search"])
    async with gw.client(task_id) as client:
        await client.call_tool("gh__search", {"query": "warm up"})  # the upstream is open for the task
        for query in (gw.secret, f"see {base64.b64encode(gw.secret.encode()).decode()}"):
            with pytest.raises(MCPError) as refused:
                await client.call_tool("gh__search", {"query": query})
            assert refused.value.error.code == DENIED
            assert "exfiltration" in refused.value.error.message
    refusals = [e for e in await gw.events("decision", task_id) if "exfiltration" in e.get("reason", "")]
    assert len(refusals) == 2
    assert len(await gw.events("tool.call", task_id)) == 1  # the refused calls never went upstream


async def test_task_end_kills_the_upstream_tree_and_refuses_the_next_call(gw: Gateway) -> None:
    task_id = await gw.open_task(["gh/*"])
    async with gw.client(task_id) as client:
        who = await client.call_tool("gh__whoami", {})
        assert who.structured_content is not None
        pid = who.structured_content["pid"]
        spawned = await client.call_tool("gh__spawn", {})
        assert spawned.structured_content is not None
        grandchild = spawned.structured_content["pid"]
        assert alive(pid)
        assert alive(grandchild)
        slow = asyncio.create_task(client.call_tool("gh__slow", {}))
        await asyncio.sleep(0.3)
        response = await gw.agent.request("POST", f"/v1/tasks/{task_id}/complete", json={})
        assert response.status_code == 200, response.text
        # The in-flight call is cancelled, the child and its own child die.
        with pytest.raises(MCPError) as cancelled:
            await asyncio.wait_for(slow, 15)
        # Answered, in Tether's words; the request's own task goes on to answer it (closing the
        # session cancels the call in that task and takes the cancellation back).
        assert cancelled.value.error.code == -32002
        assert cancelled.value.error.message == "upstream 'gh' was closed (the task ended)"
        assert await wait_dead(pid), "the upstream outlived its task"
        assert await wait_dead(grandchild), "the upstream's child outlived its task"
        with pytest.raises(MCPError) as refused:
            await client.call_tool("gh__whoami", {})
        assert refused.value.error.code == DENIED
        assert "completed" in refused.value.error.message
    closed = await gw.eventually("mcp.session.close", task_id)
    assert closed
    assert closed[0]["data"]["servers"] == ["gh"]


async def _raised(call: asyncio.Task[Any]) -> MCPError:
    with pytest.raises(MCPError) as raised:
        await call
    return raised.value


async def test_upstream_failures_are_answered_as_failures_never_as_refusals(gw: Gateway) -> None:
    await deploy_policies(
        gw.http,
        gw.admin,
        POLICIES
        + '@id("slow") permit(principal, action == Action::"call_tool", resource == Tool::"tight/slow");',
    )
    response = await gw.register_stdio("tight", timeout_seconds=1)
    assert response.status_code == 201, response.text
    task_id = await gw.open_task(["gh/*", "tight/slow"])
    async with gw.client(task_id) as client:
        # An upstream's own error in the code of Tether's refusals does not read as a refusal.
        with pytest.raises(MCPError) as own:
            await client.call_tool("gh__refuse", {})
        assert own.value.error.code == UPSTREAM_FAILED
        assert own.value.error.message.startswith("denied by the upstream, which holds ")
        assert gw.secret not in own.value.error.message
        # ... nor in MCP's own codes (URL elicitation required would hand the client the URL);
        # outside the server-defined range an upstream's code is its own.
        for code, answered in ((-32042, UPSTREAM_FAILED), (-32000, UPSTREAM_FAILED), (-32602, -32602)):
            with pytest.raises(MCPError) as coded:
                await client.call_tool("gh__refuse", {"code": code})
            assert coded.value.error.code == answered, code
        # A guess at the mark of Tether's transport is just the upstream's error: its text and data
        # kept (not Tether's "upstream 'gh' failed: ..."), its code of the server range answered -32002.
        with pytest.raises(MCPError) as forged:
            await client.call_tool("gh__refuse", {"forge": True})
        assert (forged.value.error.code, forged.value.error.message) == (UPSTREAM_FAILED, "Connection closed")
        assert forged.value.error.data == {"tether.transport": "0" * 32}
        # The SDK's read timeout (the server's timeout_seconds) is the upstream failing, not -32001.
        with pytest.raises(MCPError) as late:
            await client.call_tool("tight__slow", {})
        assert late.value.error.code == UPSTREAM_FAILED
        assert late.value.error.message == "upstream 'tight' did not answer in time"
        # A process that exits mid-call: the upstream failed, and the next call opens it again.
        first = await client.call_tool("gh__whoami", {})
        assert first.structured_content is not None
        slow = asyncio.create_task(client.call_tool("gh__slow", {}))  # in flight when it dies
        async with asyncio.timeout(10):  # recorded, so on its way upstream before "die" is
            while "tool:gh/slow" not in {e["resource"] for e in await gw.events("tool.call", task_id)}:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        with pytest.raises(MCPError) as died:
            await client.call_tool("gh__die", {})
        for failure in (died.value, await asyncio.wait_for(_raised(slow), 10)):
            assert failure.error.code == UPSTREAM_FAILED
            assert failure.error.message == "upstream 'gh' closed the connection during the call"
        again = await client.call_tool("gh__whoami", {})
        assert again.structured_content is not None
        assert again.structured_content["pid"] != first.structured_content["pid"]
        assert not alive(first.structured_content["pid"])
    calls = await gw.events("tool.call", task_id)
    assert [event["resource"] for event in calls] == [
        *["tool:gh/refuse"] * 5,
        "tool:tight/slow",
        "tool:gh/whoami",
        "tool:gh/slow",
        "tool:gh/die",
        "tool:gh/whoami",
    ]
    assert len(await gw.events("mcp.session.open", task_id)) == 3  # gh, tight, gh again
    [died_event] = await gw.events("mcp.session.close", task_id)
    assert died_event["reason"] == "the upstream session died"
    assert died_event["data"] == {"servers": ["gh"], "status": "active"}


async def test_another_agents_task_is_not_found(gw: Gateway) -> None:
    task_id = await gw.open_task(["gh/*"])
    other = await new_agent(gw.http, gw.url, gw.admin, "intruder")
    async with gw.client(task_id, agent=other) as client:
        with pytest.raises(MCPError) as refused:
            await client.list_tools()
        assert refused.value.error.code == -32602
        assert "no task" in refused.value.error.message
        with pytest.raises(MCPError):
            await client.call_tool("gh__whoami", {})
    assert await gw.events("tool.call", task_id) == []


async def test_rug_pull_quarantines_until_an_operator_approves(gw: Gateway) -> None:
    gw.rug.write_text("pulled")  # from now on the upstream describes search differently, and adds a tool
    task_id = await gw.open_task(["gh/*"])
    async with gw.client(task_id) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("gh__search", {"query": "x"})
        assert refused.value.error.code == DENIED
        assert "quarantined" in refused.value.error.message
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert "gh__search" not in names
        assert "gh__exfiltrate" not in names
        assert "gh__whoami" in names
    quarantined = await gw.events("mcp.tool.quarantine")
    assert quarantined
    assert set(quarantined[0]["data"]["changed"]) == {"search"}
    assert set(quarantined[0]["data"]["new"]) == {"exfiltrate"}
    shown = (await gw.http.get("/v1/mcp-servers/gh", headers=gw.admin)).json()
    assert {tool["name"] for tool in shown["quarantined"]} == {"search", "exfiltrate"}
    waiting = next(tool for tool in shown["quarantined"] if tool["name"] == "search")
    assert "evil.test" in waiting["definition"]["description"]
    approved = await gw.http.post("/v1/mcp-servers/gh/approve", json={"tools": ["search"]}, headers=gw.admin)
    assert approved.status_code == 200, approved.text
    assert [tool["name"] for tool in approved.json()["quarantined"]] == ["exfiltrate"]
    task2 = await gw.open_task(["gh/*"])
    async with gw.client(task2) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert "evil.test" in (listed["gh__search"].description or "")
        assert "gh__exfiltrate" not in listed
        assert not (await client.call_tool("gh__search", {"query": "x"})).is_error
        with pytest.raises(MCPError):
            await client.call_tool("gh__exfiltrate", {})
    assert await gw.events("mcp.server.approve")


async def test_a_registry_change_by_another_process_holds_on_the_next_call(gw: Gateway) -> None:
    """Each call reads its server's record with its task: a quarantine or a removal written by another
    worker or node (here: straight to the store, not through this process) is in force at once."""
    task_id = await gw.open_task(["gh/*"])
    async with gw.client(task_id) as client:
        assert not (await client.call_tool("gh__search", {"query": "x"})).is_error
        record = await gw.broker.storage.get_mcp_server("gh")
        assert record is not None
        changed = pin({**record.tools["search"].definition, "description": "changed elsewhere"})
        quarantined = record.quarantine(record.drift([changed]))
        assert await gw.broker.storage.replace_mcp_server(quarantined, expected_version=record.version)
        with pytest.raises(MCPError) as refused:
            await client.call_tool("gh__search", {"query": "x"})
        assert "quarantined" in refused.value.error.message
        assert not (await client.call_tool("gh__whoami", {})).is_error
        assert await gw.broker.storage.delete_mcp_server("gh")
        with pytest.raises(MCPError) as refused:
            await client.call_tool("gh__whoami", {})
        assert "unknown tool" in refused.value.error.message
    calls = await gw.events("tool.call", task_id)
    assert [event["resource"] for event in calls] == ["tool:gh/search", "tool:gh/whoami"]


async def test_requests_without_dpop_or_task_are_refused(gw: Gateway) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    bare = await gw.http.post("/mcp", json=body, headers=headers)
    assert bare.status_code == 401
    assert 'resource_metadata="' in bare.headers["www-authenticate"]
    metadata = (await gw.http.get("/.well-known/oauth-protected-resource/mcp")).json()
    assert metadata["resource"] == gw.url + "/mcp"
    assert metadata["dpop_bound_access_tokens_required"] is True
    server = (await gw.http.get("/.well-known/oauth-authorization-server")).json()
    assert server["token_endpoint"] == gw.url + "/v1/auth/token"
    no_task = await gw.agent.request("POST", "/mcp", json=body, headers=headers)
    assert no_task.status_code == 422
    for method in ("GET", "DELETE"):  # stateless: no SSE stream to open, no session to end
        other = await gw.http.request(method, "/mcp")
        assert other.status_code == 405
        assert other.headers["content-type"] == "application/problem+json"
        assert other.headers["allow"] == "POST"
    # A replayed proof is refused (the first use was recorded).
    task_id = await gw.open_task(["gh/search"])
    token = await gw.agent.token()
    signed = gw.agent._session.signed_headers("POST", gw.url + "/mcp", token)
    first = await gw.http.post("/mcp", json=body, headers={**headers, **signed, "Tether-Task": task_id})
    assert first.status_code == 200, first.text
    again = await gw.http.post("/mcp", json=body, headers={**headers, **signed, "Tether-Task": task_id})
    assert again.status_code == 401
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "gh__search", "arguments": {"query": "x"}},
    }
    signed = gw.agent._session.signed_headers("POST", gw.url + "/mcp", token)
    ok = await gw.http.post("/mcp", json=call, headers={**headers, **signed, "Tether-Task": task_id})
    assert ok.status_code == 200
    assert "results for x" in ok.text
    replayed = await gw.http.post("/mcp", json=call, headers={**headers, **signed, "Tether-Task": task_id})
    assert "replayed" in replayed.text or replayed.status_code == 401
    assert len(await gw.events("tool.call", task_id)) == 1


async def test_a_foreign_origin_is_refused_before_anything_else(gw: Gateway) -> None:
    # DNS rebinding: a page of another origin reaching /mcp is refused even with valid credentials,
    # and its proof is not used up; Tether's own origin (or none, as non-browser clients send) passes.
    task_id = await gw.open_task(["gh/search"])
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "Tether-Task": task_id}
    token = await gw.agent.token()
    signed = gw.agent._session.signed_headers("POST", gw.url + "/mcp", token)
    for origin in ("http://evil.example", "null", gw.url.replace("127.0.0.1", "127.0.0.2"), gw.url + "1"):
        refused = await gw.http.post("/mcp", json=body, headers={**headers, **signed, "Origin": origin})
        assert refused.status_code == 403, origin
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("forbidden-origin")
    allowed = await gw.http.post("/mcp", json=body, headers={**headers, **signed, "Origin": gw.url})
    assert allowed.status_code == 200, allowed.text


def test_same_origin_compares_scheme_host_and_port() -> None:
    base = "http://127.0.0.1:8700"
    assert same_origin("http://127.0.0.1:8700", base)
    assert same_origin("HTTP://127.0.0.1:8700/", base)
    assert same_origin("https://tether.example", "https://tether.example:443")
    for origin in (
        "null",
        "",
        "http://127.0.0.1:8701",
        "https://127.0.0.1:8700",
        "http://127.0.0.1.evil.example:8700",
        "http://user@127.0.0.1:8700",
        "http://127.0.0.1:8700/x",
        "http://[::1:8700",
    ):
        assert not same_origin(origin, base), origin


async def test_a_context_change_re_decides_the_next_call(gw: Gateway) -> None:
    task_id = await gw.open_task(["gh/search", "gh/whoami"])
    async with gw.client(task_id) as client:
        assert not (await client.call_tool("gh__whoami", {})).is_error
        patched = await gw.agent.request("PATCH", f"/v1/tasks/{task_id}", json={"tools": ["gh/search"]})
        assert patched.status_code == 200, patched.text
        with pytest.raises(MCPError) as refused:
            await client.call_tool("gh__whoami", {})
        assert "did not declare" in refused.value.error.message
        assert [tool.name for tool in (await client.list_tools()).tools] == ["gh__search"]
        assert not (await client.call_tool("gh__search", {"query": "still"})).is_error


async def test_sampling_requests_from_an_upstream_are_refused(gw: Gateway) -> None:
    task_id = await gw.open_task(["gh/sample", "gh/search"])
    async with gw.client(task_id) as client:
        answered = await client.call_tool("gh__sample", {})
        assert answered.content[0].text.startswith("sampling refused")  # type: ignore[union-attr]
        assert not (await client.call_tool("gh__search", {"query": "after"})).is_error


async def test_the_upstream_runs_alone_with_a_clean_environment(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = new_canary("tether-env")
    monkeypatch.setenv("TETHER_ROOT_KEY", canary)  # what a node's own secrets look like in its environment
    task_id = await gw.open_task(["gh/env", "gh/whoami"])
    async with gw.client(task_id) as client:
        seen = (await client.call_tool("gh__env", {})).structured_content
        who = (await client.call_tool("gh__whoami", {})).structured_content
    assert seen is not None
    assert who is not None
    names = set(seen["names"])
    assert "UPSTREAM_TOKEN" in names
    assert not {name for name in names if name.startswith("TETHER_")}
    # The SDK's safe defaults, the registered variable, and what Python sets for itself (locale).
    assert names <= {"HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "UPSTREAM_TOKEN", "LC_CTYPE"}
    assert seen["pgid"] == who["pid"]  # the leader of its own process group (killed as one)
    assert seen["pgid"] != os.getpgid(0)


@pytest.mark.parametrize("ending", ["revoked by an operator", "expired"])
async def test_revocation_and_expiry_kill_the_upstream(gw: Gateway, ending: str) -> None:
    ttl = 6 if ending == "expired" else 600
    task_id = await gw.open_task(["gh/whoami"], ttl_seconds=ttl)
    async with gw.client(task_id) as client:
        who = await client.call_tool("gh__whoami", {})
        assert who.structured_content is not None
        pid = who.structured_content["pid"]
        if ending == "revoked by an operator":
            response = await gw.http.post(f"/v1/tasks/{task_id}/revoke", json={}, headers=gw.admin)
            assert response.status_code == 200, response.text
        assert await wait_dead(pid, 20), f"the upstream outlived its task ({ending})"
        with pytest.raises(MCPError) as refused:
            await client.call_tool("gh__whoami", {})
        assert refused.value.error.code == DENIED


async def test_tool_calls_are_replayed_exactly_and_a_candidate_shows_what_it_changes(gw: Gateway) -> None:
    task_id = await gw.open_task(["gh/search"])
    async with gw.client(task_id) as client:
        await client.call_tool("gh__search", {"query": "flaky test"})
        await client.call_tool("gh__search", {"query": "again", "limit": 2})
        with pytest.raises(MCPError):
            await client.call_tool("gh__search", {"query": "x", "debug": True})  # no-debug
    calls = await gw.events("tool.call", task_id)
    assert [call["data"]["inputs"]["action"] for call in calls] == ["call_tool", "call_tool"]
    assert calls[1]["data"]["inputs"]["ctx"]["arguments"] == ["limit:integer", "query:string"]

    checked = await gw.http.post(
        "/v1/policies/replay", json={"since": "1d", "verify": True}, headers=gw.admin
    )
    assert checked.status_code == 200, checked.text
    verify = checked.json()["verify"]
    assert verify["reproduced"] is True, verify
    # The task's opening, two allowed calls and the refused one.
    assert verify["decisions"] == 4
    assert checked.json()["not_replayable"]["count"] == 0

    candidate = "\n".join(line for line in POLICIES.splitlines() if '@id("gh-tools")' not in line)
    answer = await gw.http.post(
        "/v1/policies/replay", json={"since": "1d", "policies": candidate}, headers=gw.admin
    )
    assert answer.status_code == 200, answer.text
    report = answer.json()["candidate"]
    assert report["counts"] == {"allowed->denied": 2, "denied->allowed": 0, "policies-changed": 1}
    assert {e["resource"] for e in report["by_policy"]["gh-tools"]["examples"]} == {"Tool::gh/search"}
