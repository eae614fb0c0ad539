"""Helpers for governed-path tests: a seeded deployment (policies, secrets, agents) over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tether.crypto.jose import generate_private_jwk
from tether.sdk import AsyncAgent

BASE = "http://tether.test"
EXAMPLE_POLICIES = Path(__file__).resolve().parents[2] / "examples" / "policies" / "tether.cedar"

SECRETS: dict[str, dict[str, Any]] = {
    "prod/docs/token": {"sensitivity": "public", "purposes": ["deploy"], "destinations": ["github"]},
    "prod/github/token": {"sensitivity": "internal", "purposes": ["deploy"], "destinations": ["github"]},
    "prod/stripe/key": {"sensitivity": "confidential", "purposes": ["deploy"], "destinations": ["stripe"]},
    "prod/pagerduty/key": {
        "sensitivity": "restricted",
        "purposes": ["incident"],
        "destinations": ["pagerduty"],
    },
}


async def deploy_policies(http: httpx.AsyncClient, admin: dict[str, str], text: str | None = None) -> None:
    body = {"policies": text if text is not None else EXAMPLE_POLICIES.read_text(encoding="utf-8")}
    response = await http.put("/v1/policies", json=body, headers=admin)
    assert response.status_code in (200, 201), response.text


async def write_secrets(http: httpx.AsyncClient, admin: dict[str, str], values: dict[str, str]) -> None:
    for path, meta in SECRETS.items():
        response = await http.put(f"/v1/secrets/{path}", json={"value": values[path], **meta}, headers=admin)
        assert response.status_code in (200, 201), response.text


async def add_destinations(http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    for name, secret in (
        ("github", "prod/github/token"),
        ("stripe", "prod/stripe/key"),
        ("pagerduty", "prod/pagerduty/key"),
    ):
        body = {
            "name": name,
            "base_url": f"http://127.0.0.1:9/{name}",
            "secret": secret,
            "inject": {"type": "header", "name": "Authorization", "template": "Bearer {secret}"},
            "methods": ["GET", "POST"],
        }
        response = await http.post("/v1/destinations", json=body, headers=admin)
        assert response.status_code == 201, response.text


async def register_agent(
    http: httpx.AsyncClient,
    admin: dict[str, str],
    name: str,
    *,
    labels: tuple[str, ...] = ("deploy", "incident"),
    environment: str = "prod",
    team: str = "platform",
) -> AsyncAgent:
    private = generate_private_jwk()
    public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
    attributes = {"team": team, "environment": environment, "owner": "alice", "labels": list(labels)}
    response = await http.post(
        "/v1/agents", json={"name": name, "public_key": public, "attributes": attributes}, headers=admin
    )
    assert response.status_code == 201, response.text
    return AsyncAgent(BASE, response.json()["id"], private, http=http)


async def seed(http: httpx.AsyncClient, admin: dict[str, str], values: dict[str, str]) -> None:
    """Example policies, one secret of each sensitivity, and destinations for them."""
    await deploy_policies(http, admin)
    await write_secrets(http, admin, values)
    await add_destinations(http, admin)
