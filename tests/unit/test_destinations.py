"""Destinations as the domain sees them (``tether.domain.destinations``): every validation rule,
normalisation, injection rendering, path matching and the JSON round trip."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.domain.destinations import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
    MAX_BYTES_LIMIT,
    MAX_PATH_PREFIXES,
    Destination,
    Injection,
    InjectionType,
    validate_destination_name,
)
from tether.errors import InvalidInputError

NOW = datetime(2026, 1, 1, tzinfo=UTC)
BEARER = Injection(InjectionType.HEADER, "Authorization", "Bearer {secret}")


def make(**kw: Any) -> Destination:
    values: dict[str, Any] = {
        "name": "github",
        "base_url": "https://api.github.com",
        "secret": "prod/github/token",
        "inject": BEARER,
        "created_at": NOW,
        "created_by": "alice",
    }
    values.update(kw)
    return Destination(**values)


def refused(field: str, **kw: Any) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        make(**kw)
    assert info.value.field == field, (info.value.field, str(info.value))
    return info.value


# -- defaults and normalisation ------------------------------------------------------------


def test_defaults_are_get_everything_below_root_with_bounded_time_and_size() -> None:
    d = make()
    assert d.methods == frozenset({"GET"})
    assert d.path_prefixes == ("/",)
    assert d.timeout_seconds == DEFAULT_TIMEOUT_SECONDS == 30
    assert d.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 1024 * 1024
    assert d.max_response_bytes == DEFAULT_MAX_RESPONSE_BYTES == 8 * 1024 * 1024


@pytest.mark.parametrize(
    ("given_url", "normalised", "host"),
    [
        ("https://api.github.com", "https://api.github.com/", "api.github.com"),
        ("https://API.GitHub.com/", "https://api.github.com/", "api.github.com"),
        ("HTTPS://api.github.com/api/v3", "https://api.github.com/api/v3/", "api.github.com"),
        ("https://ghe.acme.test/api/v3/", "https://ghe.acme.test/api/v3/", "ghe.acme.test"),
        ("https://api.github.com:443/x", "https://api.github.com/x/", "api.github.com"),
        ("https://api.github.com:8443", "https://api.github.com:8443/", "api.github.com"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/", "127.0.0.1"),
        ("http://localhost/mock", "http://localhost/mock/", "localhost"),
        ("http://[::1]:9000/", "http://[::1]:9000/", "::1"),
        ("https://[2001:db8::1]/", "https://[2001:db8::1]/", "2001:db8::1"),
        ("https://10.0.0.5/", "https://10.0.0.5/", "10.0.0.5"),
    ],
)
def test_base_url_is_normalised_and_host_is_its_hostname(given_url: str, normalised: str, host: str) -> None:
    d = make(base_url=given_url)
    assert d.base_url == normalised
    assert d.host == host


def test_methods_and_prefixes_are_canonical_sets() -> None:
    d = make(methods=["POST", "GET", "GET"], path_prefixes=["/b", "/a/", "/b"])
    assert d.methods == frozenset({"GET", "POST"})
    assert d.path_prefixes == ("/a/", "/b")


# -- name and secret -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "GitHub", "-gh", ".gh", "_gh", "a" * 65, "gh/x", "gh x", "gh\n", 7])
def test_invalid_destination_name_is_refused(name: Any) -> None:
    refused("name", name=name)


@pytest.mark.parametrize("name", ["g", "github", "github.com", "pager-duty_2", "0", "a" * 64])
def test_valid_destination_names_are_accepted(name: str) -> None:
    assert make(name=name).name == name == validate_destination_name(name)


@pytest.mark.parametrize("secret", ["", "/prod/x", "prod/x/", "prod//x", "../x", "prod/../x", "prod/.x", 3])
def test_invalid_secret_path_is_refused_under_the_secret_field(secret: Any) -> None:
    refused("secret", secret=secret)


# -- base_url ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://api.github.com",
        "http://10.0.0.1/",
        "http://127.0.0.2/",  # loopback, but not one of the three named hosts
        "http://127.0.0.1.nip.io/",
        "http://localhost.evil.example/",
        "http://[::ffff:127.0.0.1]/",
    ],
)
def test_plain_http_to_a_host_that_is_not_loopback_is_refused(url: str) -> None:
    error = refused("base_url", base_url=url)
    assert "https" in str(error)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://user:pw@api.github.com/", "credentials"),
        ("https://user@api.github.com/", "credentials"),
        ("https://api.github.com/?x=1", "query"),
        ("https://api.github.com/?", "query"),
        ("https://api.github.com/#frag", "fragment"),
        ("ftp://api.github.com/", "https"),
        ("file:///etc/passwd", "https"),
        ("api.github.com", "https"),
        ("https://", "host"),
        ("https:///path", "host"),
        ("https://api.github.com:0/", "port"),
        ("https://api.github.com:99999/", "valid URL"),
        ("https://api.github.com:x/", "valid URL"),
        ("https://api github.com/", "spaces"),
        ("https://api.github.com/a\nb", "control"),
        ("https://api.github.com\\@evil.example/", "'\\'"),
        ("https://bücher.example/", "ASCII"),
        ("https://ex%41mple.com/", "DNS name"),
        ("https://-bad-.example/", "DNS name"),
        ("https://api.github.com/a/../b", "'..'"),
        ("https://api.github.com/a/./b", "'.'"),
        ("https://api.github.com//b", "empty"),
        ("https://api.github.com/a/%2e%2e/b", "percent-encoded"),
        ("https://api.github.com/a%2Fb", "percent-encoded"),
        ("https://" + "a" * 2100 + ".example/", "at most"),
        ("", "URL"),
    ],
)
def test_malformed_or_unsafe_base_url_is_refused(url: str, why: str) -> None:
    error = refused("base_url", base_url=url)
    assert why in str(error), str(error)


def test_non_text_base_url_is_refused() -> None:
    refused("base_url", base_url=None)


# -- injection --------------------------------------------------------------------------------


def test_header_template_without_secret_placeholder_is_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"\{secret\} exactly once") as info:
        Injection(InjectionType.HEADER, "Authorization", "Bearer token")
    assert info.value.field == "inject.template"


def test_template_with_the_placeholder_twice_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="exactly once"):
        Injection(InjectionType.QUERY, "key", "{secret}{secret}")


def test_query_template_without_placeholder_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="exactly once"):
        Injection(InjectionType.QUERY, "api_key", "fixed")


@pytest.mark.parametrize(
    "header",
    [
        "Host",
        "host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "Proxy-Authorization",
        "Proxy-Authenticate",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Upgrade",
        "Tether-Task",
        "tether-anything",
    ],
)
def test_injection_into_hop_by_hop_framing_or_tether_headers_is_refused(header: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        Injection(InjectionType.HEADER, header, "{secret}")
    assert info.value.field == "inject.name"


@pytest.mark.parametrize(
    "header", ["", "X Api Key", "X-Key:", "Authorization\r\nX", "Ünicode", "a" * 65, "(x)"]
)
def test_header_name_that_is_not_an_http_token_is_refused(header: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        Injection(InjectionType.HEADER, header, "{secret}")
    assert info.value.field == "inject.name"


@pytest.mark.parametrize(
    "template", ["Bearer {secret}\r\nX-Evil: 1", "Bearer {secret}\n", " {secret}", "{secret} ", "Bé {secret}"]
)
def test_header_template_that_could_break_the_header_is_refused(template: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        Injection(InjectionType.HEADER, "Authorization", template)
    assert info.value.field == "inject.template"


def test_template_longer_than_the_limit_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="longer than"):
        Injection(InjectionType.HEADER, "X-Key", "{secret}" + "x" * 300)


@pytest.mark.parametrize("name", ["api key", "api&key", "k=v", "", "a" * 65, "ключ"])
def test_query_parameter_name_must_be_unreserved_characters(name: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        Injection(InjectionType.QUERY, name, "{secret}")
    assert info.value.field == "inject.name"


@pytest.mark.parametrize("username", ["user:name", "bot\n", "", "u" * 129])
def test_basic_username_with_colon_or_control_characters_is_refused(username: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        Injection(InjectionType.BASIC, username)
    assert info.value.field == "inject.name"


def test_basic_injection_takes_no_template() -> None:
    with pytest.raises(InvalidInputError, match="no template"):
        Injection(InjectionType.BASIC, "bot", "Basic {secret}")


def test_unknown_injection_type_is_refused() -> None:
    with pytest.raises(InvalidInputError, match=re.escape("header|basic|query")):
        Injection.from_json({"type": "cookie", "name": "sid", "template": "{secret}"})


def test_injection_type_given_as_text_is_parsed() -> None:
    assert Injection("header", "X-Key").type is InjectionType.HEADER  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        None,
        "header",
        {"name": "X-Key"},
        {"type": "header"},
        {"type": "header", "name": "X-Key", "template": 5},
        {"type": "header", "name": "X-Key", "extra": 1},
    ],
)
def test_malformed_injection_json_is_refused(data: Any) -> None:
    with pytest.raises(InvalidInputError):
        Injection.from_json(data)


def test_header_injection_renders_the_template() -> None:
    assert BEARER.header_name == "Authorization"
    assert BEARER.render("s3cr3t") == "Bearer s3cr3t"


def test_basic_injection_renders_username_and_secret_as_password() -> None:
    inject = Injection(InjectionType.BASIC, "bot@acme.test")
    assert inject.header_name == "Authorization"
    value = inject.render("pa:ss")
    assert value.startswith("Basic ")
    assert base64.b64decode(value.removeprefix("Basic ")) == b"bot@acme.test:pa:ss"


def test_query_injection_renders_the_parameter_value() -> None:
    inject = Injection(InjectionType.QUERY, "api_key", "{secret}")
    assert inject.header_name is None
    assert inject.render("abc") == "abc"


def test_secret_placeholder_in_the_value_is_not_expanded_again() -> None:
    assert BEARER.render("{secret}") == "Bearer {secret}"


@pytest.mark.parametrize("kind", list(InjectionType))
def test_render_refuses_a_value_that_would_split_the_request_and_never_echoes_it(kind: InjectionType) -> None:
    inject = Injection(kind, "X-Key" if kind is not InjectionType.BASIC else "bot")
    with pytest.raises(InvalidInputError) as info:
        inject.render("canary-value\r\nX-Evil: 1")
    assert "canary-value" not in str(info.value)


def test_destination_needs_an_injection_object() -> None:
    refused("inject", inject={"type": "header", "name": "X-Key", "template": "{secret}"})


# -- methods, prefixes, limits ------------------------------------------------------------------


@pytest.mark.parametrize(
    "methods", [[], frozenset(), ["get"], ["CONNECT"], ["TRACE"], ["GET", "FETCH"], "GET", [1]]
)
def test_invalid_methods_are_refused(methods: Any) -> None:
    refused("methods", methods=methods)


@pytest.mark.parametrize(
    "prefixes",
    [
        [],
        "/",
        ["repos"],
        [""],
        ["/a/../b"],
        ["/.."],
        ["/a/./b"],
        ["/a//b"],
        ["/a/%2e%2e/b"],
        ["/a%2F"],
        ["/a%5cb"],
        ["/a?b=1"],
        ["/a#x"],
        ["/a b"],
        ["/a\\b"],
        ["/é"],
        ["/" + "a" * 300],
        [f"/p{i}" for i in range(MAX_PATH_PREFIXES + 1)],
        [None],
    ],
)
def test_invalid_path_prefixes_are_refused(prefixes: Any) -> None:
    refused("path_prefixes", path_prefixes=prefixes)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout_seconds", 0),
        ("timeout_seconds", 301),
        ("timeout_seconds", -1),
        ("timeout_seconds", True),
        ("timeout_seconds", 1.5),
        ("timeout_seconds", "30"),
        ("max_body_bytes", 0),
        ("max_body_bytes", MAX_BYTES_LIMIT + 1),
        ("max_response_bytes", 0),
        ("max_response_bytes", MAX_BYTES_LIMIT + 1),
    ],
)
def test_limits_out_of_bounds_are_refused(field: str, value: Any) -> None:
    refused(field, **{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout_seconds", 1),
        ("timeout_seconds", 300),
        ("max_body_bytes", 1),
        ("max_body_bytes", MAX_BYTES_LIMIT),
        ("max_response_bytes", MAX_BYTES_LIMIT),
    ],
)
def test_limits_at_their_bounds_are_accepted(field: str, value: int) -> None:
    assert getattr(make(**{field: value}), field) == value


def test_naive_created_at_is_refused() -> None:
    refused("created_at", created_at=datetime(2026, 1, 1))


def test_created_by_with_control_characters_is_refused() -> None:
    refused("created_by", created_by="alice\nbob")


# -- permits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/repos", True),
        ("GET", "/repos/acme/x", True),
        ("GET", "/repository", False),
        ("GET", "/issues/", True),
        ("GET", "/issues/1", True),
        ("GET", "/issues", False),
        ("GET", "/user", False),
        ("POST", "/repos/acme", True),
        ("DELETE", "/repos/acme", False),
        ("get", "/repos", False),
        ("GET", "/repos/../user", False),
        ("GET", "/repos/./x", False),
        ("GET", "/repos//x", False),
        ("GET", "/repos/%2e%2e/user", False),
        ("GET", "/repos/..", False),
        ("GET", "/repos?x=1", False),
        ("GET", "/repos#x", False),
        ("GET", "repos", False),
        ("GET", "", False),
    ],
)
def test_permits_matches_methods_and_whole_path_segments(method: str, path: str, allowed: bool) -> None:
    d = make(methods=["GET", "POST"], path_prefixes=["/repos", "/issues/"])
    assert d.permits(method, path) is allowed


def test_root_prefix_permits_any_clean_path() -> None:
    d = make()
    assert d.permits("GET", "/")
    assert d.permits("GET", "/anything/at/all")
    assert not d.permits("GET", "/anything/../else")


# -- JSON ---------------------------------------------------------------------------------------


def test_to_json_and_from_json_round_trip() -> None:
    d = make(
        inject=Injection(InjectionType.BASIC, "bot"),
        methods=["GET", "PUT"],
        path_prefixes=["/a", "/b/"],
        timeout_seconds=7,
        max_body_bytes=10,
        max_response_bytes=20,
    )
    data = d.to_json()
    assert data["host"] == "api.github.com"
    assert data["inject"] == {"type": "basic", "name": "bot"}
    assert data["methods"] == ["GET", "PUT"]
    assert Destination.from_json(data) == d


def test_from_json_applies_defaults_for_optional_fields() -> None:
    data = {
        "name": "gh",
        "base_url": "https://api.github.com",
        "secret": "prod/gh",
        "inject": {"type": "header", "name": "X-Key"},
        "created_at": NOW.isoformat(),
        "created_by": "alice",
    }
    d = Destination.from_json(data)
    assert d.inject.template == "{secret}"
    assert d.methods == frozenset({"GET"})
    assert d.path_prefixes == ("/",)


@pytest.mark.parametrize("missing", ["name", "base_url", "secret", "created_at", "created_by"])
def test_from_json_refuses_missing_required_fields(missing: str) -> None:
    data = make().to_json()
    del data[missing]
    with pytest.raises(InvalidInputError):
        Destination.from_json(data)


def test_from_json_refuses_a_bad_time_and_non_list_sets() -> None:
    with pytest.raises(InvalidInputError, match="ISO 8601"):
        Destination.from_json({**make().to_json(), "created_at": "yesterday"})
    with pytest.raises(InvalidInputError, match="lists"):
        Destination.from_json({**make().to_json(), "methods": "GET"})


@given(st.text(max_size=80))
def test_any_accepted_base_url_is_https_or_loopback_http_without_userinfo_query_or_fragment(url: str) -> None:
    try:
        d = make(base_url=url)
    except InvalidInputError:
        return
    assert d.base_url.startswith(("https://", "http://127.0.0.1", "http://localhost", "http://[::1]"))
    assert "@" not in d.base_url
    assert "?" not in d.base_url
    assert "#" not in d.base_url
    assert d.base_url.endswith("/")
    assert make(base_url=d.base_url).base_url == d.base_url  # normalising is idempotent
