"""The credential-injecting forward: an agent's request, decided, sent upstream with the secret.

:class:`EgressProxy` is the one place where a secret value leaves Tether on an agent's behalf.
For each request it:

1. checks the path (:mod:`tether.egress.paths`) and the destination's methods and path prefixes
   (a refusal is a ``decision`` event, denied before any grant use is counted);
2. activates the task's ``inject`` grant for the destination (``TaskService.authorize_egress``:
   decided by policy with this method and path, counted, recorded, decrypted);
3. builds the upstream request: the URL from the destination only, the agent's headers minus
   hop-by-hop and credential headers, the secret injected as the destination says;
4. streams the request body (at most ``max_body_bytes``) and the answer (at most
   ``max_response_bytes``) within ``timeout_seconds``, never following redirects;
5. passes the answer through the leak guard (:mod:`tether.egress.leakguard`); redactions are
   recorded as one ``egress.redact`` event before the last bytes go out.

It talks to upstreams through an ``httpx`` transport directly, not an ``httpx.AsyncClient``: a
client keeps a cookie jar (an upstream's cookie would reach the next agent's request) and logs
request URLs (a query-injected secret is in the URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from tether.audit import Actor, DecisionSummary
from tether.broker.auth import AgentCaller
from tether.domain.decision import Decision
from tether.domain.destinations import InjectionType
from tether.domain.tasks import Task, validate_id
from tether.egress.http11 import Http11Transport
from tether.egress.leakguard import LeakGuard, StreamRedactor, guard_for
from tether.egress.paths import AgentPath, UnsafePathError, filter_query, normalise_path, upstream_url
from tether.errors import DeniedError, InvalidInputError, NotFoundError, TetherError
from tether.store.base import EffectFailedError
from tether.tracing import inner_span

if TYPE_CHECKING:
    from tether.broker import Broker
    from tether.broker.tasks import EgressAuthorization

__all__ = [
    "EgressError",
    "EgressProxy",
    "EgressRequest",
    "EgressResponse",
    "InjectionError",
    "RequestBodyTooLargeError",
    "UpstreamResponseTooLargeError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "request_headers",
    "response_headers",
]

log = logging.getLogger(__name__)

#: Bytes read from the upstream before the answer's status goes to the agent: a short answer
#: that breaks a bound is then a clean 502, not a cut-off stream.
PREFETCH_BYTES = 64 * 1024
MAX_AUDIT_PATH_CHARS = 200

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# The agent's credentials and Tether's own headers never go upstream; framing and encoding
# are set by the proxy; forwarding headers would let the agent speak for Tether's address.
_REQUEST_DROP = frozenset(
    {
        "host",
        "content-length",
        "authorization",
        "cookie",
        "dpop",
        "expect",
        "accept-encoding",
        "forwarded",
        "x-real-ip",
    }
)
# Framing and encoding are Tether's (the body is decoded and re-framed); a cookie is a
# credential the upstream hands out, and the agent holds no credentials.
_RESPONSE_DROP = frozenset(
    {"content-length", "content-encoding", "set-cookie", "set-cookie2", "cache-control"}
)
_SUPPORTED_ENCODINGS = frozenset({"identity", "gzip", "deflate"})


# -- errors: each becomes a problem response (see tether.api.routes_egress) -------------------
class EgressError(TetherError):
    """The forward failed; ``status``, ``slug`` and ``title`` are the problem to answer with.
    Messages never hold a secret, a URL with its query, or upstream error text."""

    status = 502
    slug = "egress-failed"
    title = "Egress failed"


class RequestBodyTooLargeError(EgressError):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class UpstreamUnavailableError(EgressError):
    status = 502
    slug = "upstream-unavailable"
    title = "The upstream is unavailable"


class UpstreamTimeoutError(EgressError):
    status = 504
    slug = "upstream-timeout"
    title = "The upstream did not answer in time"


class UpstreamResponseTooLargeError(EgressError):
    status = 502
    slug = "upstream-response-too-large"
    title = "The upstream's answer is too large"


class InjectionError(EgressError):
    status = 502
    slug = "injection-failed"
    title = "The secret cannot be injected into this destination"


# -- values ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EgressRequest:
    """An agent's request to forward, as received (headers as raw lowercase-name pairs)."""

    destination: str
    task_id: str
    method: str
    raw_path: str
    raw_query: str
    headers: Sequence[tuple[bytes, bytes]]
    body: AsyncIterator[bytes] | None = None


@dataclass(frozen=True, slots=True)
class EgressResponse:
    """The upstream's answer for the agent: status, filtered and redacted headers, and a body
    that is capped, redacted and audited as it is read.

    ``content`` is the whole body when the upstream's answer ended within the prefetch (the
    common short answer): redacted, its redactions already recorded, the upstream connection
    released, so it can go out in one piece with a ``Content-Length``. ``body`` then yields it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: AsyncIterator[bytes]
    content: bytes | None = None


# -- headers ---------------------------------------------------------------------------------
def _connection_tokens(headers: Sequence[tuple[bytes, bytes]]) -> set[str]:
    named: set[str] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named |= {token.strip().lower() for token in value.decode("latin-1").split(",") if token.strip()}
    return named


def request_headers(
    headers: Sequence[tuple[bytes, bytes]], inject_header: str | None
) -> list[tuple[bytes, bytes]]:
    """The agent's headers that may go upstream: no hop-by-hop headers (nor those ``Connection``
    names), no ``Proxy-*``, no credentials (``Authorization``, ``Cookie``, ``DPoP``, the
    destination's injection header), no ``Tether-*``, no ``Host``/``Content-Length``/``Expect``/
    ``Accept-Encoding`` (the proxy sets those), no forwarding headers."""
    drop = _HOP_BY_HOP | _REQUEST_DROP | _connection_tokens(headers)
    if inject_header is not None:
        drop = drop | {inject_header.lower()}
    kept = []
    for name, value in headers:
        lower = name.decode("latin-1").lower()
        if lower in drop or lower.startswith(("proxy-", "tether-", "x-forwarded-")):
            continue
        kept.append((lower.encode("latin-1"), value))
    return kept


def response_headers(
    headers: Sequence[tuple[bytes, bytes]], guard: LeakGuard
) -> tuple[list[tuple[bytes, bytes]], int]:
    """The upstream's headers for the agent, redacted, plus ``Cache-Control: no-store``; and
    how many redactions were made. A header whose *name* holds a secret form is dropped (and
    counted)."""
    drop = _HOP_BY_HOP | _RESPONSE_DROP | _connection_tokens(headers)
    kept: list[tuple[bytes, bytes]] = []
    count = 0
    for name, value in headers:
        lower = name.lower()
        text = lower.decode("latin-1")
        if text in drop or text.startswith("proxy-"):
            continue
        _, in_name = guard.redact(lower)
        if in_name:
            count += in_name
            continue
        redacted, in_value = guard.redact(value)
        count += in_value
        kept.append((lower, redacted))
    kept.append((b"cache-control", b"no-store"))
    return kept, count


def _audit_path(raw: str) -> str:
    return "".join(ch if 0x20 < ord(ch) < 0x7F else "?" for ch in raw[:MAX_AUDIT_PATH_CHARS]) or "/"


def _declared_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                raise InvalidInputError("Content-Length is not a number", field="content-length") from None
    return None


def _has_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() in {b"content-length", b"transfer-encoding"} for name, _ in headers)


# -- the proxy -------------------------------------------------------------------------------
class EgressProxy:
    """Forwards agents' requests to destinations with the secret injected. One per app; call
    :meth:`aclose` at shutdown to release pooled upstream connections."""

    def __init__(self, broker: Broker, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._broker = broker
        self._transport = transport or Http11Transport(
            max_connections=256, max_keepalive_connections=64, keepalive_expiry=30.0
        )

    async def aclose(self) -> None:
        await self._transport.aclose()

    # -- refusals ----------------------------------------------------------------------------
    async def _task_or_none(self, caller: AgentCaller, task_id: str) -> Task | None:
        try:
            return await self._broker.tasks.get_for_agent(caller, task_id)
        except (NotFoundError, InvalidInputError):
            return None

    async def _refuse(
        self, caller: AgentCaller, request: EgressRequest, reason: str, *, path: str
    ) -> TetherError:
        """Record a refusal made before activation (a ``decision`` event) and return the error.
        The task is named only if it is the caller's own. The request's proof is used up by the
        record (a replayed copy is refused as a replay, and writes nothing)."""
        task = await self._task_or_none(caller, request.task_id)
        try:
            await self._broker.audit.record(
                "decision",
                Actor.agent(caller.agent.id),
                resource=f"destination:{request.destination}",
                task_id=None if task is None else task.id,
                chain=() if task is None else task.chain,
                decision=DecisionSummary(allowed=False),
                reason=reason,
                data={"method": request.method[:16], "path": _audit_path(path), "stage": "egress"},
                effects=() if caller.replay is None else (caller.replay,),
            )
        except EffectFailedError:
            return await self._broker.auth.refuse_replay(caller, f"{request.method} egress")
        return DeniedError(reason, decision=Decision.deny(errors=(reason,)))

    async def _check(self, caller: AgentCaller, request: EgressRequest) -> AgentPath:
        validate_id(request.task_id, "tsk", "Tether-Task")
        try:
            path = normalise_path(request.raw_path)
            filter_query(request.raw_query)
        except UnsafePathError as exc:
            refusal = await self._refuse(caller, request, f"unsafe path: {exc}", path=request.raw_path)
            if not isinstance(refusal, DeniedError):
                raise refusal from None  # a replayed request
            raise
        # The destination (methods, path prefixes) is checked by the activation itself, which reads it
        # with the grant in one query and refuses before counting a use.
        return path

    # -- forwarding --------------------------------------------------------------------------
    async def forward(self, caller: AgentCaller, request: EgressRequest) -> EgressResponse:
        """Check, activate, forward; the answer's body streams (capped, redacted, audited).

        Raises:
            UnsafePathError, InvalidInputError: the request is malformed (refusals recorded).
            DeniedError, NotFoundError: from the checks or the activation (recorded).
            EgressError: body too large, upstream unavailable, timed out, too large, ...
        """
        path = await self._check(caller, request)
        auth = await self._broker.tasks.authorize_egress(
            caller, request.task_id, request.destination, method=request.method, path=path.decoded
        )
        destination = auth.destination
        declared = _declared_length(request.headers)
        if declared is not None and declared > destination.max_body_bytes:
            raise RequestBodyTooLargeError(
                f"the destination accepts at most {destination.max_body_bytes} bytes"
            )
        upstream, guard = self._build(auth, request, path)
        deadline = asyncio.get_running_loop().time() + destination.timeout_seconds
        try:
            # The destination's name and the method only: the URL may carry the injected secret.
            with inner_span(
                "tether.egress.upstream",
                {"tether.destination": destination.name, "http.request.method": request.method},
            ):
                async with asyncio.timeout_at(deadline):
                    response = await self._transport.handle_async_request(upstream)
        except RequestBodyTooLargeError:
            raise
        except (TimeoutError, httpx.TimeoutException):
            raise UpstreamTimeoutError(f"no answer from {destination.name!r} in time") from None
        except httpx.TransportError as exc:
            raise UpstreamUnavailableError(
                f"cannot reach {destination.name!r} ({type(exc).__name__})"
            ) from None
        try:
            return await self._answer(caller, auth, request, response, guard, deadline)
        except BaseException:
            await response.aclose()
            raise

    def _build(
        self, auth: EgressAuthorization, request: EgressRequest, path: AgentPath
    ) -> tuple[httpx.Request, LeakGuard]:
        destination = auth.destination
        injection = destination.inject
        try:
            value = auth.secret.decode("utf-8")
            rendered = injection.render(value)
        except (UnicodeDecodeError, InvalidInputError):
            raise InjectionError("the secret's value cannot be sent this way") from None
        renderings = [rendered.encode("utf-8")]
        if injection.type is InjectionType.BASIC:
            renderings.append(f"{injection.name}:{value}".encode())
        guard = guard_for(auth.secret, renderings)
        headers = request_headers(request.headers, injection.header_name)
        inject_param: tuple[str, str] | None = None
        if injection.type is InjectionType.QUERY:
            inject_param = (injection.name, rendered)
        else:
            if not rendered.isascii():
                raise InjectionError("the secret's value cannot be sent in a header")
            assert injection.header_name is not None
            headers.append((injection.header_name.lower().encode("ascii"), rendered.encode("ascii")))
        headers.append((b"accept-encoding", b"identity"))
        query = filter_query(request.raw_query, injection.name if inject_param else None)
        url = upstream_url(destination.base_url, path, query, inject_param)
        declared = _declared_length(request.headers)
        content: AsyncIterator[bytes] | bytes | None = None
        if request.body is not None and _has_body(request.headers):
            if declared == 0:
                content = b""
            else:
                content = _capped(request.body, destination.max_body_bytes)
                if declared is not None:
                    headers.append((b"content-length", str(declared).encode("ascii")))
        timeout = float(destination.timeout_seconds)
        upstream = httpx.Request(
            request.method,
            url,
            headers=headers,
            content=content,
            extensions={"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}},
        )
        return upstream, guard

    async def _answer(
        self,
        caller: AgentCaller,
        auth: EgressAuthorization,
        request: EgressRequest,
        response: httpx.Response,
        guard: LeakGuard,
        deadline: float,
    ) -> EgressResponse:
        destination = auth.destination
        limit = destination.max_response_bytes
        encodings = [
            token.strip().lower()
            for token in response.headers.get("content-encoding", "").split(",")
            if token.strip()
        ]
        if any(token not in _SUPPORTED_ENCODINGS for token in encodings):
            raise UpstreamUnavailableError("the upstream's content encoding cannot be inspected")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit and not encodings:
            raise UpstreamResponseTooLargeError(f"the destination's answers are limited to {limit} bytes")
        headers, header_redactions = response_headers(response.headers.raw, guard)
        body = _AnswerBody(
            response,
            guard.stream(),
            _Redactions(self._broker, caller, auth, request, header_redactions),
            name=destination.name,
            limit=limit,
            deadline=deadline,
        )
        await body.prefetch()
        if body.finished and request.method != "HEAD":
            content = await body.complete()
            return EgressResponse(response.status_code, headers, _once(content), content)
        return EgressResponse(status=response.status_code, headers=headers, body=body.stream())


class _AnswerBody:
    """The upstream's body on its way to the agent: bounded in size and time, redacted, and
    its redactions recorded before the last bytes go out."""

    def __init__(
        self,
        response: httpx.Response,
        redactor: StreamRedactor,
        record: _Redactions,
        *,
        name: str,
        limit: int,
        deadline: float,
    ) -> None:
        self._response = response
        self._chunks = response.aiter_bytes()
        self._redactor = redactor
        self._record = record
        self._name = name
        self._limit = limit
        self._deadline = deadline
        self._seen = 0
        self._first: list[bytes] = []
        self._finished = False

    async def _next(self) -> bytes | None:
        """The next redacted piece, or None at the end; enforces the bounds."""
        try:
            async with asyncio.timeout_at(self._deadline):
                chunk = await anext(self._chunks)
        except StopAsyncIteration:
            return None
        except (TimeoutError, httpx.TimeoutException):
            raise UpstreamTimeoutError(f"{self._name!r} did not finish its answer in time") from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise UpstreamUnavailableError(
                f"the answer from {self._name!r} broke off ({type(exc).__name__})"
            ) from None
        self._seen += len(chunk)
        if self._seen > self._limit:
            raise UpstreamResponseTooLargeError(
                f"the destination's answers are limited to {self._limit} bytes"
            )
        return self._redactor.feed(chunk)

    async def prefetch(self) -> None:
        """Read up to :data:`PREFETCH_BYTES` before the status goes out, so that a short answer
        that breaks a bound becomes a clean problem response."""
        while self._seen < PREFETCH_BYTES:
            piece = await self._next()
            if piece is None:
                self._finished = True
                return
            self._first.append(piece)

    @property
    def finished(self) -> bool:
        """The upstream's answer ended within the prefetch."""
        return self._finished

    async def complete(self) -> bytes:
        """The whole answer, once :attr:`finished`: redacted, its redactions recorded (before any
        byte goes out), the upstream's response closed."""
        try:
            content = b"".join(self._first) + self._redactor.finish()
            await self._record(self._redactor)
            return content
        finally:
            await self._response.aclose()

    async def stream(self) -> AsyncIterator[bytes]:
        # Past the prefetch the status is already sent: an answer that breaks a bound is cut
        # off (the agent sees a broken stream), never truncated to look complete.
        try:
            for first in self._first:
                if first:
                    yield first
            while not self._finished:
                piece = await self._next()
                if piece is None:
                    break
                if piece:
                    yield piece
            rest = self._redactor.finish()
            await self._record(self._redactor)  # durable before the last bytes go out
            if rest:
                yield rest
        except Exception:
            with contextlib.suppress(Exception):
                await self._record(self._redactor)
            raise
        finally:
            await self._response.aclose()


async def _once(content: bytes) -> AsyncIterator[bytes]:
    yield content


def _capped(body: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    async def stream() -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in body:
            seen += len(chunk)
            if seen > limit:
                raise RequestBodyTooLargeError(f"the destination accepts at most {limit} bytes")
            yield chunk

    return stream()


class _Redactions:
    """Records one ``egress.redact`` event per answer that needed any redaction (once)."""

    def __init__(
        self,
        broker: Broker,
        caller: AgentCaller,
        auth: EgressAuthorization,
        request: EgressRequest,
        in_headers: int,
    ) -> None:
        self._broker = broker
        self._caller = caller
        self._auth = auth
        self._request = request
        self._in_headers = in_headers
        self._done = False

    async def __call__(self, redactor: StreamRedactor) -> None:
        count = self._in_headers + redactor.count
        if self._done or count == 0:
            return
        self._done = True
        task = self._auth.task
        await self._broker.audit.record(
            "egress.redact",
            Actor.agent(self._caller.agent.id),
            resource=f"destination:{self._auth.destination.name}",
            task_id=task.id,
            chain=task.chain,
            reason="the upstream's answer held the injected secret (reflection or exfiltration attempt)",
            data={
                "count": count,
                "in_headers": self._in_headers,
                "grant_id": self._auth.grant.id,
                "method": self._request.method[:16],
            },
        )
        log.warning(
            "egress leak guard redacted %d occurrence(s) of the injected secret from %s (task %s)",
            count,
            self._auth.destination.name,
            task.id,
        )
