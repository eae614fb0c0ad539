"""Path and SSRF safety for egress: what an agent may ask for, and the one URL it becomes.

The agent names a destination and a path below it; the upstream's scheme, host and port come
from the destination alone, never from the request. The path is checked in the form the agent
sent (still percent-encoded) and once decoded, because an upstream decodes it once: a dot
segment, an empty segment, a ``/`` or ``\\`` hidden in a segment (``%2F``, ``%5C``), an encoded
dot segment (``%2e%2e``), a double-encoded separator (``%252e``), a control character or NUL, or
a first segment that reads as a URL scheme (``http:``) is refused, not repaired: a request that
needs repairing is not one an honest agent sends. What passes is re-encoded canonically, so that
the upstream decodes exactly the path that policy and the destination's prefixes were checked
against. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, quote_from_bytes, unquote_plus, unquote_to_bytes, urlsplit

from tether.errors import InvalidInputError

__all__ = [
    "MAX_PATH_CHARS",
    "MAX_QUERY_CHARS",
    "AgentPath",
    "UnsafePathError",
    "filter_query",
    "normalise_path",
    "upstream_url",
]

MAX_PATH_CHARS = 4096
MAX_QUERY_CHARS = 8192

# RFC 3986 pchar without '%' (sub-delims, ':' and '@'): left as they are when re-encoding.
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")  # a '%' that does not start an escape
# Still-encoded '.', '/', '\' or '%' after one decoding: double encoding, which an upstream
# that decodes twice would turn into a separator or a dot segment.
_DOUBLE_ENCODED = re.compile(r"%(2e|2f|5c|25)", re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


class UnsafePathError(InvalidInputError):
    """The agent's path (or query) is refused: traversal, encoding tricks or an absolute URL."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="path")


@dataclass(frozen=True, slots=True)
class AgentPath:
    """An agent's path, checked.

    Attributes:
        decoded: the path as the upstream will understand it (decoded once), starting with
            ``/``: what :meth:`Destination.permits` and policy (``context.request.path``) see.
        encoded: the same path, canonically percent-encoded, to send upstream.
    """

    decoded: str
    encoded: str


def _is_control(ch: str) -> bool:
    return ord(ch) < 0x20 or ord(ch) == 0x7F


def _checked_segment(segment: str) -> bytes:
    """One path segment (between '/'), decoded once, or :class:`UnsafePathError`."""
    if segment == "":
        raise UnsafePathError("the path must not contain '//' (an empty segment)")
    value = unquote_to_bytes(segment)
    # ``..;x`` is ``..`` to servlet containers (a path parameter after ';').
    if value.split(b";", 1)[0] in {b".", b".."}:
        raise UnsafePathError("the path must not contain '.' or '..' segments, encoded or not")
    if b"/" in value or b"\\" in value:
        raise UnsafePathError("the path must not hide '/' or '\\' in a segment (%2F, %5C)")
    if any(byte < 0x20 or byte == 0x7F for byte in value):
        raise UnsafePathError("the path must not contain encoded control characters or NUL")
    if _DOUBLE_ENCODED.search(value.decode("latin-1")):
        raise UnsafePathError("the path must not contain double-encoded '.', '/', '\\' or '%'")
    return value


def normalise_path(raw: str) -> AgentPath:
    """Check the path an agent sent (as on the wire, still percent-encoded; starting with ``/``).

    Raises:
        UnsafePathError: the path is refused; the message says why (never echoing the path).
    """
    if not isinstance(raw, str) or not raw.startswith("/"):
        raise UnsafePathError("the path must start with '/'")
    if len(raw) > MAX_PATH_CHARS:
        raise UnsafePathError(f"the path is longer than {MAX_PATH_CHARS} characters")
    if not raw.isascii() or any(_is_control(ch) or ch == " " for ch in raw):
        raise UnsafePathError("the path must be ASCII without spaces or control characters")
    if "\\" in raw:
        raise UnsafePathError("the path must not contain '\\'")
    if "?" in raw or "#" in raw:
        raise UnsafePathError("the path must not contain '?' or '#' (send the query separately)")
    if _PERCENT.search(raw):
        raise UnsafePathError("the path has a '%' that is not a percent-escape")
    segments = raw[1:].split("/")
    trailing = segments[-1] == ""  # a trailing '/' is part of many APIs' paths
    if trailing:
        segments.pop()
    decoded_segments = [_checked_segment(segment) for segment in segments]
    try:
        text = [segment.decode("utf-8") for segment in decoded_segments]
    except UnicodeDecodeError:
        raise UnsafePathError("the path does not decode to UTF-8") from None
    if text and _SCHEME.match(text[0]):
        raise UnsafePathError("the path must not start like a URL ('scheme:')")
    tail = "/" if trailing and text else ""
    decoded = "/" + "/".join(text) + tail
    encoded = "/" + "/".join(quote_from_bytes(seg, safe=_SEGMENT_SAFE) for seg in decoded_segments) + tail
    return AgentPath(decoded=decoded, encoded=encoded)


def filter_query(raw: str, drop: str | None = None) -> str:
    """The agent's query string to forward, without any parameter named ``drop`` (the
    query-injection parameter, which only Tether sets; compared decoded and case-insensitively,
    so ``T%4Fken=`` is dropped as ``token``).

    Raises:
        UnsafePathError: the query holds non-ASCII, spaces, control characters or '#'.
    """
    if not raw:
        return ""
    if len(raw) > MAX_QUERY_CHARS:
        raise UnsafePathError(f"the query is longer than {MAX_QUERY_CHARS} characters")
    if not raw.isascii() or any(_is_control(ch) or ch in " #" for ch in raw):
        raise UnsafePathError("the query must be ASCII without spaces, control characters or '#'")
    if drop is None:
        return raw
    dropped = drop.lower()
    kept = [
        part
        for part in raw.split("&")
        if unquote_plus(part.partition("=")[0], errors="replace").strip().lower() != dropped
    ]
    return "&".join(kept)


def upstream_url(
    base_url: str, path: AgentPath, query: str = "", inject: tuple[str, str] | None = None
) -> str:
    """The URL to forward to: ``base_url``'s scheme, host and port, its path joined with the
    agent's (already checked) path, then the query and the injected parameter (``inject`` is
    ``(name, value)``; the value is percent-encoded here)."""
    parts = urlsplit(base_url)
    base_path = parts.path.rstrip("/")
    url = f"{parts.scheme}://{parts.netloc}{base_path}{path.encoded}"
    params = [query] if query else []
    if inject is not None:
        name, value = inject
        params.append(f"{quote(name, safe='')}={quote(value, safe='')}")
    return url + ("?" + "&".join(params) if params else "")
