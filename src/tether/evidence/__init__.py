"""Evidence: what Tether can prove about secrets from its own knowledge — the sprawl scan
(governed values, and ungoverned secrets, found in text)."""

from tether.evidence.sprawl import (
    MAX_FINDINGS,
    MIN_SCAN_BYTES,
    Finding,
    GovernedMatcher,
    GovernedValue,
    ScanResult,
    UngovernedDetector,
    as_scan_text,
    scan_text,
)

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
