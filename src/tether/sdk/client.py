"""Agent-side clients: authenticate with the agent's key, keep a DPoP-bound token fresh,
and sign a proof for every request.

    agent = Agent("http://127.0.0.1:8420", "spiffe://acme.test/agent/ci", key="ci.jwk")
    agent.whoami()

A workload holding a federated token (a JWT-SVID, a Kubernetes or CI token) exchanges it
instead, proving possession of a key it generated itself::

    agent = Agent.federated("http://127.0.0.1:8420", subject_token=read_svid)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tether.crypto.jose import generate_private_jwk
from tether.domain.tasks import validate_id
from tether.errors import AuthenticationError, InvalidInputError, TetherError
from tether.sdk._signer import ASSERTION_TYPE, JWT_TOKEN_TYPE, TOKEN_EXCHANGE, Signer

if TYPE_CHECKING:
    from tether.sdk.tasks import AsyncTask, GrantSpec, OpeningTask, Task

__all__ = [
    "AUTH_FAILED_HINT",
    "Agent",
    "ApprovalRequired",
    "AsyncAgent",
    "TetherAPIError",
    "TetherConnectionError",
    "TetherDenied",
    "api_error",
]

TOKEN_PATH = "/v1/auth/token"
REFRESH_MARGIN_SECONDS = 30
#: What an agent whose authentication was refused should check. Tether's answer stays opaque
#: (``client authentication failed``) so that nobody can probe which agents exist; the audit
#: event ``auth.failed`` holds the precise reason.
AUTH_FAILED_HINT = (
    "the agent is unknown, disabled, or the key does not match: see `tether audit query --kind auth.*`"
)


class TetherAPIError(TetherError):
    """A request to Tether failed; ``status`` and the problem (or OAuth error) body say why."""

    def __init__(self, status: int, body: Mapping[str, Any], *, hint: str | None = None) -> None:
        detail = body.get("error_description") or body.get("detail") or body.get("title") or "request failed"
        super().__init__(f"HTTP {status}: {detail}" + (f" ({hint})" if hint else ""))
        self.status = status
        self.body = dict(body)


class TetherConnectionError(TetherError):
    """Tether could not be reached (refused, timed out, broken off); ``address`` is the URL the
    client was given. No request was answered, so nothing is known about its outcome."""

    def __init__(self, address: str, exc: httpx.TransportError) -> None:
        if isinstance(exc, httpx.ConnectError):
            what = f"cannot connect to Tether at {address}: is `tether server` running there?"
        elif isinstance(exc, httpx.TimeoutException):
            what = f"Tether at {address} did not answer in time"
        else:
            what = f"the request to Tether at {address} failed ({type(exc).__name__})"
        # The class name only: a transport error's text may quote the request.
        super().__init__(what)
        self.address = address


DENIED_PROBLEM = "urn:tether:problem:denied"


class TetherDenied(TetherAPIError):  # noqa: N818 - reads as what happened: "Tether denied"
    """The governed path said no (403 ``urn:tether:problem:denied``): ``decision`` names the
    policies and what is ``missing``; ``approval_id`` is set when an approval was requested."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(status, body)
        decision = body.get("decision")
        self.decision: dict[str, Any] = dict(decision) if isinstance(decision, Mapping) else {}
        approval_id = body.get("approval_id")
        self.approval_id: str | None = approval_id if isinstance(approval_id, str) else None
        missing = self.decision.get("missing")
        self.missing: list[str] = [str(m) for m in missing] if isinstance(missing, list) else []
        policies = self.decision.get("policies")
        self.policies: list[str] = [str(p) for p in policies] if isinstance(policies, list) else []
        said = [f"policies: {', '.join(self.policies)}" if self.policies else "no policy permits it"]
        if self.missing:
            said.append(f"missing: {', '.join(self.missing)}")
        if self.approval_id is not None:
            said.append(f"approval {self.approval_id}")
        self.args = (f"{self.args[0]} ({'; '.join(said)})",)


class ApprovalRequired(TetherDenied):
    """Denied only for want of a human approval; ``approval_id`` names the request an approver decides."""


def api_error(status: int, body: Mapping[str, Any]) -> TetherAPIError:
    """The most specific error for a failed answer: :class:`ApprovalRequired`,
    :class:`TetherDenied`, or :class:`TetherAPIError`."""
    if status == 403 and body.get("type") == DENIED_PROBLEM:
        denied = TetherDenied(status, body)
        if denied.missing == ["approval"]:
            return ApprovalRequired(status, body)
        return denied
    return TetherAPIError(status, body)


@dataclass
class _Token:
    value: str
    expires_at: float


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {"detail": response.text[:200]}
    return data if isinstance(data, dict) else {"detail": str(data)[:200]}


def checked(response: httpx.Response, ok: tuple[int, ...] = (200,)) -> dict[str, Any]:
    """The JSON body of an answer with an ``ok`` status, else the matching :func:`api_error`."""
    body = _body(response)
    if response.status_code not in ok:
        raise api_error(response.status_code, body)
    return body


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _base_url(url: str) -> str:
    """``url`` in the form Tether compares URLs in: scheme and host lowercased, the scheme's
    default port dropped, no trailing ``/``. The client assertion's ``aud`` is compared exactly,
    so ``http://LOCALHOST:8420`` must be sent as ``http://localhost:8420``."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise InvalidInputError("the base URL is not a URL", field="base_url") from None
    if parsed.scheme not in _DEFAULT_PORTS or not parsed.host:
        raise InvalidInputError("the base URL must be an absolute http(s) URL", field="base_url")
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    if parsed.port is not None and parsed.port != _DEFAULT_PORTS[parsed.scheme]:
        host = f"{host}:{parsed.port}"
    return f"{parsed.scheme}://{host}{parsed.raw_path.decode('ascii').split('?')[0].rstrip('/')}"


class _Session:
    """What both clients share: the token cache and how requests are signed."""

    def __init__(
        self,
        base_url: str,
        agent_id: str | None,
        signer: Signer,
        subject_token: Callable[[], str] | None,
        clock: Callable[[], float],
    ) -> None:
        if agent_id is None and subject_token is None:
            raise AuthenticationError("an agent id (with its key) or a federated subject token is needed")
        self.base_url = _base_url(base_url)
        self.agent_id = agent_id
        self.signer = signer
        self.subject_token = subject_token
        self.clock = clock
        self.token: _Token | None = None

    def token_request(self) -> tuple[dict[str, str], dict[str, str]]:
        now = int(self.clock())
        url = self.base_url + TOKEN_PATH
        if self.subject_token is not None:
            form = {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": self.subject_token(),
                "subject_token_type": JWT_TOKEN_TYPE,
            }
        else:
            assert self.agent_id is not None
            form = {
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self.signer.client_assertion(self.agent_id, url, now),
            }
        return form, {"DPoP": self.signer.proof("POST", url, now)}

    def accept_token(self, response: httpx.Response) -> str:
        body = _body(response)
        if response.status_code != 200 or not isinstance(body.get("access_token"), str):
            hint = AUTH_FAILED_HINT if body.get("error") == "invalid_client" else None
            raise TetherAPIError(response.status_code, body, hint=hint)
        expires_in = body.get("expires_in", 60)
        self.token = _Token(body["access_token"], self.clock() + float(expires_in))
        return self.token.value

    def fresh_token(self) -> str | None:
        if self.token is not None and self.token.expires_at - self.clock() > REFRESH_MARGIN_SECONDS:
            return self.token.value
        return None

    def target(self, path: str) -> httpx.URL:
        """The URL a request for ``path`` goes to, exactly as httpx will send it: the proof signs
        this form (httpx removes dot segments, for one), so the two cannot disagree."""
        return httpx.URL(self.base_url + path)

    def signed_headers(self, method: str, url: httpx.URL | str, token: str) -> dict[str, str]:
        return {
            "Authorization": f"DPoP {token}",
            "DPoP": self.signer.proof(method, str(url), int(self.clock()), access_token=token),
        }

    def unreachable(self, exc: httpx.TransportError) -> TetherConnectionError:
        return TetherConnectionError(self.base_url, exc)


def _signer_for(key: Mapping[str, Any] | Path | str | None) -> Signer:
    return Signer(key if key is not None else generate_private_jwk("Ed25519"))


class Agent:
    """A synchronous agent client."""

    def __init__(
        self,
        base_url: str,
        agent_id: str | None = None,
        key: Mapping[str, Any] | Path | str | None = None,
        *,
        subject_token: Callable[[], str] | None = None,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = _Session(base_url, agent_id, _signer_for(key), subject_token, clock)
        self._http = http or httpx.Client(timeout=30.0)

    @classmethod
    def federated(cls, base_url: str, subject_token: Callable[[], str], **kwargs: Any) -> Agent:
        """An agent that exchanges a federated token, bound to a key generated in memory."""
        return cls(base_url, subject_token=subject_token, **kwargs)

    def token(self) -> str:
        """A DPoP-bound access token, fetched or refreshed when needed."""
        cached = self._session.fresh_token()
        if cached is not None:
            return cached
        form, headers = self._session.token_request()
        try:
            response = self._http.post(self._session.base_url + TOKEN_PATH, data=form, headers=headers)
        except httpx.TransportError as exc:
            raise self._session.unreachable(exc) from None
        return self._session.accept_token(response)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send an authenticated request (a fresh DPoP proof each time).

        Raises:
            TetherConnectionError: Tether could not be reached at the client's address.
        """
        url = self._session.target(path)
        headers = {**kwargs.pop("headers", {}), **self._session.signed_headers(method, url, self.token())}
        try:
            return self._http.request(method, url, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise self._session.unreachable(exc) from None

    def whoami(self) -> dict[str, Any]:
        response = self.request("GET", "/v1/auth/whoami")
        if response.status_code != 200:
            raise TetherAPIError(response.status_code, _body(response))
        return _body(response)

    def task(
        self,
        *,
        purpose: str,
        objective: str,
        secrets: Iterable[str] | None = None,
        destinations: Iterable[str] | None = None,
        tools: Iterable[str] | None = None,
        sensitivity: str = "internal",
        ttl_seconds: int | None = None,
        grants: Iterable[GrantSpec] | None = None,
    ) -> Task:
        """Open a task: declare what this agent is doing and what it needs. Use the result as a
        context manager to complete the task on exit (fail it on an exception).

        ``grants`` (:class:`~tether.sdk.GrantRequest` objects or grant request bodies) are issued
        in the same round trip, each decided on its own: ``task.grant(...)`` with the same request
        (and ``task.reveal(...)`` for a reveal grant) then uses them without asking again; those
        not issued are in ``task.refused_grants`` (denied, or waiting for an approval).

        Raises:
            ApprovalRequired / TetherDenied: policy refuses to open the task (a task that only
                needs an approval opens as ``pending_approval`` instead).
        """
        from tether.sdk.tasks import Task, task_request

        body = task_request(
            purpose=purpose,
            objective=objective,
            secrets=secrets,
            destinations=destinations,
            tools=tools,
            sensitivity=sensitivity,
            ttl_seconds=ttl_seconds,
            grants=grants,
        )
        response = self.request("POST", "/v1/tasks", json=body)
        return Task(self, checked(response, (201,)), self._session.clock, body.get("grants", ()))

    def join_task(self, task_id: str) -> Task:
        """A handle on an existing task of this agent (e.g. one delegated to it)."""
        from tether.sdk.tasks import Task

        validate_id(task_id, "tsk", "task_id")
        return Task(self, checked(self.request("GET", f"/v1/tasks/{task_id}")), self._session.clock)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncAgent:
    """The asynchronous twin of :class:`Agent`."""

    def __init__(
        self,
        base_url: str,
        agent_id: str | None = None,
        key: Mapping[str, Any] | Path | str | None = None,
        *,
        subject_token: Callable[[], str] | None = None,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = _Session(base_url, agent_id, _signer_for(key), subject_token, clock)
        self._http = http or httpx.AsyncClient(timeout=30.0)

    @classmethod
    def federated(cls, base_url: str, subject_token: Callable[[], str], **kwargs: Any) -> AsyncAgent:
        return cls(base_url, subject_token=subject_token, **kwargs)

    async def token(self) -> str:
        cached = self._session.fresh_token()
        if cached is not None:
            return cached
        form, headers = self._session.token_request()
        try:
            response = await self._http.post(self._session.base_url + TOKEN_PATH, data=form, headers=headers)
        except httpx.TransportError as exc:
            raise self._session.unreachable(exc) from None
        return self._session.accept_token(response)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send an authenticated request (see :meth:`Agent.request`)."""
        url = self._session.target(path)
        token = await self.token()
        headers = {**kwargs.pop("headers", {}), **self._session.signed_headers(method, url, token)}
        try:
            return await self._http.request(method, url, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise self._session.unreachable(exc) from None

    async def whoami(self) -> dict[str, Any]:
        response = await self.request("GET", "/v1/auth/whoami")
        if response.status_code != 200:
            raise TetherAPIError(response.status_code, _body(response))
        return _body(response)

    def task(
        self,
        *,
        purpose: str,
        objective: str,
        secrets: Iterable[str] | None = None,
        destinations: Iterable[str] | None = None,
        tools: Iterable[str] | None = None,
        sensitivity: str = "internal",
        ttl_seconds: int | None = None,
        grants: Iterable[GrantSpec] | None = None,
    ) -> OpeningTask:
        """Open a task: ``async with agent.task(...) as task`` (completed on exit, failed on an
        exception), or ``task = await agent.task(...)``; ``grants`` are issued in the same round
        trip (see :meth:`Agent.task`)."""
        from tether.sdk.tasks import OpeningTask, task_request

        body = task_request(
            purpose=purpose,
            objective=objective,
            secrets=secrets,
            destinations=destinations,
            tools=tools,
            sensitivity=sensitivity,
            ttl_seconds=ttl_seconds,
            grants=grants,
        )
        return OpeningTask(self, body)

    async def join_task(self, task_id: str) -> AsyncTask:
        """A handle on an existing task of this agent (e.g. one delegated to it)."""
        from tether.sdk.tasks import AsyncTask

        validate_id(task_id, "tsk", "task_id")
        response = await self.request("GET", f"/v1/tasks/{task_id}")
        return AsyncTask(self, checked(response), self._session.clock)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncAgent:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
