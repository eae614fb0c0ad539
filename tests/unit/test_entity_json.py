"""Cedar entities built once per stored row: the entity's JSON text, the broker's memo of the
entity of an agent or secret record, and what the engine hands Cedar."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest

from tether.broker._decisions import agent_entity, secret_entity
from tether.domain.agents import AgentAttributes, AgentRecord, agent_id
from tether.domain.secrets import SecretMetadata, SecretRecord
from tether.policy import DecisionRequest, Entity, compile_policy_set
from tether.policy.engine import _entities_json

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def agent(team: str = "platform") -> AgentRecord:
    return AgentRecord(
        id=agent_id("acme.test", "bot"),
        name="bot",
        trust_domain="acme.test",
        attributes=AgentAttributes(team=team, environment="prod", owner="ops", labels=frozenset({"b", "a"})),
        keys=(),
        created_at=NOW,
        created_by="root",
    )


def secret(sensitivity: str = "internal") -> SecretRecord:
    return SecretRecord(
        path="prod/x",
        metadata=SecretMetadata(sensitivity=sensitivity, purposes=frozenset({"deploy"})),
        current_version=1,
        created_at=NOW,
        updated_at=NOW,
    )


def test_an_entitys_json_is_cedars_entity_format_built_once() -> None:
    bot = "spiffe://acme.test/agent/bot"
    entity = Entity("Agent", bot, {"labels": ["a"], "team": "t"}, (("Agent", "p"),))
    text = entity.cedar_json()
    assert json.loads(text) == {
        "uid": {"type": "Agent", "id": "spiffe://acme.test/agent/bot"},
        "attrs": {"labels": ["a"], "team": "t"},
        "parents": [{"type": "Agent", "id": "p"}],
    }
    assert entity.cedar_json() is text
    # The remembered text is not part of the value: equal entities stay equal, and hash alike.
    fresh = Entity("Agent", bot, {"labels": ["a"], "team": "t"}, (("Agent", "p"),))
    assert fresh == entity
    assert hash(fresh) == hash(entity)
    assert "_json" not in repr(entity)


def test_an_entity_with_a_value_cedar_cannot_take_has_no_json() -> None:
    with pytest.raises(TypeError):
        Entity("Agent", "a", {"team": object()}).cedar_json()


def test_the_same_record_gives_the_same_entity_and_a_changed_record_a_new_one() -> None:
    record = agent()
    first = agent_entity(record)
    assert agent_entity(record) is first
    assert first.attributes["labels"] == ["a", "b"]

    equal = agent()  # equal values, another object: built again, and equal
    assert agent_entity(equal) is not first
    assert agent_entity(equal) == first

    moved = dataclasses.replace(record, attributes=AgentAttributes(team="payments", environment="prod"))
    assert agent_entity(moved).attributes["team"] == "payments"
    assert agent_entity(record).attributes["team"] == "platform"

    restricted = secret_entity(secret("restricted"))
    assert restricted.attributes["sensitivity"] == 3
    assert secret_entity(secret()).attributes["sensitivity"] == 1


def test_one_entity_given_twice_with_different_attributes_is_refused() -> None:
    principal = agent_entity(agent())
    resource = secret_entity(secret())
    other = Entity("Agent", principal.id, {**principal.attributes, "team": "someone-else"})
    same = Entity("Agent", principal.id, dict(principal.attributes))
    request = DecisionRequest(principal=principal, action="activate", resource=resource, entities=(same,))
    assert [e["uid"]["type"] for e in json.loads(_entities_json(request))] == ["Agent", "Secret"]
    twice = DecisionRequest(principal=principal, action="activate", resource=resource, entities=(other,))
    with pytest.raises(ValueError, match="given twice"):
        _entities_json(twice)
    # The engine turns it into a deny with the reason, never an allow.
    policies = compile_policy_set('@id("all")\npermit(principal, action, resource);')
    decision = policies.decide(twice)
    assert not decision.allowed
    assert any("given twice" in error for error in decision.errors)
