"""The SDK's task API: ``with agent.task(...)`` opens a task, reveals within it, and completes it
on exit or fails it on an exception, so that what was issued stops working.

The synchronous :class:`Agent` talks real HTTP to a node served by uvicorn in a thread; the
:class:`AsyncAgent` talks to the ASGI app in process.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import text

from tests.integration.governed import SECRETS, register_agent, seed
from tests.security.canaries import new_canary
from tether.api import create_app
from tether.broker import Broker
from tether.config import Settings
from tether.crypto.jose import generate_private_jwk
from tether.errors import InvalidInputError
from tether.sdk import (
    Agent,
    ApprovalRequired,
    AsyncAgent,
    Grant,
    Task,
    TetherAPIError,
    TetherDenied,
)

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


# -- a real node in a thread, for the synchronous client --------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Served:
    addr: str
    admin: dict[str, str]
    values: dict[str, str]

    def agent(self, name: str, labels: tuple[str, ...] = ("deploy", "incident")) -> Agent:
        """Register an agent (a fresh key) and return a synchronous client for it."""
        private = generate_private_jwk()
        public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
        attributes = {"team": "platform", "environment": "prod", "owner": "alice", "labels": list(labels)}
        response = httpx.post(
            f"{self.addr}/v1/agents",
            json={"name": name, "public_key": public, "attributes": attributes},
            headers=self.admin,
        )
        assert response.status_code == 201, response.text
        return Agent(self.addr, response.json()["id"], private)

    def admin_call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.addr}{path}", headers=self.admin, **kwargs)


class _NodeThread(threading.Thread):
    """``tether server`` in miniature: a broker and uvicorn on their own event loop."""

    def __init__(self, settings: Settings, port: int, schema: str | None) -> None:
        super().__init__(name="tether-test-node", daemon=True)
        self.settings = settings
        self.port = port
        self.schema = schema
        self.server: uvicorn.Server | None = None
        self.root_token = ""
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced to the test by the fixture
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        broker = Broker.from_settings(self.settings)
        try:
            self.root_token = (await broker.init()).root_token
            config = uvicorn.Config(
                create_app(broker),
                host="127.0.0.1",
                port=self.port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
            self.server = uvicorn.Server(config)
            serving = asyncio.create_task(self.server.serve())
            while not self.server.started and not serving.done():
                await asyncio.sleep(0.02)
            self.ready.set()
            await serving
        finally:
            if self.schema is not None:
                async with broker.storage._engine.begin() as conn:  # type: ignore[attr-defined]
                    await conn.execute(text(f'DROP SCHEMA "{self.schema}" CASCADE'))
            await broker.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    port = _free_port()
    addr = f"http://127.0.0.1:{port}"
    schema = None
    if request.param == "postgresql":
        dsn = os.environ.get("TETHER_TEST_PG_DSN")
        if not dsn:
            pytest.skip("TETHER_TEST_PG_DSN is not set; PostgreSQL tests skipped")
        schema = "t_sdk_" + secrets.token_hex(6)
        settings = Settings(data_dir=tmp_path, database_url=dsn, pg_schema=schema, public_url=addr)
    else:
        settings = Settings(data_dir=tmp_path, public_url=addr)
    node = _NodeThread(settings, port, schema)
    node.start()
    assert node.ready.wait(30), "the node did not start"
    if node.error is not None:
        raise node.error
    admin = {"Authorization": f"Bearer {node.root_token}"}
    values = {path: new_canary(path) for path in SECRETS}

    async def seeding() -> None:
        async with httpx.AsyncClient(base_url=addr) as http:
            await seed(http, admin, values)

    asyncio.run(seeding())
    try:
        yield Served(addr, admin, values)
    finally:
        assert node.server is not None
        node.server.should_exit = True
        node.join(timeout=30)
        assert not node.is_alive()


# -- synchronous Agent ---------------------------------------------------------------------------


def test_task_block_reveals_within_policy_and_completes_on_exit(served: Served) -> None:
    value = served.values["prod/github/token"]
    with served.agent("deploy-bot") as agent:
        with agent.task(**DEPLOY) as task:
            assert task.status == "active"
            assert task.id.startswith("tsk_")
            assert task.reveal("prod/github/token", destination="github") == value
            assert task.reveal("prod/github/token", destination="github") == value
            (grant,) = task.grants()  # one reveal grant, reused
            assert grant.mode == "reveal"
            assert value not in repr(task)
            assert value not in repr(grant)
        assert task.status == "completed"
        assert task.refresh().status == "completed"
        with pytest.raises(TetherDenied) as refused:
            task.activate(grant)
        assert refused.value.status == 403
        assert "completed" in str(refused.value)
        assert value not in str(refused.value)


def test_task_block_fails_the_task_on_an_exception_and_its_grant_is_refused(served: Served) -> None:
    with served.agent("deploy-bot") as agent:
        with pytest.raises(RuntimeError, match="deploy broke"), agent.task(**DEPLOY) as task:  # noqa: PT012 - the raise inside the block is the point
            grant = task.grant(secret="prod/github/token", destination="github", mode="reveal", max_uses=3)
            assert isinstance(grant, Grant)
            assert (grant.mode, grant.uses_left, grant.task_id) == ("reveal", 3, task.id)
            assert grant.expires_at is not None
            raise RuntimeError("deploy broke")
        assert task.status == "failed"
        assert agent.join_task(task.id).status == "failed"
        with pytest.raises(TetherDenied, match="failed"):
            task.activate(grant)


def test_ending_that_fails_during_an_exception_does_not_mask_it(served: Served) -> None:
    with served.agent("deploy-bot") as agent:
        with pytest.raises(KeyError), agent.task(**DEPLOY) as task:  # noqa: PT012 - the raise inside the block is the point
            revoked = served.admin_call("POST", f"/v1/tasks/{task.id}/revoke", json={"reason": "incident"})
            assert revoked.status_code == 200, revoked.text
            raise KeyError("original")  # failing the (already revoked) task is refused: 409
        with agent.task(**DEPLOY) as other:
            served.admin_call("POST", f"/v1/tasks/{other.id}/revoke", json={"reason": "incident"})
        assert other.status == "revoked"  # a normal exit after revocation is not an error


def test_restricted_secret_raises_approval_required_then_works_once_approved(served: Served) -> None:
    with served.agent("responder") as agent, agent.task(**INCIDENT) as task:
        with pytest.raises(ApprovalRequired) as needed:
            task.grant(secret="prod/pagerduty/key", destination="pagerduty", mode="inject")
        approval_id = needed.value.approval_id
        assert approval_id is not None
        assert approval_id.startswith("apr_")
        assert needed.value.missing == ["approval"]
        assert approval_id in str(needed.value)
        approved = served.admin_call(
            "POST", f"/v1/approvals/{approval_id}/approve", json={"reason": "INC-42 on-call page"}
        )
        assert approved.status_code == 200, approved.text
        grant = task.grant(secret="prod/pagerduty/key", destination="pagerduty", mode="inject")
        assert grant.secret == "prod/pagerduty/key"
        assert grant.destination == "pagerduty"
        with pytest.raises(TetherDenied) as forbidden:  # never revealed, approval or not
            task.reveal("prod/pagerduty/key", destination="pagerduty")
        assert not isinstance(forbidden.value, ApprovalRequired)
        assert "no-reveal-confidential" in forbidden.value.policies


def test_a_plain_denial_is_not_approval_required(served: Served) -> None:
    with served.agent("deploy-bot") as agent, agent.task(**DEPLOY) as task:
        with pytest.raises(TetherDenied) as denied:
            task.reveal("prod/stripe/key", destination="stripe")
        assert not isinstance(denied.value, ApprovalRequired)
        assert denied.value.approval_id is None
        assert "not declared" in str(denied.value)


def test_join_task_gives_a_handle_on_an_existing_task(served: Served) -> None:
    value = served.values["prod/github/token"]
    with served.agent("deploy-bot") as agent:
        opened = agent.task(**DEPLOY)
        with served.agent("stranger") as stranger, pytest.raises(TetherAPIError) as hidden:
            stranger.join_task(opened.id)
        assert hidden.value.status == 404
        with pytest.raises(InvalidInputError):
            agent.join_task("../v1/sys/seal")  # refused before any URL is built
        with agent.join_task(opened.id) as joined:
            assert isinstance(joined, Task)
            assert (joined.id, joined.status) == (opened.id, "active")
            assert joined.info["purpose"] == "deploy"
            assert joined.reveal("prod/github/token", destination="github") == value
        assert opened.refresh().status == "completed"


def test_delegate_hands_a_narrower_sub_task_that_the_delegate_joins(served: Served) -> None:
    value = served.values["prod/github/token"]
    with served.agent("planner") as planner, served.agent("worker") as worker:
        with planner.task(**DEPLOY) as task:
            child_id = task.delegate(
                agent="worker",
                objective="fetch the token",
                secrets=["prod/github/token"],
                destinations=["github"],
            )
            with pytest.raises(TetherDenied):  # wider than the parent: refused
                task.delegate(agent="worker", objective="more", secrets=["prod/pagerduty/key"])
            with worker.join_task(child_id) as child:
                assert child.info["depth"] == 1
                assert child.info["parent_id"] == task.id
                assert child.reveal("prod/github/token", destination="github") == value
            assert task.refresh().status == "active"  # the child ended; the parent did not
        assert worker.join_task(child_id).status == "completed"


def test_update_revokes_grants_the_new_context_no_longer_allows(served: Served) -> None:
    with served.agent("deploy-bot") as agent, agent.task(**DEPLOY) as task:
        assert task.reveal("prod/github/token", destination="github")
        assert task.update(secrets=["prod/docs/token"]) == 1
        assert task.info["secrets"] == ["prod/docs/token"]
        with pytest.raises(TetherDenied):
            task.reveal("prod/github/token", destination="github")
        with pytest.raises(InvalidInputError):
            task.update(agent="someone-else")


# -- AsyncAgent ----------------------------------------------------------------------------------


async def test_async_task_block_reveals_and_completes(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    agent: AsyncAgent = await register_agent(client, admin, "deploy-bot")
    async with agent.task(**DEPLOY) as task:
        assert task.status == "active"
        assert await task.reveal("prod/github/token", destination="github") == values["prod/github/token"]
        (grant,) = await task.grants()
    assert task.status == "completed"
    assert (await task.refresh()).status == "completed"
    with pytest.raises(TetherDenied, match="completed"):
        await task.activate(grant)


async def test_async_task_block_fails_on_an_exception(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await seed(client, admin, {path: new_canary(path) for path in SECRETS})
    agent = await register_agent(client, admin, "deploy-bot")
    with pytest.raises(ValueError, match="boom"):  # noqa: PT012 - the raise inside the block is the point
        async with agent.task(**DEPLOY) as task:
            grant = await task.grant(secret="prod/github/token", destination="github", mode="reveal")
            raise ValueError("boom")
    assert task.status == "failed"
    with pytest.raises(TetherDenied, match="failed"):
        await task.activate(grant)


async def test_async_approval_required_and_join_task(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await seed(client, admin, {path: new_canary(path) for path in SECRETS})
    agent = await register_agent(client, admin, "responder")
    task = await agent.task(**INCIDENT)
    with pytest.raises(ApprovalRequired) as needed:
        await task.grant(secret="prod/pagerduty/key", destination="pagerduty")
    assert needed.value.approval_id is not None
    pending = (await client.get("/v1/approvals", headers=admin)).json()["items"]
    assert [item["id"] for item in pending] == [needed.value.approval_id]
    joined = await agent.join_task(task.id)
    assert (joined.id, joined.status) == (task.id, "active")
    ended = await joined.revoke()
    assert ended["tasks_ended"] == [task.id]
    assert joined.status == "revoked"
    assert (await task.refresh()).status == "revoked"


async def test_async_task_opens_only_when_awaited_or_entered() -> None:
    """Building the handle sends nothing (the address does not even resolve); a lone string
    for a list of names is refused before any request."""
    agent = AsyncAgent("http://tether.invalid", "spiffe://acme.test/agent/x", generate_private_jwk())
    opening = agent.task(purpose="deploy", objective="x")
    assert "deploy" in repr(opening)
    with pytest.raises(InvalidInputError):
        agent.task(purpose="deploy", objective="x", secrets="prod/github/token")
    await agent.aclose()
