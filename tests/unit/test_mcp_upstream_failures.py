"""Which JSON-RPC errors answering an upstream call mean that the exchange failed (answered -32002
with Tether's own words, and a dead session retired) rather than that the upstream answered with
an error of its own: only what Tether's transport made up (its per-process mark, which an upstream
cannot guess, in any encoding) and the SDK's own timeout and closed-connection errors."""

from __future__ import annotations

from typing import Any

import pytest
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT, ErrorData

from tether.mcp.streamable import SESSION_ENDED, _failure, is_transport_failure
from tether.mcp.upstreams import _failure_of


def made_up(why: str) -> ErrorData:
    return _failure(why).error


def test_the_transports_own_failures_are_failures_and_a_session_end_retires_the_session() -> None:
    reached = made_up("the upstream could not be reached (ConnectError)")
    assert is_transport_failure(reached)
    assert _failure_of(reached) == ("failed: the upstream could not be reached (ConnectError)", False)
    assert _failure_of(made_up(SESSION_ENDED)) == (f"failed: {SESSION_ENDED}", True)


def test_the_sdks_own_timeout_and_closed_connection_are_failures() -> None:
    timeout = ErrorData(code=REQUEST_TIMEOUT, message="Request 'tools/call' timed out")
    assert _failure_of(timeout) == ("did not answer in time", False)
    closed = ErrorData(code=CONNECTION_CLOSED, message="Connection closed")
    assert _failure_of(closed) == ("closed the connection during the call", True)


@pytest.mark.parametrize(
    "data",
    [
        {"tether.transport": "0" * 32},  # a guess
        {"tether.transport": "\u00e9" * 32},  # not ASCII: compare_digest would raise on str
        {"tether.transport": "\ud800" * 32},  # a lone surrogate
        {"tether.transport": 12345},
        {"tether.transport": None},
        {"other": "x"},
        ["tether.transport"],
        "tether.transport",
    ],
)
def test_a_guessed_mark_is_the_upstreams_own_error(data: Any) -> None:
    for code, message in ((CONNECTION_CLOSED, "Connection closed"), (-32050, "anything")):
        error = ErrorData(code=code, message=message, data=data)
        assert not is_transport_failure(error)
        assert _failure_of(error) is None


def test_the_mark_with_anything_beside_it_is_the_upstreams_own_error() -> None:
    real = made_up("the upstream answered HTTP 500")
    assert isinstance(real.data, dict)
    padded = ErrorData(code=real.code, message=real.message, data={**real.data, "more": 1})
    assert not is_transport_failure(padded)
    assert _failure_of(padded) is None


@pytest.mark.parametrize(
    ("code", "message"),
    [(-32602, "no such argument"), (-32050, "broke"), (REQUEST_TIMEOUT, "denied"), (-32603, "oops")],
)
def test_an_upstreams_own_errors_are_not_failures(code: int, message: str) -> None:
    assert _failure_of(ErrorData(code=code, message=message)) is None
