"""Run a node: start the broker, then serve HTTP until stopped."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Callable
from typing import Any

import uvicorn

from tether.api.app import create_app, with_request_context
from tether.api.lifespan import background_loops, start_broker
from tether.api.protocol import HeadWithBodyProtocol
from tether.api.routes_egress import close_egress
from tether.broker import Broker
from tether.config import Settings
from tether.errors import ConfigError

__all__ = ["HTTP_OPTIONS", "freeze_startup_heap", "loop_factory", "serve", "serve_broker", "with_public_url"]

log = logging.getLogger(__name__)

#: How every Tether process serves HTTP: httptools instead of h11 (issue 13 measured ~0.6 ms of
#: CPU per request in h11 and the asyncio loop together), each answer's head and body in one write
#: (:mod:`tether.api.protocol`), no ``Server`` header, our logging
#: (:func:`tether.logs.configure_logging`: text or JSON, a request id on every line).
HTTP_OPTIONS: dict[str, Any] = {"http": HeadWithBodyProtocol, "log_config": None, "server_header": False}


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop (a hard dependency wherever it exists: not on Windows)."""
    if sys.platform == "win32":
        return None
    import uvloop

    return uvloop.new_event_loop


def freeze_startup_heap() -> int:
    """Keep what the process holds once it serves (modules, the app, the broker and their caches:
    165,000-220,000 objects) out of the cyclic garbage collector's reach; how many were kept.

    CPython's full collection walks every tracked object, and it runs whenever enough objects have
    outlived two younger collections, which every request's objects in flight do: under load that
    was a pause of 100-150 ms, every few seconds, in each worker, for whichever requests were in
    flight (measured in issue 15's MCP benchmark). Frozen objects are not walked, so a full
    collection walks only what was made since. What is frozen is never collected: called after a
    collection, when serving starts (and once more when a request first imports the MCP SDK, see
    :func:`tether.api.routes_mcp.mcp_front`), it keeps only what the process holds for its life.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _is_loopback(host: str) -> bool:
    return host in {"127.0.0.1", "::1", "localhost"} or host.startswith("127.")


async def serve_broker(
    broker: Broker, host: str, port: int, *, started: asyncio.Event | None = None, access_log: bool = True
) -> None:
    """Serve an already started ``broker`` until the server is told to stop."""
    if not _is_loopback(host):
        log.warning("listening on %s: Tether serves plain HTTP; put TLS in front of it", host)
    app = with_request_context(create_app(broker))
    config = uvicorn.Config(app, host=host, port=port, access_log=access_log, lifespan="off", **HTTP_OPTIONS)
    server = uvicorn.Server(config)
    try:
        async with background_loops(broker):
            await _serve(server, started)
    finally:
        await close_egress(app)  # lifespan is off: release the upstream connections here


async def _serve(server: uvicorn.Server, started: asyncio.Event | None) -> None:
    notifier: asyncio.Task[None] | None = None
    if started is not None:

        async def _notify() -> None:
            while not server.started:
                await asyncio.sleep(0.02)
            started.set()

        notifier = asyncio.create_task(_notify())
    try:
        await server.serve()
    except KeyboardInterrupt:
        # uvicorn stops gracefully on Ctrl-C / SIGTERM, then raises the signal again for whoever
        # embeds it. Here that is the end of serving, not an error: return, so the caller closes
        # the broker (and its store) normally instead of being interrupted half-way through.
        if not server.should_exit:
            raise
    finally:
        if notifier is not None:
            notifier.cancel()


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
        await start_broker(broker)
        log.info("Tether %s on http://%s:%d (storage: %s)", settings.node_id, host, port, settings.backend)
        if settings.console == "on":
            log.info("web console on %s/ui (sign in with an operator token)", broker.settings.public_url)
        started = asyncio.Event()
        freezing = asyncio.create_task(_freeze_once_serving(started))
        try:
            await serve_broker(broker, host, port, started=started)
        finally:
            freezing.cancel()
    finally:
        await broker.close()


async def _freeze_once_serving(started: asyncio.Event) -> None:
    await started.wait()
    log.info("serving; %d objects held since the start kept out of garbage collection", freeze_startup_heap())
