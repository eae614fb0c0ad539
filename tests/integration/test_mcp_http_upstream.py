"""The MCP gateway with a streamable HTTP upstream: the secret injected into a header of every
request to it (and never into the agent's hands), echoes of it redacted, and the registry's refusal
of upstream URLs that could be turned against Tether's network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from mcp.shared.exceptions import MCPError

from tests.integration.governed import deploy_policies
from tests.integration.mcp_upstreams.upstream import http_app
from tests.integration.test_egress import _serve, _stop
from tests.integration.test_mcp_gateway import POLICIES, SECRET, Gateway, new_agent
from tests.security.canaries import new_canary
from tether.api import create_app
from tether.api.routes_mcp import close_mcp
from tether.broker import Broker
from tether.mcp.front import UPSTREAM_FAILED


async def _serve_with_lifespan(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.005)
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return server, task, port


@pytest.fixture
async def http_gw(broker: Broker, tmp_path: Path) -> AsyncIterator[tuple[Gateway, list[str], str]]:
    secret = new_canary("mcp-http")
    seen: list[str] = []
    up_server, up_task, up_port = await _serve_with_lifespan(http_app(secret, seen))
    app = create_app(broker)
    server, task, port = await _serve(app)
    url = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {broker.root_token}"}  # type: ignore[attr-defined]
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            await deploy_policies(http, admin, POLICIES)
            response = await http.put(
                f"/v1/secrets/{SECRET}",
                json={"value": secret, "sensitivity": "internal", "purposes": ["deploy"], "destinations": []},
                headers=admin,
            )
            assert response.status_code in (200, 201), response.text
            agent = await new_agent(http, url, admin, "mcp-http-bot")
            gateway = Gateway(broker, url, http, admin, agent, secret, tmp_path / "rug")
            gateway.stop_upstream = lambda: _stop(up_server, up_task)
            body = {
                "name": "gh",
                "url": f"http://127.0.0.1:{up_port}/mcp",
                "secret": SECRET,
                "inject": {"name": "Authorization", "template": "Bearer {secret}"},
                "timeout_seconds": 10,
            }
            response = await http.post("/v1/mcp-servers", json=body, headers=admin)
            assert response.status_code == 201, response.text
            yield gateway, seen, f"http://127.0.0.1:{up_port}/mcp"
    finally:
        await close_mcp(app)
        await _stop(server, task)
        if not up_task.done():
            await _stop(up_server, up_task)


async def test_http_upstream_gets_the_secret_in_its_header_and_the_agent_never_does(
    http_gw: tuple[Gateway, list[str], str],
) -> None:
    gw, seen, _ = http_gw
    task_id = await gw.open_task(["gh/*"])
    async with gw.client(task_id) as client:
        result = await client.call_tool("gh__search", {"query": "over http"})
        assert result.content[0].text == "results for over http (limit 10)"  # type: ignore[union-attr]
        echoed = await client.call_tool("gh__echo_secret", {})
        assert gw.secret not in echoed.model_dump_json()
        assert "[REDACTED]" in echoed.model_dump_json()
        with pytest.raises(MCPError) as refused:
            await client.call_tool("gh__search", {"query": f"Bearer {gw.secret}"})
        assert "exfiltration" in refused.value.error.message
    assert seen
    assert all(auth == f"Bearer {gw.secret}" for auth in seen)  # every upstream request had it
    assert await gw.events("tool.redact", task_id)


async def test_an_http_upstream_that_is_gone_is_an_upstream_failure(
    http_gw: tuple[Gateway, list[str], str],
) -> None:
    gw, _, _ = http_gw
    task_id = await gw.open_task(["gh/*"])
    async with gw.client(task_id) as client:
        assert not (await client.call_tool("gh__search", {"query": "up"})).is_error
        assert gw.stop_upstream is not None
        await gw.stop_upstream()
        with pytest.raises(MCPError) as gone:
            await client.call_tool("gh__search", {"query": "down"})
    # -32002 with Tether's own words (never -32000 as if the upstream had said so itself).
    assert gone.value.error.code == UPSTREAM_FAILED
    assert gone.value.error.message.startswith("upstream 'gh' failed: the upstream could not be reached (")
    assert gone.value.error.data is None


async def test_registering_an_upstream_that_refuses_the_token_says_what_it_answered(
    http_gw: tuple[Gateway, list[str], str],
) -> None:
    gw, _, url = http_gw
    wrong = new_canary("mcp-http-wrong")
    response = await gw.http.put(
        "/v1/secrets/dev/other-token",
        json={"value": wrong, "sensitivity": "internal", "purposes": ["deploy"], "destinations": []},
        headers=gw.admin,
    )
    assert response.status_code in (200, 201), response.text
    body = {
        "name": "gh-wrong",
        "url": url,
        "secret": "dev/other-token",
        "inject": {"name": "Authorization", "template": "Bearer {secret}"},
        "timeout_seconds": 10,
    }
    response = await gw.http.post("/v1/mcp-servers", json=body, headers=gw.admin)
    # The operator learns what the upstream answered (it was "ExceptionGroup": the SDK's client
    # wraps the failure in its task group), never the token.
    assert response.status_code == 422, response.text
    assert "could not be opened (the upstream answered HTTP 401)" in response.json()["detail"]
    assert wrong not in response.text
    assert (await gw.http.get("/v1/mcp-servers/gh-wrong", headers=gw.admin)).status_code == 404


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data", "https"),
        ("http://10.0.0.1/mcp", "https"),
        ("https://user:pw@mcp.example.test/mcp", "credentials"),
        ("https://mcp.example.test/mcp?target=http://127.0.0.1", "query"),
        ("https://mcp.example.test/a/../mcp", "segments"),
        ("https://mcp.example.test/%2e%2e/mcp", "segments"),
        ("file:///etc/passwd", "https"),
        ("gopher://127.0.0.1:6379/_", "https"),
        ("https://mcp.example.test/mcp#frag", "fragment"),
    ],
)
async def test_registry_refuses_upstream_urls_that_reach_elsewhere(
    http_gw: tuple[Gateway, list[str], str], url: str, why: str
) -> None:
    gw, _, _ = http_gw
    body = {"name": "evil", "url": url, "secret": SECRET, "inject": {"name": "Authorization"}}
    response = await gw.http.post("/v1/mcp-servers", json=body, headers=gw.admin)
    assert response.status_code == 422, response.text
    assert why in response.text
    assert (await gw.http.get("/v1/mcp-servers/evil", headers=gw.admin)).status_code == 404


async def test_registry_refuses_unsafe_commands_and_environments(
    http_gw: tuple[Gateway, list[str], str],
) -> None:
    gw, _, _ = http_gw
    for body in (
        {"name": "rel", "command": "python3", "env": {"T": SECRET}},  # not absolute: no PATH lookup
        {"name": "ld", "command": "/bin/true", "env": {"LD_PRELOAD": SECRET}},
        {"name": "path", "command": "/bin/true", "env": {"PATH": SECRET}},
        {"name": "nosecret", "command": "/bin/true", "env": {"T": "no/such/secret"}},
        {"name": "Bad_Name", "command": "/bin/true"},
        {"name": "both", "command": "/bin/true", "url": "https://mcp.example.test/mcp"},
    ):
        response = await gw.http.post("/v1/mcp-servers", json=body, headers=gw.admin)
        assert response.status_code in (404, 422), (body, response.text)
    # An upstream that does not speak MCP cannot be registered (nothing to pin).
    response = await gw.http.post(
        "/v1/mcp-servers", json={"name": "mute", "command": "/bin/true"}, headers=gw.admin
    )
    assert response.status_code == 422, response.text
    names = [s["name"] for s in (await gw.http.get("/v1/mcp-servers", headers=gw.admin)).json()["servers"]]
    assert names == ["gh"]


async def test_operators_without_destination_write_cannot_register(
    http_gw: tuple[Gateway, list[str], str],
) -> None:
    gw, _, url = http_gw
    response = await gw.http.post("/v1/operators", json={"name": "aud", "role": "auditor"}, headers=gw.admin)
    assert response.status_code == 201, response.text
    auditor = {"Authorization": f"Bearer {response.json()['token']}"}
    body = {"name": "sneaky", "url": url, "secret": SECRET, "inject": {"name": "Authorization"}}
    assert (await gw.http.post("/v1/mcp-servers", json=body, headers=auditor)).status_code == 403
    assert (await gw.http.delete("/v1/mcp-servers/gh", headers=auditor)).status_code == 403
