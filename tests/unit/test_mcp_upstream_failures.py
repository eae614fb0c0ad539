"""Which JSON-RPC errors answering an upstream call mean that the exchange failed (answered -32002
with Tether's own words, and a dead session retired) rather than that the upstream answered with
an error of its own: only what Tether's HTTP dispatcher made up (its per-process mark, which an
upstream cannot guess, in any encoding), and on a stdio upstream the SDK's own timeout and
closed-connection errors (an HTTP upstream that spells those is not taken at its word)."""

from __future__ import annotations

from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT, ErrorData

from tether.mcp.streamable import CLOSED, SESSION_ENDED, TIMED_OUT, is_transport_failure, transport_failure
from tether.mcp.upstreams import _failure_of, _why


def made_up(why: str) -> ErrorData:
    return transport_failure(why).error


def test_the_transports_own_failures_are_failures_and_a_session_end_retires_the_session() -> None:
    reached = made_up("the upstream could not be reached (ConnectError)")
    assert is_transport_failure(reached)
    for stdio in (True, False):
        assert _failure_of(reached, stdio=stdio) == (
            "failed: the upstream could not be reached (ConnectError)",
            False,
        )
        assert _failure_of(made_up(SESSION_ENDED), stdio=stdio) == (f"failed: {SESSION_ENDED}", True)
        assert _failure_of(made_up(TIMED_OUT), stdio=stdio) == ("did not answer in time", False)
        assert _failure_of(made_up(CLOSED), stdio=stdio) == ("closed the connection during the call", True)


def test_the_sdks_own_timeout_and_closed_connection_are_failures_of_a_stdio_upstream_only() -> None:
    timeout = ErrorData(code=REQUEST_TIMEOUT, message="Request 'tools/call' timed out")
    assert _failure_of(timeout, stdio=True) == ("did not answer in time", False)
    closed = ErrorData(code=CONNECTION_CLOSED, message="Connection closed")
    assert _failure_of(closed, stdio=True) == ("closed the connection during the call", True)
    # Over HTTP these come only from the upstream (Tether's dispatcher marks its own): its error,
    # forwarded redacted, and no retirement of the session it could churn with them.
    assert _failure_of(timeout, stdio=False) is None
    assert _failure_of(closed, stdio=False) is None


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
        assert _failure_of(error, stdio=False) is None


def test_the_mark_with_anything_beside_it_is_the_upstreams_own_error() -> None:
    real = made_up("the upstream answered HTTP 500")
    assert isinstance(real.data, dict)
    padded = ErrorData(code=real.code, message=real.message, data={**real.data, "more": 1})
    assert not is_transport_failure(padded)
    assert _failure_of(padded, stdio=True) is None


@pytest.mark.parametrize(
    ("code", "message"),
    [(-32602, "no such argument"), (-32050, "broke"), (REQUEST_TIMEOUT, "denied"), (-32603, "oops")],
)
def test_an_upstreams_own_errors_are_not_failures(code: int, message: str) -> None:
    for stdio in (True, False):
        assert _failure_of(ErrorData(code=code, message=message), stdio=stdio) is None


def test_why_an_upstream_failed_unwraps_the_sdks_task_group_and_never_quotes_the_upstream() -> None:
    refused = transport_failure("the upstream answered HTTP 401")
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [refused])])
    assert _why(nested, stdio=False) == "the upstream answered HTTP 401"
    assert _why(ExceptionGroup("g", [transport_failure(TIMED_OUT)]), stdio=False) == "did not answer in time"
    assert _why(ExceptionGroup("g", [transport_failure(CLOSED)]), stdio=False) == "closed the connection"
    sdk_closed = MCPError(CONNECTION_CLOSED, "Connection closed")
    assert _why(ExceptionGroup("g", [sdk_closed]), stdio=True) == "closed the connection"
    # The upstream's own error answering the handshake: its code, never its text (it can hold
    # the secret the upstream was given).
    own = MCPError(-32099, "no: Bearer s3cr3t")
    assert _why(ExceptionGroup("g", [own]), stdio=False) == "it answered with JSON-RPC error -32099"
    assert "s3cr3t" not in _why(own, stdio=True)
    # Anything else: the type of what failed, not of the group around it.
    assert _why(ExceptionGroup("g", [OSError("s3cr3t")]), stdio=True) == "OSError"
    assert _why(ValueError("s3cr3t"), stdio=True) == "ValueError"
