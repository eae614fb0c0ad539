"""Tether's access tokens: short-lived JWTs bound to the agent's key with DPoP (``cnf.jkt``).

A token is ``{"alg": "Ed25519", "typ": "at+jwt", "kid": ...}`` over the claims ``iss`` and
``aud`` (both ``urn:tether:<trust-domain>``), ``sub`` (the agent's SPIFFE ID), ``iat``, ``nbf``,
``exp``, ``jti`` and ``cnf.jkt``. Verification is pure: the caller passes the signing keys and
``now``, and looks up the agent (disabled? still registered?) itself.

This module also holds the small JWT helpers the other identity verifiers share: an unverified
claims peek (for learning which keys to fetch, never for trusting anything), SPIFFE agent ID
parsing, NumericDate checks, and re-coding :class:`AuthenticationError` to the OAuth error the
endpoint at hand must answer with.

A verified token may be remembered by its exact text in an :class:`AccessTokenCache` until it
expires, so that the signature is not checked again on every request. Only what the signed token
itself says is remembered: its time claims are checked against ``now`` on every use, and the
agent (disabled? removed key?) is still read by the caller on every request.
"""

from __future__ import annotations

import base64
import json
import math
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, cast

from tether.clock import utc
from tether.crypto.jose import CompactJws, parse_jws, sign_jws, verify_jws
from tether.errors import AuthenticationError, InvalidInputError
from tether.identity.signing import TokenSigningKeys

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "AGENT_NAME",
    "MAX_ACCESS_TOKEN_TTL_SECONDS",
    "MIN_ACCESS_TOKEN_TTL_SECONDS",
    "AccessClaims",
    "AccessTokenCache",
    "IssuedToken",
    "agent_id_for",
    "issue_access_token",
    "issuer_for",
    "parse_agent_id",
    "peek_claims",
    "verify_access_token",
]

ACCESS_TOKEN_TYPE = "at+jwt"
MIN_ACCESS_TOKEN_TTL_SECONDS = 60
MAX_ACCESS_TOKEN_TTL_SECONDS = 3600
_ALGORITHM = "Ed25519"
_RESERVED_CLAIMS = frozenset({"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "cnf"})

# Same grammar as ``Settings.trust_domain`` (DNS-like, lowercase) so that every ID we accept
# could have been produced by a deployment. Agent names start with an alphanumeric so that the
# SPIFFE-forbidden "." and ".." segments can never appear.
_TRUST_DOMAIN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_AGENT_ID = re.compile(rf"spiffe://(?P<td>{_TRUST_DOMAIN})/agent/(?P<name>{AGENT_NAME.pattern})")
_MAX_ID_CHARS = 2048  # SPIFFE's limit for an ID
# An RFC 7638 SHA-256 thumbprint: 32 bytes in unpadded base64url.
_JKT = re.compile(r"[A-Za-z0-9_-]{43}")
# Year 9999: anything later is not a time, and would overflow datetime arithmetic.
_MAX_NUMERIC_DATE = 253_402_300_799


@contextmanager
def _recoded(code: str) -> Iterator[None]:
    """Answer a failure of the shared JOSE layer with this endpoint's OAuth error code."""
    try:
        yield
    except AuthenticationError as exc:
        if exc.code == code:
            raise
        raise AuthenticationError(str(exc), code=code) from None


def _numeric_date(claims: Mapping[str, Any], name: str, *, code: str, integer: bool = False) -> float | None:
    """The NumericDate claim ``name`` (None when absent); anything but a sane number is refused."""
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int subclass: ``"exp": true`` must not pass as 1970-01-01T00:00:01.
    valid = isinstance(value, int) if integer else isinstance(value, int | float)
    if (
        isinstance(value, bool)
        or not valid
        or not math.isfinite(value)
        or not 0 <= value <= _MAX_NUMERIC_DATE
    ):
        kind = "an integer" if integer else "a number"
        raise AuthenticationError(f"claim {name!r} must be {kind} of seconds since the epoch", code=code)
    return float(value)


def _timestamp(now: datetime) -> float:
    return utc(now).timestamp()


def _datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def peek_claims(token: str | CompactJws, *, code: str = "invalid_token") -> dict[str, Any]:
    """The claims of a compact JWS WITHOUT verifying it: only to learn which keys to fetch.

    The size and shape checks of :func:`tether.crypto.jose.parse_jws` apply first (unless
    ``token`` is already parsed).

    Raises:
        AuthenticationError: with ``code`` when the token is oversized or malformed.
    """
    if not isinstance(token, CompactJws):
        with _recoded(code):
            token = parse_jws(token)
    payload = token.payload_segment
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AuthenticationError("malformed JWT claims", code=code) from None
    if not isinstance(claims, dict):
        raise AuthenticationError("malformed JWT claims: not a JSON object", code=code)
    return claims


def parse_agent_id(value: object, *, trust_domain: str | None = None, code: str = "invalid_token") -> str:
    """Check that ``value`` is an agent's SPIFFE ID (``spiffe://<td>/agent/<name>``); return the name.

    Args:
        value: the claimed ID.
        trust_domain: when given, the ID must belong to this trust domain.
        code: the OAuth error code to raise with.

    Raises:
        AuthenticationError: the value is no agent ID (of this trust domain).
    """
    if not isinstance(value, str) or len(value) > _MAX_ID_CHARS:
        raise AuthenticationError("the agent ID is not a string of at most 2048 characters", code=code)
    match = _AGENT_ID.fullmatch(value)
    if match is None:
        raise AuthenticationError("the agent ID is not of the form spiffe://<td>/agent/<name>", code=code)
    if trust_domain is not None and match["td"] != trust_domain:
        raise AuthenticationError("the agent ID belongs to another trust domain", code=code)
    return match["name"]


def _agent_id(value: object, *, trust_domain: str | None = None, code: str) -> str:
    """``value`` itself once :func:`parse_agent_id` accepts it."""
    parse_agent_id(value, trust_domain=trust_domain, code=code)
    return cast(str, value)


def _check_validity(
    claims: Mapping[str, Any],
    now: datetime,
    *,
    code: str,
    what: str,
    leeway_seconds: float,
    max_lifetime_seconds: float,
    bound_iat: bool,
) -> float:
    """Check ``exp`` (required), ``nbf`` and ``iat`` of a presented JWT; return ``exp``.

    ``exp`` may lie at most ``max_lifetime_seconds`` ahead (and, with ``bound_iat``, at most that
    long after ``iat``): a long-lived credential stolen once would otherwise be good for long.
    """
    at = _timestamp(now)
    exp = _numeric_date(claims, "exp", code=code)
    if exp is None:
        raise AuthenticationError(f"{what} lacks exp", code=code)
    if at >= exp + leeway_seconds:
        raise AuthenticationError(f"{what} expired", code=code)
    if exp - at > max_lifetime_seconds + leeway_seconds:
        raise AuthenticationError(f"{what} lives longer than allowed", code=code)
    nbf = _numeric_date(claims, "nbf", code=code)
    if nbf is not None and at < nbf - leeway_seconds:
        raise AuthenticationError(f"{what} not yet valid (nbf)", code=code)
    iat = _numeric_date(claims, "iat", code=code)
    if iat is not None and at < iat - leeway_seconds:
        raise AuthenticationError(f"{what} issued in the future (iat)", code=code)
    if bound_iat and iat is not None and exp - iat > max_lifetime_seconds + leeway_seconds:
        raise AuthenticationError(f"{what} lives longer than allowed", code=code)
    return exp


def issuer_for(trust_domain: str) -> str:
    """The ``iss`` (and ``aud``) of this trust domain's access tokens."""
    return f"urn:tether:{trust_domain}"


def agent_id_for(trust_domain: str, name: str) -> str:
    """The SPIFFE ID of agent ``name`` in ``trust_domain``."""
    return f"spiffe://{trust_domain}/agent/{name}"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly signed access token. ``token`` is a credential: never log it."""

    token: str
    jti: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"IssuedToken(jti={self.jti!r}, expires_at={self.expires_at.isoformat()})"


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says: the agent and the key the token is bound to.

    ``extra`` holds the token's other (signed) claims, those :func:`issue_access_token` was
    given as ``extra``, so that a caller reads them without decoding the token again.
    """

    agent_id: str
    jkt: str
    jti: str
    issued_at: datetime
    expires_at: datetime
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False)


@dataclass(frozen=True, slots=True)
class _Remembered:
    claims: AccessClaims
    kid: str  # the verifying key's RFC 7638 thumbprint: a hit needs that key still held
    trust_domain: str
    exp: float
    nbf: float | None
    iat: float


class AccessTokenCache:
    """Access tokens whose signature and claims verified, by their exact text (bounded LRU).

    A hit skips the signature check, never the rest: the token's ``exp``/``nbf``/``iat`` are
    checked against ``now`` on every use, the key that verified it must still be held (a key
    dropped after rotation stops its tokens here too), and nothing about the agent is kept —
    the caller reads the agent, its keys and what a revocation changes from the store each time.
    Safe to share between threads.
    """

    __slots__ = ("_entries", "_lock", "max_entries")

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise InvalidInputError("an access token cache holds at least one entry", field="max_entries")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Remembered] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def _get(self, token: str, keys: TokenSigningKeys, trust_domain: str) -> _Remembered | None:
        with self._lock:
            entry = self._entries.get(token)
            if entry is None:
                return None
            if entry.trust_domain != trust_domain or keys.key_for(entry.kid) is None:
                return None
            self._entries.move_to_end(token)
            return entry

    def knows(self, token: str, keys: TokenSigningKeys, trust_domain: str) -> bool:
        """Whether ``token`` verified before under a key still in ``keys`` (so that
        :func:`verify_access_token` answers it without decoding it again); its times are not
        checked here."""
        return self._get(token, keys, trust_domain) is not None

    def _put(self, token: str, entry: _Remembered) -> None:
        with self._lock:
            self._entries[token] = entry
            self._entries.move_to_end(token)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def _forget(self, token: str) -> None:
        with self._lock:
            self._entries.pop(token, None)

    def clear(self) -> None:
        """Forget every remembered token."""
        with self._lock:
            self._entries.clear()


def issue_access_token(
    keys: TokenSigningKeys,
    *,
    agent_id: str,
    jkt: str,
    trust_domain: str,
    now: datetime,
    ttl_seconds: int = 600,
    extra: Mapping[str, Any] | None = None,
) -> IssuedToken:
    """Sign an access token for ``agent_id``, bound to the key with thumbprint ``jkt``.

    Args:
        keys: Tether's token-signing keys; the active one signs.
        agent_id: the agent's SPIFFE ID, in ``trust_domain``.
        jkt: the RFC 7638 thumbprint of the agent's DPoP key.
        trust_domain: this deployment's trust domain.
        now: the issue time.
        ttl_seconds: lifetime, 60..3600 seconds.
        extra: additional claims; they may not override the registered ones above.

    Raises:
        InvalidInputError: a bad TTL, agent ID, thumbprint or extra claim name.
    """
    if (
        isinstance(ttl_seconds, bool)
        or not isinstance(ttl_seconds, int)
        or not MIN_ACCESS_TOKEN_TTL_SECONDS <= ttl_seconds <= MAX_ACCESS_TOKEN_TTL_SECONDS
    ):
        raise InvalidInputError(
            f"ttl_seconds must be an integer from {MIN_ACCESS_TOKEN_TTL_SECONDS} "
            f"to {MAX_ACCESS_TOKEN_TTL_SECONDS}",
            field="ttl_seconds",
        )
    try:
        parse_agent_id(agent_id, trust_domain=trust_domain)
    except AuthenticationError as exc:
        raise InvalidInputError(str(exc), field="agent_id") from None
    if not isinstance(jkt, str) or not _JKT.fullmatch(jkt):
        raise InvalidInputError("jkt must be an RFC 7638 SHA-256 thumbprint", field="jkt")
    overlap = _RESERVED_CLAIMS & set(extra or {})
    if overlap:
        raise InvalidInputError(f"extra claims may not set {sorted(overlap)}", field="extra")
    issued = int(_timestamp(now))
    expires = issued + ttl_seconds
    jti = secrets.token_urlsafe(16)  # 128 random bits
    claims: dict[str, Any] = {
        **(extra or {}),
        "iss": issuer_for(trust_domain),
        "aud": issuer_for(trust_domain),
        "sub": agent_id,
        "iat": issued,
        "nbf": issued,
        "exp": expires,
        "jti": jti,
        "cnf": {"jkt": jkt},
    }
    active = keys.active
    header = {"alg": _ALGORITHM, "typ": ACCESS_TOKEN_TYPE, "kid": active.kid}
    return IssuedToken(sign_jws(header, claims, active.private_key), jti, _datetime(expires))


def _check_access_times(
    exp: float, nbf: float | None, iat: float, at: float, leeway_seconds: int, code: str
) -> None:
    if at >= exp + leeway_seconds:
        raise AuthenticationError("access token expired", code=code)
    if (nbf is not None and at < nbf - leeway_seconds) or at < iat - leeway_seconds:
        raise AuthenticationError("access token not yet valid", code=code)


def verify_access_token(
    token: str | CompactJws,
    *,
    keys: TokenSigningKeys,
    trust_domain: str,
    now: datetime,
    leeway_seconds: int = 5,
    cache: AccessTokenCache | None = None,
) -> AccessClaims:
    """Verify an access token of THIS trust domain; the DPoP proof is checked separately.

    Args:
        token: the compact JWT from ``Authorization: DPoP <token>`` (or it, parsed once).
        keys: Tether's token-signing keys (current and recently retired).
        trust_domain: this deployment's trust domain.
        now: the time of the request.
        leeway_seconds: clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
        cache: where verified tokens are remembered (see :class:`AccessTokenCache`); a
            remembered token's time claims are still checked against ``now``.

    Raises:
        AuthenticationError: (``invalid_token``) on any failure; the message names the check.
    """
    code = "invalid_token"
    at = _timestamp(now)
    text = token.token if isinstance(token, CompactJws) else token
    if cache is not None and isinstance(text, str):
        remembered = cache._get(text, keys, trust_domain)
        if remembered is not None:
            if at >= remembered.exp + leeway_seconds:
                cache._forget(text)  # expired: remembered no longer
            # The same checks, in the same order, as below: only the signature is not redone.
            _check_access_times(remembered.exp, remembered.nbf, remembered.iat, at, leeway_seconds, code)
            return remembered.claims

    parsed = token if isinstance(token, CompactJws) else parse_jws(token)
    header = parsed.header
    if header.get("typ") != ACCESS_TOKEN_TYPE:
        raise AuthenticationError("not an access token: typ must be at+jwt", code=code)
    kid = header.get("kid")
    key = keys.key_for(kid) if isinstance(kid, str) else None
    if key is None:
        raise AuthenticationError("access token signed with an unknown key id", code=code)
    # Only the algorithm we sign with: EdDSA is a client-compatibility alias, not ours.
    _, claims = verify_jws(parsed, key.public, algorithms=frozenset({_ALGORITHM}))

    expected = issuer_for(trust_domain)
    if claims.get("iss") != expected:
        raise AuthenticationError("access token issued by another trust domain", code=code)
    if claims.get("aud") != expected:
        raise AuthenticationError("access token meant for another audience", code=code)
    agent_id = _agent_id(claims.get("sub"), trust_domain=trust_domain, code=code)

    exp = _numeric_date(claims, "exp", code=code, integer=True)
    nbf = _numeric_date(claims, "nbf", code=code, integer=True)
    iat = _numeric_date(claims, "iat", code=code, integer=True)
    if exp is None or iat is None:
        raise AuthenticationError("access token lacks exp or iat", code=code)
    _check_access_times(exp, nbf, iat, at, leeway_seconds, code)
    if not 0 < exp - iat <= MAX_ACCESS_TOKEN_TTL_SECONDS:
        raise AuthenticationError("access token lifetime out of bounds", code=code)

    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= 256:
        raise AuthenticationError("access token lacks a jti", code=code)
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if not isinstance(jkt, str) or not _JKT.fullmatch(jkt):
        raise AuthenticationError("access token is not bound to a key (cnf.jkt)", code=code)
    extra = MappingProxyType({k: v for k, v in claims.items() if k not in _RESERVED_CLAIMS})
    verified = AccessClaims(agent_id, jkt, jti, _datetime(iat), _datetime(exp), extra)
    if cache is not None:
        cache._put(parsed.token, _Remembered(verified, key.kid, trust_domain, exp, nbf, iat))
    return verified
