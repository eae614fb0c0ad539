"""Storage conformance for destinations.

Each test runs once per backend through the ``storage`` fixture (SQLite always,
PostgreSQL when ``TETHER_TEST_PG_DSN`` is set).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import update

from tests.conftest import RawStore
from tether.domain.destinations import Destination, Injection, InjectionType
from tether.errors import ConflictError, StorageError
from tether.store import schema as t
from tether.store.base import Storage

NOW = datetime(2026, 1, 1, 12, 30, 15, 123456, tzinfo=UTC)


def destination(name: str = "github", **kw: Any) -> Destination:
    values: dict[str, Any] = {
        "name": name,
        "base_url": "https://api.github.com",
        "secret": "prod/github/token",
        "inject": Injection(InjectionType.HEADER, "Authorization", "Bearer {secret}"),
        "created_at": NOW,
        "created_by": "alice",
    }
    values.update(kw)
    return Destination(**values)


async def test_destination_round_trips_with_every_field(storage: Storage) -> None:
    full = destination(
        "pagerduty",
        base_url="https://api.pagerduty.com:8443/v2",
        secret="prod/pagerduty/key",
        inject=Injection(InjectionType.QUERY, "api_key", "{secret}"),
        methods=frozenset({"GET", "POST"}),
        path_prefixes=("/incidents", "/services/"),
        timeout_seconds=5,
        max_body_bytes=2048,
        max_response_bytes=4096,
    )
    basic = destination("jira", inject=Injection(InjectionType.BASIC, "bot@acme.test"))
    await storage.put_destination(full)
    await storage.put_destination(basic)

    assert await storage.get_destination("pagerduty") == full
    assert await storage.get_destination("jira") == basic
    assert await storage.get_destination("nope") is None


async def test_destination_name_taken_is_a_conflict_and_the_first_stays(storage: Storage) -> None:
    first = destination()
    await storage.put_destination(first)
    with pytest.raises(ConflictError):
        await storage.put_destination(destination(base_url="https://evil.example"))
    assert await storage.get_destination("github") == first
    assert len(await storage.list_destinations()) == 1


async def test_list_destinations_is_in_byte_order_of_names(storage: Storage) -> None:
    for name in ("b", "a-2", "a.1", "a_3", "0z", "a"):
        await storage.put_destination(destination(name))
    names = [d.name for d in await storage.list_destinations()]
    assert names == sorted(names, key=lambda n: n.encode())
    assert names == ["0z", "a", "a-2", "a.1", "a_3", "b"]


async def test_list_destinations_is_empty_on_a_fresh_store(storage: Storage) -> None:
    assert await storage.list_destinations() == []


async def test_delete_destination_says_whether_it_deleted(storage: Storage) -> None:
    await storage.put_destination(destination())
    assert await storage.delete_destination("github") is True
    assert await storage.delete_destination("github") is False
    assert await storage.get_destination("github") is None
    await storage.put_destination(destination())  # the name is free again
    assert await storage.get_destination("github") is not None


async def test_concurrent_puts_of_one_name_store_exactly_one(storage: Storage) -> None:
    candidates = [destination(base_url=f"https://h{i}.example") for i in range(5)]
    results = await asyncio.gather(*(storage.put_destination(d) for d in candidates), return_exceptions=True)
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, ConflictError) for r in results if r is not None)
    stored = await storage.get_destination("github")
    assert stored in candidates


async def test_stored_destination_row_holds_no_secret_value_only_the_path(
    storage: Storage, raw_store: RawStore
) -> None:
    await storage.put_destination(destination())
    rows = (await raw_store.dump())["destinations"]
    assert len(rows) == 1
    name, base_url, secret, body, _created = rows[0]
    assert (name, base_url, secret) == ("github", "https://api.github.com/", "prod/github/token")
    assert json.loads(body)["inject"] == {
        "type": "header",
        "name": "Authorization",
        "template": "Bearer {secret}",
    }


async def test_a_tampered_destination_row_is_refused_not_forwarded_to(
    storage: Storage, raw_store: RawStore
) -> None:
    """A row whose base URL was changed to plain http to a remote host fails validation on read."""
    await storage.put_destination(destination())
    engine = storage._engine  # type: ignore[attr-defined]
    async with engine.begin() as conn:
        await conn.execute(update(t.destinations).values(base_url="http://evil.example/"))
    with pytest.raises(StorageError, match="stored destination is invalid"):
        await storage.get_destination("github")
    with pytest.raises(StorageError):
        await storage.list_destinations()
