"""What one node does around serving HTTP, whatever runs it (``tether server`` with one process
or several workers, ``uvicorn --factory``, ``gunicorn -k uvicorn.workers.UvicornWorker``):

- starting the broker (migrate, unseal) one process at a time, under an exclusive lock on
  ``<data dir>/tether-start.lock``, so that workers starting together never migrate concurrently;
- running the background loops (audit checkpoints, task sweeper) once per node, not once per
  worker: the process holding an exclusive lock on ``<data dir>/tether-background.lock`` runs
  them; the others try again every :data:`BACKGROUND_RETRY_SECONDS`, so that if the holder dies
  (the kernel releases its lock) another worker takes over.

A node is a data dir: two processes on one data dir share the locks, whatever their ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from tether.broker import Broker
from tether.errors import ConfigError

__all__ = [
    "BACKGROUND_LOCK_FILE",
    "BACKGROUND_RETRY_SECONDS",
    "START_LOCK_FILE",
    "NodeLock",
    "background_loops",
    "start_broker",
]

log = logging.getLogger(__name__)

START_LOCK_FILE = "tether-start.lock"
BACKGROUND_LOCK_FILE = "tether-background.lock"
BACKGROUND_RETRY_SECONDS = 2.0


class NodeLock:
    """An exclusive ``flock`` on a file in the data dir; released by the kernel when the process
    dies, however it dies. Where ``fcntl`` does not exist (Windows), every lock is granted: there,
    a node is one process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        try:
            # O_CLOEXEC is Python's default: a worker spawned later never inherits the lock.
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            reason = exc.strerror or exc
            raise ConfigError(
                f"cannot open the lock file {self.path}: {reason} (the data dir must be writable)"
            ) from None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; never blocks."""
        if self._fd is not None:
            return True
        if sys.platform == "win32":
            self._fd = -1
            return True
        import fcntl

        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def acquire(self) -> None:
        """Take the lock, waiting for the holder (a blocking call: run it in a thread)."""
        if self._fd is not None:
            return
        if sys.platform == "win32":
            self._fd = -1
            return
        import fcntl

        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and fd >= 0:
            os.close(fd)  # closing the only descriptor releases the flock


async def start_broker(broker: Broker) -> None:
    """:meth:`Broker.start` (migrate, unseal) while holding the node's start lock."""
    lock = NodeLock(broker.settings.data_dir / START_LOCK_FILE)
    await asyncio.to_thread(lock.acquire)
    try:
        await broker.start()
    finally:
        lock.release()


async def _run_elected(broker: Broker, lock: NodeLock, retry_seconds: float) -> None:
    while not lock.try_acquire():
        await asyncio.sleep(retry_seconds)
    log.info("background loops (audit checkpoints, task sweeper) run in this process (pid %d)", os.getpid())
    settings = broker.settings
    async with asyncio.TaskGroup() as group:
        group.create_task(
            broker.audit.checkpoint_loop(
                every_events=settings.audit_checkpoint_every_events,
                interval_seconds=settings.audit_checkpoint_interval_seconds,
            ),
            name="tether-audit-checkpoints",
        )
        # Expiry is enforced on every read; the sweeper makes it visible in the store and
        # revokes engine leases of ended tasks.
        group.create_task(
            broker.tasks.sweep_loop(settings.sweep_interval_seconds), name="tether-task-sweeper"
        )
        # Shared Signals: SETs for receivers, from the audit log, pushed and retried.
        group.create_task(broker.signals.loop(), name="tether-signals")


@contextlib.asynccontextmanager
async def background_loops(
    broker: Broker, *, retry_seconds: float = BACKGROUND_RETRY_SECONDS
) -> AsyncIterator[None]:
    """Run the node's background loops in this process while the block runs, if this process
    holds (or later takes over) the node's background lock."""
    lock = NodeLock(broker.settings.data_dir / BACKGROUND_LOCK_FILE)
    lock.try_acquire()  # a path error surfaces now, at startup, not in a background task
    task = asyncio.create_task(_run_elected(broker, lock, retry_seconds), name="tether-background")
    task.add_done_callback(_report_failure)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # a failure was logged already
            await task
        lock.release()


def _report_failure(task: asyncio.Task[None]) -> None:
    # The loops log and survive their own errors; anything else stops them, loudly.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background loops stopped: %r", exc)
