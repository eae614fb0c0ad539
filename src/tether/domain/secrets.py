"""Secrets as the domain sees them: paths, sensitivity, metadata, versions.

Values never appear here; they live behind the barrier (``tether.crypto``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum

from tether.errors import InvalidInputError

__all__ = [
    "DEFAULT_MAX_SECRET_BYTES",
    "MAX_PATH_LENGTH",
    "MAX_PATH_SEGMENTS",
    "MAX_SECRET_BYTES_CAP",
    "SecretMetadata",
    "SecretRecord",
    "SecretVersionInfo",
    "Sensitivity",
    "validate_name_set",
    "validate_path",
    "validate_prefix",
    "value_too_large",
]

MAX_PATH_LENGTH = 256
MAX_PATH_SEGMENTS = 16
MAX_NAME_LENGTH = 64
MAX_SET_SIZE = 64

#: One limit on a secret value's size: the ``max_secret_bytes`` setting, this by default…
DEFAULT_MAX_SECRET_BYTES = 64 * 1024
#: …and never more than this (the CLI reads no more than this either).
MAX_SECRET_BYTES_CAP = 1024 * 1024


def value_too_large(size: int | None, limit: int) -> str:
    """The one message for a value over the limit, from the server and from the CLI alike
    (``size`` None: more than ``limit``, when reading stopped there)."""
    measured = f"more than {limit}" if size is None else str(size)
    return f"secret value is {measured} bytes; the limit is {limit} bytes (the max_secret_bytes setting)"


_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class Sensitivity(IntEnum):
    """How much harm a leak does. A number, so policies can compare it."""

    PUBLIC = 0
    INTERNAL = 1
    CONFIDENTIAL = 2
    RESTRICTED = 3

    @classmethod
    def parse(cls, value: str | int) -> Sensitivity:
        """Accept the name (``"restricted"``) or the number (``3``)."""
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        elif isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        names = "|".join(member.label for member in cls)
        raise InvalidInputError(f"sensitivity must be one of {names}", field="sensitivity")

    @property
    def label(self) -> str:
        return self.name.lower()


def validate_path(path: str) -> str:
    """Return ``path`` if it is a well-formed secret path, else raise.

    A path is 1 to 16 ``/``-separated segments of letters, digits, ``.``, ``_`` and
    ``-``; a segment may not start with ``.`` or ``-`` (so no ``.`` / ``..`` traversal,
    no hidden names, nothing that reads as an option). No leading or trailing slash,
    no empty segment, at most 256 characters.
    """
    if not isinstance(path, str) or not path:
        raise InvalidInputError("secret path is empty", field="path")
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidInputError(f"secret path is longer than {MAX_PATH_LENGTH} characters", field="path")
    segments = path.split("/")
    if len(segments) > MAX_PATH_SEGMENTS:
        raise InvalidInputError(f"secret path has more than {MAX_PATH_SEGMENTS} segments", field="path")
    for segment in segments:
        if not segment:
            raise InvalidInputError(
                "secret path has an empty segment (leading, trailing or double '/')", field="path"
            )
        if not _SEGMENT.fullmatch(segment):
            raise InvalidInputError(
                f"secret path segment {segment[:40]!r} is not allowed: use letters, digits, '.', '_' "
                "and '-', not starting with '.' or '-'",
                field="path",
            )
    return path


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a path optionally ending in ``/``."""
    if prefix == "":
        return prefix
    validate_path(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def validate_name_set(
    values: frozenset[str] | set[str] | list[str] | tuple[str, ...], what: str
) -> frozenset[str]:
    """Validate a set of short lowercase names (purposes, destinations)."""
    result = frozenset(values)
    if len(result) > MAX_SET_SIZE:
        raise InvalidInputError(f"at most {MAX_SET_SIZE} {what} are allowed", field=what)
    for value in result:
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise InvalidInputError(
                f"{what} entry {str(value)[:40]!r} is not a valid name: lowercase letters, digits, '.', '_', "
                f"'-', at most {MAX_NAME_LENGTH} characters",
                field=what,
            )
    return result


@dataclass(frozen=True, slots=True)
class SecretMetadata:
    """What may be known about a secret without seeing it. Validated when built."""

    sensitivity: Sensitivity = Sensitivity.CONFIDENTIAL
    purposes: frozenset[str] = field(default_factory=frozenset)
    destinations: frozenset[str] = field(default_factory=frozenset)
    owner: str = ""
    rotation_period_seconds: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.sensitivity, Sensitivity):
            object.__setattr__(self, "sensitivity", Sensitivity.parse(self.sensitivity))
        object.__setattr__(self, "purposes", validate_name_set(self.purposes, "purposes"))
        object.__setattr__(self, "destinations", validate_name_set(self.destinations, "destinations"))
        if len(self.owner) > 128:
            raise InvalidInputError("owner is longer than 128 characters", field="owner")
        if self.rotation_period_seconds is not None and not (
            60 <= self.rotation_period_seconds <= 10 * 365 * 86400
        ):
            raise InvalidInputError(
                "rotation_period_seconds must be between 60 and 315360000", field="rotation_period_seconds"
            )


@dataclass(frozen=True, slots=True)
class SecretVersionInfo:
    """One version of a secret, without its value."""

    version: int
    created_at: datetime
    created_by: str
    kek_version: int


@dataclass(frozen=True, slots=True)
class SecretRecord:
    """A secret's metadata and version history, as returned to operators."""

    path: str
    metadata: SecretMetadata
    current_version: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
    versions: tuple[SecretVersionInfo, ...] = ()

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    def rotation_due(self, now: datetime) -> bool:
        """True when the current version is older than the rotation period."""
        if self.metadata.rotation_period_seconds is None:
            return False
        return (now - self.updated_at).total_seconds() >= self.metadata.rotation_period_seconds
