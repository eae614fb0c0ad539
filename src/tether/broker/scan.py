"""The sprawl scan for operators (``scanner``, ``admin``): ``POST /v1/scan``, ``tether scan``.

For each scan, every governed value (the current version of every live secret) is decrypted
through the barrier, fingerprinted with the deployment's audit key, and put into one
Aho-Corasick automaton (:mod:`tether.evidence.sprawl`); the text the caller sent is matched
against it, and the automaton and the values are dropped when the scan ends. Nothing is written
but the ``scan.run`` audit event: counts, and the paths and fingerprints of what was found.

The answer names only secrets whose forms are *in the text the caller sent*: it cannot confirm
a value that the caller did not send. Guessing values through it is still an oracle, so scans
are counted per operator in fixed windows (:class:`ScanLimits`) and refused past the limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from tether.audit import AuditLog
from tether.broker.access import authorize, operator_actor
from tether.broker.secrets import SecretService
from tether.clock import Clock
from tether.domain.operators import OperatorRecord, Permission
from tether.errors import InvalidInputError, RateLimitedError, SealedError
from tether.evidence.sprawl import (
    MAX_FINDINGS,
    Finding,
    GovernedMatcher,
    GovernedValue,
    UngovernedDetector,
    as_scan_text,
    scan_text,
)
from tether.store.base import Storage

__all__ = ["Document", "DocumentReport", "ScanLimiter", "ScanLimits", "ScanReport", "ScanService"]

#: Paths and fingerprints one ``scan.run`` event lists at most.
MAX_AUDITED_SECRETS: Final = 100
MAX_DOCUMENT_NAME: Final = 1024
#: Findings one scan answers with at most, over all its documents (each has its own cap too).
MAX_SCAN_FINDINGS: Final = 10_000
_PAGE: Final = 500
_RESOURCE: Final = "scan:text"


@dataclass(frozen=True, slots=True)
class ScanLimits:
    """Bounds of one scan request and how many an operator may make per window."""

    window_seconds: int = 60
    per_operator: int = 120
    max_text_bytes: int = 1024 * 1024
    max_documents: int = 1000

    def __post_init__(self) -> None:
        if min(self.window_seconds, self.per_operator, self.max_text_bytes, self.max_documents) < 1:
            raise ValueError("scan limits must be positive")


class ScanLimiter:
    """Scans per operator in fixed windows (one process: with N workers a limit applies N times)."""

    MAX_KEYS: Final = 10_000

    def __init__(self, limits: ScanLimits) -> None:
        self.limits = limits
        self._counts: dict[str, tuple[int, int]] = {}

    def admit(self, operator_id: str, now: float) -> None:
        """Count one scan of ``operator_id``; :class:`RateLimitedError` past the limit."""
        window = int(now // self.limits.window_seconds)
        seen_window, count = self._counts.get(operator_id, (window, 0))
        if seen_window != window:
            count = 0
        if count >= self.limits.per_operator:
            retry = max(1, int((window + 1) * self.limits.window_seconds - now))
            exc = RateLimitedError(retry)
            exc.args = (f"too many scans; retry after {retry} seconds",)
            raise exc
        if len(self._counts) >= self.MAX_KEYS and operator_id not in self._counts:
            self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
            if len(self._counts) >= self.MAX_KEYS:
                self._counts.clear()
        self._counts[operator_id] = (window, count + 1)


@dataclass(frozen=True, slots=True)
class Document:
    """One text to scan. ``name`` labels its findings (a file path, ``prompt``); ``first_line``
    is the line number of its first line (a file sent in parts)."""

    name: str
    text: str
    first_line: int = 1

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > MAX_DOCUMENT_NAME or any(ord(c) < 32 for c in self.name):
            raise InvalidInputError(
                f"a document name must be 1-{MAX_DOCUMENT_NAME} characters without control characters",
                field="name",
            )
        if self.first_line < 1:
            raise InvalidInputError("first_line must be 1 or more", field="first_line")


@dataclass(frozen=True, slots=True)
class DocumentReport:
    name: str
    findings: tuple[Finding, ...]
    truncated: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "findings": [finding.to_json() for finding in self.findings],
            "truncated": self.truncated,
        }


@dataclass(frozen=True, slots=True)
class ScanReport:
    """What one scan found. ``secrets_scanned``: governed values looked for; ``secrets_too_short``:
    governed values too short to look for (named in the notes, by count only)."""

    documents: tuple[DocumentReport, ...]
    scanned_bytes: int
    secrets_scanned: int
    secrets_too_short: int

    @property
    def governed(self) -> int:
        return sum(1 for doc in self.documents for f in doc.findings if f.kind == "governed")

    @property
    def ungoverned(self) -> int:
        return sum(1 for doc in self.documents for f in doc.findings if f.kind == "ungoverned")

    def to_json(self) -> dict[str, Any]:
        return {
            "found": bool(self.governed or self.ungoverned),
            "governed": self.governed,
            "ungoverned": self.ungoverned,
            "scanned_bytes": self.scanned_bytes,
            "secrets_scanned": self.secrets_scanned,
            "secrets_too_short": self.secrets_too_short,
            "documents": [doc.to_json() for doc in self.documents],
        }


def _scan_all(
    values: list[GovernedValue], documents: Sequence[Document], ungoverned: bool
) -> tuple[list[DocumentReport], int, int]:
    """Build the automaton, scan every document, drop the automaton (runs in a worker thread)."""
    detector = UngovernedDetector() if ungoverned else None
    with GovernedMatcher(values) as matcher:
        values.clear()
        reports = []
        remaining = MAX_SCAN_FINDINGS
        for document in documents:
            result = scan_text(
                as_scan_text(document.text.encode("utf-8", "replace")),
                matcher,
                detector,
                first_line=document.first_line,
                limit=max(1, min(MAX_FINDINGS, remaining)),
            )
            findings = result.findings[: max(0, remaining)]
            truncated = result.truncated or len(findings) < len(result.findings)
            remaining -= len(findings)
            reports.append(DocumentReport(document.name, findings, truncated))
        return reports, matcher.secret_count, len(matcher.skipped_short)


class ScanService:
    """Sprawl scans of text sent by operators with ``scan.run`` (scanners, admins)."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        clock: Clock,
        secrets: SecretService,
        limiter: ScanLimiter,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._secrets = secrets
        self._limiter = limiter

    async def scan(
        self, actor: OperatorRecord, documents: Sequence[Document], *, ungoverned: bool = True
    ) -> ScanReport:
        """Find governed values (and, with ``ungoverned``, other secrets) in ``documents``."""
        await authorize(self._audit, actor, Permission.SCAN_RUN, _RESOURCE)
        limits = self._limiter.limits
        if not documents:
            raise InvalidInputError("send at least one document to scan", field="documents")
        if len(documents) > limits.max_documents:
            raise InvalidInputError(f"at most {limits.max_documents} documents per scan", field="documents")
        scanned = sum(len(document.text.encode("utf-8", "replace")) for document in documents)
        if scanned > limits.max_text_bytes:
            raise InvalidInputError(
                f"at most {limits.max_text_bytes} bytes of text per scan (send large files in parts)",
                field="documents",
            )
        self._limiter.admit(actor.id, self._clock.now().timestamp())
        values = await self._governed_values()
        try:
            reports, secret_count, too_short = await asyncio.to_thread(
                _scan_all, values, documents, ungoverned
            )
        finally:
            values.clear()
        report = ScanReport(
            documents=tuple(reports),
            scanned_bytes=scanned,
            secrets_scanned=secret_count,
            secrets_too_short=too_short,
        )
        await self._audit.record(
            "scan.run", operator_actor(actor), resource=_RESOURCE, data=_audit_data(report)
        )
        return report

    async def _governed_values(self) -> list[GovernedValue]:
        """The current value of every live secret, with its fingerprint (unsealed only)."""
        if self._audit.keys is None:
            raise SealedError("Tether is sealed: the scan is unavailable until it is unsealed")
        fingerprinter = self._audit.fingerprinter
        values: list[GovernedValue] = []
        after: str | None = None
        try:
            while True:
                page = await self._storage.list_secrets("", after=after, limit=_PAGE)
                for record in page:
                    stored = await self._storage.read_secret_value(record.path)
                    if stored is None:  # deleted since the page was read
                        continue
                    _, value = await self._secrets.decrypt_stored(stored)
                    values.append(GovernedValue(record.path, fingerprinter.fingerprint(value), value))
                if len(page) < _PAGE:
                    return values
                after = page[-1].path
        except BaseException:
            values.clear()
            raise


def _audit_data(report: ScanReport) -> dict[str, object]:
    found: dict[str, str] = {}
    for document in report.documents:
        for finding in document.findings:
            if finding.kind == "governed" and finding.secret and finding.fingerprint:
                found[finding.secret] = finding.fingerprint
    paths = sorted(found)[:MAX_AUDITED_SECRETS]
    return {
        "documents": len(report.documents),
        "scanned_bytes": report.scanned_bytes,
        "secrets_scanned": report.secrets_scanned,
        "governed_findings": report.governed,
        "ungoverned_findings": report.ungoverned,
        "secrets_found": [{"secret": path, "fingerprint": found[path]} for path in paths],
        "secrets_found_total": len(found),
    }
