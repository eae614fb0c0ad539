"""Client assertions (RFC 7523 private_key_jwt): short-lived, single-use, signed by the agent's key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from joserfc.jwk import ECKey, OKPKey

from tether.clock import FrozenClock
from tether.crypto.jose import PublicKey, generate_private_jwk, parse_public_jwk, sign_jws
from tether.errors import AuthenticationError
from tether.identity.assertions import ClientAssertion, peek_issuer, verify_client_assertion
from tether.sdk._signer import Signer

AGENT = "spiffe://acme.test/agent/bot"
AUD = "https://tether.test/v1/auth/token"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: Any, sign: Callable[[bytes], bytes] | None) -> str:
    """A compact JWS made by hand, so that tests can craft what no library would sign."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = sign(signing_input.encode()) if sign is not None else b""
    return f"{signing_input}.{b64(signature)}"


def pub(key: OKPKey | ECKey) -> PublicKey:
    return parse_public_jwk(key.as_dict(private=False))


@pytest.fixture
def key() -> OKPKey:
    return OKPKey.generate_key("Ed25519")


def make(key: OKPKey, clock: FrozenClock, *, header: dict[str, Any] | None = None, **changes: Any) -> str:
    now = int(clock.now().timestamp())
    claims: dict[str, Any] = {
        "iss": AGENT,
        "sub": AGENT,
        "aud": AUD,
        "iat": now,
        "exp": now + 60,
        "jti": "a-1",
    }
    claims.update(changes)
    head = {"alg": "Ed25519", "typ": "JWT", "kid": key.thumbprint(), **(header or {})}
    return forge(
        {k: v for k, v in head.items() if v is not None},
        {k: v for k, v in claims.items() if v is not None},
        key.private_key.sign,
    )


def verify(assertion: str, keys: list[PublicKey], clock: FrozenClock, **kwargs: Any) -> Any:
    args: dict[str, Any] = {"audience": AUD, "now": clock.now(), **kwargs}
    return verify_client_assertion(assertion, agent_keys=keys, **args)


def assert_accepted(
    accepted: ClientAssertion, key: OKPKey | ECKey, clock: FrozenClock, *, jti: str = "a-1"
) -> None:
    """What :func:`make` (or a test's own claims) said: the agent, the signing key, jti and exp."""
    assert accepted.agent_id == AGENT
    assert accepted.kid == key.thumbprint()
    assert accepted.jti == jti
    assert accepted.expires_at.timestamp() == int(clock.now().timestamp()) + 60


def refused(assertion: str, keys: list[PublicKey], clock: FrozenClock, **kwargs: Any) -> str:
    with pytest.raises(AuthenticationError) as info:
        verify(assertion, keys, clock, **kwargs)
    assert info.value.code == "invalid_client"
    for part in [assertion, *assertion.split(".")]:
        if len(part) >= 8:  # no assertion, claims or signature in the message
            assert part not in str(info.value)
    return str(info.value)


# -- the good case ------------------------------------------------------------------------------


def test_valid_assertion_names_the_agent_and_its_key(key: OKPKey, clock: FrozenClock) -> None:
    result = verify(make(key, clock), [pub(key)], clock)
    assert result.agent_id == AGENT
    assert result.jti == "a-1"
    assert result.kid == key.thumbprint()
    assert result.expires_at == clock.now() + timedelta(seconds=60)
    assert result.replay_key == hashlib.sha256(b"assertion\0" + AGENT.encode() + b"\0a-1").digest()


def test_sdk_assertions_verify(clock: FrozenClock) -> None:
    signer = Signer(generate_private_jwk("P-256"))
    assertion = signer.client_assertion(AGENT, AUD, int(clock.now().timestamp()))
    assert peek_issuer(assertion) == AGENT
    assert verify(assertion, [signer.public], clock).kid == signer.public.kid


def test_audience_may_be_a_list_and_several_may_be_accepted(key: OKPKey, clock: FrozenClock) -> None:
    assert_accepted(
        verify(make(key, clock, aud=["https://elsewhere.test", AUD]), [pub(key)], clock), key, clock
    )
    accepted = verify(
        make(key, clock, aud="urn:tether:acme.test"),
        [pub(key)],
        clock,
        audience=[AUD, "urn:tether:acme.test"],
    )
    assert_accepted(accepted, key, clock)


# -- peek ---------------------------------------------------------------------------------------


def test_peek_issuer_reads_iss_without_verifying(key: OKPKey, clock: FrozenClock) -> None:
    other = OKPKey.generate_key("Ed25519")
    assert peek_issuer(make(other, clock)) == AGENT


@pytest.mark.parametrize("iss", [None, 5, "bot", "https://issuer.test", "spiffe://acme.test/operator/x"])
def test_peek_issuer_refuses_what_is_no_agent_id(key: OKPKey, clock: FrozenClock, iss: Any) -> None:
    with pytest.raises(AuthenticationError) as info:
        peek_issuer(make(key, clock, iss=iss))
    assert info.value.code == "invalid_client"


@pytest.mark.parametrize(
    "assertion", ["", "a.b", "!!!.e30.c2ln", "e30." + b64(b"[1]") + ".c2ln", "e30." + "x" * 9000 + ".c2ln"]
)
def test_peek_issuer_refuses_malformed_or_oversized(assertion: str) -> None:
    with pytest.raises(AuthenticationError) as info:
        peek_issuer(assertion)
    assert info.value.code == "invalid_client"


# -- keys and algorithms ------------------------------------------------------------------------


def test_kid_selects_the_key(key: OKPKey, clock: FrozenClock) -> None:
    other = OKPKey.generate_key("Ed25519")
    assert verify(make(key, clock), [pub(other), pub(key)], clock).kid == key.thumbprint()


def test_unknown_kid_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    other = OKPKey.generate_key("Ed25519")
    assert "key id" in refused(make(key, clock), [pub(other)], clock)
    assert "kid" in refused(make(key, clock, header={"kid": 7}), [pub(key)], clock)


def test_without_kid_each_key_is_tried(key: OKPKey, clock: FrozenClock) -> None:
    other = OKPKey.generate_key("Ed25519")
    ec = ECKey.generate_key("P-256")
    assertion = make(key, clock, header={"kid": None})
    assert verify(assertion, [pub(ec), pub(other), pub(key)], clock).kid == key.thumbprint()


def test_signature_by_another_key_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    thief = OKPKey.generate_key("Ed25519")
    # Claiming the agent's kid, signed by another key:
    forged = make(thief, clock, header={"kid": key.thumbprint()})
    assert "signature" in refused(forged, [pub(key)], clock)
    # No kid at all:
    assert "signature" in refused(make(thief, clock, header={"kid": None}), [pub(key)], clock)


def test_agent_without_keys_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    assert "no active keys" in refused(make(key, clock), [], clock)


def test_alg_none_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    now = int(clock.now().timestamp())
    claims = {"iss": AGENT, "sub": AGENT, "aud": AUD, "exp": now + 60, "jti": "x"}
    for signature in (None, lambda _: b"sig"):
        refused(forge({"alg": "none", "kid": key.thumbprint()}, claims, signature), [pub(key)], clock)


def test_hs256_keyed_with_the_public_key_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    now = int(clock.now().timestamp())
    claims = {"iss": AGENT, "sub": AGENT, "aud": AUD, "exp": now + 60, "jti": "x"}
    for secret in (
        base64.urlsafe_b64decode(pub(key).jwk["x"] + "="),
        json.dumps(dict(pub(key).jwk)).encode(),
    ):
        assertion = forge(
            {"alg": "HS256"}, claims, lambda m, s=secret: hmac.new(s, m, hashlib.sha256).digest()
        )
        assert "not allowed" in refused(assertion, [pub(key)], clock)


@pytest.mark.parametrize("alg", ["ES256", "RS256", "HS512", None])
def test_algorithm_outside_the_allow_list_or_not_fitting_the_key_is_refused(
    key: OKPKey, clock: FrozenClock, alg: Any
) -> None:
    refused(make(key, clock, header={"alg": alg}), [pub(key)], clock)


def test_es256_fits_a_p256_key(clock: FrozenClock) -> None:
    ec = ECKey.generate_key("P-256")
    now = int(clock.now().timestamp())
    claims = {"iss": AGENT, "sub": AGENT, "aud": AUD, "exp": now + 60, "jti": "x"}
    accepted = verify(sign_jws({"alg": "ES256", "kid": ec.thumbprint()}, claims, ec), [pub(ec)], clock)
    assert_accepted(accepted, ec, clock, jti="x")


@pytest.mark.parametrize("typ", ["at+jwt", "dpop+jwt", "JOSE+JSON", 5])
def test_other_token_types_are_refused(key: OKPKey, clock: FrozenClock, typ: Any) -> None:
    assert "typ" in refused(make(key, clock, header={"typ": typ}), [pub(key)], clock)


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "client-authentication+jwt"])
def test_assertion_types_are_accepted(key: OKPKey, clock: FrozenClock, typ: Any) -> None:
    assert_accepted(verify(make(key, clock, header={"typ": typ}), [pub(key)], clock), key, clock)


# -- iss, sub, aud ------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", [None, "spiffe://acme.test/agent/other", AGENT.upper()])
def test_iss_must_equal_sub(key: OKPKey, clock: FrozenClock, sub: Any) -> None:
    assert "sub" in refused(make(key, clock, sub=sub), [pub(key)], clock)


@pytest.mark.parametrize("iss", [None, "bot", "spiffe://acme.test/operator/bot"])
def test_iss_must_be_an_agent_id(key: OKPKey, clock: FrozenClock, iss: Any) -> None:
    refused(make(key, clock, iss=iss, sub=iss), [pub(key)], clock)


@pytest.mark.parametrize(
    "aud", [None, "https://tether.test/v1/auth/token/", "https://evil.test", [], [AUD + "x"], 5, [5]]
)
def test_wrong_audience_is_refused(key: OKPKey, clock: FrozenClock, aud: Any) -> None:
    assert "aud" in refused(make(key, clock, aud=aud), [pub(key)], clock)


def test_no_configured_audience_refuses_everything(key: OKPKey, clock: FrozenClock) -> None:
    assert "no token endpoint audience" in refused(make(key, clock, aud=[]), [pub(key)], clock, audience=[])


# -- time -------------------------------------------------------------------------------------


def test_expired_assertion_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    assertion = make(key, clock)
    clock.advance(60 + 4)
    verify(assertion, [pub(key)], clock)
    clock.advance(1)
    assert "expired" in refused(assertion, [pub(key)], clock)


def test_missing_exp_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    assert "exp" in refused(make(key, clock, exp=None), [pub(key)], clock)


def test_too_long_lived_assertion_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    now = int(clock.now().timestamp())
    verify(make(key, clock, iat=None, exp=now + 305), [pub(key)], clock)
    assert "longer" in refused(make(key, clock, iat=None, exp=now + 306), [pub(key)], clock)
    assert "longer" in refused(make(key, clock, exp=now + 120), [pub(key)], clock, max_lifetime_seconds=60)


def test_lifetime_from_iat_is_bounded_too(key: OKPKey, clock: FrozenClock) -> None:
    # Valid for only 100 more seconds, but minted to live 500: a long-lived credential.
    now = int(clock.now().timestamp())
    assert "longer" in refused(make(key, clock, iat=now - 400, exp=now + 100), [pub(key)], clock)


def test_not_yet_valid_assertion_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    now = int(clock.now().timestamp())
    assert "nbf" in refused(make(key, clock, nbf=now + 6), [pub(key)], clock)
    verify(make(key, clock, nbf=now + 5), [pub(key)], clock)
    assert "iat" in refused(make(key, clock, iat=now + 6), [pub(key)], clock)


@pytest.mark.parametrize(
    "changes", [{"exp": "soon"}, {"exp": True}, {"iat": "now"}, {"nbf": [1]}, {"exp": float("inf")}]
)
def test_odd_times_are_refused(key: OKPKey, clock: FrozenClock, changes: dict[str, Any]) -> None:
    refused(make(key, clock, **changes), [pub(key)], clock)


# -- jti and replay key -------------------------------------------------------------------------


@pytest.mark.parametrize("jti", [None, "", 5, "x" * 257])
def test_jti_is_required(key: OKPKey, clock: FrozenClock, jti: Any) -> None:
    assert "jti" in refused(make(key, clock, jti=jti), [pub(key)], clock)


def test_replay_key_is_stable_for_the_same_jti(key: OKPKey, clock: FrozenClock) -> None:
    now = int(clock.now().timestamp())
    first = verify(make(key, clock, jti="same"), [pub(key)], clock)
    again = verify(make(key, clock, jti="same", exp=now + 30), [pub(key)], clock)
    other = verify(make(key, clock, jti="other"), [pub(key)], clock)
    assert first.replay_key == again.replay_key
    assert first.replay_key != other.replay_key
    another_agent = "spiffe://acme.test/agent/bot2"
    theirs = verify(make(key, clock, jti="same", iss=another_agent, sub=another_agent), [pub(key)], clock)
    assert theirs.replay_key != first.replay_key


# -- size and shape ---------------------------------------------------------------------------


def test_oversized_assertion_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    assert "larger than" in refused(make(key, clock, pad="x" * 8200), [pub(key)], clock)


@pytest.mark.parametrize("assertion", ["", "a.b", "a.b.c.d", "!!!.e30.c2ln", f"{b64(b'[1]')}.e30.c2ln"])
def test_malformed_assertion_is_refused(key: OKPKey, clock: FrozenClock, assertion: str) -> None:
    refused(assertion, [pub(key)], clock)


@pytest.mark.parametrize("claims", [[1], "text", 3])
def test_signed_non_object_claims_are_refused(key: OKPKey, clock: FrozenClock, claims: Any) -> None:
    assertion = forge({"alg": "Ed25519", "kid": key.thumbprint()}, claims, key.private_key.sign)
    assert "malformed" in refused(assertion, [pub(key)], clock)
