"""Where the root key comes from.

A :class:`KeyProvider` hands out the 256-bit root key that opens the keyring. The
dev provider keeps it in a local file next to the data and says so loudly; the env
and file providers read a key an operator manages; a KMS-style provider implements
the same one method (e.g. by decrypting a wrapped root key with a remote service).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Protocol, runtime_checkable

from tether.crypto.envelope import KEY_BYTES
from tether.errors import KeyProviderError

__all__ = [
    "EnvKeyProvider",
    "FileKeyProvider",
    "KeyProvider",
    "UnsafeDevKeyProvider",
    "decode_root_key",
    "generate_root_key",
]

log = logging.getLogger(__name__)

DEV_WARNING = (
    "UNSAFE: the root key is stored in a plain file next to the data ({path}). Anyone who can read the "
    "data dir can read every secret. Use it for development only; in production set TETHER_ROOT_KEY or "
    "TETHER_ROOT_KEY_FILE (key_provider = env | file)."
)


@runtime_checkable
class KeyProvider(Protocol):
    """Produces the root key. Implementations raise :class:`KeyProviderError` on failure."""

    name: str

    def root_key(self) -> bytes:
        """Return the 32-byte root key."""
        ...


def generate_root_key() -> str:
    """A new root key, base64-encoded, for an operator to keep."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def decode_root_key(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyProviderError(f"{source}: the root key is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise KeyProviderError(f"{source}: the root key must be 32 bytes (base64 of 32 random bytes)")
    return key


def _read_key_file(path: Path) -> bytes:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyProviderError(f"root key file {path} does not exist") from None
    except OSError as exc:
        raise KeyProviderError(f"root key file {path} cannot be read: {exc.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyProviderError(f"root key file {path} is readable by group or others; run: chmod 600 {path}")
    return decode_root_key(path.read_text(encoding="ascii", errors="replace"), str(path))


class EnvKeyProvider:
    """The root key from an environment variable (base64), e.g. injected by an orchestrator."""

    name = "env"

    def __init__(self, variable: str = "TETHER_ROOT_KEY", environ: dict[str, str] | None = None) -> None:
        self._variable = variable
        self._environ = environ

    def root_key(self) -> bytes:
        environ = self._environ if self._environ is not None else os.environ
        text = environ.get(self._variable)
        if not text:
            raise KeyProviderError(f"environment variable {self._variable} is not set")
        return decode_root_key(text, self._variable)


class FileKeyProvider:
    """The root key from a file the operator manages (mode 0600, base64 content)."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self._path = path

    def root_key(self) -> bytes:
        return _read_key_file(self._path)


class UnsafeDevKeyProvider:
    """Development only: the root key in a file inside the data dir, created on first use."""

    name = "unsafe-dev"

    def __init__(self, path: Path) -> None:
        self._path = path
        self._warned = False

    def create_if_missing(self) -> bool:
        """Write a new random key file (0600) if there is none; only ``tether init`` does this,
        so a node whose key file went missing starts sealed instead of with a new key."""
        if self._path.exists():
            return False
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(generate_root_key() + "\n")
        return True

    def root_key(self) -> bytes:
        if not self._warned:
            log.warning(DEV_WARNING.format(path=self._path))
            self._warned = True
        return _read_key_file(self._path)
