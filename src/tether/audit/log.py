"""The audit log: the one path every event takes into the chain.

``record()`` returns only once its event is durable in the store. Concurrent calls are
group-committed: callers queue their drafts, one writer task appends everything queued in
one transaction, and each caller gets its own event back (or the store's error — every
caller of a failed batch gets a :class:`~tether.errors.StorageError`, so the action it
was about to take does not happen). A caller with nobody to share a transaction with (no
append running, nothing queued, no secondary sink) appends in its own task instead.

Appends are serialized per chain. The writer keeps the head (seq, hash) in memory; when
another node sharing the store appended first, the store refuses the batch
(:class:`~tether.store.base.AuditConflictError`), the writer reloads the head and rebuilds
the batch on top of it. So any number of nodes on one PostgreSQL keep one chain.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tether.audit.checkpoint import Checkpoint, checkpoint_from_stored, checkpoint_to_stored, sign_checkpoint
from tether.audit.keys import AuditKeys
from tether.audit.query import AuditFilter, AuditPage, query_events
from tether.audit.sinks import AuditSink
from tether.audit.verify import VerifyResult, verify_store
from tether.clock import Clock
from tether.domain.events import (
    GENESIS_HASH,
    Actor,
    DecisionSummary,
    Event,
    EventDraft,
    Fingerprinter,
    MalformedEventError,
    contains_sensitive,
    seal_event,
)
from tether.errors import ConflictError, InvalidInputError, NotFoundError, SealedError, StorageError
from tether.store.base import AuditConflictError, AuditStorage, Effect, EffectFailedError, SealingStorage

__all__ = ["AuditLog"]

log = logging.getLogger("tether.audit")

DEFAULT_MAX_BATCH = 512
DEFAULT_MAX_ATTEMPTS = 64


@dataclass(slots=True)
class _Pending:
    draft: EventDraft
    future: asyncio.Future[tuple[Event, list[object]]]
    effects: tuple[Effect, ...] = ()


class AuditLog:
    """Appends events to the hash chain, copies them to secondary sinks, takes checkpoints.

    Args:
        storage: the store holding the chain (the primary, transactional record).
        node_id: this node's id; recorded in every event it appends.
        clock: where event times come from.
        sinks: secondary sinks, written after each commit; their failures are counted in
            :attr:`sink_failures` and logged, never raised.
        keys: the deployment's audit keys; needed to fingerprint :class:`Sensitive` values
            and to sign checkpoints. Attach later with :meth:`attach_keys` (after unseal).
        max_batch: most events in one transaction.
    """

    def __init__(
        self,
        storage: AuditStorage,
        *,
        node_id: str,
        clock: Clock,
        sinks: Sequence[AuditSink] = (),
        keys: AuditKeys | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        if max_batch < 1 or max_attempts < 1:
            raise InvalidInputError("max_batch and max_attempts must be positive")
        Actor.system(node_id)  # validates the node id as an actor id
        self._storage = storage
        self._node_id = node_id
        self._clock = clock
        self._sinks = tuple(sinks)
        self._keys = keys
        self._max_batch = max_batch
        self._max_attempts = max_attempts
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one append or checkpoint at a time on this node
        self._head: tuple[int, bytes] | None = None  # None: reload from the store
        # A store that seals inside its write transaction never conflicts with other writers.
        self._sealing = storage if isinstance(storage, SealingStorage) else None
        self._closed = False
        self.sink_failures = 0
        self.sink_failures_by_name: dict[str, int] = {}
        self.conflicts = 0
        self.batches = 0

    # -- keys ---------------------------------------------------------------------------
    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def actor(self) -> Actor:
        """This node as an actor, for events the system itself records."""
        return Actor.system(self._node_id)

    @property
    def keys(self) -> AuditKeys | None:
        return self._keys

    def attach_keys(self, keys: AuditKeys) -> None:
        """Give the log the deployment's audit keys (on unseal)."""
        self._keys = keys

    def detach_keys(self) -> None:
        """Forget the audit keys (on seal). Recording goes on; fingerprints and checkpoints stop."""
        self._keys = None

    def _require_keys(self) -> AuditKeys:
        if self._keys is None:
            raise SealedError("Tether is sealed: the audit keys are unavailable")
        return self._keys

    @property
    def fingerprinter(self) -> Fingerprinter:
        """The deployment's fingerprinter (``tether audit hash VALUE``); sealed: :class:`SealedError`."""
        return self._require_keys().fingerprinter

    def fingerprint(self, value: bytes | str) -> str:
        return self.fingerprinter.fingerprint(value)

    # -- recording ------------------------------------------------------------------------
    async def record(
        self,
        kind: str,
        actor: Actor,
        *,
        resource: str | None = None,
        task_id: str | None = None,
        chain: Sequence[str] = (),
        decision: DecisionSummary | None = None,
        reason: str = "",
        request_id: str | None = None,
        data: Mapping[str, Any] | None = None,
        effects: Sequence[Effect] = (),
    ) -> Event:
        """Append one event and return it once it is durable.

        ``effects`` (store changes such as counting a grant's use) commit in the same transaction
        as the event, or neither does: :class:`~tether.store.base.EffectFailedError` then names
        the effect that failed (use :meth:`record_with` to get the effects' results).

        Values wrapped in :class:`~tether.domain.events.Sensitive` anywhere in ``data`` are
        replaced by their fingerprint first (which needs the audit keys).

        Raises:
            InvalidInputError: the event is malformed (unknown kind, float in data, ...);
                nothing was written.
            SealedError: ``data`` holds a Sensitive value and the keys are not attached.
            StorageError: the event could not be made durable. Fail closed: do not act.
        """
        draft = self._draft(
            kind,
            actor,
            data,
            resource=resource,
            task_id=task_id,
            chain=tuple(chain),
            decision=decision,
            reason=reason,
            request_id=request_id,
        )
        event, _ = await self._submit(draft, tuple(effects))
        return event

    async def record_with(
        self, kind: str, actor: Actor, *, effects: Sequence[Effect], **fields: Any
    ) -> tuple[Event, list[object]]:
        """:meth:`record` returning the effects' results too (one per effect, in order)."""
        draft = self._draft(kind, actor, fields.pop("data", None), **fields)
        return await self._submit(draft, tuple(effects))

    def _draft(self, kind: str, actor: Actor, data: Any, **fields: Any) -> EventDraft:
        """The event's draft, its :class:`~tether.domain.events.Sensitive` values fingerprinted.
        The draft's own walk of ``data`` refuses a Sensitive value, so the data is searched for
        them (and fingerprinted) only when that walk refused something: one walk, not two, for
        the data of every event."""
        try:
            return EventDraft(kind=kind, actor=actor, data=data if data is not None else {}, **fields)
        except MalformedEventError:
            if data is None or not contains_sensitive(data):
                raise
        redacted: Any = self.fingerprinter.redact(data)
        return EventDraft(kind=kind, actor=actor, data=redacted, **fields)

    async def record_draft(self, draft: EventDraft) -> Event:
        """:meth:`record` for a prepared draft."""
        event, _ = await self._submit(draft, ())
        return event

    async def _submit(self, draft: EventDraft, effects: tuple[Effect, ...]) -> tuple[Event, list[object]]:
        if self._closed:
            raise StorageError("the audit log is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Event, list[object]]] = loop.create_future()
        pending = _Pending(draft, future, effects)
        if not self._sinks and not self._queue and not self._lock.locked() and self._writer_idle():
            return await self._append_alone(pending)
        self._queue.append(pending)
        if self._writer_idle():
            # The writer is its own task so that a cancelled caller cannot abandon a batch
            # half-way; everyone queued while it commits goes in its next transaction.
            self._writer = loop.create_task(self._drain(), name="tether-audit-writer")
        return await future

    def _writer_idle(self) -> bool:
        return self._writer is None or self._writer.done()

    async def _append_alone(self, pending: _Pending) -> tuple[Event, list[object]]:
        """Append one event in its caller's own task: nobody is queued to share a transaction
        with, and no secondary sink waits for a copy. On the hot paths (a tool call, an
        activation) that is the usual case, and the writer task's two passes through the event
        loop (its start, then the caller's wake-up) are where a busy worker's other requests
        got ahead of this one. Callers that arrive while this append waits for the store queue
        up, and the writer task they start waits for the lock: they still share one transaction.
        A caller cancelled meanwhile abandons only its own event; the store commits it or not,
        as a whole, and the action it was recorded for is not taken."""
        try:
            async with self._lock:
                written, events, results = await self._append([pending])
        except StorageError:
            log.exception("audit append of 1 event failed")
            raise
        except Exception as exc:  # as the writer task answers its callers
            log.exception("audit append of 1 event failed")
            raise StorageError(f"audit append failed: {exc}") from exc
        if not written:  # its effect failed: _append answered it (EffectFailedError)
            return pending.future.result()
        return events[0], results[0]

    async def _drain(self) -> None:
        batch: list[_Pending] = []
        try:
            while self._queue:
                try:
                    async with self._lock:
                        # Taken once the lock is held: everyone queued while an append made in its
                        # caller's task held it goes in this one transaction.
                        batch = self._queue[: self._max_batch]
                        del self._queue[: len(batch)]
                        batch, events, results = await self._append(batch)
                except Exception as exc:  # every caller of the batch must hear of it
                    error = (
                        exc if isinstance(exc, StorageError) else StorageError(f"audit append failed: {exc}")
                    )
                    if error is not exc:
                        error.__cause__ = exc
                    log.exception("audit append of %d event(s) failed", len(batch))
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(error)
                    batch = []
                    continue
                for pending, event, result in zip(batch, events, results, strict=True):
                    if not pending.future.done():
                        pending.future.set_result((event, result))
                batch = []
                if events:
                    await self._fan_out(events)
        finally:
            # Cancelled (loop shutdown): nobody may be left waiting for an answer.
            leftovers = batch + self._queue
            if leftovers:
                self._queue = []
            for pending in leftovers:
                if not pending.future.done():
                    pending.future.set_exception(StorageError("the audit writer stopped"))

    def _seal_batch(self, drafts: Sequence[EventDraft], head: tuple[int, bytes]) -> list[Event]:
        seq, prev = head
        now = self._clock.now()
        events: list[Event] = []
        for draft in drafts:
            event = seal_event(draft, seq=seq + 1, prev_hash=prev, time=now, node_id=self._node_id)
            events.append(event)
            seq, prev = event.seq, event.hash
        return events

    async def _load_head(self) -> tuple[int, bytes]:
        head = await self._storage.audit_head()
        return head if head is not None else (0, GENESIS_HASH)

    async def _append(self, batch: list[_Pending]) -> tuple[list[_Pending], list[Event], list[list[object]]]:
        """Seal the batch on top of the head and store it; the caller holds the lock. Entries whose
        effects fail are answered with :class:`EffectFailedError` and the rest is written without
        them. Returns the entries written, their events and their effects' results."""
        for attempt in range(self._max_attempts):
            if not batch:
                return [], [], []
            drafts = [p.draft for p in batch]
            effects = [p.effects for p in batch] if any(p.effects for p in batch) else []
            try:
                if self._sealing is not None:
                    events, results = await self._sealing.append_sealed(
                        functools.partial(self._seal_batch, drafts), effects
                    )
                else:
                    if self._head is None:
                        self._head = await self._load_head()
                    events = self._seal_batch(drafts, self._head)
                    results = await self._storage.append_audit_events(events, effects)
            except EffectFailedError as exc:
                # Nothing was written: answer those whose effect failed, retry the others.
                for index, effect in exc.failed.items():
                    if not batch[index].future.done():
                        batch[index].future.set_exception(EffectFailedError({0: effect}))
                batch = [p for index, p in enumerate(batch) if index not in exc.failed]
                continue
            except AuditConflictError:
                # Another node appended first: rebuild on its head. Jitter spreads nodes out.
                self._head = None
                self.conflicts += 1
                await asyncio.sleep(random.uniform(0, 0.001 * min(attempt + 1, 20)))  # noqa: S311
                continue
            except BaseException:
                self._head = None  # the commit may or may not have happened: ask the store
                raise
            self._head = (events[-1].seq, events[-1].hash)
            self.batches += 1
            return batch, events, results
        raise StorageError(f"audit append lost {self._max_attempts} races with other nodes; try again")

    async def _fan_out(self, events: Sequence[Event]) -> None:
        for sink in self._sinks:
            try:
                await sink.write(events)
            except Exception:  # a secondary sink never fails the primary write
                self.sink_failures += 1
                self.sink_failures_by_name[sink.name] = self.sink_failures_by_name.get(sink.name, 0) + 1
                log.exception(
                    "audit sink %r failed to write events %d..%d", sink.name, events[0].seq, events[-1].seq
                )

    async def flush(self) -> None:
        """Wait until everything queued so far has been written (or has failed) and copied to
        the secondary sinks, which trail the durable write; an append made in its caller's task
        too. Not the store's side of an append whose caller was cancelled while waiting for it:
        the store finishes (commits or drops) that transaction on its own, and closing the store
        waits for it."""
        while True:
            if self._writer is not None and not self._writer.done():
                await asyncio.shield(self._writer)
            elif self._lock.locked():  # an append in its caller's task, or a checkpoint
                async with self._lock:
                    pass
            else:
                return

    async def close(self) -> None:
        """Refuse new events and wait for the queued ones."""
        self._closed = True
        await self.flush()

    # -- head and checkpoints ---------------------------------------------------------------
    async def head(self) -> tuple[int, bytes] | None:
        """The stored head ``(seq, hash)`` (every node's appends), or None if empty."""
        return await self._storage.audit_head()

    async def checkpoint(self) -> Checkpoint:
        """Sign the current head, keep the checkpoint in the store, then record an
        ``audit.checkpoint`` event (after signing, so the checkpoint names the head before it).

        Raises:
            SealedError: the audit keys are not attached.
            NotFoundError: the log is empty.
        """
        keys = self._require_keys()
        async with self._lock:
            head = await self._storage.audit_head()
            if head is None:
                raise NotFoundError("the audit log is empty: nothing to checkpoint")
            self._head = head
            signed = sign_checkpoint(keys, seq=head[0], head_hash=head[1], time=self._clock.now())
            try:
                await self._storage.put_audit_checkpoint(checkpoint_to_stored(signed))
            except ConflictError:
                # Another node checkpointed this very head; theirs is as good as ours.
                for stored in await self._storage.list_audit_checkpoints(after_seq=head[0] - 1, limit=1):
                    return checkpoint_from_stored(stored)
                raise
        await self.record(
            "audit.checkpoint",
            self.actor,
            data={
                "seq": signed.seq,
                "head_hash": signed.head_hash.hex(),
                "key_id": signed.key_id,
                "signature": base64.urlsafe_b64encode(signed.signature).rstrip(b"=").decode(),
            },
        )
        return signed

    async def maybe_checkpoint(self, every_events: int) -> Checkpoint | None:
        """Checkpoint if at least ``every_events`` events were appended since the last
        checkpoint (by any node). For a periodic task in the server."""
        if every_events < 1:
            raise InvalidInputError("every_events must be at least 1", field="every_events")
        head = await self._storage.audit_head()
        if head is None:
            return None
        latest = await self._storage.latest_audit_checkpoint()
        if head[0] - (latest.seq if latest is not None else 0) < every_events:
            return None
        return await self.checkpoint()

    async def checkpoint_loop(self, *, every_events: int, interval_seconds: float) -> None:
        """Run :meth:`maybe_checkpoint` every ``interval_seconds`` until cancelled; failures
        (sealed, store down) are logged and retried at the next tick."""
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.maybe_checkpoint(every_events)
            except SealedError:
                continue
            except Exception as exc:  # noqa: BLE001 - a background loop must survive a bad tick
                log.warning("periodic audit checkpoint failed: %s", exc)

    async def latest_checkpoint(self) -> Checkpoint | None:
        stored = await self._storage.latest_audit_checkpoint()
        return None if stored is None else checkpoint_from_stored(stored)

    # -- reading ------------------------------------------------------------------------------
    async def query(
        self, where: AuditFilter | None = None, *, after_seq: int = 0, limit: int = 100
    ) -> AuditPage:
        """A page of events matching ``where`` (see :func:`~tether.audit.query_events`)."""
        return await query_events(self._storage, where, after_seq=after_seq, limit=limit)

    async def verify(self, checkpoint: Checkpoint | Sequence[Checkpoint] | None = None) -> VerifyResult:
        """Verify the stored chain against ``checkpoint`` and the stored checkpoints; when the
        keys are attached, checkpoints must be signed by this deployment's key."""
        trusted = None if self._keys is None else {self._keys.key_id}
        return await verify_store(self._storage, checkpoint, trusted_key_ids=trusted)
