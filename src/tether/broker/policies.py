"""Policy sets: validate, deploy, show, list versions, roll back.

A deploy is compiled (validated against the schema) before anything is stored: a set that
does not validate is refused with the validator's messages. Every deploy and rollback is
audited before it is made, and a failed one leaves a failure event after it.

:meth:`PolicyService.active` compiles the active set for decisions. A stored version never
changes, so its compiled form is cached by version; which version is active is read from
storage on every call (no cached authorization state).
"""

from __future__ import annotations

import json

from tether.audit import AuditLog
from tether.broker.access import authorize, operator_actor, record_failure
from tether.clock import Clock
from tether.domain.operators import OperatorRecord, Permission
from tether.errors import InvalidInputError, NotFoundError, TetherError
from tether.policy import MAX_POLICY_TEXT_BYTES, CompiledPolicySet, compile_policy_set
from tether.store.base import PolicySetRecord, Storage

__all__ = ["EMPTY_SET_REFUSED", "MAX_COMMENT_CHARS", "PolicyService"]

MAX_COMMENT_CHARS = 1000
EMPTY_SET_REFUSED = (
    "the policy set has no policies: deployed, it would deny every agent every action "
    "(default deny). To deploy it anyway, set allow_empty (CLI: --allow-empty)"
)
MAX_VERSIONS_LIMIT = 1000
RESOURCE = "policy:set"
#: Audit events carry at most this many characters of policy ids (events are size-capped); the
#: sha256 names the exact set, whose text is kept by version.
AUDIT_IDS_BUDGET = 8 * 1024


def _audit_ids(policy_ids: tuple[str, ...] | list[str]) -> dict[str, object]:
    shown: list[str] = []
    used = 0
    for policy_id in policy_ids:
        used += len(json.dumps(policy_id)) + 2  # as JSON, with a separator
        if used > AUDIT_IDS_BUDGET:
            break
        shown.append(policy_id)
    data: dict[str, object] = {"policy_ids": shown, "policy_count": len(policy_ids)}
    if len(shown) < len(policy_ids):
        data["policy_ids_truncated"] = True
    return data


def _check_text(text: str) -> None:
    if not isinstance(text, str):
        raise InvalidInputError("policies must be Cedar text", field="policies")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_TEXT_BYTES:
        raise InvalidInputError(f"a policy set is at most {MAX_POLICY_TEXT_BYTES} bytes", field="policies")


class PolicyService:
    """The versioned policy set of a deployment."""

    def __init__(self, storage: Storage, audit: AuditLog, clock: Clock) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._compiled: dict[int, CompiledPolicySet] = {}

    async def _may_read(self, actor: OperatorRecord) -> None:
        # Every role that may write policies may also read them (POLICY_WRITE implies READ).
        await authorize(self._audit, actor, Permission.POLICY_READ, RESOURCE)

    async def validate(self, actor: OperatorRecord, text: str) -> CompiledPolicySet:
        """Compile ``text`` against the schema; :class:`PolicyValidationError` if it fails."""
        await self._may_read(actor)
        _check_text(text)
        return compile_policy_set(text)

    async def deploy(
        self, actor: OperatorRecord, text: str, comment: str = "", *, allow_empty: bool = False
    ) -> PolicySetRecord:
        """Validate ``text`` and make it the newest, active version.

        A set without a single policy denies every agent everything; it is refused unless
        ``allow_empty`` says that this is meant (an emergency stop, say).
        """
        await authorize(self._audit, actor, Permission.POLICY_WRITE, RESOURCE)
        _check_text(text)
        if len(comment) > MAX_COMMENT_CHARS:
            raise InvalidInputError(f"a comment is at most {MAX_COMMENT_CHARS} characters", field="comment")
        compiled = compile_policy_set(text)  # invalid: PolicyValidationError, nothing stored
        if not compiled.policy_ids and not allow_empty:
            raise InvalidInputError(EMPTY_SET_REFUSED, field="allow_empty")
        sha256 = compiled.sha256
        expected = await self._storage.active_policy_version()
        data: dict[str, object] = {
            "sha256": sha256,
            **_audit_ids(list(compiled.policy_ids)),
            "previous_version": expected,
        }
        await self._audit.record(
            "policy.deploy", operator_actor(actor), resource=RESOURCE, reason=comment, data=data
        )
        try:
            record = await self._storage.put_policy_set(
                text,
                sha256,
                list(compiled.policy_ids),
                actor.name,
                self._clock.now(),
                comment=comment,
                expected_active=expected,
            )
        except TetherError as exc:
            await record_failure(self._audit, "policy.deploy", actor, RESOURCE, exc, data)
            raise
        self._compiled[record.version] = compiled
        return record

    async def show(self, actor: OperatorRecord, version: int | None = None) -> PolicySetRecord:
        """The active set, or version ``version``."""
        await self._may_read(actor)
        if version is None:
            record = await self._storage.active_policy_set()
            if record is None:
                raise NotFoundError("no policy set is deployed yet (default: deny everything)")
            return record
        record = await self._storage.get_policy_set(version)
        if record is None:
            raise NotFoundError(f"no policy set version {version}")
        return record

    async def versions(
        self, actor: OperatorRecord, *, limit: int = 100, after: int | None = None
    ) -> tuple[list[PolicySetRecord], int | None]:
        """Versions newest first and the active version."""
        if not 1 <= limit <= MAX_VERSIONS_LIMIT:
            raise InvalidInputError(f"limit must be between 1 and {MAX_VERSIONS_LIMIT}", field="limit")
        await self._may_read(actor)
        records = await self._storage.list_policy_sets(limit=limit, after=after)
        return records, await self._storage.active_policy_version()

    async def rollback(self, actor: OperatorRecord, version: int) -> PolicySetRecord:
        """Make stored version ``version`` active again."""
        await authorize(self._audit, actor, Permission.POLICY_WRITE, RESOURCE)
        record = await self._storage.get_policy_set(version)
        if record is None:
            raise NotFoundError(f"no policy set version {version}")
        expected = await self._storage.active_policy_version()
        data: dict[str, object] = {
            "sha256": record.sha256,
            **_audit_ids(record.policy_ids),
            "version": version,
            "previous_version": expected,
        }
        await self._audit.record(
            "policy.deploy",
            operator_actor(actor),
            resource=RESOURCE,
            reason=f"rollback to {version}",
            data=data,
        )
        try:
            await self._storage.activate_policy_version(version, expected_active=expected)
        except TetherError as exc:
            await record_failure(self._audit, "policy.deploy", actor, RESOURCE, exc, data)
            raise
        return record

    async def active_version(self) -> int | None:
        """The active version number (None before the first deploy)."""
        return await self._storage.active_policy_version()

    async def compiled(self, version: int) -> CompiledPolicySet:
        """Version ``version``, compiled (cached: a stored version never changes)."""
        compiled = self._compiled.get(version)
        if compiled is None:
            record = await self._storage.get_policy_set(version)
            if record is None:
                raise NotFoundError(f"no policy set version {version}")
            compiled = compile_policy_set(record.text)
            self._compiled[version] = compiled
        return compiled

    async def active(self) -> CompiledPolicySet | None:
        """The active set, compiled; None before the first deploy (default deny)."""
        # Which version is active is read every time (one small indexed read); its text only once.
        version = await self._storage.active_policy_version()
        return None if version is None else await self.compiled(version)
