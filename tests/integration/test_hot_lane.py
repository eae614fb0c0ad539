"""The hot lane serves token, task opening, activation and egress as plain endpoints, in front of
FastAPI's router: same answers, authentication before the body is read, metrics by route template."""

from __future__ import annotations

import httpx
import pytest

from tether.api.hot import ACTIVATE, EGRESS, MCP, OPEN_TASK, TOKEN, match


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v1/auth/token", (TOKEN, {})),
        ("POST", "/v1/tasks", (OPEN_TASK, {})),
        ("POST", "/v1/grants/grt_abc/activate", (ACTIVATE, {"grant_id": "grt_abc"})),
        ("GET", "/v1/egress/github/repos/a", (EGRESS, {"destination": "github", "path": "repos/a"})),
        ("DELETE", "/v1/egress/github/", (EGRESS, {"destination": "github", "path": ""})),
        ("POST", "/mcp", (MCP, {})),
    ],
)
def test_the_hot_shapes_are_matched_with_their_parameters(method: str, path: str, expected: object) -> None:
    assert match(method, path) == expected


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/auth/token"),  # FastAPI answers 405
        ("POST", "/v1/tasks/"),
        ("GET", "/v1/tasks"),  # an operator's list
        ("POST", "/v1/grants//activate"),
        ("POST", "/v1/grants/a/b/activate"),
        ("GET", "/v1/grants/grt_abc/activate"),
        ("POST", "/v1/egress/github"),  # no path after the destination
        ("POST", "/v1/egress//x"),
        ("TRACE", "/v1/egress/github/x"),
        ("POST", "/v1/tasks/tsk_1/grants"),
        ("GET", "/mcp"),  # the MCP front answers 405 through FastAPI
        ("POST", "/mcp/"),
    ],
)
def test_every_other_shape_goes_on_to_fastapi(method: str, path: str) -> None:
    assert match(method, path) is None


async def test_an_unauthenticated_request_with_a_broken_body_is_401_not_422(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/v1/tasks", "/v1/grants/grt_x/activate"):
        answer = await client.post(path, content=b"{not json", headers={"content-type": "application/json"})
        assert answer.status_code == 401, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["www-authenticate"].startswith("DPoP ")


async def test_hot_requests_are_counted_by_route_template(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await client.post("/v1/grants/grt_secret_looking_id/activate")
    metrics = (await client.get("/metrics", headers=admin)).text
    assert 'route="/v1/grants/{grant_id}/activate",status="401"' in metrics
    assert "grt_secret_looking_id" not in metrics
    # Every request counts, the first of its series and those after it (the series are kept).
    await client.post("/v1/grants/grt_other/activate")
    await client.post("/v1/grants/grt_third/activate")
    metrics = (await client.get("/metrics", headers=admin)).text
    series = 'tether_http_requests_total{method="POST",route="/v1/grants/{grant_id}/activate",status="401"}'
    assert f"{series} 3.0" in metrics
    timed = 'tether_http_request_duration_seconds_count{route="/v1/grants/{grant_id}/activate"}'
    assert f"{timed} 3.0" in metrics
