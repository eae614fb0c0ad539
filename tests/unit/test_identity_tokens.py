"""Access tokens: issued by Tether, bound to the agent's key, refused when anything is off."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from joserfc.jwk import OKPKey

from tether.clock import FrozenClock
from tether.errors import AuthenticationError, InvalidInputError
from tether.identity.signing import TokenSigningKeys
from tether.identity.tokens import (
    AccessClaims,
    issue_access_token,
    parse_agent_id,
    peek_claims,
    verify_access_token,
)

TD = "acme.test"
AGENT = "spiffe://acme.test/agent/bot"
JKT = OKPKey.generate_key("Ed25519").thumbprint()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: Any, sign: Callable[[bytes], bytes] | None) -> str:
    """A compact JWS made by hand, so that tests can craft what no library would sign."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = sign(signing_input.encode()) if sign is not None else b""
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture
def keys(clock: FrozenClock) -> TokenSigningKeys:
    return TokenSigningKeys.generate(clock.now())


def good_claims(clock: FrozenClock, **changes: Any) -> dict[str, Any]:
    now = int(clock.now().timestamp())
    claims = {
        "iss": f"urn:tether:{TD}",
        "aud": f"urn:tether:{TD}",
        "sub": AGENT,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "j1",
        "cnf": {"jkt": JKT},
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def signed(keys: TokenSigningKeys, claims: Any, **header: Any) -> str:
    """A token with a valid signature by the active key, over whatever claims and header."""
    head = {"alg": "Ed25519", "typ": "at+jwt", "kid": keys.active.kid, **header}
    return forge(
        {k: v for k, v in head.items() if v is not None}, claims, keys.active.private_key.private_key.sign
    )


def refused(token: str, keys: TokenSigningKeys, clock: FrozenClock, **kwargs: Any) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        verify_access_token(
            token, keys=keys, trust_domain=kwargs.pop("trust_domain", TD), now=clock.now(), **kwargs
        )
    assert info.value.code == "invalid_token"
    for part in [token, *token.split(".")]:
        if len(part) >= 8:  # no token, claims or signature in the message
            assert part not in str(info.value)
    return info.value


# -- issuance ---------------------------------------------------------------------------------


def test_issued_token_verifies_with_its_claims(keys: TokenSigningKeys, clock: FrozenClock) -> None:
    issued = issue_access_token(keys, agent_id=AGENT, jkt=JKT, trust_domain=TD, now=clock.now())
    assert issued.expires_at == clock.now() + timedelta(seconds=600)
    claims = verify_access_token(issued.token, keys=keys, trust_domain=TD, now=clock.now())
    assert claims == AccessClaims(AGENT, JKT, issued.jti, clock.now(), issued.expires_at)


def test_issued_token_has_the_documented_shape(keys: TokenSigningKeys, clock: FrozenClock) -> None:
    issued = issue_access_token(
        keys, agent_id=AGENT, jkt=JKT, trust_domain=TD, now=clock.now(), ttl_seconds=60, extra={"scope": "x"}
    )
    header = json.loads(base64.urlsafe_b64decode(issued.token.split(".")[0] + "=="))
    assert header == {"alg": "Ed25519", "typ": "at+jwt", "kid": keys.active.kid}
    claims = peek_claims(issued.token)
    now = int(clock.now().timestamp())
    assert claims == {
        "iss": "urn:tether:acme.test",
        "aud": "urn:tether:acme.test",
        "sub": AGENT,
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "jti": issued.jti,
        "cnf": {"jkt": JKT},
        "scope": "x",
    }
    assert issued.token not in repr(issued)


def test_each_token_gets_a_fresh_128_bit_jti(keys: TokenSigningKeys, clock: FrozenClock) -> None:
    jtis = {
        issue_access_token(keys, agent_id=AGENT, jkt=JKT, trust_domain=TD, now=clock.now()).jti
        for _ in range(20)
    }
    assert len(jtis) == 20
    assert all(len(base64.urlsafe_b64decode(j + "==")) == 16 for j in jtis)


@pytest.mark.parametrize("ttl", [0, 59, 3601, True, 600.0])
def test_ttl_out_of_bounds_is_refused(keys: TokenSigningKeys, clock: FrozenClock, ttl: Any) -> None:
    with pytest.raises(InvalidInputError) as info:
        issue_access_token(keys, agent_id=AGENT, jkt=JKT, trust_domain=TD, now=clock.now(), ttl_seconds=ttl)
    assert info.value.field == "ttl_seconds"


@pytest.mark.parametrize("ttl", [60, 3600])
def test_ttl_bounds_are_inclusive(keys: TokenSigningKeys, clock: FrozenClock, ttl: int) -> None:
    issued = issue_access_token(
        keys, agent_id=AGENT, jkt=JKT, trust_domain=TD, now=clock.now(), ttl_seconds=ttl
    )
    assert issued.expires_at == clock.now() + timedelta(seconds=ttl)
    claims = verify_access_token(issued.token, keys=keys, trust_domain=TD, now=clock.now())
    assert (claims.agent_id, claims.jkt, claims.jti) == (AGENT, JKT, issued.jti)
    assert claims.expires_at == issued.expires_at


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"agent_id": "spiffe://other.test/agent/bot"}, "agent_id"),
        ({"agent_id": "bot"}, "agent_id"),
        ({"jkt": "short"}, "jkt"),
        ({"extra": {"sub": "spiffe://acme.test/agent/root"}}, "extra"),
        ({"extra": {"cnf": {}}}, "extra"),
    ],
)
def test_issuance_refuses_bad_input(
    keys: TokenSigningKeys, clock: FrozenClock, changes: dict[str, Any], field: str
) -> None:
    kwargs: dict[str, Any] = {"agent_id": AGENT, "jkt": JKT, **changes}
    with pytest.raises(InvalidInputError) as info:
        issue_access_token(keys, trust_domain=TD, now=clock.now(), **kwargs)
    assert info.value.field == field


# -- algorithm, type, key ------------------------------------------------------------------


def test_alg_none_is_refused(keys: TokenSigningKeys, clock: FrozenClock) -> None:
    header = {"alg": "none", "typ": "at+jwt", "kid": keys.active.kid}
    refused(forge(header, good_claims(clock), None), keys, clock)
    refused(forge(header, good_claims(clock), lambda _: b"x"), keys, clock)


@pytest.mark.parametrize("secret_form", ["raw", "jwk"])
def test_hs256_keyed_with_the_public_key_is_refused(
    keys: TokenSigningKeys, clock: FrozenClock, secret_form: str
) -> None:
    public = keys.active.public.jwk
    secret = (
        base64.urlsafe_b64decode(public["x"] + "=")
        if secret_form == "raw"
        else json.dumps(dict(public)).encode()
    )
    header = {"alg": "HS256", "typ": "at+jwt", "kid": keys.active.kid}
    token = forge(header, good_claims(clock), lambda m: hmac.new(secret, m, hashlib.sha256).digest())
    assert "not allowed" in str(refused(token, keys, clock))


def test_eddsa_alias_is_refused_for_our_tokens(keys: TokenSigningKeys, clock: FrozenClock) -> None:
    # Clients may say EdDSA; Tether itself only signs with the fully-specified Ed25519.
    refused(signed(keys, good_claims(clock), alg="EdDSA"), keys, clock)


@pytest.mark.parametrize("typ", [None, "JWT", "dpop+jwt", "AT+JWT", "application/at+jwt"])
def test_wrong_typ_is_refused(keys: TokenSigningKeys, clock: FrozenClock, typ: str | None) -> None:
    assert "typ" in str(refused(signed(keys, good_claims(clock), typ=typ), keys, clock))


@pytest.mark.parametrize("kid", [None, "unknown", 7])
def test_unknown_or_missing_kid_is_refused(keys: TokenSigningKeys, clock: FrozenClock, kid: Any) -> None:
    assert "unknown key id" in str(refused(signed(keys, good_claims(clock), kid=kid), keys, clock))


def test_signature_by_another_key_is_refused(keys: TokenSigningKeys, clock: FrozenClock) -> None:
    other = OKPKey.generate_key("Ed25519")
    header = {"alg": "Ed25519", "typ": "at+jwt", "kid": keys.active.kid}
    token = forge(header, good_claims(clock), other.private_key.sign)
    assert "signature" in str(refused(token, keys, clock))


def test_tampered_claims_are_refused(keys: TokenSigningKeys, clock: FrozenClock) -> None:
    token = signed(keys, good_claims(clock))
    head, _, sig = token.split(".")
    forged = b64(json.dumps(good_claims(clock, sub="spiffe://acme.test/agent/root")).encode())
    refused(f"{head}.{forged}.{sig}", keys, clock)


def test_token_of_another_deployment_key_is_refused(clock: FrozenClock, keys: TokenSigningKeys) -> None:
    other = TokenSigningKeys.generate(clock.now())
    issued = issue_access_token(other, agent_id=AGENT, jkt=JKT, trust_domain=TD, now=clock.now())
    refused(issued.token, keys, clock)


# -- trust domain, subject ------------------------------------------------------------------


def test_token_of_another_trust_domain_is_refused(keys: TokenSigningKeys, clock: FrozenClock) -> None:
    issued = issue_access_token(
        keys, agent_id="spiffe://other.test/agent/bot", jkt=JKT, trust_domain="other.test", now=clock.now()
    )
    assert "trust domain" in str(refused(issued.token, keys, clock))


def test_wrong_audience_is_refused(keys: TokenSigningKeys, clock: FrozenClock) -> None:
    for aud in ["urn:tether:other.test", ["urn:tether:acme.test"], None]:
        assert "audience" in str(refused(signed(keys, good_claims(clock, aud=aud)), keys, clock))


@pytest.mark.parametrize(
    "sub",
    [
        "spiffe://other.test/agent/bot",
        "spiffe://acme.test/operator/bot",
        "spiffe://acme.test/agent/",
        "spiffe://acme.test/agent/..",
        "spiffe://acme.test/agent/bot/extra",
        "bot",
        None,
        42,
    ],
)
def test_subject_must_be_an_agent_of_this_trust_domain(
    keys: TokenSigningKeys, clock: FrozenClock, sub: Any
) -> None:
    refused(signed(keys, good_claims(clock, sub=sub)), keys, clock)


def test_parse_agent_id_returns_the_name() -> None:
    assert parse_agent_id(AGENT, trust_domain=TD) == "bot"
    with pytest.raises(AuthenticationError) as info:
        parse_agent_id(AGENT, trust_domain="other.test", code="invalid_client")
    assert info.value.code == "invalid_client"


# -- time ----------------------------------------------------------------------------------


def test_expired_token_is_refused_after_the_leeway(keys: TokenSigningKeys, clock: FrozenClock) -> None:
    issued = issue_access_token(keys, agent_id=AGENT, jkt=JKT, trust_domain=TD, now=clock.now())
    clock.advance(600 + 4)
    verify_access_token(issued.token, keys=keys, trust_domain=TD, now=clock.now())
    clock.advance(1)
    assert "expired" in str(refused(issued.token, keys, clock))


@pytest.mark.parametrize("field", ["nbf", "iat"])
def test_token_not_yet_valid_is_refused(keys: TokenSigningKeys, clock: FrozenClock, field: str) -> None:
    now = int(clock.now().timestamp())
    claims = good_claims(clock, **{field: now + 6})
    assert "not yet valid" in str(refused(signed(keys, claims), keys, clock))
    verify_access_token(
        signed(keys, good_claims(clock, **{field: now + 5})), keys=keys, trust_domain=TD, now=clock.now()
    )


def test_lifetime_beyond_the_maximum_is_refused(keys: TokenSigningKeys, clock: FrozenClock) -> None:
    now = int(clock.now().timestamp())
    assert "lifetime" in str(refused(signed(keys, good_claims(clock, exp=now + 3601)), keys, clock))


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": None},
        {"iat": None},
        {"exp": True},
        {"nbf": True},
        {"exp": "9999999999"},
        {"iat": 1.5},
        {"exp": -1},
        {"exp": 10**20},
    ],
)
def test_missing_or_odd_times_are_refused(
    keys: TokenSigningKeys, clock: FrozenClock, changes: dict[str, Any]
) -> None:
    refused(signed(keys, good_claims(clock, **changes)), keys, clock)


# -- binding and identity ---------------------------------------------------------------------


@pytest.mark.parametrize("cnf", [None, {}, {"jkt": ""}, {"jkt": "x" * 44}, "jkt", {"x5t#S256": JKT}])
def test_token_without_key_binding_is_refused(keys: TokenSigningKeys, clock: FrozenClock, cnf: Any) -> None:
    assert "cnf.jkt" in str(refused(signed(keys, good_claims(clock, cnf=cnf)), keys, clock))


@pytest.mark.parametrize("jti", [None, "", 5, "x" * 257])
def test_token_without_a_jti_is_refused(keys: TokenSigningKeys, clock: FrozenClock, jti: Any) -> None:
    refused(signed(keys, good_claims(clock, jti=jti)), keys, clock)


# -- size and shape ---------------------------------------------------------------------------


def test_oversized_token_is_refused(keys: TokenSigningKeys, clock: FrozenClock) -> None:
    token = signed(keys, good_claims(clock, pad="x" * 8200))
    assert len(token) > 8 * 1024
    assert "larger than" in str(refused(token, keys, clock))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc.def",
        "a.b.c.d",
        "..",
        "!!!.e30.c2ln",
        f"{b64(b'[1, 2]')}.e30.c2ln",
        f"{b64(b'not json')}.e30.c2ln",
    ],
)
def test_malformed_token_is_refused(keys: TokenSigningKeys, clock: FrozenClock, token: str) -> None:
    refused(token, keys, clock)


@pytest.mark.parametrize("claims", [[1, 2], "text", 42])
def test_signed_non_object_claims_are_refused(
    keys: TokenSigningKeys, clock: FrozenClock, claims: Any
) -> None:
    assert "malformed" in str(refused(signed(keys, claims), keys, clock))


def test_peek_claims_checks_size_and_shape_with_the_callers_code() -> None:
    with pytest.raises(AuthenticationError) as info:
        peek_claims("a.b", code="invalid_client")
    assert info.value.code == "invalid_client"
    with pytest.raises(AuthenticationError):
        peek_claims(f"e30.{b64(b'[1]')}.c2ln")
    with pytest.raises(AuthenticationError):
        peek_claims("e30." + "x" * 9000 + ".c2ln")
