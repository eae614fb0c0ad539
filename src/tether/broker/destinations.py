"""The destinations registry: the upstreams that egress may forward to, and how a secret is
injected into calls to them.

Operators with ``destination.write`` (admins and secret writers, who wire secrets to upstreams)
add and remove destinations; ``destination.read`` lists and shows them. Registering one grants
no use of its secret: every call through it is still a task-scoped, policy-decided activation.
Every change is audited before it is made, and a failed change leaves a failure event after it.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable

from tether.audit import AuditLog
from tether.broker.access import authorize, operator_actor, record_failure
from tether.clock import Clock
from tether.domain.destinations import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
    Destination,
    Injection,
    validate_destination_name,
)
from tether.domain.operators import OperatorRecord, Permission
from tether.errors import ConflictError, NotFoundError, TetherError
from tether.store.base import Storage

__all__ = ["DestinationService"]


class DestinationService:
    """Add, list, show and remove destinations."""

    def __init__(self, storage: Storage, audit: AuditLog, clock: Clock) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock

    async def add(
        self,
        actor: OperatorRecord,
        *,
        name: str,
        base_url: str,
        secret: str,
        inject: Injection,
        methods: Iterable[str] = ("GET",),
        path_prefixes: Iterable[str] = ("/",),
        timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> Destination:
        """Register destination ``name``: calls to ``base_url`` get secret ``secret`` injected as
        ``inject`` says. The secret must exist already (:class:`NotFoundError` otherwise), so a
        destination never points at nothing; :class:`ConflictError` if the name is taken."""
        record = Destination(
            name=name,
            base_url=base_url,
            secret=secret,
            inject=inject,
            methods=frozenset(methods),
            path_prefixes=tuple(path_prefixes),
            timeout_seconds=timeout_seconds,
            max_body_bytes=max_body_bytes,
            max_response_bytes=max_response_bytes,
            created_at=self._clock.now(),
            created_by=actor.name,
        )
        resource = f"destination:{record.name}"
        await authorize(self._audit, actor, Permission.DESTINATION_WRITE, resource)
        if await self._storage.get_secret(record.secret) is None:
            raise NotFoundError(f"no secret {record.secret!r}: write it before wiring it to a destination")
        if await self._storage.get_destination(record.name) is not None:
            # The store's unique key decides races; this spares the audit log a doomed request.
            raise ConflictError(f"a destination named {record.name!r} already exists")
        data = {k: v for k, v in record.to_json().items() if k not in {"name", "created_at", "created_by"}}
        await self._audit.record("destination.add", operator_actor(actor), resource=resource, data=data)
        try:
            await self._storage.put_destination(record)
        except TetherError as exc:
            await record_failure(self._audit, "destination.add", actor, resource, exc)
            raise
        return record

    async def list(self, actor: OperatorRecord) -> builtins.list[Destination]:
        """Every destination, by name."""
        await authorize(self._audit, actor, Permission.DESTINATION_READ, "destination:*")
        return await self._storage.list_destinations()

    async def show(self, actor: OperatorRecord, name: str) -> Destination:
        """One destination. :class:`NotFoundError` if there is none by that name."""
        validate_destination_name(name)
        await authorize(self._audit, actor, Permission.DESTINATION_READ, f"destination:{name}")
        record = await self._storage.get_destination(name)
        if record is None:
            raise NotFoundError(f"no destination {name!r}")
        return record

    async def remove(self, actor: OperatorRecord, name: str) -> None:
        """Remove a destination. Egress reads destinations from the store on each call, so calls
        through it stop as soon as this commits."""
        validate_destination_name(name)
        resource = f"destination:{name}"
        await authorize(self._audit, actor, Permission.DESTINATION_WRITE, resource)
        record = await self._storage.get_destination(name)
        if record is None:
            raise NotFoundError(f"no destination {name!r}")
        await self._audit.record(
            "destination.remove",
            operator_actor(actor),
            resource=resource,
            data={"base_url": record.base_url, "secret": record.secret},
        )
        try:
            if not await self._storage.delete_destination(name):
                raise NotFoundError(f"no destination {name!r}")
        except TetherError as exc:
            await record_failure(self._audit, "destination.remove", actor, resource, exc)
            raise
