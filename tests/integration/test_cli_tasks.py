"""``tether task``, ``tether approval`` and ``tether revoke`` against a real server in a
subprocess, with agents working through the SDK: listing and showing tasks with their grants,
revoking a task, deciding approvals, emergency revocation by task, agent and secret, and the
one-line errors for bad ids and refused requests. No secret value is ever printed."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.governed import SECRETS, seed
from tests.integration.test_cli import Node, assert_error, new_value, run, running_node
from tether.crypto.jose import generate_private_jwk
from tether.sdk import Agent, ApprovalRequired, Task, TetherDenied
from tether.sdk.client import TetherAPIError

DEPLOY: dict[str, Any] = {
    "purpose": "deploy",
    "objective": "ship release 1.2",
    "secrets": ["prod/github/token"],
    "destinations": ["github"],
    "ttl_seconds": 600,
}
INCIDENT: dict[str, Any] = {
    "purpose": "incident",
    "objective": "page the on-call engineer",
    "sensitivity": "restricted",
    "secrets": ["prod/pagerduty/key"],
    "destinations": ["pagerduty"],
    "ttl_seconds": 600,
}
UNKNOWN_TASK = "tsk_" + "A" * 22
UNKNOWN_APPROVAL = "apr_" + "A" * 22


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    values = {path: new_value() for path in SECRETS}
    with running_node(tmp_path_factory.mktemp("cli-tasks"), forbidden=list(values.values())) as started:

        async def seeding() -> None:
            async with httpx.AsyncClient(base_url=started.addr) as http:
                await seed(http, {"Authorization": f"Bearer {started.token}"}, values)

        asyncio.run(seeding())
        yield started


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
    assert result.returncode == 0, (args, result.stderr)
    assert result.stderr == "", result.stderr
    return result


def ok_json(args: list[str], env: dict[str, str]) -> Any:
    return json.loads(ok([*args, "--json"], env).stdout)


def operator_token(node: Node, name: str, role: str) -> str:
    token: str = ok_json(["operator", "create", name, "--role", role], node.env())["token"]
    return token


def pending_approval(task: Task) -> str:
    with pytest.raises(ApprovalRequired) as needed:
        task.grant(secret="prod/pagerduty/key", destination="pagerduty")
    assert needed.value.approval_id is not None
    return needed.value.approval_id


# -- tether task ---------------------------------------------------------------------------------


def test_task_list_filters_by_agent_and_status(node: Node) -> None:
    with agent(node, "lister") as bot:
        done = bot.task(**DEPLOY)
        done.complete()
        live = bot.task(**DEPLOY)
        listed = ok_json(["task", "list", "--agent", "lister"], node.env())
        assert {t["id"] for t in listed["items"]} == {done.id, live.id}
        assert listed["next_after"] is None
        active = ok_json(["task", "list", "--agent", "lister", "--status", "active"], node.env())
        assert [t["id"] for t in active["items"]] == [live.id]
        ended = ok_json(
            ["task", "list", "--agent", "lister", "--status", "completed", "--status", "failed"], node.env()
        )
        assert [t["id"] for t in ended["items"]] == [done.id]
        table = ok(["task", "list", "--agent", "lister"], node.env()).stdout
        assert live.id in table
        assert "lister" in table
        assert "deploy" in table
        assert "No tasks." in ok(["task", "list", "--agent", "nobody-here"], node.env()).stdout
        live.complete()


def test_task_list_refuses_an_unknown_status(node: Node) -> None:
    result = run(["task", "list", "--status", "sleeping"], node.env())
    assert_error(result, 2, "sleeping")


def test_task_show_prints_the_task_and_its_grants_never_a_value(node: Node) -> None:
    with agent(node, "shower") as bot, bot.task(**DEPLOY) as task:
        assert task.reveal("prod/github/token", destination="github")  # the value is never printed
        shown = ok_json(["task", "show", task.id], node.env())
        assert shown["task"]["id"] == task.id
        assert shown["task"]["status"] == "active"
        assert shown["task"]["secrets"] == ["prod/github/token"]
        (grant,) = shown["grants"]
        assert (grant["mode"], grant["secret"], grant["destination"], grant["uses"]) == (
            "reveal",
            "prod/github/token",
            "github",
            1,
        )
        assert "value" not in grant
        text = ok(["task", "show", task.id], node.env()).stdout
        assert "ship release 1.2" in text
        assert "Grants" in text
        assert grant["id"] in text


def test_task_show_refuses_malformed_ids_before_any_request(node: Node) -> None:
    for bad in ("../../v1/sys/seal", "tsk_short", "grt_" + "A" * 22, ""):
        assert_error(run(["task", "show", bad], node.env()), 2, "invalid task id")
    assert_error(run(["task", "show", UNKNOWN_TASK], node.env()), 1, "no task", "404")
    assert_error(run(["task", "show", UNKNOWN_TASK], node.env(token="tto_wrong")), 1, "401")


def test_task_revoke_ends_the_task_and_its_grants(node: Node) -> None:
    with agent(node, "revoked-bot") as bot:
        task = bot.task(**DEPLOY)
        grant = task.grant(secret="prod/github/token", destination="github", mode="reveal")
        result = ok_json(["task", "revoke", task.id, "--reason", "suspicious activity"], node.env())
        assert result == {"tasks_ended": [task.id], "grants_revoked": 1}
        with pytest.raises(TetherDenied, match="revoked"):
            task.activate(grant)
        assert task.refresh().status == "revoked"
        again = run(["task", "revoke", task.id], node.env())
        assert_error(again, 1, "already revoked", "409")
        other = bot.task(**DEPLOY)
        said = ok(["task", "revoke", other.id], node.env()).stdout
        assert f"Revoked task {other.id}: 1 task ended, 0 grants revoked." in said
    assert_error(run(["task", "revoke", "nope"], node.env()), 2, "invalid task id")


def test_task_tree_draws_the_delegation_tree_with_states(node: Node) -> None:
    with agent(node, "tree-planner") as planner, agent(node, "tree-worker") as worker:
        root = planner.task(**DEPLOY)
        child_id = root.delegate(
            agent="tree-worker", objective="sub", secrets=["prod/github/token"], destinations=["github"]
        )
        worker.join_task(child_id).complete()
        drawn = ok(["task", "tree", child_id], node.env()).stdout
        assert root.id in drawn
        assert child_id in drawn
        assert "active" in drawn
        assert "completed" in drawn
        assert "tree-worker" in drawn
        tree = ok_json(["task", "tree", root.id], node.env())
        assert [item["id"] for item in tree["items"]] == [root.id, child_id]
        root.complete()
    assert_error(run(["task", "tree", "../x"], node.env()), 2, "invalid task id")


# -- tether approval -----------------------------------------------------------------------------


def test_approval_list_and_approve_lets_the_bound_request_through(node: Node) -> None:
    with agent(node, "responder") as bot, bot.task(**INCIDENT) as task:
        approval_id = pending_approval(task)
        pending = ok_json(["approval", "list"], node.env())
        (item,) = [a for a in pending["items"] if a["id"] == approval_id]
        assert (item["task_id"], item["action"], item["status"]) == (task.id, "issue", "pending")
        assert item["resource"] == "Secret::prod/pagerduty/key"
        table = ok(["approval", "list"], node.env()).stdout
        assert approval_id in table
        assert "responder" in table
        shown = ok_json(["approval", "show", approval_id], node.env())
        assert shown["status"] == "pending"
        approved = ok_json(["approval", "approve", approval_id, "--reason", "INC-42 page"], node.env())
        assert approved["status"] == "approved"
        assert approved["reason"] == "INC-42 page"
        grant = task.grant(secret="prod/pagerduty/key", destination="pagerduty")
        assert grant.mode == "inject"
        decided = ok_json(["approval", "list", "--status", "approved"], node.env())
        assert approval_id in [a["id"] for a in decided["items"]]
        assert approval_id not in [a["id"] for a in ok_json(["approval", "list"], node.env())["items"]]


def test_approval_deny_says_so(node: Node) -> None:
    with agent(node, "responder-2") as bot, bot.task(**INCIDENT) as task:
        approval_id = pending_approval(task)
        said = ok(["approval", "deny", approval_id, "--reason", "not an incident"], node.env()).stdout
        assert said.startswith(f"Denied {approval_id}: issue on ")
        assert task.id in said
        assert ok_json(["approval", "show", approval_id], node.env())["status"] == "denied"
        with pytest.raises(TetherAPIError):
            task.grant(secret="prod/pagerduty/key", destination="pagerduty")


def test_approval_commands_refuse_bad_input_and_wrong_roles(node: Node) -> None:
    assert_error(run(["approval", "approve", "../x", "--reason", "r"], node.env()), 2, "invalid approval id")
    assert_error(run(["approval", "deny", "tsk_" + "A" * 22, "--reason", "r"], node.env()), 2, "approval id")
    missing_reason = run(["approval", "approve", UNKNOWN_APPROVAL], node.env())
    assert_error(missing_reason, 2, "--reason")
    assert_error(run(["approval", "approve", UNKNOWN_APPROVAL, "--reason", "  "], node.env()), 2, "--reason")
    assert_error(run(["approval", "approve", UNKNOWN_APPROVAL, "--reason", "r"], node.env()), 1, "404")
    assert_error(run(["approval", "list", "--status", "maybe"], node.env()), 2, "maybe")
    auditor = operator_token(node, "task-auditor", "auditor")
    assert_error(run(["approval", "list"], node.env(token=auditor)), 1, "403")
    approver = operator_token(node, "task-approver", "approver")
    assert ok_json(["approval", "list"], node.env(token=approver))["next_after"] is None
    assert_error(run(["revoke", "--agent", "responder"], node.env(token=approver)), 1, "403")


# -- tether revoke -------------------------------------------------------------------------------


def test_revoke_needs_exactly_one_target(node: Node) -> None:
    assert_error(run(["revoke"], node.env()), 2, "exactly one of --task, --agent and --secret")
    both = run(["revoke", "--task", UNKNOWN_TASK, "--agent", "x"], node.env())
    assert_error(both, 2, "exactly one")
    assert_error(run(["revoke", "--task", "../x"], node.env()), 2, "invalid task id")
    assert_error(run(["revoke", "--secret", "prod/../x"], node.env()), 2, "invalid secret path")
    assert_error(run(["revoke", "--task", UNKNOWN_TASK], node.env()), 1, "404")


def test_revoke_by_agent_task_and_secret(node: Node) -> None:
    with agent(node, "emergency") as bot:
        first, second = bot.task(**DEPLOY), bot.task(**DEPLOY)
        by_agent = ok_json(["revoke", "--agent", "emergency", "--reason", "key leaked"], node.env())
        assert sorted(by_agent["tasks_ended"]) == sorted([first.id, second.id])
        assert first.refresh().status == second.refresh().status == "revoked"

        third = bot.task(**DEPLOY)
        grant = third.grant(secret="prod/github/token", destination="github", mode="reveal")
        by_secret = ok_json(["revoke", "--secret", "prod/github/token"], node.env())
        assert by_secret["grants_revoked"] >= 1
        with pytest.raises(TetherDenied, match="revoked"):
            third.activate(grant)
        assert third.refresh().status == "active"  # only the secret's grants, not the task

        said = ok(["revoke", "--task", third.id, "--reason", "done with it"], node.env()).stdout
        assert said.strip() == f"Revoked task {third.id}: 1 task ended, 0 grants revoked."
        assert third.refresh().status == "revoked"
