"""The SQLite hot-path driver: writers of several processes take turns on a lock file; uncontended
writes at synchronous=NORMAL run inline, never waiting on the caller's thread."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tether.errors import StorageError, StorageUnavailableError
from tether.store._hot import Query
from tether.store.sqlite._driver import CHECKPOINT_EVERY, SQLiteDriver


def _driver(path: Path) -> SQLiteDriver:
    return SQLiteDriver(path, synchronous="NORMAL", busy_timeout_ms=5000, hint="")


def test_writers_of_two_drivers_take_turns_and_lose_nothing(tmp_path: Path) -> None:
    # Two drivers on one file stand for two worker processes (each has its own lock descriptor).
    path = tmp_path / "t.db"
    first, second = _driver(path), _driver(path)
    first.write_sync(lambda conn: conn.execute("CREATE TABLE c (n INTEGER NOT NULL)"))
    first.write_sync(lambda conn: conn.execute("INSERT INTO c VALUES (0)"))

    def bump(driver: SQLiteDriver) -> None:
        for _ in range(200):
            # read-modify-write: only correct if no other writer runs in between
            driver.write_sync(
                lambda conn: conn.execute(
                    "UPDATE c SET n = ?", (conn.execute("SELECT n FROM c").fetchone()[0] + 1,)
                )
            )

    threads = [threading.Thread(target=bump, args=(d,)) for d in (first, second, first)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert first.write_sync(lambda conn: conn.execute("SELECT n FROM c").fetchone()[0]) == 600
        lock = tmp_path / "t.db-writer.lock"
        assert lock.exists()
        assert stat.S_IMODE(lock.stat().st_mode) & 0o077 == 0  # not readable by others
    finally:
        first.close()
        second.close()


def test_a_failed_transaction_releases_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    first, second = _driver(path), _driver(path)
    try:

        def fail(conn: object) -> None:
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            first.write_sync(fail)
        # The other "process" can write at once (it would block forever on a lock left held).
        done = threading.Event()
        worker = threading.Thread(
            target=lambda: (second.write_sync(lambda conn: conn.execute("CREATE TABLE t (x)")), done.set())
        )
        worker.start()
        worker.join(timeout=10)
        assert done.is_set()
    finally:
        first.close()
        second.close()


def test_an_unusable_lock_file_is_a_clear_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    (tmp_path / "t.db-writer.lock").mkdir()  # not a file: cannot be opened for writing
    driver = _driver(path)
    try:
        with pytest.raises(StorageUnavailableError, match="writers' lock file"):
            driver.write_sync(lambda conn: conn.execute("CREATE TABLE t (x)"))
    finally:
        driver.close()


# -- inline writes (synchronous=NORMAL): on the caller's thread when nothing waits ------------------


def _counter(driver: SQLiteDriver) -> None:
    driver.write_sync(lambda conn: conn.execute("CREATE TABLE c (n INTEGER NOT NULL)"))
    driver.write_sync(lambda conn: conn.execute("INSERT INTO c VALUES (0)"))


def _bump(conn: sqlite3.Connection) -> int:
    # read-modify-write: only correct if no other writer runs in between
    n = int(conn.execute("SELECT n FROM c").fetchone()[0]) + 1
    conn.execute("UPDATE c SET n = ?", (n,))
    return threading.get_ident()


async def test_an_uncontended_write_runs_inline_at_normal_and_on_the_writer_thread_at_full(
    tmp_path: Path,
) -> None:
    normal = _driver(tmp_path / "n.db")
    full = SQLiteDriver(tmp_path / "f.db", synchronous="FULL", busy_timeout_ms=5000, hint="")
    try:
        for driver in (normal, full):
            _counter(driver)
        assert await normal.write(_bump) == threading.get_ident()
        # FULL syncs the log at every commit: never on the event loop's thread.
        assert await full.write(_bump) != threading.get_ident()
    finally:
        normal.close()
        full.close()


async def test_an_inline_write_never_waits_for_another_processs_writer(tmp_path: Path) -> None:
    # The other driver stands for another worker process holding the writers' lock mid-transaction.
    path = tmp_path / "t.db"
    ours, other = _driver(path), _driver(path)
    _counter(ours)
    holding, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        holding.set()
        release.wait(10)
        _bump(conn)

    holder = threading.Thread(target=other.write_sync, args=(hold,))
    holder.start()
    try:
        assert holding.wait(10)
        write = asyncio.ensure_future(ours.write(_bump))
        ticks = 0
        while ticks < 20:  # the loop keeps running while our write waits on the writer thread
            await asyncio.sleep(0.005)
            ticks += 1
        assert not write.done()
        release.set()
        thread = await asyncio.wait_for(write, 10)
        assert thread != threading.get_ident()  # it went to the writer thread
        assert ours.read(Query("SELECT n FROM c", ("n",))) == [(2,)]
        assert await ours.write(_bump) == threading.get_ident()  # inline again once free
    finally:
        release.set()
        holder.join(10)
        ours.close()
        other.close()


async def test_an_inline_write_never_waits_for_a_foreign_sqlite_writer(tmp_path: Path) -> None:
    # A writer that does not take Tether's lock file (another tool, a cold path's connection):
    # SQLite's own lock is held; the inline attempt gives up at once and the writer thread waits.
    path = tmp_path / "t.db"
    driver = _driver(path)
    _counter(driver)
    foreign = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        foreign.execute("BEGIN IMMEDIATE")
        write = asyncio.ensure_future(driver.write(_bump))
        await asyncio.sleep(0.05)
        assert not write.done()
        foreign.execute("COMMIT")
        assert await asyncio.wait_for(write, 10) != threading.get_ident()
        assert driver.read(Query("SELECT n FROM c", ("n",))) == [(1,)]
    finally:
        if foreign.in_transaction:
            foreign.execute("ROLLBACK")
        foreign.close()
        driver.close()


async def test_a_failed_inline_write_rolls_back_and_releases_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    driver, other = _driver(path), _driver(path)
    _counter(driver)

    def fail(conn: sqlite3.Connection) -> None:
        _bump(conn)
        raise RuntimeError("boom")

    def bad_sql(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO c VALUES (NULL)")  # NOT NULL

    try:
        with pytest.raises(RuntimeError, match="boom"):
            await driver.write(fail)
        with pytest.raises(StorageError) as raised:
            await driver.write(bad_sql)
        assert not isinstance(raised.value.__cause__, sqlite3.Error)  # ours, not the driver's
        assert driver.read(Query("SELECT n FROM c", ("n",))) == [(0,)]
        # Both locks were let go: another "process" writes at once, and so do we, inline.
        other.write_sync(_bump)
        assert await driver.write(_bump) == threading.get_ident()
        assert driver.read(Query("SELECT n FROM c", ("n",))) == [(2,)]
    finally:
        driver.close()
        other.close()


async def test_inline_writes_of_two_processes_take_turns_and_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    drivers = [_driver(path), _driver(path)]
    _counter(drivers[0])

    def worker(driver: SQLiteDriver) -> None:
        async def bump_all() -> None:
            for _ in range(300):
                await driver.write(_bump)

        asyncio.run(bump_all())

    threads = [threading.Thread(target=worker, args=(d,)) for d in drivers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert drivers[0].read(Query("SELECT n FROM c", ("n",))) == [(600,)]
    finally:
        for driver in drivers:
            driver.close()


async def test_inline_commits_are_checkpointed_off_the_callers_thread(tmp_path: Path) -> None:
    # The inline connection never checkpoints (that syncs the disk); the writer thread does, every
    # CHECKPOINT_EVERY inline commits, and every checkpoint empties and restarts the log, so it is
    # reused instead of growing without bound, even when inline writes follow each other without a
    # pause (and leave the writer thread the interpreter only now and then: its checkpoints then
    # run late, each after a few hundred commits).
    path = tmp_path / "t.db"
    driver = _driver(path)
    driver.write_sync(lambda conn: conn.execute("CREATE TABLE b (x BLOB NOT NULL)"))
    page = 4096
    commits = 40 * CHECKPOINT_EVERY
    try:
        restarts = _wal_checkpoint_sequence(path)
        for _ in range(commits):
            await driver.write(lambda conn: conn.execute("INSERT INTO b VALUES (?)", (b"x" * page,)))
        await asyncio.to_thread(_idle, driver)
        # Every checkpoint restarted the log (writes queued meanwhile do not count towards the
        # next checkpoint, so there were somewhat fewer than one per CHECKPOINT_EVERY commits).
        assert _wal_checkpoint_sequence(path) - restarts >= commits // CHECKPOINT_EVERY * 3 // 4
        without_checkpoints = commits * 2 * page  # a row's page and its overflow page
        wal = Path(f"{path}-wal").stat().st_size
        assert wal < without_checkpoints / 3, wal
        rows = driver.read(Query("SELECT count(*) AS n FROM b", ("n",)))
        assert rows == [(commits,)]
    finally:
        driver.close()


def _idle(driver: SQLiteDriver) -> None:
    """Wait until the writer thread has run every job queued so far (a marker job after them)."""
    done = threading.Event()
    driver._submit(done.set, None, None)
    assert done.wait(30)


async def test_an_inline_connection_that_cannot_open_without_waiting_falls_back(tmp_path: Path) -> None:
    # The inline connection is opened at the first inline write, with busy timeout 0: when another
    # connection holds the database (an exclusive-mode tool, another process's WAL recovery), its
    # set-up statements are refused at once. That is contention, not an outage: the writer thread
    # takes the work and waits as before, where a 503 would deny a request that could be served.
    path = tmp_path / "t.db"
    driver = _driver(path)
    _counter(driver)
    driver.close()  # no connection left open that could keep the foreign lock away
    driver = _driver(path)
    foreign = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        foreign.execute("PRAGMA locking_mode=EXCLUSIVE")
        foreign.execute("BEGIN EXCLUSIVE")
        foreign.execute("UPDATE c SET n = n")
        write = asyncio.ensure_future(driver.write(_bump))
        await asyncio.sleep(0.05)
        assert not write.done()
        foreign.execute("COMMIT")
        foreign.close()
        assert await asyncio.wait_for(write, 10) != threading.get_ident()
        assert driver.read(Query("SELECT n FROM c", ("n",))) == [(1,)]
        assert await driver.write(_bump) == threading.get_ident()  # inline once it could open
    finally:
        foreign.close()
        driver.close()


async def test_an_interrupt_right_after_begin_leaves_no_transaction_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An exception raised between BEGIN IMMEDIATE and the work (a signal handler's
    # KeyboardInterrupt on the event loop's thread) must roll back like one raised by the work:
    # a connection left in its transaction keeps SQLite's write lock, and every writer of every
    # process is refused from then on.
    path = tmp_path / "t.db"
    driver, other = _driver(path), _driver(path)
    _counter(driver)
    interrupt = [True]

    class Interrupted(sqlite3.Connection):
        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
            cursor = super().execute(sql, *args)
            if sql == "BEGIN IMMEDIATE" and interrupt and interrupt.pop():
                raise KeyboardInterrupt
            return cursor

    real_connect = sqlite3.connect

    def connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        return real_connect(*args, factory=Interrupted, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(sqlite3, "connect", connect)
    try:
        with pytest.raises(KeyboardInterrupt):
            await driver.write(_bump)
        monkeypatch.undo()
        other._busy_timeout_ms = 200  # fail fast if the lock was kept
        other.write_sync(_bump)
        assert await driver.write(_bump) == threading.get_ident()
        assert driver.read(Query("SELECT n FROM c", ("n",))) == [(2,)]
    finally:
        monkeypatch.undo()
        driver.close()
        other.close()


def _wal_checkpoint_sequence(path: Path) -> int:
    # The log's header (bytes 12..16): the checkpoint sequence, written anew (and synced, even at
    # synchronous=NORMAL) by the first commit after a complete checkpoint, which restarts the log.
    with open(f"{path}-wal", "rb") as wal:
        return int.from_bytes(wal.read(16)[12:16], "big")


async def test_the_log_is_restarted_off_the_callers_thread(tmp_path: Path) -> None:
    # After a complete checkpoint the next commit writes the log's header again and syncs it: the
    # writer thread makes that commit itself, so no caller's write waits for the sync (and none
    # makes it inline, which would stall the event loop).
    path = tmp_path / "t.db"
    driver = _driver(path)
    _counter(driver)
    try:
        before = _wal_checkpoint_sequence(path)
        for _ in range(CHECKPOINT_EVERY):
            assert await driver.write(_bump) == threading.get_ident()
        # Wait for the writer thread's checkpoint and restart.
        for _ in range(500):
            if _wal_checkpoint_sequence(path) != before and not driver._hold_inline:
                break
            await asyncio.sleep(0.01)
        restarted = _wal_checkpoint_sequence(path)
        assert restarted != before  # the log was restarted, by nobody's write ...
        assert await driver.write(_bump) == threading.get_ident()  # ... and the next one is inline
        assert _wal_checkpoint_sequence(path) == restarted
        assert driver.read(Query("SELECT n FROM c", ("n",))) == [(CHECKPOINT_EVERY + 1,)]
    finally:
        driver.close()


async def test_a_checkpoint_under_way_holds_no_write_back(tmp_path: Path) -> None:
    # A checkpoint syncs the disk on the writer thread; writes meanwhile still run inline instead of
    # queueing behind it. Only transactions handed to the writer thread make later writes queue.
    driver = _driver(tmp_path / "t.db")
    _counter(driver)
    running, release = threading.Event(), threading.Event()

    def slow_checkpoint() -> None:
        running.set()
        release.wait(10)

    try:
        driver._submit(slow_checkpoint, None, None)  # as write() asks for a checkpoint
        assert await asyncio.to_thread(running.wait, 10)
        assert await driver.write(_bump) == threading.get_ident()  # inline, the checkpoint running
        release.set()
        assert driver.read(Query("SELECT n FROM c", ("n",))) == [(1,)]
    finally:
        release.set()
        driver.close()


async def test_a_restart_that_fails_is_made_by_the_next_write_off_the_callers_thread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Another connection holds SQLite's write lock past the busy timeout: the writer thread's
    # restart commit fails (logged), and writes stay off the event loop's thread until the next
    # one, on the writer thread, has restarted the log; then they run inline again.
    path = tmp_path / "t.db"
    driver = SQLiteDriver(path, synchronous="NORMAL", busy_timeout_ms=50, hint="")
    _counter(driver)
    foreign = sqlite3.connect(path, isolation_level=None)
    try:
        assert await driver.write(_bump) == threading.get_ident()
        before = _wal_checkpoint_sequence(path)
        foreign.execute("BEGIN IMMEDIATE")
        driver._submit(driver._checkpoint, None, None)  # as write() asks for one
        await asyncio.to_thread(_idle, driver)
        assert driver._hold_inline
        assert "sqlite log restart failed: StorageUnavailableError" in caplog.text
        foreign.execute("ROLLBACK")
        assert await driver.write(_bump) != threading.get_ident()  # on the writer thread ...
        assert _wal_checkpoint_sequence(path) != before  # ... where it restarted the log
        assert not driver._hold_inline
        assert await driver.write(_bump) == threading.get_ident()
        assert driver.read(Query("SELECT n FROM c", ("n",))) == [(3,)]
    finally:
        foreign.close()
        driver.close()


async def test_reads_after_inline_writes_see_every_writers_commits(tmp_path: Path) -> None:
    # Reads run on the connection the inline writes commit on: they still see what the writer
    # thread and another process's writers committed, at once.
    path = tmp_path / "t.db"
    ours, other = _driver(path), _driver(path)
    _counter(ours)
    count = Query("SELECT n FROM c", ("n",))
    try:
        assert await ours.write(_bump) == threading.get_ident()  # inline: its connection reads now
        assert ours.read(count) == [(1,)]
        other.write_sync(_bump)  # another process's writer
        assert ours.read(count) == [(2,)]
        ours.write_sync(_bump)  # this driver's waiting connection
        assert ours.read(count) == [(3,)]
        assert await ours.write(_bump) == threading.get_ident()
        assert ours.read(count) == [(4,)]
    finally:
        ours.close()
        other.close()


@pytest.mark.parametrize(
    ("how", "sees"),
    [
        # A read while an inline transaction is open is not a read of its uncommitted changes:
        # it reads the committed database, on the waiting connection.
        ("inline", 1),
        # As before reads ran inline: a read while this thread's waiting connection holds a
        # transaction (a tool's write_sync) reads on that connection, its changes included.
        ("write_sync", 2),
    ],
)
async def test_a_read_inside_a_write_on_this_thread(tmp_path: Path, how: str, sees: int) -> None:
    path = tmp_path / "t.db"
    driver = _driver(path)
    _counter(driver)
    count = Query("SELECT n FROM c", ("n",))
    seen: list[Any] = []

    def bump_and_read(conn: sqlite3.Connection) -> int:
        ident = _bump(conn)
        seen.extend(driver.read(count))
        return ident

    try:
        assert await driver.write(_bump) == threading.get_ident()  # this thread reads inline now
        if how == "inline":
            assert await driver.write(bump_and_read) == threading.get_ident()
        else:
            driver.write_sync(bump_and_read)
        assert seen == [(sees,)]
        assert driver.read(count) == [(2,)]
    finally:
        driver.close()


#: Run in another process (SQLite's locks are per process): take the write and recovery locks of a
#: database's shared-memory index, as a process recovering the log's index does, and make the
#: index's header invalid (its two copies differ), as a process that died mid-write leaves it. A
#: reader must then wait until the recovery is over (SQLITE_BUSY_RECOVERY).
_RECOVERING = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 120)  # WAL_WRITE_LOCK
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 122)  # WAL_RECOVER_LOCK
byte = os.pread(fd, 1, 48 + 16)  # the second copy of the header
os.pwrite(fd, bytes([byte[0] ^ 0xFF]), 48 + 16)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _recovering(path: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _RECOVERING, f"{path}-shm", str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    return holder


def _stop(holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait(10)
    assert holder.stdout is not None
    holder.stdout.close()


async def test_a_read_the_inline_connection_cannot_make_is_made_by_the_waiting_one(tmp_path: Path) -> None:
    # The log's index is being recovered: the inline connection, which never waits (busy timeout
    # 0), is refused; the read is made on the waiting connection, once the recovery is over,
    # where a refusal would deny a request that could be served.
    path = tmp_path / "t.db"
    driver = _driver(path)
    _counter(driver)
    count = Query("SELECT n FROM c", ("n",))
    try:
        assert await driver.write(_bump) == threading.get_ident()  # this thread reads inline now
        holder = _recovering(path, 0.3)
        try:
            with pytest.raises(sqlite3.OperationalError) as refused:
                driver._local.inline.execute("SELECT n FROM c").fetchall()
            assert refused.value.sqlite_errorcode == sqlite3.SQLITE_BUSY | (1 << 8)  # BUSY_RECOVERY
            assert driver.read(count) == [(1,)]
            assert holder.poll() is not None  # it waited for the recovery to end
        finally:
            _stop(holder)
        assert await driver.write(_bump) == threading.get_ident()
        assert driver.read(count) == [(2,)]
    finally:
        driver.close()


async def test_a_read_that_waits_past_the_busy_timeout_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    driver = SQLiteDriver(path, synchronous="NORMAL", busy_timeout_ms=50, hint="")
    _counter(driver)
    try:
        assert await driver.write(_bump) == threading.get_ident()
        holder = _recovering(path, 10)
        try:
            locked = r"^sqlite store unavailable: database is locked$"
            with pytest.raises(StorageUnavailableError, match=locked):
                driver.read(Query("SELECT n FROM c", ("n",)))
        finally:
            _stop(holder)
    finally:
        driver.close()
