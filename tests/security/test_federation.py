"""Federation with a local issuer: its own RSA key pair and a JWKS file, registered as a trusted
issuer; a JWT-SVID-shaped token (sub = spiffe://workloads.test/ns/<agent>/sa/<account>) is
exchanged (RFC 8693) for a DPoP-bound Tether token of the agent it maps to. Then the attacks on
that exchange, each refused with its precise error and no token issued.

Runs on SQLite, and on PostgreSQL when TETHER_TEST_PG_DSN is set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import RSAKey

from tests.integration.conftest import admin, broker, root_token  # noqa: F401 - shared fixtures
from tests.security.test_identity_attacks import (
    BASE,
    Audit,
    Key,
    Tally,
    audit,  # noqa: F401 - fixture
    b64,
    b64json,
    http,  # noqa: F401 - fixture
    now,
    post_token,
    register,
    tally_fixtures,
    token_refused,
)
from tether.crypto.jose import sign_jws
from tether.sdk import AsyncAgent

pytestmark = pytest.mark.asyncio

TALLY = Tally("federation attacks")
_print_tally, attack = tally_fixtures(TALLY)

ISSUER = "https://issuer.test"
AUDIENCE = "tether"
PATTERN = r"spiffe://workloads\.test/ns/(?P<agent>[a-z0-9-]+)/sa/.*"
KID = "issuer-key-1"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


class LocalIssuer:
    """An OIDC-like issuer outside Tether: an RSA key pair, and the JWKS it publishes."""

    def __init__(self, issuer: str = ISSUER, kid: str = KID) -> None:
        self.issuer = issuer
        self.kid = kid
        self.key = RSAKey.generate_key(2048)

    def jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        return {"keys": [{**public, "kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def public_pem(self) -> bytes:
        pem: bytes = self.key.as_pem(private=False)
        return pem

    def svid(self, agent: str = "builder", *, header: Mapping[str, Any] | None = None, **claims: Any) -> str:
        """A JWT-SVID-shaped token for workload ``agent``, valid unless told otherwise."""
        t = now()
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": [AUDIENCE],
            "sub": f"spiffe://workloads.test/ns/{agent}/sa/default",
            "iat": t,
            "exp": t + 300,
            "jti": secrets.token_urlsafe(16),
        }
        body.update(claims)
        fields = {"alg": "RS256", "typ": "JWT", "kid": self.kid, **(header or {})}
        return sign_jws({k: v for k, v in fields.items() if v is not None}, body, self.key)


# RSA key generation is the slow part: one issuer (and one rogue) for the whole module.
_ISSUER = LocalIssuer()
_ROGUE = LocalIssuer("https://rogue.test")
_IMPOSTOR = LocalIssuer()  # claims to be https://issuer.test, with the same kid, but another key


@pytest.fixture
async def issuer(
    http: httpx.AsyncClient,  # noqa: F811
    admin: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> LocalIssuer:
    """The local issuer, trusted by Tether from its JWKS file, and the agent "builder"."""
    jwks_file = tmp_path / "issuer-jwks.json"
    jwks_file.write_text(json.dumps(_ISSUER.jwks()), encoding="utf-8")
    response = await http.post(
        "/v1/auth/issuers",
        json={
            "name": "workloads",
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwks": json.loads(jwks_file.read_text(encoding="utf-8")),
            "subject_pattern": PATTERN,
        },
        headers=admin,
    )
    assert response.status_code == 201, response.text
    await register(http, admin, "builder")  # federated only: no public key
    return _ISSUER


def exchange(subject_token: str) -> dict[str, str]:
    return {"grant_type": TOKEN_EXCHANGE, "subject_token": subject_token, "subject_token_type": JWT_TYPE}


BUILDER = "spiffe://tether.local/agent/builder"


async def test_jwt_svid_from_a_local_issuer_maps_to_its_agent(
    http: httpx.AsyncClient,  # noqa: F811
    audit: Audit,  # noqa: F811
    issuer: LocalIssuer,
) -> None:
    agent = AsyncAgent.federated(BASE, subject_token=lambda: issuer.svid("builder"), http=http)
    me = await agent.whoami()
    assert me["id"] == BUILDER
    assert me["name"] == "builder"
    assert (await agent.whoami())["id"] == BUILDER  # the cached token with a fresh proof
    assert await audit.tokens_issued(BUILDER) == 1
    [event] = [e for e in await audit.events() if e["kind"] == "auth.token"]
    assert event["reason"] == TOKEN_EXCHANGE
    assert (await agent.token()) not in json.dumps(event)


async def refused(
    http: httpx.AsyncClient,  # noqa: F811
    audit: Audit,  # noqa: F811
    subject_token: str,
    description: str,
) -> None:
    await audit.mark()
    response = await post_token(http, exchange(subject_token), Key().proof())
    await token_refused(response, audit, status=400, error="invalid_grant", description=description)
    assert await audit.tokens_issued(BUILDER) == 0


async def test_token_from_an_untrusted_issuer_is_refused(
    http: httpx.AsyncClient,  # noqa: F811
    audit: Audit,  # noqa: F811
    issuer: LocalIssuer,
    attack: None,
) -> None:
    await refused(http, audit, _ROGUE.svid("builder"), "the subject token's issuer is not trusted")


async def test_token_for_another_audience_is_refused(
    http: httpx.AsyncClient,  # noqa: F811
    audit: Audit,  # noqa: F811
    issuer: LocalIssuer,
    attack: None,
) -> None:
    token = issuer.svid("builder", aud=["vault", "https://other-tether.test"])
    await refused(http, audit, token, "subject token is meant for another audience")


@pytest.mark.parametrize(
    "subject",
    [
        "spiffe://evil.test/ns/builder/sa/default",  # another SPIFFE trust domain
        "spiffe://workloads.test/ns/builder",  # no service account
        "spiffe://workloads.test/ns/Builder/sa/default",  # outside the name group's alphabet
        "xspiffe://workloads.test/ns/builder/sa/default",  # must match the whole claim
    ],
    ids=["other-spiffe-domain", "no-service-account", "uppercase-name", "prefix"],
)
async def test_subject_not_matching_the_pattern_is_refused(
    http: httpx.AsyncClient,  # noqa: F811
    audit: Audit,  # noqa: F811
    issuer: LocalIssuer,
    attack: None,
    subject: str,
) -> None:
    token = issuer.svid(sub=subject)
    await refused(http, audit, token, "subject does not map to an agent under this rule")


async def test_subject_of_an_unregistered_agent_is_refused(
    http: httpx.AsyncClient,  # noqa: F811
    audit: Audit,  # noqa: F811
    issuer: LocalIssuer,
    attack: None,
) -> None:
    """The pattern matches, but no agent "ghost" is registered: RFC 8693 calls that a bad grant."""
    await refused(http, audit, issuer.svid("ghost"), "maps to no registered, enabled agent")
    assert await audit.tokens_issued("spiffe://tether.local/agent/ghost") == 0


async def test_disabled_agent_gets_no_token_by_federation(
    http: httpx.AsyncClient,  # noqa: F811
    audit: Audit,  # noqa: F811
    admin: dict[str, str],  # noqa: F811
    issuer: LocalIssuer,
    attack: None,
) -> None:
    assert (await http.post("/v1/agents/builder/disable", headers=admin)).status_code == 200
    await refused(http, audit, issuer.svid("builder"), "maps to no registered, enabled agent")


async def test_expired_subject_token_is_refused(
    http: httpx.AsyncClient,  # noqa: F811
    audit: Audit,  # noqa: F811
    issuer: LocalIssuer,
    attack: None,
) -> None:
    token = issuer.svid("builder", iat=now() - 900, exp=now() - 120)  # beyond the 30 s leeway
    await refused(http, audit, token, "subject token expired")


@pytest.mark.parametrize(
    ("kid", "description"),
    [
        (KID, "subject token signature does not verify with the issuer's keys"),
        ("impostor-key", "subject token signed with a key id the issuer does not publish"),
        (None, "subject token signature does not verify with the issuer's keys"),
    ],
    ids=["published-kid", "unpublished-kid", "no-kid"],
)
async def test_token_signed_by_a_key_not_in_the_jwks_is_refused(
    http: httpx.AsyncClient,  # noqa: F811
    audit: Audit,  # noqa: F811
    issuer: LocalIssuer,
    attack: None,
    kid: str | None,
    description: str,
) -> None:
    token = _IMPOSTOR.svid("builder", header={"kid": kid})  # kid None: no kid in the header
    await refused(http, audit, token, description)


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _hs256(claims: Mapping[str, Any], secret: bytes) -> str:
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': KID})}.{b64json(claims)}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


@pytest.mark.parametrize(
    ("forgery", "description"),
    [
        ("none-unsigned", "expected three non-empty parts"),
        ("none-junk-signature", "subject token algorithm 'none' is not allowed"),
        ("hs256-public-pem", "subject token algorithm 'HS256' is not allowed"),
        ("hs256-public-jwk", "subject token algorithm 'HS256' is not allowed"),
    ],
    ids=["none-unsigned", "none-junk-signature", "hs256-public-pem", "hs256-public-jwk"],
)
async def test_unsigned_or_hmac_forged_token_is_refused(
    http: httpx.AsyncClient,  # noqa: F811
    audit: Audit,  # noqa: F811
    issuer: LocalIssuer,
    attack: None,
    forgery: str,
    description: str,
) -> None:
    """``alg: none``, and HS256 keyed with what is public: the issuer's PEM or its JWKS entry."""
    claims = json.loads(_unb64(issuer.svid("builder").split(".")[1]))
    if forgery.startswith("none"):
        signature = "" if forgery == "none-unsigned" else "c2lnbmF0dXJl"
        token = f"{b64json({'alg': 'none', 'typ': 'JWT', 'kid': KID})}.{b64json(claims)}.{signature}"
    elif forgery == "hs256-public-pem":
        token = _hs256(claims, issuer.public_pem())
    else:
        token = _hs256(claims, json.dumps(issuer.jwks()["keys"][0]).encode())
    await refused(http, audit, token, description)


async def test_a_subject_token_is_reusable_and_each_exchange_binds_its_own_key(
    http: httpx.AsyncClient,  # noqa: F811
    audit: Audit,  # noqa: F811
    issuer: LocalIssuer,
) -> None:
    """Workloads present the same projected token (JWT-SVID, service-account token) for its whole
    life, so exchanges repeat; each access token is bound to the key its presenter proved, so one
    presenter's token is useless with another's key."""
    svid = issuer.svid("builder")
    first = AsyncAgent.federated(BASE, subject_token=lambda: svid, http=http)
    second = AsyncAgent.federated(BASE, subject_token=lambda: svid, http=http)
    assert (await first.whoami())["id"] == BUILDER
    assert (await second.whoami())["id"] == BUILDER
    assert await audit.tokens_issued(BUILDER) == 2
    stolen = await first.token()
    thief = AsyncAgent.federated(BASE, subject_token=lambda: svid, http=http)
    thief._session.token = first._session.token  # first's token, thief's key
    response = await thief.request("GET", "/v1/auth/whoami")
    assert response.status_code == 401
    assert stolen not in response.text
