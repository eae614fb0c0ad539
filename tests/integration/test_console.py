"""The web console (issue 19) over HTTP against the real app and store: sign-in, the session cookie,
CSRF and role refusals, timeouts, sign-out, approvals through the console, and no secret value in
any page (canaries). Browser tests are in tests/browser/.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.governed import BASE, add_destinations, register_agent
from tests.security.canaries import find_leaks, new_canary
from tether.api import create_app
from tether.broker import Broker
from tether.config import Settings
from tether.console.routes import CONTENT_SECURITY_POLICY
from tether.console.sessions import COOKIE, LOGIN_COOKIE, ConsoleSession, derive_session_key, encode_session
from tether.sdk import AsyncAgent

pytestmark = pytest.mark.asyncio

#: Opening a restricted task needs a human approval; using a declared secret (not revealing it) is allowed.
POLICIES = """
@id("open-up-to-confidential")
permit(principal, action == Action::"open_task", resource) when { context.task.sensitivity <= 2 };

@id("open-restricted-with-approval")
permit(principal, action == Action::"open_task", resource) when { context.approval };

@id("use-declared-secret")
permit(principal, action in [Action::"issue", Action::"activate"], resource is Secret)
when { context.task.secrets.contains(resource.path) && context.mode != "reveal" };
"""
SECRET_META: dict[str, dict[str, Any]] = {
    "prod/github/token": {"sensitivity": "internal", "purposes": ["deploy"], "destinations": ["github"]},
    "prod/stripe/key": {"sensitivity": "confidential", "purposes": ["deploy"], "destinations": ["stripe"]},
    "prod/pagerduty/key": {
        "sensitivity": "restricted",
        "purposes": ["incident"],
        "destinations": ["pagerduty"],
    },
}
RESTRICTED_TASK = {
    "purpose": "incident",
    "objective": "page the on-call for INC-7",
    "sensitivity": "restricted",
    "secrets": ["prod/pagerduty/key"],
    "destinations": ["pagerduty"],
    "ttl_seconds": 600,
}
DEPLOY: dict[str, Any] = {
    "sensitivity": "internal",
    "purpose": "deploy",
    "secrets": ["prod/github/token"],
    "destinations": ["github"],
}
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class World:
    broker: Broker
    http: httpx.AsyncClient
    admin: dict[str, str]
    agent: AsyncAgent
    canaries: list[str]

    async def operator(self, name: str, role: str) -> str:
        response = await self.http.post(
            "/v1/operators", json={"name": name, "role": role}, headers=self.admin
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token

    async def open_task(self, **overrides: Any) -> dict[str, Any]:
        response = await self.agent.request("POST", "/v1/tasks", json={**RESTRICTED_TASK, **overrides})
        assert response.status_code == 201, response.text
        task: dict[str, Any] = response.json()
        return task

    async def task(self, task_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/tasks/{task_id}", headers=self.admin)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def events(self, kind: str) -> list[dict[str, Any]]:
        response = await self.http.get("/v1/audit/events", params={"kind": kind}, headers=self.admin)
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        return events


@pytest.fixture
async def world(broker: Broker, client: httpx.AsyncClient, root_token: str) -> World:
    admin = {"Authorization": f"Bearer {root_token}"}
    response = await client.put("/v1/policies", json={"policies": POLICIES}, headers=admin)
    assert response.status_code == 201, response.text
    canaries = []
    for path, meta in SECRET_META.items():
        value = new_canary("console")
        canaries.append(value)
        response = await client.put(f"/v1/secrets/{path}", json={"value": value, **meta}, headers=admin)
        assert response.status_code in (200, 201), response.text
    await add_destinations(client, admin)
    agent = await register_agent(client, admin, "responder")
    return World(broker, client, admin, agent, canaries)


async def sign_in(http: httpx.AsyncClient, token: str, *, next_path: str = "/ui/") -> httpx.Response:
    form = await http.get("/ui/login")
    assert form.status_code == 200
    csrf = _CSRF.search(form.text)
    assert csrf is not None
    return await http.post(
        "/ui/login", data={"csrf": csrf.group(1), "token": token, "next": next_path}, follow_redirects=False
    )


def csrf_of(page: httpx.Response) -> str:
    found = _CSRF.search(page.text)
    assert found is not None, page.text
    return found.group(1)


@pytest.fixture
async def console(world: World) -> AsyncIterator[httpx.AsyncClient]:
    """A second client (its own cookie jar), signed in as root."""
    async with httpx.AsyncClient(
        transport=world.http._transport, base_url=BASE, follow_redirects=True
    ) as http:
        response = await sign_in(http, world.admin["Authorization"].removeprefix("Bearer "))
        assert response.status_code == 303, response.text
        yield http


@asynccontextmanager
async def as_operator(world: World, name: str, role: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client signed in as a new operator ``name`` with ``role``."""
    token = await world.operator(name, role)
    async with httpx.AsyncClient(
        transport=world.http._transport, base_url=BASE, follow_redirects=True
    ) as http:
        response = await sign_in(http, token)
        assert response.status_code == 303, response.text
        yield http


# -- sign-in and the session cookie ----------------------------------------------------------------
async def test_sign_in_exchanges_the_token_for_a_strict_httponly_session_cookie(world: World) -> None:
    async with httpx.AsyncClient(transport=world.http._transport, base_url=BASE) as http:
        token = world.admin["Authorization"].removeprefix("Bearer ")
        response = await sign_in(http, token, next_path="/ui/tasks")
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/tasks"
        cookie = next(
            v for k, v in response.headers.multi_items() if k == "set-cookie" and v.startswith(COOKIE)
        )
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert "Path=/ui" in cookie
        assert "Secure" not in cookie  # plain HTTP here; see the TLS test below
        assert token not in cookie
        page = await http.get("/ui/tasks")
        assert page.status_code == 200
        assert "root" in page.text
    logins = await world.events("console.login")
    assert [e["actor"]["id"] for e in logins] == ["root"]


async def test_session_cookie_is_secure_when_served_over_tls(world: World) -> None:
    async with httpx.AsyncClient(transport=world.http._transport, base_url="https://tether.test") as http:
        response = await sign_in(http, world.admin["Authorization"].removeprefix("Bearer "))
        cookie = next(
            v for k, v in response.headers.multi_items() if k == "set-cookie" and v.startswith(COOKIE)
        )
        assert "Secure" in cookie


async def test_session_cookie_is_secure_behind_a_tls_proxy(tmp_path: Path, sqlite_template: Path) -> None:
    """TLS ends at a proxy that talks plain HTTP to Tether: the https public URL says so."""
    from tests.conftest import copy_sqlite_template

    copy_sqlite_template(sqlite_template, tmp_path / "tether.db")
    node = Broker.from_settings(Settings(data_dir=tmp_path, public_url="https://tether.example.test"))
    token = (await node.init()).root_token
    try:
        transport = httpx.ASGITransport(app=create_app(node))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            form = await http.get("/ui/login")  # the proxy talks plain HTTP to Tether
            assert "Secure" in form.headers["set-cookie"]
            nonce = csrf_of(form)
            response = await http.post(
                "/ui/login",
                data={"csrf": nonce, "token": token},
                headers={"Cookie": f"{LOGIN_COOKIE}={nonce}"},  # as the browser sends it over TLS
            )
            assert response.status_code == 303
            cookie = next(
                v for k, v in response.headers.multi_items() if k == "set-cookie" and v.startswith(COOKIE)
            )
            assert "Secure" in cookie
    finally:
        await node.close()


async def test_a_wrong_token_is_refused_and_audited(world: World) -> None:
    async with httpx.AsyncClient(transport=world.http._transport, base_url=BASE) as http:
        response = await sign_in(http, "tok_" + "x" * 43)
        assert response.status_code == 401
        assert COOKIE not in response.headers.get("set-cookie", "")
        assert "unknown or revoked operator token" in response.text or "operator token" in response.text
    assert await world.events("operator.auth_failed")


async def test_sign_in_without_the_forms_csrf_token_is_refused(world: World) -> None:
    async with httpx.AsyncClient(transport=world.http._transport, base_url=BASE) as http:
        await http.get("/ui/login")
        token = world.admin["Authorization"].removeprefix("Bearer ")
        response = await http.post("/ui/login", data={"csrf": "forged", "token": token})
        assert response.status_code == 403
        assert COOKIE not in response.headers.get("set-cookie", "")
    assert not await world.events("console.login")


async def test_pages_send_a_visitor_without_a_session_to_sign_in(world: World) -> None:
    response = await world.http.get("/ui/approvals?x=1", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith(
        "/ui/login?next=/ui/approvals%3Fx%3D1"
    ) or response.headers["location"].startswith("/ui/login?next=/ui/approvals")


async def test_a_forged_or_tampered_session_cookie_is_refused(
    world: World, console: httpx.AsyncClient
) -> None:
    value = console.cookies[COOKIE]
    body, mac = value.split(".")
    forged = httpx.Cookies({COOKIE: f"{body}.{mac[:-2]}AA"})
    async with httpx.AsyncClient(transport=world.http._transport, base_url=BASE, cookies=forged) as http:
        response = await http.get("/ui/tasks", follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/ui/login")


async def test_sign_in_refuses_to_redirect_off_the_console(world: World) -> None:
    async with httpx.AsyncClient(transport=world.http._transport, base_url=BASE) as http:
        token = world.admin["Authorization"].removeprefix("Bearer ")
        for target in ("https://evil.test/", "//evil.test/ui", "/v1/secrets"):
            response = await sign_in(http, token, next_path=target)
            assert response.headers["location"] == "/ui/"


# -- timeouts, sign-out, revoked operators ---------------------------------------------------------
def _cookie_for(broker: Broker, operator_id: str, *, opened_ago: int, seen_ago: int) -> str:
    now = int(broker.clock.now().timestamp())
    session = ConsoleSession("s-" + str(now), operator_id, now - opened_ago, now - seen_ago)
    return encode_session(session, derive_session_key(broker.keys.root_key()))


async def _root_id(world: World) -> str:
    response = await world.http.get("/v1/operators/me", headers=world.admin)
    operator_id: str = response.json()["id"]
    return operator_id


@pytest.mark.parametrize(
    ("opened_ago", "seen_ago", "why"),
    [(1000, 901, "idle"), (28_801, 10, "expired"), (100, 10, None)],
    ids=["idle-timeout", "absolute-timeout", "fresh"],
)
async def test_idle_and_absolute_timeouts_end_the_session(
    world: World, opened_ago: int, seen_ago: int, why: str | None
) -> None:
    assert world.broker.settings.console_idle_timeout_seconds == 900
    assert world.broker.settings.console_session_max_seconds == 28_800
    cookie = _cookie_for(world.broker, await _root_id(world), opened_ago=opened_ago, seen_ago=seen_ago)
    async with httpx.AsyncClient(
        transport=world.http._transport, base_url=BASE, cookies={COOKIE: cookie}
    ) as http:
        response = await http.get("/ui/tasks", follow_redirects=False)
        if why is None:
            assert response.status_code == 200
            renewed = response.headers["set-cookie"]
            assert renewed.startswith(f"{COOKIE}=")
            assert cookie not in renewed  # the idle clock restarts with each request
        else:
            assert response.status_code == 303
            assert response.headers["location"].startswith("/ui/login")
            assert why in response.headers["location"]


async def test_sign_out_closes_the_session_even_for_a_copied_cookie(
    world: World, console: httpx.AsyncClient
) -> None:
    copied = console.cookies[COOKIE]
    page = await console.get("/ui/tasks")
    response = await console.post("/ui/logout", data={"csrf": csrf_of(page)}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/ui/login")
    async with httpx.AsyncClient(
        transport=world.http._transport, base_url=BASE, cookies={COOKIE: copied}
    ) as http:
        again = await http.get("/ui/tasks", follow_redirects=False)
        assert again.status_code == 303
        assert "closed" in again.headers["location"]
    assert await world.events("console.logout")


async def test_sign_out_needs_the_csrf_token(console: httpx.AsyncClient) -> None:
    response = await console.post("/ui/logout", data={"csrf": "nope"}, follow_redirects=False)
    assert response.status_code == 403
    assert (await console.get("/ui/tasks")).status_code == 200


async def test_a_revoked_operators_session_stops_at_once(world: World) -> None:
    async with as_operator(world, "carol", "auditor") as http:
        assert (await http.get("/ui/audit")).status_code == 200
        response = await world.http.post("/v1/operators/carol/revoke", headers=world.admin)
        assert response.status_code == 200
        again = await http.get("/ui/audit", follow_redirects=False)
        assert again.status_code == 303


# -- approvals, CSRF and roles ---------------------------------------------------------------------
async def test_an_approver_approves_in_the_console_and_the_task_proceeds(world: World) -> None:
    task = await world.open_task()
    assert task["status"] == "pending_approval"
    async with as_operator(world, "ann", "approver") as http:
        page = await http.get("/ui/approvals")
        assert page.status_code == 200
        assert task["approval_id"] in page.text
        assert "page the on-call for INC-7" in page.text  # the exact request, with the task's intent
        assert "objective_sha256" in page.text  # what the approval allows: opening exactly this intent
        response = await http.post(
            f"/ui/approvals/{task['approval_id']}/approve",
            data={"csrf": csrf_of(page), "reason": "INC-7 is real"},
            follow_redirects=False,
        )
        assert response.status_code == 303, response.text
        assert (await world.task(task["id"]))["status"] == "active"
        done = await http.get(response.headers["location"])
        assert f"approved {task['approval_id']}" in done.text
    decided = await world.events("approval.decide")
    assert [(e["actor"]["id"], e["data"]["status"], e["reason"]) for e in decided] == [
        ("ann", "approved", "INC-7 is real")
    ]


async def test_denying_in_the_console_revokes_the_waiting_task(
    world: World, console: httpx.AsyncClient
) -> None:
    task = await world.open_task()
    page = await console.get("/ui/approvals")
    response = await console.post(
        f"/ui/approvals/{task['approval_id']}/deny", data={"csrf": csrf_of(page), "reason": "not an incident"}
    )
    assert response.status_code == 200  # followed to the queue
    assert (await world.task(task["id"]))["status"] == "revoked"


async def test_a_decision_without_a_reason_is_refused(world: World, console: httpx.AsyncClient) -> None:
    task = await world.open_task()
    page = await console.get("/ui/approvals")
    response = await console.post(
        f"/ui/approvals/{task['approval_id']}/approve", data={"csrf": csrf_of(page), "reason": " "}
    )
    assert response.status_code == 422
    assert "reason" in response.text
    assert (await world.task(task["id"]))["status"] == "pending_approval"


@pytest.mark.parametrize("csrf", [None, "", "forged"], ids=["missing", "empty", "forged"])
async def test_an_approval_without_the_sessions_csrf_token_is_refused(
    world: World, console: httpx.AsyncClient, csrf: str | None
) -> None:
    task = await world.open_task()
    form = {"reason": "looks fine"} | ({} if csrf is None else {"csrf": csrf})
    response = await console.post(f"/ui/approvals/{task['approval_id']}/approve", data=form)
    assert response.status_code == 403
    assert (await world.task(task["id"]))["status"] == "pending_approval"
    assert not await world.events("approval.decide")


async def test_another_sessions_csrf_token_or_another_origin_is_refused(
    world: World, console: httpx.AsyncClient
) -> None:
    task = await world.open_task()
    async with as_operator(world, "ann", "approver") as other:
        foreign = csrf_of(await other.get("/ui/approvals"))
    response = await console.post(
        f"/ui/approvals/{task['approval_id']}/approve", data={"csrf": foreign, "reason": "x"}
    )
    assert response.status_code == 403
    page = await console.get("/ui/approvals")
    response = await console.post(
        f"/ui/approvals/{task['approval_id']}/approve",
        data={"csrf": csrf_of(page), "reason": "x"},
        headers={"Origin": "https://evil.test"},
    )
    assert response.status_code == 403
    assert (await world.task(task["id"]))["status"] == "pending_approval"


async def test_an_auditor_cannot_approve(world: World) -> None:
    task = await world.open_task()
    async with as_operator(world, "carol", "auditor") as http:
        audit = await http.get("/ui/audit")
        assert audit.status_code == 200
        assert 'href="/ui/approvals"' not in audit.text  # not in the auditor's navigation
        page = await http.get("/ui/approvals")
        assert page.status_code == 403
        response = await http.post(
            f"/ui/approvals/{task['approval_id']}/approve", data={"csrf": csrf_of(audit), "reason": "me"}
        )
        assert response.status_code == 403
        assert "approval.decide" in response.text  # the permission the role lacks
    assert (await world.task(task["id"]))["status"] == "pending_approval"
    refusals = [e for e in await world.events("decision") if e["actor"]["id"] == "carol"]
    assert refusals
    assert all(e["decision"]["allowed"] is False for e in refusals)


async def test_an_approver_cannot_read_the_audit_log_or_policies(world: World) -> None:
    async with as_operator(world, "ann", "approver") as http:
        for path in ("/ui/audit", "/ui/policies", "/ui/secrets", "/ui/reach"):
            assert (await http.get(path)).status_code == 403, path


async def test_an_admin_revokes_a_task_and_its_tree_turns_red(
    world: World, console: httpx.AsyncClient
) -> None:
    task = await world.open_task(**DEPLOY)
    assert task["status"] == "active"
    page = await console.get(f"/ui/tasks/{task['id']}")
    assert 'class="node st-active current"' in page.text
    response = await console.post(
        f"/ui/tasks/{task['id']}/revoke", data={"csrf": csrf_of(page), "reason": "leaked laptop"}
    )
    assert response.status_code == 200
    assert 'class="node st-revoked current"' in response.text
    assert (await world.task(task["id"]))["status"] == "revoked"


# -- pages: content, filters, simulator, headers, no secret value ---------------------------------
async def test_every_page_carries_a_strict_csp_and_no_inline_script_or_style(
    world: World, console: httpx.AsyncClient
) -> None:
    task = await world.open_task()
    pages = [
        "/ui/login",
        "/ui/approvals",
        "/ui/approvals/queue",
        "/ui/tasks",
        f"/ui/tasks/{task['id']}",
        "/ui/audit",
        "/ui/audit/verification",
        "/ui/reach",
        "/ui/reach?secret=prod/pagerduty/key",
        "/ui/reach?agent=responder",
        "/ui/policies",
        "/ui/secrets",
        "/ui/destinations",
    ]
    for path in pages:
        response = await console.get(path)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        assert not re.search(r"<script(?![^>]*\bsrc=)", response.text), path
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=", response.text), path


async def test_no_page_shows_a_secret_value(world: World, console: httpx.AsyncClient) -> None:
    task = await world.open_task(**DEPLOY)
    grant = await world.agent.request(
        "POST",
        f"/v1/tasks/{task['id']}/grants",
        json={"secret": "prod/github/token", "destination": "github"},
    )
    assert grant.status_code == 201, grant.text
    seen = []
    for path in (
        "/ui/approvals",
        "/ui/tasks",
        f"/ui/tasks/{task['id']}",
        "/ui/audit",
        "/ui/audit?kind=secret.*",
        "/ui/reach?secret=prod/github/token",
        "/ui/reach?agent=responder",
        "/ui/policies",
        "/ui/secrets",
        "/ui/destinations",
    ):
        response = await console.get(path)
        assert response.status_code == 200, path
        seen.append(response.text)
        assert not find_leaks(response.text, world.canaries), path
    everything = "\n".join(seen)
    assert "prod/github/token" in everything  # the metadata is there, the value is not
    assert "fingerprint" in everything or "hmac-sha256:" in everything


async def test_the_tasks_page_filters_by_agent_state_and_purpose(
    world: World, console: httpx.AsyncClient
) -> None:
    incident = await world.open_task()
    deploy = await world.open_task(**DEPLOY)
    active = await console.get("/ui/tasks", params={"status": "active"})
    assert deploy["id"] in active.text
    assert incident["id"] not in active.text
    by_purpose = await console.get("/ui/tasks", params={"purpose": "incident"})
    assert incident["id"] in by_purpose.text
    assert deploy["id"] not in by_purpose.text
    nobody = await console.get("/ui/tasks", params={"agent": "nobody"})
    assert deploy["id"] not in nobody.text
    bad = await console.get("/ui/tasks", params={"status": "bogus"})
    assert bad.status_code == 422


async def test_the_audit_timeline_filters_and_shows_the_chain_status(
    world: World, console: httpx.AsyncClient
) -> None:
    task = await world.open_task()
    page = await console.get("/ui/audit", params={"kind": "approval.*"})
    assert "approval.request" in page.text
    assert "task.open" not in page.text
    by_task = await console.get("/ui/audit", params={"task": task["id"]})
    assert "task.open" in by_task.text
    denied = await console.get("/ui/audit", params={"allowed": "false"})
    assert denied.status_code == 200
    verification = await console.get("/ui/audit/verification")
    assert "Chain verified" in verification.text
    bad = await console.get("/ui/audit", params={"kind": "no.such.kind"})
    assert bad.status_code == 422


async def test_the_policy_simulator_decides_and_explains(world: World, console: httpx.AsyncClient) -> None:
    page = await console.get("/ui/policies")
    assert "open-restricted-with-approval" in page.text
    ask = {
        "csrf": csrf_of(page),
        "agent": "responder",
        "action": "open_task",
        "purpose": "incident",
        "sensitivity": "restricted",
        "mode": "inject",
    }
    denied = await console.post("/ui/policies/simulate", data=ask)
    assert denied.status_code == 200
    assert "Denied" in denied.text
    assert "approval required" in denied.text
    allowed = await console.post("/ui/policies/simulate", data={**ask, "approval": "on"})
    assert "Allowed" in allowed.text
    assert "open-restricted-with-approval" in allowed.text
    unknown = await console.post("/ui/policies/simulate", data={**ask, "agent": "ghost"})
    assert unknown.status_code == 404


async def test_the_policies_page_diffs_two_versions(world: World, console: httpx.AsyncClient) -> None:
    changed = POLICIES.replace("sensitivity <= 2", "sensitivity <= 1")
    response = await world.http.put("/v1/policies", json={"policies": changed}, headers=world.admin)
    assert response.status_code == 201
    page = await console.get("/ui/policies", params={"a": 1, "b": 2})
    removed = "when { context.task.sensitivity &lt;= 2 };"
    assert re.search(
        r'<span class="del">-permit\(principal, action == Action::&#34;open_task&#34;[^<]*'
        + re.escape(removed),
        page.text,
    )
    assert "sensitivity &lt;= 1" in page.text


async def test_the_reach_page_draws_a_matrix(world: World, console: httpx.AsyncClient) -> None:
    page = await console.get("/ui/reach", params={"secret": "prod/github/token"})
    assert page.status_code == 200
    assert "heat-" in page.text
    assert "responder" in page.text
    overview = await console.get("/ui/reach")  # every agent by every secret
    table = overview.text.split('class="heatmap overview"')[1].split("</table>")[0]
    for path in SECRET_META:
        assert f"<code>{path}</code>" in table
    assert "<code>responder</code>" in table
    assert 'class="heat-always"' in table or 'class="heat-conditional"' in table


async def test_static_assets_are_served_by_tether(world: World) -> None:
    htmx = await world.http.get("/ui/static/htmx.min.js")
    assert htmx.status_code == 200
    assert htmx.headers["content-type"].startswith("text/javascript")
    css = await world.http.get("/ui/static/console.css")
    assert css.status_code == 200
    assert (await world.http.get("/ui/static/../routes.py")).status_code == 404
    assert (await world.http.get("/ui/static/htmx.LICENSE")).status_code == 404


async def test_a_non_browser_client_gets_problem_json(world: World, console: httpx.AsyncClient) -> None:
    response = await console.get(
        "/ui/tasks", params={"status": "bogus"}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_the_console_can_be_turned_off(tmp_path: Path, sqlite_template: Path) -> None:
    from tests.conftest import copy_sqlite_template

    copy_sqlite_template(sqlite_template, tmp_path / "tether.db")
    node = Broker.from_settings(Settings(data_dir=tmp_path, console="off"))
    await node.init()
    try:
        app = create_app(node)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
            assert (await http.get("/ui/login")).status_code == 404
            assert (await http.get("/ui/static/htmx.min.js")).status_code == 404
    finally:
        await node.close()


async def test_timeouts_are_settings_with_bounds(tmp_path: Path) -> None:
    from tether.errors import ConfigError

    settings = Settings(data_dir=tmp_path, console_idle_timeout_seconds=120, console_session_max_seconds=3600)
    assert settings.console_idle_timeout_seconds == 120
    with pytest.raises(ConfigError):
        Settings(data_dir=tmp_path, console_idle_timeout_seconds=5)
    with pytest.raises(ConfigError):
        Settings(data_dir=tmp_path, console="maybe")
    assert timedelta(seconds=Settings(data_dir=tmp_path).console_session_max_seconds) == timedelta(hours=8)


async def test_what_agents_write_is_escaped_never_markup(world: World, console: httpx.AsyncClient) -> None:
    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    task = await world.open_task(objective=hostile)
    for path in ("/ui/approvals", f"/ui/tasks/{task['id']}"):
        page = await console.get(path)
        assert page.status_code == 200
        assert hostile not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


async def test_the_sign_in_page_shows_only_its_own_messages(world: World) -> None:
    phishing = await world.http.get("/ui/login", params={"why": "Paste your token at https://evil.test"})
    assert "evil.test" not in phishing.text
    idle = await world.http.get("/ui/login", params={"why": "idle"})
    assert "Your session timed out (idle)" in idle.text


async def test_a_sealed_node_serves_no_console_page(world: World, console: httpx.AsyncClient) -> None:
    world.broker.seal_now()
    try:
        response = await console.get("/ui/tasks")
        assert response.status_code == 503
        assert "sealed" in response.text.lower()
    finally:
        await world.broker.keys.unseal()


async def test_every_console_route_but_sign_in_and_assets_needs_a_session(world: World) -> None:
    from fastapi.routing import APIRoute

    from tether.console import router

    task = await world.open_task()
    params = {"task_id": task["id"], "approval_id": task["approval_id"], "name": "console.css"}
    checked = 0
    for route in router.routes:
        assert isinstance(route, APIRoute)
        if route.path in {"/ui/login", "/ui/static/{name}"}:
            continue
        path = route.path.format(**params)
        for method in route.methods:
            response = await world.http.request(method, path, data={"reason": "x", "csrf": "x"})
            assert response.status_code == 303, (method, path)
            assert response.headers["location"].startswith("/ui/login"), (method, path)
            checked += 1
    assert checked >= 14
    assert (await world.task(task["id"]))["status"] == "pending_approval"
