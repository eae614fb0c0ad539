"""Federated identity (RFC 8693 token exchange): a JWT from an issuer the operators trust (an
OIDC provider, Kubernetes, a SPIFFE JWT-SVID) is exchanged for a Tether access token.

Each trusted issuer is a :class:`FederationRule`: its ``iss``, the audience its tokens must be
meant for, its public keys (RSA allowed here, asymmetric only), and which claim names the agent
(a regular expression whose ``agent`` group is the agent's name). As with client assertions,
:func:`peek_federated_issuer` reads ``iss`` untrusted so the caller can find the rule, and
:func:`verify_federated_token` checks everything against it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tether.crypto.jose import FEDERATION_ALGORITHMS, PublicKey, jws_header, parse_public_jwk, verify_jws
from tether.errors import AuthenticationError, InvalidInputError
from tether.identity.tokens import AGENT_NAME, _check_validity, _datetime, _recoded, peek_claims

__all__ = [
    "FederatedIdentity",
    "FederationRule",
    "parse_jwks",
    "peek_federated_issuer",
    "verify_federated_token",
]

_CODE = "invalid_grant"
_MAX_ISSUER_CHARS = 2048
_MAX_JWKS_KEYS = 64
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# Our own token types must never be exchanged as if an outside issuer had made them.
_REFUSED_TYPES = frozenset({"at+jwt", "application/at+jwt", "dpop+jwt", "application/dpop+jwt"})


@dataclass(frozen=True, slots=True)
class FederationRule:
    """One trusted issuer.

    Attributes:
        issuer: the exact ``iss`` of its tokens.
        audience: the value its tokens' ``aud`` must contain (meant for this Tether).
        keys: its public keys (see :func:`parse_jwks`); ``kid`` is the issuer's key id.
        subject_claim: the claim naming the workload (``sub`` for JWT-SVIDs and Kubernetes).
        subject_pattern: must fullmatch that claim; its ``agent`` group is the agent's name.
    """

    issuer: str
    audience: str
    keys: Sequence[PublicKey]
    subject_pattern: re.Pattern[str]
    subject_claim: str = "sub"

    def __post_init__(self) -> None:
        if not isinstance(self.issuer, str) or not 0 < len(self.issuer) <= _MAX_ISSUER_CHARS:
            raise InvalidInputError("issuer must be a non-empty string", field="issuer")
        if not isinstance(self.audience, str) or not self.audience:
            raise InvalidInputError("audience must be a non-empty string", field="audience")
        if not isinstance(self.subject_claim, str) or not self.subject_claim:
            raise InvalidInputError("subject_claim must be a claim name", field="subject_claim")
        if "agent" not in self.subject_pattern.groupindex:
            raise InvalidInputError(
                "subject_pattern needs a named group 'agent' for the agent's name", field="subject_pattern"
            )


@dataclass(frozen=True, slots=True)
class FederatedIdentity:
    """A verified federated token: the agent it maps to and where it came from."""

    agent_name: str
    subject: str
    issuer: str
    expires_at: datetime
    jti: str | None


def _jwks_entry(entry: object) -> PublicKey | None:
    """One JWKS entry as a signing key; None for a key meant for another use."""
    if not isinstance(entry, Mapping):
        raise InvalidInputError("every JWKS entry must be a JWK object", field="jwks")
    if _PRIVATE_MEMBERS & set(entry):
        raise InvalidInputError("the JWKS holds private key material", field="jwks")
    if entry.get("use", "sig") != "sig":
        return None
    key = parse_public_jwk(entry, allow_rsa=True)
    alg = entry.get("alg")
    if alg is not None:
        # A key that names its algorithm is only good for that one (RFC 7517 §4.4).
        if not isinstance(alg, str) or alg not in key.algorithms:
            raise InvalidInputError("a JWKS key's alg is not supported or does not fit its key", field="jwks")
        key = dataclasses.replace(key, algorithms=frozenset({alg}))
    kid = entry.get("kid")
    if kid is not None:
        if not isinstance(kid, str) or not kid:
            raise InvalidInputError("JWKS kid must be a non-empty string", field="jwks")
        key = dataclasses.replace(key, kid=kid)
    return key


def parse_jwks(jwks: Mapping[str, Any]) -> list[PublicKey]:
    """The signing keys of an issuer's JWKS (RFC 7517), RSA allowed.

    Keys marked for another use than ``sig`` are skipped. A key's ``kid`` in the JWKS becomes
    :attr:`PublicKey.kid` (tokens name the issuer's key id, not our thumbprint); without one the
    RFC 7638 thumbprint stands in.

    Raises:
        InvalidInputError: not a JWKS, a key holds private members (the whole set is refused: its
            publisher leaks secrets), a key is malformed or unsupported, kids repeat, or no
            signing key remains.
    """
    entries = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(entries, list) or not entries:
        raise InvalidInputError("a JWKS is an object with a non-empty 'keys' list", field="jwks")
    if len(entries) > _MAX_JWKS_KEYS:
        raise InvalidInputError(f"a JWKS may hold at most {_MAX_JWKS_KEYS} keys", field="jwks")
    keys = [key for key in map(_jwks_entry, entries) if key is not None]
    if not keys:
        raise InvalidInputError("the JWKS holds no signing key", field="jwks")
    if len({k.kid for k in keys}) != len(keys):
        raise InvalidInputError("the JWKS repeats a kid", field="jwks")
    return keys


def peek_federated_issuer(token: str) -> str:
    """The ``iss`` of a federated token, UNVERIFIED: only to find its :class:`FederationRule`.

    Raises:
        AuthenticationError: (``invalid_grant``) oversized, malformed, or no string ``iss``.
    """
    iss = peek_claims(token, code=_CODE).get("iss")
    if not isinstance(iss, str) or not 0 < len(iss) <= _MAX_ISSUER_CHARS:
        raise AuthenticationError("subject token lacks an iss", code=_CODE)
    return iss


def _candidates(header: Mapping[str, Any], rule: FederationRule, alg: str) -> list[PublicKey]:
    fitting = [k for k in rule.keys if alg in k.algorithms]
    kid = header.get("kid")
    if kid is None:
        return fitting
    if not isinstance(kid, str):
        raise AuthenticationError("subject token kid is not a string", code=_CODE)
    chosen = [k for k in rule.keys if k.kid == kid]
    if not chosen:
        raise AuthenticationError(
            "subject token signed with a key id the issuer does not publish", code=_CODE
        )
    return chosen


def _verified_claims(token: str, rule: FederationRule) -> dict[str, Any]:
    """Check typ and alg, then the signature with the kid's key (or each fitting key)."""
    with _recoded(_CODE):
        header = jws_header(token)
    # Claims that are no JSON object are refused now, so that trying several keys below can
    # only fail for the signature.
    peek_claims(token, code=_CODE)
    typ = header.get("typ")
    if isinstance(typ, str) and typ.lower() in _REFUSED_TYPES:
        raise AuthenticationError("subject token is a Tether token type, not a federated one", code=_CODE)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in FEDERATION_ALGORITHMS:
        raise AuthenticationError(f"subject token algorithm {str(alg)[:20]!r} is not allowed", code=_CODE)
    if not rule.keys:
        raise AuthenticationError("the trusted issuer has no keys", code=_CODE)
    for key in _candidates(header, rule, alg):
        try:
            _, claims = verify_jws(token, key, algorithms=FEDERATION_ALGORITHMS)
        except AuthenticationError:
            continue
        return claims
    raise AuthenticationError("subject token signature does not verify with the issuer's keys", code=_CODE)


def verify_federated_token(
    token: str,
    rule: FederationRule,
    *,
    now: datetime,
    leeway_seconds: int = 30,
    max_lifetime_seconds: int = 86400,
) -> FederatedIdentity:
    """Verify a subject token from a trusted issuer and map it to an agent name.

    Args:
        token: the compact JWT from ``subject_token``.
        rule: the trusted issuer its ``iss`` names.
        now: the time of the request.
        leeway_seconds: clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
        max_lifetime_seconds: how far in the future ``exp`` may lie.

    Raises:
        AuthenticationError: (``invalid_grant``) on any failure; the message names the check.
    """
    claims = _verified_claims(token, rule)

    if claims.get("iss") != rule.issuer:
        raise AuthenticationError("subject token comes from another issuer", code=_CODE)
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if rule.audience not in [a for a in audiences if isinstance(a, str)]:
        raise AuthenticationError("subject token is meant for another audience", code=_CODE)

    exp = _check_validity(
        claims,
        now,
        code=_CODE,
        what="subject token",
        leeway_seconds=leeway_seconds,
        max_lifetime_seconds=max_lifetime_seconds,
        bound_iat=False,
    )

    subject = claims.get(rule.subject_claim)
    if not isinstance(subject, str):
        raise AuthenticationError(f"subject token claim {rule.subject_claim!r} is not a string", code=_CODE)
    match = rule.subject_pattern.fullmatch(subject)
    name = match["agent"] if match is not None else None
    if not isinstance(name, str) or not AGENT_NAME.fullmatch(name):
        raise AuthenticationError(
            "subject token's subject does not map to an agent under this rule", code=_CODE
        )
    jti = claims.get("jti")
    return FederatedIdentity(
        agent_name=name,
        subject=subject,
        issuer=rule.issuer,
        expires_at=_datetime(exp),
        jti=jti if isinstance(jti, str) and 0 < len(jti) <= 256 else None,
    )
