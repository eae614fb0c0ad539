"""Optional webhook on new approval requests: a JSON POST, retried, never holding a secret.

The body names the approval, the task, the agent, the action and the resource, and the policies
that would allow it: what an approver needs to decide, nothing more (no objective text, no value).
Delivery runs in the background and never delays or fails the agent's request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from tether.domain.tasks import Approval, Task

__all__ = ["ApprovalWebhook"]

log = logging.getLogger(__name__)


class ApprovalWebhook:
    """POSTs ``approval.requested`` notifications to ``url`` with up to ``attempts`` tries."""

    def __init__(
        self,
        url: str,
        *,
        attempts: int = 4,
        timeout_seconds: float = 5.0,
        backoff_seconds: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self._attempts = attempts
        self._timeout = timeout_seconds
        self._backoff = backoff_seconds
        self._transport = transport
        self._tasks: set[asyncio.Task[bool]] = set()
        self.delivered = 0
        self.failed = 0

    @staticmethod
    def body(approval: Approval, task: Task) -> dict[str, Any]:
        return {
            "type": "approval.requested",
            "approval_id": approval.id,
            "task_id": task.id,
            "agent": task.agent_id,
            "action": approval.action,
            "resource": approval.resource,
            "purpose": task.intent.purpose,
            "sensitivity": task.intent.sensitivity.label,
            "policies": list(approval.policies),
            "request": dict(approval.request),
            "expires_at": approval.expires_at.isoformat(),
        }

    def notify(self, approval: Approval, task: Task) -> None:
        """Schedule delivery; returns at once."""
        job = asyncio.get_running_loop().create_task(self.deliver(self.body(approval, task)))
        self._tasks.add(job)
        job.add_done_callback(self._tasks.discard)

    async def deliver(self, body: dict[str, Any]) -> bool:
        async with httpx.AsyncClient(
            timeout=self._timeout, transport=self._transport, follow_redirects=False
        ) as client:
            for attempt in range(self._attempts):
                try:
                    response = await client.post(self.url, json=body)
                    if response.status_code < 300:
                        self.delivered += 1
                        return True
                    reason = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    reason = type(exc).__name__
                log.warning("approval webhook attempt %d failed: %s", attempt + 1, reason)
                await asyncio.sleep(self._backoff * 2**attempt)
        self.failed += 1
        return False

    async def drain(self) -> None:
        """Wait for deliveries in flight (tests, shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
