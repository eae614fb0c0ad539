"""The agent's side of the protocol, without I/O: client assertions and DPoP proofs."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tether.crypto.jose import KeyObject, PublicKey, private_key_from_jwk, sign_jws
from tether.errors import InvalidInputError

__all__ = ["ASSERTION_TYPE", "JWT_TOKEN_TYPE", "TOKEN_EXCHANGE", "Signer", "load_key_file"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def load_key_file(path: Path | str) -> dict[str, Any]:
    """Read a private JWK written by ``tether keygen``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read key file {path}: {type(exc).__name__}", field="key") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"key file {path} does not hold a JWK object", field="key")
    return data


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _htu(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class Signer:
    """Holds the agent's private key; signs assertions and proofs. Never exposes the key."""

    def __init__(self, key: Mapping[str, Any] | Path | str) -> None:
        jwk = load_key_file(key) if isinstance(key, Path | str) else dict(key)
        self._key: KeyObject
        self._key, self.public = private_key_from_jwk(jwk)
        self._alg = "Ed25519" if self.public.jwk["kty"] == "OKP" else "ES256"

    @property
    def public_key(self) -> PublicKey:
        return self.public

    def client_assertion(self, agent_id: str, audience: str, now: int, lifetime_seconds: int = 60) -> str:
        """An RFC 7523 assertion: iss = sub = the agent, aud = the token endpoint, single-use jti."""
        claims = {
            "iss": agent_id,
            "sub": agent_id,
            "aud": audience,
            "iat": now,
            "exp": now + lifetime_seconds,
            "jti": secrets.token_urlsafe(16),
        }
        return sign_jws({"alg": self._alg, "typ": "JWT", "kid": self.public.kid}, claims, self._key)

    def proof(self, method: str, url: str, now: int, access_token: str | None = None) -> str:
        """An RFC 9449 DPoP proof for one request."""
        claims: dict[str, Any] = {
            "htm": method.upper(),
            "htu": _htu(url),
            "iat": now,
            "jti": secrets.token_urlsafe(16),
        }
        if access_token is not None:
            claims["ath"] = _b64(hashlib.sha256(access_token.encode("ascii")).digest())
        header = {"alg": self._alg, "typ": "dpop+jwt", "jwk": dict(self.public.jwk)}
        return sign_jws(header, claims, self._key)

    def __repr__(self) -> str:
        return f"Signer(kid={self.public.kid})"
