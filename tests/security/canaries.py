"""Canary values and every common encoding of them, for leak scans."""

from __future__ import annotations

import base64
import secrets
import urllib.parse

ISSUED: list[str] = []
"""Every canary issued in this test process; the suite-wide audit scan looks for each."""


def new_canary(label: str) -> str:
    """A unique, recognisable value; random so it cannot appear by accident."""
    value = f"CANARY-{label}-{secrets.token_hex(12)}"
    ISSUED.append(value)
    return value


def _b64_forms(data: bytes) -> set[str]:
    """Base64 of ``data`` at all three alignments inside a larger blob: the stable middle."""
    forms: set[str] = set()
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * pad + data).decode()
            # Drop the characters that depend on neighbouring bytes (start and end).
            start = (pad * 8 + 5) // 6 + (1 if pad else 0)
            forms.add(encoded[start : len(encoded) - 4])
    return {form for form in forms if len(form) >= 16}


def encodings(value: str) -> dict[str, set[str]]:
    data = value.encode()
    return {
        "plain": {value},
        "url": {urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)},
        "hex": {data.hex(), data.hex().upper()},
        "base64": _b64_forms(data),
    }


def find_leaks(haystack: bytes | str, canaries: list[str]) -> list[str]:
    """Names of the canary forms found in ``haystack``."""
    text = haystack.decode("latin-1") if isinstance(haystack, bytes) else haystack
    found = []
    for canary in canaries:
        for kind, forms in encodings(canary).items():
            if any(form in text for form in forms):
                found.append(f"{canary[:20]}… as {kind}")
    return found
