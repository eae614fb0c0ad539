"""Storage conformance for policy sets: versions, the active version, rollback.

Each test runs once per backend through the ``storage`` fixture (SQLite always,
PostgreSQL when ``TETHER_TEST_PG_DSN`` is set).
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from tether.errors import ConflictError, NotFoundError
from tether.store.base import PolicySetRecord, Storage

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def _put(
    storage: Storage, text: str, expected: int | None, *, ids: tuple[str, ...] = ("p",), at: datetime = NOW
) -> PolicySetRecord:
    return await storage.put_policy_set(
        text, _sha(text), ids, "root", at, comment=f"deploy {text}", expected_active=expected
    )


async def test_empty_store_has_no_policy_set(storage: Storage) -> None:
    assert await storage.active_policy_set() is None
    assert await storage.active_policy_version() is None
    assert await storage.get_policy_set(1) is None
    assert await storage.list_policy_sets() == []


async def test_put_creates_versions_and_activates(storage: Storage) -> None:
    first = await _put(storage, "a", None, ids=("allow-all", "deny-x"))
    assert first.version == 1
    assert first.policy_ids == ("allow-all", "deny-x")
    assert first.sha256 == _sha("a")
    assert first.created_at == NOW
    assert first.created_by == "root"
    assert first.comment == "deploy a"
    assert await storage.get_policy_set(1) == first
    assert await storage.active_policy_set() == first
    second = await _put(storage, "b", 1, at=NOW + timedelta(seconds=1))
    assert second.version == 2
    assert await storage.active_policy_version() == 2
    assert await storage.active_policy_set() == second
    assert await storage.get_policy_set(1) == first  # immutable


async def test_put_refuses_a_stale_expected_active(storage: Storage) -> None:
    await _put(storage, "a", None)
    with pytest.raises(ConflictError):
        await _put(storage, "b", None)
    await _put(storage, "b", 1)
    with pytest.raises(ConflictError):
        await _put(storage, "c", 1)
    assert [r.version for r in await storage.list_policy_sets()] == [2, 1]
    assert await storage.active_policy_version() == 2


async def test_concurrent_deploys_one_wins(storage: Storage) -> None:
    await _put(storage, "base", None)
    results = await asyncio.gather(*(_put(storage, f"t{i}", 1) for i in range(5)), return_exceptions=True)
    won = [r for r in results if isinstance(r, PolicySetRecord)]
    assert len(won) == 1
    assert all(isinstance(r, ConflictError) for r in results if not isinstance(r, PolicySetRecord))
    assert await storage.active_policy_version() == won[0].version == 2


async def test_list_newest_first_and_pages(storage: Storage) -> None:
    expected: int | None = None
    for i in range(5):
        expected = (await _put(storage, f"v{i}", expected)).version
    page = await storage.list_policy_sets(limit=2)
    assert [r.version for r in page] == [5, 4]
    page = await storage.list_policy_sets(limit=2, after=4)
    assert [r.version for r in page] == [3, 2]
    page = await storage.list_policy_sets(limit=10, after=2)
    assert [r.version for r in page] == [1]


async def test_rollback_activates_an_old_version(storage: Storage) -> None:
    await _put(storage, "a", None)
    await _put(storage, "b", 1)
    await storage.activate_policy_version(1, expected_active=2)
    active = await storage.active_policy_set()
    assert active is not None
    assert active.version == 1
    assert active.text == "a"
    # A deploy after a rollback takes the next number, never reuses one.
    third = await _put(storage, "c", 1)
    assert third.version == 3


async def test_rollback_refusals(storage: Storage) -> None:
    await _put(storage, "a", None)
    with pytest.raises(NotFoundError):
        await storage.activate_policy_version(7, expected_active=1)
    with pytest.raises(ConflictError):
        await storage.activate_policy_version(1, expected_active=3)
    assert await storage.active_policy_version() == 1


async def test_policy_text_round_trips_exactly(storage: Storage) -> None:
    text = '@id("x")\npermit(principal, action == Action::"open_task", resource);\n// ünïcode ✓\n'
    record = await _put(storage, text, None)
    fetched = await storage.get_policy_set(record.version)
    assert fetched is not None
    assert fetched.text == text
