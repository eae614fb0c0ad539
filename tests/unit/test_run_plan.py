"""``tether run``'s pure parts: durations, variable names, the child's environment, the sidecar's
routes and which headers cross it."""

from __future__ import annotations

import httpx
import pytest

from tether.cli.output import CommandError
from tether.cli.run import (
    RunPlan,
    child_environment,
    exit_code,
    parse_duration,
    parse_named_env,
    postgres_environment,
)
from tether.errors import InvalidInputError
from tether.sdk.sidecar import (
    SidecarRoutes,
    env_name,
    forwarded_request_headers,
    forwarded_response_headers,
)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400)]
)
def test_durations_parse_with_units(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "ten", "10x", "-5m", "31d", "1.5h"])
def test_bad_durations_are_usage_errors(text: str) -> None:
    with pytest.raises(CommandError) as caught:
        parse_duration(text)
    assert caught.value.exit_code == 2


def test_endpoint_variables_follow_the_template() -> None:
    assert env_name("TETHER_{NAME}_URL", "github") == "TETHER_GITHUB_URL"
    assert env_name("TETHER_{NAME}_URL", "api.open-ai") == "TETHER_API_OPEN_AI_URL"
    assert env_name("{name}_base", "github") == "github_base"
    for template in ("{HOST}_URL", "{0}", "{NAME", "1{NAME}", "A-{NAME}"):
        with pytest.raises(InvalidInputError):
            env_name(template, "github")


def plan(**changes: object) -> RunPlan:
    fields: dict[str, object] = {
        "command": ("true",),
        "purpose": "deploy",
        "objective": "o",
        "secrets": ("prod/github/token",),
        "destinations": ("github",),
        "postgres": None,
        "sensitivity": "internal",
        "ttl_seconds": None,
        "url_env": "TETHER_{NAME}_URL",
        "named_env": {"GITHUB_API_URL": "github"},
    }
    fields.update(changes)
    return RunPlan(**fields)  # type: ignore[arg-type]


def test_a_plan_names_each_endpoint_by_template_and_by_request() -> None:
    urls = {"github": "http://127.0.0.1:1/k/github"}
    assert plan().endpoint_variables(urls) == {
        "TETHER_GITHUB_URL": urls["github"],
        "GITHUB_API_URL": urls["github"],
    }


@pytest.mark.parametrize(
    "changes",
    [
        {"command": ()},
        {"destinations": ("Git Hub",)},
        {"secrets": ("../etc",)},
        {"named_env": {"X": "gitlab"}},
        {"url_env": "{host}"},
    ],
)
def test_a_bad_plan_is_a_usage_error(changes: dict[str, object]) -> None:
    with pytest.raises(CommandError) as caught:
        plan(**changes)
    assert caught.value.exit_code == 2


def test_named_env_needs_variable_and_destination() -> None:
    assert parse_named_env(["A=github", "B_2=x"]) == {"A": "github", "B_2": "x"}
    for item in ("A", "=github", "A=", "1A=github", "A-B=github"):
        with pytest.raises(CommandError):
            parse_named_env([item])


def test_the_child_inherits_no_tether_variable_and_gets_loopback_in_no_proxy() -> None:
    inherited = {
        "PATH": "/bin",
        "TETHER_TOKEN": "op",
        "TETHER_AGENT_KEY": "k",
        "NO_PROXY": "corp",
        "PGUSER": "me",
    }
    env = child_environment(inherited, {"TETHER_GITHUB_URL": "http://127.0.0.1:1/k/github"}, {})
    assert env["PATH"] == "/bin"
    assert "TETHER_TOKEN" not in env
    assert "TETHER_AGENT_KEY" not in env
    assert env["TETHER_GITHUB_URL"].startswith("http://127.0.0.1:")
    assert env["NO_PROXY"] == "corp,127.0.0.1,localhost"
    assert env["no_proxy"] == "127.0.0.1,localhost"
    assert env["PGUSER"] == "me"  # no credential: libpq's variables are the caller's


def test_a_postgres_credential_replaces_every_inherited_libpq_variable() -> None:
    credential = {
        "type": "postgresql",
        "host": "127.0.0.1",
        "port": 5432,
        "database": "app",
        "username": "tether_x",
        "password": "pw",
    }
    pg = postgres_environment(credential)
    env = child_environment({"PGSERVICE": "prod", "PGUSER": "me"}, {}, pg)
    assert env == {
        "PGHOST": "127.0.0.1",
        "PGPORT": "5432",
        "PGDATABASE": "app",
        "PGUSER": "tether_x",
        "PGPASSWORD": "pw",
    }
    with pytest.raises(CommandError, match="not a postgresql one"):
        postgres_environment({"type": "static", "value": "v"})
    with pytest.raises(CommandError, match="lacks"):
        postgres_environment({"type": "postgresql", "host": "h"})


def test_exit_code_is_the_childs_or_128_plus_the_signal() -> None:
    assert exit_code(0) == 0
    assert exit_code(3) == 3
    assert exit_code(-15) == 143


def test_routes_need_the_run_key_and_a_declared_destination() -> None:
    routes = SidecarRoutes(("github", "echo"))
    key = routes.run_key
    assert len(key) >= 43
    assert routes.match(f"/{key}/github/repos/a") == ("github", "/repos/a")
    assert routes.match(f"/{key}/echo") == ("echo", "/")
    assert routes.match(f"/{key}/gitlab/x") is None
    assert routes.match(f"/{'x' * len(key)}/github/x") is None
    assert routes.match("/github/x") is None
    assert routes.match(f"/{key}") is None
    assert key not in repr(routes)
    assert SidecarRoutes(("github",)).run_key != key
    with pytest.raises(InvalidInputError):
        SidecarRoutes(())


def test_credentials_and_hop_by_hop_headers_do_not_cross_the_sidecar() -> None:
    sent = [
        ("Accept", "application/json"),
        ("Authorization", "token child-held"),
        ("Cookie", "a=b"),
        ("DPoP", "x"),
        ("Tether-Task", "tsk_other"),
        ("Connection", "keep-alive"),
        ("Host", "127.0.0.1"),
        ("Content-Length", "3"),
        ("X-GitHub-Api-Version", "2022-11-28"),
    ]
    assert forwarded_request_headers(sent) == [
        ("Accept", "application/json"),
        ("X-GitHub-Api-Version", "2022-11-28"),
    ]
    back = httpx.Headers(
        [("Content-Type", "text/plain"), ("Content-Encoding", "gzip"), ("Set-Cookie", "s=1"), ("Link", "<a>")]
    )
    assert forwarded_response_headers(back) == [("content-type", "text/plain"), ("link", "<a>")]
