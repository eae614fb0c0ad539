"""Authentication comes before body validation on every route that takes a body: an
unauthenticated request with a broken body gets 401, not 422; an authenticated one gets 422."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.routing import APIRoute

from tests.integration.governed import register_agent
from tether.api import (
    routes_agents,
    routes_audit,
    routes_auth,
    routes_destinations,
    routes_egress,
    routes_operators,
    routes_policies,
    routes_secrets,
    routes_sys,
    routes_tasks,
)

ROUTERS = (
    routes_agents,
    routes_audit,
    routes_auth,
    routes_destinations,
    routes_egress,
    routes_operators,
    routes_policies,
    routes_secrets,
    routes_sys,
    routes_tasks,
)
PARAMS = {"path": "prod/x", "task_id": "tsk_" + "a" * 26, "approval_id": "apr_" + "a" * 26}
BROKEN = [
    (b"{not json", "application/json"),
    (b'{"a": "\xff\xfe"}', "application/json"),  # not even UTF-8
]


def _body_routes() -> list[tuple[str, str]]:
    found = []
    for module in ROUTERS:
        for route in module.router.routes:
            if isinstance(route, APIRoute) and route.dependant.body_params:
                path = re.sub(r"\{(\w+)(:path)?\}", lambda m: PARAMS.get(m.group(1), "x"), route.path)
                found.extend((method, path) for method in sorted(route.methods))
    return found


BODY_ROUTES = _body_routes()


def test_every_body_route_is_covered() -> None:
    assert ("PUT", "/v1/secrets/prod/x") in BODY_ROUTES
    assert ("PATCH", f"/v1/tasks/{PARAMS['task_id']}") in BODY_ROUTES
    assert len(BODY_ROUTES) >= 15


@pytest.mark.parametrize(
    "authorization", [None, "Bearer not-a-token", "DPoP not-a-token"], ids=["none", "bearer", "dpop"]
)
async def test_unauthenticated_broken_body_is_401_not_422(
    client: httpx.AsyncClient, authorization: str | None
) -> None:
    answers = {}
    for method, path in BODY_ROUTES:
        for body, content_type in BROKEN:
            headers = {"content-type": content_type}
            if authorization is not None:
                headers["authorization"] = authorization
            response = await client.request(method, path, content=body, headers=headers)
            answers[method, path, body] = (response.status_code, response.headers["content-type"])
    assert set(answers.values()) == {(401, "application/problem+json")}, answers


async def test_operator_with_broken_body_gets_the_validation_error(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    headers = {**admin, "content-type": "application/json"}
    for method, path in BODY_ROUTES:
        if path.startswith(("/v1/tasks", "/v1/sys/unseal")):
            continue  # agents' routes; unseal is refused while unsealed
        response = await client.request(method, path, content=b"{not json", headers=headers)
        assert response.status_code == 422, (method, path, response.text)
        assert response.json()["errors"][0]["field"] == "body"


async def test_agent_with_broken_body_gets_the_validation_error(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    agent = await register_agent(client, admin, "ci")
    headers = {"content-type": "application/json"}
    path = f"/v1/tasks/{PARAMS['task_id']}"
    response = await agent.request("PATCH", path, content=b"{not json", headers=headers)
    assert response.status_code == 422, response.text
    stale = {"authorization": response.request.headers["authorization"], **headers}
    stale["dpop"] = response.request.headers["dpop"]  # the proof was used up: replay
    replayed = await client.request("PATCH", path, content=b"{not json", headers=stale)
    assert replayed.status_code == 401, replayed.text
