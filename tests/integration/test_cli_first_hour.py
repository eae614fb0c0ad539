"""What a newcomer hit in the CLI's first hour, against a real server, agents working through
the SDK: tasks newest first (``--sort``); agents named by name or SPIFFE ID everywhere, operators
by name; the audit table showing the deciding policies, ``missing``, a write's fingerprint and a
token's thumbprint and expiry; offline verification saying which checkpoint it checked; an
empty policy set refused without ``--allow-empty``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.governed import SECRETS, seed
from tests.integration.test_cli import TETHER, Node, assert_error, clean_env, free_port, new_value, run, stop
from tether.crypto.jose import generate_private_jwk
from tether.sdk import Agent, ApprovalRequired

DEPLOY: dict[str, Any] = {
    "purpose": "deploy",
    "objective": "ship release 1.2",
    "secrets": ["prod/docs/token", "prod/github/token"],
    "destinations": ["github"],
    "ttl_seconds": 600,
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One node (one worker: these tests share two cores with others) seeded with the example."""
    base = tmp_path_factory.mktemp("cli-first-hour")
    values = {path: new_value() for path in SECRETS}
    init = run(["init", "--data-dir", str(base / "data"), "--json"], clean_env())
    assert init.returncode == 0, init.stderr
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    with (base / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                *TETHER,
                "server",
                "--data-dir",
                str(base / "data"),
                "--listen",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (base / "server.log").read_text()
            try:
                if httpx.get(f"{addr}/v1/sys/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (base / "server.log").read_text()
            time.sleep(0.2)
        started = Node(base / "data", port, addr, json.loads(init.stdout)["root_token"], {}, init.stderr)

        async def seeding() -> None:
            async with httpx.AsyncClient(base_url=addr) as http:
                await seed(http, {"Authorization": f"Bearer {started.token}"}, values)

        asyncio.run(seeding())
        yield started
    finally:
        stop(proc)
    log_text = (base / "server.log").read_text(errors="replace")
    for value in values.values():
        assert value not in log_text


def agent(node: Node, name: str) -> Agent:
    private = generate_private_jwk()
    public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
    attributes = {
        "team": "platform",
        "environment": "prod",
        "owner": "alice",
        "labels": ["deploy", "incident"],
    }
    response = httpx.post(
        f"{node.addr}/v1/agents",
        json={"name": name, "public_key": public, "attributes": attributes},
        headers={"Authorization": f"Bearer {node.token}"},
    )
    assert response.status_code == 201, response.text
    return Agent(node.addr, response.json()["id"], private)


def ok(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = run(args, env)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def ok_json(args: list[str], env: dict[str, str]) -> Any:
    return json.loads(ok([*args, "--json"], env).stdout)


# -- item 13: tasks newest first -------------------------------------------------------------------


def test_task_list_is_newest_first_and_sorts_on_request(node: Node) -> None:
    with agent(node, "sorter") as bot:
        opened = []
        for _ in range(4):
            task = bot.task(**DEPLOY)
            opened.append(task.id)
            task.complete()
            time.sleep(0.01)  # distinct creation times
    env = node.env()
    newest = [t["id"] for t in ok_json(["task", "list", "--agent", "sorter"], env)["items"]]
    assert newest == opened[::-1]
    oldest = [
        t["id"] for t in ok_json(["task", "list", "--agent", "sorter", "--sort", "oldest"], env)["items"]
    ]
    assert oldest == opened
    by_id = [t["id"] for t in ok_json(["task", "list", "--agent", "sorter", "--sort", "id"], env)["items"]]
    assert by_id == sorted(opened)
    first_two = ok_json(["task", "list", "--agent", "sorter", "--limit", "2"], env)["items"]
    assert [t["id"] for t in first_two] == opened[:-3:-1]
    table = ok(["task", "list", "--agent", "sorter", "--limit", "2"], env).stdout
    assert "CREATED" in table
    assert "2 more task(s)" in table
    assert_error(run(["task", "list", "--after", opened[0]], env), 2, "--sort id")


# -- item 14: agents by name or SPIFFE ID, operators by name ----------------------------------------


def test_an_agent_is_named_by_name_or_spiffe_id_everywhere(node: Node) -> None:
    env = node.env()
    with agent(node, "named-bot") as bot:
        spiffe = bot.whoami()["id"]
        task = bot.task(**DEPLOY)
        task.complete()
    by_name = ok_json(["audit", "query", "--actor", "named-bot", "--kind", "task.*"], env)["events"]
    by_id = ok_json(["audit", "query", "--actor", spiffe, "--kind", "task.*"], env)["events"]
    typed = ok_json(["audit", "query", "--actor", "agent:named-bot", "--kind", "task.*"], env)["events"]
    assert by_name, "an agent's name finds its events"
    assert by_name == by_id == typed
    assert {e["actor"]["id"] for e in by_name} == {spiffe}

    shown = ok_json(["agent", "show", spiffe], env)
    assert shown["name"] == "named-bot"
    other_domain = spiffe.replace("spiffe://", "spiffe://elsewhere.", 1)
    assert_error(run(["agent", "show", other_domain], env), 1, "no agent")
    tasks = ok_json(["task", "list", "--agent", spiffe], env)["items"]
    assert [t["id"] for t in tasks] == [task.id]

    # Operators are named by name; a bare name matches an operator and an agent alike.
    root = ok_json(["audit", "query", "--actor", "root", "--kind", "agent.*"], env)["events"]
    assert root
    assert {e["actor"]["type"] for e in root} == {"operator"}
    assert_error(run(["audit", "query", "--actor", "agent:nobody-at-all"], env), 1, "no agent")


def test_a_bare_name_pages_through_both_an_operator_and_an_agent_of_that_name(node: Node) -> None:
    env = node.env()
    twin_token = ok_json(["operator", "create", "twin", "--role", "auditor"], env)["token"]
    refused = run(["operator", "create", "not-allowed", "--role", "admin"], node.env(token=twin_token))
    assert refused.returncode == 1  # an auditor may not: the refusal is an event of operator twin
    with agent(node, "twin") as bot:
        for _ in range(2):
            bot.task(**DEPLOY).complete()
    everything = ok_json(["audit", "query", "--actor", "twin", "--all"], env)["events"]
    kinds = {e["actor"]["type"] for e in everything}
    assert kinds == {"operator", "agent"}
    seqs = [e["seq"] for e in everything]
    assert seqs == sorted(seqs)
    paged: list[dict[str, Any]] = []
    after = 0
    while True:
        page = ok_json(["audit", "query", "--actor", "twin", "--limit", "2", "--after", str(after)], env)
        paged.extend(page["events"])
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert [e["seq"] for e in paged] == seqs


# -- item 3: the audit table says which policy decided, and shows fingerprints and thumbprints -------


def test_audit_table_shows_deciding_policies_missing_fingerprints_and_thumbprints(node: Node) -> None:
    env = node.env(COLUMNS="1000")  # wide enough that no cell is folded
    with agent(node, "audited-bot") as bot:
        task = bot.task(**DEPLOY)
        incident = bot.task(
            purpose="incident",
            objective="page the on-call engineer",
            sensitivity="restricted",
            secrets=["prod/pagerduty/key"],
            destinations=["pagerduty"],
            ttl_seconds=600,
        )
        with pytest.raises(ApprovalRequired):
            incident.grant(secret="prod/pagerduty/key", destination="pagerduty")
        task.complete()
        incident.complete()
        opened = ok_json(["audit", "query", "--task", task.id, "--kind", "task.open"], env)["events"]
        policy = opened[0]["decision"]["policies"][0]
        table = ok(["audit", "query", "--task", task.id, "--kind", "task.open"], env).stdout
        assert f"allowed by {policy}" in table
        denied = ok(["audit", "query", "--task", incident.id, "--denied"], env).stdout
        assert "DENIED by" in denied
        assert "missing approval" in denied

        tokens = ok_json(["audit", "query", "--actor", "audited-bot", "--kind", "auth.token"], env)["events"]
        jkt = tokens[-1]["data"]["jkt"]
        token_table = ok(["audit", "query", "--actor", "audited-bot", "--kind", "auth.token"], env).stdout
        assert f"key thumbprint {jkt}" in token_table
        assert "expires " in token_table

    writes = ok_json(["audit", "query", "--kind", "secret.write", "--secret", "prod/docs/token"], env)[
        "events"
    ]
    fingerprint = writes[0]["data"]["value"]
    assert fingerprint.startswith("hmac-sha256:")
    write_table = ok(["audit", "query", "--kind", "secret.write", "--secret", "prod/docs/token"], env).stdout
    assert f"value fingerprint {fingerprint}" in write_table


# -- item 18: offline verification says which checkpoint it checked ---------------------------------


def test_offline_verify_says_the_checkpoint_was_checked_and_its_seq(node: Node, tmp_path: Path) -> None:
    env = node.env()
    checkpoint_file, export_file = tmp_path / "checkpoint.json", tmp_path / "audit.jsonl"
    ok(["audit", "checkpoint", "-o", str(checkpoint_file)], env)
    ok(["audit", "export", "-o", str(export_file)], env)
    seq = json.loads(checkpoint_file.read_text())["seq"]
    verified = ok(["audit", "verify", "--file", str(export_file), "--checkpoint", str(checkpoint_file)], env)
    assert f"checkpoint checked: the export matches the checkpoint at seq {seq}" in verified.stdout
    as_json = ok_json(
        ["audit", "verify", "--file", str(export_file), "--checkpoint", str(checkpoint_file)], env
    )
    assert as_json["ok"] is True
    assert as_json["checkpoint"]["seq"] == seq
    plain = ok(["audit", "verify", "--file", str(export_file)], env)
    assert "checkpoint" not in plain.stdout


# -- item 10: an empty policy set needs --allow-empty -------------------------------------------------


def test_an_empty_policy_set_is_refused_without_allow_empty(node: Node, tmp_path: Path) -> None:
    env = node.env()
    empty = tmp_path / "empty.cedar"
    empty.write_text("// nothing is allowed\n")
    before = ok_json(["policy", "show"], env)["version"]
    refused = run(["policy", "deploy", str(empty)], env)
    assert_error(refused, 1, "no policies", "deny every agent", "--allow-empty")
    assert ok_json(["policy", "show"], env)["version"] == before
    api = httpx.put(
        f"{node.addr}/v1/policies",
        json={"policies": empty.read_text()},
        headers={"Authorization": f"Bearer {node.token}"},
    )
    assert api.status_code == 422
    assert "allow_empty" in api.json()["detail"]

    deployed = run(["policy", "deploy", str(empty), "--allow-empty"], env)
    assert deployed.returncode == 0, deployed.stderr
    assert "every agent is now denied every action" in deployed.stderr
    restored = run(["policy", "rollback", str(before)], env)
    assert restored.returncode == 0, restored.stderr
