"""Calls to destinations through Tether's egress path: the secret is injected by Tether, the
agent never holds it.

    http = EgressClient(agent, task_id)
    http.get("github", "/repos/acme/app/issues", params={"state": "open"})

Each call goes to ``/v1/egress/{destination}{path}`` with a fresh DPoP proof and the
``Tether-Task`` header; the answer is the upstream's (``httpx.Response``), with the secret
redacted wherever the upstream echoed it. Tether's own refusals (403 denied, 413, 502, 504)
come back as responses too: check ``status_code`` or call ``raise_for_status()``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import httpx

from tether.domain.destinations import validate_destination_name
from tether.domain.tasks import validate_id
from tether.errors import InvalidInputError
from tether.sdk.client import Agent, AsyncAgent

__all__ = ["TASK_HEADER", "AsyncEgressClient", "EgressClient", "egress_path"]

TASK_HEADER = "Tether-Task"


def _is_dot_segment(segment: str) -> bool:
    # As Tether's egress reads it (tether.egress.paths): decoded once, ``..;x`` is ``..``.
    return unquote(segment, errors="replace").split(";", 1)[0] in {".", ".."}


def egress_path(destination: str, path: str) -> str:
    """``/v1/egress/{destination}{path}``; ``path`` starts with ``/`` and holds no query (pass
    ``params=``) and no ``.`` or ``..`` segments, encoded or not.

    Dot segments are refused here, before sending, with the reason Tether gives when it answers
    400 ``unsafe-path``: httpx would remove ``..`` before sending (``/api/../etc`` goes out as
    ``/etc``), so Tether would never see what the agent asked for.

    Raises:
        InvalidInputError: (``field="path"``) the path is refused.
    """
    validate_destination_name(destination)
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidInputError("an egress path must start with '/'", field="path")
    if "?" in path or "#" in path:
        raise InvalidInputError("pass the query as params=, not in the path", field="path")
    if any(_is_dot_segment(segment) for segment in path.split("/")):
        raise InvalidInputError(
            "unsafe path: the path must not contain '.' or '..' segments, encoded or not "
            "(refused before sending; Tether answers such a path with 400 unsafe-path)",
            field="path",
        )
    return f"/v1/egress/{destination}{path}"


def _headers(task_id: str, kwargs: dict[str, Any]) -> dict[str, str]:
    return {**dict(kwargs.pop("headers", None) or {}), TASK_HEADER: task_id}


class EgressClient:
    """Synchronous egress calls for one task of an :class:`~tether.sdk.Agent`."""

    def __init__(self, agent: Agent, task_id: str) -> None:
        self._agent = agent
        self.task_id = validate_id(task_id, "tsk", "task_id")

    def request(self, method: str, destination: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send ``method`` to ``path`` below ``destination``; ``kwargs`` go to httpx
        (``params``, ``json``, ``content``, ``headers``, ...)."""
        headers = _headers(self.task_id, kwargs)
        return self._agent.request(method.upper(), egress_path(destination, path), headers=headers, **kwargs)

    def get(self, destination: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", destination, path, **kwargs)

    def post(self, destination: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", destination, path, **kwargs)

    def put(self, destination: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", destination, path, **kwargs)

    def patch(self, destination: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", destination, path, **kwargs)

    def delete(self, destination: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", destination, path, **kwargs)


class AsyncEgressClient:
    """The asynchronous twin of :class:`EgressClient`, for an :class:`~tether.sdk.AsyncAgent`."""

    def __init__(self, agent: AsyncAgent, task_id: str) -> None:
        self._agent = agent
        self.task_id = validate_id(task_id, "tsk", "task_id")

    async def request(self, method: str, destination: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = _headers(self.task_id, kwargs)
        return await self._agent.request(
            method.upper(), egress_path(destination, path), headers=headers, **kwargs
        )

    async def get(self, destination: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", destination, path, **kwargs)

    async def post(self, destination: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", destination, path, **kwargs)

    async def put(self, destination: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PUT", destination, path, **kwargs)

    async def patch(self, destination: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PATCH", destination, path, **kwargs)

    async def delete(self, destination: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("DELETE", destination, path, **kwargs)
