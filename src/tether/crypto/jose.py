"""JOSE for Tether: public JWKs, thumbprints, and JWS verification with an algorithm allow-list.

Agents sign with Ed25519 (the fully-specified ``Ed25519`` identifier of RFC 9864; the older
``EdDSA`` is accepted from clients) or ES256 on P-256. Nothing else, never ``none``, never an
HMAC: the algorithm comes from our allow-list and must fit the key's type, so a token "signed"
with HS256 using a public key as the secret is refused before any signature check.
Federated issuers (OIDC, JWT-SVID) may also use RS256/PS256/ES384 — asymmetric only.
"""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from tether.errors import AuthenticationError, InvalidInputError

__all__ = [
    "AGENT_ALGORITHMS",
    "FEDERATION_ALGORITHMS",
    "MAX_JWT_BYTES",
    "KeyObject",
    "PublicKey",
    "generate_private_jwk",
    "jws_header",
    "parse_public_jwk",
    "private_key_from_jwk",
    "sign_jws",
    "verify_jws",
]

AGENT_ALGORITHMS: frozenset[str] = frozenset({"Ed25519", "EdDSA", "ES256"})
FEDERATION_ALGORITHMS: frozenset[str] = AGENT_ALGORITHMS | {"ES384", "RS256", "PS256"}
MAX_JWT_BYTES = 8 * 1024

# Which algorithms fit which key: (kty, crv) -> algorithms.
_FITS: dict[tuple[str, str | None], frozenset[str]] = {
    ("OKP", "Ed25519"): frozenset({"Ed25519", "EdDSA"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-384"): frozenset({"ES384"}),
    ("RSA", None): frozenset({"RS256", "PS256"}),
}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_REGISTRY = JWSRegistry(algorithms=sorted(FEDERATION_ALGORITHMS))

KeyObject = OKPKey | ECKey | RSAKey


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A validated public JWK. ``kid`` is its RFC 7638 thumbprint (base64url SHA-256)."""

    jwk: Mapping[str, str]
    kid: str
    algorithms: frozenset[str]
    key: KeyObject

    def __repr__(self) -> str:
        return f"PublicKey(kty={self.jwk['kty']}, kid={self.kid})"


def parse_public_jwk(value: object, *, allow_rsa: bool = False) -> PublicKey:
    """Validate a public JWK: Ed25519 or P-256 (P-384 and RSA >= 2048 bits with ``allow_rsa``).

    Private members are refused: a registry must never hold an agent's private key.
    """
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidInputError("public key must be a JWK object", field="public_key")
    if _PRIVATE_MEMBERS & set(value):
        raise InvalidInputError(
            "the JWK holds private key material; send the public key only", field="public_key"
        )
    kty, crv = value.get("kty"), value.get("crv")
    fit = _FITS.get((str(kty), None if kty == "RSA" else str(crv)))
    if fit is None or (not allow_rsa and (kty, crv) not in {("OKP", "Ed25519"), ("EC", "P-256")}):
        allowed = "OKP/Ed25519, EC/P-256" + (", EC/P-384, RSA" if allow_rsa else "")
        raise InvalidInputError(f"unsupported key type: use {allowed}", field="public_key")
    members = {k: v for k, v in value.items() if k in {"kty", "crv", "x", "y", "n", "e"}}
    if not all(isinstance(v, str) for v in members.values()):
        raise InvalidInputError("JWK members must be strings", field="public_key")
    try:
        key: KeyObject
        if kty == "OKP":
            key = OKPKey.import_key(dict(members))
        elif kty == "EC":
            key = ECKey.import_key(dict(members))
        else:
            key = RSAKey.import_key(dict(members))
            if key.raw_value.key_size < 2048:
                raise InvalidInputError("RSA keys must have at least 2048 bits", field="public_key")
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidInputError(f"malformed JWK: {type(exc).__name__}", field="public_key") from None
    if key.is_private:
        raise InvalidInputError("the JWK holds private key material", field="public_key")
    public = {k: str(v) for k, v in key.as_dict(private=False).items() if k in members}
    return PublicKey(jwk=public, kid=key.thumbprint(), algorithms=fit, key=key)


def generate_private_jwk(kind: str = "Ed25519") -> dict[str, str]:
    """A new private key as a JWK (``Ed25519`` or ``P-256``), for ``tether keygen``."""
    key: KeyObject
    if kind == "Ed25519":
        key = OKPKey.generate_key("Ed25519")
    elif kind == "P-256":
        key = ECKey.generate_key("P-256")
    else:
        raise InvalidInputError("key type must be Ed25519 or P-256", field="kind")
    private = {k: str(v) for k, v in key.as_dict(private=True).items()}
    private["kid"] = key.thumbprint()
    return private


def private_key_from_jwk(value: Mapping[str, Any]) -> tuple[KeyObject, PublicKey]:
    """Load a private JWK (an agent's key file) and its validated public half."""
    members = {k: v for k, v in value.items() if k in {"kty", "crv", "x", "y", "d"}}
    try:
        key: KeyObject = (
            OKPKey.import_key(members) if members.get("kty") == "OKP" else ECKey.import_key(members)
        )
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidInputError(f"malformed private JWK: {type(exc).__name__}", field="key") from None
    if not key.is_private:
        raise InvalidInputError("the key file holds no private key", field="key")
    return key, parse_public_jwk({k: v for k, v in members.items() if k != "d"})


def _b64json(segment: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting is hostile input too
        raise AuthenticationError("malformed JWT", code="invalid_token") from None
    if not isinstance(data, dict):
        raise AuthenticationError("malformed JWT", code="invalid_token")
    return data


def jws_header(token: str) -> dict[str, Any]:
    """The (unverified) protected header of a compact JWS, after shape and size checks."""
    if not isinstance(token, str) or len(token) > MAX_JWT_BYTES:
        raise AuthenticationError(f"JWT missing or larger than {MAX_JWT_BYTES} bytes", code="invalid_token")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise AuthenticationError("malformed JWT: expected three non-empty parts", code="invalid_token")
    return _b64json(parts[0])


def verify_jws(
    token: str, key: PublicKey, *, algorithms: Collection[str] = AGENT_ALGORITHMS
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a compact JWS with ``key``: the header's ``alg`` must be in ``algorithms`` and fit
    the key's type. Returns (header, JSON claims); any failure is :class:`AuthenticationError`."""
    header = jws_header(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms or alg not in key.algorithms:
        raise AuthenticationError(
            f"algorithm {str(alg)[:20]!r} is not allowed for this key", code="invalid_token"
        )
    if header.get("crit") is not None:
        raise AuthenticationError("critical JWS extensions are not supported", code="invalid_token")
    try:
        with warnings.catch_warnings():
            # joserfc warns that "EdDSA" is deprecated by RFC 9864; we accept it from clients on
            # purpose (DESIGN.md: compatibility) and sign with "Ed25519" ourselves.
            warnings.simplefilter("ignore", SecurityWarning)
            payload = jws.deserialize_compact(token, key.key, algorithms=[alg], registry=_REGISTRY).payload
    except JoseError:
        raise AuthenticationError("bad signature", code="invalid_token") from None
    try:
        claims = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AuthenticationError("malformed JWT claims", code="invalid_token") from None
    if not isinstance(claims, dict):
        raise AuthenticationError("malformed JWT claims", code="invalid_token")
    return header, claims


def sign_jws(header: Mapping[str, Any], claims: Mapping[str, Any], key: KeyObject) -> str:
    """Sign ``claims`` (compact JSON) with a private key; ``header['alg']`` must be allowed."""
    payload = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    return jws.serialize_compact(dict(header), payload, key, registry=_REGISTRY)
