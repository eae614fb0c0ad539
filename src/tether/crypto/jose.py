"""JOSE for Tether: public JWKs, thumbprints, and JWS verification with an algorithm allow-list.

Agents sign with Ed25519 (the fully-specified ``Ed25519`` identifier of RFC 9864; the older
``EdDSA`` is accepted from clients) or ES256 on P-256. Nothing else, never ``none``, never an
HMAC: the algorithm comes from our allow-list and must fit the key's type, so a token "signed"
with HS256 using a public key as the secret is refused before any signature check.
Federated issuers (OIDC, JWT-SVID) may also use RS256/PS256/ES384 — asymmetric only.

A compact JWS is split and decoded once (:func:`parse_jws`) and the parsed value is passed on,
so a request's access token and DPoP proof are each decoded once. Ed25519 and ES256 signatures
(the agents' and Tether's own: the hot path) are checked directly — Ed25519 with libsodium
(PyNaCl: half the CPU of OpenSSL's generic Ed25519, and the DPoP proof of every request needs one),
ES256 with ``cryptography`` — with joserfc's strictness reproduced exactly: base64url without
padding and in canonical form only, the registered header parameters only (with their types), no
``b64: false``, the header and signature size limits. joserfc stays the reference: it signs,
imports keys and verifies the federation algorithms (RS256, PS256, ES384), and the tests compare
both verifiers on hostile input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ec import (
    ECDSA,
    SECP256R1,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256
from joserfc import jws
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from tether.errors import AuthenticationError, InvalidInputError

__all__ = [
    "AGENT_ALGORITHMS",
    "FEDERATION_ALGORITHMS",
    "MAX_JWT_BYTES",
    "CompactJws",
    "KeyObject",
    "PublicKey",
    "generate_private_jwk",
    "jws_header",
    "parse_jws",
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
#: A public key that :func:`verify_jws` checks with ``cryptography`` directly (Ed25519, P-256).
Verifier = Ed25519PublicKey | EllipticCurvePublicKey

# joserfc's JWSRegistry limits on the encoded header and signature segments.
_MAX_HEADER_SEGMENT = 512
_MAX_SIGNATURE_SEGMENT = 1024
# The last character of an unpadded base64url segment with 2 or 3 bytes in its final group
# (pad of 2 or 1): only these leave the unused low bits zero, i.e. the canonical encoding.
_CANONICAL_LAST = {2: frozenset(b"AQgw"), 1: frozenset(b"AEIMQUYcgkosw048")}
_P256_SIGNATURE_BYTES = 64
_ED25519_SIGNATURE_BYTES = 64


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# The registered JWS header parameters and the types joserfc's registry holds them to; any
# other parameter is refused (its ``strict_check_header``).
_HEADER_PARAMETERS: dict[str, Callable[[object], bool]] = {
    "alg": _is_str,
    "jku": _is_url,
    "jwk": lambda value: isinstance(value, dict),
    "kid": _is_str,
    "x5u": _is_url,
    "x5c": _is_str_list,
    "x5t": _is_str,
    "x5t#S256": _is_str,
    "typ": _is_str,
    "cty": _is_str,
    "crit": _is_str_list,
    "b64": lambda value: isinstance(value, bool),
}


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A validated public JWK. ``kid`` is its RFC 7638 thumbprint (base64url SHA-256).

    ``verifier`` is the ``cryptography`` key for Ed25519 and P-256 keys (None for the others),
    imported once here so that a verification never imports the key again.
    """

    jwk: Mapping[str, str]
    kid: str
    algorithms: frozenset[str]
    key: KeyObject
    verifier: Verifier | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return f"PublicKey(kty={self.jwk['kty']}, kid={self.kid})"


@dataclass(frozen=True, slots=True)
class CompactJws:
    """A compact JWS split once, with its protected header decoded (and not yet trusted).

    ``canonical_header`` tells whether the header segment is strict base64url (no padding, no
    other characters, canonical final bits): a header only a lenient decoder reads is parsed
    (to answer with the right error) but never verifies.
    """

    token: str
    header: dict[str, Any]
    header_segment: str
    payload_segment: str
    signature_segment: str
    canonical_header: bool

    def __repr__(self) -> str:
        alg, kid = str(self.header.get("alg"))[:20], str(self.header.get("kid"))[:64]
        return f"CompactJws(alg={alg!r}, kid={kid!r})"


def _b64url_strict(segment: str) -> bytes | None:
    """Decode base64url as joserfc does (no padding, only the URL-safe alphabet, canonical)."""
    if not segment.isascii():
        return None
    data = segment.encode("ascii")
    if b"+" in data or b"/" in data or b"=" in data:
        return None
    pad = -len(data) % 4
    if pad == 3 or (pad and data[-1] not in _CANONICAL_LAST[pad]):
        return None
    try:
        return base64.b64decode(data + b"=" * pad, b"-_", validate=True)
    except binascii.Error:
        return None


def _thumbprint(members: Mapping[str, str]) -> str:
    """RFC 7638: base64url SHA-256 of the required members, sorted, without whitespace."""
    text = json.dumps(dict(sorted(members.items())), separators=(",", ":"), ensure_ascii=True)
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode("ascii")).digest()).rstrip(b"=").decode()


def _ed25519_public_key(members: Mapping[str, str]) -> PublicKey | None:
    """The plain Ed25519 JWK ({kty, crv, x}, canonical x of 32 bytes) without joserfc's import;
    None for anything else, which then takes joserfc's path (and its answers)."""
    if len(members) != 3 or "x" not in members:
        return None
    raw = _b64url_strict(members["x"])
    if raw is None or len(raw) != 32:
        return None
    try:
        verifier = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return None
    public = {"crv": "Ed25519", "x": members["x"], "kty": "OKP"}
    return PublicKey(
        jwk=public,
        kid=_thumbprint(public),
        algorithms=_FITS[("OKP", "Ed25519")],
        key=OKPKey(verifier, dict(public)),
        verifier=verifier,
    )


def _p256_public_key(members: Mapping[str, str], crv: object) -> PublicKey | None:
    """The plain P-256 JWK ({kty, crv, x, y}, canonical 32-byte coordinates of a point on the
    curve) without joserfc's import; None for anything else, which takes joserfc's path."""
    if crv != "P-256" or len(members) != 4 or "x" not in members or "y" not in members:
        return None
    x, y = _b64url_strict(members["x"]), _b64url_strict(members["y"])
    if x is None or y is None or len(x) != 32 or len(y) != 32:
        return None
    try:
        verifier = EllipticCurvePublicKey.from_encoded_point(SECP256R1(), b"\x04" + x + y)
    except ValueError:
        return None
    public = {"crv": "P-256", "x": members["x"], "y": members["y"], "kty": "EC"}
    return PublicKey(
        jwk=public,
        kid=_thumbprint(public),
        algorithms=_FITS[("EC", "P-256")],
        key=ECKey(verifier, dict(public)),
        verifier=verifier,
    )


def _verifier_of(key: KeyObject) -> Verifier | None:
    """The ``cryptography`` public key of an Ed25519 or P-256 JWK; None for the others."""
    raw = key.raw_value
    if isinstance(raw, Ed25519PublicKey):
        return raw
    if isinstance(raw, EllipticCurvePublicKey) and isinstance(raw.curve, SECP256R1):
        return raw
    return None


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
    fast = _ed25519_public_key(members) if kty == "OKP" else _p256_public_key(members, crv)
    if fast is not None:
        return fast
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
    return PublicKey(jwk=public, kid=key.thumbprint(), algorithms=fit, key=key, verifier=_verifier_of(key))


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


def _malformed() -> AuthenticationError:
    return AuthenticationError("malformed JWT", code="invalid_token")


def parse_jws(token: str) -> CompactJws:
    """Split a compact JWS once and decode its (unverified) protected header.

    Raises:
        AuthenticationError: (``invalid_token``) oversized, not three non-empty parts, or a header
            that is no JSON object.
    """
    if not isinstance(token, str) or len(token) > MAX_JWT_BYTES:
        raise AuthenticationError(f"JWT missing or larger than {MAX_JWT_BYTES} bytes", code="invalid_token")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise AuthenticationError("malformed JWT: expected three non-empty parts", code="invalid_token")
    header_segment, payload_segment, signature_segment = parts
    raw = _b64url_strict(header_segment)
    canonical = raw is not None
    try:
        if raw is None:
            # Read leniently so that the answer stays "bad signature", not "malformed JWT", for
            # a header only a lenient decoder reads: it still never verifies (canonical=False).
            raw = base64.urlsafe_b64decode(header_segment + "=" * (-len(header_segment) % 4))
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting is hostile input too
        raise _malformed() from None
    if not isinstance(header, dict):
        raise _malformed()
    return CompactJws(token, header, header_segment, payload_segment, signature_segment, canonical)


def jws_header(token: str) -> dict[str, Any]:
    """The (unverified) protected header of a compact JWS, after shape and size checks."""
    return parse_jws(token).header


def _header_verifiable(header: Mapping[str, Any]) -> bool:
    """joserfc's header rules: registered parameters only, each of its type, and no RFC 7797
    unencoded payload (``b64`` other than true needs ``crit``, which is refused earlier)."""
    for name, value in header.items():
        check = _HEADER_PARAMETERS.get(name)
        if check is None or not check(value):
            return False
    return header.get("b64", True) is True


def _ed25519_verifies(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """libsodium's Ed25519 verification (RFC 8032, plus: S canonical, R and the key not of small
    order): ~90 µs here against OpenSSL's ~190 µs. Stricter than OpenSSL only on signatures no
    honest Ed25519 signer produces."""
    if len(signature) != _ED25519_SIGNATURE_BYTES:
        return False
    try:
        crypto_sign_open(signature + message, key.public_bytes_raw())
    except (BadSignatureError, ValueError):
        return False
    return True


def _verified_payload(parsed: CompactJws, verifier: Verifier, alg: str) -> bytes | None:
    """The payload bytes when the signature verifies with ``verifier``, else None."""
    if (
        not parsed.canonical_header
        or len(parsed.header_segment) > _MAX_HEADER_SEGMENT
        or len(parsed.signature_segment) > _MAX_SIGNATURE_SEGMENT
        or not _header_verifiable(parsed.header)
    ):
        return None
    payload = _b64url_strict(parsed.payload_segment)
    signature = _b64url_strict(parsed.signature_segment)
    if payload is None or signature is None:
        return None
    signing_input = f"{parsed.header_segment}.{parsed.payload_segment}".encode("ascii")
    try:
        if isinstance(verifier, Ed25519PublicKey):
            if alg not in {"Ed25519", "EdDSA"} or not _ed25519_verifies(verifier, signature, signing_input):
                return None
        else:
            if alg != "ES256" or len(signature) != _P256_SIGNATURE_BYTES:
                return None
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            verifier.verify(encode_dss_signature(r, s), signing_input, ECDSA(SHA256()))
    except InvalidSignature:
        return None
    return payload


def _reference_payload(token: str, key: PublicKey, alg: str) -> bytes | None:
    """The payload as joserfc verifies it (the federation algorithms; the reference in tests)."""
    try:
        with warnings.catch_warnings():
            # joserfc warns that "EdDSA" is deprecated by RFC 9864; we accept it from clients on
            # purpose (DESIGN.md: compatibility) and sign with "Ed25519" ourselves.
            warnings.simplefilter("ignore", SecurityWarning)
            return jws.deserialize_compact(token, key.key, algorithms=[alg], registry=_REGISTRY).payload
    except JoseError:
        return None


def verify_jws(
    token: str | CompactJws, key: PublicKey, *, algorithms: Collection[str] = AGENT_ALGORITHMS
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a compact JWS with ``key``: the header's ``alg`` must be in ``algorithms`` and fit
    the key's type. Returns (header, JSON claims); any failure is :class:`AuthenticationError`.

    ``token`` may be already parsed (:func:`parse_jws`), so that it is not decoded again.
    """
    parsed = token if isinstance(token, CompactJws) else parse_jws(token)
    header = parsed.header
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms or alg not in key.algorithms:
        raise AuthenticationError(
            f"algorithm {str(alg)[:20]!r} is not allowed for this key", code="invalid_token"
        )
    if header.get("crit") is not None:
        raise AuthenticationError("critical JWS extensions are not supported", code="invalid_token")
    if key.verifier is not None:
        payload = _verified_payload(parsed, key.verifier, alg)
    else:
        payload = _reference_payload(parsed.token, key, alg)
    if payload is None:
        raise AuthenticationError("bad signature", code="invalid_token")
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
