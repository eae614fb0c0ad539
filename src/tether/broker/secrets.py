"""Secret administration: write, rotate, read metadata, list, delete.

Values are write-only here. The only way to a value is :meth:`SecretService.read_value`,
which is for the broker's activation path, never for operators.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from tether.audit import Actor, AuditLog, Sensitive
from tether.broker.access import authorize, operator_actor, record_failure
from tether.broker.keys import KeyService
from tether.clock import Clock
from tether.crypto.barrier import Barrier
from tether.domain.operators import OperatorRecord, Permission
from tether.domain.secrets import (
    SecretMetadata,
    SecretRecord,
    Sensitivity,
    validate_name_set,
    validate_path,
    validate_prefix,
    value_too_large,
)
from tether.errors import ConflictError, InvalidInputError, NotFoundError, SealedError, TetherError
from tether.store.base import Storage, StoredValue, VersionConflictError

__all__ = ["MetadataChange", "SecretPage", "SecretService"]

# Optimistic concurrency: each round of a write race has one winner, so N racing writers
# need up to N rounds. Past this many, the writer gets a clean 409 rather than waiting on.
_WRITE_ATTEMPTS = 32
MAX_LIST_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class SecretPage:
    items: list[SecretRecord]
    next_after: str | None


@dataclass(frozen=True, slots=True)
class MetadataChange:
    """A change to a secret's metadata; what it does not name stays as it is. A set is replaced
    (``purposes``) or changed by what is added and removed (``add_purposes``, ``remove_purposes``),
    not both. ``rotation_period_seconds`` is changed only with ``set_rotation_period`` (so that
    None can clear it). Validated when built: an empty change is refused."""

    sensitivity: Sensitivity | None = None
    purposes: frozenset[str] | None = None
    add_purposes: frozenset[str] = field(default_factory=frozenset)
    remove_purposes: frozenset[str] = field(default_factory=frozenset)
    destinations: frozenset[str] | None = None
    add_destinations: frozenset[str] = field(default_factory=frozenset)
    remove_destinations: frozenset[str] = field(default_factory=frozenset)
    owner: str | None = None
    rotation_period_seconds: int | None = None
    set_rotation_period: bool = False

    def __post_init__(self) -> None:
        for name in ("purposes", "destinations"):
            replaced = getattr(self, name)
            added = validate_name_set(getattr(self, f"add_{name}"), f"add_{name}")
            removed = validate_name_set(getattr(self, f"remove_{name}"), f"remove_{name}")
            object.__setattr__(self, f"add_{name}", added)
            object.__setattr__(self, f"remove_{name}", removed)
            if replaced is not None:
                object.__setattr__(self, name, validate_name_set(replaced, name))
                if added or removed:
                    raise InvalidInputError(f"replace {name} or add and remove {name}, not both", field=name)
            both = added & removed
            if both:
                raise InvalidInputError(
                    f"{sorted(both)[0]!r} is both added to and removed from {name}", field=name
                )
        if not self.audit_data():
            raise InvalidInputError("name at least one metadata field to change", field="metadata")

    def apply(self, current: SecretMetadata) -> SecretMetadata:
        """``current`` with this change applied (validated as any metadata is)."""

        def changed(
            kept: frozenset[str], replaced: frozenset[str] | None, add: Iterable[str], remove: Iterable[str]
        ) -> frozenset[str]:
            base = kept if replaced is None else replaced
            return (base | frozenset(add)) - frozenset(remove)

        return replace(
            current,
            sensitivity=current.sensitivity if self.sensitivity is None else self.sensitivity,
            purposes=changed(current.purposes, self.purposes, self.add_purposes, self.remove_purposes),
            destinations=changed(
                current.destinations, self.destinations, self.add_destinations, self.remove_destinations
            ),
            owner=current.owner if self.owner is None else self.owner,
            rotation_period_seconds=self.rotation_period_seconds
            if self.set_rotation_period
            else current.rotation_period_seconds,
        )

    def audit_data(self) -> dict[str, object]:
        """What the change names, for its audit event (metadata only: never a value)."""
        data: dict[str, object] = {}
        if self.sensitivity is not None:
            data["sensitivity"] = self.sensitivity.label
        for name in (
            "purposes",
            "add_purposes",
            "remove_purposes",
            "destinations",
            "add_destinations",
            "remove_destinations",
        ):
            value = getattr(self, name)
            if value is not None and (value or not name.startswith(("add_", "remove_"))):
                data[name] = sorted(value)
        if self.owner is not None:
            data["owner"] = self.owner
        if self.set_rotation_period:
            data["rotation_period_seconds"] = self.rotation_period_seconds
        return data


class SecretService:
    def __init__(
        self,
        storage: Storage,
        barrier: Barrier,
        keys: KeyService,
        audit: AuditLog,
        clock: Clock,
        *,
        max_value_bytes: int,
        on_delete: Callable[[Actor, str, str], Awaitable[object]] | None = None,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self._barrier = barrier
        self._keys = keys
        self._clock = clock
        self._max_value_bytes = max_value_bytes
        # Revokes the deleted secret's grants (the node passes the revocation service's).
        self.on_delete = on_delete

    def _check_unsealed(self) -> None:
        if self._barrier.sealed:
            raise SealedError("Tether is sealed: secret operations are unavailable until it is unsealed")

    def _encode(self, value: str | bytes) -> bytes:
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if not data:
            raise InvalidInputError("secret value is empty", field="value")
        if len(data) > self._max_value_bytes:
            raise InvalidInputError(value_too_large(len(data), self._max_value_bytes), field="value")
        return data

    async def put(
        self,
        actor: OperatorRecord,
        path: str,
        value: str | bytes,
        metadata: SecretMetadata,
        *,
        cas: int | None = None,
    ) -> SecretRecord:
        """Write a new version with ``metadata``. ``cas``: the version the writer expects to be
        current (0: the secret must not exist); a mismatch is a :class:`ConflictError`. Without
        ``cas``, concurrent writes each become a version: none is lost."""
        validate_path(path)
        await authorize(self._audit, actor, Permission.SECRET_WRITE, f"secret:{path}")
        if cas is not None and cas < 0:
            raise InvalidInputError("cas must be 0 or a positive version", field="cas")
        data = self._encode(value)
        self._check_unsealed()
        details: dict[str, object] = {
            "value": Sensitive(data),
            "sensitivity": metadata.sensitivity.label,
            "purposes": sorted(metadata.purposes),
            "destinations": sorted(metadata.destinations),
        }
        if cas is not None:
            details["cas"] = cas
        await self._audit.record(
            "secret.write", operator_actor(actor), resource=f"secret:{path}", data=details
        )
        return await self._audited(
            "secret.write", actor, path, self._append(actor, path, data, metadata, cas=cas, must_exist=False)
        )

    async def rotate(self, actor: OperatorRecord, path: str, value: str | bytes) -> SecretRecord:
        """A new version of an existing secret; metadata is kept."""
        validate_path(path)
        await authorize(self._audit, actor, Permission.SECRET_WRITE, f"secret:{path}")
        data = self._encode(value)
        self._check_unsealed()
        await self._audit.record(
            "secret.rotate", operator_actor(actor), resource=f"secret:{path}", data={"value": Sensitive(data)}
        )
        return await self._audited(
            "secret.rotate", actor, path, self._append(actor, path, data, None, cas=None, must_exist=True)
        )

    async def update_metadata(self, actor: OperatorRecord, path: str, change: MetadataChange) -> SecretRecord:
        """Change a secret's metadata only: no new version, the value is neither sent nor read.
        Concurrent changes each apply to the metadata as the other left it (check-and-set)."""
        validate_path(path)
        await authorize(self._audit, actor, Permission.SECRET_WRITE, f"secret:{path}")
        self._check_unsealed()
        await self._audit.record(
            "secret.update", operator_actor(actor), resource=f"secret:{path}", data=change.audit_data()
        )
        return await self._audited("secret.update", actor, path, self._replace_metadata(path, change))

    async def _replace_metadata(self, path: str, change: MetadataChange) -> SecretRecord:
        for attempt in range(_WRITE_ATTEMPTS):
            current = await self._storage.get_secret(path)
            if current is None:
                raise NotFoundError(f"secret {path!r} does not exist")
            wanted = change.apply(current.metadata)
            if wanted == current.metadata:
                return current
            record = await self._storage.replace_secret_metadata(
                path, wanted, expected=current.metadata, now=self._clock.now()
            )
            if record is not None:
                return record
            await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # noqa: S311 - jitter, not crypto
        raise ConflictError(f"secret {path!r} is being changed concurrently; try again")

    async def _audited(
        self, kind: str, actor: OperatorRecord, path: str, action: Coroutine[Any, Any, SecretRecord]
    ) -> SecretRecord:
        """Run an action whose request is already audited; audit its outcome too."""
        try:
            record = await action
        except TetherError as exc:
            await record_failure(self._audit, kind, actor, f"secret:{path}", exc)
            raise
        return record

    async def _append(
        self,
        actor: OperatorRecord,
        path: str,
        data: bytes,
        metadata: SecretMetadata | None,
        *,
        cas: int | None,
        must_exist: bool,
    ) -> SecretRecord:
        await self._keys.ensure_current()
        for attempt in range(_WRITE_ATTEMPTS):
            current = await self._storage.get_secret(path, include_deleted=True)
            live = current is not None and not current.deleted
            if must_exist and not live:
                raise NotFoundError(f"secret {path!r} does not exist")
            if cas is not None and cas != (current.current_version if live and current else 0):
                raise ConflictError(
                    f"secret {path!r} is at version {current.current_version if live and current else 0}, "
                    f"not {cas}"
                )
            expected = current.current_version if current is not None else 0
            encrypted = self._barrier.encrypt(path, expected + 1, data)
            try:
                return await self._storage.append_secret_version(
                    path,
                    encrypted,
                    expected_version=expected,
                    metadata=metadata,
                    actor=actor.name,
                    now=self._clock.now(),
                )
            except VersionConflictError:
                if cas is not None:
                    raise
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # noqa: S311 - jitter, not crypto
        raise ConflictError(f"secret {path!r} is being written concurrently; try again")

    async def show(self, actor: OperatorRecord, path: str) -> SecretRecord:
        validate_path(path)
        await authorize(self._audit, actor, Permission.SECRET_READ_METADATA, f"secret:{path}")
        self._check_unsealed()
        record = await self._storage.get_secret(path, with_versions=True)
        if record is None:
            raise NotFoundError(f"secret {path!r} does not exist")
        return record

    async def list(
        self, actor: OperatorRecord, prefix: str = "", *, after: str | None = None, limit: int = 100
    ) -> SecretPage:
        validate_prefix(prefix)
        await authorize(self._audit, actor, Permission.SECRET_READ_METADATA, f"secret:{prefix}*")
        if after is not None:
            validate_path(after)
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidInputError(f"limit must be between 1 and {MAX_LIST_LIMIT}", field="limit")
        self._check_unsealed()
        items = await self._storage.list_secrets(prefix, after=after, limit=limit + 1)
        more = len(items) > limit
        items = items[:limit]
        return SecretPage(items=items, next_after=items[-1].path if more else None)

    async def delete(self, actor: OperatorRecord, path: str) -> None:
        validate_path(path)
        await authorize(self._audit, actor, Permission.SECRET_DELETE, f"secret:{path}")
        self._check_unsealed()
        await self._audit.record("secret.delete", operator_actor(actor), resource=f"secret:{path}")
        if not await self._storage.delete_secret(path, now=self._clock.now()):
            exc = NotFoundError(f"secret {path!r} does not exist")
            await record_failure(self._audit, "secret.delete", actor, f"secret:{path}", exc)
            raise exc
        if self.on_delete is not None:
            await self.on_delete(operator_actor(actor), path, "secret deleted")

    async def read_value(self, path: str, version: int | None = None) -> tuple[int, bytes]:
        """Decrypt a live secret's value. For the broker's activation path only: callers must
        have decided, and recorded, that this use is allowed."""
        validate_path(path)
        self._check_unsealed()
        stored = await self._storage.read_secret_value(path, version)
        if stored is None:
            raise NotFoundError(f"secret {path!r} does not exist")
        return await self.decrypt_stored(stored)

    async def decrypt_stored(self, stored: StoredValue) -> tuple[int, bytes]:
        """Decrypt a value already read from the store (the activation read brings it along)."""
        self._check_unsealed()
        await self._keys.ensure_kek(stored.value.kek_version)
        return stored.version, self._barrier.decrypt(stored.path, stored.version, stored.value)
