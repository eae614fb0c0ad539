"""The HTTP stack around the broker: dependencies without a threadpool hop, the node locks that
keep background loops to one process, worker settings, and the factory's refusals."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tether.api import routes_auth, routes_egress, routes_sys, routes_tasks
from tether.api.app import create_app_from_env, create_node_app
from tether.api.lifespan import BACKGROUND_LOCK_FILE, NodeLock, background_loops
from tether.api.server import HTTP_OPTIONS
from tether.config import Settings
from tether.errors import ConfigError


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


_ROUTERS = (
    routes_auth.router,
    routes_egress.router,
    routes_sys.router,
    routes_tasks.router,
)


def _sync_dependencies(path: str, method: str) -> set[str]:
    for route in (r for router in _ROUTERS for r in router.routes):
        if isinstance(route, APIRoute) and route.path == path and method in route.methods:
            return {
                getattr(call, "__name__", repr(call))
                for call in _calls(route.dependant)
                if call is not None and not inspect.iscoroutinefunction(call)
            }
    raise AssertionError(f"no route {method} {path}")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/auth/token"),
        ("GET", "/v1/auth/whoami"),
        ("POST", "/v1/tasks"),
        ("POST", "/v1/tasks/{task_id}/grants"),
        ("POST", "/v1/grants/{grant_id}/activate"),
        ("GET", "/v1/sys/health"),
    ],
)
def test_hot_routes_have_no_sync_dependency(method: str, path: str) -> None:
    # FastAPI runs a plain ``def`` dependency in its threadpool: a thread hand-off per request.
    assert _sync_dependencies(path, method) == set()


def test_egress_has_no_sync_dependency() -> None:
    assert _sync_dependencies("/v1/egress/{destination}/{path:path}", "POST") == set()


def test_every_server_uses_httptools_and_no_server_header() -> None:
    # Tether's protocol is uvicorn's httptools one, writing each answer's head with its body.
    http = HTTP_OPTIONS["http"]
    assert isinstance(http, type)
    assert issubclass(http, HttpToolsProtocol)
    assert HTTP_OPTIONS["server_header"] is False


def test_node_lock_is_exclusive_between_holders_and_freed_on_release(tmp_path: Path) -> None:
    first, second = NodeLock(tmp_path / "x.lock"), NodeLock(tmp_path / "x.lock")
    assert first.try_acquire()
    assert not second.try_acquire()  # flock: per open file, so two holders in one process conflict too
    first.release()
    assert second.try_acquire()
    second.release()


def test_node_lock_in_a_missing_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data dir must be writable"):
        NodeLock(tmp_path / "absent" / "x.lock").try_acquire()


@dataclass
class _Loops:
    """Stands in for the broker's loops; records which ones ran."""

    ran: list[str] = field(default_factory=list)

    async def checkpoint_loop(self, *, every_events: int, interval_seconds: float) -> None:
        self.ran.append("checkpoints")
        await asyncio.Event().wait()

    async def sweep_loop(self, interval_seconds: float) -> None:
        self.ran.append("sweeper")
        await asyncio.Event().wait()

    async def loop(self) -> None:  # the Shared Signals transmitter's
        self.ran.append("signals")
        await asyncio.Event().wait()


@dataclass
class _FakeBroker:
    settings: Settings
    audit: _Loops = field(default_factory=_Loops)
    tasks: _Loops = field(default_factory=_Loops)
    signals: _Loops = field(default_factory=_Loops)

    @property
    def ran(self) -> list[str]:
        return sorted(self.audit.ran + self.tasks.ran + self.signals.ran)


async def test_background_loops_run_once_per_data_dir_and_move_when_the_holder_stops(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first, second = _FakeBroker(settings), _FakeBroker(settings)
    async with background_loops(first, retry_seconds=0.02):  # type: ignore[arg-type]
        async with background_loops(second, retry_seconds=0.02):  # type: ignore[arg-type]
            await asyncio.sleep(0.2)
            assert first.ran == ["checkpoints", "signals", "sweeper"]
            assert second.ran == []
        second_ran_while_first_held = second.ran
    assert second_ran_while_first_held == []

    third = _FakeBroker(settings)
    async with (
        background_loops(first, retry_seconds=0.02),  # type: ignore[arg-type]
        background_loops(third, retry_seconds=0.02),  # type: ignore[arg-type]
    ):
        await asyncio.sleep(0.1)
        assert third.ran == []
        assert not NodeLock(tmp_path / BACKGROUND_LOCK_FILE).try_acquire()
    # Both released: the next process takes the loops at once.
    assert NodeLock(tmp_path / BACKGROUND_LOCK_FILE).try_acquire()


async def test_background_loops_are_taken_over_when_the_holder_leaves(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    holder, waiter = _FakeBroker(settings), _FakeBroker(settings)
    holding = background_loops(holder, retry_seconds=0.02)  # type: ignore[arg-type]
    await holding.__aenter__()
    async with background_loops(waiter, retry_seconds=0.02):  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        assert waiter.ran == []
        await holding.__aexit__(None, None, None)
        for _ in range(100):
            if waiter.ran:
                break
            await asyncio.sleep(0.02)
        assert waiter.ran == ["checkpoints", "signals", "sweeper"]


def test_workers_setting_is_bounded_and_defaults_to_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tether.config.available_cpus", lambda: 6)
    assert Settings(data_dir=tmp_path).worker_count == 6
    monkeypatch.setattr("tether.config.available_cpus", lambda: 512)
    assert Settings(data_dir=tmp_path).worker_count == 64
    assert Settings.load(tmp_path, {"TETHER_WORKERS": "3"}).worker_count == 3
    for bad in ("0", "65"):
        with pytest.raises(ConfigError, match="workers must be between 1 and 64"):
            Settings.load(tmp_path, {"TETHER_WORKERS": bad})
    with pytest.raises(ConfigError, match="workers must be an integer"):
        Settings.load(tmp_path, {"TETHER_WORKERS": "two"})


def test_workers_round_trip_through_toml_only_when_set(tmp_path: Path) -> None:
    assert "workers" not in Settings(data_dir=tmp_path).to_toml()
    (tmp_path / "tether.toml").write_text(Settings(data_dir=tmp_path, workers=4).to_toml())
    assert Settings.load(tmp_path, {}).workers == 4


def test_factory_needs_a_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TETHER_DATA_DIR"):
        create_app_from_env({})


def test_factory_refuses_an_uninitialised_data_dir(tmp_path: Path) -> None:
    env = {"TETHER_DATA_DIR": str(tmp_path), "TETHER_PUBLIC_URL": "http://127.0.0.1:8420"}
    with pytest.raises(ConfigError, match="not initialised"):
        create_app_from_env(env)
    assert not (tmp_path / "tether.db").exists()  # refused without creating a database


def test_node_app_needs_a_public_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TETHER_PUBLIC_URL"):
        create_node_app(Settings(data_dir=tmp_path))


async def test_a_node_apps_thread_is_known_to_run_asyncio_only_while_it_serves(tmp_path: Path) -> None:
    """anyio asks sniffio which loop runs on every primitive it builds (the MCP SDK builds many per
    call); the node's lifespan answers it once for its thread, and takes the answer back at the end."""
    import sniffio

    from tether.broker import Broker

    settings = Settings(data_dir=tmp_path, public_url="http://127.0.0.1:1")
    broker = Broker.from_settings(settings)
    await broker.init()
    await broker.close()
    app = create_node_app(settings)
    before = sniffio.thread_local.name
    async with app.router.lifespan_context(app):
        assert sniffio.thread_local.name == "asyncio"
    assert sniffio.thread_local.name == before


async def test_a_node_that_gateways_mcp_loads_the_sdk_before_it_serves(tmp_path: Path) -> None:
    """With an MCP upstream registered, the node's lifespan builds the MCP front at startup, so no
    agent's first /mcp request waits for the SDK's imports; a node without one never builds it."""
    from datetime import UTC, datetime

    from tether.broker import Broker
    from tether.mcp.servers import McpServer, UpstreamKind

    settings = Settings(data_dir=tmp_path, public_url="http://127.0.0.1:1")
    broker = Broker.from_settings(settings)
    await broker.init()
    await broker.close()
    app = create_node_app(settings)
    async with app.router.lifespan_context(app):
        assert getattr(app.state, "mcp", None) is None  # nothing registered: nothing loaded
        await app.state.broker.storage.put_mcp_server(
            McpServer(
                name="gh",
                kind=UpstreamKind.STDIO,
                created_at=datetime.now(UTC),
                created_by="test",
                command="/bin/true",
            )
        )
    app = create_node_app(settings)
    async with app.router.lifespan_context(app):
        front = app.state.mcp
        assert front is not None
        assert front.broker is app.state.broker
    assert app.state.mcp is None  # closed with the node
