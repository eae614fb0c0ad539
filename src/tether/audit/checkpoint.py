"""Signed checkpoints of the audit chain head.

A checkpoint says "the event at ``seq`` has hash ``head_hash``", signed with the
deployment's Ed25519 checkpoint key. The signature covers the canonical JSON (JCS, see
``tether.domain.events``) of::

    {"v": 1, "type": "tether.audit.checkpoint", "seq": N, "head_hash": "<hex>",
     "time_us": T, "key_id": "<RFC 7638 thumbprint>"}

An auditor who keeps a checkpoint outside Tether can later prove that the log still
reaches ``seq`` (no truncation) and that history up to it was not rewritten.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tether.audit.keys import AuditKeys, key_id_of, public_jwk, public_key_from_jwk
from tether.domain.event_records import parse_json_object
from tether.domain.events import HASH_BYTES, canonical_json, from_time_us, time_us
from tether.errors import CryptoError, InvalidInputError
from tether.store.base import StoredCheckpoint

__all__ = [
    "CHECKPOINT_TYPE",
    "Checkpoint",
    "MalformedCheckpointError",
    "checkpoint_from_json",
    "checkpoint_from_stored",
    "checkpoint_to_json",
    "checkpoint_to_stored",
    "load_checkpoint",
    "sign_checkpoint",
]

CHECKPOINT_TYPE = "tether.audit.checkpoint"
_SIGNATURE_BYTES = 64


class MalformedCheckpointError(InvalidInputError):
    """A checkpoint (or its JSON form) is not well formed."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: object, name: str) -> bytes:
    if not isinstance(text, str):
        raise MalformedCheckpointError(f"{name} must be base64url text", field=name)
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise MalformedCheckpointError(f"{name} must be base64url text", field=name) from None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement of the chain head. Well formed once built; :meth:`signature_ok`
    says whether it is authentic."""

    seq: int
    head_hash: bytes
    time: datetime
    key_id: str
    public_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.seq, int) or isinstance(self.seq, bool) or self.seq < 1:
            raise MalformedCheckpointError("checkpoint seq must be a positive integer", field="seq")
        if not isinstance(self.head_hash, bytes) or len(self.head_hash) != HASH_BYTES:
            raise MalformedCheckpointError(f"head_hash must be {HASH_BYTES} bytes", field="head_hash")
        if not isinstance(self.time, datetime) or self.time.tzinfo is None:
            raise MalformedCheckpointError("checkpoint time must be aware", field="time")
        object.__setattr__(self, "time", self.time.astimezone(UTC))
        if not isinstance(self.key_id, str) or not 0 < len(self.key_id) <= 128:
            raise MalformedCheckpointError("key_id must be a short string", field="key_id")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != 32:
            raise MalformedCheckpointError("public_key must be a 32-byte Ed25519 key", field="public_key")
        if not isinstance(self.signature, bytes) or len(self.signature) != _SIGNATURE_BYTES:
            raise MalformedCheckpointError("signature must be 64 bytes", field="signature")

    def signed_message(self) -> bytes:
        """The exact bytes the signature covers."""
        return _message(self.seq, self.head_hash, time_us(self.time), self.key_id)

    def signature_ok(self, trusted_key_ids: frozenset[str] | None = None) -> bool:
        """True if the signature verifies under :attr:`public_key`, the key id is that key's
        thumbprint, and (when given) the key id is one the verifier trusts."""
        if trusted_key_ids is not None and self.key_id not in trusted_key_ids:
            return False
        try:
            if key_id_of(self.public_key) != self.key_id:
                return False
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(self.signature, self.signed_message())
        except (InvalidSignature, ValueError):
            return False
        return True


def _message(seq: int, head_hash: bytes, time_value: int, key_id: str) -> bytes:
    return canonical_json(
        {
            "v": 1,
            "type": CHECKPOINT_TYPE,
            "seq": seq,
            "head_hash": head_hash.hex(),
            "time_us": time_value,
            "key_id": key_id,
        }
    )


def sign_checkpoint(keys: AuditKeys, *, seq: int, head_hash: bytes, time: datetime) -> Checkpoint:
    """Sign the statement "event ``seq`` has hash ``head_hash``" with the deployment key."""
    signature = keys.sign(_message(seq, head_hash, time_us(time), keys.key_id))
    return Checkpoint(
        seq=seq,
        head_hash=head_hash,
        time=time,
        key_id=keys.key_id,
        public_key=keys.public_key,
        signature=signature,
    )


def checkpoint_to_json(checkpoint: Checkpoint) -> dict[str, Any]:
    """The exportable form: what an auditor keeps, self-contained (the key is a JWK)."""
    return {
        "v": 1,
        "type": CHECKPOINT_TYPE,
        "seq": checkpoint.seq,
        "head_hash": checkpoint.head_hash.hex(),
        "time_us": time_us(checkpoint.time),
        "key_id": checkpoint.key_id,
        "public_key": public_jwk(checkpoint.public_key),
        "signature": _b64url(checkpoint.signature),
    }


_FIELDS = frozenset({"v", "type", "seq", "head_hash", "time_us", "key_id", "public_key", "signature"})


def checkpoint_from_json(record: Mapping[str, Any]) -> Checkpoint:
    """Parse :func:`checkpoint_to_json` output; raises :class:`MalformedCheckpointError`.
    The signature is not checked here (see :meth:`Checkpoint.signature_ok`)."""
    if not isinstance(record, Mapping) or set(record) != _FIELDS:
        raise MalformedCheckpointError(f"a checkpoint has exactly the fields {sorted(_FIELDS)}")
    if record["v"] != 1 or record["type"] != CHECKPOINT_TYPE:
        raise MalformedCheckpointError("not a version 1 Tether audit checkpoint")
    head_hex = record["head_hash"]
    try:
        head_hash = bytes.fromhex(head_hex) if isinstance(head_hex, str) else b""
        public_key = public_key_from_jwk(record["public_key"])
        when = from_time_us(record["time_us"]) if type(record["time_us"]) is int else None
    except (ValueError, OverflowError, CryptoError) as exc:
        raise MalformedCheckpointError(f"checkpoint field is malformed: {exc}") from None
    if when is None:
        raise MalformedCheckpointError("time_us must be an integer", field="time_us")
    return Checkpoint(
        seq=record["seq"],
        head_hash=head_hash,
        time=when,
        key_id=record["key_id"],
        public_key=public_key,
        signature=_unb64url(record["signature"], "signature"),
    )


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Read a checkpoint JSON file (as written from :func:`checkpoint_to_json`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MalformedCheckpointError(f"cannot read checkpoint file {path}: {exc}") from None
    try:
        return checkpoint_from_json(parse_json_object(text))
    except InvalidInputError as exc:
        raise MalformedCheckpointError(f"{path}: {exc}") from None


def checkpoint_to_stored(checkpoint: Checkpoint) -> StoredCheckpoint:
    return StoredCheckpoint(
        seq=checkpoint.seq,
        time_us=time_us(checkpoint.time),
        head_hash=checkpoint.head_hash,
        key_id=checkpoint.key_id,
        signature=checkpoint.signature,
        body=json.dumps(checkpoint_to_json(checkpoint), sort_keys=True, separators=(",", ":")),
    )


def checkpoint_from_stored(stored: StoredCheckpoint) -> Checkpoint:
    """The checkpoint a stored row holds; its body must agree with its columns."""
    try:
        checkpoint = checkpoint_from_json(parse_json_object(stored.body))
    except InvalidInputError as exc:
        raise MalformedCheckpointError(f"stored checkpoint at seq {stored.seq}: {exc}") from None
    columns = (stored.seq, stored.head_hash, stored.key_id, stored.signature, stored.time_us)
    body = (
        checkpoint.seq,
        checkpoint.head_hash,
        checkpoint.key_id,
        checkpoint.signature,
        time_us(checkpoint.time),
    )
    if columns != body:
        raise MalformedCheckpointError(f"stored checkpoint at seq {stored.seq}: columns disagree with body")
    return checkpoint
