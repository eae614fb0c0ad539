"""IndexedHeaders answers every read exactly as Starlette's Headers does, whatever the header list."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from tether.api.headers import SCOPE_KEY, HotRequest, IndexedHeaders

# Names as ASGI has servers hand them (lowercase bytes), values of any byte (read as latin-1). Few
# distinct names, so that repeated headers are common.
_NAMES = st.sampled_from([b"host", b"accept", b"dpop", b"authorization", b"mcp-name", b"x-odd", b"a"])
_VALUES = st.binary(max_size=12)
_LISTS = st.lists(st.tuples(_NAMES, _VALUES), max_size=8)
_LOOKUPS = st.sampled_from(
    ["host", "HOST", "Accept", "dpop", "mcp-name", "x-odd", "X-Odd", "missing", "a", "A"]
)


def _scope(raw: list[tuple[bytes, bytes]]) -> dict[str, object]:
    return {"type": "http", "method": "POST", "path": "/mcp", "headers": raw}


@settings(max_examples=300)
@given(raw=_LISTS, names=st.lists(_LOOKUPS, min_size=1, max_size=5))
def test_indexed_headers_read_as_starlettes(raw: list[tuple[bytes, bytes]], names: list[str]) -> None:
    ours, theirs = IndexedHeaders(_scope(list(raw))), Headers(scope=_scope(list(raw)))
    assert ours.items() == theirs.items()
    assert ours.keys() == theirs.keys()
    assert ours.values() == theirs.values()
    assert list(ours) == list(theirs)
    assert len(ours) == len(theirs)
    assert dict(ours) == dict(theirs)
    assert ours.raw == theirs.raw
    assert ours == theirs
    for name in names:
        assert ours.get(name) == theirs.get(name)
        assert ours.get(name, "default") == theirs.get(name, "default")
        assert (name in ours) == (name in theirs)
        assert ours.getlist(name) == theirs.getlist(name)
        if name in theirs:
            assert ours[name] == theirs[name]
        else:
            with pytest.raises(KeyError):
                ours[name]


def test_repeated_header_answers_its_first_value() -> None:
    headers = IndexedHeaders(_scope([(b"dpop", b"first"), (b"dpop", b"second")]))
    assert headers["DPoP"] == "first"
    assert headers.getlist("dpop") == ["first", "second"]
    assert headers.items() == [("dpop", "first"), ("dpop", "second")]


def test_items_is_a_copy_the_caller_may_change() -> None:
    headers = IndexedHeaders(_scope([(b"host", b"a")]))
    headers.items().append(("x", "y"))
    assert headers.items() == [("host", "a")]


def test_hot_request_builds_its_headers_once_and_shares_them_through_a_scope_copy() -> None:
    scope = _scope([(b"tether-task", b"tsk_1")])
    first = HotRequest(scope)
    headers = first.headers
    assert isinstance(headers, IndexedHeaders)
    assert first.headers is headers
    assert scope[SCOPE_KEY] is headers
    second = HotRequest({**scope, "extra": 1})
    assert second.headers is headers
    assert second.headers["Tether-Task"] == "tsk_1"


def test_a_scope_whose_headers_were_replaced_gets_a_table_of_its_own() -> None:
    scope = _scope([(b"tether-task", b"tsk_1")])
    assert HotRequest(scope).headers["tether-task"] == "tsk_1"
    rewritten = {**scope, "headers": [(b"tether-task", b"tsk_2")]}
    assert HotRequest(rewritten).headers["tether-task"] == "tsk_2"
    assert HotRequest(scope).headers["tether-task"] == "tsk_1"
