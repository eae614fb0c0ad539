"""A keyring rotated through one process of a node (a worker, or another node on PostgreSQL) is the
keyring every other process reports: key status reads the store's, not a stale copy in memory."""

from __future__ import annotations

import httpx

from tether.api import create_app
from tether.broker import Broker


async def test_key_status_through_another_process_names_the_rotated_version(
    broker: Broker, admin: dict[str, str]
) -> None:
    sibling = Broker.from_settings(broker.settings)  # a second process of the same node
    await sibling.start()
    try:
        async with (
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(broker)), base_url="http://a"
            ) as one,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(sibling)), base_url="http://b"
            ) as two,
        ):
            before = (await two.get("/v1/sys/keys", headers=admin)).json()["active"]
            rotated = await one.post("/v1/sys/keys/rotate", headers=admin)
            assert rotated.status_code == 200, rotated.text
            status = await two.get("/v1/sys/keys", headers=admin)
            assert status.status_code == 200, status.text
            assert status.json()["active"] == rotated.json()["kek_version"] == before + 1
    finally:
        await sibling.close()
