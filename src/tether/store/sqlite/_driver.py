"""Stdlib ``sqlite3`` under the hot paths: reads on the caller's thread, writes on one writer thread.

A transaction is one function. :meth:`SQLiteDriver.read` runs one query on a connection of the calling
thread (the event loop's): in WAL mode a reader never waits for the writer, and a single indexed query
costs tens of microseconds — less than handing it to another thread and back.
:meth:`SQLiteDriver.write` hands one function to the writer thread, which runs it between
``BEGIN IMMEDIATE`` and ``COMMIT``: one thread hop per transaction, however many statements it holds.
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
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

from tether.errors import StorageError, StorageUnavailableError, TetherError
from tether.store._hot import Query
from tether.tracing import inner_span

__all__ = ["SQLiteDriver"]

T = TypeVar("T")
_SQLITE = {"db.system": "sqlite"}

#: What the writer thread takes from its queue: the work, and where to answer (None: stop).
_Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"] | None


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
        self._closed = False
        self._lock_path = None if str(path) == ":memory:" else Path(f"{path}-writer.lock")

    # -- connections ------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
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
            conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            conn.close()  # not half-configured, and not left open
            raise self.translate(exc) from None
        with self._opened_lock:
            self._opened.append(conn)
        self._local.conn = conn
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
        # One thread, one connection: every write transaction of this process, in arrival order.
        while (job := self._jobs.get()) is not None:
            work, loop, future = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = self._transaction(work)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
                error = exc
            try:
                loop.call_soon_threadsafe(_answer, future, result, error)
            except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
                continue

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
                cursor = self._connection().execute(query.sql, params)
                try:
                    raw = cursor.fetchall()  # fetch everything: an open cursor would hold the snapshot
                finally:
                    cursor.close()
            except sqlite3.Error as exc:
                raise self.translate(exc) from None
            return query.rows(raw)

    # -- writing --------------------------------------------------------------------------------------
    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` … ``COMMIT`` on the writer thread. Anything it
        raises rolls the transaction back; the driver's errors become :class:`StorageError`."""
        if self._closed:
            raise StorageError(f"sqlite store is closed{self._hint}")
        if self._writer is None:
            self._start_writer()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        # One hand-off each way: the queue to the writer thread, call_soon_threadsafe back.
        with inner_span("tether.store.write", _SQLITE):
            self._jobs.put((work, loop, future))
            return await future

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        lock = self._lock_fd()
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released on close too, should this process die
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except TetherError:
            raise
        except sqlite3.Error as exc:
            raise self.translate(exc) from None
        finally:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return result

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
