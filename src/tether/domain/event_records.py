"""Audit events as JSON records: an export line (the body plus its hash) and back, and an event
rebuilt from its stored body. Strict: a record that is not exactly an event's is refused with
:class:`~tether.domain.events.MalformedEventError`. Pure: no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tether.domain.events import (
    EVENT_FORMAT_VERSION,
    HASH_BYTES,
    Actor,
    DecisionSummary,
    Event,
    JsonValue,
    MalformedEventError,
    _fail,
    event_body,
    from_time_us,
)

__all__ = ["event_from_body", "event_from_json", "event_to_json", "parse_json_object"]

_REQUIRED = frozenset({"v", "seq", "prev_hash", "time_us", "node", "kind", "actor", "hash"})
_OPTIONAL = frozenset({"resource", "task_id", "chain", "decision", "reason", "request_id", "data"})


def event_to_json(event: Event) -> dict[str, JsonValue]:
    """One JSON Lines export record: the body plus ``"hash"`` (hex)."""
    record = event_body(event)
    record["hash"] = event.hash.hex()
    return record


def _hex_hash(value: object, name: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * HASH_BYTES:
        raise _fail(f"{name} must be {2 * HASH_BYTES} hex digits", name)
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise _fail(f"{name} must be {2 * HASH_BYTES} hex digits", name) from None


def _int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(f"{name} must be an integer", name)
    return value


def _str_list(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(f"{name} must be a list of strings", name)
    return tuple(value)


def event_from_json(record: Mapping[str, Any]) -> Event:
    """Parse an export record (or a stored body plus ``hash``); strict: unknown or
    ill-typed fields raise :class:`MalformedEventError`."""
    if not isinstance(record, Mapping):
        raise _fail("an event record must be a JSON object")
    keys = set(record)
    if not keys >= _REQUIRED or not keys <= _REQUIRED | _OPTIONAL:
        missing = sorted(_REQUIRED - keys)
        extra = sorted(keys - _REQUIRED - _OPTIONAL)
        raise _fail(f"event record fields: missing {missing}, unknown {extra}")
    if record["v"] != EVENT_FORMAT_VERSION or isinstance(record["v"], bool):
        raise _fail(f"unsupported event format version {record['v']!r}", "v")
    actor = record["actor"]
    if not isinstance(actor, Mapping) or set(actor) != {"type", "id"}:
        raise _fail("actor must be {type, id}", "actor")
    decision = record.get("decision")
    summary = None
    if decision is not None:
        if not isinstance(decision, Mapping) or set(decision) != {"allowed", "policies", "missing"}:
            raise _fail("decision must be {allowed, policies, missing}", "decision")
        summary = DecisionSummary(
            allowed=decision["allowed"],
            policies=_str_list(decision["policies"], "decision.policies"),
            missing=_str_list(decision["missing"], "decision.missing"),
        )
    reason = record.get("reason", "")
    time_value = _int(record["time_us"], "time_us")
    try:
        when = from_time_us(time_value)
    except (OverflowError, ValueError):
        raise _fail("time_us is out of range", "time_us") from None
    return Event(
        seq=_int(record["seq"], "seq"),
        time=when,
        node_id=record["node"],
        kind=record["kind"],
        actor=Actor(actor["type"], actor["id"]),
        prev_hash=_hex_hash(record["prev_hash"], "prev_hash"),
        hash=_hex_hash(record["hash"], "hash"),
        resource=record.get("resource"),
        task_id=record.get("task_id"),
        chain=_str_list(record.get("chain", []), "chain"),
        decision=summary,
        reason=reason,
        request_id=record.get("request_id"),
        data=record.get("data", {}),
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _fail(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise _fail(f"{name} is not allowed in events")


def parse_json_object(text: str | bytes) -> dict[str, Any]:
    """Strict JSON: no duplicate keys, no NaN/Infinity; floats are caught by event validation."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, MalformedEventError):
            raise
        raise _fail(f"not valid JSON: {str(exc)[:100]}") from None
    if not isinstance(value, dict):
        raise _fail("an event record must be a JSON object")
    return value


def event_from_body(body: str | bytes, hash_value: bytes) -> Event:
    """Rebuild an event from its stored canonical body text and stored hash."""
    record = parse_json_object(body)
    if "hash" in record:
        raise _fail("a stored body must not contain the hash")
    if not isinstance(hash_value, bytes) or len(hash_value) != HASH_BYTES:
        raise _fail(f"hash must be {HASH_BYTES} bytes", "hash")
    record["hash"] = hash_value.hex()
    return event_from_json(record)
