"""``tether signals`` against a real server process: a stream to a loopback receiver, a verification
event pushed by the server's own background loop and verified with the JWKS the server publishes, the
delivery log, pause and removal; bad input is a one-line error."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from joserfc import jws
from joserfc.jwk import KeySet

from tests.integration.test_cli import SECRET_VALUES, Node, assert_error, operator, run, running_node
from tests.integration.test_signals import Receiver


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with running_node(tmp_path_factory.mktemp("cli-signals"), forbidden=SECRET_VALUES) as running:
        yield running


def test_a_stream_gets_a_verification_event_pushed_by_the_server(node: Node) -> None:
    receiver = Receiver()
    try:
        added = run(
            ["signals", "stream", "add", receiver.url, "--event", "session-revoked", "--json"], node.env()
        )
        assert added.returncode == 0, added.stderr
        stream = json.loads(added.stdout)["stream_id"]
        listed = run(["signals", "stream", "list"], node.env())
        assert stream in listed.stdout
        assert "session-revoked" in listed.stdout
        verify = run(["signals", "verify", stream, "--state", "hello"], node.env())
        assert verify.returncode == 0, verify.stderr
        deadline = time.monotonic() + 20
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.2)
        (token,) = receiver.tokens()
        keys = KeySet.import_key_set(httpx.get(f"{node.addr}/v1/auth/jwks").json())
        claims = json.loads(jws.deserialize_compact(token, keys, algorithms=["Ed25519"]).payload)
        assert claims["events"] == {
            "https://schemas.openid.net/secevent/ssf/event-type/verification": {"state": "hello"}
        }
        assert claims["aud"] == receiver.url.removesuffix("/caep")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            log = run(["signals", "deliveries", stream, "--json"], node.env())
            assert log.returncode == 0, log.stderr
            if json.loads(log.stdout)["items"][0]["status"] == "delivered":
                break
            time.sleep(0.2)
        assert json.loads(log.stdout)["items"][0]["status"] == "delivered"
        table = run(["signals", "deliveries", stream], node.env())
        assert "verification" in table.stdout
        assert "delivered" in table.stdout
        paused = run(["signals", "stream", "status", stream, "paused", "--reason", "maintenance"], node.env())
        assert paused.stdout.strip() == f"stream {stream} is paused"
        removed = run(["signals", "stream", "remove", stream], node.env())
        assert removed.returncode == 0, removed.stderr
        assert_error(run(["signals", "stream", "show", stream], node.env()), 1, "no stream")
    finally:
        receiver.close()


def test_bad_receivers_and_roles_are_one_line_errors(node: Node) -> None:
    assert_error(run(["signals", "stream", "add", "http://receiver.example/caep"], node.env()), 1, "https")
    assert_error(run(["signals", "stream", "add", "https://10.0.0.7/caep"], node.env()), 1, "private")
    assert_error(
        run(["signals", "stream", "add", "http://127.0.0.1:9/x", "--event", "nope"], node.env()),
        1,
        "unknown event",
    )
    auditor = operator(node, "ada-signals", "auditor")
    assert_error(
        run(["signals", "stream", "add", "http://127.0.0.1:9/x"], node.env(auditor)), 1, "signals.manage"
    )
    assert run(["signals", "stream", "list", "--json"], node.env(auditor)).returncode == 0
