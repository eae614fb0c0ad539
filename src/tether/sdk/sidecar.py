"""The ``tether run`` sidecar: a loopback HTTP endpoint per destination for one child process.

A program that reads an API's base URL from its environment (``GITHUB_API_URL``, ``OPENAI_BASE_URL``,
…) is pointed at ``http://127.0.0.1:PORT/<run-key>/<destination>``. Each request it sends there is
forwarded to Tether's egress (``/v1/egress/<destination>/<path>``) with the agent's DPoP proof and
the ``Tether-Task`` header; Tether decides, injects the destination's secret and forwards it
upstream. The child never holds the secret, the agent's key or its access token.

Only the child can use the endpoint: it listens on 127.0.0.1 only, and every URL starts with a
random per-run key (256 bits) that only the child's environment holds; a request without it is
answered 404 and never forwarded. The sidecar lives in the ``tether run`` process, so it dies with
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import secrets
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tether.domain.destinations import validate_destination_name
from tether.errors import InvalidInputError, TetherError
from tether.sdk.client import AsyncAgent
from tether.sdk.egress import TASK_HEADER, egress_path

__all__ = [
    "DEFAULT_URL_ENV_TEMPLATE",
    "MAX_REQUEST_BODY_BYTES",
    "Sidecar",
    "SidecarRoutes",
    "env_name",
    "forwarded_request_headers",
    "forwarded_response_headers",
]

#: The default name of the variable that holds a destination's endpoint: ``{NAME}`` is the
#: destination's name in upper case with every other character than a letter or digit as ``_``
#: (``github`` → ``TETHER_GITHUB_URL``), ``{name}`` the name as it is.
DEFAULT_URL_ENV_TEMPLATE = "TETHER_{NAME}_URL"
#: The largest request body the sidecar forwards (the destination's own limit, enforced by Tether,
#: is usually smaller).
MAX_REQUEST_BODY_BYTES = 64 * 1024 * 1024
RUN_KEY_BYTES = 32

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Hop-by-hop headers (RFC 9110 7.6.1) and what the sidecar itself sets (credentials, task, length).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "content-length", "authorization", "dpop", "cookie"}
# httpx decodes the body; its length and encoding are the sidecar's to say.
_NOT_RETURNED = _HOP_BY_HOP | {"content-length", "content-encoding", "set-cookie"}


def env_name(template: str, destination: str) -> str:
    """The variable that names ``destination``'s endpoint, from ``template`` (see
    :data:`DEFAULT_URL_ENV_TEMPLATE`).

    Raises:
        InvalidInputError: the template has another placeholder than ``{NAME}``/``{name}``, or does not
            make a variable name.
    """
    upper = re.sub(r"[^A-Za-z0-9]", "_", destination).upper()
    try:
        name = template.format_map({"NAME": upper, "name": destination})
    except (KeyError, ValueError, IndexError):
        raise InvalidInputError(
            f"the URL variable template {template[:80]!r} may use only {{NAME}} and {{name}}",
            field="url_env",
        ) from None
    if not _ENV_NAME.fullmatch(name):
        raise InvalidInputError(
            f"the URL variable template makes {name[:80]!r} for {destination!r}, not a variable name",
            field="url_env",
        )
    return name


def forwarded_request_headers(headers: Mapping[str, str] | list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The child's headers that go on to Tether's egress: not hop-by-hop, and none that carries a
    credential (``Authorization``, ``Cookie``: the destination's injection decides those) or that
    the sidecar sets (``DPoP``, ``Tether-Task``, ``Host``, ``Content-Length``)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [
        (name, value)
        for name, value in items
        if name.lower() not in _NOT_FORWARDED and name.lower() != TASK_HEADER.lower()
    ]


def forwarded_response_headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    """The answer's headers that go back to the child (not hop-by-hop; no length or encoding:
    the body is re-sent decoded)."""
    return [(name, value) for name, value in headers.multi_items() if name.lower() not in _NOT_RETURNED]


def _problem(status: int, title: str, detail: str) -> Response:
    body = httpx.Response(
        status, json={"type": "urn:tether:problem:sidecar", "title": title, "detail": detail}
    ).content
    return Response(body, status, media_type="application/problem+json")


@dataclass(frozen=True)
class SidecarRoutes:
    """What one run's sidecar serves: the destinations, under one random key."""

    destinations: tuple[str, ...]
    run_key: str = field(default_factory=lambda: secrets.token_urlsafe(RUN_KEY_BYTES), repr=False)

    def __post_init__(self) -> None:
        if not self.destinations:
            raise InvalidInputError("the sidecar needs at least one destination", field="destination")
        for name in self.destinations:
            validate_destination_name(name)

    def base_url(self, port: int, destination: str) -> str:
        """The child's base URL for ``destination`` (no trailing ``/``)."""
        return f"http://127.0.0.1:{port}/{self.run_key}/{destination}"

    def match(self, raw_path: str) -> tuple[str, str] | None:
        """``(destination, path)`` for a request path under this run's key, else None (compared in
        constant time; the destination must be one of the run's)."""
        _, _, rest = raw_path.partition("/")
        key, sep, rest = rest.partition("/")
        if not sep or not hmac.compare_digest(key.encode(), self.run_key.encode()):
            return None
        destination, _, path = rest.partition("/")
        if destination not in self.destinations:
            return None
        return destination, "/" + path


class Sidecar:
    """The sidecar of one run: an ASGI app forwarding to Tether's egress for ``task_id``, served on
    127.0.0.1 by :meth:`serving`."""

    def __init__(self, agent: AsyncAgent, task_id: str, routes: SidecarRoutes) -> None:
        self._agent = agent
        self._task_id = task_id
        self.routes = routes
        self.port: int | None = None
        self.forwarded = 0

    def urls(self) -> dict[str, str]:
        """Each destination's base URL (once serving)."""
        if self.port is None:
            raise RuntimeError("the sidecar is not serving")
        return {name: self.routes.base_url(self.port, name) for name in self.routes.destinations}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # websockets and lifespan: not served
            return
        response = await self._answer(Request(scope, receive))
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
        raw_path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
        matched = self.routes.match(raw_path.split("?", 1)[0])
        if matched is None:
            return _problem(404, "not found", "no such endpoint on this sidecar")
        destination, path = matched
        try:
            target = egress_path(destination, path)
        except InvalidInputError as exc:
            return _problem(400, "unsafe path", str(exc))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_REQUEST_BODY_BYTES:
                return _problem(
                    413, "request too large", f"the sidecar forwards at most {MAX_REQUEST_BODY_BYTES} bytes"
                )
        headers = httpx.Headers(forwarded_request_headers(request.headers.items()))
        headers[TASK_HEADER] = self._task_id
        query = request.scope.get("query_string", b"").decode("latin-1")
        try:
            answer = await self._agent.request(
                request.method,
                target,
                headers=headers,
                content=bytes(body),
                params=httpx.QueryParams(query) if query else None,
            )
        except TetherError as exc:
            return _problem(502, "Tether unreachable", str(exc))
        except Exception as exc:  # noqa: BLE001 - the child gets an answer, never a traceback
            # The class name only: the exception's text may quote the request.
            return _problem(502, "sidecar error", f"forwarding failed ({type(exc).__name__})")
        self.forwarded += 1
        return Response(
            answer.content,
            answer.status_code,
            headers=dict(_merge(forwarded_response_headers(answer.headers))),
        )

    @contextlib.asynccontextmanager
    async def serving(self, *, start_timeout_seconds: float = 10.0) -> AsyncIterator[Sidecar]:
        """Serve on a fresh loopback port while the block runs; stopped (connections closed) after."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self,
            lifespan="off",
            log_level="warning",
            access_log=False,
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=1,
        )
        server = _QuietServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="tether-run-sidecar")
        try:
            deadline = asyncio.get_running_loop().time() + start_timeout_seconds
            while not server.started:
                if task.done():
                    task.result()  # its error, if it failed to start
                    raise RuntimeError("the sidecar stopped while starting")
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError("the sidecar did not start in time")
                await asyncio.sleep(0.01)
            yield self
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=5)
            if not task.done():
                task.cancel()
            sock.close()
            self.port = None


def _merge(items: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    # Starlette's Response takes a mapping; repeated headers are joined as RFC 9110 allows.
    merged: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    yield from merged.items()


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to ``tether run`` (which forwards signals to
    the child and ends the task)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
