"""Tasks from the agent's side: declare the intent, ask for grants, use them, end everything.

    with agent.task(purpose="deploy", objective="ship 1.2", secrets=["prod/github/token"],
                    destinations=["github"], ttl_seconds=600) as task:
        token = task.reveal("prod/github/token", destination="github")
        ...

Leaving the block normally completes the task; leaving it with an exception fails it. Either
way, everything issued for the task stops working at once. The asynchronous twin is
``async with async_agent.task(...) as task`` with ``await task.reveal(...)``.

Secret values are returned to the caller and never kept: no handle, grant, repr or exception
holds one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from tether.domain.tasks import validate_id
from tether.errors import InvalidInputError
from tether.sdk.client import TetherAPIError, checked
from tether.sdk.egress import AsyncEgressClient, EgressClient

if TYPE_CHECKING:
    from tether.sdk.client import Agent, AsyncAgent

__all__ = ["AsyncTask", "Grant", "GrantRequest", "Task"]

log = logging.getLogger(__name__)

LIVE_STATUSES: Final = frozenset({"active", "pending_approval"})
MODES: Final = frozenset({"inject", "reveal", "dynamic"})
CHANGEABLE: Final = frozenset({"purpose", "objective", "sensitivity", "secrets", "destinations", "tools"})
_ENDED_BY: Final = {"complete": "completed", "fail": "failed", "revoke": "revoked"}


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Grant:
    """A task-scoped, key-bound permission to use one secret (or destination) in one mode.
    It carries no secret material."""

    id: str
    task_id: str
    mode: str
    expires_at: datetime | None
    uses_left: int | None
    secret: str | None = None
    destination: str | None = None
    status: str = "active"

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Grant:
        """A grant from the API's grant response."""
        uses_left = body.get("uses_left")
        return cls(
            id=validate_id(body.get("id"), "grt", "grant id"),
            task_id=str(body.get("task_id", "")),
            mode=str(body.get("mode", "")),
            expires_at=_time(body.get("expires_at")),
            uses_left=uses_left if isinstance(uses_left, int) else None,
            secret=body.get("secret") if isinstance(body.get("secret"), str) else None,
            destination=body.get("destination") if isinstance(body.get("destination"), str) else None,
            status=str(body.get("status", "active")),
        )

    def usable(self, now: datetime) -> bool:
        """Whether this grant can still be used, as far as the agent knows (Tether decides)."""
        if self.status != "active" or self.uses_left == 0:
            return False
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class GrantRequest:
    """A grant to ask for with the task (``agent.task(..., grants=[...])``): issued in the same
    round trip as the task, each decided on its own."""

    secret: str | None = None
    destination: str | None = None
    mode: str = "inject"
    ttl_seconds: int | None = None
    max_uses: int | None = None

    def body(self) -> dict[str, Any]:
        """The grant request's JSON body."""
        return _grant_request(self.secret, self.destination, self.mode, self.ttl_seconds, self.max_uses)


#: What ``grants=`` accepts: :class:`GrantRequest` objects or their JSON bodies.
GrantSpec = GrantRequest | Mapping[str, Any]
_OPENED_KEYS: Final = frozenset({"grants", "grant_indexes", "grants_denied", "grants_pending_approval"})


def _grant_body(spec: GrantSpec) -> dict[str, Any]:
    if isinstance(spec, GrantRequest):
        return spec.body()
    if not isinstance(spec, Mapping):
        raise InvalidInputError("grants holds GrantRequest objects or grant request bodies", field="grants")
    known = {"secret", "destination", "mode", "ttl_seconds", "max_uses"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise InvalidInputError(f"grants: unknown field {unknown[0]!r}", field="grants")
    return _grant_request(
        spec.get("secret"),
        spec.get("destination"),
        spec.get("mode", "inject"),
        spec.get("ttl_seconds"),
        spec.get("max_uses"),
    )


def _key(body: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(body.items()))


def _names(field: str, values: Iterable[str] | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):  # a lone string would otherwise become a list of characters
        raise InvalidInputError(f"{field} is a list of names, not one string", field=field)
    return [str(value) for value in values]


def task_request(
    *,
    purpose: str,
    objective: str,
    secrets: Iterable[str] | None,
    destinations: Iterable[str] | None,
    tools: Iterable[str] | None,
    sensitivity: str,
    ttl_seconds: int | None,
    grants: Iterable[GrantSpec] | None = None,
) -> dict[str, Any]:
    """The body of ``POST /v1/tasks`` (with the grants to issue in the same round trip)."""
    body: dict[str, Any] = {
        "purpose": purpose,
        "objective": objective,
        "sensitivity": sensitivity,
        "secrets": _names("secrets", secrets),
        "destinations": _names("destinations", destinations),
        "tools": _names("tools", tools),
    }
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    if grants is not None:
        if isinstance(grants, Mapping | str):
            raise InvalidInputError("grants is a list of grant requests", field="grants")
        body["grants"] = [_grant_body(spec) for spec in grants]
    return body


def _grant_request(
    secret: str | None, destination: str | None, mode: str, ttl_seconds: int | None, max_uses: int | None
) -> dict[str, Any]:
    if mode not in MODES:
        raise InvalidInputError("mode must be inject, reveal or dynamic", field="mode")
    if secret is None and destination is None:
        raise InvalidInputError("a grant names a secret or a destination", field="secret")
    body: dict[str, Any] = {"mode": mode}
    for key, value in (
        ("secret", secret),
        ("destination", destination),
        ("ttl_seconds", ttl_seconds),
        ("max_uses", max_uses),
    ):
        if value is not None:
            body[key] = value
    return body


def _patch_request(fields: Mapping[str, Any]) -> dict[str, Any]:
    if not fields:
        raise InvalidInputError("name at least one field to change", field="fields")
    unknown = sorted(set(fields) - CHANGEABLE)
    if unknown:
        raise InvalidInputError(f"a task's {unknown[0]} cannot be changed", field=unknown[0])
    body: dict[str, Any] = {}
    for key, value in fields.items():
        body[key] = _names(key, value) if key in {"secrets", "destinations", "tools"} else value
    return body


class _TaskState:
    """What both task handles share: the task as last seen, the reveal grants, the URLs. No I/O."""

    def __init__(
        self,
        body: Mapping[str, Any],
        clock: Callable[[], float],
        asked: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        self._body: dict[str, Any] = {}
        self._clock = clock
        self._reveal_grants: dict[tuple[str, str | None], Grant] = {}
        # Grants issued with the task, not yet handed out by grant(): by the request that asked.
        self._issued: dict[tuple[tuple[str, Any], ...], list[Grant]] = {}
        self.issued_grants: list[Grant] = []
        self.refused_grants: list[dict[str, Any]] = []
        self._seen(body)
        self._opened(body, list(asked))

    def _opened(self, body: Mapping[str, Any], asked: list[Mapping[str, Any]]) -> None:
        """Take in the grants issued (and refused) with the task."""
        items = body.get("grants")
        indexes = body.get("grant_indexes")
        if not isinstance(items, list) or not isinstance(indexes, list):
            return
        for item, index in zip(items, indexes, strict=False):
            if not isinstance(item, Mapping) or not isinstance(index, int) or not 0 <= index < len(asked):
                continue
            grant = Grant.from_json(item)
            self.issued_grants.append(grant)
            self._issued.setdefault(_key(asked[index]), []).append(grant)
            if grant.mode == "reveal" and grant.secret is not None:
                self._reveal_grants.setdefault((grant.secret, grant.destination), grant)
        for name in ("grants_denied", "grants_pending_approval"):
            refused = body.get(name)
            if isinstance(refused, list):
                self.refused_grants.extend(dict(item) for item in refused if isinstance(item, Mapping))

    def _take_issued(self, body: Mapping[str, Any]) -> Grant | None:
        """A grant issued with the task for exactly this request, if one is left and usable."""
        waiting = self._issued.get(_key(body))
        while waiting:
            grant = waiting.pop(0)
            if grant.usable(self._now()):
                return grant
        return None

    def _seen(self, body: Mapping[str, Any]) -> None:
        validate_id(body.get("id"), "tsk", "task id")
        if self._body and body["id"] != self._body["id"]:
            raise InvalidInputError("the answer is about another task", field="id")
        self._body = {
            key: value for key, value in body.items() if key != "grants_revoked" and key not in _OPENED_KEYS
        }

    def _ended(self, how: str) -> None:
        self._body["status"] = _ENDED_BY[how]
        self._body["approval_id"] = None
        self._reveal_grants.clear()
        self._issued.clear()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _cached_reveal(self, key: tuple[str, str | None]) -> Grant | None:
        grant = self._reveal_grants.get(key)
        if grant is not None and not grant.usable(self._now()):
            del self._reveal_grants[key]
            return None
        return grant

    def _used(self, key: tuple[str, str | None], grant: Grant, body: Mapping[str, Any]) -> str:
        uses_left = body.get("uses_left")
        used = Grant(
            id=grant.id,
            task_id=grant.task_id,
            mode=grant.mode,
            expires_at=grant.expires_at,
            uses_left=uses_left if isinstance(uses_left, int) else None,
            secret=grant.secret,
            destination=grant.destination,
            status=grant.status,
        )
        self._reveal_grants[key] = used
        value = body.get("value")
        if not isinstance(value, str):
            raise TetherAPIError(502, {"detail": "the activation answer holds no value"})
        return value

    def _after_update(self, body: Mapping[str, Any]) -> int:
        revoked = body.get("grants_revoked", 0)
        self._seen(body)
        if revoked:
            self._reveal_grants.clear()
            self._issued.clear()
        return revoked if isinstance(revoked, int) else 0

    @staticmethod
    def _grant_id(grant: Grant | str) -> str:
        return validate_id(grant.id if isinstance(grant, Grant) else grant, "grt", "grant id")

    @property
    def _url(self) -> str:
        return f"/v1/tasks/{self.id}"

    @property
    def id(self) -> str:
        """The task's id (``tsk_…``)."""
        return str(self._body["id"])

    @property
    def status(self) -> str:
        """The status as last seen: ``pending_approval``, ``active``, ``completed``, ``failed``,
        ``revoked`` or ``expired`` (call ``refresh()`` to read it again)."""
        return str(self._body.get("status", ""))

    @property
    def approval_id(self) -> str | None:
        """The approval the task waits for, while it is ``pending_approval``."""
        value = self._body.get("approval_id")
        return value if isinstance(value, str) else None

    @property
    def expires_at(self) -> datetime | None:
        return _time(self._body.get("expires_at"))

    @property
    def info(self) -> dict[str, Any]:
        """The task as last seen (the API's task response)."""
        return dict(self._body)

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(id={self.id}, status={self.status}, "
            f"purpose={self._body.get('purpose')!r})"
        )


def _log_failed_ending(task_id: str, exc: BaseException) -> None:
    # The class name only: the caller's own exception is what matters here.
    log.warning("task %s: could not be failed after an error (%s)", task_id, type(exc).__name__)


def _delegation_request(
    agent: str,
    objective: str,
    secrets: Iterable[str],
    destinations: Iterable[str],
    tools: Iterable[str],
    sensitivity: str | None,
    ttl_seconds: int | None,
) -> dict[str, Any]:
    if not isinstance(agent, str) or not agent:
        raise InvalidInputError("agent (the delegate's SPIFFE ID or name) is required", field="agent")
    body: dict[str, Any] = {
        "agent": agent,
        "objective": objective,
        "secrets": list(secrets),
        "destinations": list(destinations),
        "tools": list(tools),
    }
    if sensitivity is not None:
        body["sensitivity"] = sensitivity
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    return body


class Task(_TaskState):
    """A handle on one task of a synchronous :class:`~tether.sdk.Agent`. Use it as a context
    manager: the task is completed on normal exit and failed on an exception."""

    def __init__(
        self,
        agent: Agent,
        body: Mapping[str, Any],
        clock: Callable[[], float] = time.time,
        asked: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(body, clock, asked)
        self._agent = agent
        self._http: EgressClient | None = None

    def _call(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any) -> dict[str, Any]:
        return checked(self._agent.request(method, path, **kwargs), ok)

    def refresh(self) -> Task:
        """Read the task again (status, approval, context)."""
        self._seen(self._call("GET", self._url))
        return self

    def update(self, **fields: Any) -> int:
        """Change the task's context (``purpose``, ``objective``, ``sensitivity``, ``secrets``,
        ``destinations``, ``tools``). Tether decides again at once; returns how many grants were
        revoked because the new context no longer allows them."""
        return self._after_update(self._call("PATCH", self._url, json=_patch_request(fields)))

    def grant(
        self,
        *,
        secret: str | None = None,
        destination: str | None = None,
        mode: str = "inject",
        ttl_seconds: int | None = None,
        max_uses: int | None = None,
    ) -> Grant:
        """Issuance: a grant to use ``secret`` (or what ``destination`` injects) in ``mode``. A grant
        issued with the task for exactly this request is handed out first (no round trip).

        Raises:
            ApprovalRequired: only a human approval is missing (``approval_id`` names it).
            TetherDenied: policy (or the task's state) refuses the grant.
        """
        body = _grant_request(secret, destination, mode, ttl_seconds, max_uses)
        issued = self._take_issued(body)
        if issued is not None:
            return issued
        return Grant.from_json(self._call("POST", f"{self._url}/grants", (201,), json=body))

    @property
    def http(self) -> EgressClient:
        """An HTTP client through Tether's egress for this task: ``task.http.get("github", "/repos/o/r")``
        sends the request with the destination's secret injected by Tether; the agent never sees it
        (it needs an ``inject`` grant for the destination: :meth:`grant`)."""
        if self._http is None:
            self._http = EgressClient(self._agent, self.id)
        return self._http

    def delegate(
        self,
        *,
        agent: str,
        objective: str,
        secrets: Iterable[str] = (),
        destinations: Iterable[str] = (),
        tools: Iterable[str] = (),
        sensitivity: str | None = None,
        ttl_seconds: int | None = None,
    ) -> str:
        """Hand a narrower sub-task to ``agent`` (its SPIFFE ID or name); returns the child task's id,
        which the delegate picks up with ``agent.join_task(id)``."""
        body = _delegation_request(agent, objective, secrets, destinations, tools, sensitivity, ttl_seconds)
        return str(self._call("POST", f"{self._url}/delegate", (201,), json=body)["id"])

    def grants(self) -> list[Grant]:
        """Every grant issued in this task, with its status."""
        items = self._call("GET", f"{self._url}/grants").get("items", [])
        return [Grant.from_json(item) for item in items if isinstance(item, Mapping)]

    def activate(self, grant: Grant | str) -> dict[str, Any]:
        """Use a ``reveal`` or ``dynamic`` grant (decided again now). The answer holds the value
        (``value``, ``version``) or a fresh credential (``credential``, ``expires_at``)."""
        return self._call("POST", f"/v1/grants/{self._grant_id(grant)}/activate")

    def reveal(self, path: str, destination: str | None = None) -> str:
        """The value of secret ``path``: a ``reveal`` grant is issued on first use (per path and
        destination) and reused after; each call is an activation that policy decides again."""
        key = (path, destination)
        grant = self._cached_reveal(key)
        if grant is None:
            grant = self.grant(secret=path, destination=destination, mode="reveal")
            self._reveal_grants[key] = grant
        try:
            body = self.activate(grant)
        except TetherAPIError:
            self._reveal_grants.pop(key, None)
            raise
        return self._used(key, grant, body)

    def _end(self, how: str) -> dict[str, Any]:
        body = self._call("POST", f"{self._url}/{how}")
        self._ended(how)
        return body

    def complete(self) -> dict[str, Any]:
        """The task is done: everything issued for it (and its sub-tasks) is revoked."""
        return self._end("complete")

    def fail(self) -> dict[str, Any]:
        """The task failed: everything issued for it (and its sub-tasks) is revoked."""
        return self._end("fail")

    def revoke(self) -> dict[str, Any]:
        """Revoke the task: everything issued for it (and its sub-tasks) stops working."""
        return self._end("revoke")

    def __enter__(self) -> Task:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            if self.live:
                _complete_unless_over(self)
            return
        if not self.live:
            return
        try:
            self.fail()
        except Exception as ending:  # noqa: BLE001 - never mask the exception that ended the block
            _log_failed_ending(self.id, ending)


def _complete_unless_over(task: Task) -> None:
    try:
        task.complete()
    except TetherAPIError as exc:
        if exc.status != 409:  # 409: it ended meanwhile (revoked, expired): nothing is left to revoke
            raise
        task.refresh()


class AsyncTask(_TaskState):
    """The asynchronous twin of :class:`Task` (``async with``)."""

    def __init__(
        self,
        agent: AsyncAgent,
        body: Mapping[str, Any],
        clock: Callable[[], float] = time.time,
        asked: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(body, clock, asked)
        self._agent = agent
        self._http: AsyncEgressClient | None = None

    @property
    def http(self) -> AsyncEgressClient:
        """The asynchronous twin of :attr:`Task.http`."""
        if self._http is None:
            self._http = AsyncEgressClient(self._agent, self.id)
        return self._http

    async def delegate(
        self,
        *,
        agent: str,
        objective: str,
        secrets: Iterable[str] = (),
        destinations: Iterable[str] = (),
        tools: Iterable[str] = (),
        sensitivity: str | None = None,
        ttl_seconds: int | None = None,
    ) -> str:
        """Hand a narrower sub-task to ``agent``; returns the child task's id (see :meth:`Task.delegate`)."""
        body = _delegation_request(agent, objective, secrets, destinations, tools, sensitivity, ttl_seconds)
        return str((await self._call("POST", f"{self._url}/delegate", (201,), json=body))["id"])

    async def _call(
        self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any
    ) -> dict[str, Any]:
        return checked(await self._agent.request(method, path, **kwargs), ok)

    async def refresh(self) -> AsyncTask:
        """Read the task again (status, approval, context)."""
        self._seen(await self._call("GET", self._url))
        return self

    async def update(self, **fields: Any) -> int:
        """Change the task's context; returns how many grants were revoked (see :meth:`Task.update`)."""
        return self._after_update(await self._call("PATCH", self._url, json=_patch_request(fields)))

    async def grant(
        self,
        *,
        secret: str | None = None,
        destination: str | None = None,
        mode: str = "inject",
        ttl_seconds: int | None = None,
        max_uses: int | None = None,
    ) -> Grant:
        """Issuance (see :meth:`Task.grant`)."""
        body = _grant_request(secret, destination, mode, ttl_seconds, max_uses)
        issued = self._take_issued(body)
        if issued is not None:
            return issued
        return Grant.from_json(await self._call("POST", f"{self._url}/grants", (201,), json=body))

    async def grants(self) -> list[Grant]:
        items = (await self._call("GET", f"{self._url}/grants")).get("items", [])
        return [Grant.from_json(item) for item in items if isinstance(item, Mapping)]

    async def activate(self, grant: Grant | str) -> dict[str, Any]:
        """Use a ``reveal`` or ``dynamic`` grant (see :meth:`Task.activate`)."""
        return await self._call("POST", f"/v1/grants/{self._grant_id(grant)}/activate")

    async def reveal(self, path: str, destination: str | None = None) -> str:
        """The value of secret ``path`` (see :meth:`Task.reveal`)."""
        key = (path, destination)
        grant = self._cached_reveal(key)
        if grant is None:
            grant = await self.grant(secret=path, destination=destination, mode="reveal")
            self._reveal_grants[key] = grant
        try:
            body = await self.activate(grant)
        except TetherAPIError:
            self._reveal_grants.pop(key, None)
            raise
        return self._used(key, grant, body)

    async def _end(self, how: str) -> dict[str, Any]:
        body = await self._call("POST", f"{self._url}/{how}")
        self._ended(how)
        return body

    async def complete(self) -> dict[str, Any]:
        return await self._end("complete")

    async def fail(self) -> dict[str, Any]:
        return await self._end("fail")

    async def revoke(self) -> dict[str, Any]:
        return await self._end("revoke")

    async def __aenter__(self) -> AsyncTask:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            if self.live:
                try:
                    await self.complete()
                except TetherAPIError as error:
                    if error.status != 409:
                        raise
                    await self.refresh()
            return
        if not self.live:
            return
        try:
            await self.fail()
        except Exception as ending:  # noqa: BLE001 - never mask the exception that ended the block
            _log_failed_ending(self.id, ending)


class OpeningTask:
    """What ``AsyncAgent.task(...)`` returns: ``await`` it for an :class:`AsyncTask`, or use it
    with ``async with`` (the task is opened on entry and ended on exit)."""

    def __init__(self, agent: AsyncAgent, body: Mapping[str, Any]) -> None:
        self._agent = agent
        self._request = dict(body)
        self._task: AsyncTask | None = None

    async def _open(self) -> AsyncTask:
        if self._task is None:
            response = await self._agent.request("POST", "/v1/tasks", json=self._request)
            self._task = AsyncTask(
                self._agent,
                checked(response, (201,)),
                self._agent._session.clock,
                self._request.get("grants", ()),
            )
        return self._task

    def __await__(self) -> Generator[Any, None, AsyncTask]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncTask:
        return await self._open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            await self._task.__aexit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"OpeningTask(purpose={self._request.get('purpose')!r})"
