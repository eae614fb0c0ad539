"""A served process keeps its long-lived objects out of full garbage collections
(:func:`tether.api.server.freeze_startup_heap`); the MCP front, created on first use, follows.

The served processes themselves are checked in ``test_server_workers.py`` (their log says how many
objects they kept out); here, the front's first creation in one process.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from tether.api import routes_mcp
from tether.api.app import create_app
from tether.api.routes_mcp import close_mcp, mcp_front
from tether.broker import Broker


@pytest.fixture
def unfrozen_after() -> Iterator[None]:
    """Whatever a test froze goes back to the collector: the test process must not keep it."""
    assert gc.get_freeze_count() == 0, "another test left objects frozen"
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("broker", ["sqlite"], indirect=True)
async def test_a_process_that_froze_its_start_freezes_the_mcp_front_once(
    broker: Broker, unfrozen_after: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes_mcp, "_sdk_frozen", threading.Event())  # as in a new process
    app = create_app(broker)
    gc.freeze()  # as a served process does once it serves
    before = gc.get_freeze_count()
    front = mcp_front(app)
    try:
        assert mcp_front(app) is front
        after = gc.get_freeze_count()
        assert after > before  # the front, its gateway and what they hold are out of reach now
        assert gc.is_tracked(front)
        assert not any(front is obj for obj in gc.get_objects())  # only the collected generations
    finally:
        await close_mcp(app)
    # Created again (the gateway closed and reopened): not frozen again, or every front closed
    # since would be kept for good.
    again = mcp_front(app)
    try:
        assert any(again is obj for obj in gc.get_objects())
        assert gc.get_freeze_count() <= after
    finally:
        await close_mcp(app)


@pytest.mark.parametrize("broker", ["sqlite"], indirect=True)
async def test_a_process_that_did_not_freeze_does_not_start_to(broker: Broker, unfrozen_after: None) -> None:
    app = create_app(broker)
    try:
        mcp_front(app)
        assert gc.get_freeze_count() == 0  # tests and embedders keep Python's collector as it is
    finally:
        await close_mcp(app)
