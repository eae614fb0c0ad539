"""Audit events and their hash chain: pure data, canonical encoding, hashing, fingerprints.

Nothing here does I/O; ``tether.audit`` appends, stores, exports and verifies.

Canonical encoding
------------------
An event's *body* is a JSON object holding every field except ``hash``::

    {"v": 1, "seq": 7, "prev_hash": "<64 hex>", "time_us": 1767225600000000, "node": "node-1",
     "kind": "decision", "actor": {"type": "agent", "id": "spiffe://acme.test/agent/bot"},
     "resource": "secret:prod/github/token", "task_id": "...", "chain": ["..."],
     "decision": {"allowed": false, "policies": ["deny-restricted"], "missing": ["approval"]},
     "reason": "...", "request_id": "...", "data": {...}}

Optional fields are omitted when they hold their default (None, empty, ""), so the body
of an event is one exact byte string. It is encoded as RFC 8785 (JCS): for the values
allowed here — strings, integers of at most 53 bits, booleans, null, arrays and objects
whose keys are ASCII — ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` encoded as UTF-8 *is* JCS. Floats (whose JCS form Python does not
produce), NaN, non-string keys, non-ASCII keys (JCS sorts by UTF-16 code units, Python by
code points) and lone surrogates are refused when an event is built, so the encoding is
always exact and any JCS implementation reproduces it.

Hash chain
----------
``hash = SHA-256(prev_hash ‖ canonical_json(body))`` where ``prev_hash`` is the previous
event's 32-byte hash (32 zero bytes for event 1) and also appears, hex, in the body.
Sequence numbers start at 1 and increase by exactly 1.

Sensitive values
----------------
No secret value, token or key ever goes into an event. Where an event must name one
(so that an operator can later find its uses), it carries
``"hmac-sha256:" + hex(HMAC-SHA256(audit key, value))`` from a :class:`Fingerprinter`
keyed per deployment. Wrap such values in :class:`Sensitive` when recording: the audit
log fingerprints them before the event exists.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NoReturn, TypeAlias

from tether.errors import InvalidInputError

__all__ = [
    "EVENT_FORMAT_VERSION",
    "EVENT_KINDS",
    "FINGERPRINT_PREFIX",
    "GENESIS_HASH",
    "HASH_BYTES",
    "Actor",
    "ActorType",
    "DecisionSummary",
    "Event",
    "EventDraft",
    "Fingerprinter",
    "JsonValue",
    "MalformedEventError",
    "Sensitive",
    "canonical_json",
    "compute_hash",
    "contains_sensitive",
    "event_body",
    "event_body_json",
    "from_time_us",
    "seal_event",
    "time_us",
]

JsonValue: TypeAlias = "str | int | bool | list[JsonValue] | dict[str, JsonValue] | None"

EVENT_FORMAT_VERSION = 1
HASH_BYTES = 32
GENESIS_HASH = bytes(HASH_BYTES)
FINGERPRINT_PREFIX = "hmac-sha256:"

#: The event vocabulary: kind → what it records. Unknown kinds are refused, so that every
#: kind an auditor can meet is documented here (docs/audit.md renders this table).
EVENT_KINDS: Mapping[str, str] = MappingProxyType(
    {
        "auth.token": "an agent obtained (or was refused) an access token",
        "auth.failed": "an agent request failed authentication (token, proof, replay, disabled agent)",
        "task.open": "an agent opened a task (intent declared)",
        "task.update": "a task's context changed and was re-evaluated",
        "task.end": "a task completed, failed, expired or was revoked",
        "decision": "one policy evaluation: allow or deny, the determining policies, what is missing",
        "grant.issue": "a grant was issued for a task (no secret material)",
        "grant.activate": "a grant was used: inject, reveal or dynamic",
        "grant.revoke": "a grant was revoked",
        "delegation": "an agent handed a narrower sub-task to another agent",
        "approval.request": "an approval was requested for a task, action and resource",
        "approval.decide": "an approver approved or denied a request",
        "secret.write": "an operator wrote a secret (a new version; the value only as a fingerprint)",
        "secret.rotate": "an operator rotated a secret's value",
        "secret.update": "an operator changed a secret's metadata (no new version; the value is untouched)",
        "secret.delete": "an operator deleted a secret",
        "policy.deploy": "a policy set version was deployed",
        "operator.create": "an operator was created",
        "operator.revoke": "an operator was revoked",
        "operator.auth_failed": "an operator credential was refused",
        "console.login": "an operator signed in to the web console (a session opened with their token)",
        "console.logout": "an operator signed out of the web console (the session is refused from then on)",
        "agent.register": "an operator registered an agent",
        "agent.disable": "an operator disabled an agent (its tokens stop working)",
        "agent.key_add": "an operator added a public key to an agent",
        "agent.key_remove": "an operator removed a public key from an agent",
        "issuer.add": "an operator added a trusted token issuer (federation)",
        "issuer.remove": "an operator removed a trusted token issuer",
        "destination.add": "an operator registered a destination (an egress upstream and its injection)",
        "destination.remove": "an operator removed a destination",
        "egress.redact": "the egress leak guard redacted an injected secret from an upstream response "
        "(reflection or exfiltration attempt)",
        "mcp.server.add": "an operator registered an upstream MCP server (its tools' definitions pinned)",
        "mcp.server.remove": "an operator removed an upstream MCP server",
        "mcp.server.approve": "an operator approved changed or new tool definitions of an MCP upstream",
        "mcp.tool.quarantine": "an upstream MCP server's tool changed or appeared after pinning: quarantined",
        "mcp.session.open": "the MCP gateway opened an upstream for a task (its secrets injected there)",
        "mcp.session.close": "the MCP gateway closed a task's upstream (task ended; process tree killed)",
        "tool.call": "an agent called a tool through the MCP gateway (the decision, the argument shape)",
        "tool.redact": "the MCP gateway redacted an injected secret from a tool's answer or notification",
        "sys.init": "the deployment was initialised",
        "sys.seal": "the node was sealed",
        "sys.unseal": "the node was unsealed",
        "sys.keys.rotate": "the key-encryption key was rotated",
        "audit.checkpoint": "a signed checkpoint of the chain head was taken",
        "scan.run": "an operator ran a sprawl scan: counts, and the paths and fingerprints of governed "
        "secrets found (never a value)",
        "ssf.stream.add": "an operator registered a Shared Signals receiver (a stream) and the events "
        "it wants",
        "ssf.stream.update": "an operator enabled, paused or disabled a Shared Signals stream",
        "ssf.stream.remove": "an operator removed a Shared Signals stream (and its delivery log)",
    }
)

# Dotted lowercase words; the vocabulary above is the authority, the shape is a sanity net.
_KIND = re.compile(r"[a-z]+(\.[a-z_]+)*")
_KNOWN_KINDS = frozenset(EVENT_KINDS)
_TEXT = re.compile(r"[^\x00-\x1f\x7f]+")  # one line of printable text
_RESOURCE = re.compile(r"[a-z_]+:[^\x00-\x1f\x7f]+")
_DATA_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# Keys already found valid (a small vocabulary: events use the same few dozen), bounded.
_GOOD_KEYS: set[str] = set()
_GOOD_KEYS_MAX = 4096

MAX_ID_CHARS = 256
MAX_RESOURCE_CHARS = 512
MAX_REASON_CHARS = 1024
MAX_CHAIN = 32
MAX_NAMES = 64
MAX_DATA_BYTES = 16 * 1024
MAX_DATA_DEPTH = 6
# JCS serialises numbers as IEEE doubles: integers beyond 2**53 would not round-trip.
MAX_SAFE_INT = 2**53 - 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class MalformedEventError(InvalidInputError):
    """An event (or its JSON form) is not well formed."""


def _fail(message: str, field_name: str | None = None) -> MalformedEventError:
    return MalformedEventError(message, field=field_name)


# -- time ---------------------------------------------------------------------------------
def time_us(value: datetime) -> int:
    """Microseconds since the Unix epoch, exactly (no float on the way)."""
    if value.tzinfo is None:
        raise _fail("event time must be timezone-aware", "time")
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_time_us(value: int) -> datetime:
    """The aware UTC datetime ``value`` microseconds after the Unix epoch."""
    return _EPOCH + timedelta(microseconds=value)


# -- JSON values and the canonical encoding ----------------------------------------------------
def _check_text(value: object, name: str, *, max_chars: int, pattern: re.Pattern[str] = _TEXT) -> str:
    # An ASCII string is printable (\x20-\x7e) exactly when it holds none of \x00-\x1f\x7f, which
    # is what _TEXT asks; both checks run in C, without the regex's steps for every character.
    if (
        pattern is _TEXT
        and type(value) is str
        and 0 < len(value) <= max_chars
        and value.isascii()
        and value.isprintable()
    ):
        return value
    if not isinstance(value, str) or not (0 < len(value) <= max_chars) or not pattern.fullmatch(value):
        raise _fail(f"{name} must be 1-{max_chars} printable characters", name)
    _check_encodable(value, name)
    return value


def _check_encodable(value: str, name: str) -> None:
    if value.isascii():  # CPython knows this without looking at the characters
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(f"{name} holds an unpaired surrogate", name) from None


class _FrozenDict(dict):  # type: ignore[type-arg]
    """A read-only ``dict``: an event's data objects after checking. A ``dict`` (not a mapping
    proxy) so that the JSON encoder takes it as it is, without a thawed copy per encoding."""

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("event data is read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __repr__(self) -> str:
        return f"frozen({dict.__repr__(self)})"

    def __reduce__(self) -> tuple[type[_FrozenDict], tuple[dict[str, Any]]]:
        # copy, deepcopy and pickle rebuild it whole (their default fills it item by item)
        return (_FrozenDict, (dict(self),))


_EMPTY: Mapping[str, Any] = _FrozenDict()


def _json_copy(value: object, path: str, depth: int, *, freeze: bool = False) -> Any:
    """A deep copy of ``value`` if it is a JSON value this format allows; else raise.

    With ``freeze``, arrays become tuples and objects read-only dicts, so that an event's
    content cannot change after its hash was computed.
    """
    kind = type(value)  # exact types first: the common case costs no ABC check
    if kind is str:
        _check_encodable(value, path)  # type: ignore[arg-type]
        return value
    if value is None or kind is bool:
        return value
    if kind is int:
        return _safe_int(value, path)  # type: ignore[arg-type]
    if kind is dict or kind is list or kind is tuple or kind is _FrozenDict:
        return _json_container(value, path, depth, freeze)
    return _json_other(value, path, depth, freeze)


def _safe_int(value: int, path: str) -> int:
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise _fail(f"{path}: integers must fit in 53 bits for an exact canonical encoding", "data")
    return int(value)


def _json_other(value: object, path: str, depth: int, freeze: bool) -> Any:
    """Subclasses of the JSON types (enums, ...) as their base type; everything else refused."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _safe_int(value, path)
    if isinstance(value, str):
        _check_encodable(value, path)
        return str(value)
    if isinstance(value, float):
        raise _fail(f"{path}: floats are not allowed in events (use integers or strings)", "data")
    if isinstance(value, Sensitive):
        raise _fail("event data holds a Sensitive value: fingerprint it first", "data")
    if isinstance(value, list | tuple | Mapping):
        return _json_container(value, path, depth, freeze)
    raise _fail(f"{path}: {type(value).__name__} is not a JSON value", "data")


def _json_container(value: Any, path: str, depth: int, freeze: bool) -> Any:
    if depth >= MAX_DATA_DEPTH:
        raise _fail(f"{path}: nested deeper than {MAX_DATA_DEPTH} levels", "data")
    if isinstance(value, list | tuple):
        return _json_array(value, path, depth + 1, freeze)
    return _json_object(value, path, depth + 1, freeze)


# In both: the common leaves (ASCII strings, booleans, null, 53-bit integers) are taken as they are,
# without a call and without the path built for their errors; everything else, including every
# leaf that may be refused, goes through _json_copy with its path.


def _json_array(value: list[Any] | tuple[Any, ...], path: str, depth: int, freeze: bool) -> Any:
    items = []
    for index, item in enumerate(value):
        kind = type(item)
        if (
            (kind is str and item.isascii())
            or kind is bool
            or item is None
            or (kind is int and -MAX_SAFE_INT <= item <= MAX_SAFE_INT)
        ):
            items.append(item)
        else:
            items.append(_json_copy(item, f"{path}[{index}]", depth, freeze=freeze))
    return tuple(items) if freeze else items


def _json_object(value: Mapping[Any, Any], path: str, depth: int, freeze: bool) -> Any:
    result: dict[str, Any] = {}
    for key, item in value.items():
        if key not in _GOOD_KEYS:
            if not isinstance(key, str) or not _DATA_KEY.fullmatch(key):
                raise _fail(f"{path}: keys must be 1-64 ASCII letters, digits, '_', '.', ':' or '-'", "data")
            if len(_GOOD_KEYS) < _GOOD_KEYS_MAX:
                _GOOD_KEYS.add(key)
        kind = type(item)
        if (
            (kind is str and item.isascii())
            or kind is bool
            or item is None
            or (kind is int and -MAX_SAFE_INT <= item <= MAX_SAFE_INT)
        ):
            result[key] = item
        else:
            result[key] = _json_copy(item, f"{path}.{key}", depth, freeze=freeze)
    # dict's constructor copies without calling the read-only __setitem__.
    return _FrozenDict(result) if freeze else result


def _thaw(value: Any) -> JsonValue:
    """Plain lists and dicts again (for JSON encoders other than ours)."""
    if isinstance(value, tuple | list):
        return [_thaw(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    return value  # type: ignore[no-any-return]


#: The encoding of a JSON string (with ``ensure_ascii=False``): what the encoder uses for every string.
_escape: Callable[[str], str] = json.encoder.encode_basestring


def _make_encoder() -> Callable[[object], str]:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, built once:
    ``json.dumps`` with options builds a new encoder for every call, which costs more than encoding
    an event's few small objects. Its circular-reference check is off: everything encoded here is
    a checked copy (:func:`_json_copy` refuses nesting deeper than :data:`MAX_DATA_DEPTH`, so it
    cannot hold a cycle) or a body assembled from such copies."""
    options = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:  # pragma: no cover - an interpreter without the C accelerator
        return options.encode
    chunks = make(None, options.default, _escape, None, ":", ",", True, False, True)

    def encode(value: object) -> str:
        return "".join(chunks(value, 0))

    return encode


_encode_text = _make_encoder()


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """The RFC 8785 (JCS) encoding of ``value``, after checking it holds only allowed values."""
    checked = _json_copy(value, "$", -1)  # -1: the envelope itself does not count as depth
    return _encode_text(checked).encode("utf-8")


def _encode_trusted(value: Mapping[str, JsonValue]) -> bytes:
    # For bodies assembled from already-validated parts: skips the second walk.
    return _encode_text(value).encode("utf-8")


def _names_json(names: tuple[str, ...]) -> str:
    return "[" + ",".join(map(_escape, names)) + "]"


def _sealed_body_json(
    draft: EventDraft, *, seq: int, prev_hash_hex: str, time_value: int, node_id: str
) -> str:
    """The canonical encoding of the body :func:`_body` builds for ``draft``, assembled from its
    members in key order around the encoding of ``data`` the draft made for its size check.

    The same text :func:`_encode_trusted` gives for that body: the top level of a canonical
    encoding is its members sorted by key, each ``"key":value``, joined by commas, and every string
    here goes through the encoder's own escaping. The members are those of :func:`_body`, in
    sorted order (actor, chain, data, decision, kind, node, prev_hash, reason, request_id,
    resource, seq, task_id, time_us, v); every value was checked when the draft was built (a
    string, a 53-bit integer, a boolean) or is checked by :func:`seal_event`. Verification does
    not use this: it encodes a stored event's body with the encoder, so a difference would show
    there as a broken hash (and ``tests/unit/test_event_encoding.py`` compares the two)."""
    actor = draft.actor
    parts = ['{"actor":{"id":', _escape(actor.id), ',"type":', _escape(actor.type.value), "}"]
    if draft.chain:
        parts += (',"chain":', _names_json(draft.chain))
    if draft.data:
        data_json = draft._data_json
        parts += (',"data":', data_json if data_json is not None else _encode_text(draft.data))
    decision = draft.decision
    if decision is not None:
        parts += (
            ',"decision":{"allowed":',
            "true" if decision.allowed else "false",
            ',"missing":',
            _names_json(decision.missing),
            ',"policies":',
            _names_json(decision.policies),
            "}",
        )
    parts += (
        ',"kind":',
        _escape(draft.kind),
        ',"node":',
        _escape(node_id),
        ',"prev_hash":"',
        prev_hash_hex,
        '"',
    )
    if draft.reason:
        parts += (',"reason":', _escape(draft.reason))
    if draft.request_id is not None:
        parts += (',"request_id":', _escape(draft.request_id))
    if draft.resource is not None:
        parts += (',"resource":', _escape(draft.resource))
    parts += (',"seq":', int.__repr__(seq))
    if draft.task_id is not None:
        parts += (',"task_id":', _escape(draft.task_id))
    parts += (',"time_us":', int.__repr__(time_value), ',"v":', int.__repr__(EVENT_FORMAT_VERSION), "}")
    return "".join(parts)


# -- parts of an event --------------------------------------------------------------------------
class ActorType(StrEnum):
    AGENT = "agent"
    OPERATOR = "operator"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it: an agent (SPIFFE ID), an operator (name) or the system (node id)."""

    type: ActorType
    id: str

    def __post_init__(self) -> None:
        if type(self.type) is not ActorType:  # ActorType(member) is the member
            try:
                object.__setattr__(self, "type", ActorType(self.type))
            except (ValueError, TypeError):
                raise _fail("actor type must be agent, operator or system", "actor") from None
        _check_text(self.id, "actor id", max_chars=MAX_ID_CHARS)

    @classmethod
    def agent(cls, agent_id: str) -> Actor:
        return cls(ActorType.AGENT, agent_id)

    @classmethod
    def operator(cls, name: str) -> Actor:
        return cls(ActorType.OPERATOR, name)

    @classmethod
    def system(cls, node_id: str) -> Actor:
        return cls(ActorType.SYSTEM, node_id)


def _names(values: Iterable[str], name: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise _fail(f"{name} must be a list of strings, not a string", name)
    items = tuple(values)
    if len(items) > MAX_NAMES:
        raise _fail(f"{name} holds more than {MAX_NAMES} entries", name)
    for item in items:
        _check_text(item, name, max_chars=MAX_ID_CHARS)
    return items


@dataclass(frozen=True, slots=True)
class DecisionSummary:
    """What an event says about a policy decision: allowed, determining policies, missing."""

    allowed: bool
    policies: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.allowed, bool):
            raise _fail("decision.allowed must be a boolean", "decision")
        object.__setattr__(self, "policies", _names(self.policies, "decision.policies"))
        object.__setattr__(self, "missing", _names(self.missing, "decision.missing"))


@dataclass(frozen=True, slots=True)
class Sensitive:
    """A value that must only ever appear in the audit log as its fingerprint."""

    value: bytes | str

    def __repr__(self) -> str:  # never print the value
        return "Sensitive(<redacted>)"


class Fingerprinter:
    """HMAC-SHA256 under the deployment's audit key: find uses of a known value, learn nothing
    about unknown ones."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != 32:
            raise ValueError("the audit HMAC key must be 32 bytes")
        self._key = key

    def fingerprint(self, value: bytes | str) -> str:
        """``"hmac-sha256:" + hex`` of ``value`` (strings are UTF-8 encoded first)."""
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return FINGERPRINT_PREFIX + hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def redact(self, value: object) -> object:
        """``value`` with every :class:`Sensitive` inside (dicts, lists) replaced by its fingerprint."""
        if isinstance(value, Sensitive):
            return self.fingerprint(value.value)
        if isinstance(value, Mapping):
            return {k: self.redact(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact(v) for v in value]
        return value

    def __repr__(self) -> str:
        return "Fingerprinter(<key>)"


def contains_sensitive(value: object) -> bool:
    """Whether a :class:`Sensitive` value sits anywhere inside ``value`` (dicts, lists)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return False
    if isinstance(value, Sensitive):
        return True
    if isinstance(value, Mapping):
        return any(contains_sensitive(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(contains_sensitive(v) for v in value)
    return False


# -- the event ------------------------------------------------------------------------------
def _check_kind(kind: object) -> str:
    if type(kind) is str and kind in _KNOWN_KINDS:  # every known kind has the shape (a test says so)
        return kind
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise _fail("event kind must be dotted lowercase words, e.g. grant.issue", "kind")
    if kind not in EVENT_KINDS:
        raise _fail(f"unknown event kind {kind!r}; see tether.domain.events.EVENT_KINDS", "kind")
    return kind


def _check_data(data: object) -> tuple[Mapping[str, Any], str | None]:
    """The data copied and deep-frozen, and its canonical encoding (``None`` when empty), which
    the size check needs anyway and sealing reuses."""
    if data is None or (type(data) is _FrozenDict and not data):
        return _EMPTY, None
    if not isinstance(data, Mapping):
        raise _fail("event data must be a mapping", "data")
    # One walk: copied, frozen, and refused if a Sensitive value sits anywhere inside.
    frozen: Mapping[str, Any] = _json_copy(data, "data", 0, freeze=True)
    encoded = _encode_text(frozen)
    size = len(encoded) if encoded.isascii() else len(encoded.encode("utf-8"))  # UTF-8 bytes
    if size + len(b'{"data":}') > MAX_DATA_BYTES:
        raise _fail(f"event data exceeds {MAX_DATA_BYTES} bytes", "data")
    return frozen, encoded if frozen else None


@dataclass(frozen=True, slots=True)
class EventDraft:
    """What the caller says happened; the audit log gives it a place in the chain.

    ``data`` is copied and deep-frozen (arrays become tuples, objects read-only mappings).
    """

    kind: str
    actor: Actor
    resource: str | None = None
    task_id: str | None = None
    chain: tuple[str, ...] = ()
    decision: DecisionSummary | None = None
    reason: str = ""
    request_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    #: The canonical encoding of ``data`` (set with it, when checked; reused when sealing).
    _data_json: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_content(self)


def _check_content(content: EventDraft | Event) -> None:
    """The content rules shared by drafts and events (normalises ``chain`` and ``data``)."""
    _check_kind(content.kind)
    if not isinstance(content.actor, Actor):
        raise _fail("actor must be an Actor", "actor")
    if content.resource is not None:
        _check_text(content.resource, "resource", max_chars=MAX_RESOURCE_CHARS, pattern=_RESOURCE)
    if content.task_id is not None:
        _check_text(content.task_id, "task_id", max_chars=MAX_ID_CHARS)
    chain = _names(content.chain, "chain")
    if len(chain) > MAX_CHAIN:
        raise _fail(f"a delegation chain holds at most {MAX_CHAIN} tasks", "chain")
    object.__setattr__(content, "chain", chain)
    if content.decision is not None and not isinstance(content.decision, DecisionSummary):
        raise _fail("decision must be a DecisionSummary", "decision")
    if not isinstance(content.reason, str) or len(content.reason) > MAX_REASON_CHARS:
        raise _fail(f"reason must be a string of at most {MAX_REASON_CHARS} characters", "reason")
    _check_encodable(content.reason, "reason")
    if content.request_id is not None:
        _check_text(content.request_id, "request_id", max_chars=MAX_ID_CHARS)
    data, encoded = _check_data(content.data)
    object.__setattr__(content, "data", data)
    if isinstance(content, EventDraft):
        object.__setattr__(content, "_data_json", encoded)


@dataclass(frozen=True, slots=True)
class Event:
    """One audit record in the chain. Built by :func:`seal_event` or parsed from a record
    (:mod:`tether.domain.event_records`); a parsed event's ``hash`` is what was stored, and is
    checked by verification, not here. Immutable all the way down (see :class:`EventDraft`), so
    its content cannot drift from its hash."""

    seq: int
    time: datetime
    node_id: str
    kind: str
    actor: Actor
    prev_hash: bytes
    hash: bytes
    resource: str | None = None
    task_id: str | None = None
    chain: tuple[str, ...] = ()
    decision: DecisionSummary | None = None
    reason: str = ""
    request_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    # The canonical body text, kept by seal_event (which hashed exactly that text) so storing the
    # event does not encode it again; never passed in, never compared.
    _body_json: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seq, int) or isinstance(self.seq, bool) or not 1 <= self.seq <= MAX_SAFE_INT:
            raise _fail("seq must be a positive integer", "seq")
        if not isinstance(self.time, datetime) or self.time.tzinfo is None:
            raise _fail("event time must be an aware datetime", "time")
        object.__setattr__(self, "time", self.time.astimezone(UTC))
        _check_text(self.node_id, "node", max_chars=MAX_ID_CHARS)
        for name in ("prev_hash", "hash"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != HASH_BYTES:
                raise _fail(f"{name} must be {HASH_BYTES} bytes", name)
        _check_content(self)

    @property
    def time_us(self) -> int:
        return time_us(self.time)

    @property
    def allowed(self) -> bool | None:
        return None if self.decision is None else self.decision.allowed

    def computed_hash(self) -> bytes:
        """The hash this event's content implies (compare with :attr:`hash`)."""
        return compute_hash(self.prev_hash, event_body_json(self).encode("utf-8"))


def compute_hash(prev_hash: bytes, body: bytes) -> bytes:
    """``SHA-256(prev_hash ‖ body)`` where ``body`` is the canonical JSON of the event body."""
    return hashlib.sha256(prev_hash + body).digest()


def _body(
    *,
    seq: int,
    prev_hash: bytes,
    time_value: int,
    node_id: str,
    draft: EventDraft | Event,
) -> dict[str, JsonValue]:
    body: dict[str, JsonValue] = {
        "v": EVENT_FORMAT_VERSION,
        "seq": seq,
        "prev_hash": prev_hash.hex(),
        "time_us": time_value,
        "node": node_id,
        "kind": draft.kind,
        "actor": {"type": draft.actor.type.value, "id": draft.actor.id},
    }
    if draft.resource is not None:
        body["resource"] = draft.resource
    if draft.task_id is not None:
        body["task_id"] = draft.task_id
    if draft.chain:
        body["chain"] = list(draft.chain)
    if draft.decision is not None:
        body["decision"] = {
            "allowed": draft.decision.allowed,
            "policies": list(draft.decision.policies),
            "missing": list(draft.decision.missing),
        }
    if draft.reason:
        body["reason"] = draft.reason
    if draft.request_id is not None:
        body["request_id"] = draft.request_id
    if draft.data:
        # Checked and frozen data (read-only dicts and tuples) encodes as it is.
        body["data"] = draft.data  # type: ignore[assignment]
    return body


def event_body(event: Event) -> dict[str, JsonValue]:
    """The hashed part of ``event``: every field but ``hash``, defaults omitted (plain JSON
    values: lists and dicts)."""
    body = _body(
        seq=event.seq, prev_hash=event.prev_hash, time_value=event.time_us, node_id=event.node_id, draft=event
    )
    if "data" in body:
        body["data"] = _thaw(body["data"])
    return body


def event_body_json(event: Event) -> str:
    """The canonical JSON text of :func:`event_body` (what storage keeps and the hash covers)."""
    if event._body_json is not None:
        return event._body_json
    body = _body(
        seq=event.seq, prev_hash=event.prev_hash, time_value=event.time_us, node_id=event.node_id, draft=event
    )
    return _encode_trusted(body).decode("utf-8")


def seal_event(draft: EventDraft, *, seq: int, prev_hash: bytes, time: datetime, node_id: str) -> Event:
    """Give ``draft`` its place in the chain: sequence number, time, node, links and hash."""
    if not isinstance(draft, EventDraft):
        raise TypeError("seal_event takes an EventDraft")
    # The draft's content was checked when it was built and cannot have changed (frozen, its data
    # deep-frozen); only what sealing adds is checked here, instead of every rule a second time.
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SAFE_INT:
        raise _fail("seq must be a positive integer", "seq")
    if time.tzinfo is None:
        raise _fail("event time must be an aware datetime", "time")
    when = time.astimezone(UTC)
    _check_text(node_id, "node", max_chars=MAX_ID_CHARS)
    if not isinstance(prev_hash, bytes) or len(prev_hash) != HASH_BYTES:
        raise _fail(f"prev_hash must be {HASH_BYTES} bytes", "prev_hash")
    text = _sealed_body_json(
        draft, seq=seq, prev_hash_hex=prev_hash.hex(), time_value=time_us(when), node_id=node_id
    )
    digest = compute_hash(prev_hash, text.encode("utf-8"))
    event: Event = object.__new__(Event)
    for name, value in (
        ("seq", seq),
        ("time", when),
        ("node_id", node_id),
        ("kind", draft.kind),
        ("actor", draft.actor),
        ("prev_hash", prev_hash),
        ("hash", digest),
        ("resource", draft.resource),
        ("task_id", draft.task_id),
        ("chain", draft.chain),
        ("decision", draft.decision),
        ("reason", draft.reason),
        ("request_id", draft.request_id),
        ("data", draft.data),
        ("_body_json", text),
    ):
        object.__setattr__(event, name, value)
    return event
