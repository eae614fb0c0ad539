"""One exception tree for all of Tether.

Every error Tether raises on purpose derives from :class:`TetherError`. Foreign
errors (driver, crypto, HTTP) are turned into one of these at the boundary where
they occur, so that callers only ever handle this tree::

    TetherError
    ├── InvalidInputError        bad input: a path, a value, a field        (422)
    ├── NotFoundError            no such secret, operator, version          (404)
    ├── ConflictError            a concurrent or check-and-set write lost   (409)
    ├── AuthenticationError      no or unknown credentials                  (401)
    ├── RateLimitedError         too many refused token requests; retry later (429)
    ├── PermissionDeniedError    authenticated, but not allowed             (403)
    │   └── DeniedError          a governed-path refusal, with its decision  (403)
    ├── SealedError              the barrier holds no keys                  (503)
    ├── CryptoError              a key or ciphertext is unusable
    │   ├── DecryptionError      opaque: wrong key, tampered or swapped data
    │   └── KeyProviderError     the root key cannot be obtained
    ├── StorageError             the store failed; driver errors are wrapped (503)
    │   └── StorageUnavailableError   the store cannot be reached
    ├── EngineError              a secret engine failed to issue or revoke    (502)
    │   └── EngineUnavailableError   the engine's backend cannot be reached (503)
    ├── ConfigError              settings are missing, malformed or out of bounds
    │
    │   raised by the agent SDK (tether.sdk), on the client's side of the API:
    ├── TetherAPIError           Tether answered with an error; ``status`` and the problem body
    │   └── TetherDenied         the governed path said no; ``decision`` names the policies
    │       └── ApprovalRequired     denied for want of an approval; ``approval_id``
    └── TetherConnectionError    Tether could not be reached; ``address`` says where it was sought

Messages never contain secret values. :class:`DecryptionError` deliberately says
the same thing for every cause so that it is no oracle.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "ConflictError",
    "CryptoError",
    "DecryptionError",
    "DeniedError",
    "EngineError",
    "EngineUnavailableError",
    "InvalidInputError",
    "KeyProviderError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "SealedError",
    "StorageError",
    "StorageUnavailableError",
    "TetherError",
]


class TetherError(Exception):
    """Base of every error Tether raises on purpose."""


class InvalidInputError(TetherError):
    """Input failed validation; the message says which field and why."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFoundError(TetherError):
    """The named thing does not exist (or is hidden from the caller)."""


class ConflictError(TetherError):
    """A write conflicted with another write or with an expected version."""


class AuthenticationError(TetherError):
    """Credentials are absent, malformed, unknown or revoked.

    ``code`` is the OAuth / RFC 6750 / RFC 9449 error code to answer with (``invalid_token``,
    ``invalid_client``, ``invalid_grant``, ``invalid_dpop_proof``, ...). The message is for the
    audit log and the operator; agents get the code and a terse description.
    """

    def __init__(self, message: str, *, code: str = "invalid_token") -> None:
        super().__init__(message)
        self.code = code


class RateLimitedError(TetherError):
    """Too many refused token requests from one client id or source address in the current
    window; ``retry_after_seconds`` says when the window ends. The refusal it replaces is counted,
    not audited one by one (see :mod:`tether.identity.refusals`)."""

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(f"too many refused token requests; retry after {retry_after_seconds} seconds")
        self.retry_after_seconds = retry_after_seconds


class PermissionDeniedError(TetherError):
    """The caller is authenticated but not allowed to do this."""


class DeniedError(PermissionDeniedError):
    """An agent's request on the governed path was refused: by policy (``decision`` says which
    policies and what is missing), or because the task or grant cannot be used (the message says
    why). ``approval_id`` is set when an approval was requested that would allow it."""

    def __init__(self, message: str, *, decision: Any = None, approval_id: str | None = None) -> None:
        super().__init__(message)
        self.decision = decision
        self.approval_id = approval_id


class EngineError(TetherError):
    """A secret engine failed to issue or revoke a credential; the engine's own error is chained."""


class EngineUnavailableError(EngineError):
    """A secret engine's backend (e.g. a database's admin connection) cannot be reached; nothing
    was issued."""


class SealedError(TetherError):
    """The barrier is sealed: no secret can be read or written."""


class CryptoError(TetherError):
    """A key or ciphertext cannot be used."""


class DecryptionError(CryptoError):
    """Decryption failed: wrong key, tampered, truncated or swapped ciphertext."""

    def __init__(self, message: str = "decryption failed: wrong key or corrupted data") -> None:
        super().__init__(message)


class KeyProviderError(CryptoError):
    """The key provider could not produce a usable root key."""


class StorageError(TetherError):
    """The store failed. Driver exceptions are chained, never exposed."""


class StorageUnavailableError(StorageError):
    """The store cannot be reached or opened."""


class ConfigError(TetherError):
    """A setting is missing, malformed or out of bounds."""
