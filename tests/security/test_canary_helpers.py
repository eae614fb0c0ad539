"""The leak scanner itself must find what it looks for (else a clean scan proves nothing)."""

from __future__ import annotations

import base64

from tests.security.canaries import find_leaks, new_canary


def test_scanner_finds_every_encoding_at_any_offset() -> None:
    canary = new_canary("probe")
    for pad in range(3):
        blob = b"x" * pad + canary.encode() + b"y" * 5
        assert find_leaks(base64.b64encode(blob), [canary]), pad
        assert find_leaks(base64.urlsafe_b64encode(blob), [canary]), pad
    assert find_leaks(canary.encode().hex(), [canary])
    assert find_leaks(f"...{canary}...", [canary])
    assert find_leaks("nothing to see", [canary]) == []
