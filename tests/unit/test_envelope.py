"""AES-256-GCM envelope encryption of one value: ``tether.crypto.envelope``."""

from __future__ import annotations

import base64
import os
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.crypto.envelope import (
    KEY_BYTES,
    NONCE_BYTES,
    EncryptedValue,
    open_value,
    record_aad,
    rewrap,
    seal_value,
)
from tether.errors import DecryptionError

KEK = os.urandom(KEY_BYTES)
OTHER_KEK = os.urandom(KEY_BYTES)
PLAINTEXT = b"ghp_example-token-value"


def sealed(path: str = "prod/github/token", version: int = 1, plaintext: bytes = PLAINTEXT) -> EncryptedValue:
    return seal_value(plaintext, identity=record_aad(path, version), kek=KEK, kek_version=1)


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_seal_then_open_returns_the_plaintext() -> None:
    value = sealed()
    assert open_value(value, identity=record_aad("prod/github/token", 1), kek=KEK) == PLAINTEXT


def test_sealed_value_holds_no_plaintext_and_uses_fresh_keys_and_nonces() -> None:
    first, second = sealed(), sealed()
    assert PLAINTEXT not in first.ciphertext
    assert PLAINTEXT not in first.wrapped_dek
    assert first.ciphertext != second.ciphertext
    assert first.wrapped_dek != second.wrapped_dek
    assert first.ciphertext[:NONCE_BYTES] != second.ciphertext[:NONCE_BYTES]
    assert len(first.wrapped_dek) == NONCE_BYTES + KEY_BYTES + 16
    assert len(first.ciphertext) == NONCE_BYTES + len(PLAINTEXT) + 16


def test_empty_plaintext_round_trips() -> None:
    value = sealed(plaintext=b"")
    assert open_value(value, identity=record_aad("prod/github/token", 1), kek=KEK) == b""


def test_ciphertext_swapped_between_paths_fails() -> None:
    value = sealed("prod/a", 1)
    with pytest.raises(DecryptionError):
        open_value(value, identity=record_aad("prod/b", 1), kek=KEK)


def test_ciphertext_swapped_between_versions_fails() -> None:
    value = sealed("prod/a", 1)
    with pytest.raises(DecryptionError):
        open_value(value, identity=record_aad("prod/a", 2), kek=KEK)


def test_value_ciphertext_under_another_records_wrapped_key_fails() -> None:
    a, b = sealed("prod/a", 1), sealed("prod/a", 1)
    # Same identity, so each wrapped key unwraps; but the data key does not open the other ciphertext.
    with pytest.raises(DecryptionError):
        open_value(replace(a, ciphertext=b.ciphertext), identity=record_aad("prod/a", 1), kek=KEK)


def test_wrapped_key_moved_to_another_record_fails() -> None:
    a, b = sealed("prod/a", 1), sealed("prod/b", 1)
    with pytest.raises(DecryptionError):
        open_value(replace(b, wrapped_dek=a.wrapped_dek), identity=record_aad("prod/b", 1), kek=KEK)


def test_claimed_kek_version_is_bound_to_the_wrap() -> None:
    value = sealed()
    with pytest.raises(DecryptionError):
        open_value(replace(value, kek_version=2), identity=record_aad("prod/github/token", 1), kek=KEK)


def test_wrong_kek_fails() -> None:
    with pytest.raises(DecryptionError):
        open_value(sealed(), identity=record_aad("prod/github/token", 1), kek=OTHER_KEK)


@pytest.mark.parametrize("field", ["ciphertext", "wrapped_dek"])
def test_any_flipped_bit_fails_to_decrypt(field: str) -> None:
    value = sealed()
    data: bytes = getattr(value, field)
    identity = record_aad("prod/github/token", 1)
    for index in range(len(data)):
        with pytest.raises(DecryptionError):
            open_value(replace(value, **{field: flip(data, index)}), identity=identity, kek=KEK)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda v: replace(v, ciphertext=v.ciphertext[:-1]),
        lambda v: replace(v, ciphertext=v.ciphertext[: NONCE_BYTES + 15]),
        lambda v: replace(v, ciphertext=b""),
        lambda v: replace(v, ciphertext=v.ciphertext + b"\0"),
        lambda v: replace(v, wrapped_dek=v.wrapped_dek[:-1]),
        lambda v: replace(v, wrapped_dek=b""),
        lambda v: replace(v, wrapped_dek=v.wrapped_dek + b"\0"),
    ],
    ids=[
        "ciphertext-truncated",
        "ciphertext-shorter-than-tag",
        "ciphertext-empty",
        "ciphertext-extended",
        "wrap-truncated",
        "wrap-empty",
        "wrap-extended",
    ],
)
def test_truncated_or_extended_data_fails_with_decryption_error(mutate: object) -> None:
    value = mutate(sealed())  # type: ignore[operator]
    with pytest.raises(DecryptionError):
        open_value(value, identity=record_aad("prod/github/token", 1), kek=KEK)


def test_decryption_error_says_the_same_thing_for_every_cause() -> None:
    identity = record_aad("prod/github/token", 1)
    value = sealed()
    messages = set()
    for bad, kek in [
        (value, OTHER_KEK),
        (replace(value, ciphertext=flip(value.ciphertext, 20)), KEK),
        (replace(value, wrapped_dek=value.wrapped_dek[:5]), KEK),
        (replace(value, ciphertext=b""), KEK),
    ]:
        with pytest.raises(DecryptionError) as caught:
            open_value(bad, identity=identity, kek=kek)
        messages.add(str(caught.value))
    assert len(messages) == 1


def test_rewrap_changes_wrapped_key_and_kek_version_but_not_ciphertext() -> None:
    identity = record_aad("prod/github/token", 1)
    value = sealed()
    new = rewrap(value, identity=identity, old_kek=KEK, new_kek=OTHER_KEK, new_kek_version=2)
    assert new.kek_version == 2
    assert new.wrapped_dek != value.wrapped_dek
    assert new.ciphertext == value.ciphertext
    assert open_value(new, identity=identity, kek=OTHER_KEK) == PLAINTEXT
    with pytest.raises(DecryptionError):
        open_value(new, identity=identity, kek=KEK)


def test_rewrap_with_wrong_old_kek_or_identity_fails() -> None:
    value = sealed()
    with pytest.raises(DecryptionError):
        rewrap(
            value,
            identity=record_aad("prod/github/token", 1),
            old_kek=OTHER_KEK,
            new_kek=OTHER_KEK,
            new_kek_version=2,
        )
    with pytest.raises(DecryptionError):
        rewrap(value, identity=record_aad("prod/other", 1), old_kek=KEK, new_kek=OTHER_KEK, new_kek_version=2)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("a/b", 1), ("a/b", 2)),
        (("a/b", 1), ("a/c", 1)),
        (("a", 257), ("a\x00", 1)),  # no ambiguity from concatenation
        (("ab", 1), ("a", 1)),
    ],
)
def test_record_aad_differs_for_different_records(a: tuple[str, int], b: tuple[str, int]) -> None:
    assert record_aad(*a) != record_aad(*b)


def test_encrypted_value_repr_shows_no_key_or_ciphertext_bytes() -> None:
    value = sealed()
    text = repr(value)
    for secret in (value.wrapped_dek, value.ciphertext):
        assert secret.hex() not in text
        assert base64.b64encode(secret).decode() not in text
        assert repr(secret) not in text
    assert str(value) == text


@settings(max_examples=60, deadline=None)
@given(
    plaintext=st.binary(max_size=2048),
    path=st.text(min_size=1, max_size=256),
    version=st.integers(min_value=1, max_value=2**63 - 1),
)
def test_round_trip_of_arbitrary_bytes_and_identity(plaintext: bytes, path: str, version: int) -> None:
    identity = record_aad(path, version)
    value = seal_value(plaintext, identity=identity, kek=KEK, kek_version=1)
    assert open_value(value, identity=identity, kek=KEK) == plaintext
    with pytest.raises(DecryptionError):
        open_value(value, identity=record_aad(path, version + 1), kek=KEK)
