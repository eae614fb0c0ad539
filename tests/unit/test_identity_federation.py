"""Federated subject tokens (RFC 8693): a trusted issuer's JWT mapped to an agent by its rule."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from joserfc.jwk import ECKey, OKPKey, RSAKey

from tether.clock import FrozenClock
from tether.crypto.jose import sign_jws
from tether.errors import AuthenticationError, InvalidInputError
from tether.identity.federation import (
    FederatedIdentity,
    FederationRule,
    parse_jwks,
    peek_federated_issuer,
    verify_federated_token,
)
from tether.identity.signing import TokenSigningKeys
from tether.identity.tokens import issue_access_token

ISSUER = "https://oidc.workloads.test"
AUDIENCE = "tether"
SUBJECT = "spiffe://workloads.test/ns/ci/sa/deployer"
PATTERN = re.compile(r"spiffe://workloads\.test/ns/ci/sa/(?P<agent>[a-z0-9-]+)")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: Any, sign: Callable[[bytes], bytes] | None) -> str:
    """A compact JWS made by hand, so that tests can craft what no library would sign."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = sign(signing_input.encode()) if sign is not None else b""
    return f"{signing_input}.{b64(signature)}"


def rs256(key: RSAKey) -> Callable[[bytes], bytes]:
    return lambda message: key.private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048)


def jwk_of(key: RSAKey | ECKey | OKPKey, **extra: str) -> dict[str, str]:
    return {**{k: str(v) for k, v in key.as_dict(private=False).items()}, **extra}


@pytest.fixture
def rule(rsa_key: RSAKey) -> FederationRule:
    jwks = {"keys": [jwk_of(rsa_key, kid="rsa-1", use="sig", alg="RS256")]}
    return FederationRule(issuer=ISSUER, audience=AUDIENCE, keys=parse_jwks(jwks), subject_pattern=PATTERN)


def svid(key: RSAKey, clock: FrozenClock, *, header: dict[str, Any] | None = None, **changes: Any) -> str:
    """A JWT-SVID-shaped token signed with RS256."""
    now = int(clock.now().timestamp())
    claims: dict[str, Any] = {"iss": ISSUER, "sub": SUBJECT, "aud": [AUDIENCE], "iat": now, "exp": now + 300}
    claims.update(changes)
    head = {"alg": "RS256", "typ": "JWT", "kid": "rsa-1", **(header or {})}
    return forge(
        {k: v for k, v in head.items() if v is not None},
        {k: v for k, v in claims.items() if v is not None},
        rs256(key),
    )


def refused(token: str, rule: FederationRule, clock: FrozenClock, **kwargs: Any) -> str:
    with pytest.raises(AuthenticationError) as info:
        verify_federated_token(token, rule, now=clock.now(), **kwargs)
    assert info.value.code == "invalid_grant"
    for part in [token, *token.split(".")]:
        if len(part) >= 8:  # no token, claims or signature in the message
            assert part not in str(info.value)
    return str(info.value)


# -- the good cases -----------------------------------------------------------------------------


def test_rsa_signed_svid_maps_to_the_agent(rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock) -> None:
    identity = verify_federated_token(svid(rsa_key, clock, jti="t-1"), rule, now=clock.now())
    assert identity == FederatedIdentity(
        agent_name="deployer",
        subject=SUBJECT,
        issuer=ISSUER,
        expires_at=clock.now() + timedelta(seconds=300),
        jti="t-1",
    )


def test_jti_is_optional(rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock) -> None:
    assert verify_federated_token(svid(rsa_key, clock), rule, now=clock.now()).jti is None


def test_joserfc_signed_rs256_and_ps256_verify(rsa_key: RSAKey, clock: FrozenClock) -> None:
    rule = FederationRule(
        issuer=ISSUER,
        audience=AUDIENCE,
        keys=parse_jwks({"keys": [jwk_of(rsa_key)]}),
        subject_pattern=PATTERN,
    )
    now = int(clock.now().timestamp())
    claims = {"iss": ISSUER, "sub": SUBJECT, "aud": AUDIENCE, "exp": now + 60}
    for alg in ("RS256", "PS256"):
        token = sign_jws({"alg": alg}, claims, rsa_key)
        assert verify_federated_token(token, rule, now=clock.now()).agent_name == "deployer"


def test_es256_and_ed25519_issuers_verify(clock: FrozenClock) -> None:
    ec, ed = ECKey.generate_key("P-256"), OKPKey.generate_key("Ed25519")
    keys = parse_jwks({"keys": [jwk_of(ec, kid="ec"), jwk_of(ed, kid="ed")]})
    rule = FederationRule(issuer=ISSUER, audience=AUDIENCE, keys=keys, subject_pattern=PATTERN)
    now = int(clock.now().timestamp())
    claims = {"iss": ISSUER, "sub": SUBJECT, "aud": AUDIENCE, "exp": now + 60}
    expected = FederatedIdentity(
        agent_name="deployer",
        subject=SUBJECT,
        issuer=ISSUER,
        expires_at=datetime.fromtimestamp(now + 60, UTC),
        jti=None,
    )
    assert (
        verify_federated_token(sign_jws({"alg": "ES256", "kid": "ec"}, claims, ec), rule, now=clock.now())
        == expected
    )
    assert (
        verify_federated_token(sign_jws({"alg": "Ed25519", "kid": "ed"}, claims, ed), rule, now=clock.now())
        == expected
    )
    # Without a kid, every key that fits the algorithm is tried.
    assert verify_federated_token(sign_jws({"alg": "ES256"}, claims, ec), rule, now=clock.now()) == expected


def test_custom_subject_claim(rsa_key: RSAKey, clock: FrozenClock) -> None:
    # A Kubernetes-style rule: the service account name in its own claim.
    rule = FederationRule(
        issuer=ISSUER,
        audience=AUDIENCE,
        keys=parse_jwks({"keys": [jwk_of(rsa_key, kid="rsa-1")]}),
        subject_claim="sa",
        subject_pattern=re.compile(r"system:serviceaccount:ci:(?P<agent>[a-z0-9-]+)"),
    )
    token = svid(rsa_key, clock, sa="system:serviceaccount:ci:builder")
    assert verify_federated_token(token, rule, now=clock.now()).agent_name == "builder"
    assert "'sa'" in refused(svid(rsa_key, clock), rule, clock)


# -- peek ---------------------------------------------------------------------------------------


def test_peek_reads_the_issuer_unverified(other_rsa_key: RSAKey, clock: FrozenClock) -> None:
    assert peek_federated_issuer(svid(other_rsa_key, clock)) == ISSUER


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "!!!.e30.c2ln",
        f"e30.{b64(b'[1]')}.c2ln",
        f"e30.{b64(b'{}')}.c2ln",
        "e30." + "x" * 9000 + ".c2ln",
    ],
)
def test_peek_refuses_malformed_oversized_or_issuerless(token: str) -> None:
    with pytest.raises(AuthenticationError) as info:
        peek_federated_issuer(token)
    assert info.value.code == "invalid_grant"


# -- algorithms and keys -------------------------------------------------------------------------


def test_alg_none_is_refused(rule: FederationRule, clock: FrozenClock) -> None:
    now = int(clock.now().timestamp())
    claims = {"iss": ISSUER, "sub": SUBJECT, "aud": AUDIENCE, "exp": now + 60}
    refused(forge({"alg": "none"}, claims, None), rule, clock)
    assert "not allowed" in refused(
        forge({"alg": "none", "kid": "rsa-1"}, claims, lambda _: b"sig"), rule, clock
    )


def test_hs256_keyed_with_the_public_key_is_refused(
    rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock
) -> None:
    now = int(clock.now().timestamp())
    claims = {"iss": ISSUER, "sub": SUBJECT, "aud": AUDIENCE, "exp": now + 60}
    public = jwk_of(rsa_key)
    for secret in (
        base64.urlsafe_b64decode(public["n"] + "=="),
        json.dumps(public).encode(),
        rsa_key.as_pem(private=False),
    ):
        token = forge(
            {"alg": "HS256", "kid": "rsa-1"},
            claims,
            lambda m, s=secret: hmac.new(s, m, hashlib.sha256).digest(),
        )
        assert "not allowed" in refused(token, rule, clock)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS512", "HS384"])
def test_algorithm_outside_the_allow_list_or_not_fitting_the_key_is_refused(
    rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock, alg: str
) -> None:
    refused(svid(rsa_key, clock, header={"alg": alg}), rule, clock)


def test_jwks_alg_restricts_the_key(rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock) -> None:
    # The JWKS says RS256 for this key: a PS256 signature by the same key is refused.
    now = int(clock.now().timestamp())
    claims = {"iss": ISSUER, "sub": SUBJECT, "aud": AUDIENCE, "exp": now + 60}
    refused(sign_jws({"alg": "PS256", "kid": "rsa-1"}, claims, rsa_key), rule, clock)


def test_unknown_kid_is_refused(rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock) -> None:
    assert "key id" in refused(svid(rsa_key, clock, header={"kid": "rsa-2"}), rule, clock)
    assert "kid" in refused(svid(rsa_key, clock, header={"kid": 1}), rule, clock)


def test_signature_by_another_key_is_refused(
    other_rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock
) -> None:
    assert "signature" in refused(svid(other_rsa_key, clock), rule, clock)
    assert "signature" in refused(svid(other_rsa_key, clock, header={"kid": None}), rule, clock)


def test_rule_without_keys_refuses(rsa_key: RSAKey, clock: FrozenClock) -> None:
    rule = FederationRule(issuer=ISSUER, audience=AUDIENCE, keys=[], subject_pattern=PATTERN)
    assert "no keys" in refused(svid(rsa_key, clock), rule, clock)


@pytest.mark.parametrize("typ", ["at+jwt", "dpop+jwt", "application/at+jwt"])
def test_tether_token_types_are_refused(
    rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock, typ: str
) -> None:
    assert "Tether token type" in refused(svid(rsa_key, clock, header={"typ": typ}), rule, clock)


def test_tether_access_token_is_not_a_subject_token(rule: FederationRule, clock: FrozenClock) -> None:
    keys = TokenSigningKeys.generate(clock.now())
    issued = issue_access_token(
        keys,
        agent_id="spiffe://acme.test/agent/deployer",
        jkt="A" * 43,
        trust_domain="acme.test",
        now=clock.now(),
    )
    refused(issued.token, rule, clock)


# -- iss, aud, subject -------------------------------------------------------------------------


@pytest.mark.parametrize("iss", ["https://evil.test", ISSUER + "/", None, ISSUER.upper()])
def test_token_from_another_issuer_is_refused(
    rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock, iss: Any
) -> None:
    # Signed by the trusted key, but naming another issuer.
    assert "issuer" in refused(svid(rsa_key, clock, iss=iss), rule, clock)


@pytest.mark.parametrize("aud", ["other", ["other", "tether2"], None, [], 5, [5], "tether "])
def test_wrong_audience_is_refused(
    rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock, aud: Any
) -> None:
    assert "audience" in refused(svid(rsa_key, clock, aud=aud), rule, clock)


def test_audience_as_a_string_is_accepted(rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock) -> None:
    for aud in (AUDIENCE, ["x", AUDIENCE]):
        identity = verify_federated_token(svid(rsa_key, clock, aud=aud), rule, now=clock.now())
        assert (identity.agent_name, identity.subject, identity.issuer) == ("deployer", SUBJECT, ISSUER)


@pytest.mark.parametrize(
    "sub",
    [
        "spiffe://workloads.test/ns/prod/sa/deployer",
        SUBJECT + "/extra",
        "prefix" + SUBJECT,
        "spiffe://workloads.test/ns/ci/sa/Deployer",
        None,
        5,
        ["spiffe://workloads.test/ns/ci/sa/deployer"],
    ],
)
def test_subject_not_matching_the_pattern_is_refused(
    rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock, sub: Any
) -> None:
    refused(svid(rsa_key, clock, sub=sub), rule, clock)


@pytest.mark.parametrize("sub", ["x/../admin", "../admin", "", "a b", "x" * 200])
def test_a_loose_pattern_still_yields_only_valid_agent_names(
    rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock, sub: str
) -> None:
    loose = FederationRule(
        issuer=ISSUER, audience=AUDIENCE, keys=rule.keys, subject_pattern=re.compile(r"(?P<agent>.*)")
    )
    assert "does not map" in refused(svid(rsa_key, clock, sub=sub), loose, clock)


def test_rule_pattern_needs_an_agent_group(rule: FederationRule) -> None:
    with pytest.raises(InvalidInputError):
        FederationRule(
            issuer=ISSUER, audience=AUDIENCE, keys=rule.keys, subject_pattern=re.compile(r"spiffe://.*")
        )
    with pytest.raises(InvalidInputError):
        FederationRule(issuer="", audience=AUDIENCE, keys=rule.keys, subject_pattern=PATTERN)
    with pytest.raises(InvalidInputError):
        FederationRule(issuer=ISSUER, audience="", keys=rule.keys, subject_pattern=PATTERN)


# -- time -------------------------------------------------------------------------------------


def test_expired_token_is_refused_after_the_leeway(
    rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock
) -> None:
    token = svid(rsa_key, clock)
    clock.advance(300 + 29)
    verify_federated_token(token, rule, now=clock.now())
    clock.advance(1)
    assert "expired" in refused(token, rule, clock)


def test_missing_exp_is_refused(rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock) -> None:
    assert "exp" in refused(svid(rsa_key, clock, exp=None), rule, clock)


def test_too_long_lived_token_is_refused(rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock) -> None:
    now = int(clock.now().timestamp())
    verify_federated_token(svid(rsa_key, clock, exp=now + 86400), rule, now=clock.now())
    assert "longer" in refused(svid(rsa_key, clock, exp=now + 86400 + 31), rule, clock)
    assert "longer" in refused(svid(rsa_key, clock, exp=now + 600), rule, clock, max_lifetime_seconds=300)


@pytest.mark.parametrize("field", ["nbf", "iat"])
def test_not_yet_valid_token_is_refused(
    rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock, field: str
) -> None:
    now = int(clock.now().timestamp())
    verify_federated_token(svid(rsa_key, clock, **{field: now + 30}), rule, now=clock.now())
    assert field in refused(svid(rsa_key, clock, **{field: now + 31}), rule, clock)


@pytest.mark.parametrize("changes", [{"exp": "later"}, {"exp": True}, {"nbf": "x"}, {"iat": [1]}])
def test_odd_times_are_refused(
    rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock, changes: dict[str, Any]
) -> None:
    refused(svid(rsa_key, clock, **changes), rule, clock)


def test_float_times_are_accepted(rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock) -> None:
    now = clock.now().timestamp()
    identity = verify_federated_token(
        svid(rsa_key, clock, iat=now + 0.5, exp=now + 60.5), rule, now=clock.now()
    )
    assert identity.agent_name == "deployer"
    assert identity.expires_at.timestamp() == now + 60.5


# -- size and shape ---------------------------------------------------------------------------


def test_oversized_token_is_refused(rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock) -> None:
    assert "larger than" in refused(svid(rsa_key, clock, pad="x" * 8200), rule, clock)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!!.e30.c2ln", f"{b64(b'[1]')}.e30.c2ln"])
def test_malformed_token_is_refused(rule: FederationRule, clock: FrozenClock, token: str) -> None:
    refused(token, rule, clock)


@pytest.mark.parametrize("claims", [[1], "text", 3])
def test_signed_non_object_claims_are_refused(
    rsa_key: RSAKey, rule: FederationRule, clock: FrozenClock, claims: Any
) -> None:
    token = forge({"alg": "RS256", "kid": "rsa-1"}, claims, rs256(rsa_key))
    assert "malformed" in refused(token, rule, clock)


# -- parse_jwks -------------------------------------------------------------------------------


def test_parse_jwks_keeps_signing_keys_with_their_kid(rsa_key: RSAKey) -> None:
    ec = ECKey.generate_key("P-256")
    keys = parse_jwks(
        {
            "keys": [
                jwk_of(rsa_key, kid="r", use="sig"),
                jwk_of(ec),
                jwk_of(OKPKey.generate_key("Ed25519"), use="enc"),
            ]
        }
    )
    assert [k.kid for k in keys] == ["r", ec.thumbprint()]
    assert keys[0].algorithms == {"RS256", "PS256"}


def test_parse_jwks_refuses_private_members(rsa_key: RSAKey) -> None:
    private = {k: str(v) for k, v in rsa_key.as_dict(private=True).items()}
    with pytest.raises(InvalidInputError) as info:
        parse_jwks({"keys": [jwk_of(ECKey.generate_key("P-256")), {**private, "use": "enc"}]})
    assert "private" in str(info.value)
    assert private["d"] not in str(info.value)
    with pytest.raises(InvalidInputError):
        parse_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})


@pytest.mark.parametrize(
    "jwks",
    [
        {},
        {"keys": []},
        {"keys": "x"},
        {"keys": ["x"]},
        [],
        {"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]},
        {"keys": [{"kty": "OKP", "crv": "X25519", "x": "AAAA"}]},
    ],
)
def test_parse_jwks_refuses_malformed_sets(jwks: Any) -> None:
    with pytest.raises(InvalidInputError):
        parse_jwks(jwks)


def test_parse_jwks_refuses_ambiguous_or_unusable_sets(rsa_key: RSAKey) -> None:
    ec = ECKey.generate_key("P-256")
    with pytest.raises(InvalidInputError, match="repeats"):
        parse_jwks({"keys": [jwk_of(rsa_key, kid="k"), jwk_of(ec, kid="k")]})
    with pytest.raises(InvalidInputError, match="no signing key"):
        parse_jwks({"keys": [jwk_of(rsa_key, use="enc")]})
    with pytest.raises(InvalidInputError, match="alg"):
        parse_jwks({"keys": [jwk_of(rsa_key, alg="ES256")]})
    with pytest.raises(InvalidInputError, match="alg"):
        parse_jwks({"keys": [jwk_of(rsa_key, alg="HS256")]})
    with pytest.raises(InvalidInputError, match="kid"):
        parse_jwks({"keys": [{**jwk_of(rsa_key), "kid": 5}]})


# joserfc warns on import before tether.crypto.jose refuses the key.
@pytest.mark.filterwarnings("ignore:Key size should be:joserfc.errors.SecurityWarning")
def test_parse_jwks_refuses_small_rsa_keys() -> None:
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers()

    def member(value: int) -> str:
        return b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    with pytest.raises(InvalidInputError, match="2048"):
        parse_jwks({"keys": [{"kty": "RSA", "n": member(numbers.n), "e": member(numbers.e)}]})
