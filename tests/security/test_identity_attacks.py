"""Attacks on agent identity, over HTTP against the real app: each one refused with its precise
error, and nothing changed (no token issued; the only trace is the refusal in the audit log).

Every test asserts the exact refusal message of the check it targets, so removing that check
makes the test fail: either the attack then succeeds, or another (later) layer refuses it with
a different message. Runs on SQLite, and on PostgreSQL when TETHER_TEST_PG_DSN is set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.integration.conftest import admin, broker, root_token  # noqa: F401 - shared fixtures
from tether.api import create_app
from tether.broker import Broker
from tether.config import Settings
from tether.crypto.jose import generate_private_jwk, private_key_from_jwk, sign_jws
from tether.identity.tokens import issue_access_token
from tether.sdk import AsyncAgent

pytestmark = pytest.mark.asyncio

BASE = "http://tether.test"
TOKEN_URL = f"{BASE}/v1/auth/token"
WHOAMI_URL = f"{BASE}/v1/auth/whoami"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


# -- the tally printed at the end ---------------------------------------------------------------
class Tally:
    """Which attacks were tried and which were refused exactly as expected."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tried: list[str] = []
        self.refused: list[str] = []

    def summary(self) -> str:
        return f"{self.label}: {len(self.tried)} tried, {len(self.refused)} refused"


def tally_fixtures(tally: Tally) -> tuple[Any, Any]:
    """The fixtures of a module of attacks: ``attack`` counts one, and the summary is printed."""

    @pytest.fixture(scope="module", autouse=True, name="_print_tally")
    def print_tally() -> Iterator[None]:
        yield
        print(f"\n{tally.summary()}")

    @pytest.fixture(name="attack")
    def count_attack(request: pytest.FixtureRequest) -> Iterator[None]:
        """Count this test as an attack; it counts as refused only when every assertion held."""
        failed_before = request.session.testsfailed
        tally.tried.append(request.node.name)
        yield
        # The call phase has been reported by now: a failure there was already counted.
        if request.session.testsfailed == failed_before:
            tally.refused.append(request.node.name)

    return print_tally, count_attack


TALLY = Tally("identity attacks")
_print_tally, attack = tally_fixtures(TALLY)


# -- keys, assertions, proofs -------------------------------------------------------------------
def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def now() -> int:
    return int(time.time())


def ath(token: str) -> str:
    return b64(hashlib.sha256(token.encode()).digest())


class Key:
    """An agent's (or an attacker's) private key, and what it signs."""

    def __init__(self, kind: str = "Ed25519") -> None:
        self.private = generate_private_jwk(kind)
        self._key, self.public = private_key_from_jwk(self.private)
        self.alg = "Ed25519" if kind == "Ed25519" else "ES256"

    @property
    def kid(self) -> str:
        return self.public.kid

    @property
    def jwk(self) -> dict[str, str]:
        return dict(self.public.jwk)

    def sign(self, header: Mapping[str, Any], claims: Any) -> str:
        return sign_jws({"alg": self.alg, **header}, claims, self._key)

    def assertion(self, agent_id: str, *, header: Mapping[str, Any] | None = None, **claims: Any) -> str:
        """A client assertion, valid unless ``header`` or ``claims`` say otherwise."""
        t = now()
        body = {"iss": agent_id, "sub": agent_id, "aud": TOKEN_URL, "iat": t, "exp": t + 60}
        body["jti"] = secrets.token_urlsafe(16)
        body.update(claims)
        return self.sign({"typ": "JWT", "kid": self.kid, **(header or {})}, body)

    def proof(
        self, method: str = "POST", url: str = TOKEN_URL, *, token: str | None = None, **claims: Any
    ) -> str:
        """A DPoP proof, valid for ``method url`` (and ``token``) unless ``claims`` say otherwise."""
        body: dict[str, Any] = {"htm": method, "htu": url, "iat": now(), "jti": secrets.token_urlsafe(16)}
        if token is not None:
            body["ath"] = ath(token)
        body.update(claims)
        return self.sign({"typ": "dpop+jwt", "jwk": self.jwk}, body)


def client_credentials(assertion: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }


def dpop(token: str, proof: str) -> dict[str, str]:
    return {"Authorization": f"DPoP {token}", "DPoP": proof}


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture
async def http(broker: Broker) -> AsyncIterator[httpx.AsyncClient]:  # noqa: F811
    transport = httpx.ASGITransport(app=create_app(broker))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


class Audit:
    """The auth events recorded since a cursor (read with the operator's token)."""

    def __init__(self, http: httpx.AsyncClient, admin: dict[str, str]) -> None:  # noqa: F811
        self.http = http
        self.admin = admin
        self.cursor = 0

    async def events(self, after: int = 0) -> list[dict[str, Any]]:
        response = await self.http.get(
            "/v1/audit/events", params={"kind": "auth.*", "after": after, "limit": 1000}, headers=self.admin
        )
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    async def mark(self) -> None:
        """Start watching: later calls see only what happens from now on."""
        events = await self.events()
        self.cursor = events[-1]["seq"] if events else 0

    async def since_mark(self) -> list[dict[str, Any]]:
        return await self.events(self.cursor)

    async def tokens_issued(self, agent_id: str) -> int:
        """How many access tokens were ever issued to ``agent_id``."""
        return sum(
            1
            for e in await self.events()
            if e["kind"] == "auth.token"
            and e["actor"]["id"] == agent_id
            and not e["reason"].startswith("refused")
        )

    async def only_refusal(self, kind: str, code: str) -> dict[str, Any]:
        """Since the mark, exactly one event: the refusal, with its OAuth error code."""
        events = await self.since_mark()
        assert [(e["kind"], e["reason"].split(":")[0]) for e in events] == [(kind, "refused")], events
        assert events[0]["reason"].startswith(f"refused: {code}: "), events[0]["reason"]
        return events[0]


@pytest.fixture
def audit(http: httpx.AsyncClient, admin: dict[str, str]) -> Audit:  # noqa: F811
    return Audit(http, admin)


async def register(
    http: httpx.AsyncClient,
    admin: dict[str, str],  # noqa: F811
    name: str,
    key: Key | None = None,
) -> str:
    body: dict[str, Any] = {"name": name}
    if key is not None:
        body["public_key"] = key.jwk
    response = await http.post("/v1/agents", json=body, headers=admin)
    assert response.status_code == 201, response.text
    agent_id: str = response.json()["id"]
    return agent_id


@pytest.fixture
async def victim(http: httpx.AsyncClient, admin: dict[str, str]) -> tuple[str, Key]:  # noqa: F811
    """A registered agent and its key."""
    key = Key()
    return await register(http, admin, "victim", key), key


async def token_for(http: httpx.AsyncClient, agent_id: str, key: Key) -> str:
    return await AsyncAgent(BASE, agent_id, key.private, http=http).token()


# -- refusal checks -----------------------------------------------------------------------------
async def token_refused(
    response: httpx.Response,
    audit: Audit,
    *,
    status: int,
    error: str,
    description: str,
    agent_id: str | None = None,
    audited: bool = True,
) -> None:
    """The token endpoint refused with exactly this OAuth error, and issued nothing."""
    body = response.json()
    assert response.status_code == status, body
    assert body["error"] == error, body
    assert "access_token" not in body
    assert response.headers["cache-control"] == "no-store"
    if status == 401:
        assert response.headers["www-authenticate"].endswith(f'error="{error}"')
    # Every refusal is audited, including those refused while reading the form (``audited`` is
    # kept for the call sites' documentation). The precise reason is in the audit event; the
    # caller reads it too, except for client authentication, which is opaque (no agent probing).
    event = await audit.only_refusal("auth.token", error)
    assert description in event["reason"], event
    if error == "invalid_client":
        assert body["error_description"] == "client authentication failed", body
    else:
        assert description in body["error_description"], body
    if agent_id is not None:
        assert await audit.tokens_issued(agent_id) == 0


async def request_refused(
    response: httpx.Response, audit: Audit, *, error: str, description: str
) -> dict[str, Any]:
    """An agent request refused: 401 problem, WWW-Authenticate DPoP error, one auth.failed event."""
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("DPoP ")
    assert challenge.endswith(f'error="{error}"'), challenge
    problem = response.json()
    assert problem["type"] == "urn:tether:problem:unauthenticated"
    assert problem["detail"].startswith(f"{error}: "), problem
    assert description in problem["detail"], problem
    assert "id" not in problem
    return await audit.only_refusal("auth.failed", error)


# ================================================================================================
# The token endpoint
# ================================================================================================
async def post_token(
    http: httpx.AsyncClient, form: Mapping[str, str] | str, proof: str | None
) -> httpx.Response:
    headers = {"DPoP": proof} if proof is not None else {}
    if isinstance(form, str):
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return await http.post("/v1/auth/token", content=form, headers=headers)
    return await http.post("/v1/auth/token", data=dict(form), headers=headers)


async def test_a_valid_assertion_gets_a_token(
    http: httpx.AsyncClient, audit: Audit, victim: tuple[str, Key]
) -> None:
    """The control: the same request, unmodified, is accepted (so refusals below are the attack's)."""
    agent_id, key = victim
    response = await post_token(http, client_credentials(key.assertion(agent_id)), key.proof())
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"
    assert await audit.tokens_issued(agent_id) == 1


async def test_expired_assertion_is_refused(
    http: httpx.AsyncClient, audit: Audit, victim: tuple[str, Key], attack: None
) -> None:
    agent_id, key = victim
    await audit.mark()
    assertion = key.assertion(agent_id, iat=now() - 200, exp=now() - 60)
    response = await post_token(http, client_credentials(assertion), key.proof())
    await token_refused(
        response,
        audit,
        status=401,
        error="invalid_client",
        description="assertion expired",
        agent_id=agent_id,
    )


async def test_replayed_assertion_is_refused_even_with_a_fresh_proof(
    http: httpx.AsyncClient, audit: Audit, victim: tuple[str, Key], attack: None
) -> None:
    agent_id, key = victim
    assertion = key.assertion(agent_id)
    first = await post_token(http, client_credentials(assertion), key.proof())
    assert first.status_code == 200, first.text
    await audit.mark()
    again = await post_token(http, client_credentials(assertion), key.proof())
    await token_refused(again, audit, status=401, error="invalid_client", description="assertion replayed")
    assert await audit.tokens_issued(agent_id) == 1


async def test_assertion_for_another_audience_is_refused(
    http: httpx.AsyncClient, audit: Audit, victim: tuple[str, Key], attack: None
) -> None:
    agent_id, key = victim
    await audit.mark()
    assertion = key.assertion(agent_id, aud="https://other-tether.test/v1/auth/token")
    response = await post_token(http, client_credentials(assertion), key.proof())
    await token_refused(
        response,
        audit,
        status=401,
        error="invalid_client",
        description="meant for another audience",
        agent_id=agent_id,
    )


@pytest.mark.parametrize("signature", ["", "c2lnbmF0dXJl"], ids=["empty-signature", "junk-signature"])
async def test_assertion_with_alg_none_is_refused(
    http: httpx.AsyncClient, audit: Audit, victim: tuple[str, Key], attack: None, signature: str
) -> None:
    agent_id, key = victim
    await audit.mark()
    t = now()
    claims = {"iss": agent_id, "sub": agent_id, "aud": TOKEN_URL, "iat": t, "exp": t + 60, "jti": "none-1"}
    assertion = f"{b64json({'alg': 'none', 'typ': 'JWT', 'kid': key.kid})}.{b64json(claims)}.{signature}"
    response = await post_token(http, client_credentials(assertion), key.proof())
    # Without a signature the token is not even a JWS; with one, the algorithm allow-list refuses it.
    expected = "three non-empty parts" if not signature else "assertion algorithm 'none' is not allowed"
    await token_refused(
        response, audit, status=401, error="invalid_client", description=expected, agent_id=agent_id
    )


@pytest.mark.parametrize("secret", ["raw-public-key", "public-jwk-json"])
async def test_assertion_hs256_keyed_with_the_agents_public_key_is_refused(
    http: httpx.AsyncClient, audit: Audit, victim: tuple[str, Key], attack: None, secret: str
) -> None:
    agent_id, key = victim
    await audit.mark()
    x = key.jwk["x"]
    mac_key = (
        base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
        if secret == "raw-public-key"
        else json.dumps(key.jwk).encode()
    )
    t = now()
    claims = {"iss": agent_id, "sub": agent_id, "aud": TOKEN_URL, "iat": t, "exp": t + 60, "jti": "hs-1"}
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': key.kid})}.{b64json(claims)}"
    mac = hmac.new(mac_key, signing_input.encode(), hashlib.sha256).digest()
    response = await post_token(http, client_credentials(f"{signing_input}.{b64(mac)}"), key.proof())
    await token_refused(
        response,
        audit,
        status=401,
        error="invalid_client",
        description="assertion algorithm 'HS256' is not allowed",
        agent_id=agent_id,
    )


async def test_assertion_with_an_unknown_kid_is_refused(
    http: httpx.AsyncClient, audit: Audit, victim: tuple[str, Key], attack: None
) -> None:
    agent_id, key = victim
    await audit.mark()
    # Signed by the agent's real key: only the kid is wrong.
    assertion = key.assertion(agent_id, header={"kid": "no-such-kid"})
    response = await post_token(http, client_credentials(assertion), key.proof())
    await token_refused(
        response,
        audit,
        status=401,
        error="invalid_client",
        description="key id the agent does not hold",
        agent_id=agent_id,
    )


async def test_assertion_signed_by_an_unregistered_key_is_refused(
    http: httpx.AsyncClient, audit: Audit, victim: tuple[str, Key], attack: None
) -> None:
    agent_id, key = victim
    attacker = Key()
    await audit.mark()
    # The attacker names the victim's kid but can only sign with its own key.
    assertion = attacker.assertion(agent_id, header={"kid": key.kid})
    response = await post_token(http, client_credentials(assertion), attacker.proof())
    await token_refused(
        response,
        audit,
        status=401,
        error="invalid_client",
        description="signature does not verify with the agent's keys",
        agent_id=agent_id,
    )


async def test_disabled_agent_gets_no_token(
    http: httpx.AsyncClient,
    audit: Audit,
    admin: dict[str, str],  # noqa: F811
    victim: tuple[str, Key],
    attack: None,
) -> None:
    agent_id, key = victim
    assert (await http.post("/v1/agents/victim/disable", headers=admin)).status_code == 200
    await audit.mark()
    response = await post_token(http, client_credentials(key.assertion(agent_id)), key.proof())
    await token_refused(
        response, audit, status=401, error="invalid_client", description="is disabled", agent_id=agent_id
    )


async def test_assertion_whose_sub_differs_from_iss_is_refused(
    http: httpx.AsyncClient,
    audit: Audit,
    admin: dict[str, str],  # noqa: F811
    victim: tuple[str, Key],
    attack: None,
) -> None:
    agent_id, key = victim
    other = await register(http, admin, "other", Key())
    await audit.mark()
    assertion = key.assertion(agent_id, sub=other)  # signed by the victim, claiming to be "other"
    response = await post_token(http, client_credentials(assertion), key.proof())
    await token_refused(
        response, audit, status=401, error="invalid_client", description="assertion sub differs from iss"
    )
    assert await audit.tokens_issued(agent_id) == 0
    assert await audit.tokens_issued(other) == 0


@pytest.mark.parametrize("shape", ["expires-too-far-ahead", "issued-long-before-expiry"])
async def test_assertion_living_too_long_is_refused(
    http: httpx.AsyncClient, audit: Audit, victim: tuple[str, Key], attack: None, shape: str
) -> None:
    agent_id, key = victim
    await audit.mark()
    t = now()
    # At most 300 s: either exp lies an hour ahead, or iat..exp spans 11 minutes (exp still near).
    times = (
        {"iat": t, "exp": t + 3600} if shape == "expires-too-far-ahead" else {"iat": t - 600, "exp": t + 60}
    )
    response = await post_token(http, client_credentials(key.assertion(agent_id, **times)), key.proof())
    await token_refused(
        response,
        audit,
        status=401,
        error="invalid_client",
        description="assertion lives longer than allowed",
        agent_id=agent_id,
    )


async def test_token_request_without_a_dpop_proof_is_refused(
    http: httpx.AsyncClient, audit: Audit, victim: tuple[str, Key], attack: None
) -> None:
    agent_id, key = victim
    await audit.mark()
    response = await post_token(http, client_credentials(key.assertion(agent_id)), None)
    await token_refused(
        response,
        audit,
        status=400,
        error="invalid_dpop_proof",
        description="a DPoP proof is required",
        agent_id=agent_id,
    )


async def test_dpop_proof_by_another_key_than_the_assertion_is_refused(
    http: httpx.AsyncClient, audit: Audit, victim: tuple[str, Key], attack: None
) -> None:
    """A stolen assertion is useless without the agent's key: the token is bound to the proof's key."""
    agent_id, key = victim
    thief = Key()
    assertion = key.assertion(agent_id)
    await audit.mark()
    response = await post_token(http, client_credentials(assertion), thief.proof())
    await token_refused(
        response,
        audit,
        status=400,
        error="invalid_dpop_proof",
        description="must be signed by the key that signed the client assertion",
        agent_id=agent_id,
    )
    # Nothing was consumed by the refusal: the rightful holder can still use that assertion.
    assert (await post_token(http, client_credentials(assertion), key.proof())).status_code == 200


async def test_oversized_assertion_is_refused(
    http: httpx.AsyncClient, audit: Audit, victim: tuple[str, Key], attack: None
) -> None:
    agent_id, key = victim
    await audit.mark()
    assertion = key.assertion(agent_id, padding="A" * 9000)  # validly signed, just too big
    assert 8 * 1024 < len(assertion) < 16 * 1024  # within the form limit: the JWT limit refuses it
    response = await post_token(http, client_credentials(assertion), key.proof())
    await token_refused(
        response,
        audit,
        status=401,
        error="invalid_client",
        description="larger than 8192 bytes",
        agent_id=agent_id,
    )


def _malformed(kind: str, agent_id: str, key: Key) -> str:
    valid = key.assertion(agent_id)
    header, payload, signature = valid.split(".")
    if kind == "two-parts":
        return f"{header}.{payload}"
    if kind == "bad-base64":
        return f"{header}.%%%{payload[3:]}.{signature}"
    # A validly signed JWS whose payload is a JSON array, not claims.
    return key.sign({"typ": "JWT", "kid": key.kid}, [agent_id, agent_id, TOKEN_URL])


@pytest.mark.parametrize(
    ("kind", "description"),
    [
        ("two-parts", "expected three non-empty parts"),
        ("bad-base64", "malformed JWT claims"),
        ("json-array", "malformed JWT claims: not a JSON object"),
    ],
    ids=["two-parts", "bad-base64", "json-array"],
)
async def test_malformed_assertion_is_refused(
    http: httpx.AsyncClient,
    audit: Audit,
    victim: tuple[str, Key],
    attack: None,
    kind: str,
    description: str,
) -> None:
    agent_id, key = victim
    await audit.mark()
    response = await post_token(http, client_credentials(_malformed(kind, agent_id, key)), key.proof())
    await token_refused(
        response, audit, status=401, error="invalid_client", description=description, agent_id=agent_id
    )


async def test_repeated_form_parameter_is_refused(
    http: httpx.AsyncClient, audit: Audit, victim: tuple[str, Key], attack: None
) -> None:
    """Parameter smuggling: which client_assertion would count? Neither (RFC 6749 §3.2)."""
    agent_id, key = victim
    attacker = Key()
    await audit.mark()
    pairs = [*client_credentials(key.assertion(agent_id)).items()]
    pairs.append(("client_assertion", attacker.assertion(agent_id)))
    response = await post_token(http, urlencode(pairs), key.proof())
    await token_refused(
        response,
        audit,
        status=400,
        error="invalid_request",
        description="parameter 'client_assertion' is repeated",
        agent_id=agent_id,
        audited=False,
    )


async def test_token_request_in_another_content_type_is_refused(
    http: httpx.AsyncClient, audit: Audit, victim: tuple[str, Key], attack: None
) -> None:
    agent_id, key = victim
    await audit.mark()
    response = await http.post(
        "/v1/auth/token",
        json=client_credentials(key.assertion(agent_id)),
        headers={"DPoP": key.proof()},
    )
    await token_refused(
        response,
        audit,
        status=400,
        error="invalid_request",
        description="takes application/x-www-form-urlencoded",
        agent_id=agent_id,
        audited=False,
    )


# ================================================================================================
# Agent requests (GET /v1/auth/whoami)
# ================================================================================================
@pytest.fixture
async def signed_in(http: httpx.AsyncClient, victim: tuple[str, Key]) -> tuple[str, Key, str]:
    """The victim with a valid access token."""
    agent_id, key = victim
    return agent_id, key, await token_for(http, agent_id, key)


async def whoami(http: httpx.AsyncClient, headers: Mapping[str, str], path: str = "/v1/auth/whoami") -> Any:
    return await http.get(path, headers=dict(headers))


async def test_a_valid_token_and_proof_are_accepted(
    http: httpx.AsyncClient, signed_in: tuple[str, Key, str]
) -> None:
    """The control for the attacks below."""
    agent_id, key, token = signed_in
    response = await whoami(http, dpop(token, key.proof("GET", WHOAMI_URL, token=token)))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == agent_id


async def test_request_without_a_proof_is_refused(
    http: httpx.AsyncClient, audit: Audit, signed_in: tuple[str, Key, str], attack: None
) -> None:
    _, _, token = signed_in
    await audit.mark()
    response = await whoami(http, {"Authorization": f"DPoP {token}"})
    await request_refused(response, audit, error="invalid_dpop_proof", description="a DPoP proof is required")


async def test_token_sent_as_bearer_is_refused(
    http: httpx.AsyncClient, audit: Audit, signed_in: tuple[str, Key, str], attack: None
) -> None:
    _, key, token = signed_in
    await audit.mark()
    headers = {"Authorization": f"Bearer {token}", "DPoP": key.proof("GET", WHOAMI_URL, token=token)}
    response = await whoami(http, headers)
    await request_refused(
        response, audit, error="invalid_token", description="need Authorization: DPoP <token>"
    )


async def test_proof_for_another_method_is_refused(
    http: httpx.AsyncClient, audit: Audit, signed_in: tuple[str, Key, str], attack: None
) -> None:
    _, key, token = signed_in
    await audit.mark()
    response = await whoami(http, dpop(token, key.proof("POST", WHOAMI_URL, token=token)))
    await request_refused(
        response, audit, error="invalid_dpop_proof", description="made for another HTTP method"
    )


async def test_proof_for_another_url_is_refused_but_a_query_string_does_not_matter(
    http: httpx.AsyncClient, audit: Audit, signed_in: tuple[str, Key, str], attack: None
) -> None:
    agent_id, key, token = signed_in
    await audit.mark()
    response = await whoami(http, dpop(token, key.proof("GET", f"{BASE}/v1/agents", token=token)))
    await request_refused(response, audit, error="invalid_dpop_proof", description="made for another URL")
    # htu names the URL without its query (RFC 9449 §4.3): the same path with a query is fine.
    response = await whoami(
        http, dpop(token, key.proof("GET", WHOAMI_URL, token=token)), "/v1/auth/whoami?page=2"
    )
    assert response.status_code == 200, response.text
    assert response.json()["id"] == agent_id


async def test_replayed_proof_is_refused(
    http: httpx.AsyncClient, audit: Audit, signed_in: tuple[str, Key, str], attack: None
) -> None:
    _, key, token = signed_in
    headers = dpop(token, key.proof("GET", WHOAMI_URL, token=token))
    assert (await whoami(http, headers)).status_code == 200
    await audit.mark()
    response = await whoami(http, headers)
    await request_refused(response, audit, error="invalid_dpop_proof", description="DPoP proof replayed")


async def test_proof_too_old_is_refused(
    http: httpx.AsyncClient, audit: Audit, signed_in: tuple[str, Key, str], attack: None
) -> None:
    _, key, token = signed_in
    await audit.mark()
    response = await whoami(http, dpop(token, key.proof("GET", WHOAMI_URL, token=token, iat=now() - 400)))
    await request_refused(response, audit, error="invalid_dpop_proof", description="DPoP proof is too old")


async def test_proof_from_the_future_is_refused(
    http: httpx.AsyncClient, audit: Audit, signed_in: tuple[str, Key, str], attack: None
) -> None:
    _, key, token = signed_in
    await audit.mark()
    response = await whoami(http, dpop(token, key.proof("GET", WHOAMI_URL, token=token, iat=now() + 120)))
    await request_refused(
        response, audit, error="invalid_dpop_proof", description="DPoP proof is dated in the future"
    )


async def test_stolen_token_with_the_thiefs_own_proof_is_refused(
    http: httpx.AsyncClient,
    audit: Audit,
    admin: dict[str, str],  # noqa: F811
    signed_in: tuple[str, Key, str],
    attack: None,
) -> None:
    """Agent B holds agent A's token, and signs a perfect proof for it with B's registered key."""
    _, _, stolen = signed_in
    thief_key = Key()
    await register(http, admin, "thief", thief_key)
    await audit.mark()
    response = await whoami(http, dpop(stolen, thief_key.proof("GET", WHOAMI_URL, token=stolen)))
    event = await request_refused(
        response, audit, error="invalid_token", description="bound to another key than the proof's"
    )
    assert event["actor"]["id"].endswith("/agent/victim")


async def test_proof_for_another_token_is_refused(
    http: httpx.AsyncClient, audit: Audit, signed_in: tuple[str, Key, str], attack: None
) -> None:
    agent_id, key, token = signed_in
    other_token = await token_for(http, agent_id, key)
    await audit.mark()
    response = await whoami(http, dpop(token, key.proof("GET", WHOAMI_URL, token=other_token)))
    await request_refused(
        response, audit, error="invalid_dpop_proof", description="ath does not match the access token"
    )


async def test_token_from_another_deployment_is_refused(
    http: httpx.AsyncClient, audit: Audit, tmp_path: Path, victim: tuple[str, Key], attack: None
) -> None:
    """Another Tether (trust domain other.test) signs a token for an agent with the same key."""
    _, key = victim
    (tmp_path / "other").mkdir()
    other = Broker.from_settings(Settings(data_dir=tmp_path / "other", trust_domain="other.test"))
    init = await other.init()
    try:
        transport = httpx.ASGITransport(app=create_app(other))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as there:
            admin_there = {"Authorization": f"Bearer {init.root_token}"}
            foreign_id = await register(there, admin_there, "victim", key)
            assert foreign_id == "spiffe://other.test/agent/victim"
            foreign = await token_for(there, foreign_id, key)
            assert (
                await whoami(there, dpop(foreign, key.proof("GET", WHOAMI_URL, token=foreign)))
            ).is_success
    finally:
        await other.close()
    await audit.mark()
    response = await whoami(http, dpop(foreign, key.proof("GET", WHOAMI_URL, token=foreign)))
    await request_refused(
        response, audit, error="invalid_token", description="access token signed with an unknown key id"
    )


@pytest.mark.parametrize("field", ["iss", "aud", "sub"])
async def test_token_naming_another_trust_domain_is_refused_even_under_our_key(
    http: httpx.AsyncClient,
    audit: Audit,
    broker: Broker,  # noqa: F811
    victim: tuple[str, Key],
    attack: None,
    field: str,
) -> None:
    """Were the keys shared (a copied store), the trust domain in the token still must be ours."""
    agent_id, key = victim
    ours = "urn:tether:tether.local"
    claims = {"iss": ours, "aud": ours, "sub": agent_id, "cnf": {"jkt": key.kid}, "jti": "td-1"}
    claims[field] = "spiffe://other.test/agent/victim" if field == "sub" else "urn:tether:other.test"
    t = now()
    signing = broker.auth._keys.active  # type: ignore[union-attr]
    token = sign_jws(
        {"alg": "Ed25519", "typ": "at+jwt", "kid": signing.kid},
        {**claims, "iat": t, "nbf": t, "exp": t + 600},
        signing.private_key,
    )
    await audit.mark()
    response = await whoami(http, dpop(token, key.proof("GET", WHOAMI_URL, token=token)))
    description = {
        "iss": "access token issued by another trust domain",
        "aud": "access token meant for another audience",
        "sub": "the agent ID belongs to another trust domain",
    }[field]
    await request_refused(response, audit, error="invalid_token", description=description)


async def test_tampered_token_is_refused(
    http: httpx.AsyncClient,
    audit: Audit,
    admin: dict[str, str],  # noqa: F811
    signed_in: tuple[str, Key, str],
    attack: None,
) -> None:
    """The victim edits its own token's payload to become another agent; the signature is kept."""
    _, key, token = signed_in
    admin_agent = await register(http, admin, "deployer", Key())
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = admin_agent
    forged = f"{header}.{b64json(claims)}.{signature}"
    await audit.mark()
    response = await whoami(http, dpop(forged, key.proof("GET", WHOAMI_URL, token=forged)))
    await request_refused(response, audit, error="invalid_token", description="bad signature")


async def test_expired_token_is_refused(
    http: httpx.AsyncClient,
    audit: Audit,
    broker: Broker,  # noqa: F811
    victim: tuple[str, Key],
    attack: None,
) -> None:
    agent_id, key = victim
    issued = issue_access_token(
        broker.auth._keys,  # type: ignore[arg-type]
        agent_id=agent_id,
        jkt=key.kid,
        trust_domain=broker.settings.trust_domain,
        now=datetime.fromtimestamp(now() - 700, UTC),
        ttl_seconds=600,
    )
    await audit.mark()
    response = await whoami(http, dpop(issued.token, key.proof("GET", WHOAMI_URL, token=issued.token)))
    await request_refused(response, audit, error="invalid_token", description="access token expired")


async def test_disabled_agents_valid_token_stops_working(
    http: httpx.AsyncClient,
    audit: Audit,
    admin: dict[str, str],  # noqa: F811
    signed_in: tuple[str, Key, str],
    attack: None,
) -> None:
    _, key, token = signed_in
    assert (await http.post("/v1/agents/victim/disable", headers=admin)).status_code == 200
    await audit.mark()
    response = await whoami(http, dpop(token, key.proof("GET", WHOAMI_URL, token=token)))
    # RFC 6750 §3.1: on a resource request, the token is what is no longer good.
    await request_refused(response, audit, error="invalid_token", description="is disabled")
