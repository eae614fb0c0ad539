"""Egress path safety: what an agent may ask for, and the one URL it becomes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.egress.paths import UnsafePathError, filter_query, normalise_path, upstream_url

REFUSED = [
    "",
    "repos",
    "/repos/../admin",
    "/repos/./x",
    "/..",
    "/repos/%2e%2e/admin",
    "/repos/%2E%2e/admin",
    "/repos/.%2E/admin",
    "/repos/%2e/x",
    "/repos%2F..%2Fadmin",
    "/repos/a%2fb",
    "/repos/a%5Cb",
    "/repos/%252e%252e/admin",
    "/repos/%252F",
    "/repos/..;/admin",
    "/repos/%2e%2e;x/admin",
    "//evil.test/x",
    "/repos//x",
    "/http://evil.test/",
    "/http:%2F%2Fevil.test/",
    "/https:evil.test",
    "/javascript:alert(1)",
    "/repos\\..\\admin",
    "/repos/%00",
    "/repos/%0d%0aX: 1",
    "/repos/%0a",
    "/repos/\x00",
    "/repos/a b",
    "/repos/é",
    "/repos/%zz",
    "/repos/100%",
    "/repos?x=1",
    "/repos#frag",
    "/repos/%ff",
    "/" + "a" * 5000,
]


@pytest.mark.parametrize("raw", REFUSED)
def test_unsafe_paths_are_refused(raw: str) -> None:
    with pytest.raises(UnsafePathError):
        normalise_path(raw)


@pytest.mark.parametrize(
    ("raw", "decoded", "encoded"),
    [
        ("/", "/", "/"),
        ("/repos/acme/app/issues", "/repos/acme/app/issues", "/repos/acme/app/issues"),
        ("/repos/", "/repos/", "/repos/"),
        ("/a%20b/c", "/a b/c", "/a%20b/c"),
        ("/r%65pos", "/repos", "/repos"),  # needlessly encoded: the upstream reads /repos
        ("/v1/projects/p:run", "/v1/projects/p:run", "/v1/projects/p:run"),
        ("/caf%C3%A9", "/café", "/caf%C3%A9"),
        ("/a/..b/c.", "/a/..b/c.", "/a/..b/c."),
        ("/x%3Fy", "/x?y", "/x%3Fy"),
    ],
)
def test_honest_paths_are_normalised(raw: str, decoded: str, encoded: str) -> None:
    path = normalise_path(raw)
    assert path.decoded == decoded
    assert path.encoded == encoded


def test_the_upstream_host_comes_from_the_destination_only() -> None:
    path = normalise_path("/repos/x")
    assert upstream_url("https://api.github.com/", path) == "https://api.github.com/repos/x"
    assert upstream_url("http://127.0.0.1:8080/gh/", path, "a=1") == "http://127.0.0.1:8080/gh/repos/x?a=1"
    url = upstream_url("https://maps.test/v1/", path, "q=1", ("key", "s3/c r&t"))
    assert url == "https://maps.test/v1/repos/x?q=1&key=s3%2Fc%20r%26t"


def test_the_injected_query_parameter_cannot_be_set_by_the_agent() -> None:
    assert filter_query("a=1&key=x&KEY=y&k%65y=z&key&b=2", "key") == "a=1&b=2"
    assert filter_query("a=1&keys=2", "key") == "a=1&keys=2"
    assert filter_query("a=1&key=2", None) == "a=1&key=2"
    assert filter_query("", "key") == ""
    for bad in ("a=b c", "a=\x00", "a=é", "a=1#x"):
        with pytest.raises(UnsafePathError):
            filter_query(bad, "key")


segment = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=12)


@given(st.lists(segment, min_size=1, max_size=6))
def test_what_passes_decodes_to_what_was_checked(segments: list[str]) -> None:
    """Whatever an accepted path is, the upstream decodes its encoded form (once) to exactly the
    decoded path that was checked, and it never holds a dot segment or an empty one."""
    from urllib.parse import quote, unquote

    raw = "/" + "/".join(quote(s, safe="") for s in segments)
    try:
        path = normalise_path(raw)
    except UnsafePathError:
        return
    assert unquote(path.encoded) == path.decoded
    parts = path.decoded.split("/")[1:]
    assert all(part not in {"", ".", ".."} for part in parts)
    assert "\\" not in path.decoded
    assert normalise_path(path.encoded) == path  # canonical: normalising again changes nothing
