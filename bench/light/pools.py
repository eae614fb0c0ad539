"""Pre-built requests for the light generators: Tether's DPoP-signed, OpenBao's token-bearing.

Tether: every request carries ``Authorization: DPoP <token>`` and its own ``DPoP`` proof made by
the SDK's :class:`~tether.sdk._signer.Signer` (what real agents send: ``htm``, ``htu`` = the
node's ``public_url`` + path, ``iat``, a fresh ``jti``, ``ath`` of the token). A proof is
single-use and its ``iat`` must stay within the server's window (``max_age_seconds`` 300 s by
default), so a pool is signed just before its run and used once. OpenBao: a handful of requests
(one per token) cycled for the whole run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.light.generator import raw_request
from bench.openbao.server import KV_PATH, PARENT_POLICY, READ_POLICY, OpenBao
from bench.openbao.tether_server import DESTINATION, GRANT_BODY, TASK_BODY, Tether
from tether.sdk import Agent
from tether.sdk._signer import Signer
from tether.sdk.egress import TASK_HEADER, egress_path

#: A proof's iat may be at most this old when the server checks it (identity/dpop.py default).
PROOF_MAX_AGE_SECONDS = 300
ISSUE_BODY: dict[str, Any] = {**TASK_BODY, "grants": [GRANT_BODY]}


@dataclass
class Caller:
    """One agent of a node, with a fresh access token (good for the token's TTL, 600 s by default)."""

    node: Tether
    agent_id: str
    signer: Signer
    token: str
    client: Agent = field(repr=False)

    def signed(self, method: str, path: str, now: int, body: bytes = b"", **headers: str) -> bytes:
        url = self.node.addr + path
        all_headers = {
            "Authorization": f"DPoP {self.token}",
            "DPoP": self.signer.proof(method, url, now, access_token=self.token),
            **headers,
        }
        if body:
            all_headers["Content-Type"] = "application/json"
        return raw_request(method, urlsplit(self.node.addr).netloc, path, all_headers, body)


def callers(node: Tether, http: httpx.Client) -> list[Caller]:
    """Every seeded agent of ``node`` (but the delegate), each with a fresh token."""
    out = []
    for agent in node.agents[:-1]:
        client = Agent(node.addr, agent["id"], agent["key"], http=http)
        out.append(Caller(node, agent["id"], Signer(agent["key"]), client.token(), client))
    return out


def _ok(response: httpx.Response, *expected: int) -> dict[str, Any]:
    if response.status_code not in expected:
        request = response.request
        raise RuntimeError(
            f"{request.method} {request.url.path}: {response.status_code} {response.text[:300]}"
        )
    body: dict[str, Any] = response.json() if response.content else {}
    return body


def open_with_grant(caller: Caller, mode: str = "reveal") -> tuple[str, str]:
    """(task id, grant id) of a new task holding one grant, opened with the SDK (setup, not measured)."""
    task = _ok(caller.client.request("POST", "/v1/tasks", json=TASK_BODY), 201)
    grant = {**GRANT_BODY, "mode": mode}
    issued = _ok(caller.client.request("POST", f"/v1/tasks/{task['id']}/grants", json=grant), 201)
    return str(task["id"]), str(issued["id"])


def issue_in_one_request(caller: Caller) -> bool:
    """Whether ``POST /v1/tasks`` takes ``grants: [...]`` (tried once): True when the task was
    opened (2xx) and its answer lists the grant issued with it; a refusal of the field (or any
    other answer) means the two-request fallback."""
    response = caller.client.request("POST", "/v1/tasks", json=ISSUE_BODY)
    if not 200 <= response.status_code < 300:
        return False
    grants = response.json().get("grants")
    return isinstance(grants, list) and len(grants) > 0


def _rotate(count: int, slots: list[tuple[Caller, str, str, bytes, dict[str, str]]]) -> list[bytes]:
    now = int(time.time())
    out = []
    for i in range(count):
        caller, method, path, body, headers = slots[i % len(slots)]
        out.append(caller.signed(method, path, now, body, **headers))
    return out


def activation_pool(grants: list[tuple[Caller, str]], count: int) -> list[bytes]:
    """``POST /v1/grants/{id}/activate`` (reveal), rotating over the grants."""
    return _rotate(count, [(c, "POST", f"/v1/grants/{g}/activate", b"", {}) for c, g in grants])


def issuance_pool(cs: list[Caller], count: int) -> list[bytes]:
    """``POST /v1/tasks`` with ``grants: [reveal grant]``: a task and its grant in one request."""
    body = json.dumps(ISSUE_BODY).encode()
    return _rotate(count, [(c, "POST", "/v1/tasks", body, {}) for c in cs])


def open_task_pool(cs: list[Caller], count: int) -> list[bytes]:
    """``POST /v1/tasks`` without grants (the first of the two-request fallback)."""
    body = json.dumps(TASK_BODY).encode()
    return _rotate(count, [(c, "POST", "/v1/tasks", body, {}) for c in cs])


def grant_pool(tasks: list[tuple[Caller, str]], count: int) -> list[bytes]:
    """``POST /v1/tasks/{id}/grants`` on open tasks (the second of the two-request fallback)."""
    body = json.dumps(GRANT_BODY).encode()
    return _rotate(count, [(c, "POST", f"/v1/tasks/{t}/grants", body, {}) for c, t in tasks])


def egress_pool(tasks: list[tuple[Caller, str]], count: int, path: str) -> list[bytes]:
    """``GET /v1/egress/github{path}`` with ``Tether-Task``: the inject grant's activation."""
    full = egress_path(DESTINATION, path)
    return _rotate(count, [(c, "GET", full, b"", {TASK_HEADER: t}) for c, t in tasks])


# -- OpenBao ------------------------------------------------------------------------------------


def bao_tokens(bao: OpenBao, count: int, *, num_uses: int = 0) -> list[str]:
    """``count`` service tokens that may read the KV secret; with ``num_uses`` each use is counted
    (a storage write per use) and the token dies after that many."""
    tokens = []
    with httpx.Client(timeout=30) as http:
        for _ in range(count):
            body: dict[str, Any] = {"policies": [READ_POLICY], "ttl": "4h", "no_default_policy": True}
            if num_uses:
                body["num_uses"] = num_uses
            r = http.post(f"{bao.addr}/v1/auth/token/create", json=body, headers=bao.headers())
            tokens.append(str(_ok(r, 200)["auth"]["client_token"]))
    return tokens


def bao_parents(bao: OpenBao, count: int) -> list[str]:
    """Parent tokens allowed to create children (for token creation)."""
    parents = []
    with httpx.Client(timeout=30) as http:
        for _ in range(count):
            r = http.post(
                f"{bao.addr}/v1/auth/token/create",
                json={"policies": [PARENT_POLICY, READ_POLICY], "ttl": "4h", "no_default_policy": True},
                headers=bao.headers(),
            )
            parents.append(str(_ok(r, 200)["auth"]["client_token"]))
    return parents


def bao_read_pool(bao: OpenBao, tokens: list[str]) -> list[bytes]:
    host = urlsplit(bao.addr).netloc
    return [raw_request("GET", host, f"/v1/secret/data/{KV_PATH}", {"X-Vault-Token": t}) for t in tokens]


def bao_create_pool(bao: OpenBao, parents: list[str]) -> list[bytes]:
    host = urlsplit(bao.addr).netloc
    body = json.dumps({"policies": [READ_POLICY], "ttl": "10m", "no_default_policy": True}).encode()
    headers = {"Content-Type": "application/json"}
    return [
        raw_request("POST", host, "/v1/auth/token/create", {**headers, "X-Vault-Token": p}, body)
        for p in parents
    ]
