"""The versioned key-encryption-key ring, itself encrypted under the root key."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tether.crypto.envelope import KEY_BYTES, NONCE_BYTES
from tether.errors import CryptoError, DecryptionError

__all__ = ["Kek", "Keyring", "decode_keyring", "encode_keyring"]

_KEYRING_AAD = b"tether/keyring/v1"


@dataclass(frozen=True, slots=True)
class Kek:
    version: int
    key: bytes
    created_at: datetime

    def __repr__(self) -> str:  # never print key material
        return f"Kek(version={self.version}, created_at={self.created_at.isoformat()})"


@dataclass(frozen=True, slots=True)
class Keyring:
    """Immutable set of KEK versions; the highest is the active one."""

    keks: tuple[Kek, ...]

    def __post_init__(self) -> None:
        if not self.keks:
            raise CryptoError("a keyring needs at least one key")
        versions = [kek.version for kek in self.keks]
        if versions != sorted(set(versions)) or versions[0] < 1:
            raise CryptoError("keyring versions must be unique, positive and ascending")
        if any(len(kek.key) != KEY_BYTES for kek in self.keks):
            raise CryptoError("keyring keys must be 256-bit")

    @classmethod
    def new(cls, now: datetime) -> Keyring:
        return cls((Kek(1, AESGCM.generate_key(bit_length=256), now),))

    @property
    def active(self) -> Kek:
        return self.keks[-1]

    def get(self, version: int) -> Kek | None:
        for kek in self.keks:
            if kek.version == version:
                return kek
        return None

    def rotated(self, now: datetime) -> Keyring:
        """A new keyring with one more KEK version, which becomes active."""
        new = Kek(self.active.version + 1, AESGCM.generate_key(bit_length=256), now)
        return Keyring((*self.keks, new))

    def __repr__(self) -> str:
        return f"Keyring(versions={[kek.version for kek in self.keks]})"


def encode_keyring(keyring: Keyring, root_key: bytes) -> bytes:
    """Serialise and encrypt the keyring under the root key."""
    body = json.dumps(
        [
            {
                "version": k.version,
                "key": base64.b64encode(k.key).decode(),
                "created_at": k.created_at.isoformat(),
            }
            for k in keyring.keks
        ]
    ).encode()
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(root_key).encrypt(nonce, body, _KEYRING_AAD)


def decode_keyring(blob: bytes, root_key: bytes) -> Keyring:
    """Decrypt the keyring; a wrong root key or tampering raises :class:`DecryptionError`."""
    if len(root_key) != KEY_BYTES or len(blob) < NONCE_BYTES + 16:
        raise DecryptionError("the root key does not open this store's keyring")
    try:
        body = AESGCM(root_key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _KEYRING_AAD)
    except InvalidTag:
        raise DecryptionError("the root key does not open this store's keyring") from None
    entries = json.loads(body)
    return Keyring(
        tuple(
            Kek(int(e["version"]), base64.b64decode(e["key"]), datetime.fromisoformat(e["created_at"]))
            for e in entries
        )
    )
