"""What a decision event records so that the decision can be made again (policy replay).

A decision's inputs are the principal's and the resource's decision-relevant attributes, the action,
the context the broker built, and the policy version that decided. Most of that repeats across
events (the same agent, the same secret, the same task's intent), so it is stored once, content
addressed: a **snapshot** is the canonical JSON of one part — an entity (``type``, ``id``,
``attrs``) or a task's context part (``context.task`` without its ``id`` and the per-use
``age_seconds`` and ``remaining_seconds``) — named by a short hash of it. The event carries only
the hashes and the small per-use fields inline::

    "inputs": {"v": 1, "action": "activate", "policy_version": 3,
               "principal": "<hash>", "resource": "<hash>", "task": "<hash>",
               "ctx": {"approval": false, "mode": "inject", "destination": "github",
                       "request": {"method": "GET", "path": "/repos"}, "uses": 2,
                       "age_seconds": 40, "remaining_seconds": 860, "id": "tsk_..."},
               "approved": true}

``approved`` is present when an approval turned a deny that only lacked one into an allow (the
broker asks the policy with ``context.approval == false`` and then finds the approval). No secret
value is ever part of an entity or a context, so none is part of a snapshot or an event.

Pure: no I/O. Hashes are computed once per distinct value (memoised by value, bounded), so a
request does not encode and hash its entities again when they are unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "INPUTS_VERSION",
    "MAX_INLINE_PATH_CHARS",
    "PER_USE_TASK_FIELDS",
    "SNAPSHOT_HASH_CHARS",
    "DecisionInputs",
    "Snapshot",
    "SnapshotMemo",
    "decision_inputs",
    "snapshot_of",
]

INPUTS_VERSION: Final = 1
#: Hex characters of a snapshot's name: 128 bits of SHA-256.
SNAPSHOT_HASH_CHARS: Final = 32
#: A request path longer than this is not recorded (the decision is then not replayable).
MAX_INLINE_PATH_CHARS: Final = 1024
#: Fields of ``context.task`` recorded inline in the event, never in the task's snapshot: those that
#: change with every use, and the task's own id — so every task opened with the same intent shares
#: one snapshot (one row, hashed once per process), instead of one new snapshot per task.
PER_USE_TASK_FIELDS: Final = ("age_seconds", "remaining_seconds", "id")
_MEMO_SIZE: Final = 8192


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One content-addressed part of a decision's inputs: ``kind`` is ``entity`` or ``task``."""

    hash: str
    kind: str
    body: str  # canonical JSON


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def snapshot_of(kind: str, value: Mapping[str, Any]) -> Snapshot:
    """The snapshot of ``value`` (an entity's ``{type, id, attrs}`` or a task's context part)."""
    body = _canonical(value)
    digest = hashlib.sha256(f"{kind}\0{body}".encode()).hexdigest()[:SNAPSHOT_HASH_CHARS]
    return Snapshot(digest, kind, body)


def _frozen(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_frozen(item) for item in value)
    if isinstance(value, Mapping):
        return tuple((key, _frozen(item)) for key, item in value.items())
    return value


def _key(mapping: Mapping[str, Any], skip: tuple[str, ...] = ()) -> tuple[Any, ...]:
    """A hashable key for a record (entities' attributes, the task's context part), cheaply."""
    parts: list[Any] = []
    for key, item in mapping.items():
        if key in skip:
            continue
        kind = type(item)
        parts.append(key)
        parts.append(item if kind is str or kind is int or kind is bool else _frozen(item))
    return tuple(parts)


class SnapshotMemo:
    """Snapshots by value (bounded), and which of them this process knows are stored."""

    __slots__ = ("_memo", "_stored")

    def __init__(self) -> None:
        self._memo: dict[Any, Snapshot] = {}
        self._stored: set[str] = set()

    def entity(self, type_: str, id_: str, attributes: Mapping[str, Any]) -> Snapshot:
        key = ("entity", type_, id_, _key(attributes))
        found = self._memo.get(key)
        if found is None:
            found = self._remember(
                key, snapshot_of("entity", {"type": type_, "id": id_, "attrs": dict(attributes)})
            )
        return found

    def task(self, task_context: Mapping[str, Any]) -> Snapshot:
        key = ("task", _key(task_context, PER_USE_TASK_FIELDS))
        found = self._memo.get(key)
        if found is None:
            part = {k: v for k, v in task_context.items() if k not in PER_USE_TASK_FIELDS}
            found = self._remember(key, snapshot_of("task", part))
        return found

    def _remember(self, key: Any, snapshot: Snapshot) -> Snapshot:
        if len(self._memo) >= _MEMO_SIZE:
            self._memo.clear()
        self._memo[key] = snapshot
        return snapshot

    def unstored(self, *snapshots: Snapshot) -> tuple[Snapshot, ...]:
        """Those of ``snapshots`` not known to be stored (each once)."""
        seen: dict[str, Snapshot] = {}
        for snapshot in snapshots:
            if snapshot.hash not in self._stored:
                seen.setdefault(snapshot.hash, snapshot)
        return tuple(seen.values())

    def stored(self, snapshots: tuple[Snapshot, ...]) -> None:
        """``snapshots`` were committed (with the event that names them)."""
        self.stored_hashes(snapshot.hash for snapshot in snapshots)

    def stored_hashes(self, hashes: Iterable[str]) -> None:
        """The snapshots named ``hashes`` were committed."""
        if len(self._stored) >= _MEMO_SIZE * 4:
            self._stored.clear()
        self._stored.update(hashes)


@dataclass(frozen=True, slots=True)
class DecisionInputs:
    """What one decision event records of its inputs: ``data`` (the ``inputs`` field of the event's
    data) and the snapshots it names that may not be stored yet (written with the event)."""

    data: Mapping[str, Any]
    snapshots: tuple[Snapshot, ...] = ()

    def approved(self) -> DecisionInputs:
        """The same inputs, saying that an approval turned the policy's deny into an allow."""
        return DecisionInputs({**self.data, "approved": True}, self.snapshots)

    def event_data(self) -> dict[str, Any]:
        return {"inputs": dict(self.data)}


def decision_inputs(
    memo: SnapshotMemo,
    action: str,
    principal: tuple[str, str, Mapping[str, Any]],
    resource: tuple[str, str, Mapping[str, Any]],
    context: Mapping[str, Any],
    policy_version: int | None,
) -> DecisionInputs:
    """The inputs record of one decision (``principal`` and ``resource`` as ``(type, id, attrs)``)."""
    task = context.get("task")
    request = context.get("request")
    path = request.get("path", "") if isinstance(request, Mapping) else ""
    if not isinstance(task, Mapping) or len(path) > MAX_INLINE_PATH_CHARS:
        why = "no task context" if not isinstance(task, Mapping) else "request path too long to record"
        return DecisionInputs({"v": INPUTS_VERSION, "unrecorded": why})
    p = memo.entity(*principal)
    r = memo.entity(*resource)
    t = memo.task(task)
    ctx = {k: v for k, v in context.items() if k != "task"}
    for name in PER_USE_TASK_FIELDS:
        ctx[name] = task.get(name, 0)
    data = {
        "v": INPUTS_VERSION,
        "action": action,
        "policy_version": policy_version,
        "principal": p.hash,
        "resource": r.hash,
        "task": t.hash,
        "ctx": ctx,
    }
    return DecisionInputs(data, memo.unstored(p, r, t))
