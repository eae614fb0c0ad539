"""Races and failure paths found in review: each one pinned by a test."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tether.api import create_app
from tether.audit import AUDIT_KEYS_META
from tether.broker import Broker
from tether.config import Settings
from tether.errors import SealedError, StorageError
from tether.store._sql import SQLStorage
from tether.store.postgres import open_postgres

pytestmark = pytest.mark.asyncio


class SlowMeta:
    """Mixed into the real store's class: put_meta slowed so that a seal can land mid-rotation."""

    async def put_meta(self, key: str, value: bytes, *, expected: bytes | None) -> None:
        await asyncio.sleep(0.2)
        await super().put_meta(key, value, expected=expected)  # type: ignore[misc]


async def test_seal_during_key_rotation_stays_sealed(broker: Broker) -> None:
    if broker.storage.backend != "sqlite":
        pytest.skip("the race is the same on every backend; SQLite suffices")
    storage = broker.storage
    assert isinstance(storage, SQLStorage)
    # Same engine and state, slower meta writes.
    storage.__class__ = type("SlowStore", (SlowMeta, type(storage)), {})
    root = await broker.operators.authenticate(broker.root_token)  # type: ignore[attr-defined]
    rotation = asyncio.create_task(broker.rotate_keys(root))
    await asyncio.sleep(0.05)
    await broker.seal(root)
    with pytest.raises(SealedError):
        await rotation
    assert broker.keys.sealed
    with pytest.raises(SealedError):
        await broker.secrets.read_value("any/path")


async def test_failed_init_leaves_nothing_half_written(tmp_path: Path) -> None:
    node = Broker.from_settings(Settings(data_dir=tmp_path))

    async def broken_bootstrap() -> Any:
        raise StorageError("simulated failure while creating the first admin")

    node.operators.bootstrap = broken_bootstrap  # type: ignore[method-assign]
    with pytest.raises(StorageError):
        await node.init()
    try:
        assert await node.storage.get_meta("keyring") is None
        assert await node.storage.get_meta(AUDIT_KEYS_META) is None
    finally:
        await node.close()
    (tmp_path / "dev-root.key").unlink()  # what `tether init` does when it rolls back
    again = Broker.from_settings(Settings(data_dir=tmp_path))
    result = await again.init()
    assert result.root_token.startswith("tto_")
    await again.close()


async def test_admins_revoking_each_other_at_once_leave_one_admin(
    client: httpx.AsyncClient, admin: dict[str, str], make_operator: Any, broker: Broker
) -> None:
    second = await make_operator("second-admin", "admin")
    first_revokes, second_revokes = await asyncio.gather(
        client.post("/v1/operators/second-admin/revoke", headers=admin),
        client.post("/v1/operators/root/revoke", headers=second),
    )
    statuses = sorted([first_revokes.status_code, second_revokes.status_code])
    active_admins = [
        op for op in await broker.storage.list_operators() if op.active and op.role.value == "admin"
    ]
    assert len(active_admins) >= 1
    assert statuses in ([200, 409], [200, 401])  # never both revoked


async def test_stale_node_writes_under_the_newest_kek(broker: Broker) -> None:
    other = Broker(broker.settings, _same_store(broker))
    await other.start(migrate=False)
    root = await broker.operators.authenticate(broker.root_token)  # type: ignore[attr-defined]
    await broker.rotate_keys(root)
    await broker.rotate_keys(root)
    from tether.domain.secrets import SecretMetadata

    record = await other.secrets.put(root, "stale/node", "v-" + secrets.token_hex(8), SecretMetadata())
    stored = await broker.storage.read_secret_value(record.path)
    assert stored is not None
    assert stored.value.kek_version == 3
    await other.close()


def _same_store(broker: Broker) -> Any:
    from tether.store import open_storage

    return open_storage(broker.settings.database_url, pg_schema=broker.settings.pg_schema)


async def test_dev_node_with_a_missing_key_file_starts_sealed_and_invents_no_key(broker: Broker) -> None:
    if broker.storage.backend != "sqlite":
        pytest.skip("the dev key provider is the SQLite quickstart's")
    key_file = broker.settings.data_dir / "dev-root.key"
    key_file.rename(key_file.with_suffix(".bak"))
    node = Broker.from_settings(broker.settings)
    await node.start()
    assert node.keys.sealed
    assert not key_file.exists()
    await node.close()


async def test_chunked_body_over_the_limit_is_413(broker: Broker, admin: dict[str, str]) -> None:
    app = create_app(broker, max_request_bytes=1000)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:

        async def chunks() -> Any:
            for _ in range(10):
                yield b'{"value": "' + b"x" * 200

        response = await http.put("/v1/secrets/big/chunked", content=chunks(), headers=admin)
    assert response.status_code == 413
    assert response.json()["type"] == "urn:tether:problem:payload-too-large"


async def test_unknown_http_methods_do_not_grow_metrics(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    for n in range(5):
        await client.request(f"XM{n}", "/v1/sys/health")
    body = (await client.get("/metrics", headers=admin)).text
    assert "XM0" not in body
    assert 'method="other"' in body


async def test_storage_errors_tell_callers_nothing_about_internals(
    client: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    async with broker.storage._engine.begin() as conn:  # type: ignore[attr-defined]  # break the store
        await conn.execute(text("DROP TABLE secret_versions"))
    response = await client.put("/v1/secrets/x/y", json={"value": "v"}, headers=admin)
    assert response.status_code == 503
    body = response.json()
    assert body["type"] == "urn:tether:problem:storage-error"
    assert "secret_versions" not in response.text
    assert str(broker.settings.data_dir) not in response.text


async def test_nodes_migrating_together_on_postgresql_all_succeed(pg_dsn: str) -> None:
    schema = "t_migrate_" + secrets.token_hex(5)
    stores = [open_postgres(pg_dsn, schema=schema) for _ in range(3)]
    try:
        await asyncio.gather(*(store.migrate() for store in stores))
        assert await stores[0].get_meta("nothing") is None
    finally:
        async with stores[0]._engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        for store in stores:
            await store.close()
