"""Stdlib ``sqlite3`` under the hot paths: reads on the caller's thread, writes on one writer thread.

A transaction is one function. :meth:`SQLiteDriver.read` runs one query on a connection of the calling
thread (the event loop's): in WAL mode a reader never waits for the writer, and a single indexed query
costs tens of microseconds — less than handing it to another thread and back. Once a thread has
written inline (below), its reads use the connection of those writes, whose page cache they leave
valid, except while a transaction is open on that thread.
:meth:`SQLiteDriver.write` hands one function to the writer thread, which runs it between
``BEGIN IMMEDIATE`` and ``COMMIT``: one thread hop per transaction, however many statements it holds.
At ``synchronous=NORMAL`` a commit does not wait for the disk, so when no write is queued for the
writer thread or running there, :meth:`SQLiteDriver.write` runs the transaction on the calling
thread instead (*inline*): it costs no hand-off, which is the largest part of a small transaction's
cost and the part most sensitive to the host's scheduling. An inline write never waits for a lock:
when another writer holds either lock it goes to the writer thread as before. It never checkpoints
either: its connection has ``wal_autocheckpoint`` off, and every :data:`CHECKPOINT_EVERY` inline
commits the writer thread is asked for a passive checkpoint (the one step that syncs the disk at
NORMAL), while inline writes go on; what they add meanwhile is copied by a short second pass with
every writer held back. Then the writer thread restarts the emptied log at once with a commit that
changes nothing: the first commit into a restarted log writes the log's header and syncs it, at
NORMAL as well. Writes wait for the second pass and the restart (their syncs included), never for
the first pass, and no caller's write makes the restart.
At ``synchronous=FULL`` every commit syncs the write-ahead log, so every write goes to the writer
thread.
Writers of other processes (``tether server --workers N``) take turns on a lock file beside the
database (``flock``) before ``BEGIN IMMEDIATE``: the kernel hands the lock to the next writer as soon
as it is released, where SQLite's own busy handler sleeps 1, 2, 5, 10 ms ... between retries and
leaves a worker idle while its requests queue. SQLite's lock (``busy_timeout``) still guards
against every other writer (the cold paths' connections, other tools). Everything read inside a
write function (the audit chain's head, a task's state) is current.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

from tether.errors import StorageError, StorageUnavailableError, TetherError
from tether.store._hot import Query
from tether.tracing import inner_span

__all__ = ["CHECKPOINT_EVERY", "SQLiteDriver"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_SQLITE = {"db.system": "sqlite"}
#: Inline commits between two passive checkpoints asked of the writer thread. A small transaction
#: adds a few pages to the log, so this keeps it near SQLite's own default (1,000 pages).
CHECKPOINT_EVERY = 100

#: What the writer thread takes from its queue: the work, and where to answer (None: nobody waits;
#: the whole job None: stop).
_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop | None, "asyncio.Future[Any] | None"] | None


def _restart_log(conn: sqlite3.Connection) -> None:
    """A write that changes nothing (the header's ``user_version``, set to itself) but still adds
    a page to the log: after a complete checkpoint, the commit that restarts the log."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    conn.execute(f"PRAGMA user_version = {version}")


def _busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY and its extended codes (BUSY_RECOVERY, BUSY_SNAPSHOT, BUSY_TIMEOUT)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


def _fetch(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    cursor = conn.execute(sql, params)
    try:
        return cursor.fetchall()  # fetch everything: an open cursor would hold the snapshot
    finally:
        cursor.close()


def _answer(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; the transaction happened (or not) all the same
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SQLiteDriver:
    """Connections to one SQLite file for the hot paths (see the module docstring)."""

    def __init__(self, path: Path, *, synchronous: str, busy_timeout_ms: int, hint: str) -> None:
        if synchronous not in {"FULL", "NORMAL"}:
            raise ValueError("synchronous must be FULL or NORMAL")
        self._path = path
        self._synchronous = synchronous
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._hint = hint
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock_fds: list[int] = []
        self._opened_lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._queued = 0  # transactions handed to the writer thread and not yet done
        self._queued_lock = threading.Lock()
        self._closed = False
        self._lock_path = None if str(path) == ":memory:" else Path(f"{path}-writer.lock")
        self._inline = synchronous == "NORMAL" and self._lock_path is not None
        self._inline_commits = 0
        self._hold_inline = False  # writes go to the writer thread (see _checkpoint)

    # -- connections ------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open(busy_timeout_ms=self._busy_timeout_ms, checkpoint=True)
            assert conn is not None  # only an inline connection gives up when busy
            self._local.conn = conn
        return conn

    def _inline_connection(self) -> sqlite3.Connection | None:
        """This thread's connection for inline writes: it never waits on SQLite's lock (busy
        timeout 0) and never checkpoints (that would sync the disk on the caller's thread).
        None when it cannot be opened without waiting (another connection holds the database):
        the writer thread takes the work, as for any other lock held."""
        conn: sqlite3.Connection | None = getattr(self._local, "inline", None)
        if conn is None:
            conn = self._open(busy_timeout_ms=0, checkpoint=False, give_up_when_busy=True)
            self._local.inline = conn
        return conn

    def _inline_reader(self) -> sqlite3.Connection | None:
        """This thread's inline connection, to read on, when it is open and holds no transaction:
        SQLite keeps the page cache of a connection whose own commits changed the database, and
        empties it when another connection's did, so reading where this thread's inline writes
        commit spares re-reading those pages after each write. None: read on the waiting
        connection, as before there were inline writes: none here, none yet, or a transaction
        open on this thread (a read inside :meth:`write_sync`'s work sees that work's changes, one
        inside an inline write's sees what is committed)."""
        if not self._inline:
            return None
        conn: sqlite3.Connection | None = getattr(self._local, "inline", None)
        if conn is None or conn.in_transaction:
            return None
        waiting: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if waiting is not None and waiting.in_transaction:
            return None
        return conn

    def _forget(self, conn: sqlite3.Connection) -> None:
        """Close a connection that may still hold SQLite's write lock (its ROLLBACK failed), so that
        the lock goes with it; this thread opens a fresh one next time."""
        for name in ("conn", "inline"):
            if getattr(self._local, name, None) is conn:
                setattr(self._local, name, None)
        with self._opened_lock:
            if conn in self._opened:
                self._opened.remove(conn)
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def _open(
        self, *, busy_timeout_ms: int, checkpoint: bool, give_up_when_busy: bool = False
    ) -> sqlite3.Connection | None:
        if self._closed:
            raise StorageError(f"sqlite store is closed{self._hint}")
        try:
            # Autocommit (isolation_level None): a lone SELECT is its own read transaction, and
            # writes say BEGIN IMMEDIATE themselves. check_same_thread is off only so close() can
            # close every thread's connection; each is used by its own thread alone.
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self.translate(exc) from None
        try:
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            if not checkpoint:
                conn.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as exc:
            conn.close()  # not half-configured, and not left open
            if give_up_when_busy and _busy(exc):
                return None
            raise self.translate(exc) from None
        with self._opened_lock:
            self._opened.append(conn)
        return conn

    def _lock_fd(self) -> int | None:
        """This thread's descriptor of the writers' lock file (one per thread, so that two threads
        of one process exclude each other too); None where there is no such lock."""
        if fcntl is None or self._lock_path is None:
            return None
        fd: int | None = getattr(self._local, "lock_fd", None)
        if fd is None:
            try:
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise StorageUnavailableError(
                    f"sqlite store unavailable{self._hint}: cannot open its writers' lock file"
                    f" ({exc.strerror})"
                ) from None
            with self._opened_lock:
                self._lock_fds.append(fd)
            self._local.lock_fd = fd
        return fd

    def _start_writer(self) -> None:
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="tether-sqlite-writer", daemon=True
                )
                self._writer.start()

    def _write_loop(self) -> None:
        # One thread, one connection: every queued write transaction of this process, in arrival order.
        while (job := self._jobs.get()) is not None:
            run, loop, future = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = run()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
                error = exc
            if loop is None or future is None:
                continue
            try:
                loop.call_soon_threadsafe(_answer, future, result, error)
            except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
                continue

    def _checkpoint(self) -> None:
        """A passive checkpoint on the writer thread, after inline commits (which do none), and
        the restart of the log it empties.

        A first pass copies the log into the database while inline writes go on. A second pass
        then copies what they added meanwhile, with every writer held back: this process's writes
        queue here, other processes' wait for the writers' lock, which this thread holds until the
        log is restarted. (A pass reports the log as it was when the pass began, so only a pass
        that no write can overlap says whether the log is empty now.) Every checkpoint thus
        empties the log, unless a reader still reads from it, another process checkpoints at the
        same time or the restart's commit fails; under writes without a pause the log would
        otherwise grow without bound."""
        first = self._checkpoint_pass()
        if first is None or first[0] == 0:  # failed, or an empty log: nothing to restart
            return
        self._hold_inline = True
        try:
            with self._writers_turn():
                passed = self._checkpoint_pass()
                if passed is not None and 0 < passed[0] == passed[1]:
                    # Every frame of the log is in the database: the next commit restarts the log
                    # and writes its header anew, which syncs the disk even at NORMAL. That commit
                    # is made here at once, rewriting a header field with its own value, so that
                    # no caller's write waits for the sync.
                    self._attempt(_restart_log, inline=False, locked=True)
        except (StorageError, OSError) as exc:  # still held: the next write restarts the log, here
            log.warning("sqlite log restart failed: %s", type(exc).__name__)
            return
        self._hold_inline = False

    @contextlib.contextmanager
    def _writers_turn(self) -> Iterator[None]:
        """This thread's turn on the writers' lock (waiting for it as long as it takes)."""
        lock = self._lock_fd()
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released on close too, should this process die
        try:
            yield
        finally:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _checkpoint_pass(self) -> tuple[int, int] | None:
        """One passive checkpoint: the log's frames and how many of them are in the database now
        (None: it failed; the next one tries again, and SQLite stays consistent)."""
        try:
            row = self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
        except (sqlite3.Error, StorageError) as exc:
            log.warning("sqlite checkpoint failed: %s", type(exc).__name__)
            return None
        return int(row[1]), int(row[2])

    # -- errors -------------------------------------------------------------------------------------
    def translate(self, exc: sqlite3.Error) -> StorageError:
        """The driver's error as ours (never the driver's text for anything but the cause)."""
        text = str(exc)
        if "no such table" in text:
            return StorageError(f"sqlite store has no Tether schema{self._hint}: run `tether migrate`")
        if isinstance(exc, sqlite3.OperationalError):
            return StorageUnavailableError(
                f"sqlite store unavailable{self._hint}: {text.splitlines()[0][:200]}"
            )
        return StorageError(f"sqlite store error: {type(exc).__name__}")

    # -- reading --------------------------------------------------------------------------------------
    def read(self, query: Query, params: Sequence[Any] = ()) -> list[Any]:
        """Every row of one query, as ``query``'s named tuples, on this thread."""
        with inner_span("tether.store.read", _SQLITE):
            try:
                inline = self._inline_reader()
                if inline is not None:
                    try:
                        return query.rows(_fetch(inline, query.sql, params))
                    except sqlite3.OperationalError as exc:
                        # The inline connection never waits for a lock (busy timeout 0). In WAL
                        # mode a reader meets one while another connection recovers the log's
                        # index (after a process died mid-write): the waiting connection reads
                        # instead, as it always did.
                        if not _busy(exc):
                            raise
                return query.rows(_fetch(self._connection(), query.sql, params))
            except sqlite3.Error as exc:
                raise self.translate(exc) from None

    # -- writing --------------------------------------------------------------------------------------
    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` … ``COMMIT``: inline when that costs no wait
        (see the module docstring), else on the writer thread. Anything it raises rolls the
        transaction back; the driver's errors become :class:`StorageError`. ``work`` fetches
        what it selects (``fetchall``, ``fetchone`` of a cursor it drops) and returns no cursor:
        an unfinished statement would hold its snapshot past the commit, and this thread's reads
        run on the same connection."""
        if self._closed:
            raise StorageError(f"sqlite store is closed{self._hint}")
        with inner_span("tether.store.write", _SQLITE):
            if self._inline and not (self._queued > 0 or self._hold_inline):
                done = self._attempt(work, inline=True)
                if done is not None:
                    self._inline_commits += 1
                    if self._inline_commits >= CHECKPOINT_EVERY:
                        self._inline_commits = 0
                        self._submit(self._checkpoint, None, None)
                    return done[0]
                # Another writer holds a lock: nothing was done; queue behind it.
            loop = asyncio.get_running_loop()
            future: asyncio.Future[T] = loop.create_future()
            # One hand-off each way: the queue to the writer thread, call_soon_threadsafe back.
            with self._queued_lock:
                self._queued += 1
            try:
                self._submit(functools.partial(self._queued_transaction, work), loop, future)
            except BaseException:
                self._done_queued()
                raise
            return await future

    def _done_queued(self) -> None:
        with self._queued_lock:
            self._queued -= 1

    def _submit(
        self,
        run: Callable[[], Any],
        loop: asyncio.AbstractEventLoop | None,
        future: asyncio.Future[Any] | None,
    ) -> None:
        if self._writer is None:
            self._start_writer()
        self._jobs.put((run, loop, future))

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` between ``BEGIN IMMEDIATE`` and ``COMMIT`` on this thread, holding the
        writers' lock (waiting for it as long as it takes, then up to the busy timeout)."""
        done = self._attempt(work, inline=False)
        assert done is not None  # only an inline attempt gives up
        self._hold_inline = False  # this commit restarted the log if a checkpoint let it
        return done[0]

    def _queued_transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """:meth:`_transaction` of a write handed to the writer thread, counted until it is done."""
        try:
            return self._transaction(work)
        finally:
            self._done_queued()

    def _attempt(
        self, work: Callable[[sqlite3.Connection], T], *, inline: bool, locked: bool = False
    ) -> tuple[T] | None:
        """:meth:`_transaction`; ``inline``: on this thread's inline connection, without waiting:
        None (and nothing done) when another writer holds the writers' lock or SQLite's.
        ``locked``: this thread holds the writers' lock already (see :meth:`_writers_turn`)."""
        conn = self._inline_connection() if inline else self._connection()
        if conn is None:
            return None
        lock = None if locked else self._lock_fd()
        if lock is not None:
            try:
                # released on close too, should this process die
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB if inline else fcntl.LOCK_EX)
            except BlockingIOError:
                return None
        try:
            try:
                # BEGIN inside the try that rolls back: whatever is raised once it ran (a signal
                # handler's KeyboardInterrupt too) must not leave SQLite's write lock held.
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if inline and _busy(exc):
                        return None
                    raise
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except BaseException:
                        self._forget(conn)  # closing it rolls back and frees the lock
                        raise
                raise
        except TetherError:
            raise
        except sqlite3.Error as exc:
            raise self.translate(exc) from None
        finally:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return (result,)

    def write_sync(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """:meth:`write` on the calling thread (tools and tests without an event loop)."""
        return self._transaction(work)

    # -- closing --------------------------------------------------------------------------------------
    def close(self) -> None:
        self._closed = True
        with self._writer_lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._jobs.put(None)  # after every job already queued
            writer.join()
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover - closing a connection another thread holds
                continue
        with self._opened_lock:
            fds, self._lock_fds = self._lock_fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._local = threading.local()
