"""Tether's own rotating Ed25519 keys that sign access tokens.

The key versions live in the store's meta table, encrypted under the root key with AES-256-GCM
(the audit keys' scheme, with its own associated data so neither blob can stand in for the
other), so every node of a deployment signs and verifies with the same keys. Rotation adds a
key and retires the previous one; a retired key keeps verifying the tokens it signed until they
expire, and is published in the JWKS for that long. Keys retired for more than a day are dropped.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import OKPKey

from tether.clock import utc
from tether.crypto.envelope import KEY_BYTES, NONCE_BYTES
from tether.crypto.jose import PublicKey, parse_public_jwk
from tether.errors import ConflictError, CryptoError, DecryptionError, StorageError
from tether.store.base import Storage

__all__ = [
    "RETIRED_KEY_RETENTION",
    "TOKEN_KEYS_META",
    "TokenSigningKey",
    "TokenSigningKeys",
    "decode_token_keys",
    "encode_token_keys",
    "load_or_create_token_keys",
    "rotate_token_keys",
]

TOKEN_KEYS_META = "token_signing_keys"
RETIRED_KEY_RETENTION = timedelta(days=1)
_AAD = b"tether/token-keys/v1"
# Published a little longer than the longest token could live, for verifiers' clock leeway.
_JWKS_MARGIN = timedelta(seconds=60)
_CAS_ATTEMPTS = 5


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigningKey:
    """One version of the token-signing key. Holds a private key: never logged or printed."""

    __slots__ = ("_private", "created_at", "public", "retired_at")

    def __init__(self, private: OKPKey, created_at: datetime, retired_at: datetime | None = None) -> None:
        if not private.is_private or private.curve_name != "Ed25519":
            raise CryptoError("a token-signing key must be a private Ed25519 key")
        self._private = private
        self.public: PublicKey = parse_public_jwk(private.as_dict(private=False))
        self.created_at = utc(created_at)
        self.retired_at = utc(retired_at) if retired_at is not None else None

    @classmethod
    def generate(cls, now: datetime) -> TokenSigningKey:
        """A fresh key created at ``now``."""
        return cls(OKPKey.generate_key("Ed25519"), now)

    @property
    def kid(self) -> str:
        """The RFC 7638 thumbprint of the public key."""
        return self.public.kid

    @property
    def private_key(self) -> OKPKey:
        """The private key, for :func:`tether.crypto.jose.sign_jws` only."""
        return self._private

    def retired(self, now: datetime) -> TokenSigningKey:
        """This key, retired at ``now``."""
        return TokenSigningKey(self._private, self.created_at, now)

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK with ``kid``, ``alg`` and ``use``."""
        return {**self.public.jwk, "kid": self.kid, "alg": "Ed25519", "use": "sig"}

    def __repr__(self) -> str:
        return f"TokenSigningKey(kid={self.kid!r}, retired={self.retired_at is not None})"


class TokenSigningKeys:
    """All held versions, oldest first; the newest signs, the others only verify."""

    __slots__ = ("_by_kid", "versions")

    def __init__(self, versions: Sequence[TokenSigningKey]) -> None:
        if not versions:
            raise CryptoError("there must be at least one token-signing key")
        if versions[-1].retired_at is not None:
            raise CryptoError("the newest token-signing key must not be retired")
        self.versions: tuple[TokenSigningKey, ...] = tuple(versions)
        self._by_kid: Mapping[str, TokenSigningKey] = {v.kid: v for v in self.versions}
        if len(self._by_kid) != len(self.versions):
            raise CryptoError("token-signing key ids are not unique")

    @classmethod
    def generate(cls, now: datetime) -> TokenSigningKeys:
        """A first set holding one fresh key."""
        return cls([TokenSigningKey.generate(now)])

    @property
    def active(self) -> TokenSigningKey:
        """The key that signs new tokens (the newest)."""
        return self.versions[-1]

    def key_for(self, kid: str) -> TokenSigningKey | None:
        """The held key with this ``kid`` (current or retired), or None."""
        return self._by_kid.get(kid)

    def public_jwks(self, now: datetime, max_token_ttl_seconds: int) -> dict[str, list[dict[str, str]]]:
        """The JWKS to publish: the active key, and retired keys that may still verify a live token.

        Args:
            now: the time of publication.
            max_token_ttl_seconds: the longest lifetime of a token signed by these keys.
        """
        horizon = utc(now) - timedelta(seconds=max_token_ttl_seconds) - _JWKS_MARGIN
        keys = [
            v.public_jwk() for v in reversed(self.versions) if v.retired_at is None or v.retired_at > horizon
        ]
        return {"keys": keys}

    def rotated(self, now: datetime) -> TokenSigningKeys:
        """A new set: a fresh active key, the previous one retired at ``now``, and keys retired for
        longer than :data:`RETIRED_KEY_RETENTION` dropped."""
        at = utc(now)
        kept = [
            v
            for v in self.versions[:-1]
            if v.retired_at is not None and at - v.retired_at <= RETIRED_KEY_RETENTION
        ]
        return TokenSigningKeys([*kept, self.active.retired(at), TokenSigningKey.generate(at)])

    def __repr__(self) -> str:
        return f"TokenSigningKeys(active={self.active.kid!r}, versions={len(self.versions)})"


def encode_token_keys(keys: TokenSigningKeys, root_key: bytes) -> bytes:
    """Serialise and encrypt the token-signing keys under the root key."""
    entries: list[dict[str, Any]] = []
    for version in keys.versions:
        seed = version.private_key.as_dict(private=True)["d"]
        entries.append(
            {
                "d": seed,
                "created_at": version.created_at.isoformat(),
                "retired_at": version.retired_at.isoformat() if version.retired_at else None,
            }
        )
    body = json.dumps({"v": 1, "keys": entries}).encode()
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(root_key).encrypt(nonce, body, _AAD)


def _version_from(entry: Mapping[str, Any]) -> TokenSigningKey:
    seed = _b64url_decode(entry["d"])
    # Only the 32-byte seed is stored; the public half is derived from it.
    private = OKPKey.import_key(Ed25519PrivateKey.from_private_bytes(seed))
    retired = entry["retired_at"]
    return TokenSigningKey(
        private,
        datetime.fromisoformat(entry["created_at"]),
        datetime.fromisoformat(retired) if retired is not None else None,
    )


def decode_token_keys(blob: bytes, root_key: bytes) -> TokenSigningKeys:
    """Decrypt the token-signing keys; a wrong root key or tampering raises :class:`DecryptionError`."""
    if len(root_key) != KEY_BYTES or len(blob) < NONCE_BYTES + 16:
        raise DecryptionError("the root key does not open this store's token-signing keys")
    try:
        body = AESGCM(root_key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _AAD)
    except InvalidTag:
        raise DecryptionError("the root key does not open this store's token-signing keys") from None
    try:
        data = json.loads(body)
        if data["v"] != 1:
            raise CryptoError(f"unsupported token-signing key format {data['v']!r}")
        return TokenSigningKeys([_version_from(entry) for entry in data["keys"]])
    except (KeyError, TypeError, ValueError) as exc:
        raise CryptoError(f"the stored token-signing keys are malformed ({type(exc).__name__})") from None


async def load_or_create_token_keys(storage: Storage, root_key: bytes, now: datetime) -> TokenSigningKeys:
    """The deployment's token-signing keys: read from the store, or generated and stored on first use.

    Nodes racing to create them converge on the first writer's keys.

    Raises:
        DecryptionError: the root key does not open the stored keys.
        StorageError: the keys could neither be read nor created.
    """
    for _ in range(_CAS_ATTEMPTS):
        blob = await storage.get_meta(TOKEN_KEYS_META)
        if blob is not None:
            return decode_token_keys(blob, root_key)
        keys = TokenSigningKeys.generate(now)
        try:
            await storage.put_meta(TOKEN_KEYS_META, encode_token_keys(keys, root_key), expected=None)
        except ConflictError:
            continue  # another node stored its keys first; use those
        return keys
    raise StorageError("the token-signing keys could neither be read nor created")


async def rotate_token_keys(storage: Storage, root_key: bytes, now: datetime) -> TokenSigningKeys:
    """Add a fresh signing key, retire the previous one and drop keys retired over a day ago.

    A compare-and-set write: a concurrent rotation makes this one start again from the stored
    keys, so no node's key is lost. With no keys stored yet, the first set is created.

    Raises:
        DecryptionError: the root key does not open the stored keys.
        StorageError: the rotation kept losing to concurrent writers.
    """
    for _ in range(_CAS_ATTEMPTS):
        blob = await storage.get_meta(TOKEN_KEYS_META)
        keys = (
            TokenSigningKeys.generate(now) if blob is None else decode_token_keys(blob, root_key).rotated(now)
        )
        try:
            await storage.put_meta(TOKEN_KEYS_META, encode_token_keys(keys, root_key), expected=blob)
        except ConflictError:
            continue
        return keys
    raise StorageError("the token-signing keys could not be rotated: too many concurrent writers")
