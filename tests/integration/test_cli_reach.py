"""``tether reach`` against a real server: a table for people, ``--json`` for machines, one
``error:`` line for an unknown secret or agent; never a secret value."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.governed import EXAMPLE_POLICIES
from tests.integration.test_cli import SECRET_VALUES, Node, assert_error, new_value, run, running_node
from tests.unit.test_reach_dot import parse


@pytest.fixture(scope="module")
def reach_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("cli-reach")
    with running_node(base, forbidden=SECRET_VALUES) as node:
        value = new_value()
        put = run(
            [
                *("secret", "put", "prod/github/token", "--stdin", "--sensitivity", "internal"),
                *("--purpose", "deploy", "--destination", "github"),
            ],
            node.env(),
            stdin=value,
        )
        assert put.returncode == 0, put.stderr
        added = run(
            [
                *("destination", "add", "github", "--base-url", "https://api.github.com"),
                *("--secret", "prod/github/token", "--inject-header", "Authorization=Bearer {secret}"),
            ],
            node.env(),
        )
        assert added.returncode == 0, added.stderr
        deployed = run(["policy", "deploy", str(EXAMPLE_POLICIES)], node.env())
        assert deployed.returncode == 0, deployed.stderr
        key = base / "agent.jwk"
        assert run(["keygen", "-o", str(key)], node.env()).returncode == 0
        public = key.with_name(key.name + ".pub.json")
        registered = run(
            [
                *("agent", "register", "deploy-bot", "--public-key", str(public)),
                *("--environment", "prod", "--label", "deploy"),
            ],
            node.env(),
        )
        assert registered.returncode == 0, registered.stderr
        issues = Path(__file__).resolve().parents[2] / "examples" / "mcp" / "issues_server.py"
        mcp = run(
            [
                *("mcp-server", "add", "issues", "--command", sys.executable),
                *("--env", "ISSUES_TOKEN=secret:prod/github/token", "--", str(issues)),
            ],
            node.env(),
        )
        assert mcp.returncode == 0, mcp.stderr
        yield node


def test_reach_secret_prints_a_table_and_json(reach_node: Node) -> None:
    table = run(["reach", "secret", "prod/github/token"], reach_node.env())
    assert table.returncode == 0, table.stderr
    assert "deploy-bot" in table.stdout
    assert "use-secret-within-intent" in table.stdout
    assert "Decided through policy set version 1." in table.stdout
    assert "github" in table.stdout  # the destination that injects it
    as_json = run(["reach", "secret", "prod/github/token", "--json"], reach_node.env())
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert {name for rule in body["reach"] for name in rule["agents"]} == {"deploy-bot"}
    assert body["live"]["tasks"] == []


def test_reach_agent_prints_its_secrets_destinations_and_tools(reach_node: Node) -> None:
    table = run(["reach", "agent", "deploy-bot"], reach_node.env())
    assert table.returncode == 0, table.stderr
    assert "prod/github/token" in table.stdout
    assert "Destinations (egress injects the secret" in table.stdout
    assert "MCP tools (call_tool" in table.stdout
    assert "issues/search_issues" in table.stdout
    assert "mcp-issues-search-for-deploys" in table.stdout
    body = json.loads(run(["reach", "agent", "deploy-bot", "--json"], reach_node.env()).stdout)
    assert {rule["secret"] for rule in body["reach"]} == {"prod/github/token"}
    assert {(r["destination"], r["action"]) for r in body["destination_reach"]} == {
        ("github", "issue"),
        ("github", "activate"),
    }
    assert [r["tool"] for r in body["tool_reach"]] == ["issues/search_issues"]


def test_reach_of_unknown_names_is_one_error_line(reach_node: Node) -> None:
    assert_error(run(["reach", "secret", "prod/nope"], reach_node.env()), 1, "no secret")
    assert_error(run(["reach", "agent", "nobody"], reach_node.env()), 1, "no agent")
    assert_error(run(["reach", "secret", "../x"], reach_node.env()), 2, "invalid secret path")


def test_reach_findings_prints_a_table_json_and_refuses_a_bad_window(reach_node: Node) -> None:
    table = run(["reach", "findings"], reach_node.env())
    assert table.returncode == 0, table.stderr
    assert "reach-never-used" in table.stdout
    body = json.loads(run(["reach", "findings", "--since", "7d", "--json"], reach_node.env()).stdout)
    assert body["since"] == "7d"
    assert {f["kind"] for f in body["findings"]} >= {"reach-never-used", "revealable-injected"}
    assert_error(run(["reach", "findings", "--since", "forever"], reach_node.env()), 1, "since")


def test_reach_format_dot_draws_agents_secrets_and_destinations(reach_node: Node) -> None:
    dot = run(["reach", "secret", "prod/github/token", "--format", "dot"], reach_node.env())
    assert dot.returncode == 0, dot.stderr
    nodes, edges = parse(dot.stdout)
    assert {"agent:deploy-bot", "secret:prod/github/token", "destination:github"} <= set(nodes)
    assert ("secret:prod/github/token", "destination:github", "injects") in edges
    assert any(a == "agent:deploy-bot" and b == "secret:prod/github/token" for a, b, _ in edges)
    of_agent = run(["reach", "agent", "deploy-bot", "--format", "dot"], reach_node.env())
    assert of_agent.returncode == 0, of_agent.stderr
    agent_nodes, agent_edges = parse(of_agent.stdout)
    assert agent_nodes["agent:deploy-bot"] == "deploy-bot"
    assert ("agent:deploy-bot", "tool:issues/search_issues", "call_tool") in agent_edges
    assert ("secret:prod/github/token", "destination:github", "injects") in agent_edges
    as_json = run(["reach", "agent", "deploy-bot", "--format", "json"], reach_node.env())
    assert json.loads(as_json.stdout)["agent"] == "deploy-bot"
    bad = run(["reach", "secret", "prod/github/token", "--format", "svg"], reach_node.env())
    assert bad.returncode == 2
    assert "svg" in bad.stderr
