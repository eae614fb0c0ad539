"""The web console in a real browser (issue 19): Debian's chromium driven by Playwright against a real
``tether server``. Sign in, approve a pending request and see the task proceed, deny one and see
its tree turn red, filter the audit timeline, simulate a policy; no Content-Security-Policy
violation on any page (htmx included), no secret value on any page, and an axe-core pass.

All tests share one node and one browser (one xdist group); each test has its own browser context
(cookies), so sessions do not leak between tests.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.world import (
    DEPLOY,
    INCIDENT,
    VENDOR,
    Node,
    chromium_or_skip,
    sign_in,
    start_node,
    stop_node,
)
from tests.security.canaries import find_leaks

pytestmark = pytest.mark.xdist_group(name="console-browser")

PAGES = ("approvals", "tasks", "audit", "reach", "policies", "secrets", "destinations")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    chromium_or_skip()
    served = start_node(tmp_path_factory.mktemp("console-node"))
    try:
        yield served
    finally:
        stop_node(served)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, node: Node) -> Iterator[Any]:
    """A fresh context (no cookies) whose CSP violations and page errors are collected."""
    context = browser.new_context()
    opened = context.new_page()
    problems: list[str] = []
    opened.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda e: problems.append(str(e)))
    opened.problems = problems
    try:
        yield opened
    finally:
        context.close()


def test_sign_in_approve_a_pending_request_and_see_the_task_proceed(page: Any, node: Node) -> None:
    assert f"web console on {node.url}/ui" in node.server.log()  # tether server says where it is
    sign_in(page, node)
    page.goto(node.url + "/ui/approvals")
    # The queue updates live: a request made after the page loaded appears without a reload.
    task = node.open_task("responder", INCIDENT)
    assert task["status"] == "pending_approval"
    card = page.locator("article", has_text=task["approval_id"])
    card.wait_for(timeout=15_000)
    assert "page the on-call for INC-7" in card.inner_text()
    card.get_by_label("Reason (required, audited)").fill("INC-7 is real")
    card.get_by_role("button", name="Approve").click()
    page.get_by_text(f"approved {task['approval_id']}").wait_for()
    assert node.task(task["id"])["status"] == "active"
    page.get_by_role("link", name=task["id"]).first.click()
    assert page.locator("h1 .badge").inner_text() == "active"
    # The agent goes on: its grant is issued now that the task is open.
    grant = node.agents["responder"].request(
        "POST",
        f"/v1/tasks/{task['id']}/grants",
        json={"secret": "prod/pagerduty/key", "destination": "pagerduty"},
    )
    assert grant.status_code == 201, grant.text
    page.reload()
    assert grant.json()["id"] in page.get_by_role("region", name="Grants").inner_text()
    assert not [p for p in page.problems if "Content Security Policy" in p], page.problems


def test_deny_a_request_and_see_the_task_tree_turn_red(page: Any, node: Node) -> None:
    parent = node.open_task("deployer", DEPLOY)
    waiting = node.open_task("responder", INCIDENT)
    sign_in(page, node)
    page.goto(node.url + "/ui/approvals")
    card = page.locator("article", has_text=waiting["approval_id"])
    card.get_by_label("Reason (required, audited)").fill("not an incident")
    card.get_by_role("button", name="Deny").click()
    page.get_by_text(f"denied {waiting['approval_id']}").wait_for()
    assert node.task(waiting["id"])["status"] == "revoked"
    # A delegation tree: revoking the parent revokes the child, and both boxes turn red.
    child = node.delegate(
        "deployer", parent["id"], "responder", secrets=["prod/github/token"], destinations=["github"]
    )
    page.goto(node.url + f"/ui/tasks/{child['id']}")
    boxes = page.locator("svg.tree rect.node")
    assert boxes.count() == 2
    green = boxes.first.evaluate("e => getComputedStyle(e).fill")
    page.goto(node.url + f"/ui/tasks/{parent['id']}")
    page.get_by_label("Reason").fill("credentials leaked")
    page.get_by_role("button", name=re.compile("Revoke this task")).click()
    page.get_by_text("revoked 2 task(s)").wait_for()
    fills = page.locator("svg.tree rect.node").evaluate_all(
        "rects => rects.map(r => getComputedStyle(r).fill)"
    )
    assert fills == ["rgb(255, 235, 233)", "rgb(255, 235, 233)"], fills  # the revoked colour
    assert green != fills[0]
    assert node.task(child["id"])["status"] == "revoked"


def test_filter_the_audit_timeline_and_see_the_chain_verified(page: Any, node: Node) -> None:
    node.open_task("responder", INCIDENT)
    sign_in(page, node)
    page.goto(node.url + "/ui/audit")
    # Verification is loaded by htmx after the page (a CSP-clean fetch from Tether itself).
    page.get_by_text(re.compile("Chain verified")).wait_for(timeout=15_000)
    assert "Last signed checkpoint" in page.content() or "No checkpoint yet" in page.content()
    page.get_by_label("Kind").fill("approval.*")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"kind=approval"))
    kinds = page.locator(".events summary strong").all_inner_texts()
    assert kinds
    assert all(kind.startswith("approval.") for kind in kinds), kinds
    page.locator(".events summary").first.click()
    assert '"kind": "approval.' in page.locator(".events pre").first.inner_text()
    assert not [p for p in page.problems if "Content Security Policy" in p], page.problems


def test_simulate_a_policy(page: Any, node: Node) -> None:
    sign_in(page, node)
    page.goto(node.url + "/ui/policies")
    page.get_by_label("Agent (name)").fill("responder")
    page.get_by_label("Action").select_option("open_task")
    page.get_by_label("Purpose").fill("incident")
    page.get_by_label("Task sensitivity").select_option("restricted")
    page.get_by_role("button", name="Simulate").click()
    result = page.locator(".result")
    assert "Denied" in result.inner_text()
    assert "approval required" in result.inner_text()
    page.get_by_label("With an approval").check()
    page.get_by_role("button", name="Simulate").click()
    assert "Allowed" in page.locator(".result").inner_text()
    assert "open-restricted-with-approval" in page.locator(".result").inner_text()


def test_an_auditor_sees_no_approvals_and_cannot_approve(page: Any, node: Node) -> None:
    task = node.open_task("responder", INCIDENT)
    sign_in(page, node, node.operator("auditor-" + task["id"][-6:].lower(), "auditor"))
    nav = page.get_by_role("navigation", name="Console pages")
    assert nav.get_by_role("link", name="Approvals").count() == 0
    assert nav.get_by_role("link", name="Audit").count() == 1
    response = page.goto(node.url + "/ui/approvals")
    assert response is not None
    assert response.status == 403
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/ui/login"))
    assert page.goto(node.url + "/ui/audit") is not None
    assert "/ui/login" in page.url  # signed out: back to the sign-in page


def test_every_page_without_csp_violations_or_secret_values_and_with_javascript_off(
    browser: Any, page: Any, node: Node
) -> None:
    task = node.open_task("deployer", DEPLOY)
    sign_in(page, node)
    paths = [f"/ui/{name}" for name in PAGES] + [
        f"/ui/tasks/{task['id']}",
        "/ui/reach?secret=prod/github/token",
    ]
    for path in paths:
        response = page.goto(node.url + path)
        assert response is not None
        assert response.status == 200, path
        page.wait_for_load_state("networkidle")
        assert not find_leaks(page.content(), node.canaries), path
    assert not [p for p in page.problems if "Content Security Policy" in p or "Refused" in p], page.problems
    # Readable without JavaScript: the same pages render their content server-side.
    context = browser.new_context(java_script_enabled=False)
    try:
        plain = context.new_page()
        sign_in(plain, node)
        plain.goto(node.url + "/ui/audit")
        assert plain.get_by_role("link", name="Verify the whole chain now").count() == 1
        plain.goto(node.url + f"/ui/tasks/{task['id']}")
        assert plain.locator("svg.tree rect.node").count() >= 1
    finally:
        context.close()


def test_accessibility_axe_core_finds_no_violation(browser: Any, node: Node) -> None:
    """axe-core (vendored, MPL-2.0) run in the page: landmarks, labels, contrast, names."""
    task = node.open_task("responder", INCIDENT)
    axe = (VENDOR / "axe.min.js").read_text(encoding="utf-8")
    # The console's CSP refuses any script Tether did not serve: let the test inject axe.
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        sign_in(page, node)
        failures: dict[str, list[str]] = {}
        for path in [
            "/ui/login",
            *(f"/ui/{name}" for name in PAGES),
            f"/ui/tasks/{task['id']}",
            "/ui/reach?agent=responder",
        ]:
            if path == "/ui/login":
                fresh = browser.new_context(bypass_csp=True)
                target = fresh.new_page()
                target.goto(node.url + path)
            else:
                fresh, target = None, page
                target.goto(node.url + path)
            target.wait_for_load_state("networkidle")
            target.evaluate(axe)
            violations = target.evaluate(
                "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
                ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.length}))"
            )
            found = [f"{v['id']} {v['impact']} ({v['nodes']})" for v in violations]  # of any impact
            if found:
                failures[path] = found
            if fresh is not None:
                fresh.close()
        assert not failures, failures
    finally:
        context.close()


def test_vendored_files_carry_their_licenses() -> None:
    assert (VENDOR / "axe-core.LICENSE").read_text().startswith("Mozilla Public License")
    static = Path(__file__).resolve().parents[2] / "src" / "tether" / "console" / "static"
    assert "Zero-Clause BSD" in (static / "htmx.LICENSE").read_text()
