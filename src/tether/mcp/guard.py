"""Nothing leaks back, nothing leaks out: the injected secrets of one upstream, as a guard over
the JSON values that cross the gateway. Pure: no I/O.

Every string in a tool's result (content, structured content), an error message, a progress or
log notification is redacted with :class:`tether.egress.leakguard.LeakGuard` — the value in plain,
base64 (any alignment), hex, URL and JSON-escaped forms and each injected rendering (``Bearer
<secret>``) — as egress does. Dictionary keys are redacted too. The same forms found in a call's
*arguments* mean an agent is trying to send a governed value somewhere (exfiltration through a
tool): the gateway refuses that call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tether.egress.leakguard import LeakGuard, guard_for

__all__ = ["MAX_DEPTH", "SecretGuard"]

#: Deeper JSON than this is refused rather than walked (a result is bounded anyway).
MAX_DEPTH = 64


class TooDeepError(ValueError):
    """A value nests deeper than :data:`MAX_DEPTH`."""


@dataclass(frozen=True, slots=True)
class SecretGuard:
    """The guards of the secrets one upstream session was given (may be empty: nothing to hide)."""

    guards: tuple[LeakGuard, ...] = field(default=())

    @classmethod
    def of(cls, values: Sequence[tuple[bytes, Sequence[bytes]]]) -> SecretGuard:
        """A guard for each ``(secret, renderings)`` (empty values are skipped)."""
        return cls(tuple(guard_for(secret, renderings) for secret, renderings in values if secret))

    def __repr__(self) -> str:  # never the forms
        return f"SecretGuard({len(self.guards)} secrets)"

    def redact_text(self, text: str) -> tuple[str, int]:
        data = text.encode("utf-8", "surrogatepass")
        total = 0
        for guard in self.guards:
            data, count = guard.redact(data)
            total += count
        return (data.decode("utf-8", "replace") if total else text), total

    def redact(self, value: Any, depth: int = 0) -> tuple[Any, int]:
        """``value`` (JSON: dicts, lists, strings, numbers) with every secret form redacted, and
        how many were."""
        if not self.guards:
            return value, 0
        if depth > MAX_DEPTH:
            raise TooDeepError("value nests too deeply")
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, list | tuple):
            total = 0
            items = []
            for item in value:
                clean, count = self.redact(item, depth + 1)
                items.append(clean)
                total += count
            return items, total
        if isinstance(value, dict):
            total = 0
            result: dict[Any, Any] = {}
            for key, item in value.items():
                clean_key, in_key = self.redact(key, depth + 1) if isinstance(key, str) else (key, 0)
                clean, count = self.redact(item, depth + 1)
                result[clean_key] = clean
                total += in_key + count
            return result, total
        return value, 0

    def holds_secret(self, value: Any) -> bool:
        """Whether ``value`` carries any form of a guarded secret (anywhere, keys included)."""
        try:
            return self.redact(value)[1] > 0
        except TooDeepError:
            return True  # fail closed: what cannot be inspected is not sent
