"""Verify the audit chain: on the live store (paged) or on an exported JSON Lines file.

The core, :class:`ChainVerifier`, is pure: it is fed events in stored order and answers
with a :class:`VerifyResult` — ok, or the first sequence number where the chain breaks
and why. ``first_bad_seq`` is always such that events ``1 .. first_bad_seq - 1`` are
intact and in place (``checked`` counts those verified: all of them, except for
``bad_signature``, found before reading anything); a seq "where an event sits" is the seq
the chain expects at that position.

How each problem is recognised (``k`` is the sequence number expected next):

``modified``
    an event's hash is not ``SHA-256(prev_hash ‖ canonical body)`` (content changed) —
    at its seq; or an event does not link to its predecessor and nothing simpler explains
    it (the predecessor was rewritten with a recomputed hash) — at the predecessor; or the
    event at a checkpoint's seq has another hash than the checkpoint (history rewritten
    up to there) — at the checkpoint's seq.
``missing``
    the next event has a seq above ``k`` and ``k`` never comes: ``k`` is missing. Also an
    event renumbered down by one (its hash matches seq ``k + 1``).
``reordered``
    the next event has a seq above ``k`` and ``k`` comes later in the stream.
``inserted``
    an event claims a seq already seen: at ``k - 1`` if it claims ``k - 1`` and links where
    the event accepted at ``k - 1`` did (that one was the impostor), else at ``k`` (it sits
    where ``k`` belongs); an event links to the event two back, skipping its predecessor
    (the predecessor, at ``k - 1``, was inserted); or an event was renumbered up by one
    (its hash matches seq ``k - 1``: the event before it, at ``k - 1``, was inserted).
``truncated``
    a kept checkpoint names a seq the chain does not reach (at the first absent seq).
``bad_signature``
    a checkpoint's signature does not verify, its key id is not its key's thumbprint, or
    its key is not a trusted one (at the checkpoint's seq).
``malformed``
    a line or row cannot be parsed as an event.

What a hash chain cannot show on its own: a rewrite of the whole tail with recomputed
hashes, and truncation. Keep checkpoints outside Tether to catch those.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from tether.audit.checkpoint import Checkpoint, MalformedCheckpointError, checkpoint_from_stored
from tether.domain.event_records import event_from_body, event_from_json, parse_json_object
from tether.domain.events import GENESIS_HASH, Event, MalformedEventError
from tether.store.base import AuditStorage, StoredAuditRow

__all__ = [
    "ChainVerifier",
    "Flagged",
    "Problem",
    "VerifyResult",
    "iter_jsonl",
    "result_line",
    "verify_events",
    "verify_jsonl",
    "verify_store",
]


class Problem(StrEnum):
    MODIFIED = "modified"
    MISSING = "missing"
    INSERTED = "inserted"
    REORDERED = "reordered"
    BAD_SIGNATURE = "bad_signature"
    TRUNCATED = "truncated"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class Flagged:
    """An entry of the stream its reader already knows is bad (unparseable, inconsistent);
    reported at the seq expected where it sits. ``detail`` names the line or row."""

    problem: Problem
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The verdict. Truthy when the chain is intact.

    ``checked`` events were verified; ``head_seq``/``head_hash`` are the last intact event
    (0 and None for an empty log). On failure, ``first_bad_seq`` and ``problem`` say where
    and why, ``detail`` says it in words.
    """

    ok: bool
    checked: int
    head_seq: int
    head_hash: bytes | None
    first_bad_seq: int | None = None
    problem: Problem | None = None
    detail: str = ""
    checkpoints: int = 0

    def __bool__(self) -> bool:
        return self.ok

    def to_json(self) -> dict[str, Any]:
        """For ``GET /v1/audit/verify`` and ``tether audit verify --json``."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head_seq": self.head_seq,
            "head_hash": None if self.head_hash is None else self.head_hash.hex(),
            "first_bad_seq": self.first_bad_seq,
            "problem": None if self.problem is None else self.problem.value,
            "detail": self.detail,
            "checkpoints": self.checkpoints,
        }


def _hash_with_seq(event: Event, seq: int) -> bytes | None:
    """What ``event``'s hash would be had it carried ``seq`` (to recognise renumbering)."""
    if seq < 1:
        return None
    return dataclasses.replace(event, seq=seq).computed_hash()


class ChainVerifier:
    """Streaming verification of one chain from seq 1. Feed entries in stored order with
    :meth:`feed` while it returns True, then call :meth:`result`."""

    def __init__(
        self,
        checkpoints: Iterable[Checkpoint] = (),
        *,
        trusted_key_ids: Collection[str] | None = None,
    ) -> None:
        self._checked = 0
        self._seq = 0
        self._hash = GENESIS_HASH
        self._prev_hash = GENESIS_HASH  # hash of the event before the last one
        self._verdict: VerifyResult | None = None
        self._searching: int | None = None  # a gap at this seq: does it come later?
        self._searching_detail = ""
        trusted = None if trusted_key_ids is None else frozenset(trusted_key_ids)
        self._checkpoints: dict[int, list[Checkpoint]] = {}
        kept = sorted(checkpoints, key=lambda cp: cp.seq)
        self._n_checkpoints = len(kept)
        self._max_checkpoint = max((cp.seq for cp in kept), default=0)
        for cp in kept:
            if not cp.signature_ok(trusted):
                why = "is not signed by a trusted key" if trusted is not None else "does not verify"
                self._fail(cp.seq, Problem.BAD_SIGNATURE, f"the checkpoint at seq {cp.seq} {why}")
                break
            self._checkpoints.setdefault(cp.seq, []).append(cp)

    @property
    def done(self) -> bool:
        return self._verdict is not None

    def _fail(self, seq: int, problem: Problem, detail: str) -> None:
        if self._verdict is not None:
            return
        # Report only the prefix before ``seq`` as intact: when the blame falls on the last
        # event accepted (it turned out to be inserted or rewritten), step back over it.
        head = min(self._seq, seq - 1)
        head_hash = self._hash if head == self._seq else self._prev_hash
        self._verdict = VerifyResult(
            ok=False,
            checked=head,
            head_seq=head,
            head_hash=head_hash if head else None,
            first_bad_seq=seq,
            problem=problem,
            detail=detail,
            checkpoints=self._n_checkpoints,
        )

    def feed(self, item: Event | Flagged) -> bool:
        """Take the next entry. Returns False once the verdict is known (stop reading)."""
        if self._verdict is not None:
            return False
        if self._searching is not None:
            if isinstance(item, Event) and item.seq == self._searching:
                self._fail(
                    self._searching,
                    Problem.REORDERED,
                    f"event {self._searching} is stored after later events ({self._searching_detail})",
                )
            return self._verdict is None
        expected = self._seq + 1
        if isinstance(item, Flagged):
            self._fail(expected, item.problem, item.detail)
        elif item.seq > expected:
            # Missing or moved? Decided by whether ``expected`` turns up later.
            self._searching = expected
            self._searching_detail = f"event {item.seq} came where {expected} was expected"
        elif item.seq < expected:
            self._repeated(item)
        elif item.computed_hash() != item.hash:
            self._bad_hash(item)
        elif item.prev_hash != self._hash:
            self._bad_link(item)
        elif not self._matches_checkpoints(item):
            self._fail(
                item.seq,
                Problem.MODIFIED,
                f"event {item.seq} differs from the signed checkpoint at seq {item.seq}: "
                "history up to it was rewritten",
            )
        else:
            self._prev_hash, self._hash, self._seq = self._hash, item.hash, item.seq
            self._checked += 1
        return self._verdict is None

    def _repeated(self, event: Event) -> None:
        k = self._seq + 1
        if event.hash != self._hash and event.seq == k - 1 and event.prev_hash == self._prev_hash:
            # It links where the event accepted at k - 1 did: that one was the impostor.
            self._fail(k - 1, Problem.INSERTED, f"two events claim seq {k - 1}; the first was inserted")
        else:
            self._fail(k, Problem.INSERTED, f"an event claiming seq {event.seq} sits where {k} belongs")

    def _bad_hash(self, event: Event) -> None:
        k = event.seq
        if _hash_with_seq(event, k - 1) == event.hash:
            self._fail(
                k - 1,
                Problem.INSERTED,
                f"event {k - 1} was inserted: the event after it was renumbered from {k - 1} to {k}",
            )
        elif _hash_with_seq(event, k + 1) == event.hash:
            self._fail(k, Problem.MISSING, f"event {k} was removed and event {k + 1} renumbered to {k}")
        else:
            self._fail(k, Problem.MODIFIED, f"event {k} does not match its hash")

    def _bad_link(self, event: Event) -> None:
        k = event.seq
        if k == 1:
            self._fail(1, Problem.MODIFIED, "event 1 does not start from the genesis hash")
        elif event.prev_hash == self._prev_hash:
            self._fail(
                k - 1, Problem.INSERTED, f"event {k} links to event {k - 2}: event {k - 1} was inserted"
            )
        else:
            self._fail(
                k - 1,
                Problem.MODIFIED,
                f"event {k} does not link to event {k - 1}: event {k - 1} was rewritten "
                "(or events were removed and the rest renumbered)",
            )

    def _matches_checkpoints(self, event: Event) -> bool:
        return all(cp.head_hash == event.hash for cp in self._checkpoints.get(event.seq, ()))

    def result(self) -> VerifyResult:
        """The verdict, once every entry has been fed (or :meth:`feed` returned False)."""
        if self._searching is not None:
            self._fail(
                self._searching,
                Problem.MISSING,
                f"event {self._searching} is missing ({self._searching_detail})",
            )
        if self._seq < self._max_checkpoint:
            self._fail(
                self._seq + 1,
                Problem.TRUNCATED,
                f"a checkpoint names seq {self._max_checkpoint}; the chain ends at {self._seq}",
            )
        if self._verdict is not None:
            return self._verdict
        return VerifyResult(
            ok=True,
            checked=self._checked,
            head_seq=self._seq,
            head_hash=self._hash if self._seq else None,
            checkpoints=self._n_checkpoints,
        )


def _as_list(checkpoint: Checkpoint | Sequence[Checkpoint] | None) -> list[Checkpoint]:
    if checkpoint is None:
        return []
    if isinstance(checkpoint, Checkpoint):
        return [checkpoint]
    return list(checkpoint)


def verify_events(
    events: Iterable[Event | Flagged],
    checkpoint: Checkpoint | Sequence[Checkpoint] | None = None,
    *,
    trusted_key_ids: Collection[str] | None = None,
) -> VerifyResult:
    """Verify a whole chain, from seq 1, given in stored order (against kept checkpoints)."""
    verifier = ChainVerifier(_as_list(checkpoint), trusted_key_ids=trusted_key_ids)
    if not verifier.done:
        for item in events:
            if not verifier.feed(item):
                break
    return verifier.result()


def iter_jsonl(lines: Iterable[str]) -> Iterator[Event | Flagged]:
    """Parse export lines; a line that is not an event becomes a ``malformed`` entry."""
    for number, line in enumerate(lines, start=1):
        text = line.rstrip("\n")
        try:
            yield event_from_json(parse_json_object(text))
        except MalformedEventError as exc:
            yield Flagged(Problem.MALFORMED, f"line {number}: {exc}")


def verify_jsonl(
    path: Path | str,
    checkpoint: Checkpoint | Sequence[Checkpoint] | None = None,
    *,
    trusted_key_ids: Collection[str] | None = None,
) -> VerifyResult:
    """Verify an export written by :func:`tether.audit.export_jsonl` (offline, for auditors)."""
    with Path(path).open(encoding="utf-8", errors="surrogateescape") as lines:
        return verify_events(iter_jsonl(lines), checkpoint, trusted_key_ids=trusted_key_ids)


def _row_entry(row: StoredAuditRow) -> Event | Flagged:
    try:
        event = event_from_body(row.body, row.hash)
    except MalformedEventError as exc:
        return Flagged(Problem.MALFORMED, f"row {row.seq}: {exc}")
    index = (row.time_us, row.kind, row.actor_id, row.task_id, row.resource, row.allowed)
    implied = (event.time_us, event.kind, event.actor.id, event.task_id, event.resource, event.allowed)
    if index != implied:
        # The columns queries filter on were changed: events could be hidden from queries.
        return Flagged(Problem.MODIFIED, f"row {row.seq}: index columns disagree with the event")
    return event


async def _store_rows(storage: AuditStorage, page: int) -> AsyncIterator[StoredAuditRow]:
    after = 0
    while True:
        rows = await storage.read_audit_rows(after_seq=after, limit=page)
        for row in rows:
            yield row
        if len(rows) < page:
            return
        after = rows[-1].seq


async def verify_store(
    storage: AuditStorage,
    checkpoint: Checkpoint | Sequence[Checkpoint] | None = None,
    *,
    page: int = 1000,
    stored_checkpoints: bool = True,
    trusted_key_ids: Collection[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyResult:
    """Verify the live chain, read ``page`` rows at a time, against the given checkpoints and
    (unless ``stored_checkpoints`` is False) those kept in the store. ``progress`` is called
    with the number of rows read after each page."""
    kept = _as_list(checkpoint)
    if stored_checkpoints:
        after = 0
        while True:
            stored = await storage.list_audit_checkpoints(after_seq=after, limit=1000)
            for item in stored:
                try:
                    kept.append(checkpoint_from_stored(item))
                except MalformedCheckpointError as exc:
                    return VerifyResult(
                        ok=False,
                        checked=0,
                        head_seq=0,
                        head_hash=None,
                        first_bad_seq=item.seq,
                        problem=Problem.MALFORMED,
                        detail=str(exc),
                    )
            if len(stored) < 1000:
                break
            after = stored[-1].seq
    verifier = ChainVerifier(kept, trusted_key_ids=trusted_key_ids)
    read = 0
    if not verifier.done:
        async for row in _store_rows(storage, page):
            read += 1
            if not verifier.feed(_row_entry(row)):
                break
            if progress is not None and read % page == 0:
                progress(read)
    if progress is not None:
        progress(read)
    return verifier.result()


def result_line(result: VerifyResult) -> str:
    """One line for people: ``ok: 1234 events, head 1234`` or the problem and where."""
    if result.ok:
        return f"ok: {result.checked} events verified, head seq {result.head_seq}"
    return f"{result.problem} at seq {result.first_bad_seq}: {result.detail}"
