"""Secret storage on SQLAlchemy; mixed into :class:`~tether.store._sql.SQLStorage`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, update

from tether.crypto.envelope import EncryptedValue
from tether.domain.secrets import SecretMetadata, SecretRecord, SecretVersionInfo, Sensitivity
from tether.errors import (
    InvalidInputError,
    StorageError,
)
from tether.store import schema as t
from tether.store._sqlbase import SQLBase, from_us, to_us
from tether.store.base import (
    StoredValue,
    VersionConflictError,
)

__all__ = ["SecretStore"]


class SecretStore(SQLBase):
    """Secrets: metadata and encrypted versions (the store sees ciphertext only)."""

    # -- secrets ------------------------------------------------------------------------
    @staticmethod
    def _secret(row: Any, versions: tuple[SecretVersionInfo, ...] = ()) -> SecretRecord:
        try:
            return SecretStore._build_secret(row, versions)
        except (InvalidInputError, ValueError, TypeError) as exc:
            # A row that fails the domain's validation is corrupted storage, not bad input.
            raise StorageError(f"stored metadata of a secret is invalid: {type(exc).__name__}") from None

    @staticmethod
    def _build_secret(row: Any, versions: tuple[SecretVersionInfo, ...]) -> SecretRecord:
        return SecretRecord(
            path=row.path,
            metadata=SecretMetadata(
                sensitivity=Sensitivity(row.sensitivity),
                purposes=frozenset(json.loads(row.purposes)),
                destinations=frozenset(json.loads(row.destinations)),
                owner=row.owner,
                rotation_period_seconds=row.rotation_period_seconds,
            ),
            current_version=row.current_version,
            created_at=from_us(row.created_at_us),
            updated_at=from_us(row.updated_at_us),
            deleted_at=None if row.deleted_at_us is None else from_us(row.deleted_at_us),
            versions=versions,
        )

    async def get_secret(
        self, path: str, *, include_deleted: bool = False, with_versions: bool = False
    ) -> SecretRecord | None:
        async with self._tx(write=False) as conn:
            query = select(t.secrets).where(t.secrets.c.path == path)
            if not include_deleted:
                query = query.where(t.secrets.c.deleted_at_us.is_(None))
            row = (await conn.execute(query)).first()
            if row is None:
                return None
            versions: tuple[SecretVersionInfo, ...] = ()
            if with_versions:
                v = t.secret_versions.c
                rows = await conn.execute(
                    select(v.version, v.created_at_us, v.created_by, v.kek_version)
                    .where(v.path == path)
                    .order_by(v.version)
                )
                versions = tuple(
                    SecretVersionInfo(r.version, from_us(r.created_at_us), r.created_by, r.kek_version)
                    for r in rows
                )
        return self._secret(row, versions)

    async def list_secrets(
        self, prefix: str, *, include_deleted: bool = False, after: str | None = None, limit: int = 100
    ) -> list[SecretRecord]:
        c = t.secrets.c
        # Byte-wise order and comparison on every backend (PostgreSQL's default collation may
        # be linguistic; SQLite's LIKE ignores case), so pages and prefixes mean the same
        # everywhere. Paths are ASCII, so the prefix range ends at its last character + 1.
        path = c.path.collate(self._binary_collation)
        query = select(t.secrets).order_by(path).limit(limit)
        if prefix:
            upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            query = query.where(path >= prefix, path < upper)
        if after is not None:
            query = query.where(path > after)
        if not include_deleted:
            query = query.where(c.deleted_at_us.is_(None))
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(query)).all()
        return [self._secret(row) for row in rows]

    async def append_secret_version(
        self,
        path: str,
        value: EncryptedValue,
        *,
        expected_version: int,
        metadata: SecretMetadata | None,
        actor: str,
        now: datetime,
    ) -> SecretRecord:
        now_us = to_us(now)
        new_version = expected_version + 1
        meta_values: dict[str, Any] = {}
        if metadata is not None:
            meta_values = {
                "sensitivity": int(metadata.sensitivity),
                "purposes": json.dumps(sorted(metadata.purposes)),
                "destinations": json.dumps(sorted(metadata.destinations)),
                "owner": metadata.owner,
                "rotation_period_seconds": metadata.rotation_period_seconds,
            }
        async with self._tx(on_duplicate=lambda: VersionConflictError(path, expected_version, None)) as conn:
            c = t.secrets.c
            if expected_version == 0:
                if metadata is None:
                    raise StorageError("a new secret needs metadata")
                await conn.execute(
                    t.secrets.insert().values(
                        path=path,
                        current_version=1,
                        created_at_us=now_us,
                        updated_at_us=now_us,
                        deleted_at_us=None,
                        **meta_values,
                    )
                )
            else:
                result = await conn.execute(
                    update(t.secrets)
                    .where(and_(c.path == path, c.current_version == expected_version))
                    .values(
                        current_version=new_version,
                        updated_at_us=now_us,
                        deleted_at_us=None,
                        **meta_values,
                    )
                )
                if result.rowcount != 1:
                    actual = (
                        await conn.execute(select(c.current_version).where(c.path == path))
                    ).scalar_one_or_none()
                    raise VersionConflictError(path, expected_version, actual)
            await conn.execute(
                t.secret_versions.insert().values(
                    path=path,
                    version=new_version,
                    kek_version=value.kek_version,
                    wrapped_dek=value.wrapped_dek,
                    ciphertext=value.ciphertext,
                    created_at_us=now_us,
                    created_by=actor,
                )
            )
            row = (await conn.execute(select(t.secrets).where(c.path == path))).one()
        return self._secret(row)

    @staticmethod
    def _metadata_columns(metadata: SecretMetadata) -> dict[str, Any]:
        return {
            "sensitivity": int(metadata.sensitivity),
            "purposes": json.dumps(sorted(metadata.purposes)),
            "destinations": json.dumps(sorted(metadata.destinations)),
            "owner": metadata.owner,
            "rotation_period_seconds": metadata.rotation_period_seconds,
        }

    async def replace_secret_metadata(
        self, path: str, metadata: SecretMetadata, *, expected: SecretMetadata, now: datetime
    ) -> SecretRecord | None:
        c = t.secrets.c
        # The metadata columns are written in one canonical form (sorted JSON), so comparing
        # them to ``expected``'s is a check-and-set on the whole metadata.
        matches = [
            c.rotation_period_seconds.is_(None) if value is None else getattr(c, name) == value
            for name, value in self._metadata_columns(expected).items()
        ]
        async with self._tx() as conn:
            result = await conn.execute(
                update(t.secrets)
                .where(and_(c.path == path, c.deleted_at_us.is_(None), *matches))
                .values(updated_at_us=to_us(now), **self._metadata_columns(metadata))
            )
            if result.rowcount != 1:
                return None
            row = (await conn.execute(select(t.secrets).where(c.path == path))).one()
        return self._secret(row)

    async def read_secret_value(self, path: str, version: int | None = None) -> StoredValue | None:
        s, v = t.secrets.c, t.secret_versions.c
        query = (
            select(v.version, v.kek_version, v.wrapped_dek, v.ciphertext)
            .join_from(t.secret_versions, t.secrets, v.path == s.path)
            .where(and_(s.path == path, s.deleted_at_us.is_(None)))
        )
        query = query.where(v.version == (s.current_version if version is None else version))
        async with self._tx(write=False) as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return StoredValue(
            path, row.version, EncryptedValue(row.kek_version, bytes(row.wrapped_dek), bytes(row.ciphertext))
        )

    async def delete_secret(self, path: str, *, now: datetime) -> bool:
        c = t.secrets.c
        async with self._tx() as conn:
            result = await conn.execute(
                update(t.secrets)
                .where(and_(c.path == path, c.deleted_at_us.is_(None)))
                .values(deleted_at_us=to_us(now))
            )
        return bool(result.rowcount == 1)

    async def values_wrapped_below(self, kek_version: int, *, limit: int) -> list[StoredValue]:
        v = t.secret_versions.c
        async with self._tx(write=False) as conn:
            rows = await conn.execute(
                select(v.path, v.version, v.kek_version, v.wrapped_dek, v.ciphertext)
                .where(v.kek_version < kek_version)
                .order_by(v.path, v.version)
                .limit(limit)
            )
            return [
                StoredValue(
                    r.path,
                    r.version,
                    EncryptedValue(r.kek_version, bytes(r.wrapped_dek), bytes(r.ciphertext)),
                )
                for r in rows
            ]

    async def replace_wrapped_keys(self, updates: Sequence[tuple[StoredValue, EncryptedValue]]) -> int:
        v = t.secret_versions.c
        changed = 0
        async with self._tx() as conn:
            for old, new in updates:
                if new.ciphertext != old.value.ciphertext:
                    raise StorageError("rewrap must not change a value's ciphertext")
                result = await conn.execute(
                    update(t.secret_versions)
                    .where(
                        and_(
                            v.path == old.path,
                            v.version == old.version,
                            v.kek_version == old.value.kek_version,
                            v.wrapped_dek == old.value.wrapped_dek,
                        )
                    )
                    .values(kek_version=new.kek_version, wrapped_dek=new.wrapped_dek)
                )
                changed += result.rowcount
        return changed
