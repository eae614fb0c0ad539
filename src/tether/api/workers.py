"""``tether server --workers N``: N worker processes serving one listening address.

The parent (the supervisor) checks that the node starts (migrate, unseal: the errors a single
process would show, shown once), binds the address, then runs ``python -m tether.api.workers``
N times with a listening socket passed as a file descriptor. Each worker serves
:func:`tether.api.app.create_node_app` under uvicorn (uvloop, httptools); the kernel hands each
new connection to one of them. On Linux each worker has its own socket, all bound to the address
with ``SO_REUSEPORT``, so the kernel spreads new connections evenly over the workers: with one
shared socket, whichever worker woke first accepted a whole burst (16 connections opened at once
all went to one worker in some measured runs, which then served at one core's speed). Elsewhere
the workers share one socket. The supervisor keeps every socket open, so connections that arrive
for a worker being restarted wait in its queue. The supervisor

- stops the workers (SIGTERM, then SIGKILL after :data:`GRACEFUL_SECONDS`) when it gets SIGTERM
  or SIGINT;
- restarts a worker that dies after it started, and stops the node if one dies during startup
  (within :data:`STARTUP_GRACE_SECONDS`: a fault that a restart would only repeat);
- relays a seal: a worker that answered ``POST /v1/sys/seal`` tells the supervisor (SIGUSR1),
  which tells every worker to drop its keys, so the whole node is sealed, not one process. A
  worker (re)started while the node is sealed starts sealed.
- relays an unseal the same way (SIGUSR2): every other worker unseals with the key provider's key
  (the answering worker recorded the unseal). A worker whose provider's key does not open the
  keyring (an unseal with an explicit root key) stays sealed and says so in the log.

Each worker reports once, on a pipe, that it serves (only then is it sent seals: before, the
signal's default action would kill it). Workers die with the supervisor: on Linux the kernel
sends them SIGKILL when it dies (``prctl(PR_SET_PDEATHSIG)``), elsewhere a watchdog thread
notices the new parent. The node's background loops run in one worker only (see
:mod:`tether.api.lifespan`).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import errno
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import ClassVar

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.api.app import DATA_DIR_ENV, create_app_from_env
from tether.api.lifespan import start_broker
from tether.api.server import HTTP_OPTIONS, freeze_startup_heap, loop_factory
from tether.broker import Broker
from tether.config import ENV_VARS, Settings
from tether.logs import configure_logging

__all__ = [
    "GRACEFUL_SECONDS",
    "SEALED_ENV",
    "STARTUP_GRACE_SECONDS",
    "WorkerStartupError",
    "die_with_parent",
    "listen",
    "supervise",
]

log = logging.getLogger("tether.api.workers")  # also when run as __main__

GRACEFUL_SECONDS = 30.0
STARTUP_GRACE_SECONDS = 10.0
RESTART_DELAY_SECONDS = 1.0
POLL_SECONDS = 0.1
BACKLOG = 2048
#: Set for a worker (re)started while its node is sealed: it seals before it serves.
SEALED_ENV = "TETHER_WORKER_SEALED"
SEAL_SIGNAL = signal.SIGUSR1 if sys.platform != "win32" else signal.SIGTERM
UNSEAL_SIGNAL = signal.SIGUSR2 if sys.platform != "win32" else signal.SIGTERM
_PR_SET_PDEATHSIG = 1
_READY = b"r"


class WorkerStartupError(RuntimeError):
    """A worker exited while starting; the node was stopped (the worker logged why)."""


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    ready_fd: int  # read end of the worker's readiness pipe
    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False


class _Supervisor:
    def __init__(self, settings: Settings, socks: list[socket.socket], count: int) -> None:
        self.settings = settings
        self.socks = socks
        self.count = count
        self.workers: list[_Worker] = []
        self.stopping = False
        self.sealed = False

    def _env(self) -> dict[str, str]:
        assert self.settings.public_url is not None  # with_public_url ran first
        env = dict(os.environ)
        env[DATA_DIR_ENV] = str(self.settings.data_dir)
        env["TETHER_PUBLIC_URL"] = self.settings.public_url
        env.pop(SEALED_ENV, None)
        if self.sealed:
            env[SEALED_ENV] = "1"
        return env

    def spawn(self, index: int) -> _Worker:
        fd = self.socks[index % len(self.socks)].fileno()
        ready_read, ready_write = os.pipe()
        os.set_blocking(ready_read, False)
        command = [sys.executable, "-m", "tether.api.workers"]
        command += ["--fd", str(fd), "--ready-fd", str(ready_write)]
        command += ["--parent", str(os.getpid()), "--index", str(index)]
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
                command, stdin=subprocess.DEVNULL, pass_fds=(fd, ready_write), env=self._env()
            )
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)
        log.info("worker %d started (pid %d)", index, proc.pid)
        return _Worker(index=index, proc=proc, ready_fd=ready_read)

    def on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def on_seal_signal(self, signum: int, frame: FrameType | None) -> None:
        self.sealed = True
        for worker in self.workers:
            self._send_seal(worker)

    def on_unseal_signal(self, signum: int, frame: FrameType | None) -> None:
        self.sealed = False
        for worker in self.workers:
            self._send_seal(worker, UNSEAL_SIGNAL)

    def _send_seal(self, worker: _Worker, sig: signal.Signals = SEAL_SIGNAL) -> None:
        if worker.ready and worker.proc.poll() is None:
            os.kill(worker.proc.pid, sig)

    def _check_ready(self, worker: _Worker) -> None:
        if worker.ready:
            return
        try:
            signalled = os.read(worker.ready_fd, 1) == _READY
        except BlockingIOError:
            return
        if signalled:
            worker.ready = True
            if self.sealed:  # sealed after it was spawned
                self._send_seal(worker)

    def run(self) -> None:
        self.workers = [self.spawn(i) for i in range(self.count)]
        while not self.stopping:
            time.sleep(POLL_SECONDS)
            for slot, worker in enumerate(self.workers):
                self._check_ready(worker)
                code = worker.proc.poll()
                if code is None or self.stopping:
                    continue
                os.close(worker.ready_fd)
                if time.monotonic() - worker.started_at < STARTUP_GRACE_SECONDS:
                    log.error(
                        "worker %d (pid %d) exited with %s while starting",
                        worker.index,
                        worker.proc.pid,
                        code,
                    )
                    raise WorkerStartupError(f"worker {worker.index} exited with {code} while starting")
                log.warning(
                    "worker %d (pid %d) exited with %s; restarting it", worker.index, worker.proc.pid, code
                )
                time.sleep(RESTART_DELAY_SECONDS)
                self.workers[slot] = self.spawn(worker.index)

    def stop(self) -> None:
        """SIGTERM every worker (uvicorn finishes the requests in flight, then the broker closes),
        SIGKILL what is left after :data:`GRACEFUL_SECONDS`."""
        self.stopping = True
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.terminate()
        deadline = time.monotonic() + GRACEFUL_SECONDS
        for worker in self.workers:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "worker %d (pid %d) did not stop in time; killing it", worker.index, worker.proc.pid
                )
                worker.proc.kill()
                worker.proc.wait()
            if worker.ready_fd >= 0:
                os.close(worker.ready_fd)
                worker.ready_fd = -1
        self.workers = []


def _bound(address: tuple[object, ...], family: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


#: ``SO_ATTACH_REUSEPORT_CBPF`` (Linux 4.5+, ``asm-generic/socket.h``).
_SO_ATTACH_REUSEPORT_CBPF = 51


def _pin_group(sock: socket.socket, count: int) -> None:
    """Make the kernel hand new connections only to the group's first ``count`` sockets (the
    node's own, which joined first and stay open for the node's life): a process that joins the
    group later (same user, ``SO_REUSEPORT``) gets none. A classic BPF program run for each new
    connection picks the socket: ``A = random; A %= count; return A``."""
    program = b"".join(
        struct.pack("HBBI", code, 0, 0, k)
        for code, k in (
            (0x20, 0xFFFFF000 + 56),  # BPF_LD|BPF_W|BPF_ABS, SKF_AD_OFF + SKF_AD_RANDOM
            (0x94, count),  # BPF_ALU|BPF_MOD|BPF_K
            (0x16, 0),  # BPF_RET|BPF_A
        )
    )
    buffer = ctypes.create_string_buffer(program, len(program))
    sock.setsockopt(
        socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, struct.pack("HP", 3, ctypes.addressof(buffer))
    )


def _listeners(address: tuple[object, ...], family: int) -> set[int]:
    """The inodes of every socket listening on ``address`` (from ``/proc/net/tcp`` or ``tcp6``)."""
    packed = socket.inet_pton(family, str(address[0]))
    # /proc shows the address as 32-bit words in host order (little-endian here), in hex
    words = [packed[i : i + 4] for i in range(0, len(packed), 4)]
    local = "".join(f"{int.from_bytes(word, sys.byteorder):08X}" for word in words) + f":{address[1]:04X}"
    table = Path("/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp")
    inodes = set()
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(int(fields[9]))
    return inodes


def listen(host: str, port: int, count: int) -> list[socket.socket]:
    """The node's listening sockets: ``count`` of them on Linux, bound to ``host:port`` with
    ``SO_REUSEPORT`` (the kernel balances new connections over them); one elsewhere, or where the
    kernel refuses to pin the group.

    The address stays the node's alone. A first bind without ``SO_REUSEPORT`` refuses an address
    anybody listens on (``OSError``, ``EADDRINUSE``, as a plain bind refuses it); the group is then
    pinned to the node's own sockets (:func:`_pin_group`), so a process that joins it later gets no
    connection; and once bound, the node checks that it holds every listener on the address, so
    two nodes starting at the same moment cannot end up sharing it (the address counts as taken).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = _bound((host, port), family, reuse_port=False)
    balanced = count > 1 and sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
    if not balanced:
        try:
            probe.listen(BACKLOG)
        except BaseException:
            probe.close()
            raise
        return [probe]
    address = probe.getsockname()  # the address resolved once, the port chosen (for port 0)
    probe.close()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = _bound(address, family, reuse_port=True)
            socks.append(sock)
            sock.listen(BACKLOG)
        try:
            _pin_group(socks[0], count)
        except OSError as exc:  # an old kernel, a sandbox: one plain shared socket, as elsewhere
            log.info("one listening socket for all workers (the kernel refused to pin a group: %s)", exc)
            for sock in socks:
                sock.close()
            # Not one of the group's sockets: those keep SO_REUSEPORT, which another process of
            # the same user could join, unpinned.
            socks = [_bound(address, family, reuse_port=False)]
            socks[0].listen(BACKLOG)
            return socks
        if _listeners(address, family) != {os.fstat(sock.fileno()).st_ino for sock in socks}:
            raise OSError(errno.EADDRINUSE, f"address already in use: {address[0]}:{address[1]}")
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def supervise(settings: Settings, host: str, port: int, count: int) -> None:
    """Serve the node with ``count`` worker processes until SIGTERM or SIGINT.

    ``settings.public_url`` must be set (``with_public_url``). Raises whatever the node's start
    raises (storage, keys), and :class:`WorkerStartupError` if a worker fails while starting.
    """

    async def check_start() -> None:
        broker = Broker.from_settings(settings)
        try:
            await start_broker(broker)  # migrations run here, once, before any worker starts
        finally:
            await broker.close()

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(check_start())
    socks = listen(host, port, count)
    supervisor = _Supervisor(settings, socks, count)
    previous = {sig: signal.signal(sig, supervisor.on_stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    if sys.platform != "win32":
        previous[SEAL_SIGNAL] = signal.signal(SEAL_SIGNAL, supervisor.on_seal_signal)
        previous[UNSEAL_SIGNAL] = signal.signal(UNSEAL_SIGNAL, supervisor.on_unseal_signal)
    log.info("Tether %s on http://%s:%d with %d workers", settings.node_id, host, port, count)
    if settings.console == "on":
        log.info(
            "web console on %s/ui (sign in with an operator token)",
            settings.public_url or f"http://{host}:{port}",
        )
    try:
        supervisor.run()
    finally:
        supervisor.stop()
        for sock in socks:
            sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def die_with_parent(parent_pid: int) -> None:
    """Make this process die when ``parent_pid``, its parent, dies, however it dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    else:

        def watchdog() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watchdog, name="tether-parent-watchdog", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)


# -- the worker process ---------------------------------------------------------------------------


class _SealNotifier:
    """After this worker sealed (``POST /v1/sys/seal`` answered 200), tell the supervisor, which
    seals every other worker. Told before the answer is sent: an operator who reads "sealed"
    knows that every worker has been told. An unseal (``POST /v1/sys/unseal``) is told the same
    way, with its own signal."""

    _SIGNALS: ClassVar[dict[str, signal.Signals]] = {
        "/v1/sys/seal": SEAL_SIGNAL,
        "/v1/sys/unseal": UNSEAL_SIGNAL,
    }

    def __init__(self, app: ASGIApp, parent_pid: int) -> None:
        self.app = app
        self.parent_pid = parent_pid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sig = self._SIGNALS.get(scope["path"]) if scope["type"] == "http" else None
        if sig is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return

        async def notify_then_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                os.kill(self.parent_pid, sig)
            await send(message)

        await self.app(scope, receive, notify_then_send)


#: Set once this worker was told to stop (SIGTERM or SIGINT outside uvicorn's own handlers).
_STOPPING = threading.Event()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _STOPPING.set()
    raise KeyboardInterrupt


def _worker_main(fd: int, ready_fd: int, parent_pid: int, index: int) -> None:
    die_with_parent(parent_pid)
    # The supervisor resolved the log format (flag, environment, file) and exported it.
    configure_logging(os.environ.get(ENV_VARS["log_format"]) or "text", label="worker")
    # uvicorn handles SIGTERM/SIGINT while it serves, then raises the signal again once the app
    # has shut down (the broker closed): this handler turns that into a clean exit. A signal that
    # comes before uvicorn takes them over (while the app is built, or the event loop starts) is
    # raised wherever the worker is: inside uvloop's start it leaves the loop half started, and
    # the runner's teardown then fails too ("this event loop is already running"). Asked to stop,
    # the worker exits whatever its way out raised, with a log line instead of a traceback.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupt)
    try:
        _serve_worker(fd, ready_fd, parent_pid, index)
    except BaseException as exc:
        if not _STOPPING.is_set():
            raise
        if not isinstance(exc, KeyboardInterrupt):
            log.warning("worker %d: %s on its way out after it was told to stop", index, type(exc).__name__)


def _serve_worker(fd: int, ready_fd: int, parent_pid: int, index: int) -> None:
    """Serve the inherited socket until uvicorn stops (see :func:`_worker_main`)."""
    sock = socket.socket(fileno=fd)
    app = create_app_from_env(sealed=bool(os.environ.get(SEALED_ENV)))
    if sys.platform != "win32":  # the factory already added request ids and spans
        app.add_middleware(_SealNotifier, parent_pid=parent_pid)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", **HTTP_OPTIONS))

    def seal() -> None:
        broker: Broker = app.state.broker
        broker.seal_now()
        app.state.metrics.sealed.set(1)
        log.warning("sealed: the node was sealed (through one of its workers)")

    async def unseal() -> None:
        broker: Broker = app.state.broker
        if await broker.unseal_relayed():
            app.state.metrics.sealed.set(0)
            log.warning("unsealed: the node was unsealed (through one of its workers)")
        else:
            log.error(
                "still sealed: the node was unsealed through another worker with a key this worker's"
                " key provider does not hold; unseal it again or restart the node"
            )

    def on_unseal() -> None:
        unsealing.add(asyncio.get_running_loop().create_task(unseal()))
        for done in [task for task in unsealing if task.done()]:
            unsealing.discard(done)

    unsealing: set[asyncio.Task[None]] = set()

    async def report_ready() -> None:
        while not server.started:
            await asyncio.sleep(0.02)
        if sys.platform != "win32":
            asyncio.get_running_loop().add_signal_handler(SEAL_SIGNAL, seal)
            asyncio.get_running_loop().add_signal_handler(UNSEAL_SIGNAL, on_unseal)
        frozen = freeze_startup_heap()
        os.write(ready_fd, _READY)
        os.close(ready_fd)
        log.info(
            "worker %d serving (%d objects held since its start kept out of garbage collection)",
            index,
            frozen,
        )

    async def serve() -> None:
        reporter = asyncio.create_task(report_ready())
        try:
            await server.serve(sockets=[sock])
        finally:
            reporter.cancel()

    serving = serve()
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serving)
    finally:
        serving.close()  # a no-op once run; else no "never awaited" warning on the log


def main(argv: list[str] | None = None) -> None:
    """``python -m tether.api.workers``: one worker, run by :func:`supervise` (not by hand)."""
    parser = argparse.ArgumentParser(prog="python -m tether.api.workers", description=main.__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the listening socket, inherited")
    parser.add_argument("--ready-fd", type=int, required=True, help="a pipe to say 'serving' on")
    parser.add_argument("--parent", type=int, required=True, help="the supervisor's pid")
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args(argv)
    _worker_main(args.fd, args.ready_fd, args.parent, args.index)


if __name__ == "__main__":
    main()
