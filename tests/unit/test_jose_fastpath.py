"""The hot-path JOSE verifier: RFC test vectors, agreement with joserfc (the reference) on hostile
input, the one-parse JWS, and the verified-access-token cache (signature only; time still checked)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import ECDSA, SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256
from joserfc.jwk import ECKey, OKPKey

from tether.clock import FrozenClock
from tether.crypto.jose import (
    CompactJws,
    PublicKey,
    _reference_payload,
    _verified_payload,
    generate_private_jwk,
    parse_jws,
    parse_public_jwk,
    verify_jws,
)
from tether.errors import AuthenticationError, InvalidInputError
from tether.identity.dpop import access_token_hash, verify_dpop_proof
from tether.identity.signing import TokenSigningKey, TokenSigningKeys
from tether.identity.tokens import AccessTokenCache, issue_access_token, verify_access_token

TD = "acme.test"
AGENT = f"spiffe://{TD}/agent/bot"
JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- RFC test vectors ------------------------------------------------------------------------

# RFC 8037 Appendix A.1-A.5: the Ed25519 key, its RFC 7638 thumbprint and a JWS ("EdDSA").
RFC8037_JWK = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC8037_JWS = (
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
    ".hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)

# RFC 7515 Appendix A.3: an ES256 JWS (verification only: ECDSA signatures are randomised).
RFC7515_A3_JWK = {
    "kty": "EC",
    "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
}
RFC7515_A3_JWS = (
    "eyJhbGciOiJFUzI1NiJ9"
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
)

# RFC 7638 Section 3.1: the RSA example key and its thumbprint.
RFC7638_JWK = {
    "kty": "RSA",
    "e": "AQAB",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRX"
        "jBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaS"
        "qzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksIN"
        "HaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

# RFC 9449 Figure 2 (token request) and Figure 13 (resource request, with ath), their key's
# thumbprint (Section 6.1) and the access token of Section 7.1.
RFC9449_HEADER = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZ"
    "OXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIs"
    "ImNydiI6IlAtMjU2In19"
)
RFC9449_TOKEN_PROOF = (
    RFC9449_HEADER
    + ".eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3"
    "Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ"
    ".2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg"
)
RFC9449_RESOURCE_PROOF = (
    RFC9449_HEADER
    + ".eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy"
    "9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OU"
    "lpS0NBcWtzbVFFbyJ9"
    ".2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA"
)
RFC9449_ACCESS_TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
RFC9449_ATH = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


def test_rfc8037_ed25519_thumbprint_and_signature() -> None:
    key = parse_public_jwk(RFC8037_JWK)
    assert key.kid == RFC8037_THUMBPRINT
    assert key.verifier is not None
    parsed = parse_jws(RFC8037_JWS)
    assert _verified_payload(parsed, key.verifier, "EdDSA") == b"Example of Ed25519 signing"
    assert _reference_payload(RFC8037_JWS, key, "EdDSA") == b"Example of Ed25519 signing"
    # The signature verifies; the payload is no JSON object, so it is still no JWT of ours.
    with pytest.raises(AuthenticationError, match="malformed JWT claims"):
        verify_jws(RFC8037_JWS, key)
    tampered = RFC8037_JWS[:-2] + ("Ag" if not RFC8037_JWS.endswith("Ag") else "Aw")
    with pytest.raises(AuthenticationError, match="bad signature"):
        verify_jws(tampered, key)


# Ed25519's group order L (RFC 8032, 5.1): a signature's S must be below it.
_ED25519_L = 2**252 + 27742317777372353535851937790883648493


def test_ed25519_malleated_signature_is_refused() -> None:
    # S + L verifies the same equation; RFC 8032 requires S < L, and so do both verifiers.
    key = parse_public_jwk(RFC8037_JWK)
    assert key.verifier is not None
    h, p, s = RFC8037_JWS.split(".")
    raw = base64.urlsafe_b64decode(s + "==")
    big_s = int.from_bytes(raw[32:], "little") + _ED25519_L
    malleated = f"{h}.{p}.{b64(raw[:32] + big_s.to_bytes(32, 'little'))}"
    assert _verified_payload(parse_jws(malleated), key.verifier, "EdDSA") is None
    assert _reference_payload(malleated, key, "EdDSA") is None


def test_ed25519_key_of_small_order_verifies_nothing() -> None:
    # The identity point as a public key: with R the identity and S = 0, [S]B = R + [k]A holds for
    # every message, so OpenSSL (joserfc, the reference) accepts this forgery under that key. The
    # hot path's verifier (libsodium) refuses keys and R of small order: here it is stricter.
    identity = b64(b"\x01" + b"\x00" * 31)
    key = parse_public_jwk({"kty": "OKP", "crv": "Ed25519", "x": identity})
    assert key.verifier is not None
    h, p = b64(b'{"alg":"Ed25519"}'), b64(b'{"sub":"anyone"}')
    signature = b64(b"\x01" + b"\x00" * 63)  # R the identity, S = 0
    forged = f"{h}.{p}.{signature}"
    assert _reference_payload(forged, key, "Ed25519") == b'{"sub":"anyone"}'
    assert _verified_payload(parse_jws(forged), key.verifier, "Ed25519") is None
    with pytest.raises(AuthenticationError, match="bad signature"):
        verify_jws(forged, key)


def test_rfc7515_a3_es256_verifies() -> None:
    key = parse_public_jwk(RFC7515_A3_JWK)
    header, claims = verify_jws(RFC7515_A3_JWS, key, algorithms={"ES256"})
    assert header == {"alg": "ES256"}
    assert claims == {"iss": "joe", "exp": 1300819380, "http://example.com/is_root": True}
    head, _payload, signature = RFC7515_A3_JWS.split(".")
    other = b64(json.dumps({"iss": "eve", "exp": 1300819380}).encode())
    with pytest.raises(AuthenticationError, match="bad signature"):
        verify_jws(f"{head}.{other}.{signature}", key, algorithms={"ES256"})
    # ES256 is not an algorithm of an Ed25519 key, nor the other way round.
    with pytest.raises(AuthenticationError, match="not allowed"):
        verify_jws(RFC7515_A3_JWS, parse_public_jwk(RFC8037_JWK), algorithms={"ES256"})


def test_rfc7638_thumbprint() -> None:
    assert parse_public_jwk(RFC7638_JWK, allow_rsa=True).kid == RFC7638_THUMBPRINT


def test_rfc9449_proofs_verify_with_their_jkt_and_ath() -> None:
    token_request = verify_dpop_proof(
        RFC9449_TOKEN_PROOF,
        method="POST",
        url="https://server.example.com/token",
        now=_at(1562262616),
    )
    assert (token_request.jkt, token_request.jti) == (JKT, "-BwC3ESc6acc2lTc")
    assert access_token_hash(RFC9449_ACCESS_TOKEN) == RFC9449_ATH
    args: dict[str, Any] = {
        "method": "GET",
        "url": "https://resource.example.org/protectedresource",
        "now": _at(1562262618),
        "access_token": RFC9449_ACCESS_TOKEN,
        "expected_jkt": JKT,
    }
    assert verify_dpop_proof(RFC9449_RESOURCE_PROOF, **args).jti == "e1j3V_bKic8-LAEB"
    with pytest.raises(AuthenticationError, match="ath does not match"):
        verify_dpop_proof(RFC9449_RESOURCE_PROOF, **{**args, "access_token": "other"})
    with pytest.raises(AuthenticationError, match="another key") as info:
        verify_dpop_proof(RFC9449_RESOURCE_PROOF, **{**args, "expected_jkt": "x" * 43})
    assert info.value.code == "invalid_token"
    with pytest.raises(AuthenticationError, match="bad signature") as info:
        verify_dpop_proof(RFC9449_RESOURCE_PROOF[:-2] + "AA", **args)
    assert info.value.code == "invalid_dpop_proof"


# -- the fast path agrees with joserfc ----------------------------------------------------------


def _ed25519() -> tuple[OKPKey, PublicKey]:
    private = OKPKey.generate_key("Ed25519")
    return private, parse_public_jwk(private.as_dict(private=False))


def _sign(private: OKPKey, header_segment: str, payload_segment: str) -> str:
    signature = private.private_key.sign(f"{header_segment}.{payload_segment}".encode())  # type: ignore[union-attr]
    return f"{header_segment}.{payload_segment}.{b64(signature)}"


def _variants(private: OKPKey) -> dict[str, str]:
    """Well-signed and hostile compact JWSs that the two verifiers must judge alike."""
    payload = b64(b'{"sub":"x"}')

    def head(**members: Any) -> str:
        return b64(json.dumps({"alg": "Ed25519", **members}).encode())

    good = _sign(private, head(), payload)
    h, p, s = good.split(".")
    return {
        "good": good,
        "good EdDSA": _sign(private, b64(b'{"alg":"EdDSA"}'), payload),
        "typ and kid": _sign(private, head(typ="at+jwt", kid="k1"), payload),
        "b64 true": _sign(private, head(b64=True), payload),
        "b64 false": _sign(private, head(b64=False), payload),
        "b64 not a bool": _sign(private, head(b64="true"), payload),
        "unknown header": _sign(private, head(foo=1), payload),
        "kid not a string": _sign(private, head(kid=7), payload),
        "jku not a url": _sign(private, head(jku="file:///etc/passwd"), payload),
        "x5c not strings": _sign(private, head(x5c=[1]), payload),
        "jwk not an object": _sign(private, head(jwk="k"), payload),
        "header over 512": _sign(private, head(kid="k" * 400), payload),
        "padded header": _sign(private, h + "=" * (-len(h) % 4 or 4), payload),
        "padded payload": _sign(private, h, p + "=="),
        "payload with +": _sign(private, h, p.replace("-", "+").replace("_", "/") + "+"),
        "non-canonical payload": _sign(private, h, p[:-1] + chr(ord(p[-1]) + 1)),
        "padded signature": f"{h}.{p}.{s}==",
        "non-canonical signature": f"{h}.{p}.{s[:-1]}{'B' if s[-1] == 'A' else 'A'}",
        "signature too long": f"{h}.{p}.{s}{'A' * 1100}",
        "signature of 1 char more": f"{h}.{p}.{s}A",
        "other payload": f"{h}.{b64(b'{}')}.{s}",
        "empty signature bytes": f"{h}.{p}.AA",
        "whitespace in payload": _sign(private, h, p[:4] + "\n" + p[4:]),
    }


def test_fast_ed25519_verifier_agrees_with_joserfc_on_hostile_input() -> None:
    private, key = _ed25519()
    assert key.verifier is not None
    for name, token in _variants(private).items():
        parsed = parse_jws(token)
        alg = str(parsed.header["alg"])
        fast = _verified_payload(parsed, key.verifier, alg)
        reference = _reference_payload(token, key, alg)
        assert fast == reference, name
    assert _verified_payload(parse_jws(_variants(private)["good"]), key.verifier, "Ed25519") == b'{"sub":"x"}'


def test_fast_es256_verifier_agrees_with_joserfc() -> None:
    private = generate_private_key(SECP256R1())
    key = parse_public_jwk(ECKey.import_key(private.public_key()).as_dict(private=False))
    assert key.verifier is not None
    h, p = b64(b'{"alg":"ES256"}'), b64(b'{"sub":"x"}')
    r, s = decode_dss_signature(private.sign(f"{h}.{p}".encode(), ECDSA(SHA256())))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    for name, signature in {
        "good": raw,
        "63 bytes": raw[1:],
        "65 bytes": b"\0" + raw,
        "DER instead of r||s": private.sign(f"{h}.{p}".encode(), ECDSA(SHA256())),
        "zeros": bytes(64),
        "s flipped": raw[:32] + bytes(b ^ 0xFF for b in raw[32:]),
    }.items():
        token = f"{h}.{p}.{b64(signature)}"
        assert _verified_payload(parse_jws(token), key.verifier, "ES256") == _reference_payload(
            token, key, "ES256"
        ), name
    assert _verified_payload(parse_jws(f"{h}.{p}.{b64(raw)}"), key.verifier, "ES256") == b'{"sub":"x"}'


def test_fast_jwk_import_matches_joserfc() -> None:
    for kind in ("Ed25519", "P-256"):
        for _ in range(20):
            private = generate_private_jwk(kind)
            members = {k: v for k, v in private.items() if k in {"kty", "crv", "x", "y"}}
            fast = parse_public_jwk(members)
            reference = (OKPKey if kind == "Ed25519" else ECKey).import_key(dict(members))
            assert fast.kid == reference.thumbprint() == private["kid"]
            assert dict(fast.jwk) == {k: str(v) for k, v in reference.as_dict(private=False).items()}
            assert fast.verifier is not None


def test_odd_jwks_take_joserfcs_path_and_answers() -> None:
    x = RFC8037_JWK["x"]
    for bad in (
        {**RFC8037_JWK, "x": x + "="},  # padded
        {**RFC8037_JWK, "x": x[:-1] + "p"},  # non-canonical last character
        {**RFC8037_JWK, "x": x[:-2]},  # not 32 bytes
        {**RFC8037_JWK, "x": x.replace("_", "/")},  # not base64url
        {**RFC7515_A3_JWK, "y": RFC7515_A3_JWK["x"]},  # not a point on the curve
    ):
        with pytest.raises(InvalidInputError, match="malformed JWK"):
            parse_public_jwk(bad)
    with pytest.raises(InvalidInputError, match="private key material"):
        parse_public_jwk({**RFC8037_JWK, "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"})
    # Extra public members (kid, alg, use) are dropped as before; the thumbprint is the key's.
    assert parse_public_jwk({**RFC8037_JWK, "kid": "k", "use": "sig"}).kid == RFC8037_THUMBPRINT


def test_parse_once_then_verify_the_parsed_value() -> None:
    private, key = _ed25519()
    token = _variants(private)["typ and kid"]
    parsed = parse_jws(token)
    assert isinstance(parsed, CompactJws)
    assert parsed.canonical_header
    assert parsed.header == {"alg": "Ed25519", "typ": "at+jwt", "kid": "k1"}
    header, claims = verify_jws(parsed, key)
    assert header is parsed.header
    assert claims == {"sub": "x"}
    assert "typ" not in repr(parsed)
    assert token not in repr(parsed)
    with pytest.raises(AuthenticationError, match="malformed JWT"):
        parse_jws("e30.e30")
    with pytest.raises(AuthenticationError, match="larger than"):
        parse_jws("e30." + "x" * 9000 + ".c2ln")
    # A header only a lenient decoder reads is parsed, and refused as a bad signature.
    lenient = parse_jws(_variants(private)["padded header"])
    assert not lenient.canonical_header
    with pytest.raises(AuthenticationError, match="bad signature"):
        verify_jws(lenient, key)


# -- the verified access token cache -------------------------------------------------------------


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(_at(1_900_000_000))


def _issue(keys: TokenSigningKeys, clock: FrozenClock, ttl_seconds: int = 600) -> str:
    return issue_access_token(
        keys,
        agent_id=AGENT,
        jkt=JKT,
        trust_domain=TD,
        now=clock.now(),
        ttl_seconds=ttl_seconds,
        extra={"tether_binding": "agent-key"},
    ).token


def test_remembered_token_skips_only_the_signature(clock: FrozenClock) -> None:
    keys = TokenSigningKeys.generate(clock.now())
    cache = AccessTokenCache(max_entries=4)
    token = _issue(keys, clock)
    first = verify_access_token(token, keys=keys, trust_domain=TD, now=clock.now(), cache=cache)
    assert first.extra == {"tether_binding": "agent-key"}
    assert len(cache) == 1
    again = verify_access_token(parse_jws(token), keys=keys, trust_domain=TD, now=clock.now(), cache=cache)
    assert again is first
    # Time is checked on every use, with the same answers as a full verification.
    clock.advance(604)
    verify_access_token(token, keys=keys, trust_domain=TD, now=clock.now(), cache=cache)
    clock.advance(1)
    with pytest.raises(AuthenticationError, match="access token expired") as info:
        verify_access_token(token, keys=keys, trust_domain=TD, now=clock.now(), cache=cache)
    assert info.value.code == "invalid_token"
    assert len(cache) == 0  # an expired token is forgotten
    with pytest.raises(AuthenticationError, match="access token expired"):
        verify_access_token(token, keys=keys, trust_domain=TD, now=clock.now(), cache=cache)


def test_remembered_token_not_yet_valid_is_refused(clock: FrozenClock) -> None:
    keys = TokenSigningKeys.generate(clock.now())
    cache = AccessTokenCache()
    token = _issue(keys, clock)
    verify_access_token(token, keys=keys, trust_domain=TD, now=clock.now(), cache=cache)
    with pytest.raises(AuthenticationError, match="not yet valid"):
        verify_access_token(
            token, keys=keys, trust_domain=TD, now=clock.now() - timedelta(seconds=6), cache=cache
        )


def test_remembered_token_needs_its_key_and_trust_domain(clock: FrozenClock) -> None:
    keys = TokenSigningKeys.generate(clock.now())
    cache = AccessTokenCache()
    token = _issue(keys, clock)
    verify_access_token(token, keys=keys, trust_domain=TD, now=clock.now(), cache=cache)
    # Another deployment (other keys, same trust domain) never accepts it from the cache.
    stranger = TokenSigningKeys.generate(clock.now())
    with pytest.raises(AuthenticationError, match="unknown key id"):
        verify_access_token(token, keys=stranger, trust_domain=TD, now=clock.now(), cache=cache)
    # Nor does this deployment under another trust domain.
    with pytest.raises(AuthenticationError, match="another trust domain"):
        verify_access_token(token, keys=keys, trust_domain="other.test", now=clock.now(), cache=cache)
    # Once the signing key is dropped, the remembered token stops too.
    only_new = TokenSigningKeys([TokenSigningKey.generate(clock.now())])
    with pytest.raises(AuthenticationError, match="unknown key id"):
        verify_access_token(token, keys=only_new, trust_domain=TD, now=clock.now(), cache=cache)


def test_only_verified_tokens_are_remembered_and_the_cache_is_bounded(clock: FrozenClock) -> None:
    keys = TokenSigningKeys.generate(clock.now())
    cache = AccessTokenCache(max_entries=3)
    token = _issue(keys, clock)
    h, _p, s = token.split(".")
    forged = f"{h}.{b64(json.dumps({'sub': AGENT}).encode())}.{s}"
    with pytest.raises(AuthenticationError, match="bad signature"):
        verify_access_token(forged, keys=keys, trust_domain=TD, now=clock.now(), cache=cache)
    assert len(cache) == 0
    tokens = [_issue(keys, clock) for _ in range(5)]
    for issued in tokens:
        assert (
            verify_access_token(issued, keys=keys, trust_domain=TD, now=clock.now(), cache=cache).agent_id
            == AGENT
        )
    assert len(cache) == 3
    with pytest.raises(InvalidInputError):
        AccessTokenCache(max_entries=0)


def test_cache_knows_only_tokens_verified_under_keys_still_held(clock: FrozenClock) -> None:
    keys = TokenSigningKeys.generate(clock.now())
    cache = AccessTokenCache()
    token = _issue(keys, clock)
    assert not cache.knows(token, keys, TD)  # never verified
    verify_access_token(token, keys=keys, trust_domain=TD, now=clock.now(), cache=cache)
    assert cache.knows(token, keys, TD)
    assert not cache.knows(token + "x", keys, TD)
    assert not cache.knows(token, keys, "other.test")
    assert not cache.knows(token, TokenSigningKeys([TokenSigningKey.generate(clock.now())]), TD)
    # Known says nothing of time: an expired token is still refused by the verification it skips to.
    clock.advance(700)
    assert cache.knows(token, keys, TD)
    with pytest.raises(AuthenticationError, match="access token expired"):
        verify_access_token(token, keys=keys, trust_domain=TD, now=clock.now(), cache=cache)
    assert not cache.knows(token, keys, TD)
