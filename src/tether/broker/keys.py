"""The keyring's life: initialise, unseal, seal, rotate and rewrap."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tether.clock import Clock
from tether.crypto.barrier import Barrier
from tether.crypto.keyprovider import KeyProvider, UnsafeDevKeyProvider
from tether.crypto.keyring import Keyring, decode_keyring, encode_keyring
from tether.errors import ConflictError, CryptoError, DecryptionError, SealedError
from tether.store.base import Storage

__all__ = ["KEYRING_META", "KeyService", "RotationResult"]

KEYRING_META = "keyring"
REWRAP_BATCH = 256


@dataclass(frozen=True, slots=True)
class RotationResult:
    kek_version: int
    rewrapped: int


class KeyService:
    """Owns the barrier's keys. The root key is held only while unsealed."""

    def __init__(self, storage: Storage, barrier: Barrier, provider: KeyProvider, clock: Clock) -> None:
        self._storage = storage
        self._barrier = barrier
        self._provider = provider
        self._clock = clock
        self._root_key: bytes | None = None
        self._keyring_blob: bytes | None = None
        # Bumped on every seal: work that started before a seal must not re-open the barrier.
        self._generation = 0

    @property
    def provider_name(self) -> str:
        return self._provider.name

    async def initialized(self) -> bool:
        return await self._storage.get_meta(KEYRING_META) is not None

    async def initialize(self) -> bool:
        """Create the keyring if the store has none. Returns True if it was created.

        If a keyring exists, the provider's root key must open it: starting a store with
        the wrong key is an error, never a silent re-initialisation.
        """
        if isinstance(self._provider, UnsafeDevKeyProvider):
            self._provider.create_if_missing()
        root_key = self._provider.root_key()
        blob = await self._storage.get_meta(KEYRING_META)
        if blob is None:
            keyring = Keyring.new(self._clock.now())
            blob = encode_keyring(keyring, root_key)
            try:
                await self._storage.put_meta(KEYRING_META, blob, expected=None)
            except ConflictError:
                return await self.initialize()  # another node won the race; open theirs
            self._open(keyring, root_key, blob)
            return True
        self._open(decode_keyring(blob, root_key), root_key, blob)
        return False

    async def forget_new_keyring(self) -> None:
        """Undo :meth:`initialize` after a failed ``tether init`` (before any operator exists),
        so that init can be run again instead of leaving a keyring nobody can open."""
        if self._keyring_blob is not None:
            await self._storage.delete_meta(KEYRING_META, expected=self._keyring_blob)
        self.seal()

    def _open(self, keyring: Keyring, root_key: bytes, blob: bytes) -> None:
        self._root_key = root_key
        self._keyring_blob = blob
        self._barrier.unseal(keyring)

    async def unseal(self, root_key: bytes | None = None) -> None:
        """Open the keyring with ``root_key`` or, if None, the configured provider's key."""
        key = root_key if root_key is not None else self._provider.root_key()
        generation = self._generation
        blob = await self._storage.get_meta(KEYRING_META)
        if blob is None:
            raise CryptoError("this store has no keyring; run `tether init` first")
        keyring = decode_keyring(blob, key)
        if generation != self._generation:
            raise SealedError("sealed while unsealing; unseal again")
        self._open(keyring, key, blob)

    def seal(self) -> None:
        self._generation += 1
        self._root_key = None
        self._keyring_blob = None
        self._barrier.seal()

    @property
    def sealed(self) -> bool:
        return self._barrier.sealed

    def root_key(self) -> bytes:
        """The root key, for deriving other deployment keys (audit) while unsealed. It never
        leaves the process."""
        if self._root_key is None:
            raise SealedError("Tether is sealed")
        return self._root_key

    async def refresh(self) -> None:
        """Reload the keyring from the store (another node may have rotated it)."""
        root_key, generation = self.root_key(), self._generation
        blob = await self._storage.get_meta(KEYRING_META)
        if blob is None:
            raise DecryptionError()
        self._install(decode_keyring(blob, root_key), blob, generation)

    def _install(self, keyring: Keyring, blob: bytes, generation: int) -> None:
        """Swap in a newer keyring, unless the node was sealed since the work began."""
        if generation != self._generation or self._root_key is None:
            raise SealedError("Tether was sealed during this operation")
        self._keyring_blob = blob
        self._barrier.unseal(keyring)

    async def ensure_current(self) -> None:
        """Before encrypting: if another node rotated the keyring, use its newest KEK (one
        indexed read; secret writes only, never the activation path)."""
        blob = await self._storage.get_meta(KEYRING_META)
        if blob is not None and blob != self._keyring_blob:
            await self.refresh()

    async def ensure_kek(self, version: int) -> None:
        """Make sure the barrier knows KEK ``version``, reloading the keyring once if not."""
        if not self._barrier.has_kek(version):
            await self.refresh()

    async def rotate(self, progress: Callable[[int], None] | None = None) -> RotationResult:
        """Add a KEK version and rewrap every data key under it. Values do not change."""
        root_key, generation = self.root_key(), self._generation
        for _ in range(5):
            blob = await self._storage.get_meta(KEYRING_META)
            if blob is None:
                raise CryptoError("this store has no keyring")
            current = decode_keyring(blob, root_key)
            rotated = current.rotated(self._clock.now())
            new_blob = encode_keyring(rotated, root_key)
            try:
                await self._storage.put_meta(KEYRING_META, new_blob, expected=blob)
            except ConflictError:
                continue  # a concurrent rotation; rotate on top of it
            self._install(rotated, new_blob, generation)
            break
        else:
            raise ConflictError("the keyring kept changing during rotation; try again")
        rewrapped = await self.rewrap_all(progress)
        return RotationResult(kek_version=rotated.active.version, rewrapped=rewrapped)

    async def rewrap_all(self, progress: Callable[[int], None] | None = None) -> int:
        """Rewrap every data key wrapped by an older KEK; resumable, batch by batch."""
        active = self._barrier.keyring.active.version
        generation = self._generation
        total = 0
        while True:
            if generation != self._generation:
                raise SealedError("Tether was sealed during key rotation; unseal and run it again")
            batch = await self._storage.values_wrapped_below(active, limit=REWRAP_BATCH)
            if not batch:
                return total
            updates = [(item, self._barrier.rewrap(item.path, item.version, item.value)) for item in batch]
            changed = await self._storage.replace_wrapped_keys(updates)
            total += changed
            if progress is not None:
                progress(total)
            if changed == 0:  # pragma: no cover - rows changed under us; avoid spinning
                return total
