"""Rate limits of refused token requests: pure counting, time passed in.

Every refused token request is audited, so without a limit anyone who can reach Tether could
flood the audit log. Refusals are counted in fixed windows (``window_seconds``, aligned to the
epoch), per claimed client id and per source address:

* the first ``per_client`` / ``per_address`` refusals of a window are audited one by one, as
  always; the refusal that reaches a limit is reported once (:class:`LimitReached`: one summary
  event per key and window instead of one per refusal);
* then, until the window ends, a further **refusal** of that client is answered 429 with
  ``Retry-After`` and not audited one by one; a request of that client that is *accepted* is not
  affected, so nobody can lock an agent out by sending bad requests in its name;
* and every request from that **address** is answered 429 before any work is done.

Loopback addresses are not limited per address: they are the node's own machine, or a proxy on it
that does not forward the client's address (with ``X-Forwarded-For`` from a local proxy, uvicorn
reports the real client). IPv6 addresses count per /64, the block one host usually holds.
Counters live in one process (one worker): with N workers a limit applies N times over. Memory is
bounded (:data:`MAX_KEYS`).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

__all__ = ["MAX_KEYS", "LimitReached", "RefusalLimiter", "RefusalLimits", "address_key"]

#: Counters kept at most; past windows go first, then the oldest keys.
MAX_KEYS = 50_000
MAX_KEY_CHARS = 300


@dataclass(frozen=True, slots=True)
class RefusalLimits:
    """How many refusals a client id and an address may have per window (see module doc)."""

    window_seconds: int = 60
    per_client: int = 10
    per_address: int = 50

    def __post_init__(self) -> None:
        if self.window_seconds < 1 or self.per_client < 1 or self.per_address < 1:
            raise ValueError("refusal limits must be positive")


@dataclass(frozen=True, slots=True)
class LimitReached:
    """A client id or address reached its limit in this window: audit it once."""

    scope: str  # "client" or "address"
    key: str
    refusals: int
    window_seconds: int
    until: float  # epoch seconds: the end of the window

    def retry_after_seconds(self, now: float) -> int:
        return max(1, math.ceil(self.until - now))


def address_key(address: str | None) -> str | None:
    """What an address is counted as: IPv4 as is, IPv6 by its /64; ``None`` for loopback,
    no address, or something that is not an IP address (a test client's name)."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.is_loopback:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return None if ip.ipv4_mapped.is_loopback else str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class RefusalLimiter:
    """Counts refused token requests per client id and address in fixed windows."""

    def __init__(self, limits: RefusalLimits, *, max_keys: int = MAX_KEYS) -> None:
        self.limits = limits
        self._max_keys = max_keys
        #: (scope, key) -> (window index, refusals in it)
        self._counts: dict[tuple[str, str], tuple[int, int]] = {}
        #: address -> window index in which it reached its limit (blocked until that window ends)
        self._blocked: dict[str, int] = {}

    def _window(self, now: float) -> int:
        return int(now // self.limits.window_seconds)

    def _until(self, window: int) -> float:
        return float((window + 1) * self.limits.window_seconds)

    @property
    def any_blocked(self) -> bool:
        """Whether any address is blocked (check this first: the accepted path's only cost)."""
        return bool(self._blocked)

    def blocked_address(self, address: str | None, now: float) -> int | None:
        """Seconds until ``address`` may try again, or ``None``: it is not blocked."""
        if not self._blocked:
            return None
        key = address_key(address)
        if key is None:
            return None
        window = self._blocked.get(key)
        if window is None:
            return None
        current = self._window(now)
        if window < current:  # its window is over
            del self._blocked[key]
            return None
        return max(1, math.ceil(self._until(window) - now))

    def over_limit(self, client: str | None, address: str | None, now: float) -> int | None:
        """Seconds until the window ends when ``client`` or ``address`` had used up its refusals in
        this window already (answer this refusal with 429, unaudited), else ``None``."""
        current = self._window(now)
        for scope, key, limit in self._keys(client, address):
            window, count = self._counts.get((scope, key), (current, 0))
            if window == current and count >= limit:
                return max(1, math.ceil(self._until(current) - now))
        return None

    def refused(self, client: str | None, address: str | None, now: float) -> list[LimitReached]:
        """Count one refusal; the limits this refusal reached (each once per window)."""
        current = self._window(now)
        reached = []
        for scope, key, limit in self._keys(client, address):
            window, count = self._counts.get((scope, key), (current, 0))
            count = count + 1 if window == current else 1
            self._counts[(scope, key)] = (current, count)
            if count == limit:
                reached.append(
                    LimitReached(scope, key, count, self.limits.window_seconds, self._until(current))
                )
                if scope == "address":
                    self._blocked[key] = current
        if len(self._counts) > self._max_keys:
            self._prune(current)
        return reached

    def _keys(self, client: str | None, address: str | None) -> list[tuple[str, str, int]]:
        keys = []
        if client:
            keys.append(("client", client[:MAX_KEY_CHARS], self.limits.per_client))
        where = address_key(address)
        if where is not None:
            keys.append(("address", where, self.limits.per_address))
        return keys

    def _prune(self, current: int) -> None:
        """Drop past windows; if that is not enough, the oldest half (insertion order)."""
        self._counts = {k: v for k, v in self._counts.items() if v[0] == current}
        if len(self._counts) > self._max_keys:
            keep = list(self._counts.items())[len(self._counts) // 2 :]
            self._counts = dict(keep)
        self._blocked = {k: w for k, w in self._blocked.items() if w == current}
