"""``replace_secret_metadata``: a metadata-only change, check-and-set on the whole metadata,
on every backend (the ``storage`` fixture: SQLite, and PostgreSQL where configured)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from tests.conformance.test_storage import META, create
from tether.domain.secrets import Sensitivity
from tether.store.base import Storage

T0 = datetime(2030, 1, 1, tzinfo=UTC)


async def test_metadata_is_replaced_without_a_new_version(storage: Storage) -> None:
    value = await create(storage, "prod/db/password", T0)
    changed = replace(
        META,
        sensitivity=Sensitivity.RESTRICTED,
        destinations=frozenset({"github", "pagerduty"}),
        owner="",
        rotation_period_seconds=None,
    )
    later = T0 + timedelta(minutes=5)
    record = await storage.replace_secret_metadata("prod/db/password", changed, expected=META, now=later)
    assert record is not None
    assert record.metadata == changed
    assert record.current_version == 1
    assert (record.created_at, record.updated_at) == (T0, later)
    again = await storage.get_secret("prod/db/password", with_versions=True)
    assert again is not None
    assert again.metadata == changed
    assert [v.version for v in again.versions] == [1]
    stored = await storage.read_secret_value("prod/db/password")
    assert stored is not None
    assert stored.value == value


async def test_metadata_that_changed_meanwhile_is_not_replaced(storage: Storage) -> None:
    await create(storage, "prod/db/password", T0)
    first = replace(META, owner="bob")
    assert await storage.replace_secret_metadata("prod/db/password", first, expected=META, now=T0)
    lost = replace(META, owner="carol")
    assert await storage.replace_secret_metadata("prod/db/password", lost, expected=META, now=T0) is None
    record = await storage.get_secret("prod/db/password")
    assert record is not None
    assert record.metadata.owner == "bob"
    none_period = replace(first, rotation_period_seconds=None)
    assert await storage.replace_secret_metadata("prod/db/password", none_period, expected=first, now=T0)
    back = await storage.replace_secret_metadata("prod/db/password", first, expected=none_period, now=T0)
    assert back is not None
    assert back.metadata == first


async def test_absent_or_deleted_secret_metadata_is_not_replaced(storage: Storage) -> None:
    assert await storage.replace_secret_metadata("prod/none", META, expected=META, now=T0) is None
    await create(storage, "prod/gone", T0)
    assert await storage.delete_secret("prod/gone", now=T0)
    assert (
        await storage.replace_secret_metadata("prod/gone", replace(META, owner="x"), expected=META, now=T0)
        is None
    )
