"""The secret-engine protocol.

An engine mints a credential for one grant of one task (``issue``) and takes it back
(``revoke``; mandatory: a credential Tether cannot revoke outlives its task). ``renew`` is an
optional capability (:class:`RenewableEngine`). Engines raise :class:`~tether.errors.EngineError`;
:class:`EngineRegistry` wraps anything else an engine raises into one, so a plugin's error never
escapes as itself, and never with its message (which may quote a credential).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from tether.domain.tasks import Lease
from tether.errors import ConfigError, EngineError, NotFoundError, TetherError

log = logging.getLogger(__name__)

#: A lease still without a handle this long after it was recorded was never completed: its engine
#: failed to issue, or the node stopped between recording the lease and handing the credential out
#: (an issue takes seconds at most). Nobody holds its credential; it is revoked.
INCOMPLETE_LEASE_SECONDS = 120

#: How often the orphan sweep runs (it lists the engines' own records, e.g. database roles).
ORPHAN_SWEEP_SECONDS = 60
ORPHAN_SWEEP_INTERVAL = timedelta(seconds=ORPHAN_SWEEP_SECONDS)

__all__ = [
    "EngineRegistry",
    "IssuedCredential",
    "LeaseRequest",
    "RenewableEngine",
    "SecretEngine",
    "SweepingEngine",
]


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """What an engine is asked for: a credential for ``secret`` for one grant, until ``expires_at``."""

    lease_id: str
    task_id: str
    grant_id: str
    agent_id: str
    secret: str
    now: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """An engine's answer. ``credential`` goes to the agent once and is never stored or logged;
    ``handle`` is what the engine needs later to revoke it (stored; must hold no secret)."""

    credential: Mapping[str, Any] = field(repr=False)
    handle: Mapping[str, Any]
    expires_at: datetime


@runtime_checkable
class SecretEngine(Protocol):
    """Mints and revokes credentials. ``name`` is stored with each lease."""

    name: str
    #: True for an engine whose credential is the stored secret value itself (the static engine):
    #: its ``dynamic`` grants are decided by policy as ``reveal``.
    reveals_value: bool

    async def issue(self, request: LeaseRequest) -> IssuedCredential: ...

    async def revoke(self, lease: Lease) -> None:
        """Revoke the lease's credential. Idempotent: revoking twice is not an error. ``lease.handle``
        may be empty (Tether stopped between issuing and recording the handle): an engine names what
        it issues after ``LeaseRequest.lease_id`` so that it can still find and revoke it."""
        ...


@runtime_checkable
class RenewableEngine(SecretEngine, Protocol):
    async def renew(self, lease: Lease, expires_at: datetime) -> datetime: ...


@runtime_checkable
class SweepingEngine(SecretEngine, Protocol):
    """An engine that can find what it issued outside the store's knowledge (an optional
    capability): ``sweep_orphans`` revokes credentials whose lease is unknown, ended or was never
    completed, and returns the ids of the store's leases it revoked."""

    async def sweep_orphans(
        self, leases_of: Callable[[Sequence[str]], Awaitable[Sequence[Lease]]], now: datetime
    ) -> list[str]: ...


class EngineRegistry:
    """The engines of a node, and which serves which secret (longest matching path prefix; the
    default engine serves the rest)."""

    def __init__(self, default: SecretEngine) -> None:
        self._engines: dict[str, SecretEngine] = {default.name: default}
        self._default = default
        self._mounts: list[tuple[str, SecretEngine]] = []
        self._exact: dict[str, SecretEngine] = {}
        self._orphans_swept: datetime | None = None

    def mount(self, prefix: str, engine: SecretEngine) -> None:
        self._engines[engine.name] = engine
        self._mounts.append((prefix, engine))
        self._mounts.sort(key=lambda item: len(item[0]), reverse=True)

    def mount_secret(self, path: str, engine: SecretEngine) -> None:
        """``engine`` serves exactly the secret ``path`` (before any prefix mount)."""
        if path in self._exact:
            raise ConfigError(f"secret {path!r} is served by two engines")
        self._engines[engine.name] = engine
        self._exact[path] = engine

    def engines(self) -> list[SecretEngine]:
        return list(self._engines.values())

    def for_secret(self, path: str) -> SecretEngine:
        exact = self._exact.get(path)
        if exact is not None:
            return exact
        for prefix, engine in self._mounts:
            if path.startswith(prefix):
                return engine
        return self._default

    def named(self, name: str) -> SecretEngine:
        engine = self._engines.get(name)
        if engine is None:
            raise NotFoundError(f"no secret engine {name!r} on this node")
        return engine

    async def issue(self, engine: SecretEngine, request: LeaseRequest) -> IssuedCredential:
        try:
            issued = await engine.issue(request)
        except TetherError:
            raise
        except Exception as exc:
            raise EngineError(f"engine {engine.name!r} failed to issue: {type(exc).__name__}") from exc
        if issued.expires_at > request.expires_at:
            raise EngineError(f"engine {engine.name!r} issued a credential that outlives its grant")
        return issued

    async def sweep_orphans(
        self, leases_of: Callable[[Sequence[str]], Awaitable[Sequence[Lease]]], now: datetime
    ) -> list[str]:
        """Each sweeping engine's :meth:`SweepingEngine.sweep_orphans`, at most once per
        :data:`ORPHAN_SWEEP_SECONDS` (the first call sweeps: at start); an engine that fails is
        logged and skipped (the next sweep tries again)."""
        revoked: list[str] = []
        if self._orphans_swept is not None and now < self._orphans_swept + ORPHAN_SWEEP_INTERVAL:
            return revoked
        self._orphans_swept = now
        for engine in self._engines.values():
            if not isinstance(engine, SweepingEngine):
                continue
            try:
                revoked += await engine.sweep_orphans(leases_of, now)
            except Exception as exc:  # noqa: BLE001 - one engine's failure must not stop the sweep
                log.warning("engine %r: orphan sweep failed (%s)", engine.name, type(exc).__name__)
        return revoked

    async def check(self) -> None:
        """Let each engine that can check its configuration against its backend do so (e.g. try a
        role template in a rolled-back transaction). A refused configuration raises
        :class:`ConfigError` with the reason; an engine that cannot check now (backend unreachable,
        its admin secret not written yet, sealed) is logged and checked again at the next start."""
        for engine in self._engines.values():
            check = getattr(engine, "check", None)
            if check is None:
                continue
            try:
                await check()
            except ConfigError:
                raise
            except TetherError as exc:
                log.warning("engine %r: configuration not checked now (%s)", engine.name, exc)

    async def aclose(self) -> None:
        """Close what the engines hold open (admin connections)."""
        for engine in self._engines.values():
            close = getattr(engine, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception as exc:  # noqa: BLE001 - closing the others matters more
                    log.warning("engine %r: closing failed (%s)", engine.name, type(exc).__name__)

    async def revoke(self, lease: Lease) -> None:
        engine = self.named(lease.engine)
        try:
            await engine.revoke(lease)
        except TetherError:
            raise
        except Exception as exc:
            raise EngineError(f"engine {engine.name!r} failed to revoke: {type(exc).__name__}") from exc
