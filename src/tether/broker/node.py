"""One Tether node: storage, barrier and the services built on them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tether.broker.keys import KeyService
from tether.broker.operators import OperatorService
from tether.broker.secrets import SecretService
from tether.clock import Clock, SystemClock
from tether.config import Settings
from tether.crypto.barrier import Barrier
from tether.crypto.keyprovider import KeyProvider
from tether.domain.operators import OperatorRecord
from tether.errors import CryptoError
from tether.store import Storage, open_storage

__all__ = ["Broker", "InitResult"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InitResult:
    root: OperatorRecord
    root_token: str
    keyring_created: bool


class Broker:
    """Wires a node together. Build with :meth:`from_settings`, then :meth:`start`."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        *,
        clock: Clock | None = None,
        key_provider: KeyProvider | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.clock: Clock = clock or SystemClock()
        self.barrier = Barrier()
        self.keys = KeyService(
            storage, self.barrier, key_provider or settings.key_provider_instance(), self.clock
        )
        self.secrets = SecretService(
            storage, self.barrier, self.keys, self.clock, max_value_bytes=settings.max_secret_bytes
        )
        self.operators = OperatorService(storage, self.clock)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Clock | None = None, key_provider: KeyProvider | None = None
    ) -> Broker:
        storage = open_storage(settings.database_url, pg_schema=settings.pg_schema)
        return cls(settings, storage, clock=clock, key_provider=key_provider)

    async def init(self) -> InitResult:
        """Create the schema, the keyring and the first admin (``tether init``)."""
        await self.storage.migrate()
        created = await self.keys.initialize()
        root, token = await self.operators.bootstrap()
        return InitResult(root=root, root_token=token, keyring_created=created)

    async def start(self, *, migrate: bool = True) -> None:
        """Migrate, then unseal with the configured key provider. If the key cannot be had,
        the node starts sealed and says why; storage errors propagate (the caller exits)."""
        await self.storage.ping()
        if migrate:
            await self.storage.migrate()
        if not await self.keys.initialized():
            raise CryptoError("this store is not initialised; run `tether init --data-dir DIR` first")
        try:
            await self.keys.unseal()
        except CryptoError as exc:
            log.warning("starting sealed: %s", exc)

    async def close(self) -> None:
        self.keys.seal()
        await self.storage.close()
