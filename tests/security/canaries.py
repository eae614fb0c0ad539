"""Canary values, every common encoding of them, and the suite-wide leak scan.

A canary is a unique value a test plants as a secret. :func:`find_leaks` looks for canaries in a
blob in plain, URL, hex and base64 forms. :data:`SCAN` is the suite-wide scan: ``tests/conftest.py``
feeds it every log record and every response a Tether app sends in this process, the integration
``broker`` fixture feeds it its database, and the session ends with one line of counts (and a
failed run on any leak).

Every canary starts with :data:`PREFIX`, so every encoded form of one starts with the same
encoding of the prefix (a dozen short needles). A scan looks for those needles first and compares
whole canary forms only where one occurs: a clean megabyte costs a dozen substring searches, not
one per canary and form.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import secrets
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.broker import Broker

PREFIX = "CANARY-"

ISSUED: list[str] = []
"""Every canary issued in this test process; the suite-wide scan looks for each."""


def new_canary(label: str) -> str:
    """A unique, recognisable value; random so it cannot appear by accident."""
    value = f"{PREFIX}{label}-{secrets.token_hex(12)}"
    ISSUED.append(value)
    return value


def _b64_start(pad: int) -> int:
    """The first character of base64(pad zero bytes + data) that depends on ``data`` alone."""
    return (pad * 8 + 5) // 6 + (1 if pad else 0)


def _b64_forms(data: bytes) -> set[str]:
    """Base64 of ``data`` at all three alignments inside a larger blob: the stable middle."""
    forms: set[str] = set()
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * pad + data).decode()
            # Drop the characters that depend on neighbouring bytes (start and end).
            forms.add(encoded[_b64_start(pad) : len(encoded) - 4])
    return {form for form in forms if len(form) >= 16}


@functools.cache
def encodings(value: str) -> dict[str, frozenset[str]]:
    data = value.encode()
    return {
        "plain": frozenset({value}),
        "url": frozenset({urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}),
        "hex": frozenset({data.hex(), data.hex().upper()}),
        "base64": frozenset(_b64_forms(data)),
    }


def _prefix_needles() -> tuple[str, ...]:
    """The start every encoded form of a canary shares: the same form of :data:`PREFIX`."""
    data = PREFIX.encode()
    needles = {PREFIX, urllib.parse.quote(PREFIX, safe=""), data.hex(), data.hex().upper()}
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * pad + data).decode()
            # Characters whose six bits all come from the zero pad and the prefix.
            needles.add(encoded[_b64_start(pad) : (8 * (pad + len(data))) // 6])
    return tuple(sorted(needles))


NEEDLES = _prefix_needles()


def _as_text(haystack: bytes | str) -> str:
    return haystack.decode("latin-1") if isinstance(haystack, bytes) else haystack


def _found_prefixed(text: str, canaries: Sequence[str]) -> list[tuple[str, str]]:
    """(canary, kind) for each canary form in ``text``; every canary starts with :data:`PREFIX`."""
    hits = sorted({i for needle in NEEDLES for i in _positions(text, needle)})
    if not hits:
        return []
    found: set[tuple[str, str]] = set()
    for canary in canaries:
        for kind, forms in encodings(canary).items():
            if any(text.startswith(form, i) for i in hits for form in forms):
                found.add((canary, kind))
    return sorted(found, key=lambda item: (canaries.index(item[0]), item[1]))


def _positions(text: str, needle: str) -> Iterable[int]:
    index = text.find(needle)
    while index != -1:
        yield index
        index = text.find(needle, index + 1)


def _found(text: str, canaries: Sequence[str]) -> list[tuple[str, str]]:
    if all(canary.startswith(PREFIX) for canary in canaries):
        return _found_prefixed(text, canaries)
    return [
        (canary, kind)
        for canary in canaries
        for kind, forms in encodings(canary).items()
        if any(form in text for form in forms)
    ]


def _name(canary: str, kind: str) -> str:
    return f"{canary[:20]}… as {kind}"


def find_leaks(haystack: bytes | str, canaries: Sequence[str]) -> list[str]:
    """Names of the canary forms found in ``haystack``."""
    return [_name(canary, kind) for canary, kind in _found(_as_text(haystack), list(canaries))]


# -- the suite-wide scan ---------------------------------------------------------------------------
_ACTIVATE = re.compile(r"/v1/grants/[^/]+/activate")


@dataclass
class Leak:
    source: str
    where: str
    form: str
    canary: str = field(repr=False, default="")

    def __str__(self) -> str:
        return f"{self.source}: {self.where}: {self.form}"


@dataclass
class LeakScan:
    """What the suite scanned, per source, and every leak found (a leak fails the run)."""

    scanned: Counter[str] = field(default_factory=Counter)
    leaks: list[Leak] = field(default_factory=list)
    exempt: Counter[str] = field(default_factory=Counter)
    echoed: set[str] = field(default_factory=set)
    """Canaries a caller sent as a task ``objective``: task responses return it by design."""
    metric_registries: dict[int, object] = field(default_factory=dict)
    seconds: float = 0.0
    """Time spent scanning (the scan's overhead, less copying responses and reading files)."""

    def check(self, source: str, where: str, haystack: bytes | str, *, count: int = 1) -> list[Leak]:
        """Scan ``haystack`` from ``source`` for every canary issued so far; record what it holds."""
        started = time.perf_counter()
        self.scanned[source] += count
        found = [
            Leak(source, where, _name(canary, kind), canary)
            for canary, kind in _found_prefixed(_as_text(haystack), ISSUED)
            if not (source in ("http", "db") and canary in self.echoed)
        ]
        self.leaks.extend(found)
        self.seconds += time.perf_counter() - started
        return found

    def check_response(
        self,
        *,
        method: str,
        path: str,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        request_body: bytes = b"",
    ) -> list[Leak]:
        """One response a Tether app sent. A reveal or dynamic activation's body is where a value
        is meant to go: only its headers are scanned. ``GET /metrics`` counts as metrics output."""
        if request_body and path.startswith("/v1/tasks"):
            self._note_objective(request_body)
        where = f"{method} {path} -> {status}"
        head = "\n".join(f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in headers)
        source = "metrics" if path == "/metrics" else "http"
        if method == "POST" and 200 <= status < 300 and _ACTIVATE.fullmatch(path) and _hands_out(body):
            self.exempt["activation bodies"] += 1
            return self.check(source, where + " (headers; body exempt)", head)
        return self.check(source, where, head + "\n\n" + body.decode("latin-1"))

    def _note_objective(self, request_body: bytes) -> None:
        try:
            objective = json.loads(request_body).get("objective")
        except (ValueError, AttributeError):
            return
        if isinstance(objective, str):
            self.echoed.update(canary for canary in ISSUED if canary in objective)

    def check_metric_registries(self) -> None:
        """Render every Tether app's metrics registry as ``GET /metrics`` would, and scan it."""
        from prometheus_client import generate_latest

        for registry in self.metric_registries.values():
            self.check("metrics", "metrics registry", generate_latest(registry))  # type: ignore[arg-type]
        self.metric_registries.clear()

    async def check_store(self, node: Broker, where: str) -> None:
        """The node's database as a thief would read it: SQLite's files (main, WAL, journal), or
        every row of every table in the node's PostgreSQL schema, as text (bytea as hex)."""
        settings = node.settings
        if settings.backend == "sqlite":
            path = Path(settings.database_url.removeprefix("sqlite:///"))
            for name in (path, Path(f"{path}-wal"), Path(f"{path}-journal")):
                if name.exists():
                    self.check("db", f"{where}: {name.name}", name.read_bytes())
            return
        from sqlalchemy import text

        schema = settings.pg_schema or "public"
        engine = node.storage._engine  # type: ignore[attr-defined]
        async with engine.connect() as conn:
            tables = (
                await conn.execute(
                    text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                    {"s": schema},
                )
            ).scalars()
            dump = []
            for table in list(tables):
                rows = await conn.execute(text(f'SELECT t::text FROM "{schema}"."{table}" t'))
                dump.append(f"-- {table}\n" + "\n".join(row[0] for row in rows))
        self.check("db", f"{where}: postgresql schema {schema}", "\n".join(dump))

    def totals(self, audit_events: int) -> dict[str, Any]:
        """What :meth:`summary` reports, as plain values (a parallel run's worker sends these)."""
        return {
            "audit_events": audit_events,
            "scanned": dict(self.scanned),
            "exempt": dict(self.exempt),
            "canaries": len(ISSUED),
            "leaks": [str(leak) for leak in self.leaks],
            "seconds": self.seconds,
        }

    def summary(self, audit_events: int) -> str:
        return summary_line([self.totals(audit_events)])


def summary_line(parts: Sequence[dict[str, Any]], *, workers: int = 0) -> str:
    """One line of counts over :meth:`LeakScan.totals` of one process, or of a parallel run's
    controller and each of its ``workers``."""
    n: Counter[str] = Counter()
    exempt: Counter[str] = Counter()
    for part in parts:
        n.update(part["scanned"])
        exempt.update(part["exempt"])
    label = f"leak scan ({workers} workers)" if workers else "leak scan"
    return (
        f"{label}: audit {sum(p['audit_events'] for p in parts)} events, logs {n['logs']} lines, "
        f"http {n['http']} responses ({exempt['activation bodies']} reveal/dynamic bodies exempt), "
        f"db {n['db']} files/dumps, metrics {n['metrics']} scrapes; {sum(p['canaries'] for p in parts)} "
        f"canaries; {sum(len(p['leaks']) for p in parts)} leaks "
        f"(scanning took {sum(p['seconds'] for p in parts):.2f}s)"
    )


def _hands_out(body: bytes) -> bool:
    """The activation answer carries a value (reveal) or a credential (dynamic)."""
    try:
        return json.loads(body).get("mode") in ("reveal", "dynamic")
    except (ValueError, AttributeError):
        return False


SCAN = LeakScan()
