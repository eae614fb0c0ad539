"""DPoP proofs (RFC 9449): one request, one moment, one use, the key the token is bound to."""

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
from tether.crypto.jose import generate_private_jwk, sign_jws
from tether.errors import AuthenticationError
from tether.identity.dpop import access_token_hash, normalize_htu, verify_dpop_proof
from tether.identity.signing import TokenSigningKeys
from tether.identity.tokens import issue_access_token, verify_access_token
from tether.sdk._signer import Signer

URL = "https://tether.test/v1/tasks"
TOKEN = "eyJhbGciOiJFZDI1NTE5In0.e30.c2ln"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: Any, sign: Callable[[bytes], bytes] | None) -> str:
    """A compact JWS made by hand, so that tests can craft what no library would sign."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = sign(signing_input.encode()) if sign is not None else b""
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture
def key() -> OKPKey:
    return OKPKey.generate_key("Ed25519")


def public(key: OKPKey | ECKey) -> dict[str, str]:
    return {k: str(v) for k, v in key.as_dict(private=False).items()}


def make_proof(
    key: OKPKey,
    clock: FrozenClock,
    *,
    sign_with: OKPKey | None = None,
    header: dict[str, Any] | None = None,
    **changes: Any,
) -> str:
    claims: dict[str, Any] = {
        "jti": "proof-1",
        "htm": "GET",
        "htu": URL,
        "iat": int(clock.now().timestamp()),
        "ath": access_token_hash(TOKEN),
    }
    claims.update(changes)
    head = {"alg": "Ed25519", "typ": "dpop+jwt", "jwk": public(key), **(header or {})}
    return forge(
        {k: v for k, v in head.items() if v is not None},
        {k: v for k, v in claims.items() if v is not None},
        (sign_with or key).private_key.sign,
    )


def verify(proof: str, clock: FrozenClock, **kwargs: Any) -> Any:
    args: dict[str, Any] = {"method": "GET", "url": URL, "now": clock.now(), "access_token": TOKEN, **kwargs}
    return verify_dpop_proof(proof, **args)


def refused(proof: str, clock: FrozenClock, *, code: str = "invalid_dpop_proof", **kwargs: Any) -> str:
    with pytest.raises(AuthenticationError) as info:
        verify(proof, clock, **kwargs)
    assert info.value.code == code
    for part in [proof, *proof.split(".")]:
        if len(part) >= 8:  # no proof, claims, key or signature in the message
            assert part not in str(info.value)
    return str(info.value)


# -- the good case --------------------------------------------------------------------------


def test_valid_proof_returns_key_and_replay_record(key: OKPKey, clock: FrozenClock) -> None:
    result = verify(make_proof(key, clock), clock, expected_jkt=key.thumbprint())
    assert result.jkt == key.thumbprint()
    assert result.public_key.kid == key.thumbprint()
    assert result.jti == "proof-1"
    assert result.iat == clock.now()
    assert result.replay_expires_at == clock.now() + timedelta(seconds=300)
    assert result.replay_key == hashlib.sha256(b"dpop\0" + key.thumbprint().encode() + b"\0proof-1").digest()


def test_es256_proof_is_accepted(clock: FrozenClock) -> None:
    ec = ECKey.generate_key("P-256")
    claims = {"jti": "p", "htm": "GET", "htu": URL, "iat": int(clock.now().timestamp())}
    proof = sign_jws({"alg": "ES256", "typ": "dpop+jwt", "jwk": public(ec)}, claims, ec)
    assert verify(proof, clock, access_token=None).jkt == ec.thumbprint()


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated:joserfc.errors.SecurityWarning")
def test_eddsa_alias_is_accepted_from_clients(key: OKPKey, clock: FrozenClock) -> None:
    assert verify(make_proof(key, clock, header={"alg": "EdDSA"}), clock).jkt == key.thumbprint()


def test_sdk_proofs_verify(clock: FrozenClock) -> None:
    signer = Signer(generate_private_jwk())
    now = int(clock.now().timestamp())
    proof = signer.proof("post", "https://Tether.TEST:443/v1/tasks?page=2", now, access_token=TOKEN)
    result = verify(proof, clock, method="POST", expected_jkt=signer.public.kid)
    assert result.jkt == signer.public.kid
    assert (
        verify(signer.proof("POST", URL, now), clock, method="POST", access_token=None).jkt
        == signer.public.kid
    )


def test_access_token_and_proof_together(key: OKPKey, clock: FrozenClock) -> None:
    keys = TokenSigningKeys.generate(clock.now())
    issued = issue_access_token(
        keys,
        agent_id="spiffe://acme.test/agent/bot",
        jkt=key.thumbprint(),
        trust_domain="acme.test",
        now=clock.now(),
    )
    claims = verify_access_token(issued.token, keys=keys, trust_domain="acme.test", now=clock.now())
    proof = make_proof(key, clock, ath=access_token_hash(issued.token))
    verify(proof, clock, access_token=issued.token, expected_jkt=claims.jkt)
    # The same token presented with a proof made by another key: the token is the problem.
    thief = OKPKey.generate_key("Ed25519")
    stolen = make_proof(thief, clock, ath=access_token_hash(issued.token))
    assert "another key" in refused(
        stolen, clock, code="invalid_token", access_token=issued.token, expected_jkt=claims.jkt
    )


# -- header: typ, alg, jwk ----------------------------------------------------------------------


@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt", "DPOP+JWT", "application/dpop+jwt"])
def test_wrong_typ_is_refused(key: OKPKey, clock: FrozenClock, typ: str | None) -> None:
    assert "typ" in refused(make_proof(key, clock, header={"typ": typ}), clock)


def test_alg_none_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    header = {"alg": "none", "typ": "dpop+jwt", "jwk": public(key)}
    claims = {
        "jti": "p",
        "htm": "GET",
        "htu": URL,
        "iat": int(clock.now().timestamp()),
        "ath": access_token_hash(TOKEN),
    }
    refused(forge(header, claims, None), clock)
    assert "not allowed" in refused(forge(header, claims, lambda _: b"sig"), clock)


def test_hs256_keyed_with_the_public_key_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    secret = base64.urlsafe_b64decode(public(key)["x"] + "=")
    header = {"alg": "HS256", "typ": "dpop+jwt", "jwk": public(key)}
    claims = {
        "jti": "p",
        "htm": "GET",
        "htu": URL,
        "iat": int(clock.now().timestamp()),
        "ath": access_token_hash(TOKEN),
    }
    proof = forge(header, claims, lambda m: hmac.new(secret, m, hashlib.sha256).digest())
    assert "not allowed" in refused(proof, clock)


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "ES384", 5])
def test_algorithm_outside_the_allow_list_or_not_fitting_the_key_is_refused(
    key: OKPKey, clock: FrozenClock, alg: Any
) -> None:
    assert "not allowed" in refused(make_proof(key, clock, header={"alg": alg}), clock)


def test_algorithm_is_checked_before_the_key_is_parsed(key: OKPKey, clock: FrozenClock) -> None:
    # An RSA jwk is no agent key; with RS256 the algorithm is what the message names.
    assert "DPoP proof algorithm" in refused(make_proof(key, clock, header={"alg": "RS256"}), clock)


def test_missing_jwk_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    assert "jwk" in refused(make_proof(key, clock, header={"jwk": None}), clock)


def test_private_jwk_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    private = {k: str(v) for k, v in key.as_dict(private=True).items()}
    message = refused(make_proof(key, clock, header={"jwk": private}), clock)
    assert "private" in message
    assert private["d"] not in message


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "oct", "k": "c2VjcmV0"},
        {"kty": "OKP", "crv": "X25519", "x": "AAAA"},
        {"kty": "OKP", "crv": "Ed25519", "x": "short"},
        "a string",
    ],
)
def test_unsupported_or_malformed_jwk_is_refused(key: OKPKey, clock: FrozenClock, jwk: Any) -> None:
    refused(make_proof(key, clock, header={"jwk": jwk}), clock)


def test_signature_by_another_key_than_the_header_jwk_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    other = OKPKey.generate_key("Ed25519")
    assert "signature" in refused(make_proof(key, clock, sign_with=other), clock)


# -- claims: jti, htm, htu ------------------------------------------------------------------


@pytest.mark.parametrize("jti", [None, "", 7, "x" * 257])
def test_bad_jti_is_refused(key: OKPKey, clock: FrozenClock, jti: Any) -> None:
    assert "jti" in refused(make_proof(key, clock, jti=jti), clock)


def test_jti_of_256_characters_is_accepted(key: OKPKey, clock: FrozenClock) -> None:
    proof = verify(make_proof(key, clock, jti="x" * 256), clock)
    assert proof.jti == "x" * 256
    assert proof.jkt == key.thumbprint()


@pytest.mark.parametrize(("htm", "method"), [("POST", "GET"), ("get", "GET"), (None, "GET"), ("GET", "get")])
def test_proof_for_another_method_is_refused(key: OKPKey, clock: FrozenClock, htm: Any, method: str) -> None:
    refused(make_proof(key, clock, htm=htm), clock, method=method)


@pytest.mark.parametrize(
    ("htu", "url"),
    [
        (URL, URL + "?page=2"),
        (URL + "?page=1", URL + "?page=2#frag"),
        ("HTTPS://TETHER.test/v1/tasks", URL),
        ("https://tether.test:443/v1/tasks", URL),
        (URL, "https://Tether.Test:443/v1/tasks"),
        ("http://tether.test:80/v1/tasks", "http://tether.test/v1/tasks"),
        ("https://tether.test", "https://tether.test/"),
    ],
)
def test_equivalent_urls_match(key: OKPKey, clock: FrozenClock, htu: str, url: str) -> None:
    assert verify(make_proof(key, clock, htu=htu), clock, url=url).jkt == key.thumbprint()


@pytest.mark.parametrize(
    ("htu", "url"),
    [
        (URL, "https://tether.test/v1/tasks/"),
        (URL, "https://tether.test/v1/task"),
        (URL, "https://tether.test/V1/tasks"),
        (URL, "https://tether.test/v1/tasks/../tasks"),
        (URL, "https://other.test/v1/tasks"),
        (URL, "http://tether.test/v1/tasks"),
        (URL, "https://tether.test:8443/v1/tasks"),
        ("/v1/tasks", URL),
        ("tether.test/v1/tasks", URL),
        ("ftp://tether.test/v1/tasks", URL),
        (None, URL),
    ],
)
def test_proof_for_another_url_is_refused(key: OKPKey, clock: FrozenClock, htu: Any, url: str) -> None:
    refused(make_proof(key, clock, htu=htu), clock, url=url)


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("HTTPS://Example.COM:443/A/b?q=1#f", "https://example.com/A/b"),
        ("http://example.com:8080/x", "http://example.com:8080/x"),
        ("https://example.com:80/x", "https://example.com:80/x"),
        ("https://[::1]:443/x", "https://[::1]/x"),
        ("https://[::1]:9000/x", "https://[::1]:9000/x"),
        ("https://example.com", "https://example.com/"),
        ("https://example.com/a%2Fb", "https://example.com/a%2Fb"),
    ],
)
def test_normalize_htu(url: str, normal: str) -> None:
    assert normalize_htu(url) == normal


@pytest.mark.parametrize(
    "url",
    [
        "/relative",
        "//example.com/x",
        "example.com/x",
        "ftp://example.com/x",
        "https://user:pw@example.com/x",
        "https://example.com:99999/x",
        "https://example.com:port/x",
        "https:///x",
        "https://exa mple.com/x",
        "https://example.com/\u00e9",
    ],
)
def test_normalize_htu_refuses_what_is_no_absolute_http_url(url: str) -> None:
    for _ in range(2):  # answers are remembered, refusals never are
        with pytest.raises(AuthenticationError) as info:
            normalize_htu(url)
        assert info.value.code == "invalid_dpop_proof"


@pytest.mark.parametrize("value", [None, b"https://example.com/", ["https://example.com/"]])
def test_normalize_htu_refuses_what_is_no_string(value: object) -> None:
    with pytest.raises(AuthenticationError):
        normalize_htu(value)  # type: ignore[arg-type]


# -- time -------------------------------------------------------------------------------------


def test_proof_too_old_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    now = int(clock.now().timestamp())
    verify(make_proof(key, clock, iat=now - 300), clock)
    assert "too old" in refused(make_proof(key, clock, iat=now - 301), clock)
    verify(make_proof(key, clock, iat=now - 60), clock, max_age_seconds=60)
    refused(make_proof(key, clock, iat=now - 61), clock, max_age_seconds=60)


def test_proof_from_the_future_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    now = int(clock.now().timestamp())
    verify(make_proof(key, clock, iat=now + 5), clock)
    assert "future" in refused(make_proof(key, clock, iat=now + 6), clock)


@pytest.mark.parametrize("iat", [None, "1767225600", 1767225600.5, True, -5])
def test_missing_or_non_integer_iat_is_refused(key: OKPKey, clock: FrozenClock, iat: Any) -> None:
    assert "iat" in refused(make_proof(key, clock, iat=iat), clock)


# -- ath and key binding ------------------------------------------------------------------------


def test_ath_is_required_with_an_access_token(key: OKPKey, clock: FrozenClock) -> None:
    assert "ath" in refused(make_proof(key, clock, ath=None), clock)


@pytest.mark.parametrize("ath", [access_token_hash(TOKEN + "x"), "", 5, access_token_hash(TOKEN).upper()])
def test_ath_mismatch_is_refused(key: OKPKey, clock: FrozenClock, ath: Any) -> None:
    assert "ath" in refused(make_proof(key, clock, ath=ath), clock)


def test_ath_without_an_access_token_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    # A proof made for a resource request must not double as a token-endpoint proof.
    assert "ath" in refused(make_proof(key, clock), clock, access_token=None)
    verify(make_proof(key, clock, ath=None), clock, access_token=None)


def test_ath_is_the_base64url_sha256_of_the_token() -> None:
    assert access_token_hash(TOKEN) == b64(hashlib.sha256(TOKEN.encode()).digest())


def test_proof_by_a_key_other_than_the_token_binding_is_an_invalid_token(
    key: OKPKey, clock: FrozenClock
) -> None:
    other = OKPKey.generate_key("Ed25519").thumbprint()
    refused(make_proof(key, clock), clock, code="invalid_token", expected_jkt=other)


# -- replay key -------------------------------------------------------------------------------


def test_replay_key_is_stable_per_key_and_jti(key: OKPKey, clock: FrozenClock) -> None:
    first = verify(make_proof(key, clock, jti="a"), clock)
    # A different proof (later iat, other URL) with the same jti: same replay key.
    again = verify(make_proof(key, clock, jti="a", iat=int(clock.now().timestamp()) - 10), clock)
    other_jti = verify(make_proof(key, clock, jti="b"), clock)
    other_key = OKPKey.generate_key("Ed25519")
    other_holder = verify(make_proof(other_key, clock, jti="a"), clock)
    assert first.replay_key == again.replay_key
    assert first.replay_key != other_jti.replay_key
    assert first.replay_key != other_holder.replay_key


def test_replay_record_outlives_the_acceptance_window(key: OKPKey, clock: FrozenClock) -> None:
    now = int(clock.now().timestamp())
    result = verify(make_proof(key, clock, iat=now + 5), clock)
    # Accepted until iat + max_age, so it must be remembered that long.
    assert result.replay_expires_at == clock.now() + timedelta(seconds=305)


# -- size and shape ---------------------------------------------------------------------------


def test_oversized_proof_is_refused(key: OKPKey, clock: FrozenClock) -> None:
    proof = make_proof(key, clock, pad="x" * 8200)
    assert "larger than" in refused(proof, clock)


@pytest.mark.parametrize(
    "proof",
    ["", "abc.def", "a.b.c.d", "!!!.e30.c2ln", f"{b64(b'[1]')}.e30.c2ln", f"{b64(b'null')}.e30.c2ln"],
)
def test_malformed_proof_is_refused(clock: FrozenClock, proof: str) -> None:
    refused(proof, clock)


@pytest.mark.parametrize("claims", [[1], "text", None])
def test_signed_non_object_claims_are_refused(key: OKPKey, clock: FrozenClock, claims: Any) -> None:
    header = {"alg": "Ed25519", "typ": "dpop+jwt", "jwk": public(key)}
    assert "malformed" in refused(forge(header, claims, key.private_key.sign), clock)
