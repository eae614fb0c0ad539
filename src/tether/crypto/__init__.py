"""Cryptography: the barrier (envelope encryption, keyring, seal) and key providers."""

from tether.crypto.barrier import Barrier
from tether.crypto.envelope import EncryptedValue
from tether.crypto.keyprovider import (
    EnvKeyProvider,
    FileKeyProvider,
    KeyProvider,
    UnsafeDevKeyProvider,
)
from tether.crypto.keyring import Keyring

__all__ = [
    "Barrier",
    "EncryptedValue",
    "EnvKeyProvider",
    "FileKeyProvider",
    "KeyProvider",
    "Keyring",
    "UnsafeDevKeyProvider",
]
