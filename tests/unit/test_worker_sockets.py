"""The listening sockets of ``tether server --workers N`` (:func:`tether.api.workers.listen`)."""

from __future__ import annotations

import errno
import socket
import sys

import pytest

from tether.api.workers import listen

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balances on Linux")


def _close(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


@linux_only
def test_each_worker_gets_its_own_socket_on_the_one_address() -> None:
    socks = listen("127.0.0.1", 0, 3)
    try:
        assert len(socks) == 3
        assert len({sock.getsockname() for sock in socks}) == 1
        assert len({sock.fileno() for sock in socks}) == 3
        assert all(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for sock in socks)
    finally:
        _close(socks)


def test_one_worker_listens_on_one_plain_socket() -> None:
    socks = listen("127.0.0.1", 0, 1)
    try:
        assert len(socks) == 1
        if hasattr(socket, "SO_REUSEPORT"):
            assert not socks[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    finally:
        _close(socks)


@pytest.mark.parametrize("count", [1, 2])
def test_an_address_taken_by_another_node_is_refused_not_shared(count: int) -> None:
    # Another node's workers listen with SO_REUSEPORT: joining their group would split
    # connections with a stranger, so the address counts as taken.
    first = listen("127.0.0.1", 0, 2)
    try:
        port = first[0].getsockname()[1]
        with pytest.raises(OSError, match="in use") as raised:
            _close(listen("127.0.0.1", port, count))
        assert raised.value.errno == errno.EADDRINUSE
    finally:
        _close(first)


def test_an_address_taken_by_a_plain_listener_is_refused() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(OSError, match="in use") as raised:
            _close(listen("127.0.0.1", taken.getsockname()[1], 2))
        assert raised.value.errno == errno.EADDRINUSE
