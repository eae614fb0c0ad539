"""One suite that every :class:`~tether.store.base.Storage` implementation passes.

Each test runs once per backend through the ``storage`` fixture (SQLite always,
PostgreSQL when ``TETHER_TEST_PG_DSN`` is set).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import RawStore, drop_pg_schema
from tether.clock import FrozenClock
from tether.crypto.barrier import Barrier
from tether.crypto.envelope import EncryptedValue
from tether.crypto.keyring import encode_keyring
from tether.domain.operators import OperatorRecord, Role
from tether.domain.secrets import SecretMetadata, Sensitivity
from tether.errors import ConfigError, ConflictError, StorageError, StorageUnavailableError
from tether.identity.operators import hash_token, new_operator_id, new_token
from tether.store import open_storage
from tether.store.base import Storage, StoredValue, VersionConflictError
from tether.store.postgres import open_postgres
from tether.store.sqlite import open_sqlite

META = SecretMetadata(
    sensitivity=Sensitivity.CONFIDENTIAL,
    purposes=frozenset({"deploy", "incident"}),
    destinations=frozenset({"github"}),
    owner="team-platform",
    rotation_period_seconds=86_400,
)


def fake_value(kek_version: int = 1) -> EncryptedValue:
    """Opaque bytes: storage never decrypts, so it cannot tell these from real ciphertext."""
    return EncryptedValue(kek_version, os.urandom(60), os.urandom(48))


async def create(
    storage: Storage, path: str, now: datetime, metadata: SecretMetadata = META
) -> EncryptedValue:
    value = fake_value()
    await storage.append_secret_version(
        path, value, expected_version=0, metadata=metadata, actor="alice", now=now
    )
    return value


def operator(name: str, created_at: datetime, role: Role = Role.SECRET_WRITER) -> OperatorRecord:
    return OperatorRecord(
        id=new_operator_id(),
        name=name,
        role=role,
        token_hash=hash_token(new_token()),
        created_at=created_at,
        created_by="root",
    )


# -- migrate and ping ------------------------------------------------------------------------


async def test_migrate_is_idempotent_and_keeps_data(storage: Storage, clock: FrozenClock) -> None:
    await storage.put_meta("k", b"v", expected=None)
    await create(storage, "prod/db", clock.now())

    await storage.migrate()
    await storage.migrate()

    assert await storage.get_meta("k") == b"v"
    record = await storage.get_secret("prod/db")
    assert record is not None
    assert record.current_version == 1


async def test_ping_answers_on_a_working_store(storage: Storage) -> None:
    await storage.ping()


# -- meta --------------------------------------------------------------------------------------


async def test_get_meta_of_absent_key_is_none(storage: Storage) -> None:
    assert await storage.get_meta("absent") is None


async def test_put_meta_creates_and_round_trips_arbitrary_bytes(storage: Storage) -> None:
    blob = bytes(range(256)) * 4
    await storage.put_meta("keyring", blob, expected=None)
    assert await storage.get_meta("keyring") == blob


async def test_put_meta_expecting_absent_on_existing_key_conflicts(storage: Storage) -> None:
    await storage.put_meta("keyring", b"first", expected=None)
    with pytest.raises(ConflictError):
        await storage.put_meta("keyring", b"second", expected=None)
    assert await storage.get_meta("keyring") == b"first"


async def test_put_meta_with_matching_expected_replaces_value(storage: Storage) -> None:
    await storage.put_meta("keyring", b"first", expected=None)
    await storage.put_meta("keyring", b"second", expected=b"first")
    assert await storage.get_meta("keyring") == b"second"


async def test_put_meta_with_wrong_expected_conflicts(storage: Storage) -> None:
    await storage.put_meta("keyring", b"first", expected=None)
    with pytest.raises(ConflictError):
        await storage.put_meta("keyring", b"second", expected=b"stale")
    assert await storage.get_meta("keyring") == b"first"


async def test_put_meta_with_expected_on_absent_key_conflicts(storage: Storage) -> None:
    with pytest.raises(ConflictError):
        await storage.put_meta("keyring", b"value", expected=b"something")
    assert await storage.get_meta("keyring") is None


async def test_meta_keys_are_independent(storage: Storage) -> None:
    await storage.put_meta("a", b"1", expected=None)
    await storage.put_meta("b", b"2", expected=None)
    await storage.put_meta("a", b"3", expected=b"1")
    assert await storage.get_meta("a") == b"3"
    assert await storage.get_meta("b") == b"2"


async def test_concurrent_compare_and_set_on_meta_has_exactly_one_winner(storage: Storage) -> None:
    await storage.put_meta("keyring", b"v0", expected=None)
    candidates = [f"v1-{i}".encode() for i in range(6)]
    results = await asyncio.gather(
        *(storage.put_meta("keyring", c, expected=b"v0") for c in candidates), return_exceptions=True
    )
    winners = [c for c, r in zip(candidates, results, strict=True) if r is None]
    assert len(winners) == 1
    assert all(isinstance(r, ConflictError) for r in results if r is not None)
    assert await storage.get_meta("keyring") == winners[0]


async def test_concurrent_creates_of_one_meta_key_have_exactly_one_winner(storage: Storage) -> None:
    candidates = [f"v-{i}".encode() for i in range(6)]
    results = await asyncio.gather(
        *(storage.put_meta("keyring", c, expected=None) for c in candidates), return_exceptions=True
    )
    winners = [c for c, r in zip(candidates, results, strict=True) if r is None]
    assert len(winners) == 1
    assert all(isinstance(r, ConflictError) for r in results if r is not None)
    assert await storage.get_meta("keyring") == winners[0]


# -- append_secret_version -----------------------------------------------------------------


async def test_append_with_expected_zero_creates_version_one(storage: Storage, clock: FrozenClock) -> None:
    now = clock.now().replace(microsecond=123_457)
    record = await storage.append_secret_version(
        "prod/db/password", fake_value(), expected_version=0, metadata=META, actor="alice", now=now
    )
    assert record.path == "prod/db/password"
    assert record.current_version == 1
    assert record.metadata == META
    assert record.created_at == now
    assert record.updated_at == now
    assert record.deleted_at is None
    assert await storage.get_secret("prod/db/password") == record


async def test_append_adds_next_version_and_moves_updated_at(storage: Storage, clock: FrozenClock) -> None:
    created = clock.now()
    await create(storage, "prod/db", created)
    later = clock.advance(60)
    record = await storage.append_secret_version(
        "prod/db", fake_value(), expected_version=1, metadata=None, actor="bob", now=later
    )
    assert record.current_version == 2
    assert record.created_at == created
    assert record.updated_at == later


async def test_append_with_stale_expected_version_raises_version_conflict(
    storage: Storage, clock: FrozenClock
) -> None:
    await create(storage, "prod/db", clock.now())
    await storage.append_secret_version(
        "prod/db", fake_value(), expected_version=1, metadata=None, actor="alice", now=clock.now()
    )
    with pytest.raises(VersionConflictError) as caught:
        await storage.append_secret_version(
            "prod/db", fake_value(), expected_version=1, metadata=None, actor="bob", now=clock.now()
        )
    assert caught.value.expected == 1
    assert caught.value.actual == 2
    record = await storage.get_secret("prod/db", with_versions=True)
    assert record is not None
    assert [v.version for v in record.versions] == [1, 2]


async def test_append_with_expected_version_ahead_of_current_conflicts(
    storage: Storage, clock: FrozenClock
) -> None:
    await create(storage, "prod/db", clock.now())
    with pytest.raises(VersionConflictError):
        await storage.append_secret_version(
            "prod/db", fake_value(), expected_version=5, metadata=None, actor="bob", now=clock.now()
        )
    assert await storage.read_secret_value("prod/db", 6) is None


async def test_append_with_nonzero_expected_on_absent_secret_conflicts(
    storage: Storage, clock: FrozenClock
) -> None:
    with pytest.raises(VersionConflictError) as caught:
        await storage.append_secret_version(
            "prod/none", fake_value(), expected_version=1, metadata=META, actor="bob", now=clock.now()
        )
    assert caught.value.actual is None
    assert await storage.get_secret("prod/none", include_deleted=True) is None


async def test_create_of_existing_secret_conflicts_and_keeps_original(
    storage: Storage, clock: FrozenClock
) -> None:
    original = await create(storage, "prod/db", clock.now())
    with pytest.raises(VersionConflictError):
        await storage.append_secret_version(
            "prod/db", fake_value(), expected_version=0, metadata=META, actor="bob", now=clock.now()
        )
    stored = await storage.read_secret_value("prod/db")
    assert stored is not None
    assert stored.value == original


async def test_create_without_metadata_is_refused(storage: Storage, clock: FrozenClock) -> None:
    with pytest.raises(StorageError):
        await storage.append_secret_version(
            "prod/db", fake_value(), expected_version=0, metadata=None, actor="bob", now=clock.now()
        )
    assert await storage.get_secret("prod/db", include_deleted=True) is None


async def test_append_without_metadata_keeps_current_metadata(storage: Storage, clock: FrozenClock) -> None:
    await create(storage, "prod/db", clock.now())
    record = await storage.append_secret_version(
        "prod/db", fake_value(), expected_version=1, metadata=None, actor="bob", now=clock.now()
    )
    assert record.metadata == META


async def test_append_with_metadata_replaces_it(storage: Storage, clock: FrozenClock) -> None:
    await create(storage, "prod/db", clock.now())
    replacement = SecretMetadata(sensitivity=Sensitivity.RESTRICTED, purposes=frozenset({"incident"}))
    record = await storage.append_secret_version(
        "prod/db", fake_value(), expected_version=1, metadata=replacement, actor="bob", now=clock.now()
    )
    assert record.metadata == replacement
    fetched = await storage.get_secret("prod/db")
    assert fetched is not None
    assert fetched.metadata == replacement


async def test_concurrent_appends_at_same_expected_version_have_exactly_one_winner(
    storage: Storage, clock: FrozenClock
) -> None:
    await create(storage, "prod/db", clock.now())
    values = [fake_value() for _ in range(8)]
    results = await asyncio.gather(
        *(
            storage.append_secret_version(
                "prod/db", v, expected_version=1, metadata=None, actor=f"w{i}", now=clock.now()
            )
            for i, v in enumerate(values)
        ),
        return_exceptions=True,
    )
    winners = [v for v, r in zip(values, results, strict=True) if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert len(losers) == 7
    assert all(isinstance(r, VersionConflictError) for r in losers)
    stored = await storage.read_secret_value("prod/db")
    assert stored is not None
    assert (stored.version, stored.value) == (2, winners[0])
    record = await storage.get_secret("prod/db", with_versions=True)
    assert record is not None
    assert [v.version for v in record.versions] == [1, 2]


async def test_concurrent_creates_of_one_path_have_exactly_one_winner(
    storage: Storage, clock: FrozenClock
) -> None:
    values = [fake_value() for _ in range(8)]
    results = await asyncio.gather(
        *(
            storage.append_secret_version(
                "prod/new", v, expected_version=0, metadata=META, actor="w", now=clock.now()
            )
            for v in values
        ),
        return_exceptions=True,
    )
    winners = [v for v, r in zip(values, results, strict=True) if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, VersionConflictError) for r in results if isinstance(r, BaseException))
    stored = await storage.read_secret_value("prod/new")
    assert stored is not None
    assert (stored.version, stored.value) == (1, winners[0])


async def test_concurrent_writers_that_retry_lose_no_version(storage: Storage, clock: FrozenClock) -> None:
    await create(storage, "prod/db", clock.now())
    writers = 8

    async def write(value: EncryptedValue) -> int:
        for _ in range(50):
            current = await storage.get_secret("prod/db")
            assert current is not None
            try:
                record = await storage.append_secret_version(
                    "prod/db",
                    value,
                    expected_version=current.current_version,
                    metadata=None,
                    actor="w",
                    now=clock.now(),
                )
            except VersionConflictError:
                continue
            return record.current_version
        raise AssertionError("writer starved")

    values = [fake_value() for _ in range(writers)]
    versions = await asyncio.gather(*(write(v) for v in values))

    assert sorted(versions) == list(range(2, writers + 2))
    record = await storage.get_secret("prod/db", with_versions=True)
    assert record is not None
    assert record.current_version == writers + 1
    assert [v.version for v in record.versions] == list(range(1, writers + 2))
    for value, version in zip(values, versions, strict=True):
        stored = await storage.read_secret_value("prod/db", version)
        assert stored is not None
        assert stored.value == value


# -- get_secret --------------------------------------------------------------------------------


async def test_get_secret_of_absent_path_is_none(storage: Storage) -> None:
    assert await storage.get_secret("prod/none") is None
    assert await storage.get_secret("prod/none", include_deleted=True, with_versions=True) is None


async def test_get_secret_without_versions_returns_no_version_list(
    storage: Storage, clock: FrozenClock
) -> None:
    await create(storage, "prod/db", clock.now())
    record = await storage.get_secret("prod/db")
    assert record is not None
    assert record.versions == ()


async def test_get_secret_with_versions_lists_every_version_in_order(
    storage: Storage, clock: FrozenClock
) -> None:
    first = clock.now()
    await create(storage, "prod/db", first)
    second = clock.advance(10)
    await storage.append_secret_version(
        "prod/db", fake_value(kek_version=2), expected_version=1, metadata=None, actor="bob", now=second
    )
    record = await storage.get_secret("prod/db", with_versions=True)
    assert record is not None
    assert [(v.version, v.created_at, v.created_by, v.kek_version) for v in record.versions] == [
        (1, first, "alice", 1),
        (2, second, "bob", 2),
    ]


async def test_get_secret_does_not_mix_versions_of_other_paths(storage: Storage, clock: FrozenClock) -> None:
    await create(storage, "prod/db", clock.now())
    await create(storage, "prod/db2", clock.now())
    await storage.append_secret_version(
        "prod/db2", fake_value(), expected_version=1, metadata=None, actor="bob", now=clock.now()
    )
    record = await storage.get_secret("prod/db", with_versions=True)
    assert record is not None
    assert [v.version for v in record.versions] == [1]


# -- list_secrets ------------------------------------------------------------------------------


async def test_list_secrets_returns_paths_under_prefix_in_order(storage: Storage, clock: FrozenClock) -> None:
    for path in ["prod/z", "dev/a", "prod/a", "prod/m/deep", "production/x"]:
        await create(storage, path, clock.now())
    records = await storage.list_secrets("prod/")
    assert [r.path for r in records] == ["prod/a", "prod/m/deep", "prod/z"]
    assert all(r.metadata == META and r.current_version == 1 for r in records)


async def test_list_secrets_with_empty_prefix_lists_everything(storage: Storage, clock: FrozenClock) -> None:
    for path in ["b", "a/x", "c/d/e"]:
        await create(storage, path, clock.now())
    assert [r.path for r in await storage.list_secrets("")] == ["a/x", "b", "c/d/e"]


async def test_list_prefix_without_slash_matches_by_string_prefix(
    storage: Storage, clock: FrozenClock
) -> None:
    for path in ["prod/a", "production/b", "pro"]:
        await create(storage, path, clock.now())
    assert [r.path for r in await storage.list_secrets("prod")] == ["prod/a", "production/b"]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("a_", ["a_/x"]),  # '_' must not match any one character ("ab/x")
        ("_", ["_x/y"]),
        ("a%", []),  # '%' must not match any run of characters
        ("%", []),
        ("a\\", []),  # the escape character itself is literal too
        ("a_/", ["a_/x"]),
    ],
)
async def test_list_prefix_treats_like_wildcards_literally(
    storage: Storage, clock: FrozenClock, prefix: str, expected: list[str]
) -> None:
    for path in ["ab/x", "a_/x", "aXb/y", "_x/y", "a/x"]:
        await create(storage, path, clock.now())
    assert [r.path for r in await storage.list_secrets(prefix)] == expected


async def test_list_prefix_is_case_sensitive(storage: Storage, clock: FrozenClock) -> None:
    for path in ["prod/a", "Prod/b", "PROD/c"]:
        await create(storage, path, clock.now())
    assert [r.path for r in await storage.list_secrets("Prod/")] == ["Prod/b"]
    assert [r.path for r in await storage.list_secrets("prod/")] == ["prod/a"]


async def test_list_orders_by_code_point_on_every_backend(storage: Storage, clock: FrozenClock) -> None:
    paths = ["a/b", "a-b", "a.b", "a_b", "aB", "ab", "A", "a0", "Z", "a/B", "_a", "0"]
    for path in paths:
        await create(storage, path, clock.now())
    assert [r.path for r in await storage.list_secrets("")] == sorted(paths)


async def test_list_pagination_with_after_and_limit_visits_each_secret_once(
    storage: Storage, clock: FrozenClock
) -> None:
    paths = [f"svc/{name}" for name in ["g", "a", "e", "c", "b", "f", "d"]]
    for path in paths:
        await create(storage, path, clock.now())
    await create(storage, "other/x", clock.now())

    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        page = await storage.list_secrets("svc/", after=after, limit=3)
        assert len(page) <= 3
        if not page:
            break
        seen.extend(r.path for r in page)
        after = page[-1].path
        pages += 1
    assert seen == sorted(paths)
    assert pages == 3


async def test_list_after_is_exclusive(storage: Storage, clock: FrozenClock) -> None:
    for path in ["k/a", "k/b", "k/c"]:
        await create(storage, path, clock.now())
    assert [r.path for r in await storage.list_secrets("k/", after="k/b")] == ["k/c"]
    assert [r.path for r in await storage.list_secrets("k/", after="k/a", limit=1)] == ["k/b"]


async def test_list_hides_deleted_secrets_unless_asked(storage: Storage, clock: FrozenClock) -> None:
    for path in ["k/a", "k/b"]:
        await create(storage, path, clock.now())
    assert await storage.delete_secret("k/a", now=clock.now())
    assert [r.path for r in await storage.list_secrets("k/")] == ["k/b"]
    listed = await storage.list_secrets("k/", include_deleted=True)
    assert [(r.path, r.deleted) for r in listed] == [("k/a", True), ("k/b", False)]


# -- read_secret_value -------------------------------------------------------------------------


async def test_read_secret_value_returns_current_and_specific_versions(
    storage: Storage, clock: FrozenClock
) -> None:
    first = await create(storage, "prod/db", clock.now())
    second = fake_value(kek_version=3)
    await storage.append_secret_version(
        "prod/db", second, expected_version=1, metadata=None, actor="bob", now=clock.now()
    )
    assert await storage.read_secret_value("prod/db") == StoredValue("prod/db", 2, second)
    assert await storage.read_secret_value("prod/db", 1) == StoredValue("prod/db", 1, first)
    assert await storage.read_secret_value("prod/db", 2) == StoredValue("prod/db", 2, second)


async def test_read_secret_value_of_absent_path_or_version_is_none(
    storage: Storage, clock: FrozenClock
) -> None:
    await create(storage, "prod/db", clock.now())
    assert await storage.read_secret_value("prod/none") is None
    assert await storage.read_secret_value("prod/db", 2) is None
    assert await storage.read_secret_value("prod/db", 0) is None
    assert await storage.read_secret_value("prod/d") is None  # no prefix matching


async def test_read_secret_value_of_deleted_secret_is_none(storage: Storage, clock: FrozenClock) -> None:
    await create(storage, "prod/db", clock.now())
    assert await storage.delete_secret("prod/db", now=clock.now())
    assert await storage.read_secret_value("prod/db") is None
    assert await storage.read_secret_value("prod/db", 1) is None


# -- delete_secret -----------------------------------------------------------------------------


async def test_delete_secret_hides_it_and_keeps_its_versions(storage: Storage, clock: FrozenClock) -> None:
    await create(storage, "prod/db", clock.now())
    await storage.append_secret_version(
        "prod/db", fake_value(), expected_version=1, metadata=None, actor="bob", now=clock.now()
    )
    deleted_at = clock.advance(30)

    assert await storage.delete_secret("prod/db", now=deleted_at) is True

    assert await storage.get_secret("prod/db") is None
    record = await storage.get_secret("prod/db", include_deleted=True, with_versions=True)
    assert record is not None
    assert record.deleted_at == deleted_at
    assert record.current_version == 2
    assert [v.version for v in record.versions] == [1, 2]


async def test_second_delete_and_delete_of_absent_secret_return_false(
    storage: Storage, clock: FrozenClock
) -> None:
    await create(storage, "prod/db", clock.now())
    first = clock.now()
    assert await storage.delete_secret("prod/db", now=first) is True
    assert await storage.delete_secret("prod/db", now=clock.advance(5)) is False
    assert await storage.delete_secret("prod/none", now=clock.now()) is False
    record = await storage.get_secret("prod/db", include_deleted=True)
    assert record is not None
    assert record.deleted_at == first  # the second delete did not move the timestamp


async def test_append_revives_a_deleted_secret(storage: Storage, clock: FrozenClock) -> None:
    await create(storage, "prod/db", clock.now())
    assert await storage.delete_secret("prod/db", now=clock.now())
    value = fake_value()
    record = await storage.append_secret_version(
        "prod/db", value, expected_version=1, metadata=None, actor="bob", now=clock.advance(1)
    )
    assert record.deleted_at is None
    assert record.current_version == 2
    assert record.metadata == META
    assert await storage.read_secret_value("prod/db") == StoredValue("prod/db", 2, value)
    assert await storage.read_secret_value("prod/db", 1) is not None
    assert [r.path for r in await storage.list_secrets("prod/")] == ["prod/db"]


# -- rewrap support ---------------------------------------------------------------------------


async def test_values_wrapped_below_selects_older_keks_in_path_and_version_order(
    storage: Storage, clock: FrozenClock
) -> None:
    stored: dict[tuple[str, int], EncryptedValue] = {}
    plan = {"b/one": [1, 2, 3], "a/two": [2, 1], "c/three": [3]}
    for path, kek_versions in plan.items():
        for index, kek_version in enumerate(kek_versions):
            value = fake_value(kek_version)
            await storage.append_secret_version(
                path, value, expected_version=index, metadata=META, actor="a", now=clock.now()
            )
            stored[(path, index + 1)] = value
    await storage.delete_secret("a/two", now=clock.now())  # deleted secrets can come back: rewrap them too

    below = await storage.values_wrapped_below(3, limit=100)

    expected_keys = sorted(k for k, v in stored.items() if v.kek_version < 3)
    assert [(s.path, s.version) for s in below] == expected_keys
    assert all(s.value == stored[(s.path, s.version)] for s in below)
    assert await storage.values_wrapped_below(1, limit=100) == []


async def test_values_wrapped_below_respects_limit(storage: Storage, clock: FrozenClock) -> None:
    for i in range(5):
        await create(storage, f"k/{i}", clock.now())
    assert [s.path for s in await storage.values_wrapped_below(2, limit=2)] == ["k/0", "k/1"]


async def test_replace_wrapped_keys_changes_wrap_and_kek_version_but_not_ciphertext(
    storage: Storage, clock: FrozenClock
) -> None:
    await create(storage, "k/a", clock.now())
    await create(storage, "k/b", clock.now())
    old = await storage.values_wrapped_below(2, limit=10)
    updates = [(item, EncryptedValue(2, os.urandom(60), item.value.ciphertext)) for item in old]

    assert await storage.replace_wrapped_keys(updates) == 2

    for item, new in updates:
        stored = await storage.read_secret_value(item.path, item.version)
        assert stored is not None
        assert stored.value == new
        assert stored.value.ciphertext == item.value.ciphertext
    assert await storage.values_wrapped_below(2, limit=10) == []
    record = await storage.get_secret("k/a", with_versions=True)
    assert record is not None
    assert [v.kek_version for v in record.versions] == [2]


async def test_replace_wrapped_keys_with_stale_old_wrap_changes_nothing(
    storage: Storage, clock: FrozenClock
) -> None:
    await create(storage, "k/a", clock.now())
    [item] = await storage.values_wrapped_below(2, limit=10)
    first = EncryptedValue(2, os.urandom(60), item.value.ciphertext)
    assert await storage.replace_wrapped_keys([(item, first)]) == 1

    # A second rewrapper still holding the old row must not overwrite the first one's work.
    late = EncryptedValue(3, os.urandom(60), item.value.ciphertext)
    assert await storage.replace_wrapped_keys([(item, late)]) == 0
    stored = await storage.read_secret_value("k/a")
    assert stored is not None
    assert stored.value == first


async def test_replace_wrapped_keys_checks_wrap_not_only_kek_version(
    storage: Storage, clock: FrozenClock
) -> None:
    await create(storage, "k/a", clock.now())
    [item] = await storage.values_wrapped_below(2, limit=10)
    forged_old = StoredValue(
        item.path, item.version, EncryptedValue(item.value.kek_version, os.urandom(60), item.value.ciphertext)
    )
    assert (
        await storage.replace_wrapped_keys(
            [(forged_old, EncryptedValue(2, os.urandom(60), item.value.ciphertext))]
        )
        == 0
    )
    stored = await storage.read_secret_value("k/a")
    assert stored is not None
    assert stored.value == item.value


async def test_replace_wrapped_keys_refuses_a_ciphertext_change_atomically(
    storage: Storage, clock: FrozenClock
) -> None:
    await create(storage, "k/a", clock.now())
    await create(storage, "k/b", clock.now())
    a, b = await storage.values_wrapped_below(2, limit=10)
    good = (a, EncryptedValue(2, os.urandom(60), a.value.ciphertext))
    bad = (b, EncryptedValue(2, os.urandom(60), os.urandom(48)))

    with pytest.raises(StorageError):
        await storage.replace_wrapped_keys([good, bad])

    # One transaction: the valid first update was rolled back with the refused one.
    for item in (a, b):
        stored = await storage.read_secret_value(item.path)
        assert stored is not None
        assert stored.value == item.value


async def test_replace_wrapped_keys_with_no_updates_changes_nothing(storage: Storage) -> None:
    assert await storage.replace_wrapped_keys([]) == 0


# -- operators ---------------------------------------------------------------------------------


async def test_create_operator_round_trips_every_field(storage: Storage, clock: FrozenClock) -> None:
    record = operator("alice@example.com", clock.now().replace(microsecond=654_321), Role.AUDITOR)
    await storage.create_operator(record)
    assert await storage.get_operator(record.id) == record
    assert await storage.operator_by_token_hash(record.token_hash) == record


async def test_create_operator_with_taken_name_conflicts(storage: Storage, clock: FrozenClock) -> None:
    await storage.create_operator(operator("alice", clock.now()))
    duplicate = operator("alice", clock.now(), Role.ADMIN)
    with pytest.raises(ConflictError):
        await storage.create_operator(duplicate)
    assert await storage.get_operator(duplicate.id) is None
    assert len(await storage.list_operators()) == 1


async def test_create_operator_with_taken_id_or_token_hash_conflicts(
    storage: Storage, clock: FrozenClock
) -> None:
    first = operator("alice", clock.now())
    await storage.create_operator(first)
    same_id = OperatorRecord(first.id, "bob", Role.APPROVER, hash_token(new_token()), clock.now(), "root")
    same_hash = OperatorRecord(
        new_operator_id(), "carol", Role.APPROVER, first.token_hash, clock.now(), "root"
    )
    with pytest.raises(ConflictError):
        await storage.create_operator(same_id)
    with pytest.raises(ConflictError):
        await storage.create_operator(same_hash)
    assert [op.name for op in await storage.list_operators()] == ["alice"]


async def test_operator_lookup_by_unknown_token_hash_or_id_is_none(
    storage: Storage, clock: FrozenClock
) -> None:
    await storage.create_operator(operator("alice", clock.now()))
    assert await storage.operator_by_token_hash(hash_token(new_token())) is None
    assert await storage.get_operator(new_operator_id()) is None


async def test_list_operators_orders_by_creation_time(storage: Storage, clock: FrozenClock) -> None:
    start = clock.now()
    later = operator("zed", start + timedelta(seconds=2))
    earlier = operator("yan", start + timedelta(seconds=1))
    first = operator("xavier", start)
    for record in (later, earlier, first):  # inserted out of order on purpose
        await storage.create_operator(record)
    assert [op.name for op in await storage.list_operators()] == ["xavier", "yan", "zed"]


async def test_list_operators_of_empty_store_is_empty(storage: Storage) -> None:
    assert await storage.list_operators() == []


async def test_revoke_operator_marks_it_once(storage: Storage, clock: FrozenClock) -> None:
    record = operator("alice", clock.now())
    await storage.create_operator(record)
    revoked_at = clock.advance(100)

    assert await storage.revoke_operator(record.id, now=revoked_at) is True
    assert await storage.revoke_operator(record.id, now=clock.advance(1)) is False
    assert await storage.revoke_operator(new_operator_id(), now=clock.now()) is False

    stored = await storage.get_operator(record.id)
    assert stored is not None
    assert stored.revoked_at == revoked_at
    assert not stored.active
    by_hash = await storage.operator_by_token_hash(record.token_hash)
    assert by_hash is not None
    assert not by_hash.active  # still found, so the caller can tell "revoked" from "unknown"


# -- errors -----------------------------------------------------------------------------------


async def wait_for_aiosqlite_worker_threads() -> None:
    """aiosqlite 0.22 stops a connection that failed to open without awaiting its worker thread; the
    thread later reports to the event loop, which must still be open then (else pytest warns)."""
    for _ in range(500):
        if not any("_connection_worker_thread" in t.name for t in threading.enumerate()):
            return
        await asyncio.sleep(0.01)


async def test_sqlite_in_missing_directory_is_unavailable(tmp_path: Path) -> None:
    storage = open_sqlite(tmp_path / "no-such-dir" / "tether.db")
    try:
        with pytest.raises(StorageUnavailableError) as caught:
            await storage.ping()
        with pytest.raises(StorageUnavailableError):
            await storage.migrate()
    finally:
        await storage.close()
        await wait_for_aiosqlite_worker_threads()
    message = str(caught.value)
    assert "\n" not in message
    assert "no-such-dir" in message  # tells the operator where


async def test_unreachable_postgres_is_unavailable_with_a_one_line_message_without_password() -> None:
    password = "hunter2-" + secrets.token_hex(4)
    storage = open_postgres(f"postgresql://tether:{password}@127.0.0.1:1/tether")
    try:
        with pytest.raises(StorageUnavailableError) as caught:
            await storage.ping()
    finally:
        await storage.close()
    message = str(caught.value)
    assert "\n" not in message
    assert password not in message
    assert "127.0.0.1:1" in message
    assert not any(password in str(arg) for arg in caught.value.args)


@pytest.mark.parametrize("schema", ["Public", 'x"; DROP SCHEMA public; --', "a-b", "1abc", "x" * 64])
def test_open_postgres_refuses_a_schema_name_that_is_not_a_plain_identifier(schema: str) -> None:
    with pytest.raises(ConfigError):
        open_postgres("postgresql://tether@127.0.0.1:1/tether", schema=schema)


@pytest.mark.parametrize("url", ["mysql://db/tether", "sqlite://relative.db", "", "postgresql"])
def test_open_storage_refuses_unknown_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        open_storage(url)


async def test_open_storage_dispatches_on_the_url(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'tether.db'}")
    try:
        assert storage.backend == "sqlite"
        await storage.migrate()
        assert await storage.get_meta("x") is None
    finally:
        await storage.close()
    pg = open_storage("postgresql://tether@127.0.0.1:1/tether", pg_schema="tether_a")
    try:
        assert pg.backend == "postgresql"
    finally:
        await pg.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_unmigrated_store_raises_storage_error_not_a_driver_error(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, clock: FrozenClock
) -> None:
    schema = "t_" + secrets.token_hex(6)
    dsn = ""
    if backend == "sqlite":
        storage: Storage = open_sqlite(tmp_path / "tether.db")
    else:
        dsn = request.getfixturevalue("pg_dsn")
        storage = open_postgres(dsn, schema=schema)
    try:
        with pytest.raises(StorageError) as caught:
            await storage.get_meta("keyring")
        with pytest.raises(StorageError):
            await create(storage, "prod/db", clock.now())
    finally:
        await storage.close()
        if dsn:
            await drop_pg_schema(dsn, schema)
    assert type(caught.value).__module__ == "tether.errors"


# -- only ciphertext at rest --------------------------------------------------------------------


def encodings(secret: bytes) -> list[bytes]:
    """``secret`` as it could appear in storage: raw, hex, and base64 at every alignment."""
    forms = [secret, secret.hex().encode(), secret.hex().upper().encode()]
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * offset + secret)
            # Drop the characters that depend on the padding bytes or on the end of the input.
            forms.append(encoded[(offset * 4 + 2) // 3 + 1 : -4])
    return forms


def cells_as_bytes(tables: dict[str, list[tuple[object, ...]]]) -> list[tuple[str, bytes]]:
    cells: list[tuple[str, bytes]] = []
    for table, rows in tables.items():
        for row in rows:
            for cell in row:
                if isinstance(cell, bytes | bytearray | memoryview):
                    cells.append((table, bytes(cell)))
                elif cell is not None:
                    cells.append((table, str(cell).encode()))
    return cells


def leaks(haystacks: list[tuple[str, bytes]], secret: bytes) -> list[str]:
    return [where for where, data in haystacks for form in encodings(secret) if form in data]


async def test_stored_rows_and_files_hold_only_ciphertext(
    storage: Storage, raw_store: RawStore, barrier: Barrier, clock: FrozenClock
) -> None:
    canary = b"CANARY-" + secrets.token_hex(16).encode() + b"-plaintext"
    root_key = os.urandom(32)
    await storage.put_meta("keyring", encode_keyring(barrier.keyring, root_key), expected=None)
    for version in (1, 2):
        await storage.append_secret_version(
            "prod/canary",
            barrier.encrypt("prod/canary", version, canary),
            expected_version=version - 1,
            metadata=SecretMetadata(owner="canary-owner-marker"),
            actor="alice",
            now=clock.now(),
        )
    stored = await storage.read_secret_value("prod/canary")
    assert stored is not None
    assert barrier.decrypt("prod/canary", stored.version, stored.value) == canary

    files = [(str(path), path.read_bytes()) for path in raw_store.files()]
    haystacks = cells_as_bytes(await raw_store.dump()) + files

    # The scan works: plaintext metadata is found where it was written, in rows and in files.
    assert leaks(haystacks, b"canary-owner-marker")
    if storage.backend == "sqlite":
        assert leaks(files, b"canary-owner-marker")
    assert leaks(haystacks, canary) == []
    for kek in barrier.keyring.keks:
        assert leaks(haystacks, kek.key) == []


def test_leak_scanner_finds_raw_hex_and_base64_forms() -> None:
    secret = b"CANARY-" + secrets.token_hex(16).encode()
    for prefix in (b"", b"x", b"xy", b"xyz"):
        payload = prefix + secret + b"tail"
        for stored in (
            payload,
            payload.hex().encode(),
            base64.b64encode(payload),
            base64.urlsafe_b64encode(payload),
        ):
            assert leaks([("t", b"{" + stored + b"}")], secret), (prefix, stored)
    assert leaks([("t", os.urandom(200))], secret) == []
