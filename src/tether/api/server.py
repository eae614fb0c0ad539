"""Run a node: start the broker, then serve HTTP until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

from tether.api.app import create_app
from tether.api.routes_egress import close_egress
from tether.broker import Broker
from tether.config import Settings
from tether.errors import ConfigError

__all__ = ["serve", "serve_broker"]

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _is_loopback(host: str) -> bool:
    return host in {"127.0.0.1", "::1", "localhost"} or host.startswith("127.")


async def serve_broker(
    broker: Broker, host: str, port: int, *, started: asyncio.Event | None = None, access_log: bool = True
) -> None:
    """Serve an already started ``broker`` until the server is told to stop."""
    if not _is_loopback(host):
        log.warning("listening on %s: Tether serves plain HTTP; put TLS in front of it", host)
    app = create_app(broker)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=access_log,
        server_header=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    checkpoints = asyncio.create_task(
        broker.audit.checkpoint_loop(
            every_events=broker.settings.audit_checkpoint_every_events,
            interval_seconds=broker.settings.audit_checkpoint_interval_seconds,
        ),
        name="tether-audit-checkpoints",
    )
    # Expiry is enforced on every read; the sweeper makes it visible in the store and revokes
    # engine leases of ended tasks.
    sweeper = asyncio.create_task(
        broker.tasks.sweep_loop(broker.settings.sweep_interval_seconds), name="tether-task-sweeper"
    )
    try:
        await _serve(server, started)
    finally:
        await close_egress(app)  # lifespan is off: release the upstream connections here
        for background in (checkpoints, sweeper):
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background


async def _serve(server: uvicorn.Server, started: asyncio.Event | None) -> None:
    if started is not None:

        async def _notify() -> None:
            while not server.started:
                await asyncio.sleep(0.02)
            started.set()

        notifier = asyncio.create_task(_notify())
        try:
            await server.serve()
        finally:
            notifier.cancel()
    else:
        await server.serve()


def with_public_url(settings: Settings, host: str, port: int) -> Settings:
    """Agents sign the server's URL into assertions (aud) and proofs (htu). It must come from
    configuration, never from a request's Host header: on loopback it is the listen address;
    anywhere else ``public_url`` must be set."""
    if settings.public_url is not None:
        return settings
    if not _is_loopback(host):
        raise ConfigError(
            f"listening on {host}: set public_url (TETHER_PUBLIC_URL), the URL agents use to reach Tether"
        )
    shown = f"[{host}]" if ":" in host else host
    return settings.with_overrides(public_url=f"http://{shown}:{port}")


async def serve(settings: Settings, host: str, port: int) -> None:
    """Start a broker from ``settings`` (migrate, unseal) and serve it. Storage errors propagate."""
    broker = Broker.from_settings(with_public_url(settings, host, port))
    try:
        await broker.start()
        log.info("Tether %s on http://%s:%d (storage: %s)", settings.node_id, host, port, settings.backend)
        await serve_broker(broker, host, port)
    finally:
        await broker.close()
