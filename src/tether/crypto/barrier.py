"""The barrier: everything that crosses into storage is encrypted here.

The barrier holds the keyring in memory while unsealed. Sealed, it holds nothing and
every operation that needs a key raises :class:`SealedError`.
"""

from __future__ import annotations

from tether.crypto.envelope import EncryptedValue, open_value, record_aad, rewrap, seal_value
from tether.crypto.keyring import Keyring
from tether.errors import DecryptionError, SealedError

__all__ = ["Barrier"]


class Barrier:
    """Envelope encryption bound to record identity, with seal/unseal."""

    def __init__(self) -> None:
        self._keyring: Keyring | None = None

    @property
    def sealed(self) -> bool:
        return self._keyring is None

    @property
    def keyring(self) -> Keyring:
        if self._keyring is None:
            raise SealedError("Tether is sealed")
        return self._keyring

    def unseal(self, keyring: Keyring) -> None:
        self._keyring = keyring

    def seal(self) -> None:
        self._keyring = None

    def has_kek(self, version: int) -> bool:
        return self.keyring.get(version) is not None

    def encrypt(self, path: str, version: int, plaintext: bytes) -> EncryptedValue:
        kek = self.keyring.active
        return seal_value(plaintext, identity=record_aad(path, version), kek=kek.key, kek_version=kek.version)

    def decrypt(self, path: str, version: int, value: EncryptedValue) -> bytes:
        kek = self.keyring.get(value.kek_version)
        if kek is None:
            raise DecryptionError()
        return open_value(value, identity=record_aad(path, version), kek=kek.key)

    def rewrap(self, path: str, version: int, value: EncryptedValue) -> EncryptedValue:
        """Wrap the value's data key under the active KEK; the ciphertext is unchanged."""
        keyring = self.keyring
        old = keyring.get(value.kek_version)
        if old is None:
            raise DecryptionError()
        active = keyring.active
        return rewrap(
            value,
            identity=record_aad(path, version),
            old_kek=old.key,
            new_kek=active.key,
            new_kek_version=active.version,
        )
