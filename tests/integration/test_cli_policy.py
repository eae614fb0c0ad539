"""``tether policy`` against a real server in a subprocess: validate (online and offline),
deploy, show, versions, rollback, and running test cases and explanations locally, with the
exit codes CI relies on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_cli import Node, assert_error, clean_env, run, running_node

ALLOW_OPEN = '@id("open-anything")\npermit(principal, action == Action::"open_task", resource);\n'
DENY_PROD = (
    '@id("no-prod")\nforbid(principal, action == Action::"open_task", resource)\n'
    'when { principal.environment == "prod" };\n'
)
INVALID = '@id("bad")\npermit(principal, action == Action::"no_such_action", resource);\n'

CONTEXT: dict[str, Any] = {
    "task": {
        "id": "t1",
        "purpose": "deploy",
        "objective_sha256": "0" * 64,
        "sensitivity": 1,
        "secrets": [],
        "destinations": [],
        "tools": [],
        "depth": 0,
        "chain": [],
        "age_seconds": 0,
        "remaining_seconds": 600,
    },
    "approval": False,
    "mode": "reveal",
    "destination": "",
    "request": {"method": "GET", "path": "/"},
    "uses": 0,
}


def agent(name: str, environment: str) -> dict[str, Any]:
    return {
        "type": "Agent",
        "id": name,
        "attributes": {"team": "platform", "environment": environment, "owner": "alice", "labels": []},
    }


def case(name: str, environment: str, expect: str) -> dict[str, Any]:
    return {
        "name": name,
        "principal": agent(f"{environment}-bot", environment),
        "action": "open_task",
        "resource": agent(f"{environment}-bot", environment),
        "context": CONTEXT,
        "expect": expect,
    }


def yaml_cases(cases: list[dict[str, Any]]) -> str:
    # JSON is YAML: flow style keeps this file free of a YAML writer.
    return "cases:\n" + "".join(f"  - {json.dumps(c)}\n" for c in cases)


@pytest.fixture(scope="module")
def policy_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with running_node(tmp_path_factory.mktemp("cli-policy"), forbidden=[]) as started:
        yield started


def ok_json(args: list[str], env: dict[str, str]) -> Any:
    result = run([*args, "--json"], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_validate_offline_and_online(policy_node: Node, tmp_path: Path) -> None:
    good = write(tmp_path, "good.cedar", ALLOW_OPEN + DENY_PROD)
    bad = write(tmp_path, "bad.cedar", INVALID)
    offline = ok_json(["policy", "validate", str(good), "--offline"], clean_env())
    assert offline["valid"] is True
    assert offline["policy_ids"] == ["open-anything", "no-prod"]
    online = ok_json(["policy", "validate", str(good)], policy_node.env())
    assert online["policy_ids"] == ["open-anything", "no-prod"]
    text = run(["policy", "validate", str(good), "--offline"], clean_env())
    assert text.returncode == 0
    assert "is valid" in text.stdout
    assert_error(run(["policy", "validate", str(bad), "--offline"], clean_env()), 1, "no_such_action")
    assert_error(run(["policy", "validate", str(bad)], policy_node.env()), 1, "no_such_action")
    assert_error(run(["policy", "validate", str(tmp_path / "absent.cedar"), "--offline"], clean_env()), 2)


def test_deploy_show_versions_rollback(policy_node: Node, tmp_path: Path) -> None:
    env = policy_node.env()
    first = ok_json(
        ["policy", "deploy", str(write(tmp_path, "a.cedar", ALLOW_OPEN)), "--comment", "first"], env
    )
    second = ok_json(["policy", "deploy", str(write(tmp_path, "b.cedar", ALLOW_OPEN + DENY_PROD))], env)
    assert second["version"] == first["version"] + 1
    assert second["policy_ids"] == ["open-anything", "no-prod"]

    shown = run(["policy", "show"], env)
    assert shown.returncode == 0, shown.stderr
    assert f"version {second['version']} (active)" in shown.stdout
    assert 'forbid(principal, action == Action::"open_task", resource)' in shown.stdout
    old = ok_json(["policy", "show", "--version", str(first["version"])], env)
    assert old["policies"] == ALLOW_OPEN
    assert old["active"] is False

    versions = ok_json(["policy", "versions"], env)
    assert versions["active_version"] == second["version"]
    table = run(["policy", "versions"], env)
    assert table.returncode == 0
    assert "first" in table.stdout

    rolled = run(["policy", "rollback", str(first["version"])], env)
    assert rolled.returncode == 0, rolled.stderr
    assert f"Rolled back to policy set version {first['version']}" in rolled.stdout
    assert ok_json(["policy", "show"], env)["version"] == first["version"]
    assert_error(run(["policy", "rollback", "999"], env), 1, "999")

    refused = run(["policy", "deploy", str(write(tmp_path, "bad.cedar", INVALID))], env)
    assert_error(refused, 1, "no_such_action")
    assert ok_json(["policy", "show"], env)["version"] == first["version"]


def test_roles(policy_node: Node, tmp_path: Path) -> None:
    created = ok_json(["operator", "create", "sw-policy", "--role", "secret-writer"], policy_node.env())
    writer = policy_node.env(token=created["token"])
    result = run(["policy", "deploy", str(write(tmp_path, "a.cedar", ALLOW_OPEN))], writer)
    assert_error(result, 1)


def test_cases_pass_and_fail_with_exit_codes(policy_node: Node, tmp_path: Path) -> None:
    policies = write(tmp_path, "p.cedar", ALLOW_OPEN + DENY_PROD)
    passing = write(
        tmp_path,
        "cases.yaml",
        yaml_cases([case("dev may open", "dev", "allow"), case("prod may not", "prod", "deny")]),
    )
    result = run(["policy", "test", str(passing), "--policies", str(policies)], clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 of 2 cases passed" in result.stdout
    assert "ok   dev may open" in result.stdout

    failing = write(tmp_path, "failing.json", json.dumps([case("prod may open", "prod", "allow")]))
    result = run(["policy", "test", str(failing), "--policies", str(policies)], clean_env())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL prod may open" in result.stdout
    assert "no-prod" in result.stdout
    report = json.loads(
        run(["policy", "test", str(failing), "--policies", str(policies), "--json"], clean_env()).stdout
    )
    assert report["passed"] == 0
    assert report["failed"][0]["name"] == "prod may open"

    # Without --policies, the server's active set is tested.
    ok_json(["policy", "deploy", str(write(tmp_path, "open.cedar", ALLOW_OPEN))], policy_node.env())
    result = run(["policy", "test", str(failing)], policy_node.env())
    assert result.returncode == 0, result.stdout + result.stderr

    malformed = write(tmp_path, "malformed.yaml", "cases:\n  - {name: x}\n")
    assert_error(run(["policy", "test", str(malformed), "--policies", str(policies)], clean_env()), 2)


def test_explain_one_request(tmp_path: Path) -> None:
    policies = write(tmp_path, "p.cedar", ALLOW_OPEN + DENY_PROD)
    request = case("r", "prod", "deny")
    del request["name"], request["expect"]
    path = write(tmp_path, "request.json", json.dumps(request))
    result = run(["policy", "explain", "--request", str(path), "--policies", str(policies)], clean_env())
    assert result.returncode == 0, result.stderr
    assert "denied" in result.stdout
    assert "no-prod" in result.stdout
    data = json.loads(
        run(
            ["policy", "explain", "--request", str(path), "--policies", str(policies), "--json"], clean_env()
        ).stdout
    )
    assert data["decision"]["allowed"] is False
