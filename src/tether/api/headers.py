"""A hot request's headers, decoded and indexed once.

Starlette's :class:`~starlette.datastructures.Headers` decodes and scans the whole header list on
every lookup, and ``items()``/``keys()``/``dict(headers)`` decode every header again each time. A
request on the hot lane has its headers read about twenty times (authentication, ``Tether-Task``,
origin, and the MCP SDK's ladder: accepted types, duplicated routing headers, the protocol
version, ``Mcp-Param-*``), which cost a served worker more than the lookups' answers are worth.
:class:`IndexedHeaders` answers exactly as Starlette's class does (a repeated header's first value,
case-insensitive names, the raw list untouched) from one decoded list and one table, built the
first time a request's headers are read and kept in its scope, so that a request made from a copy
of that scope (the MCP front passes one to the SDK) finds them built.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import Scope

__all__ = ["HotRequest", "IndexedHeaders"]

#: Where a request's indexed headers are kept in its ASGI scope.
SCOPE_KEY = "tether.headers"


class IndexedHeaders(Headers):
    """Starlette's immutable request headers, with the names and values decoded once and the first
    value of each name in a table (Starlette answers a repeated header's first value too)."""

    def __init__(self, scope: Scope) -> None:
        super().__init__(scope=scope)
        self._pairs = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in self._list]
        first: dict[str, str] = {}
        for name, value in self._pairs:
            first.setdefault(name, value)
        self._first = first

    @property
    def raw_list(self) -> list[tuple[bytes, bytes]]:
        """The scope's header list these were built from (Starlette's own, not a copy)."""
        return self._list

    def keys(self) -> list[str]:  # type: ignore[override]
        return [name for name, _ in self._pairs]

    def values(self) -> list[str]:  # type: ignore[override]
        return [value for _, value in self._pairs]

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        return list(self._pairs)

    def get(self, key: str, default: Any = None) -> Any:
        return self._first.get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        try:
            return self._first[key.lower()]
        except KeyError:
            raise KeyError(key) from None

    def __contains__(self, key: Any) -> bool:
        return key.lower() in self._first

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._pairs)


class HotRequest(Request):
    """A Starlette request whose headers are :class:`IndexedHeaders`, shared through the scope."""

    @property
    def headers(self) -> Headers:
        headers: IndexedHeaders | None = self.scope.get(SCOPE_KEY)
        # Built from this scope's header list (a copy of the scope shares the list; a scope whose
        # headers were replaced since gets a table of its own).
        if headers is None or headers.raw_list is not self.scope.get("headers"):
            headers = self.scope[SCOPE_KEY] = IndexedHeaders(self.scope)
        return headers
