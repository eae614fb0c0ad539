"""Agents and trusted issuers as pure data (``tether.domain.agents``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc.jwk import OctKey, RSAKey

from tether.crypto.jose import generate_private_jwk, parse_public_jwk
from tether.domain.agents import (
    MAX_ACTIVE_KEYS,
    AgentAttributes,
    AgentKey,
    AgentRecord,
    TrustedIssuer,
    agent_id,
    parse_agent_id,
    validate_agent_name,
)
from tether.errors import InvalidInputError

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def public_jwk(kind: str = "Ed25519") -> dict[str, str]:
    private = generate_private_jwk(kind)
    return {k: v for k, v in private.items() if k not in {"d", "kid"}}


def key(kind: str = "Ed25519", removed: bool = False) -> AgentKey:
    made = AgentKey.from_jwk(public_jwk(kind), NOW)
    return AgentKey(made.kid, made.jwk, NOW, NOW + timedelta(seconds=1) if removed else None)


def record(name: str = "bot", keys: tuple[AgentKey, ...] = (), **kw: Any) -> AgentRecord:
    return AgentRecord(
        id=agent_id("acme.test", name),
        name=name,
        trust_domain="acme.test",
        attributes=kw.pop("attributes", AgentAttributes()),
        keys=keys,
        created_at=NOW,
        created_by="root",
        **kw,
    )


def issuer(**kw: Any) -> TrustedIssuer:
    values: dict[str, Any] = {
        "name": "ci",
        "issuer": "https://token.ci.example",
        "audience": "tether",
        "jwks": {"keys": [{**public_jwk(), "kid": "k1"}]},
        "subject_pattern": r"repo:acme/(?P<agent>[a-z0-9-]+):ref:.*",
        "created_at": NOW,
        "created_by": "root",
    }
    values.update(kw)
    return TrustedIssuer(**values)


def field_of(exc: pytest.ExceptionInfo[InvalidInputError]) -> str | None:
    return exc.value.field


# -- names and ids --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "bot", "deploy-bot.v2", "x_1", "0", "a" * 63])
def test_valid_agent_names_are_accepted(name: str) -> None:
    assert validate_agent_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Bot", "-bot", ".bot", "_bot", "a" * 64, "bot/x", "bot x", "bøt", "bot\n"]
)
def test_invalid_agent_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInputError) as exc:
        validate_agent_name(name)
    assert field_of(exc) == "name"


def test_agent_id_round_trips_through_parse() -> None:
    value = agent_id("acme.test", "deploy-bot")
    assert value == "spiffe://acme.test/agent/deploy-bot"
    assert parse_agent_id(value) == ("acme.test", "deploy-bot")


@pytest.mark.parametrize(
    "value",
    [
        "spiffe://acme.test/agent/",
        "spiffe://acme.test/agent/bot/",
        "spiffe://acme.test/agent/bot/x",
        "spiffe://acme.test/agents/bot",
        "spiffe://ACME.test/agent/bot",
        "spiffe://acme.test:443/agent/bot",
        "spiffe://user@acme.test/agent/bot",
        "spiffe://acme.test/agent/bot?x=1",
        "spiffe://acme.test/agent/bot#f",
        "spiffe://acme.test/agent/b%6Ft",
        "spiffe://acme.test/agent/../agent/bot",
        "https://acme.test/agent/bot",
        "SPIFFE://acme.test/agent/bot",
        " spiffe://acme.test/agent/bot",
        "spiffe://acme.test/agent/bot\n",
        "spiffe:///agent/bot",
        "",
    ],
)
def test_parse_agent_id_refuses_anything_but_the_exact_form(value: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_agent_id(value)


def test_agent_id_refuses_a_bad_trust_domain() -> None:
    with pytest.raises(InvalidInputError):
        agent_id("Acme.Test", "bot")


# -- attributes ------------------------------------------------------------------------------


def test_attributes_normalise_labels_to_a_frozenset() -> None:
    attrs = AgentAttributes(team="platform", labels=["b", "a", "a"])  # type: ignore[arg-type]
    assert attrs.labels == frozenset({"a", "b"})
    assert attrs.to_json() == {"team": "platform", "environment": "", "owner": "", "labels": ["a", "b"]}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"team": "x" * 129}, "team"),
        ({"environment": "x" * 129}, "environment"),
        ({"owner": "x" * 129}, "owner"),
        ({"owner": "a\x00b"}, "owner"),
        ({"labels": frozenset({"Upper"})}, "labels"),
        ({"labels": frozenset(f"l{i}" for i in range(33))}, "labels"),
        ({"labels": "abc"}, "labels"),
    ],
)
def test_attributes_refuse_oversized_or_malformed_values(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as exc:
        AgentAttributes(**kwargs)
    assert field_of(exc) == field


# -- keys and records -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Ed25519", "P-256"])
def test_agent_key_from_jwk_uses_the_rfc7638_thumbprint(kind: str) -> None:
    jwk = public_jwk(kind)
    made = AgentKey.from_jwk(jwk, NOW)
    assert made.kid == parse_public_jwk(jwk).kid
    assert made.active
    assert "d" not in made.jwk


def test_agent_key_refuses_a_private_jwk() -> None:
    with pytest.raises(InvalidInputError, match="private"):
        AgentKey.from_jwk(generate_private_jwk(), NOW)


def test_agent_key_refuses_rsa_and_symmetric_keys() -> None:
    rsa = RSAKey.generate_key(2048).as_dict(private=False)
    with pytest.raises(InvalidInputError, match="unsupported"):
        AgentKey.from_jwk(rsa, NOW)
    with pytest.raises(InvalidInputError):
        AgentKey.from_jwk(OctKey.generate_key(256).as_dict(private=False), NOW)


def test_agent_key_jwk_cannot_be_mutated() -> None:
    made = key()
    with pytest.raises(TypeError):
        made.jwk["x"] = "changed"  # type: ignore[index]


def test_agent_key_cannot_be_removed_before_it_was_added() -> None:
    made = key()
    with pytest.raises(InvalidInputError):
        AgentKey(made.kid, made.jwk, NOW, NOW - timedelta(seconds=1))


def test_record_reports_active_keys_and_disabled_state() -> None:
    old, new = key(removed=True), key()
    agent = record(keys=(old, new), disabled_at=NOW)
    assert agent.active_keys == (new,)
    assert agent.key(new.kid) is new
    assert agent.key(old.kid) is None
    assert agent.disabled


def test_record_refuses_an_id_that_does_not_match_its_name() -> None:
    with pytest.raises(InvalidInputError) as exc:
        AgentRecord(
            id="spiffe://acme.test/agent/other",
            name="bot",
            trust_domain="acme.test",
            attributes=AgentAttributes(),
            keys=(),
            created_at=NOW,
            created_by="root",
        )
    assert field_of(exc) == "id"


def test_record_refuses_more_than_the_active_key_limit_and_duplicate_kids() -> None:
    with pytest.raises(InvalidInputError):
        record(keys=tuple(key() for _ in range(MAX_ACTIVE_KEYS + 1)))
    one = key()
    with pytest.raises(InvalidInputError):
        record(keys=(one, one))
    record(keys=(*(key() for _ in range(MAX_ACTIVE_KEYS)), key(removed=True)))


def test_record_refuses_naive_times() -> None:
    with pytest.raises(InvalidInputError):
        AgentRecord(
            id=agent_id("acme.test", "bot"),
            name="bot",
            trust_domain="acme.test",
            attributes=AgentAttributes(),
            keys=(),
            created_at=datetime(2026, 1, 1),  # naive: the point of the test
            created_by="root",
        )


# -- trusted issuers --------------------------------------------------------------------------


def test_issuer_maps_a_matching_claim_to_an_agent_name() -> None:
    trusted = issuer()
    assert trusted.agent_name_for({"sub": "repo:acme/deploy-bot:ref:refs/heads/main"}) == "deploy-bot"
    assert trusted.agent_name_for({"sub": "prefix repo:acme/deploy-bot:ref:x"}) is None  # fullmatch
    assert trusted.agent_name_for({"sub": 42}) is None
    assert trusted.agent_name_for({}) is None


def test_issuer_mapping_refuses_a_group_that_is_not_an_agent_name() -> None:
    trusted = issuer(subject_pattern=r"(?P<agent>.*)")
    assert trusted.agent_name_for({"sub": "Not A Name"}) is None
    assert trusted.agent_name_for({"sub": "fine"}) == "fine"


def test_spiffe_issuer_with_a_custom_claim_is_accepted() -> None:
    trusted = issuer(
        issuer="spiffe://cluster.example",
        subject_claim="sub",
        subject_pattern=r"spiffe://cluster\.example/ns/agents/sa/(?P<agent>[a-z0-9-]+)",
    )
    assert trusted.agent_name_for({"sub": "spiffe://cluster.example/ns/agents/sa/bot"}) == "bot"


def test_issuer_jwks_keeps_issuer_kids_and_drops_encryption_keys() -> None:
    sig = {**public_jwk("P-256"), "kid": "sig-1", "alg": "ES256", "use": "sig"}
    enc = {**public_jwk("P-256"), "kid": "enc-1", "use": "enc"}
    trusted = issuer(jwks={"keys": [sig, enc]})
    assert trusted.jwks_json() == {"keys": [sig]}


def test_issuer_accepts_rsa_keys_in_its_jwks() -> None:
    rsa = {**RSAKey.generate_key(2048).as_dict(private=False), "kid": "r1", "alg": "RS256"}
    assert issuer(jwks={"keys": [rsa]}).jwks is not None


@pytest.mark.parametrize(
    "url", ["https://keys.example/jwks.json", "http://127.0.0.1:8080/jwks", "http://localhost/j"]
)
def test_issuer_accepts_https_or_loopback_http_jwks_urls(url: str) -> None:
    assert issuer(jwks=None, jwks_url=url).jwks_url == url


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"issuer": "http://token.ci.example"}, "issuer"),
        ({"issuer": "https://token.ci.example?x=1"}, "issuer"),
        ({"issuer": "https://user:pw@token.ci.example"}, "issuer"),
        ({"issuer": "spiffe://cluster.example/path"}, "issuer"),
        ({"issuer": "https://" + "a" * 256}, "issuer"),
        ({"issuer": "ftp://x"}, "issuer"),
        ({"audience": ""}, "audience"),
        ({"audience": "a" * 257}, "audience"),
        ({"jwks": None}, "jwks"),
        ({"jwks_url": "https://keys.example/jwks"}, "jwks"),
        ({"jwks": None, "jwks_url": "http://keys.example/jwks"}, "jwks_url"),
        ({"jwks": None, "jwks_url": "not a url"}, "jwks_url"),
        ({"jwks": {"keys": []}}, "jwks"),
        ({"jwks": {"keys": "x"}}, "jwks"),
        ({"jwks": {"keys": [generate_private_jwk()]}}, "jwks"),
        ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}, "jwks"),
        ({"jwks": {"keys": [{**public_jwk(), "alg": "HS256"}]}}, "jwks"),
        ({"jwks": {"keys": [{**public_jwk(), "alg": "ES256"}]}}, "jwks"),
        ({"jwks": {"keys": [{**public_jwk(), "kid": "a"}, {**public_jwk(), "kid": "a"}]}}, "jwks"),
        ({"jwks": {"keys": [{**public_jwk(), "use": "enc"}]}}, "jwks"),
        ({"subject_claim": ""}, "subject_claim"),
        ({"subject_claim": "x" * 65}, "subject_claim"),
        ({"subject_pattern": "(unclosed"}, "subject_pattern"),
        ({"subject_pattern": "no-group-(.*)"}, "subject_pattern"),
        ({"subject_pattern": "(?P<agent>" + "a" * 256 + ")"}, "subject_pattern"),
        ({"subject_pattern": ""}, "subject_pattern"),
    ],
)
def test_issuer_refuses_bad_fields(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as exc:
        issuer(**kwargs)
    assert field_of(exc) == field
