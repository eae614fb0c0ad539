"""The Shared Signals transmitter: streams for receivers (admins manage them, auditors read their
delivery logs) and push delivery of SETs (RFC 8417 over RFC 8935), signed with Tether's key.

Nothing here runs on the governed path. The :class:`Transmitter` reads the audit log after its
cursor (kept in the store's meta table), so it learns of an ending, a revocation, a rotation or a
context change only once that was durably recorded, on whichever node it happened; it never delays
or fails the revocation itself. Each signal becomes one delivery row per interested stream (an
outbox, so a receiver that is down loses nothing), pushed at once and retried with backoff
(:func:`~tether.evidence.signals.backoff_seconds`) up to :data:`~tether.evidence.signals.MAX_ATTEMPTS`
times; the delivery log says what happened to each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets as pysecrets
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, Final

import httpx

from tether.audit import AuditFilter, AuditLog
from tether.broker.access import authorize, operator_actor
from tether.broker.auth import AuthService
from tether.clock import Clock
from tether.config import Settings
from tether.crypto.jose import sign_jws
from tether.domain.events import Event
from tether.domain.operators import OperatorRecord, Permission
from tether.domain.tasks import LIVE_STATUSES
from tether.errors import ConflictError, InvalidInputError, NotFoundError, SealedError, TetherError
from tether.evidence.signals import (
    MAX_ATTEMPTS,
    MAX_STREAMS,
    SET_TYPE,
    SOURCE_KINDS,
    VERIFICATION,
    Signal,
    StreamConfig,
    backoff_seconds,
    delivery_id,
    discovery_document,
    ended_task_ids,
    is_public_address,
    set_claims,
    signals_for,
    validate_receiver_url,
)
from tether.store._signals import Delivery, SignalStore
from tether.store.base import Storage

__all__ = ["CURSOR_META", "SignalService", "Transmitter", "resolve_addresses"]

log = logging.getLogger(__name__)

CURSOR_META: Final = "ssf_cursor"
#: Sequence numbers of the audit chain one pass of the transmitter covers at most.
SEQS_PER_PASS: Final = 50_000
#: How long one node holds a delivery it is sending (another node retries it after that).
CLAIM_SECONDS: Final = 60
PUSH_TIMEOUT_SECONDS: Final = 5.0
PUSHES_AT_ONCE: Final = 8
#: Seconds between the transmitter's passes while no stream is configured.
IDLE_SECONDS: Final = 2.0
_PAGE: Final = 1000

Resolver = Callable[[str], Awaitable[list[str]]]


async def resolve_addresses(host: str) -> list[str]:
    """Every address ``host`` resolves to (for the private-address check)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def check_receiver(url: str, resolver: Resolver) -> None:
    """Refuse a receiver URL that is not https (http only for loopback) or whose host resolves to
    a private, link-local or otherwise non-public address (loopback hosts excepted: development)."""
    _, loopback = validate_receiver_url(url)
    if loopback:
        return
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        addresses = await resolver(host)
    except OSError:
        raise InvalidInputError(f"endpoint_url: cannot resolve {host!r}", field="endpoint_url") from None
    if not addresses or not all(is_public_address(a) for a in addresses):
        raise InvalidInputError(
            f"endpoint_url: {host!r} resolves to a private or reserved address", field="endpoint_url"
        )


def issuer_of(settings: Settings) -> str:
    """The ``iss`` of Tether's SETs: its public URL, else its trust domain as a SPIFFE ID."""
    if settings.public_url:
        return str(settings.public_url).rstrip("/")
    return f"spiffe://{settings.trust_domain}"


class SignalService:
    """Stream management (``signals.manage``: admins) and delivery logs (``audit.read`` too)."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        clock: Clock,
        settings: Settings,
        *,
        resolver: Resolver = resolve_addresses,
        transmitter: Transmitter | None = None,
    ) -> None:
        self._storage = storage
        self._store = SignalStore(storage)
        self._audit = audit
        self._clock = clock
        self._settings = settings
        self._resolver = resolver
        self._transmitter = transmitter

    def configuration(self, base_url: str) -> dict[str, Any]:
        return discovery_document(issuer_of(self._settings), base_url.rstrip("/"))

    async def create_stream(
        self,
        actor: OperatorRecord,
        *,
        endpoint_url: str,
        events_requested: Sequence[str],
        audience: str | None = None,
        description: str = "",
    ) -> StreamConfig:
        await authorize(self._audit, actor, Permission.SIGNALS_MANAGE, "ssf:streams")
        await check_receiver(endpoint_url, self._resolver)
        origin = urllib.parse.urlsplit(endpoint_url)
        stream = StreamConfig(
            id="ssf_" + pysecrets.token_urlsafe(16),
            endpoint_url=endpoint_url,
            events_requested=StreamConfig.event_uris(events_requested),
            audience=audience or f"{origin.scheme}://{origin.netloc}",
            description=description,
            created_by=actor.name,
            created_at=self._clock.now(),
        )
        if len(await self._store.list_streams()) >= MAX_STREAMS:
            raise ConflictError(f"at most {MAX_STREAMS} streams")
        await self._audit.record(
            "ssf.stream.add",
            operator_actor(actor),
            resource=f"ssf:{stream.id}",
            data={"endpoint_url": endpoint_url[:512], "events": list(stream.events_requested)},
        )
        cursor = await self._storage.get_meta(CURSOR_META)
        live = [s for s in await self._store.list_streams() if s.status != "disabled"]
        if cursor is None or not live:
            # The transmitter starts reading here: a new receiver is not sent history (and with
            # no stream before it, nothing older needs reading).
            head = await self._audit.head()
            with contextlib.suppress(ConflictError):
                await self._storage.put_meta(
                    CURSOR_META, str(head[0] if head is not None else 0).encode("ascii"), expected=cursor
                )
        await self._store.put_stream(stream)
        return stream

    async def list_streams(self, actor: OperatorRecord) -> list[StreamConfig]:
        await authorize(self._audit, actor, Permission.AUDIT_READ, "ssf:streams")
        return await self._store.list_streams()

    async def get_stream(self, actor: OperatorRecord, stream_id: str) -> StreamConfig:
        await authorize(self._audit, actor, Permission.AUDIT_READ, f"ssf:{stream_id[:80]}")
        return await self._existing(stream_id)

    async def _existing(self, stream_id: str) -> StreamConfig:
        stream = await self._store.get_stream(stream_id) if len(stream_id) <= 64 else None
        if stream is None:
            raise NotFoundError(f"no stream {stream_id[:80]}")
        return stream

    async def set_status(
        self, actor: OperatorRecord, stream_id: str, status: str, reason: str = ""
    ) -> StreamConfig:
        """``enabled`` (deliver), ``paused`` (keep SETs, deliver on enable), ``disabled`` (drop new)."""
        await authorize(self._audit, actor, Permission.SIGNALS_MANAGE, f"ssf:{stream_id[:80]}")
        if status not in {"enabled", "paused", "disabled"}:
            raise InvalidInputError("status must be enabled, paused or disabled", field="status")
        await self._existing(stream_id)
        await self._audit.record(
            "ssf.stream.update",
            operator_actor(actor),
            resource=f"ssf:{stream_id}",
            reason=reason[:200],
            data={"status": status},
        )
        await self._store.set_stream_status(stream_id, status, self._clock.now())
        return await self._existing(stream_id)

    async def delete_stream(self, actor: OperatorRecord, stream_id: str) -> None:
        await authorize(self._audit, actor, Permission.SIGNALS_MANAGE, f"ssf:{stream_id[:80]}")
        await self._existing(stream_id)
        await self._audit.record("ssf.stream.remove", operator_actor(actor), resource=f"ssf:{stream_id}")
        await self._store.delete_stream(stream_id)

    async def verify(self, actor: OperatorRecord, stream_id: str, state: str | None = None) -> Delivery:
        """Queue an SSF verification event for the stream (delivered like any other SET)."""
        await authorize(self._audit, actor, Permission.SIGNALS_MANAGE, f"ssf:{stream_id[:80]}")
        stream = await self._existing(stream_id)
        if state is not None and (len(state) > 256 or any(ord(c) < 32 for c in state)):
            raise InvalidInputError("state: at most 256 printable characters", field="state")
        now = self._clock.now()
        payload: dict[str, Any] = {} if state is None else {"state": state}
        signal = Signal(
            VERIFICATION,
            {"format": "opaque", "id": stream.id},
            payload,
            f"verification:{pysecrets.token_hex(8)}",
            now,
        )
        jti = delivery_id(stream.id, signal.key)
        claims = set_claims(issuer_of(self._settings), stream, signal, jti, now)
        await self._store.add_deliveries(
            [
                {
                    "id": jti,
                    "stream_id": stream.id,
                    "event_seq": None,
                    "event_type": VERIFICATION,
                    "claims": claims,
                }
            ],
            now,
        )
        if self._transmitter is not None:
            self._transmitter.wake()
        found = await self._store.list_deliveries(stream.id, limit=20)
        return next(d for d in found if d.id == jti)

    async def deliveries(
        self, actor: OperatorRecord, stream_id: str, *, status: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        await authorize(self._audit, actor, Permission.AUDIT_READ, f"ssf:{stream_id[:80]}")
        await self._existing(stream_id)
        if status is not None and status not in {"pending", "delivered", "failed"}:
            raise InvalidInputError("status must be pending, delivered or failed", field="status")
        if not 1 <= limit <= 1000:
            raise InvalidInputError("limit must be between 1 and 1000", field="limit")
        return await self._store.list_deliveries(stream_id, status=status, limit=limit)


class Transmitter:
    """Turns audit events into SETs for each stream and pushes them. One per node (a background
    loop); several nodes may run one each: deliveries are stored once and claimed before sending."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        clock: Clock,
        settings: Settings,
        auth: AuthService,
        *,
        resolver: Resolver = resolve_addresses,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._storage = storage
        self._store = SignalStore(storage)
        self._audit = audit
        self._clock = clock
        self._settings = settings
        self._auth = auth
        self._resolver = resolver
        self._transport = transport
        self._wake = asyncio.Event()
        self._idle = False

    def wake(self) -> None:
        """Run the next pass now rather than at the next tick."""
        self._wake.set()

    async def _cursor(self) -> tuple[int, bytes | None]:
        blob = await self._storage.get_meta(CURSOR_META)
        if blob is None:
            return -1, None
        return int(blob.decode("ascii")), blob

    async def _advance(self, old: bytes | None, seq: int) -> bool:
        try:
            await self._storage.put_meta(CURSOR_META, str(seq).encode("ascii"), expected=old)
        except ConflictError:
            return False  # another node advanced it; the next pass starts from there
        return True

    async def run_once(self) -> int:
        """Read new audit events into deliveries, then push what is due. How many were delivered."""
        if not await self._enqueue():
            return 0  # no stream: nothing to deliver to
        return await self.deliver_due()

    async def _enqueue(self) -> bool:
        """Whether a stream is configured (paused counts: its deliveries wait for it)."""
        # Idle (no stream): one read a pass, no write. The cursor is placed when a stream is added.
        streams = [s for s in await self._store.list_streams() if s.status != "disabled"]
        if not streams:
            self._idle = True
            return False
        self._idle = False
        cursor, blob = await self._cursor()
        if cursor < 0:
            return True
        head = await self._audit.head()
        upper = min(head[0] if head is not None else 0, cursor + SEQS_PER_PASS)
        if upper <= cursor:
            return True
        # Only the kinds that become signals, by the (kind, seq) index: activations are never read.
        events: list[Event] = []
        for kind in sorted(SOURCE_KINDS):
            after = cursor
            while True:
                page = await self._audit.query(AuditFilter(kind=kind), after_seq=after, limit=_PAGE)
                events.extend(e for e in page.events if e.seq <= upper)
                if page.next_after is None or page.events[-1].seq >= upper:
                    break
                after = page.next_after
        events.sort(key=lambda e: e.seq)
        rows = await self._rows_for(events, streams) if events else []
        await self._store.add_deliveries(rows, self._clock.now())
        await self._advance(blob, upper)
        return True

    async def _rows_for(
        self, events: Sequence[Event], streams: Sequence[StreamConfig]
    ) -> list[dict[str, Any]]:
        now = self._clock.now()
        issuer = issuer_of(self._settings)
        live = {status.value for status in LIVE_STATUSES}
        rows: list[dict[str, Any]] = []
        for event in events:
            task_ids = ended_task_ids(event)
            if event.kind == "task.update" and event.task_id:
                task_ids.append(event.task_id)
            agents: dict[str, str] = {}
            ended: set[str] = set()
            leases: dict[str, list[str]] = {}
            contexts: dict[str, str] = {}
            for task_id in dict.fromkeys(task_ids):
                task = await self._storage.get_task(task_id)
                if task is None:
                    continue
                agents[task_id] = task.agent_id
                contexts[task_id] = task.context_hash
                if task.status.value not in live:
                    ended.add(task_id)
                    found = await self._storage.list_leases(now, task_id=task_id, limit=100)
                    leases[task_id] = [lease.id for lease in found]
            for signal in signals_for(event, agents, leases, ended, contexts):
                for stream in streams:
                    if (
                        signal.event_type not in stream.events_requested
                        or signal.occurred_at < stream.created_at
                    ):
                        continue
                    jti = delivery_id(stream.id, signal.key)
                    rows.append(
                        {
                            "id": jti,
                            "stream_id": stream.id,
                            "event_seq": signal.seq,
                            "event_type": signal.event_type,
                            "claims": set_claims(issuer, stream, signal, jti, now),
                        }
                    )
        return rows

    async def deliver_due(self) -> int:
        now = self._clock.now()
        due = await self._store.due_deliveries(now)
        if not due:
            return 0
        streams = {s.id: s for s in await self._store.list_streams()}
        slots = asyncio.Semaphore(PUSHES_AT_ONCE)

        async def one(delivery: Delivery) -> bool:
            stream = streams.get(delivery.stream_id)
            if stream is None or stream.status != "enabled":
                return False  # paused: kept for later; removed: its rows went with it
            async with slots:
                return await self._attempt(stream, delivery)

        return sum(await asyncio.gather(*(one(d) for d in due)))

    async def _attempt(self, stream: StreamConfig, delivery: Delivery) -> bool:
        key = self._auth.active_signing_key()  # sealed: SealedError, nothing claimed or counted
        now = self._clock.now()
        if not await self._store.claim(delivery, now + timedelta(seconds=CLAIM_SECONDS)):
            return False
        token = sign_jws(
            {"alg": "Ed25519", "typ": SET_TYPE, "kid": key.kid}, delivery.claims, key.private_key
        )
        status, error, permanent = await self._push(stream.endpoint_url, token)
        attempts = delivery.attempts + 1
        done = self._clock.now()
        if error is None:
            await self._store.record_attempt(
                delivery.id,
                status="delivered",
                attempts=attempts,
                next_attempt_at=done,
                error=None,
                http_status=status,
                delivered_at=done,
            )
            return True
        failed = permanent or attempts >= MAX_ATTEMPTS
        log.warning(
            "SET %s to stream %s: attempt %d failed (%s)%s",
            delivery.id,
            stream.id,
            attempts,
            error,
            "; giving up" if failed else "",
        )
        await self._store.record_attempt(
            delivery.id,
            status="failed" if failed else "pending",
            attempts=attempts,
            next_attempt_at=done + timedelta(seconds=backoff_seconds(attempts)),
            error=error,
            http_status=status,
            delivered_at=None,
        )
        return False

    async def _push(self, url: str, token: str) -> tuple[int | None, str | None, bool]:
        """``(HTTP status, error, permanent)`` of one push (RFC 8935 §2)."""
        try:
            await check_receiver(url, self._resolver)
        except InvalidInputError as exc:
            return None, str(exc)[:200], True
        headers = {"Content-Type": "application/secevent+jwt", "Accept": "application/json"}
        try:
            async with httpx.AsyncClient(
                timeout=PUSH_TIMEOUT_SECONDS,
                transport=self._transport,
                follow_redirects=False,
                trust_env=False,
            ) as client:
                response = await client.post(url, content=token.encode("ascii"), headers=headers)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: the receiver did not answer", False
        if 200 <= response.status_code < 300:
            return response.status_code, None, False
        detail = ""
        if response.status_code == 400:
            try:
                body = response.json()
                detail = (
                    f": {str(body.get('err', ''))[:40]} {str(body.get('description', ''))[:100]}".rstrip()
                )
            except (ValueError, AttributeError):
                detail = ""
        # 4xx (but 408 and 429) is the receiver refusing this SET: retrying will not change that.
        permanent = 400 <= response.status_code < 500 and response.status_code not in {408, 429}
        return response.status_code, f"HTTP {response.status_code}{detail}", permanent

    async def loop(self, interval_seconds: float = 0.5, idle_seconds: float = IDLE_SECONDS) -> None:
        """:meth:`run_once` every ``interval_seconds`` (or at once when woken) until cancelled;
        every ``idle_seconds`` while no stream is configured (a node without receivers should
        not poll its store twice a second)."""
        while True:
            try:
                await self.run_once()
            except SealedError:
                pass
            except TetherError as exc:
                log.warning("signals transmitter pass failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), timeout=idle_seconds if self._idle else interval_seconds
                )
            self._wake.clear()
