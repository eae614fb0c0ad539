"""Operators: bootstrap, create, authenticate, list, revoke."""

from __future__ import annotations

import contextlib
import hashlib

from tether.audit import AuditLog
from tether.broker.access import authorize, operator_actor, record_failure
from tether.clock import Clock
from tether.domain.operators import OperatorRecord, Permission, Role, validate_operator_name
from tether.errors import AuthenticationError, ConflictError, NotFoundError, TetherError
from tether.identity.operators import hash_token, new_operator_id, new_token, parse_token
from tether.store.base import Storage

__all__ = ["ROOT_OPERATOR", "OperatorService"]

ROOT_OPERATOR = "root"


def _session_ref(session_id: str) -> str:
    """How audit names a console session: a digest (the id is carried by the signed cookie)."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:16]


def _closed_key(session_id: str) -> str:
    return "console.closed." + hashlib.sha256(session_id.encode("utf-8")).hexdigest()


class OperatorService:
    def __init__(self, storage: Storage, audit: AuditLog, clock: Clock) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock

    async def _create(self, name: str, role: Role, created_by: str) -> tuple[OperatorRecord, str]:
        token = new_token()
        record = OperatorRecord(
            id=new_operator_id(),
            name=validate_operator_name(name),
            role=role,
            token_hash=hash_token(token),
            created_at=self._clock.now(),
            created_by=created_by,
        )
        await self._storage.create_operator(record)
        return record, token

    async def bootstrap(self) -> tuple[OperatorRecord, str]:
        """Create the first admin. Refused once any operator exists."""
        if await self._storage.list_operators():
            raise ConflictError("this store is already initialised: it has operators")
        await self._audit.record(
            "operator.create",
            self._audit.actor,
            resource=f"operator:{ROOT_OPERATOR}",
            reason="tether init",
            data={"role": Role.ADMIN.value},
        )
        return await self._create(ROOT_OPERATOR, Role.ADMIN, created_by="tether init")

    async def create(self, actor: OperatorRecord, name: str, role: Role) -> tuple[OperatorRecord, str]:
        """A new operator and its token, which is returned here and never again."""
        validate_operator_name(name)
        await authorize(self._audit, actor, Permission.OPERATOR_MANAGE, f"operator:{name}")
        await self._audit.record(
            "operator.create", operator_actor(actor), resource=f"operator:{name}", data={"role": role.value}
        )
        try:
            return await self._create(name, role, created_by=actor.name)
        except TetherError as exc:
            await record_failure(self._audit, "operator.create", actor, f"operator:{name}", exc)
            raise

    async def authenticate(self, token: str) -> OperatorRecord:
        try:
            record = await self._storage.operator_by_token_hash(hash_token(parse_token(token)))
            if record is None or not record.active:
                raise AuthenticationError("unknown or revoked operator token")
        except AuthenticationError as exc:
            # Who failed is unknown by definition; the reason is recorded, never the token.
            await self._audit.record("operator.auth_failed", self._audit.actor, reason=str(exc))
            raise
        return record

    # -- web console sessions (tether.console): opened with a token, then carried by a cookie --------
    async def open_console_session(self, token: str, session_id: str) -> OperatorRecord:
        """Sign in to the console: the token is checked as for the API, and the session audited."""
        record = await self.authenticate(token)
        await self._audit.record(
            "console.login",
            operator_actor(record),
            resource=f"operator:{record.name}",
            data={"session": _session_ref(session_id), "role": record.role.value},
        )
        return record

    async def console_operator(self, operator_id: str, session_id: str) -> OperatorRecord:
        """The operator of a console session, read on every request: a revoked operator, or a
        session closed by signing out (on any worker or node), is refused."""
        record = await self._storage.get_operator(operator_id)
        if record is None or not record.active:
            raise AuthenticationError("the console session's operator is unknown or revoked")
        if await self._storage.get_meta(_closed_key(session_id)) is not None:
            raise AuthenticationError("console session closed: sign in again")
        return record

    async def close_console_session(self, actor: OperatorRecord, session_id: str) -> None:
        """Sign out: the session is refused from now on, everywhere (the mark is in the store)."""
        await self._audit.record(
            "console.logout",
            operator_actor(actor),
            resource=f"operator:{actor.name}",
            data={"session": _session_ref(session_id)},
        )
        with contextlib.suppress(ConflictError):  # already closed (signed out twice, from two tabs)
            await self._storage.put_meta(_closed_key(session_id), b"closed", expected=None)

    async def list(self, actor: OperatorRecord) -> list[OperatorRecord]:
        await authorize(self._audit, actor, Permission.OPERATOR_MANAGE, "operator:*")
        return await self._storage.list_operators()

    async def revoke(self, actor: OperatorRecord, name_or_id: str) -> OperatorRecord:
        """Revoke by name or id. The last active admin cannot be revoked (no lockout)."""
        await authorize(self._audit, actor, Permission.OPERATOR_MANAGE, f"operator:{name_or_id}")
        operators = await self._storage.list_operators()
        target = next((op for op in operators if name_or_id in (op.id, op.name)), None)
        if target is None or not target.active:
            raise NotFoundError(f"no active operator {name_or_id!r}")
        admins = [op for op in operators if op.active and op.role is Role.ADMIN]
        if target.role is Role.ADMIN and len(admins) == 1:  # re-checked atomically by the store
            raise ConflictError("refusing to revoke the last active admin")
        resource = f"operator:{target.name}"
        await self._audit.record("operator.revoke", operator_actor(actor), resource=resource)
        try:
            if not await self._storage.revoke_operator(target.id, now=self._clock.now()):
                raise NotFoundError(f"no active operator {name_or_id!r}")
        except TetherError as exc:
            await record_failure(self._audit, "operator.revoke", actor, resource, exc)
            raise
        revoked = await self._storage.get_operator(target.id)
        assert revoked is not None
        return revoked
