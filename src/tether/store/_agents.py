"""Agent and identity storage on SQLAlchemy; mixed into :class:`~tether.store._sql.SQLStorage`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.domain.agents import MAX_ACTIVE_KEYS, AgentAttributes, AgentKey, AgentRecord, TrustedIssuer
from tether.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    StorageError,
)
from tether.store import schema as t
from tether.store._hot import replay_record
from tether.store._sqlbase import SQLBase, from_us, to_us

__all__ = ["JTI_SWEEP_LIMIT", "AgentStore"]

#: How many expired replay records one ``remember_jti`` call deletes at most.
JTI_SWEEP_LIMIT = 100


class AgentStore(SQLBase):
    """Agents, their keys, one-time identifiers (DPoP proofs) and trusted issuers."""

    # -- agents -----------------------------------------------------------------------------
    @staticmethod
    def _agent_columns(source: Any) -> list[Any]:
        k = t.agent_keys.c
        return [
            source.id,
            source.name,
            source.trust_domain,
            source.attributes,
            source.created_at_us,
            source.created_by,
            source.disabled_at_us,
            k.kid,
            k.jwk,
            k.added_at_us,
            k.removed_at_us,
        ]

    @staticmethod
    def _agents(rows: Sequence[Any]) -> list[AgentRecord]:
        """Fold joined (agent, key) rows, grouped by agent, into records."""
        grouped: dict[str, tuple[Any, list[AgentKey]]] = {}
        try:
            for row in rows:
                _, keys = grouped.setdefault(row.id, (row, []))
                if row.kid is not None:
                    keys.append(
                        AgentKey(
                            kid=row.kid,
                            jwk=json.loads(row.jwk),
                            added_at=from_us(row.added_at_us),
                            removed_at=None if row.removed_at_us is None else from_us(row.removed_at_us),
                        )
                    )
            records = []
            for row, keys in grouped.values():
                attributes = json.loads(row.attributes)
                if not isinstance(attributes, dict):
                    raise TypeError("attributes")
                records.append(
                    AgentRecord(
                        id=row.id,
                        name=row.name,
                        trust_domain=row.trust_domain,
                        attributes=AgentAttributes(
                            team=attributes["team"],
                            environment=attributes["environment"],
                            owner=attributes["owner"],
                            labels=frozenset(attributes["labels"]),
                        ),
                        keys=tuple(keys),
                        created_at=from_us(row.created_at_us),
                        created_by=row.created_by,
                        disabled_at=None if row.disabled_at_us is None else from_us(row.disabled_at_us),
                    )
                )
        except (InvalidInputError, ValueError, TypeError, KeyError) as exc:
            raise StorageError(f"a stored agent is invalid: {type(exc).__name__}") from None
        return records

    async def _one_agent(self, condition: Any) -> AgentRecord | None:
        a, k = t.agents.c, t.agent_keys.c
        # One round trip: the agent LEFT JOIN its keys (primary-key lookups on both sides).
        query = (
            select(*self._agent_columns(a))
            .select_from(t.agents.outerjoin(t.agent_keys, k.agent_id == a.id))
            .where(condition)
            .order_by(k.added_at_us, k.kid)
        )
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(query)).all()
        records = self._agents(rows)
        return records[0] if records else None

    @staticmethod
    def _key_row(agent_id: str, key: AgentKey) -> dict[str, Any]:
        return {
            "agent_id": agent_id,
            "kid": key.kid,
            "jwk": json.dumps(dict(key.jwk), sort_keys=True),
            "added_at_us": to_us(key.added_at),
            "removed_at_us": None if key.removed_at is None else to_us(key.removed_at),
        }

    async def create_agent(self, record: AgentRecord) -> None:
        async with self._tx(
            on_duplicate=lambda: ConflictError(f"an agent named {record.name!r} already exists")
        ) as conn:
            await conn.execute(
                t.agents.insert().values(
                    id=record.id,
                    name=record.name,
                    trust_domain=record.trust_domain,
                    attributes=json.dumps(record.attributes.to_json(), sort_keys=True),
                    created_at_us=to_us(record.created_at),
                    created_by=record.created_by,
                    disabled_at_us=None if record.disabled_at is None else to_us(record.disabled_at),
                )
            )
            if record.keys:
                await conn.execute(
                    t.agent_keys.insert(), [self._key_row(record.id, key) for key in record.keys]
                )

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        return await self._one_agent(t.agents.c.id == agent_id)

    async def get_agent_by_name(self, name: str) -> AgentRecord | None:
        return await self._one_agent(t.agents.c.name == name)

    async def list_agents(self, *, after: str | None = None, limit: int = 100) -> list[AgentRecord]:
        if limit < 1:
            raise StorageError("limit must be at least 1")
        k = t.agent_keys.c
        name = t.agents.c.name.collate(self._binary_collation)
        page_query = select(t.agents).order_by(name).limit(limit)
        if after is not None:
            page_query = page_query.where(name > after)
        page = page_query.subquery()
        query = (
            select(*self._agent_columns(page.c))
            .select_from(page.outerjoin(t.agent_keys, k.agent_id == page.c.id))
            .order_by(page.c.name.collate(self._binary_collation), k.added_at_us, k.kid)
        )
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(query)).all()
        return self._agents(rows)

    async def set_agent_disabled(self, agent_id: str, now: datetime) -> bool:
        c = t.agents.c
        async with self._tx() as conn:
            result = await conn.execute(
                update(t.agents)
                .where(and_(c.id == agent_id, c.disabled_at_us.is_(None)))
                .values(disabled_at_us=to_us(now))
            )
        return bool(result.rowcount == 1)

    async def _lock_agent_keys(self, conn: AsyncConnection, agent_id: str) -> list[Any]:
        """Lock the agent's row (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises) and
        return its key rows, so that key-count rules hold under concurrent changes."""
        a, k = t.agents.c, t.agent_keys.c
        found = (await conn.execute(select(a.id).where(a.id == agent_id).with_for_update())).first()
        if found is None:
            raise NotFoundError(f"no agent {agent_id!r}")
        return list((await conn.execute(select(k.kid, k.removed_at_us).where(k.agent_id == agent_id))).all())

    async def add_agent_key(self, agent_id: str, key: AgentKey) -> None:
        if not key.active:
            raise InvalidInputError("only an active key can be added", field="public_key")
        async with self._tx(
            on_duplicate=lambda: ConflictError(f"the agent already has (or had) key {key.kid!r}")
        ) as conn:
            keys = await self._lock_agent_keys(conn, agent_id)
            if any(row.kid == key.kid for row in keys):
                raise ConflictError(f"the agent already has (or had) key {key.kid!r}")
            if sum(row.removed_at_us is None for row in keys) >= MAX_ACTIVE_KEYS:
                raise ConflictError(f"the agent already has {MAX_ACTIVE_KEYS} active keys; remove one first")
            await conn.execute(t.agent_keys.insert().values(**self._key_row(agent_id, key)))

    async def remove_agent_key(self, agent_id: str, kid: str, now: datetime) -> bool:
        k = t.agent_keys.c
        async with self._tx() as conn:
            try:
                keys = await self._lock_agent_keys(conn, agent_id)
            except NotFoundError:
                return False
            active = [row.kid for row in keys if row.removed_at_us is None]
            if kid not in active:
                return False
            if len(active) == 1:
                raise ConflictError("refusing to remove the agent's last active key; add another first")
            await conn.execute(
                update(t.agent_keys)
                .where(and_(k.agent_id == agent_id, k.kid == kid, k.removed_at_us.is_(None)))
                .values(removed_at_us=to_us(now))
            )
        return True

    async def remember_jti(self, key: bytes, *, expires_at: datetime, now: datetime) -> bool:
        key, now_us, expires_us = replay_record(key, expires_at, now)
        c = t.jti_replay.c
        try:
            async with self._tx() as conn:
                current = (
                    await conn.execute(select(c.expires_at_us).where(c.key == key))
                ).scalar_one_or_none()
                if current is not None and current > now_us:
                    return False
                replaced = False
                if current is not None:
                    result = await conn.execute(
                        update(t.jti_replay)
                        .where(and_(c.key == key, c.expires_at_us <= now_us))
                        .values(expires_at_us=expires_us)
                    )
                    replaced = result.rowcount == 1
                if not replaced:
                    # A concurrent writer of the same key makes this a primary-key violation.
                    await conn.execute(t.jti_replay.insert().values(key=key, expires_at_us=expires_us))
                # Sweep a few expired records. SKIP LOCKED (PostgreSQL; ignored by SQLite, which
                # serialises writers anyway) keeps concurrent sweepers from waiting on each other.
                stale = (
                    select(c.key)
                    .where(and_(c.expires_at_us <= now_us, c.key != key))
                    .order_by(c.expires_at_us)
                    .limit(JTI_SWEEP_LIMIT)
                    .with_for_update(skip_locked=True)
                )
                await conn.execute(
                    t.jti_replay.delete().where(and_(c.key.in_(stale), c.expires_at_us <= now_us))
                )
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                return False
            raise
        return True

    # -- trusted issuers ------------------------------------------------------------------------
    @staticmethod
    def _issuer(row: Any) -> TrustedIssuer:
        try:
            body = json.loads(row.body)
            return TrustedIssuer(
                name=row.name,
                issuer=row.issuer,
                audience=body["audience"],
                jwks=body["jwks"],
                jwks_url=body["jwks_url"],
                subject_claim=body["subject_claim"],
                subject_pattern=body["subject_pattern"],
                created_at=from_us(row.created_at_us),
                created_by=body["created_by"],
            )
        except (InvalidInputError, ValueError, TypeError, KeyError) as exc:
            raise StorageError(f"a stored trusted issuer is invalid: {type(exc).__name__}") from None

    async def put_trusted_issuer(self, issuer: TrustedIssuer) -> None:
        body = {
            "audience": issuer.audience,
            "jwks": issuer.jwks_json(),
            "jwks_url": issuer.jwks_url,
            "subject_claim": issuer.subject_claim,
            "subject_pattern": issuer.subject_pattern,
            "created_by": issuer.created_by,
        }
        async with self._tx(
            on_duplicate=lambda: ConflictError(
                f"a trusted issuer named {issuer.name!r} or for {issuer.issuer!r} already exists"
            )
        ) as conn:
            await conn.execute(
                t.trusted_issuers.insert().values(
                    name=issuer.name,
                    issuer=issuer.issuer,
                    body=json.dumps(body, sort_keys=True),
                    created_at_us=to_us(issuer.created_at),
                )
            )

    async def get_trusted_issuer_by_issuer(self, issuer: str) -> TrustedIssuer | None:
        c = t.trusted_issuers.c
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(t.trusted_issuers).where(c.issuer == issuer))).first()
        return None if row is None else self._issuer(row)

    async def list_trusted_issuers(self) -> list[TrustedIssuer]:
        c = t.trusted_issuers.c
        async with self._tx(write=False) as conn:
            rows = (
                await conn.execute(select(t.trusted_issuers).order_by(c.name.collate(self._binary_collation)))
            ).all()
        return [self._issuer(row) for row in rows]

    async def delete_trusted_issuer(self, name: str) -> bool:
        c = t.trusted_issuers.c
        async with self._tx() as conn:
            result = await conn.execute(t.trusted_issuers.delete().where(c.name == name))
        return bool(result.rowcount == 1)
