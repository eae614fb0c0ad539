"""Shared Signals as data (``tether.evidence.signals``): receiver URLs, which audit events become which
signals (and which do not), SET claims, the backoff schedule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tether.domain.events import GENESIS_HASH, Actor, EventDraft, seal_event
from tether.errors import InvalidInputError
from tether.evidence.signals import (
    CREDENTIAL_CHANGE,
    SESSION_REVOKED,
    TASK_CONTEXT_CHANGE,
    StreamConfig,
    backoff_seconds,
    delivery_id,
    is_public_address,
    set_claims,
    signals_for,
    validate_receiver_url,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
AGENT = "spiffe://acme.test/agent/deploy-bot"


def _event(kind: str, actor: Actor, **fields: object) -> object:
    return seal_event(
        EventDraft(kind=kind, actor=actor, **fields), seq=7, prev_hash=GENESIS_HASH, time=NOW, node_id="n1"
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("https://rp.example/caep", False),
        ("http://127.0.0.1:8080/x", True),
        ("http://localhost/x", True),
        ("http://[::1]:9/x", True),
    ],
)
def test_receiver_urls_that_are_accepted(url: str, loopback: bool) -> None:
    assert validate_receiver_url(url) == (url, loopback)


@pytest.mark.parametrize(
    "url",
    [
        "http://rp.example/caep",
        "ftp://rp.example/",
        "https://u:p@rp.example/",
        "https://rp.example/#x",
        "rp.example",
        "",
        "https://rp.example:99999/",
    ],
)
def test_receiver_urls_that_are_refused(url: str) -> None:
    with pytest.raises(InvalidInputError):
        validate_receiver_url(url)


def test_only_public_addresses_are_public() -> None:
    assert is_public_address("93.184.216.34")
    for private in (
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "127.0.0.1",
        "169.254.169.254",
        "::1",
        "fd00::1",
        "::ffff:10.0.0.1",
        "0.0.0.0",
    ):
        assert not is_public_address(private), private


def test_a_task_ending_tells_each_ended_task_and_its_leases_once() -> None:
    event = _event(
        "task.end",
        Actor.operator("alice"),
        task_id="tsk_root",
        resource="task:tsk_root",
        reason="runaway",
        data={"status": "revoked", "tasks_ended": ["tsk_root", "tsk_child", "tsk_gone"]},
    )
    agents = {"tsk_root": AGENT, "tsk_child": AGENT, "tsk_gone": AGENT}
    found = signals_for(event, agents, {"tsk_root": ["lse_1"]}, ended={"tsk_root", "tsk_child"})  # type: ignore[arg-type]
    assert [(s.event_type, s.key) for s in found] == [
        (SESSION_REVOKED, "session-revoked:tsk_root"),
        (CREDENTIAL_CHANGE, "credential-change:lease:lse_1"),
        (SESSION_REVOKED, "session-revoked:tsk_child"),
    ]  # tsk_gone is not ended in the store: its ending did not happen, nothing is told
    assert found[0].payload["initiating_entity"] == "admin"
    assert found[0].payload["reason_admin"] == {"en": "runaway"}
    assert found[1].payload["change_type"] == "revoke"


def test_a_context_change_is_told_only_if_it_is_the_tasks_context_now() -> None:
    event = _event(
        "task.update",
        Actor.agent(AGENT),
        task_id="tsk_1",
        resource="task:tsk_1",
        data={"context_hash": "h2", "purpose": "deploy", "revoked_count": 1, "grants_revoked": ["grt_x"]},
    )
    (told,) = signals_for(event, {"tsk_1": AGENT}, {}, (), {"tsk_1": "h2"})  # type: ignore[arg-type]
    assert told.event_type == TASK_CONTEXT_CHANGE
    assert told.payload == {
        "event_timestamp": int(NOW.timestamp()),
        "initiating_entity": "user",
        "context_hash": "h2",
        "purpose": "deploy",
        "revoked_count": 1,
        "tether_grants_revoked": ["grt_x"],
    }
    assert signals_for(event, {"tsk_1": AGENT}, {}, (), {"tsk_1": "h1"}) == []  # type: ignore[arg-type]


def test_set_claims_and_ids() -> None:
    stream = StreamConfig(
        id="ssf_abcdefgh12",
        endpoint_url="https://rp.example/caep",
        events_requested=(SESSION_REVOKED,),
        audience="https://rp.example",
        description="",
        created_by="alice",
        created_at=NOW,
    )
    event = _event(
        "task.end", Actor.agent(AGENT), task_id="tsk_1", resource="task:tsk_1", data={"status": "completed"}
    )
    (signal,) = signals_for(event, {"tsk_1": AGENT}, {}, {"tsk_1"})  # type: ignore[arg-type]
    jti = delivery_id(stream.id, signal.key)
    assert jti == delivery_id(stream.id, signal.key) != delivery_id("ssf_other12345", signal.key)
    claims = set_claims("https://tether.example", stream, signal, jti, NOW)
    assert claims["iss"] == "https://tether.example"
    assert claims["aud"] == "https://rp.example"
    assert claims["txn"] == "audit:7"
    assert claims["sub_id"]["session"] == {"format": "opaque", "id": "tsk_1"}
    assert list(claims["events"]) == [SESSION_REVOKED]


def test_backoff_doubles_up_to_ten_minutes() -> None:
    assert [backoff_seconds(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_seconds(30) == 600.0


def test_an_operator_revoking_every_grant_of_a_secret_is_a_credential_change() -> None:
    event = _event(
        "grant.revoke", Actor.operator("alice"), resource="secret:prod/db/password", reason="leaked"
    )
    (told,) = signals_for(event, {}, {}, ())  # type: ignore[arg-type]
    assert told.event_type == CREDENTIAL_CHANGE
    assert told.subject == {"format": "opaque", "id": "secret:prod/db/password"}
    assert told.payload["change_type"] == "revoke"
    assert told.payload["initiating_entity"] == "admin"
