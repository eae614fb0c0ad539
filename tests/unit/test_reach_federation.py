"""Federated issuer mappings as reach subjects: which agents a mapping can name, with a subject that
the real verifier (``verify_federated_token``) maps to that agent."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey

from tether.crypto.jose import sign_jws
from tether.identity.federation import FederationRule, parse_jwks, verify_federated_token
from tether.reach.federation import MappedAgent, mapped_agents

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ISSUER = "https://issuer.test"


@pytest.fixture(scope="module")
def key() -> ECKey:
    return ECKey.generate_key("P-256")


def exchanged_agent(key: ECKey, pattern: str, subject: str) -> str:
    """The agent the real token-exchange verifier maps ``subject`` to under ``pattern``."""
    jwk = {**{k: str(v) for k, v in key.as_dict(private=False).items()}, "kid": "k1", "alg": "ES256"}
    rule = FederationRule(
        issuer=ISSUER,
        audience="tether",
        keys=parse_jwks({"keys": [jwk]}),
        subject_pattern=re.compile(pattern),
    )
    t = int(NOW.timestamp())
    claims = {"iss": ISSUER, "aud": "tether", "sub": subject, "iat": t, "exp": t + 300}
    token = sign_jws({"alg": "ES256", "typ": "JWT", "kid": "k1"}, claims, key)
    return verify_federated_token(token, rule, now=NOW).agent_name


@pytest.mark.parametrize(
    "pattern",
    [
        r"spiffe://workloads\.test/ns/(?P<agent>[a-z0-9-]+)/sa/.*",
        r"system:serviceaccount:(?P<ns>[a-z]+):(?P<agent>[a-z][a-z0-9-]{0,62})",
        r"repo:acme/(?P<agent>[^/]+):ref:refs/heads/(main|release-\d+)",
        r"(?i)SA:(?P<agent>[a-z-]+)",
        r"(?P<agent>\w[\w-]*)/(?P=agent)",
        r"(?=deploy)(?P<agent>[a-z-]+)\Z",
    ],
)
def test_each_example_subject_is_exchanged_for_its_agent(key: ECKey, pattern: str) -> None:
    found = mapped_agents(pattern, ["deploy-bot"])
    assert found == [MappedAgent("deploy-bot", found[0].example)]
    assert found[0].example is not None
    assert exchanged_agent(key, pattern, found[0].example) == "deploy-bot"


def test_agents_the_mapping_cannot_name_are_left_out() -> None:
    pattern = r"spiffe://workloads\.test/ns/(?P<agent>deploy-bot|report-bot)/sa/.*"
    assert [m.agent for m in mapped_agents(pattern, ["deploy-bot", "dev-bot", "report-bot"])] == [
        "deploy-bot",
        "report-bot",
    ]
    assert mapped_agents(r"repo:(?P<agent>[a-z]+)", ["Deploy", "a.b", "ci"]) == [MappedAgent("ci", "repo:ci")]


def test_a_mapping_without_an_agent_group_or_that_does_not_compile_names_nobody() -> None:
    assert mapped_agents(r"repo:(?P<name>[a-z]+)", ["ci"]) == []
    assert mapped_agents(r"repo:(", ["ci"]) == []


def test_what_cannot_be_proven_is_listed_unconfirmed_not_hidden() -> None:
    # The agent group is a back-reference to another group: no witness is built, but the agent
    # could arrive ("bot-bot"), so it is listed, unconfirmed.
    found = mapped_agents(r"(?P<x>\w+)-(?P<agent>(?P=x))", ["bot"])
    assert found == [MappedAgent("bot", None)]
    assert found[0].to_json() == {"agent": "bot", "example_subject": None, "confirmed": False}


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.text(alphabet="abc:/.-", max_size=6),
    group=st.sampled_from([r"[a-z]+", r"[a-z0-9-]{1,8}", r"\w+", r"[^/]+", r"(?:ci|cd)-[a-z]", r"."]),
    suffix=st.sampled_from(["", "/.*", r"/sa/\d+", ":(x|y)+", r"\Z"]),
    name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,9}", fullmatch=True),
)
def test_a_confirmed_agent_matches_and_an_omitted_one_cannot(
    prefix: str, group: str, suffix: str, name: str
) -> None:
    pattern = re.escape(prefix) + f"(?P<agent>{group})" + suffix
    found = mapped_agents(pattern, [name])
    if found and found[0].example is not None:
        match = re.fullmatch(pattern, found[0].example)
        assert match is not None
        assert match["agent"] == name
    elif not found:
        # Omitted: the agent group itself cannot match the name, so no subject can name it.
        assert re.fullmatch(group, name) is None
