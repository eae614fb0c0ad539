"""AES-256-GCM envelope encryption of one value.

Each value gets a fresh 256-bit data key (DEK). The value is encrypted under the
DEK; the DEK is wrapped under a key-encryption key (KEK) of the keyring. Both
layers carry associated data binding the record's identity (path and version), and
the wrap also binds the KEK version, so a ciphertext moved to another record, or a
wrapped key moved to another value, fails to decrypt.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tether.errors import DecryptionError

__all__ = ["KEY_BYTES", "EncryptedValue", "open_value", "record_aad", "rewrap", "seal_value"]

KEY_BYTES = 32
NONCE_BYTES = 12
_VALUE_DOMAIN = b"tether/secret-value/v1"
_WRAP_DOMAIN = b"tether/data-key/v1"


@dataclass(frozen=True, slots=True)
class EncryptedValue:
    """What storage holds for one secret version: never the plaintext."""

    kek_version: int
    wrapped_dek: bytes  # nonce || AES-GCM(KEK, DEK)
    ciphertext: bytes  # nonce || AES-GCM(DEK, value)

    def __repr__(self) -> str:
        return f"EncryptedValue(kek_version={self.kek_version}, {len(self.ciphertext)} bytes)"


def record_aad(path: str, version: int) -> bytes:
    """Associated data naming one record: unambiguous, length-prefixed."""
    encoded = path.encode("utf-8")
    return struct.pack(">H", len(encoded)) + encoded + struct.pack(">Q", version)


def _wrap_aad(identity: bytes, kek_version: int) -> bytes:
    return _WRAP_DOMAIN + identity + struct.pack(">I", kek_version)


def seal_value(plaintext: bytes, *, identity: bytes, kek: bytes, kek_version: int) -> EncryptedValue:
    """Encrypt ``plaintext`` under a fresh data key wrapped by ``kek``."""
    dek = AESGCM.generate_key(bit_length=256)
    value_nonce = os.urandom(NONCE_BYTES)
    ciphertext = value_nonce + AESGCM(dek).encrypt(value_nonce, plaintext, _VALUE_DOMAIN + identity)
    wrap_nonce = os.urandom(NONCE_BYTES)
    wrapped = wrap_nonce + AESGCM(kek).encrypt(wrap_nonce, dek, _wrap_aad(identity, kek_version))
    return EncryptedValue(kek_version=kek_version, wrapped_dek=wrapped, ciphertext=ciphertext)


def _unwrap(value: EncryptedValue, *, identity: bytes, kek: bytes) -> bytes:
    wrapped = value.wrapped_dek
    if len(wrapped) != NONCE_BYTES + KEY_BYTES + 16:
        raise DecryptionError()
    try:
        return AESGCM(kek).decrypt(
            wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _wrap_aad(identity, value.kek_version)
        )
    except InvalidTag:
        raise DecryptionError() from None


def open_value(value: EncryptedValue, *, identity: bytes, kek: bytes) -> bytes:
    """Decrypt; any mismatch (key, identity, tampering) raises :class:`DecryptionError`."""
    dek = _unwrap(value, identity=identity, kek=kek)
    data = value.ciphertext
    if len(data) < NONCE_BYTES + 16:
        raise DecryptionError()
    try:
        return AESGCM(dek).decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], _VALUE_DOMAIN + identity)
    except InvalidTag:
        raise DecryptionError() from None


def rewrap(
    value: EncryptedValue, *, identity: bytes, old_kek: bytes, new_kek: bytes, new_kek_version: int
) -> EncryptedValue:
    """Wrap the same data key under another KEK. The value's ciphertext is untouched."""
    dek = _unwrap(value, identity=identity, kek=old_kek)
    nonce = os.urandom(NONCE_BYTES)
    wrapped = nonce + AESGCM(new_kek).encrypt(nonce, dek, _wrap_aad(identity, new_kek_version))
    return EncryptedValue(kek_version=new_kek_version, wrapped_dek=wrapped, ciphertext=value.ciphertext)
