"""The sprawl scan's pure core: every form of a governed value is found and named by path and
fingerprint (never the value), ungoverned secrets are found by detect-secrets' plugins, and the
CLI's reader keeps memory bounded without losing a value cut by a part boundary."""

from __future__ import annotations

import base64
import io
import json
from urllib.parse import quote, quote_plus

import pytest

from tests.security.canaries import find_leaks, new_canary
from tether.broker.scan import Document, ScanLimiter, ScanLimits
from tether.cli.scan import parts_of
from tether.errors import InvalidInputError, RateLimitedError
from tether.evidence import (
    MIN_SCAN_BYTES,
    GovernedMatcher,
    GovernedValue,
    UngovernedDetector,
    as_scan_text,
    scan_text,
)

CANARY = new_canary("scan-core")
VALUE = (CANARY + "/p+q").encode()  # characters that URL-encoding changes
OTHER = new_canary("scan-other").encode()
FINGERPRINT = "hmac-sha256:" + "ab" * 32


def _matcher(*extra: GovernedValue) -> GovernedMatcher:
    return GovernedMatcher(
        [
            GovernedValue("prod/db/password", FINGERPRINT, VALUE),
            GovernedValue("prod/other", "hmac-sha256:00", OTHER),
            *extra,
        ]
    )


def _scan(text: bytes, detector: UngovernedDetector | None = None, **kwargs: int):  # type: ignore[no-untyped-def]
    with _matcher() as matcher:
        return scan_text(as_scan_text(text), matcher, detector, **kwargs)


def _forms() -> dict[str, tuple[bytes, str]]:
    forms = {
        "plain": (VALUE, "plain"),
        "hex": (VALUE.hex().encode(), "hex"),
        "HEX": (VALUE.hex().upper().encode(), "hex"),
        "quote": (quote(VALUE, safe="").encode(), "url"),
        "quote_plus": (quote_plus(VALUE.decode(), safe="").encode(), "url"),
        "every-byte": ("".join(f"%{b:02X}" for b in VALUE).encode(), "url"),
        "base64": (base64.b64encode(VALUE), "base64"),
        "base64url": (base64.urlsafe_b64encode(VALUE).rstrip(b"="), "base64"),
    }
    for offset in range(3):  # embedded in a larger base64 text at each alignment
        forms[f"base64-at-{offset}"] = (base64.b64encode(b"p" * offset + VALUE + b"suffix"), "base64")
    return forms


@pytest.mark.parametrize("name", list(_forms()))
def test_every_form_of_a_governed_value_is_found_with_its_path_and_fingerprint(name: str) -> None:
    form, encoding = _forms()[name]
    text = b"first line\nsecond line\nconfig = " + form + b" # here\nlast\n"
    result = _scan(text)
    assert [(f.line, f.kind, f.secret, f.fingerprint, f.encoding) for f in result.findings] == [
        (3, "governed", "prod/db/password", FINGERPRINT, encoding)
    ]


def test_findings_never_carry_the_value_or_the_matched_text() -> None:
    text = b"a=" + VALUE + b"\nb=" + base64.b64encode(VALUE) + b"\nc=" + VALUE.hex().encode() + b"\n"
    result = _scan(text, UngovernedDetector())
    blob = json.dumps([finding.to_json() for finding in result.findings])
    assert len(result.governed) == 3
    assert find_leaks(blob, [CANARY, VALUE.decode()]) == []
    assert VALUE.decode() not in repr(result)
    assert VALUE.decode() not in repr(_matcher())


def test_a_value_not_in_the_text_is_never_reported() -> None:
    # Only OTHER's forms are sent: VALUE is not confirmed, not even by a near miss.
    text = OTHER + b"\n" + VALUE[:-1] + b"\n" + VALUE[1:] + b"\n"
    result = _scan(text)
    assert {f.secret for f in result.findings} == {"prod/other"}


def test_line_numbers_count_from_first_line_and_one_finding_per_line_and_secret() -> None:
    text = b"x\n" + VALUE + b" and again " + VALUE + b" " + base64.b64encode(VALUE) + b"\n\n" + OTHER
    result = _scan(text, first_line=100)
    assert [(f.line, f.secret, f.encoding) for f in result.findings] == [
        (101, "prod/db/password", "plain"),
        (103, "prod/other", "plain"),
    ]


def test_findings_are_capped_and_say_so() -> None:
    text = b"\n".join([VALUE] * 20)
    result = _scan(text, limit=5)
    assert len(result.findings) == 5
    assert result.truncated


def test_short_values_are_not_looked_for_and_are_named() -> None:
    short = GovernedValue("dev/pin", "hmac-sha256:11", b"1234")
    assert len(short.value) < MIN_SCAN_BYTES
    with _matcher(short) as matcher:
        assert matcher.skipped_short == ["dev/pin"]
        assert matcher.secret_count == 2
        assert scan_text(as_scan_text(b"pin 1234\n"), matcher).findings == ()


def test_closing_the_matcher_drops_every_form() -> None:
    matcher = _matcher()
    assert scan_text(as_scan_text(VALUE), matcher).findings
    matcher.close()
    assert scan_text(as_scan_text(VALUE), matcher).findings == ()


def test_non_utf8_bytes_around_a_value_do_not_hide_it() -> None:
    result = _scan(b"\xff\xfe junk " + VALUE + b" \x80\n")
    assert [f.secret for f in result.findings] == ["prod/db/password"]


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "AWS Access Key"),
        (b'token = "ghp_' + b"a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8" + b'"', "GitHub Token"),
        (b"-----BEGIN RSA PRIVATE KEY-----", "Private Key"),
        (b"url = https://admin:hunter2pass@db.internal/x", "Basic Auth Credentials"),
    ],
)
def test_ungoverned_secrets_are_found_by_detect_secrets_plugins(line: bytes, kind: str) -> None:
    result = _scan(b"# config\n" + line + b"\n", UngovernedDetector())
    found = [(f.line, f.kind, f.type) for f in result.findings]
    assert (2, "ungoverned", kind) in found
    finding = next(f for f in result.findings if f.type == kind)
    assert "put it in Tether" in finding.to_json()["suggestion"]
    assert finding.secret is None
    assert finding.fingerprint is None


def test_a_governed_value_is_not_reported_again_as_ungoverned() -> None:
    high_entropy = GovernedValue("prod/api/key", "hmac-sha256:22", b"Zx9Qw3Er7Ty1Ui5Op8As2Df6Gh0Jk4Lz")
    with _matcher(high_entropy) as matcher:
        text = b'key = "' + high_entropy.value + b'"\n'
        result = scan_text(as_scan_text(text), matcher, UngovernedDetector())
    assert [(f.kind, f.secret) for f in result.findings] == [("governed", "prod/api/key")]


def test_parts_keep_whole_lines_and_count_them() -> None:
    data = b"".join(b"line %d\n" % i for i in range(1, 1001))
    parts = list(parts_of(io.BytesIO(data), part_bytes=1024, overlap=64))
    assert b"".join(part for _, part in parts) == data
    for first_line, part in parts:
        assert part.startswith(b"line %d\n" % first_line)
        assert len(part) < 1024 + 20


def test_a_value_cut_by_a_long_line_part_boundary_is_still_found() -> None:
    for cut in range(0, len(VALUE) + 1, 7):
        line = b"a" * (4096 - cut) + VALUE + b"b" * 5000
        data = b"header\n" + line + b"\nfooter\n"
        parts = list(parts_of(io.BytesIO(data), part_bytes=4096, overlap=256))
        assert max(len(part) for _, part in parts) <= 2 * 4096 + 256
        lines = set()
        with _matcher() as matcher:
            for first_line, part in parts:
                for finding in scan_text(as_scan_text(part), matcher, first_line=first_line).findings:
                    lines.add((finding.line, finding.secret))
        assert lines == {(2, "prod/db/password")}, cut


def test_the_limiter_refuses_past_the_limit_until_the_window_ends() -> None:
    limiter = ScanLimiter(ScanLimits(window_seconds=60, per_operator=2))
    limiter.admit("op-1", 120.0)
    limiter.admit("op-1", 130.0)
    with pytest.raises(RateLimitedError) as refused:
        limiter.admit("op-1", 150.0)
    assert refused.value.retry_after_seconds == 30
    assert "too many scans" in str(refused.value)
    limiter.admit("op-2", 150.0)  # another operator has its own count
    limiter.admit("op-1", 180.0)  # a new window


@pytest.mark.parametrize(("name", "first_line"), [("", 1), ("a\nb", 1), ("x" * 1025, 1), ("ok", 0)])
def test_a_bad_document_is_refused(name: str, first_line: int) -> None:
    with pytest.raises(InvalidInputError):
        Document(name, "text", first_line)


def test_scan_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ScanLimits(per_operator=0)


def test_a_known_kind_of_secret_is_not_reported_again_as_high_entropy() -> None:
    token = b'"ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"'
    result = _scan(
        b"token = " + token + b"\nother = 'Zx9Qw3Er7Ty1Ui5Op8As2Df6Gh0Jk4LzQ'\n", UngovernedDetector()
    )
    assert [(f.line, f.type) for f in result.findings] == [
        (1, "GitHub Token"),
        (2, "Base64 High Entropy String"),
    ]
