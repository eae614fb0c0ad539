"""Verification of exported chains: each kind of tampering is found, at the right seq.

Everything here works on JSON Lines exports (what an outside auditor holds); the same
tampering on the live store is in ``tests/conformance/test_audit_storage.py``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tether.audit import (
    AuditKeys,
    Checkpoint,
    MalformedCheckpointError,
    Problem,
    checkpoint_from_json,
    checkpoint_to_json,
    event_line,
    load_checkpoint,
    read_jsonl,
    result_line,
    sign_checkpoint,
    verify_events,
    verify_jsonl,
)
from tether.audit.verify import iter_jsonl
from tether.domain.event_records import event_from_json, event_to_json
from tether.domain.events import (
    EVENT_KINDS,
    GENESIS_HASH,
    Actor,
    DecisionSummary,
    Event,
    EventDraft,
    MalformedEventError,
    seal_event,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEYS = AuditKeys.generate(T0)
OTHER_KEYS = AuditKeys.generate(T0)


def make_draft(i: int) -> EventDraft:
    return EventDraft(
        kind=("decision", "grant.issue", "grant.activate", "secret.write")[i % 4],
        actor=Actor.agent(f"spiffe://acme.test/agent/a{i % 3}"),
        resource=f"secret:prod/s{i % 5}",
        task_id=f"task-{i % 7}",
        decision=DecisionSummary(i % 2 == 0, (f"p{i}",), ()),
        reason=f"event {i}",
        data={"i": i},
    )


def make_chain(n: int, *, start: datetime = T0) -> list[Event]:
    events: list[Event] = []
    prev = GENESIS_HASH
    for i in range(n):
        event = seal_event(
            make_draft(i), seq=i + 1, prev_hash=prev, time=start + timedelta(seconds=i), node_id="node-1"
        )
        events.append(event)
        prev = event.hash
    return events


def lines_of(events: list[Event]) -> list[str]:
    return [event_line(e) for e in events]


def verify_lines(lines: list[str], checkpoint: Checkpoint | None = None) -> Any:
    return verify_events(iter_jsonl(lines), checkpoint)


def checkpoint_of(events: list[Event], seq: int | None = None, keys: AuditKeys = KEYS) -> Checkpoint:
    event = events[-1] if seq is None else events[seq - 1]
    return sign_checkpoint(keys, seq=event.seq, head_hash=event.hash, time=T0)


def rehash(record: dict[str, Any]) -> dict[str, Any]:
    """What an attacker does to make an edited record self-consistent again."""
    event = event_from_json(record)
    return event_to_json(replace(event, hash=event.computed_hash()))


def edited(line: str, **changes: Any) -> dict[str, Any]:
    record = json.loads(line)
    record.update(changes)
    return record


def dump(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"


# -- intact chains ----------------------------------------------------------------------------
def test_intact_chain_verifies_with_and_without_checkpoint(tmp_path: Path) -> None:
    events = make_chain(20)
    result = verify_lines(lines_of(events))
    assert result
    assert (result.checked, result.head_seq, result.head_hash) == (20, 20, events[-1].hash)
    assert verify_lines(lines_of(events), checkpoint_of(events))
    assert verify_lines(lines_of(events), checkpoint_of(events, 7))
    path = tmp_path / "export.jsonl"
    path.write_text("".join(lines_of(events)))
    assert verify_jsonl(path, checkpoint_of(events))
    assert read_jsonl(path) == events
    assert result_line(result).startswith("ok: 20 events")


def test_empty_chain_is_ok_but_not_against_a_checkpoint() -> None:
    result = verify_lines([])
    assert result
    assert (result.checked, result.head_seq, result.head_hash) == (0, 0, None)
    truncated = verify_lines([], checkpoint_of(make_chain(3)))
    assert (truncated.problem, truncated.first_bad_seq) == (Problem.TRUNCATED, 1)


# -- each tampering, at the right place -----------------------------------------------------------
def test_modified_event_is_found_at_its_seq() -> None:
    lines = lines_of(make_chain(10))
    lines[4] = dump(edited(lines[4], reason="nothing to see"))
    result = verify_lines(lines)
    assert not result
    assert (result.problem, result.first_bad_seq, result.checked) == (Problem.MODIFIED, 5, 4)
    assert "5" in result_line(result)


def test_modified_event_with_recomputed_hash_is_found_by_the_next_link() -> None:
    lines = lines_of(make_chain(10))
    lines[4] = dump(rehash(edited(lines[4], reason="nothing to see")))
    result = verify_lines(lines)
    assert (result.problem, result.first_bad_seq) == (Problem.MODIFIED, 5)


def test_rehashed_last_event_is_found_only_by_a_checkpoint() -> None:
    events = make_chain(10)
    lines = lines_of(events)
    lines[9] = dump(rehash(edited(lines[9], reason="rewritten")))
    assert verify_lines(lines)  # nothing after it to disagree: the limit of a bare chain
    result = verify_lines(lines, checkpoint_of(events))
    assert (result.problem, result.first_bad_seq) == (Problem.MODIFIED, 10)


def test_rewritten_history_is_found_by_a_checkpoint() -> None:
    events = make_chain(10)
    forged: list[Event] = events[:2]
    for event in events[2:]:  # rewrite from seq 3 on, every hash recomputed
        forged.append(
            seal_event(
                replace(make_draft(event.seq), reason="forged"),
                seq=event.seq,
                prev_hash=forged[-1].hash,
                time=event.time,
                node_id=event.node_id,
            )
        )
    assert verify_lines(lines_of(forged))
    result = verify_lines(lines_of(forged), checkpoint_of(events, 8))
    assert (result.problem, result.first_bad_seq) == (Problem.MODIFIED, 8)


def test_deleted_event_is_missing() -> None:
    lines = lines_of(make_chain(10))
    del lines[4]
    result = verify_lines(lines)
    assert (result.problem, result.first_bad_seq, result.head_seq) == (Problem.MISSING, 5, 4)


def test_deleted_event_with_renumbering_is_missing() -> None:
    lines = lines_of(make_chain(10))
    del lines[4]
    lines[4:] = [dump(edited(line, seq=json.loads(line)["seq"] - 1)) for line in lines[4:]]
    result = verify_lines(lines)
    assert (result.problem, result.first_bad_seq) == (Problem.MISSING, 5)


def test_duplicated_event_is_inserted_where_it_sits() -> None:
    lines = lines_of(make_chain(10))
    lines.insert(5, lines[4])
    result = verify_lines(lines)
    assert (result.problem, result.first_bad_seq, result.checked) == (Problem.INSERTED, 6, 5)
    lines = lines_of(make_chain(10))
    lines.insert(7, lines[1])
    result = verify_lines(lines)
    assert (result.problem, result.first_bad_seq, result.checked) == (Problem.INSERTED, 8, 7)


def test_forged_event_with_a_repeated_seq_is_inserted() -> None:
    events = make_chain(10)
    forged = seal_event(make_draft(99), seq=5, prev_hash=events[3].hash, time=T0, node_id="evil")
    lines = lines_of(events)
    lines.insert(4, event_line(forged))
    result = verify_lines(lines)
    assert (result.problem, result.first_bad_seq, result.checked) == (Problem.INSERTED, 5, 4)
    assert result.head_hash == events[3].hash


def test_forged_event_with_renumbered_successors_is_inserted() -> None:
    events = make_chain(10)
    forged = seal_event(make_draft(99), seq=5, prev_hash=events[3].hash, time=T0, node_id="evil")
    lines = lines_of(events)
    renumbered = [dump(edited(line, seq=json.loads(line)["seq"] + 1)) for line in lines[4:]]
    result = verify_lines([*lines[:4], event_line(forged), *renumbered])
    assert (result.problem, result.first_bad_seq) == (Problem.INSERTED, 5)


def test_forged_event_with_renumbered_and_rehashed_successor_is_inserted() -> None:
    events = make_chain(10)
    forged = seal_event(make_draft(99), seq=5, prev_hash=events[3].hash, time=T0, node_id="evil")
    lines = lines_of(events)
    renumbered = [dump(rehash(edited(line, seq=json.loads(line)["seq"] + 1))) for line in lines[4:]]
    result = verify_lines([*lines[:4], event_line(forged), *renumbered])
    assert (result.problem, result.first_bad_seq) == (Problem.INSERTED, 5)


def test_swapped_events_are_reordered() -> None:
    lines = lines_of(make_chain(10))
    lines[4], lines[5] = lines[5], lines[4]
    result = verify_lines(lines)
    assert (result.problem, result.first_bad_seq) == (Problem.REORDERED, 5)
    moved = lines_of(make_chain(10))
    moved.append(moved.pop(2))  # seq 3 moved to the end
    result = verify_lines(moved)
    assert (result.problem, result.first_bad_seq) == (Problem.REORDERED, 3)


def test_truncation_is_found_against_a_kept_checkpoint(tmp_path: Path) -> None:
    events = make_chain(10)
    checkpoint = checkpoint_of(events)
    lines = lines_of(events)[:7]
    assert verify_lines(lines)  # a bare chain cannot know it was cut
    result = verify_lines(lines, checkpoint)
    assert (result.problem, result.first_bad_seq, result.head_seq) == (Problem.TRUNCATED, 8, 7)
    path = tmp_path / "cut.jsonl"
    path.write_text("".join(lines))
    saved = tmp_path / "checkpoint.json"
    saved.write_text(json.dumps(checkpoint_to_json(checkpoint)))
    result = verify_jsonl(path, load_checkpoint(saved))
    assert (result.problem, result.first_bad_seq) == (Problem.TRUNCATED, 8)


def test_bad_checkpoint_signature_is_found() -> None:
    events = make_chain(10)
    good = checkpoint_of(events, 6)
    flipped = replace(good, signature=bytes([good.signature[0] ^ 1]) + good.signature[1:])
    result = verify_lines(lines_of(events), flipped)
    assert (result.problem, result.first_bad_seq) == (Problem.BAD_SIGNATURE, 6)
    moved = replace(good, seq=7)  # a valid signature over another statement
    assert verify_lines(lines_of(events), moved).problem is Problem.BAD_SIGNATURE
    other = replace(good, public_key=OTHER_KEYS.public_key)  # key swapped, key id kept
    assert verify_lines(lines_of(events), other).problem is Problem.BAD_SIGNATURE


def test_checkpoint_from_an_untrusted_key_is_refused_when_keys_are_pinned() -> None:
    events = make_chain(5)
    forged = checkpoint_of(events, keys=OTHER_KEYS)
    assert verify_events(iter_jsonl(lines_of(events)), forged)
    result = verify_events(iter_jsonl(lines_of(events)), forged, trusted_key_ids={KEYS.key_id})
    assert (result.problem, result.first_bad_seq) == (Problem.BAD_SIGNATURE, 5)
    assert verify_events(iter_jsonl(lines_of(events)), checkpoint_of(events), trusted_key_ids={KEYS.key_id})


def test_malformed_line_is_found_where_it_sits() -> None:
    lines = lines_of(make_chain(6))
    lines[3] = '{"seq": 4, "broken": \n'
    result = verify_lines(lines)
    assert (result.problem, result.first_bad_seq) == (Problem.MALFORMED, 4)
    assert "line 4" in result.detail
    lines = lines_of(make_chain(6))
    lines[2] = dump(edited(lines[2], data={"x": 0.5}))
    assert verify_lines(lines).problem is Problem.MALFORMED


def test_first_event_must_start_from_genesis() -> None:
    lines = lines_of(make_chain(3))
    lines[0] = dump(rehash(edited(lines[0], prev_hash="11" * 32)))
    result = verify_lines(lines)
    assert (result.problem, result.first_bad_seq) == (Problem.MODIFIED, 1)


def test_read_jsonl_refuses_malformed_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(lines_of(make_chain(2))) + "garbage\n")
    with pytest.raises(MalformedEventError, match="line 3"):
        read_jsonl(path)


# -- checkpoints as files ---------------------------------------------------------------------------
def test_checkpoint_json_round_trip_and_verification_key() -> None:
    checkpoint = checkpoint_of(make_chain(3))
    record = checkpoint_to_json(checkpoint)
    assert record["public_key"]["kty"] == "OKP"
    assert record["key_id"] == KEYS.key_id
    again = checkpoint_from_json(json.loads(json.dumps(record)))
    assert again == checkpoint
    assert again.signature_ok()
    assert KEYS.public_jwk()["kid"] == KEYS.key_id
    assert "BEGIN PUBLIC KEY" in KEYS.public_key_pem()
    assert "PRIVATE" not in json.dumps(record)


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 0},
        {"head_hash": "00"},
        {"signature": "!!"},
        {"public_key": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}},
        {"public_key": {"kty": "EC", "crv": "P-256", "x": "AAAA"}},
        {"type": "something.else"},
        {"extra": 1},
        {"time_us": "yesterday"},
    ],
)
def test_malformed_checkpoint_json_is_refused(change: dict[str, Any]) -> None:
    record = {**checkpoint_to_json(checkpoint_of(make_chain(3))), **change}
    with pytest.raises(MalformedCheckpointError):
        checkpoint_from_json(record)


def test_load_checkpoint_reports_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    path.write_text("{not json")
    with pytest.raises(MalformedCheckpointError, match=r"cp\.json"):
        load_checkpoint(path)
    with pytest.raises(MalformedCheckpointError):
        load_checkpoint(tmp_path / "absent.json")


# -- the property: every mutation of an exported chain is detected -------------------------------------
N_EVENTS = 8
CHAIN = make_chain(N_EVENTS)
LINES = lines_of(CHAIN)
HEAD = checkpoint_of(CHAIN)
FIELDS = ["seq", "prev_hash", "hash", "time_us", "node", "kind", "actor", "reason", "resource", "data"]


def _mutated_value(name: str, record: dict[str, Any], draw: st.DrawFn) -> Any:
    if name == "seq":
        return draw(st.integers(1, 2 * N_EVENTS).filter(lambda s: s != record["seq"]))
    if name in ("prev_hash", "hash"):
        return draw(st.binary(min_size=32, max_size=32)).hex()
    if name == "time_us":
        return record["time_us"] + draw(st.integers(-(10**6), 10**6).filter(bool))
    if name == "kind":
        return draw(st.sampled_from(sorted(EVENT_KINDS)).filter(lambda k: k != record["kind"]))
    if name == "actor":
        return {"type": "operator", "id": draw(st.sampled_from(["mallory", "root"]))}
    if name == "data":
        return {"i": draw(st.integers(-5, 5).filter(lambda i: i != record["data"]["i"]))}
    text = draw(st.text(alphabet="abcxyz:/", min_size=1, max_size=8))
    return f"secret:{text}" if name == "resource" else text


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, list[str]]:
    lines = list(LINES)
    op = draw(st.sampled_from(["edit", "edit_rehash", "delete", "duplicate", "swap", "truncate", "forge"]))
    i = draw(st.integers(0, N_EVENTS - 1))
    if op in ("edit", "edit_rehash"):
        record = json.loads(lines[i])
        name = draw(st.sampled_from(FIELDS))
        record[name] = _mutated_value(name, record, draw)
        if op == "edit_rehash" and name != "hash":
            # An edit that made the record unparseable is still a mutation to detect.
            with contextlib.suppress(MalformedEventError):
                record = rehash(record)
        lines[i] = dump(record)
    elif op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(draw(st.integers(0, N_EVENTS)), lines[i])
    elif op == "swap":
        j = draw(st.integers(0, N_EVENTS - 1).filter(lambda j: j != i))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "truncate":
        lines = lines[:i]
    else:  # a forged, self-consistent event slipped in before position i
        prev = GENESIS_HASH if i == 0 else CHAIN[i - 1].hash
        forged = seal_event(make_draft(100 + i), seq=i + 1, prev_hash=prev, time=T0, node_id="evil")
        lines.insert(i, event_line(forged))
    return op, lines


def _semantics(lines: list[str]) -> list[Any]:
    out: list[Any] = []
    for line in lines:
        try:
            out.append(event_to_json(event_from_json(json.loads(line))))
        except (ValueError, MalformedEventError):
            out.append(line)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_every_mutation_of_an_export_is_detected(mutation: tuple[str, list[str]]) -> None:
    op, lines = mutation
    assume(_semantics(lines) != _semantics(LINES))
    result = verify_lines(lines, HEAD)
    assert not result, f"{op} went unnoticed"
    assert result.problem is not None
    assert result.first_bad_seq is not None
    assert 1 <= result.first_bad_seq <= 2 * N_EVENTS
    # everything before first_bad_seq really is the original chain
    assert result.head_seq == result.checked == result.first_bad_seq - 1
    assert _semantics(lines[: result.checked]) == _semantics(LINES[: result.checked])
    assert result.head_hash == (CHAIN[result.checked - 1].hash if result.checked else None)


def test_unmutated_export_verifies() -> None:
    assert verify_lines(LINES, HEAD)
