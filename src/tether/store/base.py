"""The storage protocol.

Storage is untrusted: it only ever sees ciphertext for secret values (see
``tether.crypto``), token hashes for operators, and metadata. Implementations
turn their driver's errors into :class:`~tether.errors.StorageError` (or
:class:`~tether.errors.StorageUnavailableError` when the store cannot be reached)
and never let a driver exception escape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from tether.crypto.envelope import EncryptedValue
from tether.domain.agents import AgentKey, AgentRecord, TrustedIssuer
from tether.domain.destinations import Destination
from tether.domain.events import Event
from tether.domain.operators import OperatorRecord
from tether.domain.secrets import SecretMetadata, SecretRecord
from tether.domain.tasks import Approval, Ended, Grant, Lease, Task
from tether.errors import ConflictError, StorageError
from tether.mcp.servers import McpServer

__all__ = [
    "AgentStorage",
    "AuditConflictError",
    "AuditCorruptionError",
    "AuditStorage",
    "ConsumeGrantUse",
    "CreateGrant",
    "CreateTask",
    "DestinationStorage",
    "Effect",
    "EffectFailedError",
    "GrantInUse",
    "MetaStorage",
    "OperatorStorage",
    "PolicySetRecord",
    "PolicyStorage",
    "PutSnapshots",
    "RememberJti",
    "SealingStorage",
    "SecretStorage",
    "Storage",
    "StoreLifecycle",
    "StoredAuditRow",
    "StoredCheckpoint",
    "StoredValue",
    "TaskStorage",
    "ToolCallState",
    "VersionConflictError",
]


class VersionConflictError(ConflictError):
    """The secret's current version is not the one the writer expected."""

    def __init__(self, path: str, expected: int, actual: int | None) -> None:
        if actual is None:
            message = (
                f"secret {path!r} already exists"
                if expected == 0
                else f"secret {path!r} was written concurrently (expected version {expected})"
            )
        else:
            message = f"secret {path!r} is at version {actual}, not {expected}"
        super().__init__(message)
        self.path = path
        self.expected = expected
        self.actual = actual


class AuditConflictError(ConflictError):
    """Another writer (another node) appended at these sequence numbers first, or the batch
    does not continue the stored head. Reload the head and rebuild the batch."""


@dataclass(frozen=True, slots=True)
class RememberJti:
    """Effect: record a one-time identifier (a DPoP proof's replay key) until ``expires_at``;
    fails if a live record exists (a replay)."""

    key: bytes
    expires_at: datetime
    now: datetime


@dataclass(frozen=True, slots=True)
class ConsumeGrantUse:
    """Effect: count one use of a grant, as :meth:`Storage.consume_grant_use`; fails if nothing
    was counted. Its result is the new use count."""

    grant_id: str
    task_id: str
    now: datetime


@dataclass(frozen=True, slots=True)
class CreateTask:
    """Effect: store a new task, as :meth:`Storage.create_task`; fails if it has a parent that is
    no longer active. Its result is True."""

    task: Task


@dataclass(frozen=True, slots=True)
class CreateGrant:
    """Effect: store a new grant, as :meth:`Storage.create_grant`; fails if its task is not active
    at ``now`` (a task created by an earlier effect of the same batch counts). Its result is True."""

    grant: Grant
    now: datetime


@dataclass(frozen=True, slots=True)
class PutSnapshots:
    """Effect: store decision-input snapshots (``(hash, kind, canonical JSON)``) that events name;
    a hash already stored is left as it is (content-addressed). Never fails; its result is True."""

    snapshots: tuple[tuple[str, str, str], ...]


#: What may ride along with an audit event, in the same transaction.
Effect = RememberJti | ConsumeGrantUse | CreateTask | CreateGrant | PutSnapshots


class EffectFailedError(ConflictError):
    """Effects of an audit batch failed; nothing of the batch was written. ``failed`` maps each
    failing event's index in the batch to the effect that failed."""

    def __init__(self, failed: Mapping[int, Effect]) -> None:
        super().__init__(f"{len(failed)} audited effect(s) failed")
        self.failed = dict(failed)


class AuditCorruptionError(StorageError):
    """A stored audit row cannot be read back as the event it claims to be (tampering or
    corruption); ``tether audit verify`` says where and how."""

    def __init__(self, seq: int, detail: str) -> None:
        super().__init__(f"audit event at seq {seq} is corrupt ({detail}); run `tether audit verify`")
        self.seq = seq
        self.detail = detail


@dataclass(frozen=True, slots=True)
class StoredAuditRow:
    """One ``audit_events`` row exactly as stored, for verification (nothing parsed or trusted).

    ``body`` is the event's canonical JSON; the other columns are an index derived from it.
    """

    seq: int
    time_us: int
    kind: str
    actor_id: str
    task_id: str | None
    resource: str | None
    allowed: bool | None
    body: str
    hash: bytes


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """One signed checkpoint of the audit chain head; ``body`` is its full JSON form."""

    seq: int
    time_us: int
    head_hash: bytes
    key_id: str
    signature: bytes
    body: str


@dataclass(frozen=True, slots=True)
class StoredValue:
    """One encrypted secret version as the store holds it."""

    path: str
    version: int
    value: EncryptedValue


@dataclass(frozen=True, slots=True)
class PolicySetRecord:
    """One deployed policy set version (immutable once stored)."""

    version: int
    text: str
    sha256: str
    policy_ids: tuple[str, ...]
    created_at: datetime
    created_by: str
    comment: str


@dataclass(frozen=True, slots=True)
class GrantInUse:
    """What an activation reads, in one query: the grant, its task, and the secret it names
    (None if that secret is deleted or the grant names a destination)."""

    grant: Grant
    task: Task
    secret: SecretRecord | None
    value: StoredValue | None = None  # the secret's current version, encrypted
    policy_version: int | None = None  # the active policy set version (None: none deployed)
    destination: Destination | None = None  # the destination the grant names, if any


@dataclass(frozen=True, slots=True)
class ToolCallState:
    """What an MCP tool call reads, in one query: its task, the active policy set version and the
    upstream server the call names (None if no server has that name)."""

    task: Task
    policy_version: int | None  # None: no policy set deployed
    server: McpServer | None


class StoreLifecycle(Protocol):
    """Opening, migrating and closing a store."""

    backend: str

    async def migrate(self) -> None:
        """Bring the schema to the newest version (idempotent)."""
        ...

    async def ping(self) -> None:
        """Raise :class:`StorageUnavailableError` unless the store answers."""
        ...

    async def close(self) -> None: ...


class MetaStorage(Protocol):
    """Small named blobs: the keyring, derived keys, deployment settings."""

    async def get_meta(self, key: str) -> bytes | None: ...

    async def put_meta(self, key: str, value: bytes, *, expected: bytes | None) -> None:
        """Write ``value`` if the current value equals ``expected`` (``None``: absent), else
        raise :class:`ConflictError`."""
        ...

    async def delete_meta(self, key: str, *, expected: bytes) -> bool:
        """Delete ``key`` if it still holds ``expected``. False if it changed or is absent."""
        ...


class SecretStorage(Protocol):
    """Secrets: metadata and encrypted versions (the store sees ciphertext only)."""

    async def get_secret(
        self, path: str, *, include_deleted: bool = False, with_versions: bool = False
    ) -> SecretRecord | None: ...

    async def list_secrets(
        self, prefix: str, *, include_deleted: bool = False, after: str | None = None, limit: int = 100
    ) -> list[SecretRecord]:
        """Secrets whose path starts with ``prefix``, ordered by path, after ``after``."""
        ...

    async def append_secret_version(
        self,
        path: str,
        value: EncryptedValue,
        *,
        expected_version: int,
        metadata: SecretMetadata | None,
        actor: str,
        now: datetime,
    ) -> SecretRecord:
        """Add version ``expected_version + 1``. ``expected_version`` 0 creates the secret
        (``metadata`` required); otherwise ``metadata`` None keeps the current metadata. A
        soft-deleted secret comes back. Raises :class:`VersionConflictError` if another
        writer got there first."""
        ...

    async def replace_secret_metadata(
        self, path: str, metadata: SecretMetadata, *, expected: SecretMetadata, now: datetime
    ) -> SecretRecord | None:
        """Set a live secret's metadata to ``metadata`` if it still is ``expected`` (check-and-set;
        no new version, the values are untouched; ``updated_at`` becomes ``now``). None if the
        secret is absent or deleted, or its metadata changed meanwhile: read it again."""
        ...

    async def read_secret_value(self, path: str, version: int | None = None) -> StoredValue | None:
        """The encrypted value of ``version`` (the current one if None) of a live secret."""
        ...

    async def delete_secret(self, path: str, *, now: datetime) -> bool:
        """Soft delete: hidden from reads; versions are kept. False if absent or deleted."""
        ...

    async def values_wrapped_below(self, kek_version: int, *, limit: int) -> list[StoredValue]:
        """Encrypted values whose data key is wrapped by a KEK older than ``kek_version``."""
        ...

    async def replace_wrapped_keys(self, updates: Sequence[tuple[StoredValue, EncryptedValue]]) -> int:
        """Store rewrapped data keys, each only if the row still holds the old wrap.
        Returns how many rows changed. The ciphertext never changes."""
        ...


class OperatorStorage(Protocol):
    """Operators and their (hashed) tokens."""

    async def create_operator(self, operator: OperatorRecord) -> None:
        """Raise :class:`ConflictError` if the name or id is taken."""
        ...

    async def operator_by_token_hash(self, token_hash: bytes) -> OperatorRecord | None: ...

    async def get_operator(self, operator_id: str) -> OperatorRecord | None: ...

    async def list_operators(self) -> list[OperatorRecord]: ...

    async def revoke_operator(self, operator_id: str, *, now: datetime, keep_an_admin: bool = True) -> bool:
        """False if absent or already revoked. With ``keep_an_admin``, raise
        :class:`ConflictError` instead of revoking the last active admin (checked in the
        same transaction, so two admins revoking each other cannot both succeed)."""
        ...


class AuditStorage(Protocol):
    """The audit chain (append-only; see :mod:`tether.audit`) and its checkpoints."""

    async def append_audit_events(
        self, events: Sequence[Event], effects: Sequence[Sequence[Effect]] = ()
    ) -> list[list[object]]:
        """Append a contiguous run of chained events in one transaction. Raises
        :class:`AuditConflictError` if any sequence number is taken or the first event does
        not link to the stored event before it (a concurrent append from another node).

        ``effects[i]`` are applied in the same transaction as ``events[i]`` (what the event records
        and the change it records commit together, or neither). If any fails, nothing is written
        and :class:`EffectFailedError` names the events whose effects failed. Returns each event's
        effect results (a :class:`ConsumeGrantUse` gives the new use count)."""
        ...

    async def audit_head(self) -> tuple[int, bytes] | None:
        """``(seq, hash)`` of the newest event, or None if the log is empty."""
        ...

    async def read_audit_events(
        self,
        *,
        after_seq: int = 0,
        limit: int,
        kind: str | None = None,
        actor: str | None = None,
        task_id: str | None = None,
        resource: str | None = None,
        allowed: bool | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[Event]:
        """Events with seq > ``after_seq`` matching every given filter, ordered by seq, at most
        ``limit``. ``kind`` ending in ``.*`` matches a prefix (``approval.*``); ``actor`` is
        the actor id; ``since`` is inclusive, ``until`` exclusive. A row that does not match
        its own body raises :class:`AuditCorruptionError`."""
        ...

    async def read_audit_rows(self, *, after_seq: int = 0, limit: int) -> list[StoredAuditRow]:
        """Raw rows with seq > ``after_seq`` in seq order, for verification."""
        ...

    async def put_audit_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        """Keep a checkpoint; :class:`ConflictError` if one exists at that seq."""
        ...

    async def list_audit_checkpoints(
        self, *, after_seq: int = 0, limit: int = 1000
    ) -> list[StoredCheckpoint]:
        """Checkpoints with seq > ``after_seq``, oldest first."""
        ...

    async def latest_audit_checkpoint(self) -> StoredCheckpoint | None: ...


class AgentStorage(Protocol):
    """Agents, their keys, trusted issuers (federation), and one-time identifiers (DPoP proofs)."""

    async def create_agent(self, record: AgentRecord) -> None:
        """Store an agent with its keys. :class:`ConflictError` if the name (or id) is taken."""
        ...

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        """The agent with all its keys (removed ones too), in one query; None if absent.
        Disabled agents are returned: callers decide what disabled means."""
        ...

    async def get_agent_by_name(self, name: str) -> AgentRecord | None: ...

    async def list_agents(self, *, after: str | None = None, limit: int = 100) -> list[AgentRecord]:
        """Agents ordered by name (byte-wise), with names after ``after``, at most ``limit``."""
        ...

    async def set_agent_disabled(self, agent_id: str, now: datetime) -> bool:
        """Disable an agent. False if absent or already disabled."""
        ...

    async def add_agent_key(self, agent_id: str, key: AgentKey) -> None:
        """Add an active key. :class:`NotFoundError` if the agent is absent;
        :class:`ConflictError` if it holds (or held) this kid, or already has
        ``MAX_ACTIVE_KEYS`` active keys (checked in the same transaction)."""
        ...

    async def remove_agent_key(self, agent_id: str, kid: str, now: datetime) -> bool:
        """Mark an active key removed. False if no such active key; :class:`ConflictError`
        if it is the agent's last active key (checked in the same transaction)."""
        ...

    async def remember_jti(self, key: bytes, *, expires_at: datetime, now: datetime) -> bool:
        """Record a one-time identifier (``key``: a hash the caller computes) until
        ``expires_at``. True if it is new (or its old entry had expired); False if a live entry
        exists — a replay — including when a concurrent caller records it first. Also deletes
        a bounded number of expired entries."""
        ...

    # -- trusted issuers (federation) ------------------------------------------------------
    async def put_trusted_issuer(self, issuer: TrustedIssuer) -> None:
        """Store a trusted issuer. :class:`ConflictError` if its name or issuer is taken."""
        ...

    async def get_trusted_issuer_by_issuer(self, issuer: str) -> TrustedIssuer | None:
        """The trusted issuer whose ``issuer`` (the ``iss`` claim) is exactly ``issuer``."""
        ...

    async def list_trusted_issuers(self) -> list[TrustedIssuer]:
        """Every trusted issuer, ordered by name."""
        ...

    async def delete_trusted_issuer(self, name: str) -> bool:
        """False if there is no trusted issuer ``name``."""
        ...


class TaskStorage(Protocol):
    """Tasks, grants, approvals and leases (see :mod:`tether.domain.tasks`); the store applies the
    lifecycle rules of :mod:`tether.domain.lifecycle`, it never decides them."""

    async def create_task(self, task: Task) -> None:
        """Store a new task. With a parent, only if the parent is still active (checked in the same
        transaction; :class:`ConflictError` otherwise)."""
        ...

    async def get_task(self, task_id: str) -> Task | None: ...

    async def list_tasks(
        self,
        *,
        agent_id: str | None = None,
        statuses: Sequence[str] = (),
        root_id: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Task]:
        """Tasks ordered by id, matching every filter given (stored status, not expiry)."""
        ...

    async def update_task(
        self,
        task: Task,
        *,
        expected_version: int,
        revoke_grants: Sequence[str],
        reason: str,
        now: datetime,
        end_tasks: Sequence[str] = (),
    ) -> Ended:
        """Store ``task`` (new intent, status, context version, approval) if its stored context
        version is still ``expected_version`` and it is live; revoke ``revoke_grants`` with
        ``reason``; end the sub-tasks ``end_tasks`` (revoked, ``parent_narrowed``) as
        :meth:`end_tasks` does, and return what that ended; void the task's pending and approved
        approvals bound to another context than ``task.context_hash``. One transaction;
        :class:`ConflictError` if the task changed or ended meanwhile."""
        ...

    async def end_tasks(self, task_ids: Sequence[str], status: str, reason: str, now: datetime) -> Ended:
        """End the live tasks ``task_ids`` and every live descendant of each: set ``status`` (the
        descendants get ``revoked``), revoke their live grants and leases, void their approvals.
        One transaction."""
        ...

    async def expire_tasks(self, now: datetime, *, limit: int = 500) -> Ended:
        """End (``expired``) up to ``limit`` live tasks whose lifetime is over, as :meth:`end_tasks`."""
        ...

    async def create_grant(self, grant: Grant, *, now: datetime) -> None:
        """Store a grant if its task is still active at ``now`` (same transaction);
        :class:`ConflictError` otherwise."""
        ...

    async def get_grant(self, grant_id: str) -> Grant | None: ...

    async def grant_for_use(self, grant_id: str) -> GrantInUse | None:
        """The grant, its task and the secret it names (if live): one indexed read."""
        ...

    async def inject_grant_for_use(
        self, task_id: str, destination: str, now: datetime, *, jkt: str | None = None
    ) -> GrantInUse | None:
        """The newest usable ``inject`` grant of ``task_id`` for ``destination`` (unrevoked, unexpired,
        a use left; bound to ``jkt`` when given), with its task, secret and destination: one
        indexed read."""
        ...

    async def list_grants(self, task_id: str) -> list[Grant]:
        """A task's grants, oldest first."""
        ...

    async def consume_grant_use(self, grant_id: str, task_id: str, now: datetime) -> int | None:
        """Count one use, atomically: only if the grant is unrevoked, unexpired, has a use left and
        its task is active at ``now``. The new use count, or None if nothing was counted."""
        ...

    async def revoke_grants(
        self,
        *,
        grant_ids: Sequence[str] = (),
        secret: str | None = None,
        reason: str,
        now: datetime,
    ) -> int:
        """Revoke live grants by id or by secret path; how many were revoked."""
        ...

    async def open_approval(self, approval: Approval, now: datetime) -> Approval:
        """Store a pending approval, or return the unexpired one (pending, approved or denied) that
        already binds the same task, context hash, action, resource and request: a denial stands until the
        task's context changes or it expires. Identical concurrent calls store one."""
        ...

    async def get_approval(self, approval_id: str) -> Approval | None: ...

    async def find_approval(
        self,
        task_id: str,
        action: str,
        resource: str,
        context_hash: str,
        now: datetime,
        *,
        statuses: Sequence[str] = ("approved",),
        request_hash: str | None = None,
    ) -> Approval | None:
        """The newest unexpired approval in ``statuses`` (default: approved) for exactly this task
        context, action, resource and request (``request_hash``; None: the empty request)."""
        ...

    async def list_approvals(
        self, *, statuses: Sequence[str] = (), after: str | None = None, limit: int = 100
    ) -> list[Approval]:
        """Approvals by request time (oldest first), then id; ``after`` is the last id of the
        previous page."""
        ...

    async def decide_approval(
        self,
        approval_id: str,
        status: str,
        *,
        decided_by: str,
        reason: str,
        now: datetime,
        expires_at: datetime,
    ) -> tuple[Approval, Task | None]:
        """Approve or deny a pending, unexpired approval. An approval of ``open_task`` activates
        its pending task; a denial of ``open_task`` revokes it (same transaction). Returns the
        approval and the task if its status changed. :class:`NotFoundError` if absent,
        :class:`ConflictError` if it is no longer pending."""
        ...

    async def create_lease(self, lease: Lease) -> None:
        """Record a lease before its engine issues the credential, if its task is active and its
        grant unrevoked (checked under the task's lock); :class:`ConflictError` otherwise."""
        ...

    async def set_lease_handle(
        self, lease_id: str, handle: Mapping[str, object], expires_at: datetime
    ) -> bool:
        """Store what the engine needs to revoke the credential it issued. False if the lease was
        revoked meanwhile (its task ended while the engine was issuing): revoke it at once."""
        ...

    async def leases_to_revoke(self, now: datetime, *, limit: int = 100) -> list[Lease]:
        """Leases revoked here (or expired) whose engine-side credential is not yet revoked."""
        ...

    async def mark_lease_revoked(self, lease_id: str, now: datetime) -> None:
        """The engine revoked the lease's credential."""
        ...

    async def incomplete_leases(self, created_before: datetime, *, limit: int = 100) -> list[Lease]:
        """Live leases still without a handle that were recorded before ``created_before``: their
        engine never finished issuing (it failed, or the node stopped), so nobody holds their
        credential."""
        ...

    async def get_leases(self, lease_ids: Sequence[str]) -> list[Lease]:
        """The leases of ``lease_ids`` that exist (at most 1,000 ids; unknown ids are left out)."""
        ...

    async def list_leases(
        self, now: datetime, *, state: str | None = None, task_id: str | None = None, limit: int = 100
    ) -> list[Lease]:
        """Leases newest first: ``state`` ``active`` (neither revoked nor expired), ``revoking``
        (ended, the engine has not revoked the credential yet) or ``revoked`` (by the engine)."""
        ...


class PolicyStorage(Protocol):
    """Deployed policy set versions and the active one."""

    async def put_policy_set(
        self,
        text: str,
        sha256: str,
        policy_ids: Sequence[str],
        created_by: str,
        now: datetime,
        *,
        comment: str = "",
        expected_active: int | None,
    ) -> PolicySetRecord:
        """Store a new version (the highest so far + 1) and make it the active one, if the
        active version is still ``expected_active`` (``None``: no set was ever active); else
        raise :class:`ConflictError` and store nothing."""
        ...

    async def get_policy_set(self, version: int) -> PolicySetRecord | None: ...

    async def active_policy_set(self) -> PolicySetRecord | None:
        """The active version (one indexed read), or None before the first deploy."""
        ...

    async def active_policy_version(self) -> int | None: ...

    async def list_policy_sets(self, *, limit: int = 100, after: int | None = None) -> list[PolicySetRecord]:
        """Versions newest first, those below ``after`` when given, at most ``limit``."""
        ...

    async def activate_policy_version(self, version: int, *, expected_active: int | None) -> None:
        """Make a stored ``version`` active again (rollback). :class:`NotFoundError` if absent;
        :class:`ConflictError` if the active version is no longer ``expected_active``."""
        ...


class DestinationStorage(Protocol):
    """Registered egress destinations."""

    async def put_destination(self, destination: Destination) -> None:
        """Store a new destination. :class:`ConflictError` if its name is taken."""
        ...

    async def get_destination(self, name: str) -> Destination | None:
        """The destination ``name``, or None."""
        ...

    async def list_destinations(self) -> list[Destination]:
        """Every destination, ordered by name (byte order)."""
        ...

    async def delete_destination(self, name: str) -> bool:
        """Delete destination ``name``; False if there is none."""
        ...


class McpServerStorage(Protocol):
    """Registered upstream MCP servers and their pinned tool definitions (tether.mcp)."""

    async def put_mcp_server(self, server: McpServer) -> None:
        """Store a new server. :class:`ConflictError` if its name is taken."""
        ...

    async def replace_mcp_server(self, server: McpServer, *, expected_version: int) -> bool:
        """Replace server ``server.name`` if its stored version is ``expected_version``; False if
        it is not (changed concurrently, or removed)."""
        ...

    async def get_mcp_server(self, name: str) -> McpServer | None:
        """The server ``name``, or None."""
        ...

    async def tool_call_state(self, task_id: str, server: str) -> ToolCallState | None:
        """Task ``task_id``, the active policy version and server ``server``, read together (one
        query where the backend can); None if there is no such task."""
        ...

    async def list_mcp_servers(self) -> list[McpServer]:
        """Every server, ordered by name (byte order)."""
        ...

    async def delete_mcp_server(self, name: str) -> bool:
        """Delete server ``name``; False if there is none."""
        ...


@runtime_checkable
class Storage(
    StoreLifecycle,
    MetaStorage,
    SecretStorage,
    OperatorStorage,
    AuditStorage,
    AgentStorage,
    TaskStorage,
    PolicyStorage,
    DestinationStorage,
    McpServerStorage,
    Protocol,
):
    """What Tether needs from a database: one protocol per aggregate, each with its conformance suite
    in ``tests/conformance``. Every method is one transaction."""


@runtime_checkable
class SealingStorage(Protocol):
    """Optional capability: append a batch sealed on top of the head read inside the write
    transaction. Writers of several processes (or nodes) then queue on the store's lock instead of
    racing for sequence numbers and retrying; the audit log uses it when the store has it."""

    async def append_sealed(
        self,
        seal: Callable[[tuple[int, bytes]], list[Event]],
        effects: Sequence[Sequence[Effect]] = (),
    ) -> tuple[list[Event], list[list[object]]]:
        """Call ``seal(head)`` with the stored head ``(seq, hash)`` (``(0, GENESIS_HASH)`` when
        empty) inside the transaction and append what it returns with ``effects``, as
        :meth:`Storage.append_audit_events`. Returns the events and their effects' results."""
        ...
