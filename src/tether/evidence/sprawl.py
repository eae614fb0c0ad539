"""The sprawl scan's core: find governed secret values, and ungoverned secrets, in text.

Pure: no I/O. The broker hands in the governed values (decrypted for this scan only) and
the text; this module answers with *where* (line), *which secret* (its path and HMAC
fingerprint) and *how it was encoded* — never with a value or the matched text.

- Governed values are matched in every form the egress leak guard redacts
  (:func:`tether.egress.leakguard.secret_forms`: the value, base64 standard and URL-safe with
  and without padding, base64 embedded at any of the three alignments, hex in either case,
  percent-encodings, JSON escapes), all at once, by one Aho-Corasick automaton
  (``pyahocorasick``): a scan is one linear pass however many secrets are governed.
- Ungoverned secrets (cloud keys, tokens, private keys, high-entropy quoted strings) are found
  with ``detect-secrets``' plugins, run on the whole text (never with their network
  verification); a candidate that holds a governed form is not reported twice.

Text is handled as *bytes*: :func:`as_scan_text` maps each byte to one character (Latin-1),
so that a value's forms, built over bytes, match whatever the encoding of the text.

The automaton holds every form of every value: :class:`GovernedMatcher` is built for one scan
and :meth:`GovernedMatcher.close` (or leaving its ``with`` block) clears it. Python cannot
wipe memory; dropping every reference is what this module can do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import ahocorasick  # type: ignore[import-not-found]  # no type information shipped

from tether.egress.leakguard import secret_forms

__all__ = [
    "MAX_FINDINGS",
    "MIN_SCAN_BYTES",
    "Finding",
    "GovernedMatcher",
    "GovernedValue",
    "ScanResult",
    "UngovernedDetector",
    "as_scan_text",
    "scan_text",
]

#: Values shorter than this are not looked for: a few bytes match too much text by chance.
MIN_SCAN_BYTES: Final = 8
#: Findings one scan reports at most (then it says it stopped counting).
MAX_FINDINGS: Final = 1000
#: What to do about a finding of a secret Tether does not govern.
UNGOVERNED_SUGGESTION: Final = (
    "an ungoverned secret: put it in Tether (tether secret put) and let agents use it through a "
    "task, then remove it from here and rotate it"
)
GOVERNED_SUGGESTION: Final = (
    "a governed secret outside Tether: remove it from here and rotate it (tether secret rotate)"
)

# Ordered by how directly a form shows the value: when one occurrence matches several forms
# (the base64 of a value contains its aligned middle), the finding names the first.
_ENCODINGS: Final = ("plain", "hex", "url", "json", "base64")
_ENTROPY_TYPES: Final = frozenset({"Base64 High Entropy String", "Hex High Entropy String"})


def as_scan_text(data: bytes) -> str:
    """``data`` as the scanner reads it: one character per byte."""
    return data.decode("latin-1")


@dataclass(frozen=True, slots=True)
class GovernedValue:
    """One governed secret for one scan: its path, its audit fingerprint, its value (never in
    ``repr``)."""

    path: str
    fingerprint: str
    value: bytes = field(repr=False)


def _encoding_of(form: bytes, value: bytes) -> str:
    if form == value:
        return "plain"
    if form in (value.hex().encode("ascii"), value.hex().upper().encode("ascii")):
        return "hex"
    if b"%" in form:
        return "url"
    if b"\\" in form:
        return "json"
    return "base64"


class GovernedMatcher:
    """Every form of every governed value in one automaton, for one scan.

    Use as a context manager (or call :meth:`close`): the automaton, which holds the forms, is
    cleared when the scan ends."""

    __slots__ = ("_automaton", "fingerprints", "paths", "skipped_short")

    def __init__(self, values: Iterable[GovernedValue]) -> None:
        self.paths: list[str] = []
        self.fingerprints: list[str] = []
        #: Paths of values shorter than :data:`MIN_SCAN_BYTES`, not looked for.
        self.skipped_short: list[str] = []
        automaton: Any = ahocorasick.Automaton()
        for governed in values:
            if len(governed.value) < MIN_SCAN_BYTES:
                self.skipped_short.append(governed.path)
                continue
            index = len(self.paths)
            self.paths.append(governed.path)
            self.fingerprints.append(governed.fingerprint)
            for form in secret_forms(governed.value):
                key = as_scan_text(form)
                encoding = _encoding_of(form, governed.value)
                existing = automaton.get(key, None)
                # Two secrets sharing a form (one value the base64 of the other): keep the first.
                if existing is None:
                    automaton.add_word(key, (index, _ENCODINGS.index(encoding), len(key)))
        if len(automaton):
            automaton.make_automaton()
        self._automaton: Any = automaton

    @property
    def secret_count(self) -> int:
        """How many governed values this matcher looks for."""
        return len(self.paths)

    def __repr__(self) -> str:  # never the forms
        return f"GovernedMatcher(secrets={self.secret_count})"

    def __enter__(self) -> GovernedMatcher:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Drop every form (the matcher finds nothing after this)."""
        self._automaton.clear()
        self._automaton = ahocorasick.Automaton()

    def matches(self, text: str) -> Iterator[tuple[int, int, str]]:
        """``(start, secret index, encoding)`` of each occurrence of a form in ``text``."""
        if self._automaton.kind != ahocorasick.AHOCORASICK:
            return
        for end, (index, encoding, length) in self._automaton.iter(text):
            yield end - length + 1, index, _ENCODINGS[encoding]

    def holds_governed(self, text: str) -> bool:
        """Whether ``text`` holds any form of any governed value."""
        return next(self.matches(text), None) is not None


class UngovernedDetector:
    """``detect-secrets``' plugins that recognise a secret by its shape, run on whole texts.

    Left out: the keyword plugin (it needs a file type and a line's syntax), public IP
    addresses (not secrets). Plugins never verify a candidate over the network here."""

    __slots__ = ("_entropy", "_plugins")

    def __init__(self) -> None:
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
        from detect_secrets.plugins.high_entropy_strings import (
            Base64HighEntropyString,
            HexHighEntropyString,
        )

        plugins: list[Any] = []
        mapping: dict[str, Any] = dict(get_mapping_from_secret_type_to_class())
        for secret_type, plugin_class in sorted(mapping.items()):
            if secret_type in {"Secret Keyword", "Public IP (ipv4)"}:
                continue
            if plugin_class is Base64HighEntropyString:
                plugins.append(plugin_class(limit=4.5))
            elif plugin_class is HexHighEntropyString:
                plugins.append(plugin_class(limit=3.0))
            else:
                plugins.append(plugin_class())
        self._plugins = tuple(plugins)
        self._entropy = (Base64HighEntropyString, HexHighEntropyString)

    def candidates(self, text: str) -> Iterator[tuple[str, str]]:
        """``(type, candidate)`` for each candidate secret in ``text`` (for the scanner to locate
        and check; never to be shown)."""
        for plugin in self._plugins:
            seen: set[str] = set()
            for found in plugin.analyze_string(text):
                candidate = str(found)
                if not candidate or candidate in seen:
                    continue
                seen.add(candidate)
                if (
                    isinstance(plugin, self._entropy)
                    and plugin.calculate_shannon_entropy(candidate) <= plugin.entropy_limit
                ):
                    continue
                yield str(plugin.secret_type), candidate


@dataclass(frozen=True, slots=True)
class Finding:
    """One finding: a governed secret (path, fingerprint, encoding) or an ungoverned one (the
    detector's type), at a line. Never a value."""

    line: int
    kind: str  # "governed" or "ungoverned"
    secret: str | None = None
    fingerprint: str | None = None
    encoding: str | None = None
    type: str | None = None

    @property
    def suggestion(self) -> str:
        return GOVERNED_SUGGESTION if self.kind == "governed" else UNGOVERNED_SUGGESTION

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"line": self.line, "kind": self.kind}
        if self.kind == "governed":
            data.update(secret=self.secret, fingerprint=self.fingerprint, encoding=self.encoding)
        else:
            data["type"] = self.type
        data["suggestion"] = self.suggestion
        return data


@dataclass(frozen=True, slots=True)
class ScanResult:
    findings: tuple[Finding, ...]
    truncated: bool = False

    @property
    def governed(self) -> tuple[Finding, ...]:
        return tuple(finding for finding in self.findings if finding.kind == "governed")

    @property
    def ungoverned(self) -> tuple[Finding, ...]:
        return tuple(finding for finding in self.findings if finding.kind == "ungoverned")


def _lines_of(text: str, positions: Sequence[int], first_line: int) -> dict[int, int]:
    """The line number of each position (one pass over the text, counting newlines)."""
    lines: dict[int, int] = {}
    line, previous = first_line, 0
    for position in sorted(set(positions)):
        line += text.count("\n", previous, position)
        previous = position
        lines[position] = line
    return lines


def _occurrences(text: str, candidate: str) -> Iterator[int]:
    start = text.find(candidate)
    while start != -1:
        yield start
        start = text.find(candidate, start + len(candidate))


def scan_text(
    text: str,
    matcher: GovernedMatcher,
    detector: UngovernedDetector | None = None,
    *,
    first_line: int = 1,
    limit: int = MAX_FINDINGS,
) -> ScanResult:
    """Findings in ``text`` (from :func:`as_scan_text`), one per line and secret (governed) or
    line and type (ungoverned), in line order; at most ``limit`` of them.

    ``first_line`` is the line number of the text's first line (for a file scanned in parts)."""
    if limit < 1:
        raise ValueError("limit must be positive")
    governed: dict[tuple[int, int], tuple[int, str]] = {}  # (position, secret) -> (rank, encoding)
    for start, index, encoding in matcher.matches(text):
        rank = _ENCODINGS.index(encoding)
        key = (start, index)
        if key not in governed or rank < governed[key][0]:
            governed[key] = (rank, encoding)
    ungoverned: list[tuple[int, str]] = []
    if detector is not None:
        for secret_type, candidate in detector.candidates(text):
            if matcher.holds_governed(candidate):
                continue  # a governed value (or one of its forms) already reported as such
            ungoverned.extend((position, secret_type) for position in _occurrences(text, candidate))
    lines = _lines_of(text, [start for start, _ in governed] + [p for p, _ in ungoverned], first_line)
    best: dict[tuple[int, int], tuple[int, str]] = {}  # (line, secret) -> (rank, encoding)
    for (start, index), (rank, encoding) in governed.items():
        key = (lines[start], index)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, encoding)
    findings = [
        Finding(
            line=line,
            kind="governed",
            secret=matcher.paths[index],
            fingerprint=matcher.fingerprints[index],
            encoding=encoding,
        )
        for (line, index), (_, encoding) in best.items()
    ]
    by_line = sorted({(lines[position], kind) for position, kind in ungoverned})
    # A line already flagged by a plugin that knows the secret's kind (a GitHub token) is not
    # flagged again as a mere high-entropy string (often the same token, quoted).
    specific = {line for line, kind in by_line if kind not in _ENTROPY_TYPES}
    findings.extend(
        Finding(line=line, kind="ungoverned", type=secret_type)
        for line, secret_type in by_line
        if secret_type not in _ENTROPY_TYPES or line not in specific
    )
    findings.sort(key=lambda f: (f.line, f.kind, f.secret or "", f.type or ""))
    truncated = len(findings) > limit
    return ScanResult(findings=tuple(findings[:limit]), truncated=truncated)
