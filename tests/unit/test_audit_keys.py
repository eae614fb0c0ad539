"""The deployment's audit keys: generated once, stored encrypted under the root key."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tether.audit.keys import (
    AUDIT_KEYS_META,
    AuditKeys,
    decode_audit_keys,
    encode_audit_keys,
    key_id_of,
    load_or_create_audit_keys,
    public_jwk,
    public_key_from_jwk,
)
from tether.clock import FrozenClock
from tether.crypto.keyring import Keyring, decode_keyring, encode_keyring
from tether.errors import CryptoError, DecryptionError
from tether.store.base import Storage
from tether.store.sqlite import open_sqlite

ROOT = os.urandom(32)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Storage]:
    storage = open_sqlite(tmp_path / "tether.db")
    await storage.migrate()
    try:
        yield storage
    finally:
        await storage.close()


async def test_keys_are_created_once_and_reloaded(store: Storage, clock: FrozenClock) -> None:
    first = await load_or_create_audit_keys(store, ROOT, clock.now())
    again = await load_or_create_audit_keys(store, ROOT, clock.now())
    assert first.key_id == again.key_id
    assert first.public_key == again.public_key
    assert first.fingerprinter.fingerprint("v") == again.fingerprinter.fingerprint("v")


async def test_concurrent_first_use_converges_on_one_key(store: Storage, clock: FrozenClock) -> None:
    keys = await asyncio.gather(*(load_or_create_audit_keys(store, ROOT, clock.now()) for _ in range(8)))
    assert len({k.key_id for k in keys}) == 1
    assert len({k.fingerprinter.fingerprint("v") for k in keys}) == 1


async def test_stored_keys_are_encrypted_under_the_root_key(store: Storage, clock: FrozenClock) -> None:
    keys = await load_or_create_audit_keys(store, ROOT, clock.now())
    blob = await store.get_meta(AUDIT_KEYS_META)
    assert blob is not None
    assert keys.public_key not in blob
    with pytest.raises(DecryptionError):
        await load_or_create_audit_keys(store, os.urandom(32), clock.now())


def test_audit_key_blob_and_keyring_blob_cannot_stand_in_for_each_other(clock: FrozenClock) -> None:
    keys_blob = encode_audit_keys(AuditKeys.generate(clock.now()), ROOT)
    keyring_blob = encode_keyring(Keyring.new(clock.now()), ROOT)
    with pytest.raises(DecryptionError):
        decode_keyring(keys_blob, ROOT)
    with pytest.raises(DecryptionError):
        decode_audit_keys(keyring_blob, ROOT)
    with pytest.raises(DecryptionError):
        decode_audit_keys(keys_blob[:-1] + bytes([keys_blob[-1] ^ 1]), ROOT)


def test_each_deployment_has_its_own_keys(clock: FrozenClock) -> None:
    a, b = AuditKeys.generate(clock.now()), AuditKeys.generate(clock.now())
    assert a.key_id != b.key_id
    assert a.fingerprinter.fingerprint("same value") != b.fingerprinter.fingerprint("same value")
    restored = decode_audit_keys(encode_audit_keys(a, ROOT), ROOT)
    assert restored.fingerprinter.fingerprint("same value") == a.fingerprinter.fingerprint("same value")
    assert restored.key_id == a.key_id


def test_keys_never_print_their_material(clock: FrozenClock) -> None:
    keys = AuditKeys.generate(clock.now())
    assert repr(keys) == f"AuditKeys(key_id={keys.key_id!r})"
    jwk = keys.public_jwk()
    assert set(jwk) == {"kty", "crv", "x", "kid"}
    assert public_key_from_jwk({k: v for k, v in jwk.items() if k != "kid"}) == keys.public_key
    assert key_id_of(keys.public_key) == keys.key_id


def test_key_id_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.3: the thumbprint of its Ed25519 example key.
    raw = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    assert public_jwk(raw)["x"] == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert key_id_of(raw) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "EC", "crv": "P-256", "x": "AA"},
        {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},
        {"kty": "OKP", "crv": "Ed25519"},
        {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "d": "x"},
        "not a dict",
    ],
)
def test_bad_verification_keys_are_refused(jwk: object) -> None:
    with pytest.raises(CryptoError):
        public_key_from_jwk(jwk)
