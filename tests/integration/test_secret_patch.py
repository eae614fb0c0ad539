"""``PATCH /v1/secrets/{path}``: metadata only. No value is sent, no version is added, the value
is untouched, what is omitted stays as it is; audited as ``secret.update``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tether.broker import Broker

URL = "/v1/secrets/prod/github/token"
VALUE = "patch-test-value-7f3c"


@pytest.fixture
async def written(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, Any]:
    body = {
        "value": VALUE,
        "sensitivity": "internal",
        "purposes": ["deploy", "release"],
        "destinations": ["github"],
        "owner": "team-platform",
        "rotation_period_seconds": 86_400,
    }
    response = await client.put(URL, json=body, headers=admin)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_patch_adds_and_removes_without_touching_the_rest_or_the_value(
    client: httpx.AsyncClient, admin: dict[str, str], broker: Broker, written: dict[str, Any]
) -> None:
    change = {"add_destinations": ["gitlab"], "remove_purposes": ["release"], "sensitivity": "confidential"}
    response = await client.patch(URL, json=change, headers=admin)
    assert response.status_code == 200, response.text
    after = response.json()
    assert after["destinations"] == ["github", "gitlab"]
    assert after["purposes"] == ["deploy"]
    assert after["sensitivity"] == "confidential"
    assert after["owner"] == "team-platform"
    assert after["rotation_period_seconds"] == 86_400
    assert after["current_version"] == written["current_version"] == 1
    shown = (await client.get(URL, headers=admin)).json()
    assert [v["version"] for v in shown["versions"]] == [1]
    assert {k: shown[k] for k in ("purposes", "destinations", "sensitivity")} == {
        "purposes": ["deploy"],
        "destinations": ["github", "gitlab"],
        "sensitivity": "confidential",
    }
    assert await broker.secrets.read_value("prod/github/token") == (1, VALUE.encode())


async def test_patch_replaces_a_set_and_clears_the_rotation_period(
    client: httpx.AsyncClient, admin: dict[str, str], written: dict[str, Any]
) -> None:
    response = await client.patch(
        URL, json={"purposes": [], "owner": "sre", "rotation_period_seconds": None}, headers=admin
    )
    assert response.status_code == 200, response.text
    after = response.json()
    assert (after["purposes"], after["owner"], after["rotation_period_seconds"]) == ([], "sre", None)
    assert after["destinations"] == written["destinations"]
    assert after["sensitivity"] == written["sensitivity"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"value": "new"}, "value"),
        ({}, "metadata"),
        ({"purposes": ["a"], "add_purposes": ["b"]}, "purposes"),
        ({"add_destinations": ["x"], "remove_destinations": ["x"]}, "destinations"),
        ({"add_purposes": ["Not A Name"]}, "add_purposes"),
        ({"sensitivity": "secret"}, "sensitivity"),
        ({"rotation_period_seconds": 5}, "rotation_period_seconds"),
    ],
)
async def test_patch_refuses_a_value_an_empty_change_and_contradictions(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    written: dict[str, Any],
    change: dict[str, Any],
    field: str,
) -> None:
    response = await client.patch(URL, json=change, headers=admin)
    assert response.status_code == 422, response.text
    assert field in response.text
    assert (await client.get(URL, headers=admin)).json()["updated_at"] == written["updated_at"]


async def test_patch_is_audited_with_what_changed_and_no_value(
    client: httpx.AsyncClient, admin: dict[str, str], written: dict[str, Any]
) -> None:
    change = {"add_destinations": ["gitlab"], "rotation_period_seconds": None}
    assert (await client.patch(URL, json=change, headers=admin)).status_code == 200
    events = (await client.get("/v1/audit/events", params={"kind": "secret.update"}, headers=admin)).json()
    (event,) = events["events"]
    assert event["resource"] == "secret:prod/github/token"
    assert event["data"] == {"add_destinations": ["gitlab"], "rotation_period_seconds": None}
    assert VALUE not in str(events)


async def test_patch_of_a_missing_or_deleted_secret_is_404_and_audited(
    client: httpx.AsyncClient, admin: dict[str, str], written: dict[str, Any]
) -> None:
    missing = await client.patch("/v1/secrets/prod/none", json={"owner": "x"}, headers=admin)
    assert missing.status_code == 404
    assert (await client.delete(URL, headers=admin)).status_code == 204
    assert (await client.patch(URL, json={"owner": "x"}, headers=admin)).status_code == 404
    events = (await client.get("/v1/audit/events", params={"kind": "secret.update"}, headers=admin)).json()
    assert len(events["events"]) >= 2


async def test_patch_needs_a_secret_writer(
    client: httpx.AsyncClient, admin: dict[str, str], make_operator: Any, written: dict[str, Any]
) -> None:
    auditor = await make_operator("carol", "auditor")
    assert (await client.patch(URL, json={"owner": "x"}, headers=auditor)).status_code == 403
    assert (await client.patch(URL, json={"owner": "x"})).status_code == 401
    writer = await make_operator("dave", "secret-writer")
    assert (await client.patch(URL, json={"owner": "x"}, headers=writer)).status_code == 200
