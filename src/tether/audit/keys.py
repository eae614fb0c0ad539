"""The deployment's audit keys: the HMAC key for fingerprints and the checkpoint signing key.

Both are generated on first use and kept in the store's meta table, encrypted under the
root key with AES-256-GCM (the keyring's scheme, with its own associated data so that
neither blob can stand in for the other). Every node of a deployment therefore
fingerprints and signs with the same keys.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import OKPKey

from tether.crypto.envelope import KEY_BYTES, NONCE_BYTES
from tether.domain.events import Fingerprinter
from tether.errors import ConflictError, CryptoError, DecryptionError, StorageError
from tether.store.base import Storage

__all__ = [
    "AUDIT_KEYS_META",
    "AuditKeys",
    "decode_audit_keys",
    "encode_audit_keys",
    "key_id_of",
    "load_or_create_audit_keys",
    "public_jwk",
    "public_key_from_jwk",
]

AUDIT_KEYS_META = "audit_keys"
_AAD = b"tether/audit-keys/v1"
_ED25519_BYTES = 32


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(public_key: bytes) -> dict[str, str]:
    """The Ed25519 public key as a JWK (RFC 8037): ``{"kty": "OKP", "crv": "Ed25519", "x": ...}``."""
    if len(public_key) != _ED25519_BYTES:
        raise CryptoError("an Ed25519 public key is 32 bytes")
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(public_key)}


def public_key_from_jwk(jwk: Any) -> bytes:
    """The raw 32-byte Ed25519 public key in ``jwk``; anything else raises :class:`CryptoError`."""
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise CryptoError("the checkpoint key must be an Ed25519 OKP JWK")
    if "d" in jwk:
        raise CryptoError("refusing a JWK that holds a private key")
    x = jwk.get("x")
    try:
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)) if isinstance(x, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != _ED25519_BYTES:
        raise CryptoError("the checkpoint key's x is not a 32-byte Ed25519 key")
    return raw


def key_id_of(public_key: bytes) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of an Ed25519 public key."""
    return OKPKey.import_key(Ed25519PublicKey.from_public_bytes(public_key)).thumbprint()


class AuditKeys:
    """The per-deployment audit keys. Holds secret key material: never logged or printed."""

    __slots__ = ("_fingerprinter", "_hmac_key", "_public_key", "_signing_key", "created_at", "key_id")

    def __init__(self, hmac_key: bytes, signing_key: Ed25519PrivateKey, created_at: datetime) -> None:
        if len(hmac_key) != KEY_BYTES:
            raise CryptoError("the audit HMAC key must be 32 bytes")
        self._hmac_key = hmac_key
        self._signing_key = signing_key
        self._fingerprinter = Fingerprinter(hmac_key)
        self._public_key = signing_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.created_at = created_at
        self.key_id = key_id_of(self._public_key)

    @classmethod
    def generate(cls, now: datetime) -> AuditKeys:
        return cls(os.urandom(KEY_BYTES), Ed25519PrivateKey.generate(), now)

    @property
    def fingerprinter(self) -> Fingerprinter:
        return self._fingerprinter

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key that verifies checkpoints."""
        return self._public_key

    def public_jwk(self) -> dict[str, str]:
        """The checkpoint verification key as a JWK, with ``kid`` set to :attr:`key_id`."""
        return {**public_jwk(self._public_key), "kid": self.key_id}

    def public_key_pem(self) -> str:
        """The checkpoint verification key as PEM (SubjectPublicKeyInfo), for outside verifiers."""
        return (
            self._signing_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
        )

    def sign(self, message: bytes) -> bytes:
        return self._signing_key.sign(message)

    def __repr__(self) -> str:
        return f"AuditKeys(key_id={self.key_id!r})"


def encode_audit_keys(keys: AuditKeys, root_key: bytes) -> bytes:
    """Serialise and encrypt the audit keys under the root key."""
    seed = keys._signing_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    body = json.dumps(
        {
            "v": 1,
            "hmac_key": base64.b64encode(keys._hmac_key).decode(),
            "signing_key": base64.b64encode(seed).decode(),
            "created_at": keys.created_at.isoformat(),
        }
    ).encode()
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(root_key).encrypt(nonce, body, _AAD)


def decode_audit_keys(blob: bytes, root_key: bytes) -> AuditKeys:
    """Decrypt the audit keys; a wrong root key or tampering raises :class:`DecryptionError`."""
    if len(root_key) != KEY_BYTES or len(blob) < NONCE_BYTES + 16:
        raise DecryptionError("the root key does not open this store's audit keys")
    try:
        body = AESGCM(root_key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _AAD)
    except InvalidTag:
        raise DecryptionError("the root key does not open this store's audit keys") from None
    try:
        entry = json.loads(body)
        if entry["v"] != 1:
            raise CryptoError(f"unsupported audit key format {entry['v']!r}")
        return AuditKeys(
            base64.b64decode(entry["hmac_key"]),
            Ed25519PrivateKey.from_private_bytes(base64.b64decode(entry["signing_key"])),
            datetime.fromisoformat(entry["created_at"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CryptoError(f"the stored audit keys are malformed ({type(exc).__name__})") from None


async def load_or_create_audit_keys(storage: Storage, root_key: bytes, now: datetime) -> AuditKeys:
    """The deployment's audit keys: read from the store, or generated and stored on first use.

    Nodes racing to create them converge on the first writer's keys.
    """
    for _ in range(3):
        blob = await storage.get_meta(AUDIT_KEYS_META)
        if blob is not None:
            return decode_audit_keys(blob, root_key)
        keys = AuditKeys.generate(now)
        try:
            await storage.put_meta(AUDIT_KEYS_META, encode_audit_keys(keys, root_key), expected=None)
        except ConflictError:
            continue  # another node stored its keys first; use those
        return keys
    raise StorageError("the audit keys could neither be read nor created")
