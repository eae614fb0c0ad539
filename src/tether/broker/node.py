"""One Tether node: storage, barrier and the services built on them."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from tether.audit import AUDIT_KEYS_META, AuditLog, AuditSink, JsonlFileSink, load_or_create_audit_keys
from tether.broker._decisions import DecisionPoint
from tether.broker.access import authorize, operator_actor
from tether.broker.activation import ActivationService
from tether.broker.agents import AgentService, IssuerService
from tether.broker.approvals import ApprovalService
from tether.broker.auth import AuthService
from tether.broker.context import ContextService
from tether.broker.delegation import DelegationService
from tether.broker.destinations import DestinationService
from tether.broker.governed import GovernedPath
from tether.broker.grants import GrantService
from tether.broker.keys import KeyService, RotationResult
from tether.broker.operators import OperatorService
from tether.broker.policies import PolicyService
from tether.broker.revocation import RevocationService, SecretRevocation
from tether.broker.secrets import SecretService
from tether.broker.signals import Transmitter
from tether.broker.tasks import TaskService
from tether.broker.webhook import ApprovalWebhook
from tether.clock import Clock, SystemClock
from tether.config import Settings
from tether.crypto.barrier import Barrier
from tether.crypto.keyprovider import KeyProvider
from tether.domain.operators import OperatorRecord, Permission
from tether.egress.leakguard import forget_guards
from tether.engines import EngineRegistry, StaticEngine
from tether.engines.config import load_engines
from tether.errors import CryptoError, SealedError, TetherError
from tether.identity.refusals import RefusalLimits
from tether.identity.signing import TOKEN_KEYS_META
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
        sinks: list[AuditSink] = []
        if settings.audit_jsonl_path is not None:
            sinks.append(JsonlFileSink(settings.audit_jsonl_path))
        self.audit = AuditLog(storage, node_id=settings.node_id, clock=self.clock, sinks=sinks)
        # Built in dependency order; each service gets its collaborators in its constructor.
        secret_revocation = SecretRevocation(storage, self.audit, self.clock)
        self.secrets = SecretService(
            storage,
            self.barrier,
            self.keys,
            self.audit,
            self.clock,
            max_value_bytes=settings.max_secret_bytes,
            on_delete=secret_revocation.secret_deleted,
        )
        self.engines = EngineRegistry(StaticEngine(self.secrets.read_value))
        if settings.engines_file is not None:
            for engine in load_engines(settings.engines_file, self.secrets.read_value):
                for role in engine.config.roles:
                    self.engines.mount_secret(role.secret, engine)
        revocation = RevocationService(storage, self.audit, self.clock, self.engines, secret_revocation)
        self.operators = OperatorService(storage, self.audit, self.clock)
        self.agents = AgentService(
            storage, self.audit, self.clock, settings.trust_domain, on_disable=revocation.revoke_agent
        )
        self.issuers = IssuerService(storage, self.audit, self.clock)
        self.destinations = DestinationService(storage, self.audit, self.clock)
        self.policies = PolicyService(storage, self.audit, self.clock)
        self.auth = AuthService(
            storage,
            self.audit,
            self.clock,
            self.agents,
            trust_domain=settings.trust_domain,
            token_ttl_seconds=settings.token_ttl_seconds,
            refusal_limits=RefusalLimits(
                settings.auth_refusal_window_seconds,
                settings.auth_refusals_per_client,
                settings.auth_refusals_per_address,
            ),
        )
        # Shared Signals: reads the audit log after the fact; never on the governed path.
        self.signals = Transmitter(storage, self.audit, self.clock, settings, self.auth)
        decisions = DecisionPoint(
            storage,
            self.audit,
            self.clock,
            settings,
            self.policies,
            self.engines,
            refuse_replay=self.auth.refuse_replay,
            notifier=ApprovalWebhook(settings.approval_webhook_url)
            if settings.approval_webhook_url
            else None,
        )
        grants = GrantService(storage, self.audit, self.clock, decisions)
        tasks = TaskService(storage, self.audit, self.clock, settings, decisions, grants, revocation)
        self.tasks = GovernedPath(
            decisions,
            tasks,
            DelegationService(storage, self.audit, self.clock, settings, decisions, tasks),
            ContextService(storage, self.audit, self.clock, decisions, tasks, revocation),
            grants,
            ActivationService(storage, self.audit, self.clock, self.secrets, self.engines, decisions),
            ApprovalService(storage, self.audit, self.clock, settings),
            revocation,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Clock | None = None, key_provider: KeyProvider | None = None
    ) -> Broker:
        storage = open_storage(
            settings.database_url,
            pg_schema=settings.pg_schema,
            sqlite_synchronous=settings.sqlite_synchronous,
        )
        return cls(settings, storage, clock=clock, key_provider=key_provider)

    async def init(self) -> InitResult:
        """Create the schema, the keyring, the audit keys and the first admin (``tether init``)."""
        await self.storage.migrate()
        created = await self.keys.initialize()
        try:
            await self._attach_audit_keys()
            if created:
                await self.audit.record(
                    "sys.init", self.audit.actor, data={"key_provider": self.keys.provider_name}
                )
            root, token = await self.operators.bootstrap()
        except BaseException:
            # Nothing half-written: without an operator the store is useless, and a keyring
            # whose (dev) key the caller may now delete would block every later init.
            if created and not await self.storage.list_operators():
                with contextlib.suppress(TetherError):
                    for derived in (AUDIT_KEYS_META, TOKEN_KEYS_META):
                        blob = await self.storage.get_meta(derived)
                        if blob is not None:
                            await self.storage.delete_meta(derived, expected=blob)
                    await self.keys.forget_new_keyring()
            raise
        return InitResult(root=root, root_token=token, keyring_created=created)

    async def _attach_audit_keys(self) -> None:
        """Open the keys derived from the root key: audit (HMAC, checkpoints) and token signing."""
        root_key = self.keys.root_key()
        self.audit.attach_keys(await load_or_create_audit_keys(self.storage, root_key, self.clock.now()))
        await self.auth.attach_keys(root_key)

    async def unseal(self, actor: OperatorRecord, root_key: bytes | None = None) -> None:
        """Open the keyring (with ``root_key`` or the key provider's) and the audit keys."""
        await authorize(self.audit, actor, Permission.SYS_SEAL, "sys:barrier")
        try:
            await self.keys.unseal(root_key)
            await self._attach_audit_keys()
        except CryptoError as exc:
            self.seal_now()
            await self.audit.record(
                "sys.unseal",
                operator_actor(actor),
                resource="sys:barrier",
                reason=f"failed: {type(exc).__name__}",
            )
            raise
        await self.audit.record("sys.unseal", operator_actor(actor), resource="sys:barrier")

    async def unseal_relayed(self) -> bool:
        """Unseal with the key provider's key because another worker of this node was unsealed
        (``tether server --workers N``; that worker recorded the unseal). False, and still sealed,
        if the provider's key does not open the keyring (an unseal with an explicit root key)."""
        if not self.keys.sealed:
            return True
        try:
            await self.keys.unseal(None)
            await self._attach_audit_keys()
        except TetherError:
            self.seal_now()
            return False
        return True

    async def seal(self, actor: OperatorRecord) -> None:
        """Drop every key from memory. Recorded first: if the record fails, seal anyway
        (sealing is the safe direction) and let the error through."""
        await authorize(self.audit, actor, Permission.SYS_SEAL, "sys:barrier")
        try:
            await self.audit.record("sys.seal", operator_actor(actor), resource="sys:barrier")
        finally:
            self.seal_now()

    def seal_now(self) -> None:
        self.keys.seal()
        self.audit.detach_keys()
        self.auth.detach_keys()
        forget_guards()  # egress's leak guards hold the forms of values they redact

    async def rotate_token_keys(self, actor: OperatorRecord) -> str:
        """A new access-token signing key; tokens signed by the previous one stay valid."""
        await authorize(self.audit, actor, Permission.SYS_KEYS, "sys:token-keys")
        root_key = self.keys.root_key()
        await self.audit.record("sys.keys.rotate", operator_actor(actor), resource="sys:token-keys")
        return await self.auth.rotate_keys(root_key)

    async def rotate_keys(self, actor: OperatorRecord) -> RotationResult:
        """Add a KEK version and rewrap every data key under it."""
        await authorize(self.audit, actor, Permission.SYS_KEYS, "sys:keyring")
        if self.keys.sealed:
            raise SealedError("Tether is sealed")
        await self.audit.record("sys.keys.rotate", operator_actor(actor), resource="sys:keyring")
        result = await self.keys.rotate()
        await self.audit.record(
            "sys.keys.rotate",
            operator_actor(actor),
            resource="sys:keyring",
            reason="completed",
            data={"kek_version": result.kek_version, "rewrapped": result.rewrapped},
        )
        return result

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
            await self._attach_audit_keys()
        except CryptoError as exc:
            self.seal_now()
            log.warning("starting sealed: %s", exc)
            return
        await self.engines.check()  # a role template the database refuses stops the start, with the reason

    async def close(self) -> None:
        await self.engines.aclose()
        await self.audit.close()
        self.seal_now()
        await self.storage.close()
