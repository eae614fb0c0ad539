"""Agents and the issuers trusted to vouch for them: pure, validated data.

An agent's id is a SPIFFE ID, ``spiffe://<trust-domain>/agent/<name>``. It proves itself
with a key it holds (one of its registered public JWKs) or with a token from a
:class:`TrustedIssuer` whose claim maps to its name. Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from tether.crypto.jose import FEDERATION_ALGORITHMS, parse_public_jwk
from tether.errors import InvalidInputError

__all__ = [
    "MAX_ACTIVE_KEYS",
    "MAX_ISSUER_KEYS",
    "MAX_LABELS",
    "AgentAttributes",
    "AgentKey",
    "AgentRecord",
    "TrustedIssuer",
    "agent_id",
    "parse_agent_id",
    "validate_agent_name",
    "validate_trust_domain",
]

#: At most this many keys of one agent are active at once (rotation with overlap needs two).
MAX_ACTIVE_KEYS = 5
MAX_LABELS = 32
MAX_ATTRIBUTE_CHARS = 128
#: At most this many keys in an inline JWKS of a trusted issuer.
MAX_ISSUER_KEYS = 32

_NAME_TEXT = r"[a-z0-9][a-z0-9._-]{0,62}"
_NAME = re.compile(_NAME_TEXT)
_LABEL = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_TRUST_DOMAIN_TEXT = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
_TRUST_DOMAIN = re.compile(_TRUST_DOMAIN_TEXT)
_AGENT_ID = re.compile(rf"spiffe://(?P<td>{_TRUST_DOMAIN_TEXT})/agent/(?P<name>{_NAME_TEXT})")
_SPIFFE_TRUST_DOMAIN = re.compile(rf"spiffe://{_TRUST_DOMAIN_TEXT}")
_KID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_CLAIM = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,63}")
MAX_TRUST_DOMAIN_CHARS = 255
MAX_ISSUER_CHARS = 256
MAX_AUDIENCE_CHARS = 256
MAX_PATTERN_CHARS = 256
MAX_URL_CHARS = 2048
_LOOPBACK_NAMES = frozenset({"localhost"})
_ISSUER_KEY_EXTRAS = ("kid", "alg", "use")


def validate_agent_name(name: str, field_name: str = "name") -> str:
    """Return ``name`` if it is a valid agent name: 1-63 of ``a-z 0-9 . _ -``, starting alphanumeric."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(
            "agent name must be 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter "
            "or digit",
            field=field_name,
        )
    return name


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if it is a lowercase DNS name (the SPIFFE trust domain form)."""
    if (
        not isinstance(trust_domain, str)
        or len(trust_domain) > MAX_TRUST_DOMAIN_CHARS
        or not _TRUST_DOMAIN.fullmatch(trust_domain)
    ):
        raise InvalidInputError("trust domain must be a lowercase DNS name", field="trust_domain")
    return trust_domain


def agent_id(trust_domain: str, name: str) -> str:
    """The SPIFFE ID of agent ``name`` in ``trust_domain``."""
    return f"spiffe://{validate_trust_domain(trust_domain)}/agent/{validate_agent_name(name)}"


def parse_agent_id(value: str) -> tuple[str, str]:
    """Split an agent's SPIFFE ID into ``(trust_domain, name)``.

    Strict: exactly ``spiffe://<trust-domain>/agent/<name>``, lowercase, no port, user info,
    query, fragment, percent-encoding, trailing slash or extra path segment.
    """
    match = _AGENT_ID.fullmatch(value) if isinstance(value, str) else None
    if match is None or len(match["td"]) > MAX_TRUST_DOMAIN_CHARS:
        raise InvalidInputError(
            "not an agent id: expected spiffe://<trust-domain>/agent/<name>", field="agent_id"
        )
    return match["td"], match["name"]


def _aware(value: datetime | None, what: str) -> None:
    if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
        raise InvalidInputError(f"{what} must be an aware datetime", field=what)


def _bounded_text(value: str, what: str, limit: int = MAX_ATTRIBUTE_CHARS) -> None:
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidInputError(f"{what} must be text of at most {limit} characters", field=what)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise InvalidInputError(f"{what} must not contain control characters", field=what)


@dataclass(frozen=True, slots=True)
class AgentAttributes:
    """What policies can see about an agent (``Agent`` entity attributes in Cedar)."""

    team: str = ""
    environment: str = ""
    owner: str = ""
    labels: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for name in ("team", "environment", "owner"):
            _bounded_text(getattr(self, name), name)
        if isinstance(self.labels, str | bytes) or not isinstance(
            self.labels, frozenset | set | list | tuple
        ):
            raise InvalidInputError("labels must be a list of names", field="labels")
        labels = frozenset(self.labels)
        if len(labels) > MAX_LABELS:
            raise InvalidInputError(f"at most {MAX_LABELS} labels are allowed", field="labels")
        for label in labels:
            if not isinstance(label, str) or not _LABEL.fullmatch(label):
                raise InvalidInputError(
                    f"label {str(label)[:40]!r} is not a valid name: lowercase letters, digits, '.', '_', "
                    "'-', at most 64 characters",
                    field="labels",
                )
        object.__setattr__(self, "labels", labels)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (labels sorted)."""
        return {
            "team": self.team,
            "environment": self.environment,
            "owner": self.owner,
            "labels": sorted(self.labels),
        }


def _frozen_jwk(value: Mapping[str, Any], what: str) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not value:
        raise InvalidInputError(f"{what} must be a non-empty JWK object", field=what)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidInputError(f"{what} members must be strings", field=what)
    if "kty" not in value:
        raise InvalidInputError(f"{what} has no kty", field=what)
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True)
class AgentKey:
    """One public key of an agent. ``kid`` is the key's RFC 7638 thumbprint.

    Built from a validated key with :meth:`from_jwk`; the constructor checks shape only, so
    that reading keys back from the store does not redo the cryptography on every request.
    """

    kid: str
    jwk: Mapping[str, str]
    added_at: datetime
    removed_at: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kid, str) or not _KID.fullmatch(self.kid):
            raise InvalidInputError("kid must be a base64url thumbprint", field="kid")
        object.__setattr__(self, "jwk", _frozen_jwk(self.jwk, "public_key"))
        _aware(self.added_at, "added_at")
        _aware(self.removed_at, "removed_at")
        if self.removed_at is not None and self.removed_at < self.added_at:
            raise InvalidInputError("a key cannot be removed before it was added", field="removed_at")

    @classmethod
    def from_jwk(cls, jwk: object, added_at: datetime) -> AgentKey:
        """Validate a public JWK (Ed25519 or P-256; private members refused) and key it by thumbprint."""
        public = parse_public_jwk(jwk)
        return cls(kid=public.kid, jwk=dict(public.jwk), added_at=added_at)

    @property
    def active(self) -> bool:
        return self.removed_at is None


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """A registered agent with all its keys (removed ones included, for the record)."""

    id: str
    name: str
    trust_domain: str
    attributes: AgentAttributes
    keys: tuple[AgentKey, ...]
    created_at: datetime
    created_by: str
    disabled_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.id != agent_id(self.trust_domain, self.name):
            raise InvalidInputError("agent id does not match its trust domain and name", field="id")
        if not isinstance(self.attributes, AgentAttributes):
            raise InvalidInputError("attributes must be AgentAttributes", field="attributes")
        keys = tuple(self.keys)
        if not all(isinstance(key, AgentKey) for key in keys):
            raise InvalidInputError("keys must be AgentKey values", field="keys")
        if len({key.kid for key in keys}) != len(keys):
            raise InvalidInputError("an agent cannot hold the same key twice", field="keys")
        if sum(key.active for key in keys) > MAX_ACTIVE_KEYS:
            raise InvalidInputError(f"an agent has at most {MAX_ACTIVE_KEYS} active keys", field="keys")
        object.__setattr__(self, "keys", keys)
        _bounded_text(self.created_by, "created_by")
        _aware(self.created_at, "created_at")
        _aware(self.disabled_at, "disabled_at")

    @property
    def active_keys(self) -> tuple[AgentKey, ...]:
        return tuple(key for key in self.keys if key.active)

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None

    def key(self, kid: str) -> AgentKey | None:
        """The active key with thumbprint ``kid``, if any."""
        return next((key for key in self.keys if key.kid == kid and key.active), None)


def _validate_issuer(value: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ISSUER_CHARS:
        raise InvalidInputError(f"issuer must be 1-{MAX_ISSUER_CHARS} characters", field="issuer")
    if value.startswith("spiffe://"):
        if not _SPIFFE_TRUST_DOMAIN.fullmatch(value):
            raise InvalidInputError(
                "a SPIFFE issuer is spiffe://<trust-domain> with nothing after it", field="issuer"
            )
        return value
    _check_url(value, "issuer", allow_loopback_http=False)
    parts = urlsplit(value)
    if parts.query or parts.fragment:
        raise InvalidInputError("an issuer URL has no query or fragment", field="issuer")
    return value


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(value: str, what: str, *, allow_loopback_http: bool) -> None:
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS:
        raise InvalidInputError(f"{what} must be a URL of at most {MAX_URL_CHARS} characters", field=what)
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in value):
        raise InvalidInputError(f"{what} must not contain spaces or control characters", field=what)
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise InvalidInputError(f"{what} is not a valid URL", field=what) from None
    if not host:
        raise InvalidInputError(f"{what} has no host", field=what)
    if parts.username is not None or parts.password is not None:
        raise InvalidInputError(f"{what} must not carry credentials", field=what)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and allow_loopback_http and _is_loopback(host):
        return
    rule = "https (http only for a loopback host)" if allow_loopback_http else "https"
    raise InvalidInputError(f"{what} must use {rule}", field=what)


_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def _validate_jwks(value: object) -> dict[str, Any]:
    """A JWKS (RFC 7517) reduced to its public signing keys, each with its issuer-assigned
    ``kid``/``alg``/``use``. Keys for another use than ``sig`` are dropped (published sets often
    hold encryption keys too); private members anywhere refuse the whole set."""
    raw_keys = value.get("keys") if isinstance(value, Mapping) else None
    if not isinstance(raw_keys, list) or not raw_keys:
        raise InvalidInputError('jwks must be an object {"keys": [JWK, ...]}', field="jwks")
    if len(raw_keys) > MAX_ISSUER_KEYS:
        raise InvalidInputError(f"jwks may hold at most {MAX_ISSUER_KEYS} keys", field="jwks")
    if not all(isinstance(raw, Mapping) for raw in raw_keys):
        raise InvalidInputError("every jwks entry must be a JWK object", field="jwks")
    if any(_PRIVATE_MEMBERS & set(raw) for raw in raw_keys):
        raise InvalidInputError("jwks holds private key material; publish public keys only", field="jwks")
    keys: list[dict[str, str]] = []
    kids: set[str] = set()
    for raw in raw_keys:
        for extra in _ISSUER_KEY_EXTRAS:
            if extra in raw and (not isinstance(raw[extra], str) or not 0 < len(raw[extra]) <= 128):
                raise InvalidInputError(f"jwks: {extra} must be a string of 1-128 characters", field="jwks")
        if raw.get("use", "sig") != "sig":
            continue
        try:
            public = parse_public_jwk(raw, allow_rsa=True)
        except InvalidInputError as exc:
            raise InvalidInputError(f"jwks: {exc}", field="jwks") from None
        key = dict(public.jwk)
        key.update({extra: raw[extra] for extra in _ISSUER_KEY_EXTRAS if extra in raw})
        alg = key.get("alg")
        if alg is not None and (alg not in FEDERATION_ALGORITHMS or alg not in public.algorithms):
            raise InvalidInputError(f"jwks: algorithm {alg[:20]!r} does not fit its key", field="jwks")
        kid = key.get("kid", public.kid)
        if kid in kids:
            raise InvalidInputError("jwks: two keys share a kid", field="jwks")
        kids.add(kid)
        keys.append(key)
    if not keys:
        raise InvalidInputError("jwks holds no signing key", field="jwks")
    return {"keys": keys}


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustedIssuer:
    """An external issuer whose tokens may be exchanged for an agent's access token.

    A token from ``issuer`` with ``audience`` in its ``aud``, signed by a key of ``jwks``
    (inline) or of the JWKS at ``jwks_url``, names agent ``m['agent']`` where
    ``m = re.fullmatch(subject_pattern, claims[subject_claim])``.
    """

    name: str
    issuer: str
    audience: str
    subject_pattern: str
    created_at: datetime
    created_by: str
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = None
    subject_claim: str = "sub"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InvalidInputError(
                "issuer name must be 1-63 lowercase letters, digits, '.', '_' or '-'", field="name"
            )
        _validate_issuer(self.issuer)
        if not isinstance(self.audience, str) or not 1 <= len(self.audience) <= MAX_AUDIENCE_CHARS:
            raise InvalidInputError(f"audience must be 1-{MAX_AUDIENCE_CHARS} characters", field="audience")
        _bounded_text(self.audience, "audience", MAX_AUDIENCE_CHARS)
        if (self.jwks is None) == (self.jwks_url is None):
            raise InvalidInputError("give exactly one of jwks and jwks_url", field="jwks")
        if self.jwks is not None:
            object.__setattr__(self, "jwks", _validate_jwks(self.jwks))
        if self.jwks_url is not None:
            _check_url(self.jwks_url, "jwks_url", allow_loopback_http=True)
        if not isinstance(self.subject_claim, str) or not _CLAIM.fullmatch(self.subject_claim):
            raise InvalidInputError(
                "subject_claim must be a claim name of at most 64 characters", field="subject_claim"
            )
        self._check_pattern()
        _bounded_text(self.created_by, "created_by")
        _aware(self.created_at, "created_at")

    def _check_pattern(self) -> None:
        pattern = self.subject_pattern
        if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_PATTERN_CHARS:
            raise InvalidInputError(
                f"subject_pattern must be 1-{MAX_PATTERN_CHARS} characters", field="subject_pattern"
            )
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise InvalidInputError(
                f"subject_pattern is not a valid regular expression: {exc.msg}", field="subject_pattern"
            ) from None
        if "agent" not in compiled.groupindex:
            raise InvalidInputError(
                "subject_pattern needs a named group (?P<agent>...) that yields the agent name",
                field="subject_pattern",
            )

    def jwks_json(self) -> dict[str, Any] | None:
        """A copy of the inline JWKS, JSON-ready (None when keys come from ``jwks_url``)."""
        if self.jwks is None:
            return None
        return {"keys": [dict(key) for key in self.jwks["keys"]]}

    def agent_name_for(self, claims: Mapping[str, Any]) -> str | None:
        """The agent name that verified ``claims`` map to, or None if they map to none.

        The subject claim must be a string that ``subject_pattern`` matches in full, and the
        ``agent`` group a valid agent name.
        """
        value = claims.get(self.subject_claim)
        if not isinstance(value, str) or len(value) > MAX_URL_CHARS:
            return None
        match = re.fullmatch(self.subject_pattern, value)
        if match is None:
            return None
        name = match.group("agent")
        return name if isinstance(name, str) and _NAME.fullmatch(name) else None
