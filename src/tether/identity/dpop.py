"""DPoP proof verification (RFC 9449): the agent proves, per request, that it holds the key its
access token is bound to.

A proof is a JWS with ``typ: dpop+jwt`` whose header carries the agent's public ``jwk``; its
claims bind it to one request (``htm``, ``htu``), one moment (``iat``), one use (``jti``) and,
at resource endpoints, one access token (``ath``). The caller remembers
:attr:`DpopProof.replay_key` until :attr:`DpopProof.replay_expires_at` so a proof is used once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tether.crypto.jose import AGENT_ALGORITHMS, PublicKey, parse_jws, parse_public_jwk, verify_jws
from tether.errors import AuthenticationError, InvalidInputError
from tether.identity.tokens import _datetime, _numeric_date, _recoded, _timestamp

__all__ = ["DPOP_TYPE", "DpopProof", "access_token_hash", "normalize_htu", "verify_dpop_proof"]

DPOP_TYPE = "dpop+jwt"
_CODE = "invalid_dpop_proof"
_MAX_JTI_CHARS = 256
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class DpopProof:
    """A verified proof: the key that signed it and what the caller must remember against replay.

    ``replay_key`` is the SHA-256 digest of ``b"dpop\\0" + jkt + b"\\0" + jti``: remember it until
    ``replay_expires_at`` (``iat`` + the accepted age), after which the proof is too old anyway.
    """

    jkt: str
    jti: str
    iat: datetime
    public_key: PublicKey
    replay_key: bytes
    replay_expires_at: datetime


def access_token_hash(access_token: str) -> str:
    """The ``ath`` of a token: base64url (unpadded) SHA-256 of its ASCII bytes."""
    digest = hashlib.sha256(access_token.encode("ascii", errors="strict")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def normalize_htu(url: str) -> str:
    """The form of an HTTP URI that ``htu`` is compared in (RFC 9449 §4.3, RFC 3986 §6.2.2-3).

    Scheme and host are lowercased, the scheme's default port is dropped, query and fragment are
    removed and an empty path becomes ``/``; the path itself is kept as sent (no dot-segment or
    percent-encoding rewriting: the proof must name the path the server routes on).

    Raises:
        AuthenticationError: (``invalid_dpop_proof``) not an absolute http(s) URL.
    """
    if not isinstance(url, str):
        raise AuthenticationError("htu is not an absolute ASCII URL", code=_CODE)
    return _normalized(url)


@lru_cache(maxsize=1024)
def _normalized(url: str) -> str:
    # Pure, and every request checks two URLs that repeat (its own and its proof's): remembered.
    # A refused URL raises, and lru_cache remembers only answers.
    if not url.isascii() or any(c in url for c in "\x00\r\n\t "):
        raise AuthenticationError("htu is not an absolute ASCII URL", code=_CODE)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise AuthenticationError("htu is not a valid URL", code=_CODE) from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise AuthenticationError("htu must be an absolute http(s) URL", code=_CODE)
    if parts.username is not None or parts.password is not None:
        raise AuthenticationError("htu must not carry user information", code=_CODE)
    host = parts.hostname  # lowercased by urlsplit, IPv6 brackets stripped: put them back below
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path or "/", "", ""))


def _utf8(text: str) -> bytes:
    # JSON may carry lone surrogates; they must hash and compare, not raise.
    return text.encode("utf-8", "surrogatepass")


def _string_claim(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise AuthenticationError(f"DPoP proof lacks the {name!r} claim", code=_CODE)
    return value


@lru_cache(maxsize=4096)
def _parsed_jwk(members: tuple[tuple[str, str], ...]) -> PublicKey:
    return parse_public_jwk(dict(members))


def _proof_public_key(jwk: object) -> PublicKey:
    """The proof's public key. An agent signs every proof with the same key, so a JWK seen before
    (the same members and values) gives the same immutable key back instead of being imported again;
    anything unusual (not an object of strings) is parsed, and refused, without the memo."""
    if (
        isinstance(jwk, dict)
        and len(jwk) <= 16
        and all(isinstance(k, str) and isinstance(v, str) for k, v in jwk.items())
    ):
        return _parsed_jwk(tuple(sorted(jwk.items())))
    return parse_public_jwk(jwk)


def _proof_key_and_claims(proof: str) -> tuple[PublicKey, dict[str, Any]]:
    """Check typ, alg and the header's public jwk, then the signature made with that jwk.

    The proof is split and decoded once; a proof is single-use, so nothing of it is remembered.
    """
    with _recoded(_CODE):
        parsed = parse_jws(proof)
    header = parsed.header
    if header.get("typ") != DPOP_TYPE:
        raise AuthenticationError("not a DPoP proof: typ must be dpop+jwt", code=_CODE)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in AGENT_ALGORITHMS:
        raise AuthenticationError(f"DPoP proof algorithm {str(alg)[:20]!r} is not allowed", code=_CODE)
    jwk = header.get("jwk")
    if jwk is None:
        raise AuthenticationError("DPoP proof header lacks the jwk", code=_CODE)
    try:
        key = _proof_public_key(jwk)  # refuses private members and unsupported key types
    except InvalidInputError as exc:
        raise AuthenticationError(f"DPoP proof jwk refused: {exc}", code=_CODE) from None
    with _recoded(_CODE):
        _, claims = verify_jws(parsed, key, algorithms=AGENT_ALGORITHMS)
    return key, claims


def _check_ath(ath: object, access_token: str | None) -> None:
    """The proof must name the presented token's hash, and name none when no token is presented."""
    if access_token is not None:
        if not isinstance(ath, str):
            raise AuthenticationError("DPoP proof lacks ath for the access token", code=_CODE)
        try:
            expected_ath = access_token_hash(access_token)
        except UnicodeEncodeError:
            raise AuthenticationError("access token is not ASCII", code="invalid_token") from None
        if not hmac.compare_digest(_utf8(ath), expected_ath.encode()):
            raise AuthenticationError("DPoP proof ath does not match the access token", code=_CODE)
    elif ath is not None:
        raise AuthenticationError("DPoP proof carries ath but no access token was presented", code=_CODE)


def verify_dpop_proof(
    proof: str,
    *,
    method: str,
    url: str,
    now: datetime,
    access_token: str | None = None,
    expected_jkt: str | None = None,
    max_age_seconds: int = 300,
    future_skew_seconds: int = 5,
) -> DpopProof:
    """Verify a DPoP proof for one request.

    Args:
        proof: the compact JWS from the ``DPoP`` header.
        method: the request's HTTP method, as received (e.g. ``"POST"``).
        url: the request's absolute URL as the server sees it (query and fragment are ignored).
        now: the time of the request.
        access_token: the presented access token; the proof must then carry its ``ath``
            (and without one it must not carry ``ath``: it was made for another request).
        expected_jkt: the access token's ``cnf.jkt``; the proof's key must have this thumbprint.
        max_age_seconds: how old ``iat`` may be.
        future_skew_seconds: how far ahead ``iat`` may be.

    Raises:
        AuthenticationError: ``invalid_dpop_proof`` for a bad proof; ``invalid_token`` when the
            proof's key is not the one the access token is bound to.
    """
    key, claims = _proof_key_and_claims(proof)

    jti = _string_claim(claims, "jti")
    if len(jti) > _MAX_JTI_CHARS:
        raise AuthenticationError("DPoP proof jti is longer than 256 characters", code=_CODE)
    if _string_claim(claims, "htm") != method:
        raise AuthenticationError("DPoP proof was made for another HTTP method", code=_CODE)
    htu = _string_claim(claims, "htu")
    # The same text normalises the same way (and is refused the same way): once is enough.
    if htu == url:
        normalize_htu(url)
    elif normalize_htu(htu) != normalize_htu(url):
        raise AuthenticationError("DPoP proof was made for another URL", code=_CODE)

    iat = _numeric_date(claims, "iat", code=_CODE, integer=True)
    if iat is None:
        raise AuthenticationError("DPoP proof lacks iat", code=_CODE)
    at = _timestamp(now)
    if iat < at - max_age_seconds:
        raise AuthenticationError("DPoP proof is too old", code=_CODE)
    if iat > at + future_skew_seconds:
        raise AuthenticationError("DPoP proof is dated in the future", code=_CODE)

    _check_ath(claims.get("ath"), access_token)
    if expected_jkt is not None and not hmac.compare_digest(key.kid.encode(), _utf8(expected_jkt)):
        raise AuthenticationError(
            "access token is bound to another key than the proof's", code="invalid_token"
        )

    replay_key = hashlib.sha256(b"dpop\0" + key.kid.encode() + b"\0" + _utf8(jti)).digest()
    issued = _datetime(iat)
    return DpopProof(
        jkt=key.kid,
        jti=jti,
        iat=issued,
        public_key=key,
        replay_key=replay_key,
        replay_expires_at=issued + timedelta(seconds=max_age_seconds),
    )
