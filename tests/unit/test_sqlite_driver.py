"""The SQLite hot-path driver: writers of several processes take turns on a lock file."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from tether.errors import StorageUnavailableError
from tether.store.sqlite._driver import SQLiteDriver


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
