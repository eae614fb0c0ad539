"""Commands that act on a data directory directly, without a server: init, server, migrate."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import signal
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tether.cli.output import EXIT_USAGE, CommandError, WarningHandler
from tether.config import CONFIG_FILE, ENV_VARS, Settings, parse_listen
from tether.errors import ConfigError, DecryptionError

__all__ = [
    "InitOutcome",
    "configure_cli_logging",
    "ensure_port_free",
    "initialise",
    "listen_address",
    "migrate",
    "run_until_stopped",
    "serve",
]


@dataclass(frozen=True, slots=True)
class InitOutcome:
    root_token: str
    data_dir: Path
    key_provider: str
    storage: str


def configure_cli_logging() -> None:
    """Warnings from the library (e.g. the unsafe dev key provider) as ``warning:`` lines."""
    root = logging.getLogger()
    if not any(isinstance(h, WarningHandler) for h in root.handlers):
        root.addHandler(WarningHandler(logging.WARNING))
    root.setLevel(logging.WARNING)


def listen_address(listen: str) -> tuple[str, int]:
    try:
        return parse_listen(listen)
    except ConfigError as exc:
        raise CommandError(f"--listen: {exc}", EXIT_USAGE) from None


def ensure_port_free(host: str, port: int) -> None:
    """Fail with one clear line before anything starts if ``host:port`` cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise CommandError(f"--listen: cannot resolve host {host!r}", EXIT_USAGE) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(
                    f"cannot listen on {host}:{port}: the port is already in use "
                    "(another Tether? choose another with --listen)"
                ) from None
            raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _write_new_file(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600; refuse to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def initialise(data_dir: Path, **overrides: Any) -> InitOutcome:
    """``tether init``: write the settings, create schema, keyring and first admin.

    On any failure the files this call created are removed again, so a refused or failed
    init leaves the directory as it found it.
    """
    from tether.broker import Broker

    data_dir = data_dir.expanduser().resolve()
    config_path = data_dir / CONFIG_FILE
    if config_path.exists():
        raise CommandError(f"{data_dir} is already initialised ({config_path} exists); nothing was changed")
    if data_dir.exists() and not data_dir.is_dir():
        raise CommandError(f"{data_dir} exists and is not a directory")
    settings = Settings.load(data_dir, **overrides)

    created_dir = not data_dir.exists()
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create {data_dir}: {exc.strerror or exc}") from None
    before = set(data_dir.iterdir())
    try:
        _write_new_file(config_path, settings.to_toml())

        async def run() -> str:
            broker = Broker.from_settings(settings)
            try:
                result = await broker.init()
            finally:
                await broker.close()
            return result.root_token

        try:
            token = asyncio.run(run())
        except DecryptionError:
            raise CommandError(
                "the store already has a keyring that this root key cannot open: "
                "it is initialised already (or the root key is wrong); nothing was changed"
            ) from None
    except BaseException:
        for path in set(data_dir.iterdir()) - before:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if created_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    return InitOutcome(
        root_token=token, data_dir=data_dir, key_provider=settings.key_provider, storage=settings.backend
    )


def load_initialised(data_dir: Path) -> Settings:
    """Settings of an existing data dir; refuses a missing dir or an absent SQLite database
    (rather than creating an empty one as a side effect)."""
    data_dir = data_dir.expanduser().resolve()
    if not data_dir.is_dir():
        raise CommandError(
            f"data dir {data_dir} does not exist; run `tether init --data-dir {data_dir}` first"
        )
    settings = Settings.load(data_dir)
    if settings.backend == "sqlite":
        database = Path(settings.database_url.removeprefix("sqlite:///"))
        if not database.exists():
            raise CommandError(
                f"{data_dir} is not initialised (no database at {database}); "
                f"run `tether init --data-dir {data_dir}` first"
            )
    return settings


def serve(data_dir: Path, listen: str, workers: int | None = None, log_format: str | None = None) -> None:
    """``tether server``: start the node and serve HTTP until Ctrl-C or SIGTERM, in this process
    (one worker) or with ``workers`` worker processes on one socket (default: the ``workers``
    setting, else one per core it may use); logs as ``log_format`` (default: the ``log_format`` setting)."""
    from tether.api import server
    from tether.logs import configure_logging

    host, port = listen_address(listen)
    settings = load_initialised(data_dir)
    for flag, name, value in (("--workers", "workers", workers), ("--log-format", "log_format", log_format)):
        if value is not None:
            try:
                settings = settings.with_overrides(**{name: value})
            except ConfigError as exc:
                raise CommandError(f"{flag}: {exc}", EXIT_USAGE) from None
    ensure_port_free(host, port)
    configure_logging(settings.log_format)
    os.environ[ENV_VARS["log_format"]] = settings.log_format  # worker processes log the same way
    count = settings.worker_count
    if count == 1:
        run_until_stopped(server.serve(settings, host, port), f"{host}:{port}")
        return
    from tether.api.workers import WorkerStartupError, supervise

    try:
        supervise(server.with_public_url(settings, host, port), host, port, count)
    except WorkerStartupError as exc:
        raise CommandError(f"{exc}; the node was stopped (the worker's log says why)") from None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_until_stopped(main: Coroutine[Any, Any, None], listen: str) -> None:
    """Run a serving coroutine; Ctrl-C or SIGTERM stops it quietly (exit 0).

    uvicorn shuts down gracefully on a signal, then raises the signal again. With asyncio's
    own SIGINT handler that second signal would cancel the task while the broker is closing
    its store; a plain raising handler lets the close finish first.
    """
    from tether.api.server import loop_factory

    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:  # uvloop
            runner.run(main)
    except KeyboardInterrupt:
        return
    except SystemExit as exc:  # uvicorn exits on a startup failure after logging why
        if exc.code not in (0, None):
            raise CommandError(f"the HTTP server could not start on {listen}") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def migrate(data_dir: Path) -> tuple[str, str]:
    """``tether migrate``: bring the schema to the newest revision; returns (revision, backend)."""
    from tether.store import open_storage
    from tether.store.migrations import head_revision

    data_dir = data_dir.expanduser().resolve()
    if not data_dir.is_dir():
        raise CommandError(f"data dir {data_dir} does not exist")
    settings = Settings.load(data_dir)
    storage = open_storage(
        settings.database_url, pg_schema=settings.pg_schema, sqlite_synchronous=settings.sqlite_synchronous
    )

    async def run() -> None:
        try:
            await storage.migrate()
        finally:
            await storage.close()

    asyncio.run(run())
    return head_revision(), settings.backend
