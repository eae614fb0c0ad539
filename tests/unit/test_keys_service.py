"""The keyring's life on a real SQLite store: ``tether.broker.keys.KeyService``."""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tether.audit import AuditKeys, AuditLog
from tether.broker.keys import KEYRING_META, KeyService
from tether.broker.secrets import SecretService
from tether.clock import FrozenClock
from tether.crypto.barrier import Barrier
from tether.crypto.keyprovider import EnvKeyProvider
from tether.crypto.keyring import decode_keyring
from tether.domain.operators import OperatorRecord, Role
from tether.domain.secrets import SecretMetadata
from tether.errors import CryptoError, DecryptionError, KeyProviderError, NotFoundError, SealedError
from tether.store._sql import SQLStorage
from tether.store.sqlite import open_sqlite

ADMIN = OperatorRecord(
    id="op_0000000000000001",
    name="root",
    role=Role.ADMIN,
    token_hash=b"\0" * 32,
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
    created_by="test",
)
META = SecretMetadata()


def provider(root_key: bytes) -> EnvKeyProvider:
    return EnvKeyProvider(environ={"TETHER_ROOT_KEY": base64.b64encode(root_key).decode()})


@dataclass
class Node:
    """One Tether node's key and secret services on a store."""

    storage: SQLStorage
    barrier: Barrier
    keys: KeyService
    secrets: SecretService


def node(storage: SQLStorage, root_key: bytes, clock: FrozenClock) -> Node:
    barrier = Barrier()
    keys = KeyService(storage, barrier, provider(root_key), clock)
    audit = AuditLog(storage, node_id="node-test", clock=clock, keys=AuditKeys.generate(clock.now()))
    return Node(
        storage, barrier, keys, SecretService(storage, barrier, keys, audit, clock, max_value_bytes=4096)
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tether.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLStorage]:
    storage = open_sqlite(db_path)
    try:
        await storage.migrate()
        yield storage
    finally:
        await storage.close()


@pytest.fixture
async def other_store(db_path: Path, store: SQLStorage) -> AsyncIterator[SQLStorage]:
    """A second connection pool on the same database file: another node."""
    storage = open_sqlite(db_path)
    try:
        yield storage
    finally:
        await storage.close()


@pytest.fixture
def root_key() -> bytes:
    return os.urandom(32)


# -- initialise and unseal ---------------------------------------------------------------------


async def test_initialize_creates_the_keyring_and_unseals(
    store: SQLStorage, root_key: bytes, clock: FrozenClock
) -> None:
    a = node(store, root_key, clock)
    assert not await a.keys.initialized()
    assert a.keys.sealed

    assert await a.keys.initialize() is True

    assert await a.keys.initialized()
    assert not a.keys.sealed
    blob = await store.get_meta(KEYRING_META)
    assert blob is not None
    assert decode_keyring(blob, root_key) == a.barrier.keyring


async def test_initialize_on_an_initialised_store_reopens_the_same_keyring(
    store: SQLStorage, root_key: bytes, clock: FrozenClock
) -> None:
    a = node(store, root_key, clock)
    await a.keys.initialize()
    await a.secrets.put(ADMIN, "prod/db", "hunter2", META)
    blob = await store.get_meta(KEYRING_META)

    b = node(store, root_key, clock)
    assert await b.keys.initialize() is False

    assert b.barrier.keyring == a.barrier.keyring
    assert await store.get_meta(KEYRING_META) == blob
    assert await b.secrets.read_value("prod/db") == (1, b"hunter2")


async def test_initialize_with_the_wrong_root_key_fails_and_keeps_the_keyring(
    store: SQLStorage, root_key: bytes, clock: FrozenClock
) -> None:
    await node(store, root_key, clock).keys.initialize()
    blob = await store.get_meta(KEYRING_META)

    wrong = node(store, os.urandom(32), clock)
    with pytest.raises(DecryptionError):
        await wrong.keys.initialize()

    assert wrong.keys.sealed
    assert await store.get_meta(KEYRING_META) == blob


async def test_initialize_without_a_root_key_creates_nothing(store: SQLStorage, clock: FrozenClock) -> None:
    keys = KeyService(store, Barrier(), EnvKeyProvider(environ={}), clock)
    with pytest.raises(KeyProviderError):
        await keys.initialize()
    assert await store.get_meta(KEYRING_META) is None


async def test_unseal_with_the_wrong_root_key_stays_sealed(
    store: SQLStorage, root_key: bytes, clock: FrozenClock
) -> None:
    a = node(store, root_key, clock)
    await a.keys.initialize()
    a.keys.seal()
    with pytest.raises(DecryptionError):
        await a.keys.unseal(os.urandom(32))
    assert a.keys.sealed
    await a.keys.unseal(root_key)
    assert not a.keys.sealed


async def test_unseal_of_a_store_without_keyring_fails(
    store: SQLStorage, root_key: bytes, clock: FrozenClock
) -> None:
    with pytest.raises(CryptoError, match="no keyring"):
        await node(store, root_key, clock).keys.unseal()


async def test_concurrent_initialisation_by_two_nodes_yields_one_keyring(
    store: SQLStorage, other_store: SQLStorage, root_key: bytes, clock: FrozenClock
) -> None:
    a, b = node(store, root_key, clock), node(other_store, root_key, clock)
    created = await asyncio.gather(a.keys.initialize(), b.keys.initialize())
    assert sorted(created) == [False, True]
    assert a.barrier.keyring == b.barrier.keyring


# -- seal -------------------------------------------------------------------------------------


async def test_sealed_node_refuses_to_read_write_or_rotate(
    store: SQLStorage, root_key: bytes, clock: FrozenClock
) -> None:
    a = node(store, root_key, clock)
    await a.keys.initialize()
    await a.secrets.put(ADMIN, "prod/db", "hunter2", META)

    a.keys.seal()

    assert a.keys.sealed
    with pytest.raises(SealedError):
        await a.secrets.read_value("prod/db")
    with pytest.raises(SealedError):
        await a.secrets.put(ADMIN, "prod/db", "new", META)
    with pytest.raises(SealedError):
        await a.keys.rotate()
    with pytest.raises(SealedError):
        await a.keys.refresh()

    await a.keys.unseal()
    assert await a.secrets.read_value("prod/db") == (1, b"hunter2")


# -- rotate and rewrap -----------------------------------------------------------------------


async def seed(n: Node) -> dict[tuple[str, int], bytes]:
    """Write a few secrets, one with two versions and one deleted; return every (path, version)."""
    written: dict[tuple[str, int], bytes] = {}
    for path, values in {"prod/db": ["v1", "v2"], "prod/api": ["key"], "dev/gone": ["old"]}.items():
        for value in values:
            record = await n.secrets.put(ADMIN, path, value, META)
            written[(path, record.current_version)] = value.encode()
    await n.secrets.delete(ADMIN, "dev/gone")
    return written


async def test_rotate_adds_a_kek_version_and_rewraps_every_stored_value(
    store: SQLStorage, root_key: bytes, clock: FrozenClock
) -> None:
    a = node(store, root_key, clock)
    await a.keys.initialize()
    written = await seed(a)
    before = await store.values_wrapped_below(2, limit=100)
    progress: list[int] = []

    result = await a.keys.rotate(progress.append)

    assert result.kek_version == 2
    assert result.rewrapped == len(written) == 4  # including the deleted secret's version
    assert progress == [4]
    assert a.barrier.keyring.active.version == 2
    stored_keyring = await store.get_meta(KEYRING_META)
    assert stored_keyring is not None
    assert [k.version for k in decode_keyring(stored_keyring, root_key).keks] == [1, 2]
    assert await store.values_wrapped_below(2, limit=100) == []
    for old in before:
        after = await store.values_wrapped_below(3, limit=100)
        [new] = [s for s in after if (s.path, s.version) == (old.path, old.version)]
        assert new.value.kek_version == 2
        assert new.value.ciphertext == old.value.ciphertext
        assert new.value.wrapped_dek != old.value.wrapped_dek
    for (path, version), plaintext in written.items():
        if path != "dev/gone":
            assert await a.secrets.read_value(path, version) == (version, plaintext)


async def test_deleted_secret_revived_after_rotation_still_decrypts(
    store: SQLStorage, root_key: bytes, clock: FrozenClock
) -> None:
    a = node(store, root_key, clock)
    await a.keys.initialize()
    await seed(a)
    await a.keys.rotate()

    await a.secrets.put(ADMIN, "dev/gone", "back", META)

    assert await a.secrets.read_value("dev/gone", 1) == (1, b"old")
    assert await a.secrets.read_value("dev/gone") == (2, b"back")


async def test_values_written_after_rotation_use_the_new_kek(
    store: SQLStorage, root_key: bytes, clock: FrozenClock
) -> None:
    a = node(store, root_key, clock)
    await a.keys.initialize()
    await a.keys.rotate()
    await a.keys.rotate()
    await a.secrets.put(ADMIN, "prod/db", "fresh", META)
    stored = await store.read_secret_value("prod/db")
    assert stored is not None
    assert stored.value.kek_version == 3
    assert await a.secrets.read_value("prod/db") == (1, b"fresh")


async def test_rotation_of_an_empty_store_rewraps_nothing(
    store: SQLStorage, root_key: bytes, clock: FrozenClock
) -> None:
    a = node(store, root_key, clock)
    await a.keys.initialize()
    result = await a.keys.rotate()
    assert (result.kek_version, result.rewrapped) == (2, 0)


# -- several nodes on one store ---------------------------------------------------------------


async def test_stale_node_decrypts_values_written_after_another_node_rotated(
    store: SQLStorage, other_store: SQLStorage, root_key: bytes, clock: FrozenClock
) -> None:
    a, b = node(store, root_key, clock), node(other_store, root_key, clock)
    await a.keys.initialize()
    await b.keys.initialize()
    written = await seed(a)

    await a.keys.rotate()
    await a.secrets.put(ADMIN, "prod/new", "after-rotation", META)

    assert b.barrier.keyring.active.version == 1  # b has not heard of the rotation
    assert await b.secrets.read_value("prod/new") == (1, b"after-rotation")
    assert b.barrier.keyring.active.version == 2  # ensure_kek reloaded the keyring once
    assert await b.secrets.read_value("prod/db", 1) == (1, written[("prod/db", 1)])


async def test_ensure_kek_reloads_only_for_an_unknown_version(
    store: SQLStorage, other_store: SQLStorage, root_key: bytes, clock: FrozenClock
) -> None:
    a, b = node(store, root_key, clock), node(other_store, root_key, clock)
    await a.keys.initialize()
    await b.keys.initialize()
    before = b.barrier.keyring

    await b.keys.ensure_kek(1)
    assert b.barrier.keyring is before

    await a.keys.rotate()
    await b.keys.ensure_kek(2)
    assert b.barrier.has_kek(2)


async def test_concurrent_rotations_on_two_nodes_both_land_and_lose_no_value(
    store: SQLStorage, other_store: SQLStorage, root_key: bytes, clock: FrozenClock
) -> None:
    a, b = node(store, root_key, clock), node(other_store, root_key, clock)
    await a.keys.initialize()
    await b.keys.initialize()
    written = await seed(a)

    results = await asyncio.gather(a.keys.rotate(), b.keys.rotate())

    assert sorted(r.kek_version for r in results) == [2, 3]
    blob = await store.get_meta(KEYRING_META)
    assert blob is not None
    assert [k.version for k in decode_keyring(blob, root_key).keks] == [1, 2, 3]
    assert await store.values_wrapped_below(2, limit=100) == []
    for n in (a, b):
        for (path, version), plaintext in written.items():
            if path != "dev/gone":
                assert await n.secrets.read_value(path, version) == (version, plaintext)


async def test_read_value_of_absent_or_deleted_secret_is_not_found(
    store: SQLStorage, root_key: bytes, clock: FrozenClock
) -> None:
    a = node(store, root_key, clock)
    await a.keys.initialize()
    await seed(a)
    with pytest.raises(NotFoundError):
        await a.secrets.read_value("prod/absent")
    with pytest.raises(NotFoundError):
        await a.secrets.read_value("dev/gone")
    with pytest.raises(NotFoundError):
        await a.secrets.read_value("prod/db", 3)


async def test_store_that_swaps_a_value_between_versions_is_detected(
    store: SQLStorage, db_path: Path, root_key: bytes, clock: FrozenClock
) -> None:
    a = node(store, root_key, clock)
    await a.keys.initialize()
    await a.secrets.put(ADMIN, "prod/db", "v1-old", META)
    await a.secrets.put(ADMIN, "prod/db", "v2-new", META)

    # A malicious or broken store rolls version 2 back to version 1's bytes.
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "UPDATE secret_versions SET (kek_version, wrapped_dek, ciphertext) = ("
            "SELECT kek_version, wrapped_dek, ciphertext FROM secret_versions WHERE path = ? AND version = 1"
            ") WHERE path = ? AND version = 2",
            ("prod/db", "prod/db"),
        )
    conn.close()

    with pytest.raises(DecryptionError):
        await a.secrets.read_value("prod/db")
    assert await a.secrets.read_value("prod/db", 1) == (1, b"v1-old")
