"""Tether's token-signing keys: stored encrypted under the root key, rotated with overlap."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from tether.audit.keys import AuditKeys, encode_audit_keys
from tether.clock import FrozenClock
from tether.errors import CryptoError, DecryptionError
from tether.identity.signing import (
    TOKEN_KEYS_META,
    TokenSigningKey,
    TokenSigningKeys,
    decode_token_keys,
    encode_token_keys,
    load_or_create_token_keys,
    rotate_token_keys,
)
from tether.identity.tokens import issue_access_token, verify_access_token
from tether.store.base import Storage
from tether.store.sqlite import open_sqlite

ROOT = os.urandom(32)
TD = "acme.test"
AGENT = "spiffe://acme.test/agent/bot"
JKT = "A" * 43


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Storage]:
    storage = open_sqlite(tmp_path / "tether.db")
    await storage.migrate()
    try:
        yield storage
    finally:
        await storage.close()


def test_public_jwks_lists_the_active_key_without_private_members(clock: FrozenClock) -> None:
    keys = TokenSigningKeys.generate(clock.now())
    jwks = keys.public_jwks(clock.now(), 600)
    assert jwks == {
        "keys": [{**keys.active.public.jwk, "kid": keys.active.kid, "alg": "Ed25519", "use": "sig"}]
    }
    assert "d" not in jwks["keys"][0]
    assert jwks["keys"][0]["kty"] == "OKP"


def test_repr_shows_no_key_material(clock: FrozenClock) -> None:
    keys = TokenSigningKeys.generate(clock.now())
    seed = keys.active.private_key.as_dict(private=True)["d"]
    assert seed not in repr(keys)
    assert seed not in repr(keys.active)


def test_key_for_finds_held_keys_only(clock: FrozenClock) -> None:
    keys = TokenSigningKeys.generate(clock.now())
    assert keys.key_for(keys.active.kid) is keys.active
    assert keys.key_for("unknown") is None


def test_an_empty_or_retired_key_set_is_refused(clock: FrozenClock) -> None:
    with pytest.raises(CryptoError):
        TokenSigningKeys([])
    retired = TokenSigningKey.generate(clock.now()).retired(clock.now())
    with pytest.raises(CryptoError):
        TokenSigningKeys([retired])


def test_rotation_keeps_old_keys_verifying_until_dropped(clock: FrozenClock) -> None:
    keys = TokenSigningKeys.generate(clock.now())
    old_token = issue_access_token(keys, agent_id=AGENT, jkt=JKT, trust_domain=TD, now=clock.now())
    rotated = keys.rotated(clock.advance(60))
    assert rotated.active.kid != keys.active.kid
    assert [v.kid for v in rotated.versions] == [keys.active.kid, rotated.active.kid]
    assert rotated.versions[0].retired_at == clock.now()
    # A token signed before the rotation still verifies, and new tokens use the new key.
    claims = verify_access_token(old_token.token, keys=rotated, trust_domain=TD, now=clock.now())
    assert claims.jti == old_token.jti
    new_token = issue_access_token(rotated, agent_id=AGENT, jkt=JKT, trust_domain=TD, now=clock.now())
    assert (
        verify_access_token(new_token.token, keys=rotated, trust_domain=TD, now=clock.now()).jti
        == new_token.jti
    )
    # A day and a bit later, a second rotation drops the long-retired key.
    again = rotated.rotated(clock.advance(timedelta(days=1, seconds=1).total_seconds()))
    assert [v.kid for v in again.versions] == [rotated.active.kid, again.active.kid]
    assert again.key_for(keys.active.kid) is None


def test_retired_keys_are_published_while_tokens_they_signed_may_live(clock: FrozenClock) -> None:
    keys = TokenSigningKeys.generate(clock.now())
    rotated = keys.rotated(clock.now())
    published = {k["kid"] for k in rotated.public_jwks(clock.now(), 600)["keys"]}
    assert published == {keys.active.kid, rotated.active.kid}
    # The published order puts the active key first.
    assert rotated.public_jwks(clock.now(), 600)["keys"][0]["kid"] == rotated.active.kid
    later = clock.advance(600 + 61)
    assert {k["kid"] for k in rotated.public_jwks(later, 600)["keys"]} == {rotated.active.kid}


def test_encoded_keys_round_trip_and_hold_no_plaintext_seed(clock: FrozenClock) -> None:
    keys = TokenSigningKeys.generate(clock.now()).rotated(clock.advance(5))
    blob = encode_token_keys(keys, ROOT)
    for version in keys.versions:
        assert version.private_key.as_dict(private=True)["d"].encode() not in blob
    decoded = decode_token_keys(blob, ROOT)
    assert [v.kid for v in decoded.versions] == [v.kid for v in keys.versions]
    assert [v.retired_at for v in decoded.versions] == [v.retired_at for v in keys.versions]
    assert [v.created_at for v in decoded.versions] == [v.created_at for v in keys.versions]


def test_wrong_root_key_or_tampering_fails_to_decrypt(clock: FrozenClock) -> None:
    blob = encode_token_keys(TokenSigningKeys.generate(clock.now()), ROOT)
    with pytest.raises(DecryptionError):
        decode_token_keys(blob, os.urandom(32))
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DecryptionError):
        decode_token_keys(tampered, ROOT)
    with pytest.raises(DecryptionError):
        decode_token_keys(blob[:10], ROOT)


def test_the_audit_keys_blob_cannot_stand_in_for_token_keys(clock: FrozenClock) -> None:
    # Same root key, same AES-GCM scheme: only the associated data tells them apart.
    audit_blob = encode_audit_keys(AuditKeys.generate(clock.now()), ROOT)
    with pytest.raises(DecryptionError):
        decode_token_keys(audit_blob, ROOT)


async def test_load_or_create_persists_and_reloads(store: Storage, clock: FrozenClock) -> None:
    first = await load_or_create_token_keys(store, ROOT, clock.now())
    again = await load_or_create_token_keys(store, ROOT, clock.now())
    assert [v.kid for v in again.versions] == [first.active.kid]
    token = issue_access_token(first, agent_id=AGENT, jkt=JKT, trust_domain=TD, now=clock.now())
    verify_access_token(token.token, keys=again, trust_domain=TD, now=clock.now())


async def test_load_with_a_wrong_root_key_fails(store: Storage, clock: FrozenClock) -> None:
    await load_or_create_token_keys(store, ROOT, clock.now())
    with pytest.raises(DecryptionError):
        await load_or_create_token_keys(store, os.urandom(32), clock.now())


async def test_concurrent_first_use_converges_on_one_key(store: Storage, clock: FrozenClock) -> None:
    results = await asyncio.gather(*(load_or_create_token_keys(store, ROOT, clock.now()) for _ in range(6)))
    assert len({keys.active.kid for keys in results}) == 1


async def test_rotate_persists_and_keeps_the_old_key(store: Storage, clock: FrozenClock) -> None:
    first = await load_or_create_token_keys(store, ROOT, clock.now())
    rotated = await rotate_token_keys(store, ROOT, clock.advance(10))
    reloaded = await load_or_create_token_keys(store, ROOT, clock.now())
    assert [v.kid for v in reloaded.versions] == [first.active.kid, rotated.active.kid]
    assert reloaded.active.kid == rotated.active.kid
    assert reloaded.versions[0].retired_at == clock.now()
    blob = await store.get_meta(TOKEN_KEYS_META)
    assert blob is not None
    assert rotated.active.private_key.as_dict(private=True)["d"].encode() not in blob


async def test_rotate_with_nothing_stored_creates_the_first_key(store: Storage, clock: FrozenClock) -> None:
    created = await rotate_token_keys(store, ROOT, clock.now())
    assert len(created.versions) == 1
    assert (await load_or_create_token_keys(store, ROOT, clock.now())).active.kid == created.active.kid


async def test_concurrent_rotations_lose_no_key(store: Storage, clock: FrozenClock) -> None:
    first = await load_or_create_token_keys(store, ROOT, clock.now())
    results = await asyncio.gather(*(rotate_token_keys(store, ROOT, clock.now()) for _ in range(3)))
    stored = await load_or_create_token_keys(store, ROOT, clock.now())
    kids = {v.kid for v in stored.versions}
    assert first.active.kid in kids
    assert {r.active.kid for r in results} <= kids
    assert len(stored.versions) == 4
