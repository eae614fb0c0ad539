"""Destinations: the upstreams an operator registers for credential-injecting egress.

A destination names one base URL, the secret that is injected into calls to it, how it is
injected (a header template, HTTP basic auth, or a query parameter), and what an agent may
send there: methods, path prefixes, a timeout and size limits. It is validated when built:
a :class:`Destination` that exists is safe to forward to. Pure: no I/O.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from tether.domain.secrets import validate_path
from tether.errors import InvalidInputError

__all__ = [
    "ALLOWED_METHODS",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_TIMEOUT_SECONDS",
    "FORBIDDEN_HEADERS",
    "MAX_BYTES_LIMIT",
    "MAX_PATH_PREFIXES",
    "MAX_TIMEOUT_SECONDS",
    "SECRET_PLACEHOLDER",
    "Destination",
    "Injection",
    "InjectionType",
    "validate_destination_name",
]

SECRET_PLACEHOLDER = "{secret}"
MAX_TIMEOUT_SECONDS = 300
DEFAULT_TIMEOUT_SECONDS = 30
MAX_BYTES_LIMIT = 64 * 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
MAX_PATH_PREFIXES = 32
MAX_PREFIX_CHARS = 256
MAX_URL_CHARS = 2048
MAX_TEMPLATE_CHARS = 256
MAX_INJECT_NAME_CHARS = 64
MAX_USERNAME_CHARS = 128
MAX_CREATED_BY_CHARS = 128

#: Methods a destination may allow. CONNECT and TRACE are never forwarded.
ALLOWED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: Headers a secret is never injected into: hop-by-hop headers (RFC 9110 §7.6.1, plus the
#: common non-standard ones), and those that frame or route the request. Injecting there would
#: be dropped by the proxy, or would let a template rewrite where and how much is sent.
FORBIDDEN_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# Tether's own request headers (``Tether-Task``, ...) are read by the egress path, never forwarded.
_TETHER_HEADER_PREFIX = "tether-"

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 token
_QUERY_NAME = re.compile(r"[A-Za-z0-9._~-]+")  # RFC 3986 unreserved: needs no encoding
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_DNS_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")
MAX_HOST_CHARS = 253
# Percent-encoded '.', '/' and '\': a prefix holding them could match a path that decodes elsewhere.
_ENCODED_SEPARATORS = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)
_DEFAULT_PORTS = {"https": 443, "http": 80}


def _refuse(message: str, what: str) -> InvalidInputError:
    return InvalidInputError(message, field=what)


def _has_control(value: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)


def validate_destination_name(name: str) -> str:
    """Return ``name`` if it is a valid destination name (like a secret's ``destinations`` entry)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _refuse(
            "destination name must be 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            "name",
        )
    return name


class InjectionType(StrEnum):
    """How the secret reaches the upstream."""

    HEADER = "header"
    BASIC = "basic"
    QUERY = "query"

    @classmethod
    def parse(cls, value: str) -> InjectionType:
        try:
            return cls(value)
        except ValueError:
            names = "|".join(member.value for member in cls)
            raise _refuse(f"inject.type must be one of {names}", "inject.type") from None


@dataclass(frozen=True, slots=True)
class Injection:
    """Where the secret goes in a forwarded request.

    - ``header``: header ``name`` gets ``template`` with ``{secret}`` replaced by the value,
      e.g. ``Authorization: Bearer {secret}``.
    - ``basic``: ``Authorization: Basic base64(name ":" secret)``: ``name`` is the username,
      the secret the password; there is no template.
    - ``query``: query parameter ``name`` gets ``template`` with ``{secret}`` replaced.
    """

    type: InjectionType
    name: str
    template: str = SECRET_PLACEHOLDER

    def __post_init__(self) -> None:
        if not isinstance(self.type, InjectionType):
            object.__setattr__(self, "type", InjectionType.parse(self.type))
        if not isinstance(self.name, str) or not self.name:
            raise _refuse("inject.name is required", "inject.name")
        if self.type is InjectionType.HEADER:
            self._check_header_name()
        elif self.type is InjectionType.QUERY:
            if len(self.name) > MAX_INJECT_NAME_CHARS or not _QUERY_NAME.fullmatch(self.name):
                raise _refuse(
                    f"inject.name must be a query parameter name of at most {MAX_INJECT_NAME_CHARS} "
                    "letters, digits, '.', '_', '~' or '-'",
                    "inject.name",
                )
        else:
            self._check_username()
        self._check_template()

    def _check_header_name(self) -> None:
        if len(self.name) > MAX_INJECT_NAME_CHARS or not _TOKEN.fullmatch(self.name):
            raise _refuse(
                f"inject.name must be an HTTP header name (a token) of at most {MAX_INJECT_NAME_CHARS} "
                "characters",
                "inject.name",
            )
        lower = self.name.lower()
        if lower in FORBIDDEN_HEADERS:
            raise _refuse(
                f"a secret cannot be injected into the {self.name!r} header: it is hop-by-hop or frames "
                "the request",
                "inject.name",
            )
        if lower.startswith(_TETHER_HEADER_PREFIX):
            raise _refuse(
                f"a secret cannot be injected into {self.name!r}: Tether-* headers are Tether's own",
                "inject.name",
            )

    def _check_username(self) -> None:
        if len(self.name) > MAX_USERNAME_CHARS or _has_control(self.name) or ":" in self.name:
            raise _refuse(
                f"the basic auth username (inject.name) must be at most {MAX_USERNAME_CHARS} characters, "
                "without ':' or control characters",
                "inject.name",
            )

    def _check_template(self) -> None:
        template = self.template
        if not isinstance(template, str):
            raise _refuse("inject.template must be text", "inject.template")
        if self.type is InjectionType.BASIC:
            if template != SECRET_PLACEHOLDER:
                raise _refuse(
                    "basic injection takes no template: the secret is the password", "inject.template"
                )
            return
        if len(template) > MAX_TEMPLATE_CHARS:
            raise _refuse(
                f"inject.template is longer than {MAX_TEMPLATE_CHARS} characters", "inject.template"
            )
        if template.count(SECRET_PLACEHOLDER) != 1:
            raise _refuse("inject.template must contain {secret} exactly once", "inject.template")
        if _has_control(template):
            raise _refuse("inject.template must not contain control characters", "inject.template")
        if self.type is InjectionType.HEADER and (not template.isascii() or template != template.strip()):
            raise _refuse(
                "a header template must be ASCII without leading or trailing whitespace", "inject.template"
            )

    @property
    def header_name(self) -> str | None:
        """The header the secret goes into (``Authorization`` for basic), None for a query."""
        if self.type is InjectionType.QUERY:
            return None
        return "Authorization" if self.type is InjectionType.BASIC else self.name

    def render(self, secret: str) -> str:
        """The header or query parameter value carrying ``secret``.

        Refuses a value that would break out of a header (CR, LF, NUL and other controls);
        the message never contains the value.
        """
        if self.type is InjectionType.BASIC:
            if _has_control(secret):
                raise _refuse("the secret value cannot be sent as a basic auth password", "secret")
            raw = f"{self.name}:{secret}".encode()
            return "Basic " + base64.b64encode(raw).decode("ascii")
        if _has_control(secret):
            raise _refuse(f"the secret value cannot be injected into a {self.type.value}", "secret")
        return self.template.replace(SECRET_PLACEHOLDER, secret, 1)

    def to_json(self) -> dict[str, str]:
        result = {"type": self.type.value, "name": self.name}
        if self.type is not InjectionType.BASIC:
            result["template"] = self.template
        return result

    @classmethod
    def from_json(cls, data: object) -> Injection:
        if not isinstance(data, Mapping):
            raise _refuse("inject must be an object with type, name and template", "inject")
        unknown = set(data) - {"type", "name", "template"}
        if unknown:
            raise _refuse(f"inject has unknown fields: {', '.join(sorted(map(str, unknown)))}", "inject")
        kind, name, template = data.get("type"), data.get("name"), data.get("template")
        if not isinstance(kind, str):
            raise _refuse("inject.type is required", "inject.type")
        if not isinstance(name, str):
            raise _refuse("inject.name is required", "inject.name")
        if template is None:
            template = SECRET_PLACEHOLDER
        if not isinstance(template, str):
            raise _refuse("inject.template must be text", "inject.template")
        return cls(type=InjectionType.parse(kind), name=name, template=template)


def _is_loopback_host(host: str) -> bool:
    return host in _LOOPBACK_HOSTS


def _segments_ok(path: str) -> bool:
    """No empty, ``.`` or ``..`` segment (a trailing ``/`` is fine) and no encoded separator."""
    segments = path.split("/")[1:]
    if segments and segments[-1] == "":
        segments = segments[:-1]
    if any(segment in {"", ".", ".."} for segment in segments):
        return False
    return not _ENCODED_SEPARATORS.search(path)


def _netloc(scheme: str, host: str | None, port: int | None) -> str:
    """``host[:port]`` of a base URL, checked: a DNS name or an IP address (IPv6 in brackets),
    no default port, plain http only to loopback."""
    what = "base_url"
    if not host:
        raise _refuse("base_url has no host", what)
    if port == 0:
        raise _refuse("base_url has an invalid port", what)
    if scheme == "http" and not _is_loopback_host(host):
        raise _refuse(
            "base_url must use https; plain http is allowed only for 127.0.0.1, ::1 and localhost", what
        )
    try:
        is_ipv6 = isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        is_ipv6 = False
        if len(host) > MAX_HOST_CHARS or not _DNS_NAME.fullmatch(host):
            raise _refuse("base_url host must be a DNS name or an IP address", what) from None
    if "%" in host:
        raise _refuse("base_url host must not carry an IPv6 zone", what)
    netloc = f"[{host}]" if is_ipv6 else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    return netloc


def _normalise_base_url(value: object) -> str:
    """``scheme://host[:port]/path/``: lowercase scheme and host, no default port, a path that
    ends in ``/``. Refuses userinfo, a query, a fragment, dot segments and plain http to a
    host that is not loopback."""
    what = "base_url"
    if not isinstance(value, str) or not value or len(value) > MAX_URL_CHARS:
        raise _refuse(f"base_url must be a URL of at most {MAX_URL_CHARS} characters", what)
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in value) or "\\" in value or not value.isascii():
        raise _refuse("base_url must be ASCII without spaces, control characters or '\\'", what)
    if "?" in value or "#" in value:
        raise _refuse("base_url must not have a query or a fragment", what)
    try:
        parts = urlsplit(value)
        host = parts.hostname
        port = parts.port
    except ValueError:
        raise _refuse("base_url is not a valid URL", what) from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise _refuse("base_url must use https (http only for a loopback host)", what)
    if "@" in parts.netloc:
        raise _refuse("base_url must not carry credentials (user or password)", what)
    netloc = _netloc(scheme, host, port)
    path = parts.path or "/"
    if not _segments_ok(path):
        raise _refuse(
            "base_url path must not have empty, '.' or '..' segments or percent-encoded '.', '/', '\\'",
            what,
        )
    return f"{scheme}://{netloc}{path if path.endswith('/') else path + '/'}"


def _validate_prefix(prefix: object) -> str:
    what = "path_prefixes"
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise _refuse("every path prefix must start with '/'", what)
    if len(prefix) > MAX_PREFIX_CHARS:
        raise _refuse(f"a path prefix is longer than {MAX_PREFIX_CHARS} characters", what)
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in prefix) or not prefix.isascii():
        raise _refuse("a path prefix must be ASCII without spaces or control characters", what)
    if "?" in prefix or "#" in prefix or "\\" in prefix:
        raise _refuse("a path prefix must not hold '?', '#' or '\\'", what)
    if not _segments_ok(prefix):
        raise _refuse(
            f"path prefix {prefix[:60]!r} has an empty, '.' or '..' segment or a percent-encoded "
            "'.', '/' or '\\'",
            what,
        )
    return prefix


def _validate_methods(methods: object) -> frozenset[str]:
    if isinstance(methods, str | bytes) or not isinstance(methods, Iterable):
        raise _refuse("methods must be a list of HTTP methods", "methods")
    result = frozenset(methods)
    if not result:
        raise _refuse("methods must not be empty", "methods")
    for method in result:
        if not isinstance(method, str) or method not in ALLOWED_METHODS:
            allowed = ", ".join(sorted(ALLOWED_METHODS))
            raise _refuse(f"method {str(method)[:20]!r} is not allowed: use one of {allowed}", "methods")
    return result


def _validate_prefixes(prefixes: object) -> tuple[str, ...]:
    if isinstance(prefixes, str | bytes) or not isinstance(prefixes, Iterable):
        raise _refuse("path_prefixes must be a list of paths", "path_prefixes")
    result = tuple(sorted({_validate_prefix(prefix) for prefix in prefixes}))
    if not result:
        raise _refuse("path_prefixes must not be empty", "path_prefixes")
    if len(result) > MAX_PATH_PREFIXES:
        raise _refuse(f"at most {MAX_PATH_PREFIXES} path prefixes are allowed", "path_prefixes")
    return result


def _bounded_int(value: object, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _refuse(f"{what} must be an integer between {low} and {high}", what)
    return value


def _prefix_matches(prefix: str, path: str) -> bool:
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True, slots=True)
class Destination:
    """A registered upstream, validated when built.

    ``base_url`` is normalised (lowercase scheme and host, no default port, a path ending in
    ``/``); ``methods`` are uppercase; ``path_prefixes`` are sorted and deduplicated. A path
    prefix matches whole segments: ``/repos`` allows ``/repos`` and ``/repos/x`` but not
    ``/repository``; ``/repos/`` allows only what lies below it.
    """

    name: str
    base_url: str
    secret: str
    inject: Injection
    created_at: datetime
    created_by: str
    methods: frozenset[str] = field(default_factory=lambda: frozenset({"GET"}))
    path_prefixes: tuple[str, ...] = ("/",)
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def __post_init__(self) -> None:
        validate_destination_name(self.name)
        object.__setattr__(self, "base_url", _normalise_base_url(self.base_url))
        try:
            validate_path(self.secret)
        except InvalidInputError as exc:
            raise _refuse(str(exc), "secret") from None
        if not isinstance(self.inject, Injection):
            raise _refuse("inject must be an injection (type, name, template)", "inject")
        object.__setattr__(self, "methods", _validate_methods(self.methods))
        object.__setattr__(self, "path_prefixes", _validate_prefixes(self.path_prefixes))
        _bounded_int(self.timeout_seconds, "timeout_seconds", 1, MAX_TIMEOUT_SECONDS)
        _bounded_int(self.max_body_bytes, "max_body_bytes", 1, MAX_BYTES_LIMIT)
        _bounded_int(self.max_response_bytes, "max_response_bytes", 1, MAX_BYTES_LIMIT)
        if not isinstance(self.created_at, datetime) or self.created_at.tzinfo is None:
            raise _refuse("created_at must be an aware datetime", "created_at")
        if (
            not isinstance(self.created_by, str)
            or len(self.created_by) > MAX_CREATED_BY_CHARS
            or _has_control(self.created_by)
        ):
            raise _refuse(
                f"created_by must be text of at most {MAX_CREATED_BY_CHARS} characters", "created_by"
            )

    @property
    def host(self) -> str:
        """The upstream's host name (lowercase; an IPv6 address without brackets): the Cedar
        ``Destination`` entity's ``host`` attribute."""
        host = urlsplit(self.base_url).hostname
        assert host is not None  # validated in __post_init__
        return host

    def permits(self, method: str, path: str) -> bool:
        """Whether ``method`` on ``path`` (relative to ``base_url``, starting with ``/``) is
        within this destination's methods and path prefixes. A path with dot or empty segments,
        a query or a fragment is never permitted: the caller normalises first."""
        if method not in self.methods or not isinstance(path, str) or not path.startswith("/"):
            return False
        if "?" in path or "#" in path or "\\" in path or _has_control(path) or not _segments_ok(path):
            return False
        return any(_prefix_matches(prefix, path) for prefix in self.path_prefixes)

    def to_json(self) -> dict[str, Any]:
        """The API and storage form (``created_at`` as ISO 8601)."""
        return {
            "name": self.name,
            "base_url": self.base_url,
            "host": self.host,
            "secret": self.secret,
            "inject": self.inject.to_json(),
            "methods": sorted(self.methods),
            "path_prefixes": list(self.path_prefixes),
            "timeout_seconds": self.timeout_seconds,
            "max_body_bytes": self.max_body_bytes,
            "max_response_bytes": self.max_response_bytes,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Destination:
        """The inverse of :meth:`to_json` (``host`` is derived and ignored). Raises
        :class:`InvalidInputError` on anything missing or malformed."""
        if not isinstance(data, Mapping):
            raise _refuse("a destination must be an object", "destination")
        for key in ("name", "base_url", "secret", "created_at", "created_by"):
            if not isinstance(data.get(key), str):
                raise _refuse(f"{key} is required", key)
        try:
            created_at = datetime.fromisoformat(data["created_at"])
        except ValueError:
            raise _refuse("created_at is not an ISO 8601 time", "created_at") from None
        methods = data.get("methods", ["GET"])
        prefixes = data.get("path_prefixes", ["/"])
        if not isinstance(methods, list) or not isinstance(prefixes, list):
            raise _refuse("methods and path_prefixes must be lists", "methods")
        return cls(
            name=data["name"],
            base_url=data["base_url"],
            secret=data["secret"],
            inject=Injection.from_json(data.get("inject")),
            created_at=created_at,
            created_by=data["created_by"],
            methods=frozenset(methods),
            path_prefixes=tuple(prefixes),
            timeout_seconds=data.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS),
            max_body_bytes=data.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES),
            max_response_bytes=data.get("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES),
        )
