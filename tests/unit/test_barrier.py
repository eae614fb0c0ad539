"""The barrier and its keyring: ``tether.crypto.barrier`` and ``tether.crypto.keyring``."""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.clock import FrozenClock
from tether.crypto.barrier import Barrier
from tether.crypto.envelope import KEY_BYTES
from tether.crypto.keyring import Kek, Keyring, decode_keyring, encode_keyring
from tether.errors import CryptoError, DecryptionError, SealedError

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SECRET = b"s3cr3t-database-password"


def key_forms(key: bytes) -> list[str]:
    return [
        key.hex(),
        key.hex().upper(),
        base64.b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode(),
        base64.b64encode(key).decode().rstrip("="),
        repr(key),
    ]


# -- barrier: round trips and bindings --------------------------------------------------------


def test_barrier_round_trips_a_value(barrier: Barrier) -> None:
    value = barrier.encrypt("prod/db", 1, SECRET)
    assert value.kek_version == 1
    assert barrier.decrypt("prod/db", 1, value) == SECRET


def test_ciphertext_swapped_between_paths_fails(barrier: Barrier) -> None:
    value = barrier.encrypt("prod/db", 1, SECRET)
    with pytest.raises(DecryptionError):
        barrier.decrypt("prod/db2", 1, value)


def test_ciphertext_swapped_between_versions_fails(barrier: Barrier) -> None:
    v1 = barrier.encrypt("prod/db", 1, b"old")
    v2 = barrier.encrypt("prod/db", 2, b"new")
    with pytest.raises(DecryptionError):
        barrier.decrypt("prod/db", 2, v1)  # a rollback to the old value is detected
    with pytest.raises(DecryptionError):
        barrier.decrypt("prod/db", 1, v2)


def test_tampered_ciphertext_or_wrapped_key_fails(barrier: Barrier) -> None:
    value = barrier.encrypt("prod/db", 1, SECRET)
    last = len(value.ciphertext) - 1
    tampered_ct = replace(value, ciphertext=value.ciphertext[:last] + bytes([value.ciphertext[last] ^ 0x80]))
    tampered_wrap = replace(value, wrapped_dek=value.wrapped_dek[:20] + b"\0" + value.wrapped_dek[21:])
    for bad in (tampered_ct, tampered_wrap, replace(value, ciphertext=value.ciphertext[:10])):
        with pytest.raises(DecryptionError):
            barrier.decrypt("prod/db", 1, bad)


def test_value_claiming_an_unknown_kek_version_fails(barrier: Barrier) -> None:
    value = barrier.encrypt("prod/db", 1, SECRET)
    with pytest.raises(DecryptionError):
        barrier.decrypt("prod/db", 1, replace(value, kek_version=99))
    with pytest.raises(DecryptionError):
        barrier.rewrap("prod/db", 1, replace(value, kek_version=99))


def test_value_from_another_deployment_fails(barrier: Barrier) -> None:
    other = Barrier()
    other.unseal(Keyring.new(NOW))
    with pytest.raises(DecryptionError):
        barrier.decrypt("prod/db", 1, other.encrypt("prod/db", 1, SECRET))


def test_rewrap_changes_wrap_and_kek_version_but_not_ciphertext(barrier: Barrier) -> None:
    value = barrier.encrypt("prod/db", 3, SECRET)
    barrier.unseal(barrier.keyring.rotated(NOW))

    new = barrier.rewrap("prod/db", 3, value)

    assert new.kek_version == 2
    assert new.wrapped_dek != value.wrapped_dek
    assert new.ciphertext == value.ciphertext
    assert barrier.decrypt("prod/db", 3, new) == SECRET
    assert barrier.decrypt("prod/db", 3, value) == SECRET  # the old wrap stays readable until replaced


def test_rewrapped_value_is_still_bound_to_its_record(barrier: Barrier) -> None:
    value = barrier.encrypt("prod/db", 1, SECRET)
    barrier.unseal(barrier.keyring.rotated(NOW))
    new = barrier.rewrap("prod/db", 1, value)
    with pytest.raises(DecryptionError):
        barrier.decrypt("prod/other", 1, new)
    with pytest.raises(DecryptionError):
        barrier.rewrap("prod/other", 1, value)


def test_new_values_use_the_active_kek_after_rotation(barrier: Barrier) -> None:
    barrier.unseal(barrier.keyring.rotated(NOW).rotated(NOW))
    value = barrier.encrypt("prod/db", 1, SECRET)
    assert value.kek_version == 3
    assert barrier.has_kek(1)
    assert barrier.has_kek(3)
    assert not barrier.has_kek(4)


# -- seal -------------------------------------------------------------------------------------


def test_new_barrier_is_sealed_and_refuses_every_key_operation() -> None:
    barrier = Barrier()
    assert barrier.sealed
    with pytest.raises(SealedError):
        barrier.encrypt("prod/db", 1, SECRET)
    with pytest.raises(SealedError):
        _ = barrier.keyring
    with pytest.raises(SealedError):
        barrier.has_kek(1)


def test_sealed_barrier_refuses_to_decrypt_or_rewrap(barrier: Barrier) -> None:
    value = barrier.encrypt("prod/db", 1, SECRET)
    barrier.seal()
    assert barrier.sealed
    with pytest.raises(SealedError):
        barrier.decrypt("prod/db", 1, value)
    with pytest.raises(SealedError):
        barrier.rewrap("prod/db", 1, value)
    with pytest.raises(SealedError):
        barrier.encrypt("prod/db", 2, SECRET)


def test_unsealing_again_with_the_same_keyring_restores_access(barrier: Barrier) -> None:
    keyring = barrier.keyring
    value = barrier.encrypt("prod/db", 1, SECRET)
    barrier.seal()
    barrier.unseal(keyring)
    assert not barrier.sealed
    assert barrier.decrypt("prod/db", 1, value) == SECRET


# -- keyring ----------------------------------------------------------------------------------


def test_new_keyring_has_one_256_bit_version() -> None:
    keyring = Keyring.new(NOW)
    assert [k.version for k in keyring.keks] == [1]
    assert len(keyring.active.key) == KEY_BYTES
    assert keyring.active.created_at == NOW
    assert Keyring.new(NOW).active.key != keyring.active.key


def test_rotation_adds_a_fresh_active_version_and_keeps_the_old_ones() -> None:
    keyring = Keyring.new(NOW)
    later = FrozenClock(NOW).advance(3600)
    rotated = keyring.rotated(later)
    assert [k.version for k in rotated.keks] == [1, 2]
    assert rotated.active.version == 2
    assert rotated.active.created_at == later
    assert rotated.active.key != keyring.active.key
    assert rotated.get(1) == keyring.get(1)
    assert rotated.get(3) is None
    assert [k.version for k in keyring.keks] == [1]  # immutable: the original is unchanged


@pytest.mark.parametrize(
    "keks",
    [
        (),
        (Kek(0, os.urandom(32), NOW),),
        (Kek(2, os.urandom(32), NOW), Kek(1, os.urandom(32), NOW)),
        (Kek(1, os.urandom(32), NOW), Kek(1, os.urandom(32), NOW)),
        (Kek(1, os.urandom(16), NOW),),
    ],
    ids=["empty", "version-zero", "descending", "duplicate", "short-key"],
)
def test_keyring_refuses_malformed_key_sets(keks: tuple[Kek, ...]) -> None:
    with pytest.raises(CryptoError):
        Keyring(keks)


def test_keyring_round_trips_through_encoding_under_the_root_key() -> None:
    root = os.urandom(KEY_BYTES)
    keyring = Keyring.new(NOW).rotated(NOW)
    blob = encode_keyring(keyring, root)
    assert decode_keyring(blob, root) == keyring
    for kek in keyring.keks:
        assert kek.key not in blob
        assert base64.b64encode(kek.key) not in blob


def test_wrong_root_key_cannot_decode_the_keyring() -> None:
    blob = encode_keyring(Keyring.new(NOW), os.urandom(KEY_BYTES))
    with pytest.raises(DecryptionError):
        decode_keyring(blob, os.urandom(KEY_BYTES))


@pytest.mark.parametrize("root_key_length", [0, 16, 31, 33])
def test_root_key_of_wrong_length_cannot_decode_the_keyring(root_key_length: int) -> None:
    root = os.urandom(KEY_BYTES)
    blob = encode_keyring(Keyring.new(NOW), root)
    with pytest.raises(DecryptionError):
        decode_keyring(blob, root[:root_key_length] + os.urandom(max(0, root_key_length - KEY_BYTES)))


def test_tampered_or_truncated_keyring_blob_fails() -> None:
    root = os.urandom(KEY_BYTES)
    blob = encode_keyring(Keyring.new(NOW), root)
    for bad in (blob[:-1], blob[:20], b"", blob[:15] + bytes([blob[15] ^ 1]) + blob[16:]):
        with pytest.raises(DecryptionError):
            decode_keyring(bad, root)


def test_repr_of_kek_keyring_and_barrier_contains_no_key_bytes(barrier: Barrier) -> None:
    keyring = barrier.keyring.rotated(NOW)
    texts = [repr(keyring), str(keyring), repr(barrier), repr(barrier.encrypt("prod/db", 1, SECRET))]
    texts += [repr(k) for k in keyring.keks] + [str(k) for k in keyring.keks]
    texts.append(repr(keyring.keks))
    for kek in keyring.keks:
        for form in key_forms(kek.key):
            assert not any(form in text for text in texts), form
    assert "version" in repr(keyring.active)


@settings(max_examples=50, deadline=None)
@given(
    plaintext=st.binary(max_size=1024),
    path=st.text(alphabet="abz019_.-/", min_size=1, max_size=64),
    version=st.integers(min_value=1, max_value=10_000),
)
def test_barrier_round_trips_arbitrary_values_and_refuses_other_records(
    plaintext: bytes, path: str, version: int
) -> None:
    barrier = Barrier()
    barrier.unseal(Keyring.new(NOW))
    value = barrier.encrypt(path, version, plaintext)
    assert barrier.decrypt(path, version, value) == plaintext
    with pytest.raises(DecryptionError):
        barrier.decrypt(path + "x", version, value)
    with pytest.raises(DecryptionError):
        barrier.decrypt(path, version + 1, value)
