"""The listening sockets of ``tether server --workers N`` (:func:`tether.api.workers.listen`)."""

from __future__ import annotations

import errno
import os
import socket
import sys
import time

import pytest

from tether.api import workers
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


def _stranger(port: int) -> socket.socket:
    """Another process's socket joining the group (same user, ``SO_REUSEPORT``)."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


def _accepted(sock: socket.socket) -> int:
    sock.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@linux_only
def test_a_process_that_joins_the_group_later_gets_no_connection() -> None:
    socks = listen("127.0.0.1", 0, 2)
    port = socks[0].getsockname()[1]
    stranger = _stranger(port)  # the kernel lets it join: the pinned group never picks it
    try:
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        time.sleep(0.2)
        ours = [_accepted(sock) for sock in socks]
        assert _accepted(stranger) == 0
        assert sum(ours) == 40
        assert min(ours) > 0  # and both of the node's sockets get some
        for conn in conns:
            conn.close()
    finally:
        stranger.close()
        _close(socks)


@linux_only
def test_a_node_that_does_not_hold_every_listener_of_its_address_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two nodes starting at the same moment: the other one joins between the probe and the check.
    strangers: list[socket.socket] = []
    pin = workers._pin_group

    def pin_then_joined(sock: socket.socket, count: int) -> None:
        pin(sock, count)
        strangers.append(_stranger(sock.getsockname()[1]))

    monkeypatch.setattr(workers, "_pin_group", pin_then_joined)
    try:
        with pytest.raises(OSError, match="in use") as raised:
            _close(listen("127.0.0.1", 0, 2))
        assert raised.value.errno == errno.EADDRINUSE
        # The node's own sockets were closed: the stranger is the address's only listener.
        port = strangers[0].getsockname()[1]
        assert workers._listeners(("127.0.0.1", port), socket.AF_INET) == {
            os.fstat(strangers[0].fileno()).st_ino
        }
    finally:
        _close(strangers)


@linux_only
def test_a_kernel_that_refuses_to_pin_the_group_gets_one_plain_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(sock: socket.socket, count: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(workers, "_pin_group", refused)
    socks = listen("127.0.0.1", 0, 2)
    try:
        assert len(socks) == 1
        assert not socks[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        with pytest.raises(OSError, match="in use"):  # so nobody can join it
            _stranger(socks[0].getsockname()[1])
    finally:
        _close(socks)
