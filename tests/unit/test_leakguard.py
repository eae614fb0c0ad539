"""The leak guard: no form of the injected secret survives, however the answer is chunked."""

from __future__ import annotations

import base64
import urllib.parse

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tether.egress.leakguard import REDACTED, LeakGuard, forget_guards, guard_for, secret_forms

SECRET = b"ghp_9f8e7d6c5b4a39281706"


def encodings_of(value: bytes) -> list[bytes]:
    return [
        value,
        base64.b64encode(value),
        base64.b64encode(value).rstrip(b"="),
        base64.urlsafe_b64encode(value),
        base64.urlsafe_b64encode(value).rstrip(b"="),
        base64.b64encode(b"x" + value + b"yz"),  # embedded at another alignment
        base64.b64encode(b"xy" + value),
        urllib.parse.quote(value, safe="").encode(),
        urllib.parse.quote_plus(value).encode(),
        "".join(f"%{b:02x}" for b in value).encode(),
        value.hex().encode(),
        value.hex().upper().encode(),
    ]


def chunked_redaction(guard: LeakGuard, body: bytes, cuts: list[int]) -> tuple[bytes, int]:
    redactor = guard.stream()
    out = []
    start = 0
    for cut in sorted(set(cuts)):
        out.append(redactor.feed(body[start:cut]))
        start = cut
    out.append(redactor.feed(body[start:]))
    out.append(redactor.finish())
    return b"".join(out), redactor.count


def test_each_encoding_is_redacted() -> None:
    guard = LeakGuard(SECRET, [b"Bearer " + SECRET])
    for form in encodings_of(SECRET) + encodings_of(b"Bearer " + SECRET):
        body = b"<<" + form + b">>"
        redacted, count = guard.redact(body)
        assert count >= 1, form
        assert SECRET not in redacted
        assert REDACTED in redacted


def test_basic_credentials_are_redacted() -> None:
    guard = LeakGuard(SECRET, [b"Basic " + base64.b64encode(b"bot:" + SECRET), b"bot:" + SECRET])
    header = b"Basic " + base64.b64encode(b"bot:" + SECRET)
    redacted, count = guard.redact(b"you sent: " + header)
    assert count == 1
    assert redacted == b"you sent: " + REDACTED


def test_text_without_the_secret_is_unchanged() -> None:
    guard = LeakGuard(SECRET)
    body = b'{"items": [1, 2, 3], "token": "ghp_other"}' * 100
    assert guard.redact(body) == (body, 0)
    assert chunked_redaction(guard, body, [1, 17, 500]) == (body, 0)


def test_the_guard_never_shows_its_forms() -> None:
    guard = LeakGuard(SECRET)
    assert SECRET.decode() not in repr(guard)
    assert all(form for form in secret_forms(SECRET))


secrets = st.binary(min_size=8, max_size=48)
filler = st.binary(max_size=64).map(lambda b: b.replace(b"\x00", b"."))


@settings(max_examples=200, deadline=None)
@given(
    secret=secrets,
    pieces=st.lists(st.tuples(filler, st.integers(min_value=0, max_value=11)), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_no_form_survives_any_chunking(
    secret: bytes, pieces: list[tuple[bytes, int]], cuts: list[int]
) -> None:
    assume(b"[" not in secret and b"]" not in secret)  # the marker itself cannot rebuild it
    guard = LeakGuard(secret, [b"Bearer " + secret])
    forms = encodings_of(secret)
    body = b"".join(fill + forms[which] for fill, which in pieces)
    whole, whole_count = guard.redact(body)
    streamed, streamed_count = chunked_redaction(guard, body, [c % (len(body) + 1) for c in cuts])
    assert streamed == whole  # chunking never changes the result
    assert streamed_count == whole_count >= 1
    for form in (secret, base64.b64encode(secret).rstrip(b"="), secret.hex().encode()):
        assert form not in streamed


def test_a_guard_is_reused_for_the_same_value_and_renderings_only() -> None:
    forget_guards()
    first = guard_for(b"s3cret-value-1", [b"Bearer s3cret-value-1"])
    assert guard_for(b"s3cret-value-1", [b"Bearer s3cret-value-1"]) is first
    assert guard_for(b"s3cret-value-2", [b"Bearer s3cret-value-2"]) is not first
    # The parts are length-prefixed: moving bytes between value and rendering is another key.
    assert guard_for(b"s3cret-value-1Bearer", [b" s3cret-value-1"]) is not first
    assert first.redact(b"x s3cret-value-1 y") == (b"x [REDACTED] y", 1)


def test_forgetting_guards_drops_every_kept_guard() -> None:
    first = guard_for(b"s3cret-value-3")
    forget_guards()
    assert guard_for(b"s3cret-value-3") is not first
