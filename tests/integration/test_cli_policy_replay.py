"""``tether policy replay`` against a real server: decisions made by a real agent over HTTP are
replayed; ``--verify`` reproduces them (exit 0), a candidate that drops a permit prints what would
change by policy and by agent, ``--json`` for machines, a bad candidate is refused with its line
and column before anything is sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.governed import EXAMPLE_POLICIES
from tests.integration.test_cli import SECRET_VALUES, Node, new_value, run, running_node
from tether.sdk import Agent

EXAMPLE = EXAMPLE_POLICIES.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def replay_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("cli-replay")
    with running_node(base, forbidden=SECRET_VALUES) as node:
        put = run(
            [
                *("secret", "put", "prod/github/token", "--stdin", "--sensitivity", "internal"),
                *("--purpose", "deploy", "--destination", "github"),
            ],
            node.env(),
            stdin=new_value(),
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
        assert run(["policy", "deploy", str(EXAMPLE_POLICIES)], node.env()).returncode == 0
        key = base / "agent.jwk"
        assert run(["keygen", "-o", str(key)], node.env()).returncode == 0
        registered = run(
            [
                *(
                    "agent",
                    "register",
                    "deploy-bot",
                    "--public-key",
                    str(key.with_name(key.name + ".pub.json")),
                ),
                *("--environment", "prod", "--label", "deploy"),
            ],
            node.env(),
        )
        assert registered.returncode == 0, registered.stderr
        agent_id = json.loads(run(["agent", "show", "deploy-bot", "--json"], node.env()).stdout)["id"]
        with Agent(node.addr, agent_id, key) as bot:
            opened = bot.request(
                "POST",
                "/v1/tasks",
                json={
                    "purpose": "deploy",
                    "objective": "ship",
                    "sensitivity": "internal",
                    "secrets": ["prod/github/token"],
                    "destinations": ["github"],
                    "ttl_seconds": 600,
                },
            )
            assert opened.status_code == 201, opened.text
            grant = bot.request(
                "POST",
                f"/v1/tasks/{opened.json()['id']}/grants",
                json={"secret": "prod/github/token", "destination": "github", "mode": "reveal"},
            )
            assert grant.status_code == 201, grant.text
            for _ in range(2):
                used = bot.request("POST", f"/v1/grants/{grant.json()['id']}/activate")
                assert used.status_code == 200, used.text
        yield node


def _without_reveal(tmp_path: Path) -> Path:
    start = EXAMPLE.index('@id("reveal-low-sensitivity")')
    end = EXAMPLE.index("};", start) + 2
    path = tmp_path / "candidate.cedar"
    path.write_text(EXAMPLE[:start] + EXAMPLE[end:], encoding="utf-8")
    return path


def test_verify_reproduces_every_decision(replay_node: Node) -> None:
    checked = run(["policy", "replay", "--verify", "--since", "1d"], replay_node.env())
    assert checked.returncode == 0, checked.stderr
    assert "Self-check passed" in checked.stdout
    assert "all 4 replayed decisions reproduced" in checked.stdout
    body = json.loads(run(["policy", "replay", "--verify", "--json"], replay_node.env()).stdout)
    assert body["verify"]["reproduced"] is True
    assert body["verify"]["decisions"] == 4


def test_a_candidate_prints_what_would_change(replay_node: Node, tmp_path: Path) -> None:
    candidate = _without_reveal(tmp_path)
    table = run(["policy", "replay", str(candidate), "--since", "7d"], replay_node.env())
    assert table.returncode == 0, table.stderr
    assert "3 allowed → denied" in table.stdout
    assert "reveal-low-sensitivity" in table.stdout
    assert "spiffe://tether.local/agent/deploy-bot" in table.stdout
    body = json.loads(run(["policy", "replay", str(candidate), "--json"], replay_node.env()).stdout)
    assert body["candidate"]["counts"]["allowed->denied"] == 3
    assert body["verify"] is None
    # Nothing was deployed.
    active = json.loads(run(["policy", "show", "--json"], replay_node.env()).stdout)
    assert active["version"] == 1


def test_a_bad_candidate_or_window_is_refused(replay_node: Node, tmp_path: Path) -> None:
    broken = tmp_path / "broken.cedar"
    broken.write_text('@id("a") permit(principal, action, resource)\n', encoding="utf-8")
    refused = run(["policy", "replay", str(broken)], replay_node.env())
    assert refused.returncode == 1
    assert f"{broken}:" in refused.stderr
    assert f"{broken}:1:45: policies do not parse" in refused.stderr
    nothing = run(["policy", "replay"], replay_node.env())
    assert nothing.returncode == 2
    window = run(["policy", "replay", "--verify", "--since", "forever"], replay_node.env())
    assert window.returncode == 1
    assert "since" in window.stderr
