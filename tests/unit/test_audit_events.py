"""The event model: validation, canonical encoding, hashing, JSON form, fingerprints."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import math
import pickle
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum, StrEnum

import pytest

from tether.domain.event_records import event_from_body, event_from_json, event_to_json
from tether.domain.events import (
    _KIND,
    _TEXT,
    EVENT_KINDS,
    GENESIS_HASH,
    Actor,
    ActorType,
    DecisionSummary,
    Event,
    EventDraft,
    Fingerprinter,
    MalformedEventError,
    Sensitive,
    canonical_json,
    compute_hash,
    event_body,
    event_body_json,
    from_time_us,
    seal_event,
    time_us,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
AGENT = Actor.agent("spiffe://acme.test/agent/deployer")


def draft(**changes: object) -> EventDraft:
    values: dict[str, object] = {
        "kind": "decision",
        "actor": AGENT,
        "resource": "secret:prod/github/token",
        "task_id": "task-1",
        "chain": ("task-0",),
        "decision": DecisionSummary(False, ("deny-restricted",), ("approval",)),
        "reason": "restricted secret needs an approval",
        "request_id": "req-1",
        "data": {"mode": "inject", "uses": 3, "tags": ["a", "b"], "nested": {"ok": True, "none": None}},
    }
    values.update(changes)
    return EventDraft(**values)  # type: ignore[arg-type]


def sealed(seq: int = 1, prev: bytes = GENESIS_HASH, **changes: object) -> Event:
    return seal_event(draft(**changes), seq=seq, prev_hash=prev, time=T0, node_id="node-1")


def test_hash_is_sha256_of_prev_hash_and_canonical_body() -> None:
    event = sealed(seq=1)
    body = json.dumps(event_body(event), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert event.hash == hashlib.sha256(GENESIS_HASH + body.encode()).digest()
    assert event.computed_hash() == event.hash
    assert event_body_json(event) == body
    assert "hash" not in event_body(event)


def test_body_names_every_field_and_omits_defaults() -> None:
    body = event_body(sealed())
    assert body["v"] == 1
    assert body["seq"] == 1
    assert body["prev_hash"] == "00" * 32
    assert body["time_us"] == time_us(T0)
    assert body["node"] == "node-1"
    assert body["actor"] == {"type": "agent", "id": AGENT.id}
    assert body["decision"] == {"allowed": False, "policies": ["deny-restricted"], "missing": ["approval"]}
    minimal = event_body(
        seal_event(
            EventDraft("sys.seal", Actor.system("node-1")),
            seq=1,
            prev_hash=GENESIS_HASH,
            time=T0,
            node_id="node-1",
        )
    )
    assert set(minimal) == {"v", "seq", "prev_hash", "time_us", "node", "kind", "actor"}


def test_chained_events_link_by_hash() -> None:
    first = sealed(seq=1)
    second = sealed(seq=2, prev=first.hash, reason="")
    assert second.prev_hash == first.hash
    assert second.computed_hash() == second.hash


def test_any_field_change_changes_the_hash() -> None:
    base = sealed()
    variants = [
        sealed(seq=2),
        sealed(prev=b"\x01" * 32),
        sealed(reason="other"),
        sealed(resource="secret:prod/other"),
        sealed(task_id="task-2"),
        sealed(chain=()),
        sealed(decision=DecisionSummary(True)),
        sealed(request_id=None),
        sealed(data={"mode": "reveal"}),
        sealed(actor=Actor.operator("alice")),
        sealed(kind="grant.activate"),
        seal_event(
            draft(), seq=1, prev_hash=GENESIS_HASH, time=T0 + timedelta(microseconds=1), node_id="node-1"
        ),
        seal_event(draft(), seq=1, prev_hash=GENESIS_HASH, time=T0, node_id="node-2"),
    ]
    assert len({v.hash for v in variants} | {base.hash}) == len(variants) + 1


@pytest.mark.parametrize(
    "bad",
    [
        {"f": 1.5},
        {"f": math.nan},
        {"f": [1, 2.0]},
        {"f": {"g": math.inf}},
    ],
)
def test_floats_are_refused_in_event_data(bad: dict[str, object]) -> None:
    with pytest.raises(MalformedEventError, match="float"):
        draft(data=bad)


def test_canonical_json_refuses_floats_non_string_keys_and_big_integers() -> None:
    with pytest.raises(MalformedEventError):
        canonical_json({"a": 0.1})
    with pytest.raises(MalformedEventError):
        canonical_json({"a": {1: "x"}})  # type: ignore[dict-item]
    with pytest.raises(MalformedEventError, match="53 bits"):
        canonical_json({"a": 2**53})
    with pytest.raises(MalformedEventError):
        canonical_json({"a": object()})
    assert canonical_json({"a": 2**53 - 1}) == b'{"a":9007199254740991}'


def test_canonical_json_matches_jcs_for_allowed_values() -> None:
    # RFC 8785: keys sorted, no whitespace, UTF-8, only the mandatory escapes.
    value = {"b": [True, False, None], "a": 'é\u2028\n"\\/', "c": {"z": -0, "y": 10}}
    expected = '{"a":"é\u2028\\n\\"\\\\/","b":[true,false,null],"c":{"y":10,"z":0}}'.encode()
    assert canonical_json(value) == expected
    assert canonical_json({"k": "\x01"}) == b'{"k":"\\u0001"}'


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (2**53, "53 bits"),
        (-(2**53), "53 bits"),
        ("\ud800", "surrogate"),
        (1.0, "float"),
        (Sensitive("v"), "Sensitive"),
        (object(), "not a JSON value"),
    ],
)
@pytest.mark.parametrize("where", ["object", "array", "nested"])
def test_a_refused_leaf_is_refused_in_an_object_or_an_array(bad: object, match: str, where: str) -> None:
    data = {
        "object": {"ok": "x", "bad": bad, "n": 1},
        "array": {"list": ["x", 1, True, None, bad]},
        "nested": {"a": [{"b": ["x", bad]}]},
    }[where]
    with pytest.raises(MalformedEventError, match=match):
        draft(data=data)


def test_leaves_of_json_subtypes_are_kept_as_their_base_type() -> None:
    class Level(IntEnum):
        HIGH = 3

    class Mode(StrEnum):
        INJECT = "inject"

    data = draft(data={"a": [Level.HIGH, Mode.INJECT, True, None, -(2**53) + 1], "b": Level.HIGH}).data
    assert data == {"a": (3, "inject", True, None, -(2**53) + 1), "b": 3}
    assert [type(value) for value in data["a"]] == [int, str, bool, type(None), int]
    assert type(data["b"]) is int


def test_data_keys_must_be_ascii_names() -> None:
    with pytest.raises(MalformedEventError, match="keys"):
        draft(data={"ключ": 1})
    with pytest.raises(MalformedEventError, match="keys"):
        draft(data={"": 1})


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(MalformedEventError, match="surrogate"):
        draft(reason="bad \ud800")
    with pytest.raises(MalformedEventError, match="surrogate"):
        draft(data={"k": "\udfff"})


def test_unknown_and_malformed_kinds_are_refused() -> None:
    with pytest.raises(MalformedEventError, match="unknown"):
        draft(kind="grant.steal")
    with pytest.raises(MalformedEventError, match="dotted"):
        draft(kind="Grant.Issue")
    with pytest.raises(MalformedEventError, match="dotted"):
        draft(kind="grant..issue")


def test_every_known_kind_has_the_kind_shape() -> None:
    # _check_kind takes a known kind without its shape check: every known kind must have it.
    assert all(_KIND.fullmatch(kind) for kind in EVENT_KINDS)


class _Kind(str):
    pass


def test_a_kind_of_a_str_subclass_is_still_checked() -> None:
    assert draft(kind=_Kind("decision")).kind == "decision"
    with pytest.raises(MalformedEventError, match="unknown"):
        draft(kind=_Kind("grant.steal"))


@pytest.mark.parametrize("char", [chr(code) for code in range(128)])
def test_one_line_text_refuses_exactly_the_control_characters(char: str) -> None:
    # An ASCII text is taken without the regex; it must agree with it on every ASCII character.
    text = f"task-{char}-1"
    if char in "\x7f" or char < " ":
        for value in (text, _Kind(text)):
            with pytest.raises(MalformedEventError, match="printable"):
                draft(task_id=value)
            with pytest.raises(MalformedEventError, match="printable"):
                Actor.agent(value)
    else:
        assert draft(task_id=text).task_id == text
        assert Actor.agent(text).id == text
    assert bool(_TEXT.fullmatch(text)) == (char != "\x7f" and char >= " ")


def test_one_line_text_keeps_its_length_limit_and_non_ascii_rules() -> None:
    assert draft(task_id="t" * 256).task_id == "t" * 256
    with pytest.raises(MalformedEventError, match="printable"):
        draft(task_id="t" * 257)
    with pytest.raises(MalformedEventError, match="printable"):
        draft(task_id="")
    assert draft(task_id="tâche-\u2028").task_id == "tâche-\u2028"
    with pytest.raises(MalformedEventError, match="surrogate"):
        draft(task_id="t\ud800")


def test_an_actor_type_is_an_actor_type_member_however_given() -> None:
    assert Actor("agent", "a").type is ActorType.AGENT  # type: ignore[arg-type]
    assert Actor(ActorType.SYSTEM, "n").type is ActorType.SYSTEM
    with pytest.raises(MalformedEventError, match="actor type"):
        Actor("robot", "a")  # type: ignore[arg-type]


def test_vocabulary_covers_the_issue_kinds() -> None:
    for kind in (
        "auth.token",
        "task.open",
        "task.update",
        "task.end",
        "decision",
        "grant.issue",
        "grant.activate",
        "grant.revoke",
        "delegation",
        "approval.request",
        "approval.decide",
        "secret.write",
        "secret.rotate",
        "secret.delete",
        "policy.deploy",
        "operator.create",
        "operator.revoke",
        "operator.auth_failed",
        "sys.seal",
        "sys.unseal",
        "sys.keys.rotate",
        "sys.init",
        "audit.checkpoint",
    ):
        assert kind in EVENT_KINDS
        assert EVENT_KINDS[kind]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("resource", "no-type-prefix"),
        ("resource", "secret:\nnewline"),
        ("task_id", ""),
        ("request_id", "x" * 300),
        ("reason", "r" * 2000),
        ("chain", "task-0"),
        ("chain", tuple(f"t{i}" for i in range(40))),
        ("data", [1, 2]),
        ("data", {"k": Sensitive("value")}),
        ("decision", {"allowed": True}),
        ("actor", "alice"),
    ],
)
def test_draft_fields_are_validated(field: str, value: object) -> None:
    with pytest.raises(MalformedEventError):
        draft(**{field: value})


def test_actor_is_validated() -> None:
    with pytest.raises(MalformedEventError):
        Actor("robot", "x")  # type: ignore[arg-type]
    with pytest.raises(MalformedEventError):
        Actor.agent("")
    assert Actor("operator", "alice").type is ActorType.OPERATOR  # type: ignore[arg-type]


def test_event_envelope_is_validated() -> None:
    event = sealed()
    with pytest.raises(MalformedEventError):
        Event(**{**_fields(event), "seq": 0})
    with pytest.raises(MalformedEventError):
        Event(**{**_fields(event), "hash": b"short"})
    with pytest.raises(MalformedEventError):
        Event(**{**_fields(event), "time": datetime(2026, 1, 1)})  # naive: refused
    with pytest.raises(MalformedEventError):
        Event(**{**_fields(event), "node_id": ""})


def _fields(event: Event) -> dict[str, object]:
    return {name: getattr(event, name) for name, spec in Event.__dataclass_fields__.items() if spec.init}


def test_event_times_are_utc_with_microseconds() -> None:
    local = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    event = seal_event(draft(), seq=1, prev_hash=GENESIS_HASH, time=local, node_id="n")
    assert event.time.tzinfo is UTC
    assert event.time == local
    assert from_time_us(event.time_us) == local
    # exact for far times too (no float on the way)
    far = datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert from_time_us(time_us(far)) == far


def test_json_round_trip_is_exact() -> None:
    event = sealed()
    record = event_to_json(event)
    assert record["hash"] == event.hash.hex()
    again = event_from_json(json.loads(json.dumps(record)))
    assert again == event
    assert event_from_body(event_body_json(event), event.hash) == event


@pytest.mark.parametrize(
    "change",
    [
        {"extra": 1},
        {"v": 2},
        {"seq": "1"},
        {"seq": True},
        {"prev_hash": "zz" * 32},
        {"hash": "00"},
        {"actor": {"type": "agent"}},
        {"decision": {"allowed": "yes", "policies": [], "missing": []}},
        {"chain": "t"},
        {"time_us": 1.5},
        {"data": {"x": 0.5}},
    ],
)
def test_event_from_json_is_strict(change: dict[str, object]) -> None:
    record = {**event_to_json(sealed()), **change}
    with pytest.raises(MalformedEventError):
        event_from_json(record)


def test_stored_bodies_with_duplicate_keys_or_nan_are_malformed() -> None:
    event = sealed()
    body = event_body_json(event)
    with pytest.raises(MalformedEventError, match="duplicate"):
        event_from_body(body[:-1] + ',"seq":2}', event.hash)
    with pytest.raises(MalformedEventError):
        event_from_body(body.replace('"data":{', '"data":{"n":NaN,'), event.hash)
    with pytest.raises(MalformedEventError):
        event_from_body("not json", event.hash)


def test_event_data_is_a_deep_frozen_copy() -> None:
    data = {"list": [1, 2], "map": {"k": [3]}}
    event = sealed(data=data)
    data["list"].append(3)
    assert event.data["list"] == (1, 2)
    assert event.computed_hash() == event.hash
    with pytest.raises(TypeError):
        event.data["new"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        event.data["list"].append(3)
    with pytest.raises(TypeError):
        event.data["map"]["k"] = 1
    copied = copy.deepcopy(event.data)
    assert copied == event.data
    with pytest.raises(TypeError):
        copied["new"] = 1  # type: ignore[index]
    assert pickle.loads(pickle.dumps(event.data)) == event.data
    exported = event_to_json(event)
    assert exported["data"] == {"list": [1, 2], "map": {"k": [3]}}  # plain JSON out
    exported["data"]["list"].append(4)  # type: ignore[index,union-attr]
    assert event.computed_hash() == event.hash
    assert json.loads(json.dumps(exported))["data"]["map"] == {"k": [3]}


def test_fingerprint_is_hmac_sha256_under_the_deployment_key() -> None:
    key = b"k" * 32
    fp = Fingerprinter(key)
    expected = "hmac-sha256:" + hmac.new(key, b"hunter2", hashlib.sha256).hexdigest()
    assert fp.fingerprint("hunter2") == expected
    assert fp.fingerprint(b"hunter2") == expected
    assert fp.fingerprint("hunter2") == Fingerprinter(key).fingerprint("hunter2")
    assert Fingerprinter(b"j" * 32).fingerprint("hunter2") != expected
    assert fp.fingerprint("hunter3") != expected


def test_fingerprinter_redacts_sensitive_values_anywhere() -> None:
    fp = Fingerprinter(b"k" * 32)
    redacted = fp.redact({"a": Sensitive("v1"), "b": [Sensitive(b"v2"), 1], "c": {"d": Sensitive("v3")}})
    assert redacted == {
        "a": fp.fingerprint("v1"),
        "b": [fp.fingerprint(b"v2"), 1],
        "c": {"d": fp.fingerprint("v3")},
    }
    assert "v1" not in repr(Sensitive("v1"))
    assert "k" * 8 not in repr(fp)
    with pytest.raises(ValueError, match="32 bytes"):
        Fingerprinter(b"short")


def test_a_sealed_event_stores_exactly_the_text_its_hash_covers() -> None:
    event = sealed()
    text = event_body_json(event)
    assert compute_hash(event.prev_hash, text.encode("utf-8")) == event.hash
    # Parsed back (no kept text), the body is encoded again, to the same text.
    assert event_body_json(event_from_body(text, event.hash)) == text
