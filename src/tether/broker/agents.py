"""The agent registry and the trusted-issuer registry.

Operators register agents (with a public key, or none for federated-only agents), rotate
their keys with overlap, and disable them; admins configure the external issuers whose
tokens may be exchanged for an agent's access token. Every change is audited before it is
made, and a failed change leaves a failure event after it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tether.audit import Actor, AuditLog
from tether.broker.access import authorize, operator_actor, record_failure
from tether.clock import Clock
from tether.domain.agents import (
    AgentAttributes,
    AgentKey,
    AgentRecord,
    TrustedIssuer,
    agent_id,
    parse_agent_id,
    validate_agent_name,
    validate_trust_domain,
)
from tether.domain.operators import OperatorRecord, Permission
from tether.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    TetherError,
)
from tether.store.base import Storage

__all__ = ["MAX_LIST_LIMIT", "AgentPage", "AgentService", "IssuerService"]

MAX_LIST_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class AgentPage:
    """One page of agents; pass ``next_after`` as ``after`` for the next one (None: last page)."""

    items: list[AgentRecord]
    next_after: str | None


class AgentService:
    """Register, list, show, disable agents; add and remove their keys."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        clock: Clock,
        trust_domain: str,
        *,
        on_disable: Callable[[Actor, str, str], Awaitable[object]] | None = None,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self.trust_domain = validate_trust_domain(trust_domain)
        # Set by the node: ends the agent's live tasks (and what was issued for them).
        # Ends a disabled agent's tasks (the node passes the revocation service's).
        self.on_disable = on_disable

    def id_of(self, name_or_id: str) -> str:
        """The SPIFFE ID for an agent name or id (validated; the agent need not exist)."""
        return self._id_of(name_or_id)

    def _id_of(self, name_or_id: str) -> str:
        """The agent id meant by a name or a SPIFFE ID (validated; no I/O)."""
        if isinstance(name_or_id, str) and name_or_id.startswith("spiffe://"):
            trust_domain, _ = parse_agent_id(name_or_id)
            if trust_domain != self.trust_domain:
                raise NotFoundError(f"agent {name_or_id!r} is not in trust domain {self.trust_domain!r}")
            return name_or_id
        return agent_id(self.trust_domain, validate_agent_name(name_or_id))

    async def _existing(self, agent: str) -> AgentRecord:
        record = await self._storage.get_agent(agent)
        if record is None:
            raise NotFoundError(f"no agent {agent!r}")
        return record

    async def register(
        self,
        actor: OperatorRecord,
        name: str,
        public_key: Mapping[str, Any] | None,
        attributes: AgentAttributes,
    ) -> AgentRecord:
        """Register agent ``name`` with ``public_key`` (a public JWK: Ed25519 or P-256), or with
        no key for an agent that only authenticates through a trusted issuer."""
        new_id = agent_id(self.trust_domain, validate_agent_name(name))
        now = self._clock.now()
        keys = () if public_key is None else (AgentKey.from_jwk(public_key, now),)
        record = AgentRecord(
            id=new_id,
            name=name,
            trust_domain=self.trust_domain,
            attributes=attributes,
            keys=keys,
            created_at=now,
            created_by=actor.name,
        )
        resource = f"agent:{new_id}"
        await authorize(self._audit, actor, Permission.AGENT_WRITE, resource)
        await self._audit.record(
            "agent.register",
            operator_actor(actor),
            resource=resource,
            data={"kids": [key.kid for key in keys], "attributes": attributes.to_json()},
        )
        try:
            await self._storage.create_agent(record)
        except TetherError as exc:
            await record_failure(self._audit, "agent.register", actor, resource, exc)
            raise
        return record

    async def list(self, actor: OperatorRecord, *, after: str | None = None, limit: int = 100) -> AgentPage:
        """Agents in name order, a page at a time."""
        if after is not None:
            validate_agent_name(after, "after")
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidInputError(f"limit must be between 1 and {MAX_LIST_LIMIT}", field="limit")
        await authorize(self._audit, actor, Permission.AGENT_READ, "agent:*")
        items = await self._storage.list_agents(after=after, limit=limit + 1)
        more = len(items) > limit
        items = items[:limit]
        return AgentPage(items=items, next_after=items[-1].name if more else None)

    async def show(self, actor: OperatorRecord, name_or_id: str) -> AgentRecord:
        """One agent by name or id, with its keys (removed ones included)."""
        target = self._id_of(name_or_id)
        await authorize(self._audit, actor, Permission.AGENT_READ, f"agent:{target}")
        return await self._existing(target)

    async def disable(self, actor: OperatorRecord, name_or_id: str) -> AgentRecord:
        """Disable an agent: it can get no token, and the tokens it holds stop working on
        their next use (the auth path reads the agent on every request)."""
        target = self._id_of(name_or_id)
        resource = f"agent:{target}"
        await authorize(self._audit, actor, Permission.AGENT_WRITE, resource)
        if (await self._existing(target)).disabled:
            raise ConflictError(f"agent {target!r} is already disabled")
        await self._audit.record("agent.disable", operator_actor(actor), resource=resource)
        try:
            if not await self._storage.set_agent_disabled(target, self._clock.now()):
                raise ConflictError(f"agent {target!r} was disabled concurrently")
        except TetherError as exc:
            await record_failure(self._audit, "agent.disable", actor, resource, exc)
            raise
        if self.on_disable is not None:
            # Its tokens already fail (the auth path re-reads the agent); this ends its tasks too.
            await self.on_disable(operator_actor(actor), target, "agent disabled")
        return await self._existing(target)

    async def add_key(self, actor: OperatorRecord, name_or_id: str, jwk: Mapping[str, Any]) -> AgentRecord:
        """Add a public key (rotation with overlap: add the new key, move over, remove the old)."""
        target = self._id_of(name_or_id)
        key = AgentKey.from_jwk(jwk, self._clock.now())
        resource = f"agent:{target}"
        await authorize(self._audit, actor, Permission.AGENT_WRITE, resource)
        await self._existing(target)
        await self._audit.record(
            "agent.key_add", operator_actor(actor), resource=resource, data={"kid": key.kid}
        )
        try:
            await self._storage.add_agent_key(target, key)
        except TetherError as exc:
            await record_failure(self._audit, "agent.key_add", actor, resource, exc)
            raise
        return await self._existing(target)

    async def remove_key(self, actor: OperatorRecord, name_or_id: str, kid: str) -> AgentRecord:
        """Remove an active key; its signatures stop being accepted at once. The last active
        key cannot be removed (add its successor first)."""
        target = self._id_of(name_or_id)
        if not isinstance(kid, str) or not 0 < len(kid) <= 128:
            raise InvalidInputError("kid must be 1-128 characters", field="kid")
        resource = f"agent:{target}"
        await authorize(self._audit, actor, Permission.AGENT_WRITE, resource)
        record = await self._existing(target)
        if record.key(kid) is None:
            raise NotFoundError(f"agent {target!r} has no active key {kid!r}")
        await self._audit.record(
            "agent.key_remove", operator_actor(actor), resource=resource, data={"kid": kid}
        )
        try:
            if not await self._storage.remove_agent_key(target, kid, self._clock.now()):
                raise NotFoundError(f"agent {target!r} has no active key {kid!r}")
        except TetherError as exc:
            await record_failure(self._audit, "agent.key_remove", actor, resource, exc)
            raise
        return await self._existing(target)

    async def active_agent(self, agent: str) -> AgentRecord:
        """The agent ``agent`` (an id) if it exists in this trust domain and is not disabled.

        For the authentication path: it does not audit (the caller does), and every refusal
        is the same opaque ``invalid_client``.
        """
        record = None
        if isinstance(agent, str) and agent.startswith(f"spiffe://{self.trust_domain}/agent/"):
            record = await self._storage.get_agent(agent)
        if record is None:
            raise AuthenticationError(f"unknown agent {str(agent)[:300]!r}", code="invalid_client")
        if record.disabled:
            raise AuthenticationError(f"agent {agent!r} is disabled", code="invalid_client")
        return record


class IssuerService:
    """Trusted token issuers for federation (token exchange)."""

    def __init__(self, storage: Storage, audit: AuditLog, clock: Clock) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock

    async def add(
        self,
        actor: OperatorRecord,
        *,
        name: str,
        issuer: str,
        audience: str,
        subject_pattern: str,
        jwks: Mapping[str, Any] | None = None,
        jwks_url: str | None = None,
        subject_claim: str = "sub",
    ) -> TrustedIssuer:
        """Trust ``issuer``: its tokens for ``audience`` map to agents through ``subject_pattern``."""
        record = TrustedIssuer(
            name=name,
            issuer=issuer,
            audience=audience,
            jwks=None if jwks is None else dict(jwks),
            jwks_url=jwks_url,
            subject_claim=subject_claim,
            subject_pattern=subject_pattern,
            created_at=self._clock.now(),
            created_by=actor.name,
        )
        resource = f"issuer:{record.name}"
        await authorize(self._audit, actor, Permission.AGENT_WRITE, resource)
        await self._audit.record(
            "issuer.add",
            operator_actor(actor),
            resource=resource,
            data={
                "issuer": record.issuer,
                "audience": record.audience,
                "jwks_url": record.jwks_url,
                "kids": [key.get("kid", "") for key in record.jwks["keys"]] if record.jwks else [],
                "subject_claim": record.subject_claim,
                "subject_pattern": record.subject_pattern,
            },
        )
        try:
            await self._storage.put_trusted_issuer(record)
        except TetherError as exc:
            await record_failure(self._audit, "issuer.add", actor, resource, exc)
            raise
        return record

    async def list(self, actor: OperatorRecord) -> list[TrustedIssuer]:
        await authorize(self._audit, actor, Permission.AGENT_READ, "issuer:*")
        return await self._storage.list_trusted_issuers()

    async def remove(self, actor: OperatorRecord, name: str) -> None:
        """Stop trusting an issuer: its tokens can no longer be exchanged. Access tokens
        already issued from them live out their (short) lifetime."""
        if not isinstance(name, str) or not 0 < len(name) <= 64 or not name.isprintable():
            raise InvalidInputError("issuer name must be 1-64 printable characters", field="name")
        resource = f"issuer:{name}"
        await authorize(self._audit, actor, Permission.AGENT_WRITE, resource)
        if name not in {issuer.name for issuer in await self._storage.list_trusted_issuers()}:
            raise NotFoundError(f"no trusted issuer {name!r}")
        await self._audit.record("issuer.remove", operator_actor(actor), resource=resource)
        try:
            if not await self._storage.delete_trusted_issuer(name):
                raise NotFoundError(f"no trusted issuer {name!r}")
        except TetherError as exc:
            await record_failure(self._audit, "issuer.remove", actor, resource, exc)
            raise

    async def trusted(self, issuer: str) -> TrustedIssuer | None:
        """The trusted issuer for an ``iss`` claim, or None. For the token-exchange path (no audit)."""
        return await self._storage.get_trusted_issuer_by_issuer(issuer)
