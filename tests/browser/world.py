"""A real ``tether server`` seeded for the console's browser tests and screenshots, and the browser.

The node is ``tether init`` then ``tether server`` on loopback (its public URL is its own address,
so agents' DPoP proofs are signed for it); agents are driven with the synchronous SDK. The browser
is Debian's ``chromium`` (``/usr/bin/chromium``, or ``TETHER_CHROMIUM``) driven by Playwright; no
browser build is downloaded. :func:`chromium_or_skip` says why the browser tests skip when it is
missing (``make test`` installs it when it runs as root).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.canaries import new_canary
from tests.security.nodes import ServerProcess, free_port, node_env, tether_init
from tether.crypto.jose import generate_private_jwk
from tether.sdk import Agent

CHROMIUM_ENV = "TETHER_CHROMIUM"
VENDOR = Path(__file__).with_name("vendor")

POLICIES = """\
// Opening a restricted task needs a human approval.
@id("open-up-to-confidential")
permit(principal, action == Action::"open_task", resource) when { context.task.sensitivity <= 2 };

@id("open-restricted-with-approval")
permit(principal, action == Action::"open_task", resource) when { context.approval };

// Agents of one team may hand narrower sub-tasks to each other.
@id("delegate-within-team")
permit(principal, action == Action::"delegate", resource) when { principal.team == resource.team };

// Secrets the task declared, for its purpose, to the destinations they may reach; never revealed.
@id("use-declared-secret")
permit(principal, action in [Action::"issue", Action::"activate"], resource is Secret)
when {
  context.mode != "reveal" &&
  context.task.secrets.contains(resource.path) &&
  resource.purposes.contains(context.task.purpose) &&
  resource.destinations.contains(context.destination)
};
"""
SECRETS: dict[str, dict[str, Any]] = {
    "prod/github/token": {"sensitivity": "internal", "purposes": ["deploy"], "destinations": ["github"]},
    "prod/stripe/key": {"sensitivity": "confidential", "purposes": ["deploy"], "destinations": ["stripe"]},
    "prod/pagerduty/key": {
        "sensitivity": "restricted",
        "purposes": ["incident"],
        "destinations": ["pagerduty"],
    },
}
INCIDENT: dict[str, Any] = {
    "purpose": "incident",
    "objective": "page the on-call for INC-7",
    "sensitivity": "restricted",
    "secrets": ["prod/pagerduty/key"],
    "destinations": ["pagerduty"],
    "ttl_seconds": 900,
}
DEPLOY: dict[str, Any] = {
    "purpose": "deploy",
    "objective": "ship release 1.2",
    "sensitivity": "internal",
    "secrets": ["prod/github/token"],
    "destinations": ["github"],
    "ttl_seconds": 900,
}


def chromium_or_skip() -> str:
    """The chromium executable, or skip with the reason and the fix."""
    path = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip(
            "no chromium for the console's browser tests: `make test` installs Debian's chromium when it "
            "runs as root; otherwise run `sudo apt-get install -y chromium` (or set TETHER_CHROMIUM)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (it is in the dev extra: make test installs it)")
    return path


@dataclass
class Node:
    """A served, seeded node: its URL, the root token, agents, and the canary secret values."""

    server: ServerProcess
    token: str
    canaries: list[str] = field(default_factory=list)
    agents: dict[str, Agent] = field(default_factory=dict)
    agent_ids: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.addr

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers=self.admin, timeout=30, **kwargs)

    def operator(self, name: str, role: str) -> str:
        response = self.api("POST", "/v1/operators", json={"name": name, "role": role})
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token

    def register(self, name: str, *, labels: tuple[str, ...] = ("deploy", "incident")) -> Agent:
        private = generate_private_jwk()
        public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
        attributes = {"team": "platform", "environment": "prod", "owner": "alice", "labels": list(labels)}
        response = self.api(
            "POST", "/v1/agents", json={"name": name, "public_key": public, "attributes": attributes}
        )
        assert response.status_code == 201, response.text
        agent = Agent(self.url, response.json()["id"], private)
        self.agents[name] = agent
        self.agent_ids[name] = response.json()["id"]
        return agent

    def open_task(self, agent: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.agents[agent].request("POST", "/v1/tasks", json=body)
        assert response.status_code == 201, response.text
        task: dict[str, Any] = response.json()
        return task

    def delegate(self, agent: str, task_id: str, to: str, **body: Any) -> dict[str, Any]:
        payload = {"agent": self.agent_ids[to], "objective": "a narrower part", **body}
        response = self.agents[agent].request("POST", f"/v1/tasks/{task_id}/delegate", json=payload)
        assert response.status_code == 201, response.text
        child: dict[str, Any] = response.json()
        return child

    def task(self, task_id: str) -> dict[str, Any]:
        response = self.api("GET", f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def start_node(directory: Path) -> Node:
    """``tether init`` and ``tether server`` in ``directory``, seeded: the policies above, three
    secrets (canary values), their destinations and two agents."""
    port = free_port()
    env = node_env(TETHER_PUBLIC_URL=f"http://127.0.0.1:{port}")
    data_dir = directory / "node"
    token = tether_init(data_dir, env)
    server = ServerProcess(data_dir=data_dir, env=env, log_path=directory / "server.log", port=port)
    server.start()
    node = Node(server, token)
    response = node.api("PUT", "/v1/policies", json={"policies": POLICIES, "comment": "console tests"})
    assert response.status_code == 201, response.text
    for path, meta in SECRETS.items():
        value = new_canary("browser")
        node.canaries.append(value)
        response = node.api("PUT", f"/v1/secrets/{path}", json={"value": value, **meta})
        assert response.status_code in (200, 201), response.text
    for name, secret in (
        ("github", "prod/github/token"),
        ("stripe", "prod/stripe/key"),
        ("pagerduty", "prod/pagerduty/key"),
    ):
        body = {
            "name": name,
            "base_url": f"https://{name}.example.test",
            "secret": secret,
            "inject": {"type": "header", "name": "Authorization", "template": "Bearer {secret}"},
            "methods": ["GET", "POST"],
        }
        response = node.api("POST", "/v1/destinations", json=body)
        assert response.status_code == 201, response.text
    node.register("responder")
    node.register("deployer")
    return node


def stop_node(node: Node) -> None:
    node.server.stop()
    for agent in node.agents.values():
        agent.close()


def sign_in(page: Any, node: Node, token: str | None = None) -> None:
    """Sign in through the form, as a person would."""
    page.goto(node.url + "/ui/login")
    page.get_by_label("Operator token").fill(token or node.token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/ui/(?!login).*"))
