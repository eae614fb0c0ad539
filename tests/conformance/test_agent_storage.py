"""Storage conformance for agents, their keys, replay records and trusted issuers.

Each test runs once per backend through the ``storage`` fixture (SQLite always,
PostgreSQL when ``TETHER_TEST_PG_DSN`` is set).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import RawStore
from tether.crypto.jose import generate_private_jwk
from tether.domain.agents import (
    MAX_ACTIVE_KEYS,
    AgentAttributes,
    AgentKey,
    AgentRecord,
    TrustedIssuer,
    agent_id,
)
from tether.errors import ConflictError, InvalidInputError, NotFoundError, StorageError
from tether.store._sql import JTI_SWEEP_LIMIT
from tether.store.base import Storage

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TD = "acme.test"


def new_key(at: datetime = NOW) -> AgentKey:
    private = generate_private_jwk()
    return AgentKey.from_jwk({k: v for k, v in private.items() if k not in {"d", "kid"}}, at)


def agent(name: str, *keys: AgentKey, **attrs: Any) -> AgentRecord:
    return AgentRecord(
        id=agent_id(TD, name),
        name=name,
        trust_domain=TD,
        attributes=AgentAttributes(**attrs),
        keys=keys,
        created_at=NOW,
        created_by="root",
    )


def issuer(name: str = "ci", iss: str = "https://token.ci.example", **kw: Any) -> TrustedIssuer:
    values: dict[str, Any] = {
        "name": name,
        "issuer": iss,
        "audience": "tether",
        "jwks": {
            "keys": [{**{k: v for k, v in generate_private_jwk().items() if k != "d"}, "alg": "Ed25519"}]
        },
        "subject_pattern": r"repo:acme/(?P<agent>[a-z0-9-]+)",
        "created_at": NOW,
        "created_by": "root",
    }
    values.update(kw)
    return TrustedIssuer(**values)


def jti() -> bytes:
    return hashlib.sha256(os.urandom(16)).digest()


# -- agents ------------------------------------------------------------------------------------


async def test_created_agent_reads_back_with_keys_and_attributes(storage: Storage) -> None:
    key = new_key()
    record = agent(
        "bot", key, team="platform", environment="prod", owner="alice", labels=frozenset({"a", "b"})
    )
    await storage.create_agent(record)

    by_id = await storage.get_agent(record.id)
    by_name = await storage.get_agent_by_name("bot")

    assert by_id == record
    assert by_name == record
    assert by_id is not None
    assert by_id.keys[0].jwk == key.jwk
    assert by_id.attributes.labels == frozenset({"a", "b"})


async def test_agent_without_keys_reads_back_with_none(storage: Storage) -> None:
    await storage.create_agent(agent("federated"))
    got = await storage.get_agent(agent_id(TD, "federated"))
    assert got is not None
    assert got.keys == ()


async def test_unknown_agent_is_none(storage: Storage) -> None:
    assert await storage.get_agent(agent_id(TD, "ghost")) is None
    assert await storage.get_agent_by_name("ghost") is None


async def test_duplicate_agent_name_is_a_conflict_and_changes_nothing(storage: Storage) -> None:
    first = agent("bot", new_key())
    await storage.create_agent(first)
    with pytest.raises(ConflictError):
        await storage.create_agent(agent("bot", new_key()))
    assert await storage.get_agent(first.id) == first


async def test_list_agents_pages_by_name_bytewise(storage: Storage) -> None:
    names = ["b", "a", "a-2", "a.1", "c", "a_3", "z9", "0"]
    for name in names:
        await storage.create_agent(agent(name, new_key(), new_key()))

    first = await storage.list_agents(limit=3)
    rest = await storage.list_agents(after=first[-1].name, limit=100)

    assert [a.name for a in first + rest] == sorted(names, key=str.encode)
    assert all(len(a.keys) == 2 for a in first + rest)
    assert await storage.list_agents(after="z9") == []


async def test_set_agent_disabled_once(storage: Storage) -> None:
    record = agent("bot", new_key())
    await storage.create_agent(record)
    later = NOW + timedelta(minutes=5)

    assert await storage.set_agent_disabled(record.id, later) is True
    assert await storage.set_agent_disabled(record.id, later) is False
    assert await storage.set_agent_disabled(agent_id(TD, "ghost"), later) is False
    got = await storage.get_agent(record.id)
    assert got is not None
    assert got.disabled_at == later


# -- agent keys --------------------------------------------------------------------------------


async def test_add_and_remove_keys_for_rotation(storage: Storage) -> None:
    old = new_key()
    record = agent("bot", old)
    await storage.create_agent(record)
    new = new_key(NOW + timedelta(seconds=1))

    await storage.add_agent_key(record.id, new)
    assert await storage.remove_agent_key(record.id, old.kid, NOW + timedelta(seconds=2)) is True

    got = await storage.get_agent(record.id)
    assert got is not None
    assert [k.kid for k in got.active_keys] == [new.kid]
    assert [k.kid for k in got.keys] == [old.kid, new.kid]  # removed keys stay on record
    assert got.keys[0].removed_at == NOW + timedelta(seconds=2)


async def test_add_key_refuses_a_duplicate_or_previously_removed_kid(storage: Storage) -> None:
    a, b = new_key(), new_key()
    record = agent("bot", a, b)
    await storage.create_agent(record)
    with pytest.raises(ConflictError):
        await storage.add_agent_key(record.id, a)
    await storage.remove_agent_key(record.id, a.kid, NOW)
    with pytest.raises(ConflictError):
        await storage.add_agent_key(record.id, AgentKey(a.kid, a.jwk, NOW))


async def test_add_key_refuses_past_the_active_key_limit(storage: Storage) -> None:
    keys = [new_key() for _ in range(MAX_ACTIVE_KEYS)]
    record = agent("bot", *keys)
    await storage.create_agent(record)
    with pytest.raises(ConflictError):
        await storage.add_agent_key(record.id, new_key())
    await storage.remove_agent_key(record.id, keys[0].kid, NOW)
    await storage.add_agent_key(record.id, new_key())  # a removed key frees a slot


async def test_concurrent_key_adds_never_exceed_the_limit(storage: Storage) -> None:
    record = agent("bot", new_key())
    await storage.create_agent(record)
    results = await asyncio.gather(
        *(storage.add_agent_key(record.id, new_key()) for _ in range(8)), return_exceptions=True
    )
    assert sum(r is None for r in results) == MAX_ACTIVE_KEYS - 1
    assert all(r is None or isinstance(r, ConflictError) for r in results)
    got = await storage.get_agent(record.id)
    assert got is not None
    assert len(got.active_keys) == MAX_ACTIVE_KEYS


async def test_add_key_to_unknown_agent_is_not_found(storage: Storage) -> None:
    with pytest.raises(NotFoundError):
        await storage.add_agent_key(agent_id(TD, "ghost"), new_key())


async def test_add_key_refuses_an_already_removed_key(storage: Storage) -> None:
    record = agent("bot", new_key())
    await storage.create_agent(record)
    removed = new_key()
    with pytest.raises(InvalidInputError):
        await storage.add_agent_key(record.id, AgentKey(removed.kid, removed.jwk, NOW, NOW))


async def test_last_active_key_cannot_be_removed(storage: Storage) -> None:
    only = new_key()
    record = agent("bot", only)
    await storage.create_agent(record)
    with pytest.raises(ConflictError):
        await storage.remove_agent_key(record.id, only.kid, NOW)
    got = await storage.get_agent(record.id)
    assert got is not None
    assert got.active_keys == (only,)


async def test_concurrent_removals_leave_one_active_key(storage: Storage) -> None:
    a, b = new_key(), new_key()
    record = agent("bot", a, b)
    await storage.create_agent(record)
    results = await asyncio.gather(
        storage.remove_agent_key(record.id, a.kid, NOW),
        storage.remove_agent_key(record.id, b.kid, NOW),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["ConflictError", "bool"]
    got = await storage.get_agent(record.id)
    assert got is not None
    assert len(got.active_keys) == 1


async def test_remove_unknown_or_removed_key_is_false(storage: Storage) -> None:
    a, b = new_key(), new_key()
    record = agent("bot", a, b)
    await storage.create_agent(record)
    assert await storage.remove_agent_key(record.id, "no-such-kid", NOW) is False
    assert await storage.remove_agent_key(agent_id(TD, "ghost"), a.kid, NOW) is False
    assert await storage.remove_agent_key(record.id, a.kid, NOW) is True
    assert await storage.remove_agent_key(record.id, a.kid, NOW) is False


async def test_corrupted_agent_row_is_a_storage_error(storage: Storage, raw_store: RawStore) -> None:
    from sqlalchemy import update

    from tether.store import schema as t

    record = agent("bot", new_key())
    await storage.create_agent(record)
    async with storage._engine.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(update(t.agents).values(attributes='{"team": 5}'))
    with pytest.raises(StorageError):
        await storage.get_agent(record.id)


# -- replay records ----------------------------------------------------------------------------


async def test_remember_jti_is_true_once_then_false_while_live(storage: Storage) -> None:
    key = jti()
    expires = NOW + timedelta(minutes=5)
    assert await storage.remember_jti(key, expires_at=expires, now=NOW) is True
    assert await storage.remember_jti(key, expires_at=expires, now=NOW + timedelta(minutes=4)) is False


async def test_remember_jti_replaces_an_expired_entry(storage: Storage) -> None:
    key = jti()
    assert await storage.remember_jti(key, expires_at=NOW + timedelta(minutes=1), now=NOW) is True
    later = NOW + timedelta(minutes=1)  # expiry is exclusive: at expires_at the entry is dead
    assert await storage.remember_jti(key, expires_at=later + timedelta(minutes=1), now=later) is True
    assert await storage.remember_jti(key, expires_at=later + timedelta(minutes=1), now=later) is False


async def test_remember_jti_concurrently_has_exactly_one_winner(storage: Storage) -> None:
    key = jti()
    results = await asyncio.gather(
        *(storage.remember_jti(key, expires_at=NOW + timedelta(minutes=5), now=NOW) for _ in range(10))
    )
    assert results.count(True) == 1
    assert results.count(False) == 9


async def test_remember_jti_concurrently_on_an_expired_entry_has_one_winner(storage: Storage) -> None:
    key = jti()
    await storage.remember_jti(key, expires_at=NOW + timedelta(seconds=1), now=NOW)
    later = NOW + timedelta(minutes=1)
    results = await asyncio.gather(
        *(storage.remember_jti(key, expires_at=later + timedelta(minutes=5), now=later) for _ in range(10))
    )
    assert results.count(True) == 1


async def test_remember_jti_sweeps_a_bounded_number_of_expired_entries(
    storage: Storage, raw_store: RawStore
) -> None:
    expired = JTI_SWEEP_LIMIT + 20
    for _ in range(expired):
        await storage.remember_jti(jti(), expires_at=NOW + timedelta(seconds=1), now=NOW)
    live = jti()
    await storage.remember_jti(live, expires_at=NOW + timedelta(hours=1), now=NOW)
    later = NOW + timedelta(minutes=1)

    await storage.remember_jti(jti(), expires_at=later + timedelta(minutes=5), now=later)
    rows = (await raw_store.dump())["jti_replay"]
    assert len(rows) == expired + 2 - JTI_SWEEP_LIMIT
    assert any(bytes(row[0]) == live for row in rows)

    await storage.remember_jti(jti(), expires_at=later + timedelta(minutes=5), now=later)
    assert len((await raw_store.dump())["jti_replay"]) == 3  # the live one and the two new ones


async def test_remember_jti_hashes_long_keys_and_refuses_bad_input(storage: Storage) -> None:
    long_key = b"federated\0https://issuer.example\0" + b"x" * 200
    assert await storage.remember_jti(long_key, expires_at=NOW + timedelta(minutes=1), now=NOW) is True
    assert await storage.remember_jti(long_key, expires_at=NOW + timedelta(minutes=1), now=NOW) is False
    with pytest.raises(InvalidInputError):
        await storage.remember_jti(b"", expires_at=NOW + timedelta(minutes=1), now=NOW)
    with pytest.raises(InvalidInputError):
        await storage.remember_jti(jti(), expires_at=NOW, now=NOW)


# -- trusted issuers ---------------------------------------------------------------------------


async def test_trusted_issuer_round_trips(storage: Storage) -> None:
    inline = issuer()
    by_url = issuer(
        "k8s",
        "https://k8s.example",
        jwks=None,
        jwks_url="https://k8s.example/keys",
        subject_claim="kubernetes.io/sa",
    )
    await storage.put_trusted_issuer(inline)
    await storage.put_trusted_issuer(by_url)

    assert await storage.get_trusted_issuer_by_issuer("https://token.ci.example") == inline
    assert await storage.get_trusted_issuer_by_issuer("https://k8s.example") == by_url
    assert await storage.get_trusted_issuer_by_issuer("https://other.example") is None
    assert [i.name for i in await storage.list_trusted_issuers()] == ["ci", "k8s"]


async def test_trusted_issuer_duplicate_name_or_issuer_is_a_conflict(storage: Storage) -> None:
    await storage.put_trusted_issuer(issuer())
    with pytest.raises(ConflictError):
        await storage.put_trusted_issuer(issuer("ci", "https://other.example"))
    with pytest.raises(ConflictError):
        await storage.put_trusted_issuer(issuer("other", "https://token.ci.example"))
    assert len(await storage.list_trusted_issuers()) == 1


async def test_delete_trusted_issuer(storage: Storage) -> None:
    await storage.put_trusted_issuer(issuer())
    assert await storage.delete_trusted_issuer("ci") is True
    assert await storage.delete_trusted_issuer("ci") is False
    assert await storage.get_trusted_issuer_by_issuer("https://token.ci.example") is None
