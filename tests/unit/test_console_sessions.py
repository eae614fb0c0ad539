"""Console sessions (pure): the signed cookie, its timeouts and CSRF tokens; the tree layout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tether.console.sessions import (
    ConsoleSession,
    csrf_matches,
    csrf_token,
    decode_session,
    derive_session_key,
    encode_session,
    new_session,
)
from tether.console.tree import layout_tree
from tether.errors import AuthenticationError

KEY = derive_session_key(b"\x01" * 32)
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_a_session_round_trips_and_carries_no_token() -> None:
    session = new_session("op_123", NOW)
    cookie = encode_session(session, KEY)
    assert decode_session(cookie, KEY) == session
    assert "tok_" not in cookie


def test_the_key_is_derived_per_root_key_and_labelled() -> None:
    assert derive_session_key(b"\x02" * 32) != KEY
    assert KEY != b"\x01" * 32
    assert len(KEY) == 32


@pytest.mark.parametrize(
    "mangle",
    [
        lambda c: c[:-1] + ("A" if c[-1] != "A" else "B"),  # MAC changed
        lambda c: "f" + c[1:],  # body changed
        lambda c: c.replace(".", ""),
        lambda c: "",
        lambda c: c + "." + c,
        lambda c: "x" * 2000,
    ],
)
def test_a_tampered_cookie_is_refused(mangle: object) -> None:
    cookie = encode_session(new_session("op_123", NOW), KEY)
    with pytest.raises(AuthenticationError):
        decode_session(mangle(cookie), KEY)  # type: ignore[operator]


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def test_a_cookie_has_one_spelling() -> None:
    # The MAC's 32 bytes leave the two low bits of its last character unused: the characters that
    # differ only there decoded to the same MAC, so a changed cookie passed (a flaky test found it).
    for _ in range(20):  # a fresh session id each time, so a different last character
        cookie = encode_session(new_session("op_123", NOW), KEY)
        last = B64URL.index(cookie[-1])
        for other in range(last & ~3, (last & ~3) + 4):
            if other != last:
                with pytest.raises(AuthenticationError):
                    decode_session(cookie[:-1] + B64URL[other], KEY)
        with pytest.raises(AuthenticationError):  # a character outside the alphabet is not skipped
            decode_session(cookie[:5] + "!" + cookie[5:], KEY)
        assert decode_session(cookie, KEY).operator_id == "op_123"


def test_a_cookie_from_another_deployment_is_refused() -> None:
    cookie = encode_session(new_session("op_123", NOW), derive_session_key(b"\x02" * 32))
    with pytest.raises(AuthenticationError):
        decode_session(cookie, KEY)


def _check(session: ConsoleSession, now: datetime) -> None:
    session.check(now, idle_seconds=900, max_seconds=28_800)


def test_idle_and_absolute_timeouts() -> None:
    session = new_session("op_123", NOW)
    _check(session, NOW + timedelta(seconds=899))
    with pytest.raises(AuthenticationError, match="idle"):
        _check(session, NOW + timedelta(seconds=900))
    # Kept busy, the session still ends at the absolute limit.
    busy = session.touched(NOW + timedelta(seconds=28_799))
    _check(busy, NOW + timedelta(seconds=28_799))
    with pytest.raises(AuthenticationError, match="expired"):
        _check(busy.touched(NOW + timedelta(seconds=28_800)), NOW + timedelta(seconds=28_800))


def test_a_session_seen_in_the_future_or_before_it_opened_is_refused() -> None:
    t = int(NOW.timestamp())
    with pytest.raises(AuthenticationError):
        _check(ConsoleSession("s", "op", t, t + 3600), NOW)
    with pytest.raises(AuthenticationError):
        _check(ConsoleSession("s", "op", t, t - 10), NOW)


def test_csrf_tokens_are_per_session_and_compared_exactly() -> None:
    one, two = new_session("op", NOW), new_session("op", NOW)
    assert csrf_token(one.id, KEY) != csrf_token(two.id, KEY)
    assert csrf_matches(one.id, KEY, csrf_token(one.id, KEY))
    assert not csrf_matches(one.id, KEY, csrf_token(two.id, KEY))
    assert not csrf_matches(one.id, KEY, "")
    assert not csrf_matches(one.id, KEY, "é" * 43)


def test_the_tree_places_children_under_their_parent() -> None:
    layout = layout_tree(
        [
            ("root", None, "root · active", "active"),
            ("b", "root", "b · revoked", "revoked"),
            ("c", "b", "c · revoked", "revoked"),
            ("orphan", "gone", "orphan", "active"),
        ],
        current="b",
    )
    by_id = {node.id: node for node in layout.nodes}
    assert [node.id for node in layout.nodes] == ["root", "b", "c", "orphan"]
    assert by_id["b"].x > by_id["root"].x
    assert by_id["c"].x > by_id["b"].x
    assert by_id["c"].parent_y == by_id["b"].y + layout.box_height
    assert by_id["orphan"].parent_x is None  # its parent is not in the tree: drawn as a root
    assert by_id["b"].current
    assert not by_id["root"].current
    assert layout.width >= by_id["c"].x + layout.box_width


def test_boxes_are_wide_enough_for_their_labels() -> None:
    label = "tsk_" + "x" * 60 + " · deploy · revoked"
    layout = layout_tree([("a", None, label, "revoked")], current="a")
    assert layout.box_width >= len(label) * 8
