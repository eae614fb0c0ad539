"""Reach over HTTP, on both stores: who could use a secret, what an agent could reach, what is live."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.governed import SECRETS, register_agent, seed
from tests.security.canaries import new_canary
from tether.mcp.servers import McpServer, UpstreamKind, pin

pytestmark = pytest.mark.asyncio


def _rules(body: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    return [rule for rule in body["reach"] if all(rule[k] == v for k, v in match.items())]


async def test_reach_of_a_secret_names_agents_conditions_and_live_grants(client, admin) -> None:  # type: ignore[no-untyped-def]
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    bot = await register_agent(client, admin, "deploy-bot")
    await register_agent(client, admin, "deploy-bot-2")  # same attributes: grouped with deploy-bot
    await register_agent(client, admin, "dev-bot", environment="dev")  # forbidden on prod/*
    await register_agent(client, admin, "docs-bot", labels=("report",))
    opened = await bot.request(
        "POST",
        "/v1/tasks",
        json={
            "purpose": "deploy",
            "objective": "ship release 1.2",
            "sensitivity": "internal",
            "secrets": ["prod/github/token"],
            "destinations": ["github"],
            "ttl_seconds": 600,
        },
    )
    assert opened.status_code == 201, opened.text
    task = opened.json()
    grant = await bot.request(
        "POST",
        f"/v1/tasks/{task['id']}/grants",
        json={"secret": "prod/github/token", "destination": "github", "mode": "inject", "max_uses": 5},
    )
    assert grant.status_code == 201, grant.text

    response = await client.get("/v1/reach/secrets/prod/github/token", headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["secret"] == "prod/github/token"
    assert body["policy_version"] == 1
    for value in values.values():
        assert value not in response.text
    issue = _rules(body, action="issue")
    # Every agent whatever its labels (open_task checks labels; issuance does not), except dev-bot.
    agents = {name for rule in issue for name in rule["agents"]}
    assert agents == {"deploy-bot", "deploy-bot-2", "docs-bot"}
    grouped = [rule for rule in issue if "deploy-bot" in rule["agents"]]
    # One group: issue/activate policies read no label (open_task does), only the environment.
    assert all(set(rule["agents"]) == {"deploy-bot", "deploy-bot-2", "docs-bot"} for rule in grouped)
    # internal secret, deploy purpose, destination github: inject and (internal) reveal; no approval.
    # (``dynamic`` from the static engine hands out the value: it is decided as ``reveal``.)
    assert {mode for rule in grouped for mode in rule["modes"]} == {"inject", "reveal", "dynamic"}
    assert all(rule["purposes"] == ["deploy"] and rule["destinations"] == ["github"] for rule in grouped)
    assert all(rule["approval"] == "not needed" and rule["residual"] is None for rule in grouped)
    assert {p for rule in grouped for p in rule["policies"]} == {
        "use-secret-within-intent",
        "reveal-low-sensitivity",
    }
    live = body["live"]
    assert [t["id"] for t in live["tasks"]] == [task["id"]]
    assert live["grants"] == [
        {
            "id": grant.json()["id"],
            "agent": "deploy-bot",
            "task_id": task["id"],
            "secret": "prod/github/token",
            "destination": "github",
            "mode": "inject",
            "expires_at": live["grants"][0]["expires_at"],
            "uses_left": 5,
        }
    ]
    assert [d["name"] for d in live["destinations"]] == ["github"]

    restricted = (await client.get("/v1/reach/secrets/prod/pagerduty/key", headers=admin)).json()
    rules = _rules(restricted, action="activate")
    assert rules, restricted
    assert all(
        rule["approval"] == "required"
        and rule["purposes"] == ["incident"]
        and rule["depths"] == [0]
        and rule["modes"] == ["inject"]  # dynamic from the static engine is decided as reveal
        and rule["policies"] == ["restricted-incident-with-approval"]
        for rule in rules
    )


async def test_reach_of_an_agent_lists_its_secrets_and_live_tasks(client, admin) -> None:  # type: ignore[no-untyped-def]
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    await register_agent(client, admin, "deploy-bot")
    await register_agent(client, admin, "dev-bot", environment="dev")
    response = await client.get("/v1/reach/agents/deploy-bot", headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["agent"] == "deploy-bot"
    assert {rule["secret"] for rule in body["reach"]} == set(SECRETS)
    for value in values.values():
        assert value not in response.text
    dev = (await client.get("/v1/reach/agents/dev-bot", headers=admin)).json()
    assert dev["reach"] == []  # every seeded secret is prod/*: forbidden for dev agents
    assert dev["live"]["tasks"] == []


def _issues_server(created_at: Any) -> McpServer:
    """The example ``issues`` MCP server, registered and pinned: ``search_issues`` (allowed for
    deploys by the example policies), ``close_issue`` (no policy), ``delete_repo`` (quarantined)."""
    tools = {
        name: pin({"name": name, "description": name, "inputSchema": {"type": "object"}})
        for name in ("search_issues", "close_issue", "delete_repo")
    }
    return McpServer(
        name="issues",
        kind=UpstreamKind.STDIO,
        created_at=created_at,
        created_by="admin",
        command="/usr/bin/python3",
        args=("-m", "issues"),
        tools=tools,
        quarantined={"delete_repo": tools["delete_repo"]},
    )


async def test_reach_of_an_agent_lists_destinations_and_tools(client, admin, broker) -> None:  # type: ignore[no-untyped-def]
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    await broker.storage.put_mcp_server(_issues_server(broker.clock.now()))
    await register_agent(client, admin, "deploy-bot")
    await register_agent(client, admin, "docs-bot", labels=("report",))
    response = await client.get("/v1/reach/agents/deploy-bot", headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    for value in values.values():
        assert value not in response.text
    # Destinations: the injected secret at mode inject towards the destination, as egress decides.
    github = [r for r in body["destination_reach"] if r["destination"] == "github"]
    assert {r["action"] for r in github} == {"issue", "activate"}
    assert all(
        r["secret"] == "prod/github/token"
        and r["purposes"] == ["deploy"]
        and r["approval"] == "not needed"
        and r["policies"] == ["use-secret-within-intent"]
        and r["methods"] == ["GET", "POST"]
        and r["path_prefixes"] == ["/"]
        and r["residual"] is None
        for r in github
    )
    pagerduty = [r for r in body["destination_reach"] if r["destination"] == "pagerduty"]
    assert pagerduty
    assert all(
        r["approval"] == "required" and r["purposes"] == ["incident"] and r["depths"] == [0]
        for r in pagerduty
    )
    # Tools: the pinned, unquarantined tools policy lets it call (deploy-labelled, deploy tasks).
    assert [(r["tool"], r["server"], r["name"], r["action"]) for r in body["tool_reach"]] == [
        ("issues/search_issues", "issues", "search_issues", "call_tool")
    ]
    (search,) = body["tool_reach"]
    assert search["purposes"] == ["deploy"]
    assert search["policies"] == ["mcp-issues-search-for-deploys"]
    assert search["approval"] == "not needed"
    assert search["residual"] is None
    assert search["agents"] == ["deploy-bot"]
    # Without the deploy label: no tool. A secret's answer has neither field (an agent's only).
    docs = (await client.get("/v1/reach/agents/docs-bot", headers=admin)).json()
    assert docs["tool_reach"] == []
    assert {r["destination"] for r in docs["destination_reach"]} == {"github", "stripe", "pagerduty"}
    secret = (await client.get("/v1/reach/secrets/prod/github/token", headers=admin)).json()
    assert "tool_reach" not in secret
    assert "destination_reach" not in secret


async def test_reach_refuses_unknown_names_and_other_roles(client, admin, make_operator) -> None:  # type: ignore[no-untyped-def]
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    for url in ("/v1/reach/secrets/prod/nope", "/v1/reach/agents/nobody", "/v1/reach/secrets/..%2Fx"):
        missing = await client.get(url, headers=admin)
        assert missing.status_code == 404, (url, missing.text)
        assert missing.headers["content-type"].startswith("application/problem+json")
    auditor = await make_operator("alice", "auditor")
    assert (await client.get("/v1/reach/secrets/prod/github/token", headers=auditor)).status_code == 200
    writer = await make_operator("sam", "secret-writer")
    refused = await client.get("/v1/reach/secrets/prod/github/token", headers=writer)
    assert refused.status_code == 403, refused.text
    assert (await client.get("/v1/reach/agents/deploy-bot")).status_code == 401


async def test_federated_issuer_mappings_name_the_agents_that_could_arrive_through_them(
    client, admin
) -> None:  # type: ignore[no-untyped-def]
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    await register_agent(client, admin, "deploy-bot")
    await register_agent(client, admin, "dev-bot", environment="dev")  # reaches no prod/* secret
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "k1"}
    for name, pattern in (
        ("k8s", r"system:serviceaccount:ci:(?P<agent>[a-z-]+)"),
        ("github", r"repo:acme/(?P<agent>docs-bot):.*"),  # names nobody registered
    ):
        created = await client.post(
            "/v1/auth/issuers",
            json={
                "name": name,
                "issuer": f"https://{name}.test",
                "audience": "tether",
                "jwks": {"keys": [jwk]},
                "subject_pattern": pattern,
            },
            headers=admin,
        )
        assert created.status_code == 201, created.text
    body = (await client.get("/v1/reach/secrets/prod/github/token", headers=admin)).json()
    assert body["federated"] == [
        {
            "name": "k8s",
            "issuer": "https://k8s.test",
            "subject_claim": "sub",
            "subject_pattern": r"system:serviceaccount:ci:(?P<agent>[a-z-]+)",
            "agents": [
                {
                    "agent": "deploy-bot",
                    "example_subject": "system:serviceaccount:ci:deploy-bot",
                    "confirmed": True,
                }
            ],
        }
    ]
    agent = (await client.get("/v1/reach/agents/deploy-bot", headers=admin)).json()
    assert [m["name"] for m in agent["federated"]] == ["k8s"]
    dev = (await client.get("/v1/reach/agents/dev-bot", headers=admin)).json()
    assert [a["agent"] for m in dev["federated"] for a in m["agents"]] == [
        "dev-bot"
    ]  # it can arrive; reaches nothing
    assert dev["reach"] == []
