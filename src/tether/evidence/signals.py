"""Shared Signals (OpenID SSF 1.0) and CAEP: what Tether tells relying parties, as data (pure: no I/O).

Tether is a *transmitter*. Operators register receivers (streams) and the events each wants; when a
task ends, a lease is revoked, a secret rotates or a task's context changes, the broker turns the
audit event into Security Event Tokens (RFC 8417) and pushes them (RFC 8935). This module holds the
vocabulary, the stream's validation, which signals an audit event yields, the SET claims, and the
retry schedule. Subjects name the task (``session``) and the agent (``user``, its SPIFFE ID), or a
secret by its path: never secret material.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from tether.domain.events import Event
from tether.errors import InvalidInputError

__all__ = [
    "DELIVERY_PUSH",
    "EVENT_TYPES",
    "MAX_ATTEMPTS",
    "SET_TYPE",
    "Signal",
    "StreamConfig",
    "backoff_seconds",
    "delivery_id",
    "discovery_document",
    "is_public_address",
    "set_claims",
    "signals_for",
    "validate_receiver_url",
]

DELIVERY_PUSH: Final = "urn:ietf:rfc:8935"
SET_TYPE: Final = "secevent+jwt"
CAEP: Final = "https://schemas.openid.net/secevent/caep/event-type/"
SESSION_REVOKED: Final = CAEP + "session-revoked"
CREDENTIAL_CHANGE: Final = CAEP + "credential-change"
TASK_CONTEXT_CHANGE: Final = "urn:tether:secevent:event-type:task-context-change"
VERIFICATION: Final = "https://schemas.openid.net/secevent/ssf/event-type/verification"

#: Short names (CLI, API) → event type URIs a stream may ask for.
EVENT_TYPES: Final[Mapping[str, str]] = {
    "session-revoked": SESSION_REVOKED,
    "credential-change": CREDENTIAL_CHANGE,
    "task-context-change": TASK_CONTEXT_CHANGE,
}
#: Audit event kinds the transmitter reads.
SOURCE_KINDS: Final = frozenset({"task.end", "grant.revoke", "task.update", "secret.rotate", "secret.delete"})

#: Delivery attempts before a SET is marked failed; the waits between them double from 1 s, to 10 min.
MAX_ATTEMPTS: Final = 8
_FIRST_WAIT_SECONDS: Final = 1.0
_MAX_WAIT_SECONDS: Final = 600.0
MAX_STREAMS: Final = 100
MAX_DESCRIPTION: Final = 256
_LOOPBACK_NAMES: Final = frozenset({"localhost"})
_AUDIENCE: Final = re.compile(r"[\x21-\x7e]{1,512}")


def backoff_seconds(attempts: int) -> float:
    """The wait after ``attempts`` failed attempts (1, 2, 4, … seconds, at most 10 minutes)."""
    return float(min(_MAX_WAIT_SECONDS, _FIRST_WAIT_SECONDS * 2 ** max(0, attempts - 1)))


def is_public_address(address: str) -> bool:
    """True for a globally routable address (not private, loopback, link-local, reserved, …)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(ip.is_global) and not ip.is_multicast


def _is_loopback_host(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_receiver_url(value: object) -> tuple[str, bool]:
    """``(url, loopback)``: an absolute https URL (plain http only for a loopback host, for
    development), no credentials or fragment. Whether its host resolves to a public address is
    checked by the broker (DNS is I/O)."""
    if not isinstance(value, str) or not 0 < len(value) <= 2048 or any(ord(c) < 33 for c in value):
        raise InvalidInputError(
            "endpoint_url must be an absolute URL of at most 2048 characters", field="endpoint_url"
        )
    parts = urllib.parse.urlsplit(value)
    host = (parts.hostname or "").lower()
    if parts.scheme not in {"https", "http"} or not host:
        raise InvalidInputError("endpoint_url must be an https URL", field="endpoint_url")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise InvalidInputError("endpoint_url must not carry credentials or a fragment", field="endpoint_url")
    try:
        parts.port  # noqa: B018 - a bad port raises
    except ValueError:
        raise InvalidInputError("endpoint_url has an invalid port", field="endpoint_url") from None
    loopback = _is_loopback_host(host)
    if parts.scheme == "http" and not loopback:
        raise InvalidInputError(
            "endpoint_url must use https (plain http only for a loopback receiver, in development)",
            field="endpoint_url",
        )
    return value, loopback


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """One receiver: where SETs are pushed, the events it asked for, the ``aud`` it expects."""

    id: str
    endpoint_url: str
    events_requested: tuple[str, ...]
    audience: str
    description: str
    created_by: str
    created_at: datetime
    status: str = "enabled"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"ssf_[A-Za-z0-9_-]{8,60}", self.id):
            raise InvalidInputError("invalid stream id", field="stream_id")
        validate_receiver_url(self.endpoint_url)
        if not self.events_requested:
            raise InvalidInputError("ask for at least one event type", field="events_requested")
        known = set(EVENT_TYPES.values())
        unknown = [e for e in self.events_requested if e not in known]
        if unknown:
            names = ", ".join(sorted(EVENT_TYPES))
            raise InvalidInputError(
                f"unknown event type {unknown[0]!r}; supported: {names} (or their URIs)",
                field="events_requested",
            )
        if not _AUDIENCE.fullmatch(self.audience):
            raise InvalidInputError("aud must be 1-512 printable characters", field="aud")
        if len(self.description) > MAX_DESCRIPTION or any(ord(c) < 32 for c in self.description):
            raise InvalidInputError(
                f"description: at most {MAX_DESCRIPTION} printable characters", field="description"
            )
        if self.status not in {"enabled", "paused", "disabled"}:
            raise InvalidInputError("status must be enabled, paused or disabled", field="status")

    @staticmethod
    def event_uris(names: Iterable[str]) -> tuple[str, ...]:
        """Event types from short names or URIs, deduplicated, in order."""
        uris: list[str] = []
        for name in names:
            uri = EVENT_TYPES.get(name, name) if isinstance(name, str) else ""
            if uri not in uris:
                uris.append(uri)
        return tuple(uris)

    def to_json(self) -> dict[str, Any]:
        """The SSF stream configuration, as ``GET /v1/ssf/streams/{id}`` answers it."""
        return {
            "stream_id": self.id,
            "delivery": {"method": DELIVERY_PUSH, "endpoint_url": self.endpoint_url},
            "events_supported": list(EVENT_TYPES.values()),
            "events_requested": list(self.events_requested),
            "events_delivered": list(self.events_requested),
            "aud": self.audience,
            "description": self.description,
            "status": self.status,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
        }

    def to_body(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint_url,
            "events_requested": list(self.events_requested),
            "aud": self.audience,
            "description": self.description,
            "created_by": self.created_by,
        }

    @classmethod
    def from_body(
        cls, stream_id: str, body: Mapping[str, Any], status: str, created_at: datetime
    ) -> StreamConfig:
        return cls(
            id=stream_id,
            endpoint_url=str(body["endpoint_url"]),
            events_requested=tuple(body["events_requested"]),
            audience=str(body["aud"]),
            description=str(body.get("description", "")),
            created_by=str(body.get("created_by", "")),
            created_at=created_at,
            status=status,
        )


@dataclass(frozen=True, slots=True)
class Signal:
    """One thing to tell receivers: its event type, subject, payload and a key that makes it
    unique per stream (the same task ending is told once, however many audit events name it)."""

    event_type: str
    subject: Mapping[str, Any]
    payload: Mapping[str, Any]
    key: str
    occurred_at: datetime
    seq: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def task_subject(task_id: str, agent_id: str) -> dict[str, Any]:
    """The task as a session and the agent as its user (SSF complex subject)."""
    return {
        "format": "complex",
        "session": {"format": "opaque", "id": task_id},
        "user": {"format": "uri", "uri": agent_id},
    }


def secret_subject(path: str) -> dict[str, Any]:
    return {"format": "opaque", "id": f"secret:{path}"}


def _ids(data: Mapping[str, Any], key: str) -> list[str]:
    value = data.get(key)
    # Stored events are frozen: their lists come back as tuples.
    return [v for v in value if isinstance(v, str)] if isinstance(value, list | tuple) else []


def ended_task_ids(event: Event) -> list[str]:
    """The tasks an audit event says ended (the task, its descendants, an agent's or a sweep's)."""
    found: list[str] = []
    if event.kind == "task.end" and event.task_id:
        found.append(event.task_id)
    if event.kind in {"task.end", "grant.revoke"}:
        found += _ids(event.data, "tasks_ended") + _ids(event.data, "tasks")
    if event.kind == "task.update":
        found += _ids(event.data, "sub_tasks_ended")
    return list(dict.fromkeys(t for t in found if t.startswith("tsk_")))


def _timestamp(when: datetime) -> int:
    return int(when.timestamp())


def signals_for(
    event: Event,
    agents: Mapping[str, str],
    leases: Mapping[str, Sequence[str]],
    ended: Iterable[str],
    contexts: Mapping[str, str] | None = None,
) -> list[Signal]:
    """The signals one audit event yields. ``agents``: task id → agent id of the tasks it names;
    ``leases``: task id → ids of its leases; ``ended``: the tasks that are in fact ended now (an
    ending that failed after its event was recorded tells nothing); ``contexts``: task id → its
    stored context hash (a context change is told only if it is the task's context now)."""
    ended_now = set(ended)
    when = event.time
    signals: list[Signal] = []
    reason = {"reason_admin": {"en": event.reason[:200]}} if event.reason else {}
    for task_id in ended_task_ids(event):
        agent = agents.get(task_id)
        if agent is None or task_id not in ended_now:
            continue
        subject = task_subject(task_id, agent)
        signals.append(
            Signal(
                SESSION_REVOKED,
                subject,
                {"event_timestamp": _timestamp(when), "initiating_entity": _initiator(event), **reason},
                f"session-revoked:{task_id}",
                when,
                event.seq,
            )
        )
        for lease_id in leases.get(task_id, ()):
            signals.append(
                Signal(
                    CREDENTIAL_CHANGE,
                    subject,
                    {
                        "event_timestamp": _timestamp(when),
                        "credential_type": "app",
                        "change_type": "revoke",
                        "tether_lease_id": lease_id,
                        "initiating_entity": _initiator(event),
                    },
                    f"credential-change:lease:{lease_id}",
                    when,
                    event.seq,
                )
            )
    resource = event.resource or ""
    if event.kind in {"secret.rotate", "secret.delete", "grant.revoke"} and resource.startswith("secret:"):
        # A rotation, a deletion, or an operator revoking every grant of the secret.
        path = resource.removeprefix("secret:")
        change = {"secret.rotate": "update", "secret.delete": "delete"}.get(event.kind, "revoke")
        signals.append(
            Signal(
                CREDENTIAL_CHANGE,
                secret_subject(path),
                {
                    "event_timestamp": _timestamp(when),
                    "credential_type": "app",
                    "change_type": change,
                    "initiating_entity": _initiator(event),
                },
                f"credential-change:secret:{path}:{event.seq}",
                when,
                event.seq,
            )
        )
    data = event.data
    if (
        event.kind == "task.update"
        and event.task_id
        and event.task_id in agents
        and (contexts or {}).get(event.task_id) == data.get("context_hash")
    ):
        payload: dict[str, Any] = {
            "event_timestamp": _timestamp(when),
            "initiating_entity": _initiator(event),
        }
        for key in ("context_hash", "purpose", "sensitivity", "status", "revoked_count"):
            value = data.get(key)
            if isinstance(value, int | str) and not isinstance(value, bool):
                payload[key] = value
        revoked = _ids(data, "grants_revoked")
        if revoked:
            payload["tether_grants_revoked"] = revoked  # grant ids: what the change took away
        signals.append(
            Signal(
                TASK_CONTEXT_CHANGE,
                task_subject(event.task_id, agents[event.task_id]),
                payload,
                f"task-context-change:{event.task_id}:{event.seq}",
                when,
                event.seq,
            )
        )
    return signals


def _initiator(event: Event) -> str:
    """CAEP ``initiating_entity``: ``admin`` (an operator), ``user`` (the agent), ``system``."""
    return {"operator": "admin", "agent": "user"}.get(event.actor.type.value, "system")


def delivery_id(stream_id: str, key: str) -> str:
    """The SET's ``jti`` and its delivery's id: the same signal for the same stream is one SET."""
    digest = hashlib.sha256(f"{stream_id}\x00{key}".encode()).hexdigest()[:40]
    return f"set_{digest}"


def set_claims(issuer: str, stream: StreamConfig, signal: Signal, jti: str, now: datetime) -> dict[str, Any]:
    """The claims of one SET (RFC 8417, SSF 1.0): ``iss``, ``aud``, ``iat``, ``jti``, ``sub_id``,
    ``events`` with one member; ``txn`` ties SETs of one audit event together."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": stream.audience,
        "iat": _timestamp(now),
        "jti": jti,
        "sub_id": dict(signal.subject),
        "events": {signal.event_type: dict(signal.payload)},
    }
    if signal.seq is not None:
        claims["txn"] = f"audit:{signal.seq}"
    return claims


def discovery_document(issuer: str, base_url: str) -> dict[str, Any]:
    """``/.well-known/ssf-configuration`` (SSF 1.0 §7.1)."""
    return {
        "spec_version": "1_0",
        "issuer": issuer,
        "jwks_uri": f"{base_url}/v1/auth/jwks",
        "delivery_methods_supported": [DELIVERY_PUSH],
        "configuration_endpoint": f"{base_url}/v1/ssf/streams",
        "status_endpoint": f"{base_url}/v1/ssf/status",
        "verification_endpoint": f"{base_url}/v1/ssf/verify",
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6750"}],
        "default_subjects": "ALL",
        "events_supported": list(EVENT_TYPES.values()),
    }
