"""New approval requests are POSTed to a webhook (a real HTTP receiver on loopback): retried, and never
carrying a secret or the task's objective text."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tests.integration.governed import BASE, SECRETS, register_agent, seed
from tests.security.canaries import find_leaks, new_canary
from tether.api import create_app
from tether.broker import Broker
from tether.broker.webhook import ApprovalWebhook
from tether.config import Settings

pytestmark = pytest.mark.asyncio


class Receiver:
    """A minimal HTTP/1.1 server: answers the first ``fail_first`` POSTs with 503, then 204."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.bodies: list[bytes] = []
        self.attempts = 0
        self.server: asyncio.Server | None = None
        self.arrived = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await asyncio.wait_for(reader.readexactly(length), 5)
        self.attempts += 1
        if self.attempts <= self.fail_first:
            writer.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        else:
            self.bodies.append(body)
            self.arrived.set()
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_approval_request_is_posted_after_retries_without_secrets(tmp_path: Path) -> None:
    receiver = Receiver(fail_first=2)
    async with receiver as url:
        node = Broker.from_settings(Settings(data_dir=tmp_path, approval_webhook_url=url))
        result = await node.init()
        hook = node.tasks.webhook
        assert isinstance(hook, ApprovalWebhook)
        hook._backoff = 0.01  # keep the test fast; the retry logic is what is under test
        admin = {"Authorization": f"Bearer {result.root_token}"}
        try:
            transport = httpx.ASGITransport(app=create_app(node))
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
                values = {path: new_canary(path) for path in SECRETS}
                await seed(http, admin, values)
                bot = await register_agent(http, admin, "oncall")
                objective = new_canary("objective")
                task = await bot.request(
                    "POST",
                    "/v1/tasks",
                    json={
                        "purpose": "incident",
                        "objective": objective,
                        "sensitivity": "restricted",
                        "secrets": ["prod/pagerduty/key"],
                        "destinations": ["pagerduty"],
                    },
                )
                assert task.status_code == 201, task.text
                refused = await bot.request(
                    "POST",
                    f"/v1/tasks/{task.json()['id']}/grants",
                    json={"destination": "pagerduty", "mode": "inject"},
                )
                assert refused.status_code == 403, refused.text
                approval_id = refused.json()["approval_id"]
                await asyncio.wait_for(receiver.arrived.wait(), 10)
                await hook.drain()
        finally:
            await node.close()
    assert receiver.attempts == 3
    assert hook.delivered == 1
    body = json.loads(receiver.bodies[0])
    assert body["type"] == "approval.requested"
    assert body["approval_id"] == approval_id
    assert body["resource"] == "Secret::prod/pagerduty/key"
    assert body["action"] == "issue"
    assert find_leaks(receiver.bodies[0], [*values.values(), objective]) == []


async def test_undeliverable_webhook_gives_up_and_counts_the_failure() -> None:
    hook = ApprovalWebhook(
        "http://127.0.0.1:9/unreachable", attempts=2, backoff_seconds=0.01, timeout_seconds=1
    )
    assert await hook.deliver({"type": "approval.requested"}) is False
    assert hook.failed == 1
