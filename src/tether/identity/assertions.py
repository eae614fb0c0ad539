"""Client assertions (RFC 7523 ``private_key_jwt``): an agent authenticates at the token endpoint
with a short-lived JWT signed by its registered key.

Two steps, because the keys depend on who claims to be calling: :func:`peek_issuer` reads
``iss`` WITHOUT trusting it, the caller fetches that agent's active keys, and
:func:`verify_client_assertion` checks everything against them. The caller then remembers
:attr:`ClientAssertion.replay_key` until :attr:`ClientAssertion.expires_at` (single-use ``jti``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tether.crypto.jose import AGENT_ALGORITHMS, PublicKey, parse_jws, verify_jws
from tether.errors import AuthenticationError
from tether.identity.tokens import _agent_id, _check_validity, _datetime, _recoded, peek_claims

__all__ = ["ClientAssertion", "peek_issuer", "verify_client_assertion"]

_CODE = "invalid_client"
_MAX_JTI_CHARS = 256
# RFC 7523 does not register a typ; accept the generic ones and the explicit type of
# draft-ietf-oauth-rfc7523bis, so that our own access tokens and DPoP proofs (at+jwt,
# dpop+jwt) can never be replayed as assertions.
_ASSERTION_TYPES = frozenset(
    {"jwt", "application/jwt", "client-authentication+jwt", "application/client-authentication+jwt"}
)


@dataclass(frozen=True, slots=True)
class ClientAssertion:
    """A verified assertion: which agent, with which of its keys, and its replay record.

    ``replay_key`` is the SHA-256 digest of ``b"assertion\\0" + agent_id + b"\\0" + jti``; remember
    it until ``expires_at``.
    """

    agent_id: str
    jti: str
    kid: str
    expires_at: datetime
    replay_key: bytes


def peek_issuer(assertion: str) -> str:
    """The ``iss`` of an assertion, UNVERIFIED: only to look up the agent's keys.

    Raises:
        AuthenticationError: (``invalid_client``) oversized or malformed, or ``iss`` is no agent ID.
    """
    return _agent_id(peek_claims(assertion, code=_CODE).get("iss"), code=_CODE)


def _pick_key(header: dict[str, Any], keys: Sequence[PublicKey], alg: str) -> list[PublicKey]:
    kid = header.get("kid")
    if kid is None:
        # No kid: any of the agent's keys that fits the algorithm may have signed it.
        return [k for k in keys if alg in k.algorithms]
    if not isinstance(kid, str):
        raise AuthenticationError("assertion kid is not a string", code=_CODE)
    chosen = [k for k in keys if k.kid == kid]
    if not chosen:
        raise AuthenticationError("assertion signed with a key id the agent does not hold", code=_CODE)
    return chosen


def _audiences(claims: dict[str, Any]) -> set[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return {aud}
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return set(aud)
    raise AuthenticationError("assertion aud is missing or not a string or list of strings", code=_CODE)


def _verify_signature(assertion: str, agent_keys: Sequence[PublicKey]) -> tuple[dict[str, Any], PublicKey]:
    """Check typ and alg, then the signature with the kid's key (or each fitting key)."""
    with _recoded(_CODE):
        parsed = parse_jws(assertion)  # once, however many keys are tried below
    header = parsed.header
    # Claims that are no JSON object are refused now, so that trying several keys below can
    # only fail for the signature.
    peek_claims(parsed, code=_CODE)
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ASSERTION_TYPES):
        raise AuthenticationError("not a client assertion: unexpected typ", code=_CODE)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in AGENT_ALGORITHMS:
        raise AuthenticationError(f"assertion algorithm {str(alg)[:20]!r} is not allowed", code=_CODE)
    if not agent_keys:
        raise AuthenticationError("the agent has no active keys", code=_CODE)
    for key in _pick_key(header, agent_keys, alg):
        try:
            _, claims = verify_jws(parsed, key, algorithms=AGENT_ALGORITHMS)
        except AuthenticationError:
            continue
        return claims, key
    raise AuthenticationError("assertion signature does not verify with the agent's keys", code=_CODE)


def verify_client_assertion(
    assertion: str,
    *,
    agent_keys: Sequence[PublicKey],
    audience: str | Collection[str],
    now: datetime,
    max_lifetime_seconds: int = 300,
    leeway_seconds: int = 5,
) -> ClientAssertion:
    """Verify an RFC 7523 client assertion against the agent's active keys.

    Args:
        assertion: the compact JWT from ``client_assertion``.
        agent_keys: the active keys of the agent named by :func:`peek_issuer`.
        audience: what ``aud`` must contain: the token endpoint's URL (one, or several accepted).
        now: the time of the request.
        max_lifetime_seconds: how far in the future ``exp`` may lie, and how long after ``iat``
            (short-lived assertions only).
        leeway_seconds: clock skew tolerated on ``exp``, ``nbf`` and ``iat``.

    Raises:
        AuthenticationError: (``invalid_client``) on any failure; the message names the check.
    """
    accepted = {audience} if isinstance(audience, str) else set(audience)
    if not accepted:
        # A misconfigured endpoint refuses every assertion rather than guessing an audience.
        raise AuthenticationError("no token endpoint audience is configured", code=_CODE)
    claims, signer = _verify_signature(assertion, agent_keys)

    iss = _agent_id(claims.get("iss"), code=_CODE)
    if claims.get("sub") != iss:
        raise AuthenticationError("assertion sub differs from iss", code=_CODE)
    if not accepted & _audiences(claims):
        raise AuthenticationError("assertion is meant for another audience", code=_CODE)
    exp = _check_validity(
        claims,
        now,
        code=_CODE,
        what="assertion",
        leeway_seconds=leeway_seconds,
        max_lifetime_seconds=max_lifetime_seconds,
        bound_iat=True,
    )
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI_CHARS:
        raise AuthenticationError("assertion lacks a jti of 1 to 256 characters", code=_CODE)
    replay_key = hashlib.sha256(
        b"assertion\0" + iss.encode() + b"\0" + jti.encode("utf-8", "surrogatepass")
    ).digest()
    return ClientAssertion(
        agent_id=iss, jti=jti, kid=signer.kid, expires_at=_datetime(exp), replay_key=replay_key
    )
