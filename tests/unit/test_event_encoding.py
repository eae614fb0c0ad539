"""Sealing reuses the encoding of an event's data made by its size check: the sealed body must be
byte for byte the canonical encoding of the whole body, whatever the event holds."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from tether.domain.event_records import event_from_body
from tether.domain.events import (
    EVENT_KINDS,
    Actor,
    ActorType,
    DecisionSummary,
    EventDraft,
    canonical_json,
    compute_hash,
    event_body,
    event_body_json,
    from_time_us,
    seal_event,
)

NOW = datetime(2026, 12, 3, tzinfo=UTC)
KEYS = st.from_regex(r"[A-Za-z0-9_.:-]{1,12}", fullmatch=True)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
)


def _nested(depth: int) -> st.SearchStrategy[object]:
    if depth == 0:
        return LEAVES
    inner = _nested(depth - 1)
    return LEAVES | st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3)


DATA = st.dictionaries(KEYS, _nested(3), max_size=6)  # events allow 6 levels


def canonical(body: object) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(
    data=DATA,
    resource=st.none() | st.just("secret:prod/x"),
    task_id=st.none() | st.just("t-1"),
    chain=st.sampled_from([(), ("t-0",), ("t-0", "t-1")]),
    decision=st.none() | st.just(DecisionSummary(allowed=True, policies=("p",), missing=())),
    reason=st.sampled_from(["", 'a reason with "data":{} inside', "ünïcode"]),
)
def test_a_sealed_body_is_the_canonical_encoding_of_the_whole_body(
    data: dict[str, object],
    resource: str | None,
    task_id: str | None,
    chain: tuple[str, ...],
    decision: DecisionSummary | None,
    reason: str,
) -> None:
    draft = EventDraft(
        kind="grant.activate",
        actor=Actor.agent("spiffe://acme.test/agent/bot"),
        resource=resource,
        task_id=task_id,
        chain=chain,
        decision=decision,
        reason=reason,
        data=data,
    )
    prev = bytes(32)
    event = seal_event(draft, seq=7, prev_hash=prev, time=NOW, node_id="node-1")
    expected = canonical(event_body(event))
    assert event_body_json(event).encode("utf-8") == expected
    assert event.hash == compute_hash(prev, expected)


# Sealing assembles the body from its members (the draft's strings escaped one by one); any text
# the draft accepts, in any optional field, must give the encoder's bytes.
TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
NAMES = st.lists(TEXT, max_size=3).map(tuple)
#: A reason may span lines: control characters too, which the body's encoding must escape.
REASON = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    actor=st.tuples(st.sampled_from(["agent", "operator", "system"]), TEXT),
    kind=st.sampled_from(sorted(EVENT_KINDS)),
    resource=st.none() | TEXT.map(lambda text: f"secret:{text}"),
    task_id=st.none() | TEXT,
    chain=NAMES,
    decision=st.none() | st.tuples(st.booleans(), NAMES, NAMES),
    reason=st.just("") | REASON,
    request_id=st.none() | TEXT,
    data=DATA,
    node_id=TEXT,
    seq=st.integers(min_value=1, max_value=2**53 - 1),
    time_value=st.integers(min_value=0, max_value=2**52),
)
def test_a_sealed_body_with_any_text_is_the_encoders_encoding(
    actor: tuple[str, str],
    kind: str,
    resource: str | None,
    task_id: str | None,
    chain: tuple[str, ...],
    decision: tuple[bool, tuple[str, ...], tuple[str, ...]] | None,
    reason: str,
    request_id: str | None,
    data: dict[str, object],
    node_id: str,
    seq: int,
    time_value: int,
) -> None:
    draft = EventDraft(
        kind=kind,
        actor=Actor(ActorType(actor[0]), actor[1]),
        resource=resource,
        task_id=task_id,
        chain=chain,
        decision=None if decision is None else DecisionSummary(*decision),
        reason=reason,
        request_id=request_id,
        data=data,
    )
    prev = bytes(range(32))
    event = seal_event(draft, seq=seq, prev_hash=prev, time=from_time_us(time_value), node_id=node_id)
    expected = canonical(event_body(event))
    assert event_body_json(event).encode("utf-8") == expected
    assert event.hash == compute_hash(prev, expected)
    # and verification, which encodes a stored body again, agrees
    assert event_from_body(event_body_json(event), event.hash).computed_hash() == event.hash


@settings(max_examples=300, deadline=None)
@given(data=DATA)
def test_checked_data_encodes_as_json_dumps_does(data: dict[str, object]) -> None:
    assert canonical_json({"data": data}) == canonical({"data": data})
