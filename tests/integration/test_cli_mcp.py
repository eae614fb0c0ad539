"""``tether mcp-server`` and ``tether mcp connect`` against ``tether server`` in a subprocess: register,
list, show, check, diff, approve and remove upstreams; one-line errors for bad input; and the stdio
bridge driven by the MCP SDK's own stdio client (the way a desktop client starts it). No secret value
is ever printed."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.integration.test_cli import (
    Node,
    assert_error,
    new_value,
    run,
    running_node,
)
from tests.integration.test_mcp_gateway import POLICIES, UPSTREAM, alive, wait_dead
from tether.crypto.jose import generate_private_jwk

SECRET = "cli/mcp/token"
URL_ADD = ["mcp-server", "add", "x", "--url", "https://mcp.example.test/mcp"]


@pytest.fixture(scope="module")
def mcp_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    value = new_value()
    with running_node(tmp_path_factory.mktemp("cli-mcp"), forbidden=[value]) as started:
        put = run(["secret", "put", SECRET, "--stdin"], started.env(), stdin=value)
        assert put.returncode == 0, put.stderr
        response = httpx.put(
            f"{started.addr}/v1/policies",
            json={"policies": POLICIES.replace('"gh"', '"cligh"')},
            headers={"Authorization": f"Bearer {started.token}"},
        )
        assert response.status_code in (200, 201), response.text
        yield started


def ok(args: list[str], node: Node) -> subprocess.CompletedProcess[str]:
    result = run(args, node.env())
    assert result.returncode == 0, (args, result.stderr)
    return result


def add_stdio(name: str, *extra: str, json_output: bool = False) -> list[str]:
    """``mcp-server add`` of the test upstream (``extra``: its arguments, after ``--``)."""
    return [
        "mcp-server",
        "add",
        name,
        "--command",
        sys.executable,
        "--env",
        f"UPSTREAM_TOKEN=secret:{SECRET}",
        "--timeout-seconds",
        "10",
        *(["--json"] if json_output else []),
        "--",
        str(UPSTREAM),
        *extra,
    ]


def test_add_list_show_remove(mcp_node: Node) -> None:
    added = json.loads(ok(add_stdio("cli-one", json_output=True), mcp_node).stdout)
    assert added["kind"] == "stdio"
    assert added["env"] == {"UPSTREAM_TOKEN": SECRET}
    assert {tool["name"] for tool in added["tools"]} >= {"search", "whoami"}
    listed = ok(["mcp-server", "list"], mcp_node).stdout
    assert "cli-one" in listed
    assert SECRET in listed
    shown = ok(["mcp-server", "show", "cli-one"], mcp_node).stdout
    assert "search" in shown
    assert "Search the issues." in shown
    assert ok(["mcp-server", "diff", "cli-one"], mcp_node).stdout.strip() == "Nothing in quarantine."
    ok(["mcp-server", "remove", "cli-one", "--yes"], mcp_node)
    assert "cli-one" not in ok(["mcp-server", "list"], mcp_node).stdout


def test_one_line_errors(mcp_node: Node) -> None:
    env = mcp_node.env()
    assert_error(run(["mcp-server", "add", "x"], env), 2, "--command", "--url")
    assert_error(
        run(["mcp-server", "add", "x", "--command", "/bin/true", "--env", "T=plain"], env), 2, "secret:"
    )
    assert_error(
        run([*URL_ADD, "--inject", "cookie:x", "--secret", SECRET], env),
        2,
        "header:",
    )
    assert_error(run(["mcp-server", "add", "x", "--command", "python3"], env), 1, "absolute path")
    assert_error(run(["mcp-server", "add", "x", "--url", "http://10.1.2.3/mcp"], env), 1, "https")
    assert_error(run(["mcp-server", "show", "nope"], env), 1, "no MCP server")
    assert_error(run(["mcp-server", "remove", "nope", "--yes"], env), 1, "no MCP server")


def test_check_diff_approve_after_a_rug_pull(mcp_node: Node, tmp_path: Path) -> None:
    rug = tmp_path / "rug"
    ok(add_stdio("cli-rug", "--rug-file", str(rug)), mcp_node)
    assert ok(["mcp-server", "check", "cli-rug"], mcp_node).stdout.strip() == "Every tool matches its pin."
    rug.write_text("pulled")
    checked = ok(["mcp-server", "check", "cli-rug"], mcp_node).stdout
    assert "exfiltrate" in checked
    assert "search" in checked
    diff = ok(["mcp-server", "diff", "cli-rug"], mcp_node).stdout
    assert '-  "description": "Search the issues."' in diff
    assert "evil.test" in diff
    assert "cli-rug/exfiltrate (seen)" in diff
    approved = ok(["mcp-server", "approve", "cli-rug", "search"], mcp_node).stdout
    assert "exfiltrate" in approved
    assert (
        ok(["mcp-server", "approve", "cli-rug"], mcp_node).stdout.strip()
        == "Approved; nothing in quarantine."
    )
    assert_error(run(["mcp-server", "approve", "cli-rug", "nope"], mcp_node.env()), 1, "no quarantined tool")
    ok(["mcp-server", "remove", "cli-rug", "--yes"], mcp_node)


def register_agent(node: Node, name: str) -> tuple[str, dict[str, str]]:
    """A new agent on ``node`` (its id) and its private key."""
    private = generate_private_jwk()
    public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
    attributes = {"team": "platform", "environment": "prod", "owner": "alice", "labels": ["deploy"]}
    response = httpx.post(
        f"{node.addr}/v1/agents",
        json={"name": name, "public_key": public, "attributes": attributes},
        headers={"Authorization": f"Bearer {node.token}"},
    )
    assert response.status_code == 201, response.text
    return response.json()["id"], private


def test_stdio_bridge_serves_a_stock_stdio_client(mcp_node: Node, tmp_path: Path) -> None:
    ok(add_stdio("cligh"), mcp_node)
    agent_id, private = register_agent(mcp_node, "ide")
    key = tmp_path / "agent.jwk"
    key.write_text(json.dumps(private))

    from tether.sdk import Agent

    with Agent(mcp_node.addr, agent_id, private) as agent:
        opened = agent.request(
            "POST",
            "/v1/tasks",
            json={"purpose": "deploy", "objective": "ide", "tools": ["cligh/search"], "ttl_seconds": 600},
        )
        assert opened.status_code == 201, opened.text
        task_id = opened.json()["id"]
    tether = shutil.which("tether", path=str(Path(sys.executable).parent))
    assert tether is not None
    params = StdioServerParameters(
        command=tether,
        args=[
            "mcp",
            "connect",
            "--addr",
            mcp_node.addr,
            "--agent",
            agent_id,
            "--agent-key",
            str(key),
            "--task",
            task_id,
        ],
    )

    async def drive() -> None:
        async with asyncio.timeout(60), Client(params) as client:
            tools = await client.list_tools()
            assert [tool.name for tool in tools.tools] == ["cligh__search"]
            result = await client.call_tool("cligh__search", {"query": "from the ide"})
            assert result.content[0].text == "results for from the ide (limit 10)"  # type: ignore[union-attr]
            with pytest.raises(MCPError) as refused:
                await client.call_tool("cligh__whoami", {})
            assert "did not declare" in refused.value.error.message

    asyncio.run(drive())
    bad = run(
        ["mcp", "connect", "--agent", agent_id, "--agent-key", str(key), "--task", "nope"], mcp_node.env()
    )
    assert_error(bad, 2, "--task", "tsk_")


def test_stopping_the_node_kills_the_upstreams_it_started(tmp_path: Path) -> None:
    """A stdio upstream holds a secret in its environment: neither it nor what it started may outlive
    the node (here the one-process node, whose app runs without a lifespan). The upstream itself
    would exit when its stdin closes; a process it started would not."""
    value = new_value()
    with running_node(tmp_path, forbidden=[value]) as node:
        assert run(["secret", "put", SECRET, "--stdin"], node.env(), stdin=value).returncode == 0
        policies = httpx.put(
            f"{node.addr}/v1/policies",
            json={"policies": POLICIES.replace('"gh"', '"stopgh"')},
            headers={"Authorization": f"Bearer {node.token}"},
        )
        assert policies.status_code in (200, 201), policies.text
        ok(add_stdio("stopgh"), node)
        agent_id, private = register_agent(node, "stopper")

        from tether.sdk import Agent

        with Agent(node.addr, agent_id, private) as agent:
            opened = agent.request(
                "POST",
                "/v1/tasks",
                json={
                    "purpose": "deploy",
                    "objective": "stop",
                    "tools": ["stopgh/spawn"],
                    "ttl_seconds": 600,
                },
            )
            assert opened.status_code == 201, opened.text
            called = agent.request(
                "POST",
                "/mcp",
                json={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": {"name": "stopgh__spawn"},
                },
                headers={"Tether-Task": opened.json()["id"], "Accept": "application/json, text/event-stream"},
            )
        assert called.status_code == 200, called.text
        pid = called.json()["result"]["structuredContent"]["pid"]
        assert alive(pid)
    # The node has stopped (Ctrl-C), and its log holds no secret value (running_node checks).
    assert asyncio.run(wait_dead(pid)), (tmp_path / "server.log").read_text(errors="replace")[-2000:]
