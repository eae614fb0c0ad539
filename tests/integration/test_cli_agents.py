"""``tether keygen``, ``tether agent`` and ``tether issuer`` against a real server in a
subprocess: key files and their modes, registration with the generated key, refusing a
private key, listing and showing, key rotation, disabling, trusted issuers, and who may
administer agents. No private key material is ever printed."""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_cli import (
    Node,
    assert_error,
    clean_env,
    run,
    running_node,
)

TRUST_DOMAIN = "cli-agents.test"
# Every private key `keygen` writes in this module: no command output may contain one.
PRIVATE_VALUES: list[str] = []


@pytest.fixture(scope="module")
def agents_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("cli-agents")
    with running_node(base, "--trust-domain", TRUST_DOMAIN, forbidden=PRIVATE_VALUES) as started:
        yield started


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = run(args, env)
    for value in PRIVATE_VALUES:
        assert value not in result.stdout, f"private key printed on stdout by {args}"
        assert value not in result.stderr, f"private key printed on stderr by {args}"
    return result


def ok_json(args: list[str], env: dict[str, str]) -> Any:
    result = cli([*args, "--json"], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def keygen(directory: Path, name: str = "agent.jwk", *extra: str) -> tuple[Path, dict[str, Any]]:
    """Generate a key pair into ``directory``; return the private file and keygen's JSON."""
    path = directory / name
    result = run(["keygen", "-o", str(path), *extra, "--json"], clean_env())
    assert result.returncode == 0, result.stderr
    PRIVATE_VALUES.append(json.loads(path.read_text())["d"])
    assert PRIVATE_VALUES[-1] not in result.stdout + result.stderr
    output: dict[str, Any] = json.loads(result.stdout)
    return path, output


def pub(path: Path) -> Path:
    return path.with_name(path.name + ".pub.json")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def operator_token(node: Node, name: str, role: str) -> str:
    created = ok_json(["operator", "create", name, "--role", role], node.env())
    token: str = created["token"]
    return token


# -- keygen -----------------------------------------------------------------------------


def test_keygen_writes_a_0600_private_key_and_prints_only_the_public_key(tmp_path: Path) -> None:
    path = tmp_path / "ci.jwk"
    result = run(["keygen", "-o", str(path)], clean_env())
    assert result.returncode == 0, result.stderr
    private = json.loads(path.read_text())
    PRIVATE_VALUES.append(private["d"])
    assert mode(path) == 0o600
    assert private["kty"] == "OKP"
    assert private["crv"] == "Ed25519"
    assert private["kid"]
    public = json.loads(pub(path).read_text())
    assert mode(pub(path)) == 0o644
    assert "d" not in public
    assert public == {"kty": "OKP", "crv": "Ed25519", "x": private["x"], "kid": private["kid"]}
    assert private["d"] not in result.stdout + result.stderr
    assert '"d"' not in result.stdout
    assert private["kid"] in result.stdout
    assert f"tether agent register NAME --public-key {pub(path)}" in result.stdout


def test_keygen_json_and_p256(tmp_path: Path) -> None:
    path, output = keygen(tmp_path, "p.jwk", "--type", "P-256")
    private = json.loads(path.read_text())
    assert set(output) == {"kid", "public_jwk", "private_key_file", "public_key_file", "next"}
    assert output["kid"] == private["kid"]
    assert output["public_jwk"] == {k: private[k] for k in ("kty", "crv", "x", "y", "kid")}
    assert "d" not in output["public_jwk"]
    assert output["public_key_file"] == str(pub(path))
    assert json.loads(pub(path).read_text()) == output["public_jwk"]


def test_keygen_refuses_to_overwrite_and_force_replaces_keeping_0600(tmp_path: Path) -> None:
    path, first = keygen(tmp_path)
    before = (path.read_bytes(), pub(path).read_bytes())
    refused = run(["keygen", "-o", str(path)], clean_env())
    assert_error(refused, 2, "exists", "--force")
    assert (path.read_bytes(), pub(path).read_bytes()) == before
    path.chmod(0o644)  # even a file someone loosened comes back 0600 when replaced
    _, second = keygen(tmp_path, path.name, "--force")
    assert second["kid"] != first["kid"]
    assert json.loads(path.read_text())["kid"] == second["kid"]
    assert mode(path) == 0o600
    assert mode(pub(path)) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, pub(path).name]  # no temp files


def test_keygen_refuses_a_symlink_and_a_stale_public_file(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "link.jwk"
    link.symlink_to(target)
    assert_error(run(["keygen", "-o", str(link)], clean_env()), 2, "exists")
    assert not target.exists()
    stale = tmp_path / "stale.jwk"
    pub(stale).write_text("{}")
    assert_error(run(["keygen", "-o", str(stale)], clean_env()), 2, "exists")
    assert not stale.exists()


def test_keygen_into_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    result = run(["keygen", "-o", str(tmp_path / "no" / "such" / "a.jwk")], clean_env())
    assert_error(result, 1, "cannot write")


# -- agents -----------------------------------------------------------------------------


def test_register_with_the_generated_key(agents_node: Node, tmp_path: Path) -> None:
    path, key = keygen(tmp_path)
    agent = ok_json(
        [
            "agent",
            "register",
            "ci-deployer",
            "--public-key",
            str(pub(path)),
            "--team",
            "platform",
            "--environment",
            "prod",
            "--owner",
            "alice",
            "--label",
            "ci",
            "--label",
            "deploy",
        ],
        agents_node.env(),
    )
    assert agent["id"] == f"spiffe://{TRUST_DOMAIN}/agent/ci-deployer"
    assert agent["name"] == "ci-deployer"
    assert agent["trust_domain"] == TRUST_DOMAIN
    assert agent["attributes"]["team"] == "platform"
    assert agent["attributes"]["environment"] == "prod"
    assert agent["attributes"]["owner"] == "alice"
    assert sorted(agent["attributes"]["labels"]) == ["ci", "deploy"]
    assert [k["kid"] for k in agent["keys"]] == [key["kid"]]
    assert agent["keys"][0]["removed_at"] is None
    assert "d" not in agent["keys"][0]["jwk"]
    assert agent["disabled_at"] is None

    people = cli(["agent", "register", "ci-reader", "--public-key", str(pub(path))], agents_node.env())
    assert people.returncode == 0, people.stderr
    assert f"spiffe://{TRUST_DOMAIN}/agent/ci-reader" in people.stdout
    assert key["kid"] in people.stdout


def test_register_with_inline_json(agents_node: Node, tmp_path: Path) -> None:
    _, key = keygen(tmp_path)
    agent = ok_json(
        ["agent", "register", "inline-agent", "--public-key", json.dumps(key["public_jwk"])],
        agents_node.env(),
    )
    assert [k["kid"] for k in agent["keys"]] == [key["kid"]]


def test_register_with_the_private_key_file_is_refused_and_sends_nothing(
    agents_node: Node, tmp_path: Path
) -> None:
    path, _ = keygen(tmp_path)
    refused = cli(["agent", "register", "leaky", "--public-key", str(path)], agents_node.env())
    assert_error(refused, 2, "PRIVATE key", f"{pub(path)}")
    assert refused.stdout == ""
    private = json.loads(path.read_text())
    inline = cli(["agent", "register", "leaky", "--public-key", json.dumps(private)], agents_node.env())
    assert_error(inline, 2, "PRIVATE key")
    assert_error(cli(["agent", "show", "leaky"], agents_node.env()), 1, "404")


def test_register_bad_input_is_one_line(agents_node: Node, tmp_path: Path) -> None:
    missing = cli(["agent", "register", "x1", "--public-key", str(tmp_path / "nope.json")], agents_node.env())
    assert_error(missing, 1, "cannot read")
    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json")
    assert_error(cli(["agent", "register", "x1", "--public-key", str(garbage)], agents_node.env()), 2, "JSON")
    assert_error(
        cli(["agent", "register", "x1", "--public-key", '{"kty": "oct", "k": "AAAA"}'], agents_node.env()),
        2,
        "PRIVATE",
    )
    bad_name = cli(["agent", "register", "Not A Name"], agents_node.env())
    assert_error(bad_name, 1, "agent name")
    assert_error(cli(["agent", "show", ".."], agents_node.env()), 2, "not a valid name")


def test_list_and_show(agents_node: Node, tmp_path: Path) -> None:
    path, key = keygen(tmp_path)
    ok_json(
        ["agent", "register", "lister", "--public-key", str(pub(path)), "--team", "t1"], agents_node.env()
    )
    # A second agent, so that a page of one has a next page whichever tests ran before on this node.
    second, _ = keygen(tmp_path, "second.jwk")
    ok_json(["agent", "register", "lister-2", "--public-key", str(pub(second))], agents_node.env())
    listed = ok_json(["agent", "list", "--all"], agents_node.env())
    assert set(listed) == {"agents", "next_after"}
    names = [a["name"] for a in listed["agents"]]
    assert "lister" in names
    assert names == sorted(names)
    table = cli(["agent", "list"], agents_node.env())
    assert table.returncode == 0, table.stderr
    assert "lister" in table.stdout
    assert f"spiffe://{TRUST_DOMAIN}/agent/lister" in table.stdout

    page = ok_json(["agent", "list", "--limit", "1"], agents_node.env())
    assert len(page["agents"]) == 1
    assert page["next_after"]

    shown = ok_json(["agent", "show", "lister"], agents_node.env())
    assert shown["id"] == f"spiffe://{TRUST_DOMAIN}/agent/lister"
    assert [k["kid"] for k in shown["keys"]] == [key["kid"]]
    people = cli(["agent", "show", "lister"], agents_node.env())
    assert people.returncode == 0, people.stderr
    for fragment in ("KID", "ADDED", "REMOVED", key["kid"], "t1", TRUST_DOMAIN):
        assert fragment in people.stdout, fragment

    assert_error(cli(["agent", "show", "nobody"], agents_node.env()), 1, "404")


def test_add_key_remove_key_and_the_last_key_stays(agents_node: Node, tmp_path: Path) -> None:
    first_path, first = keygen(tmp_path, "first.jwk")
    second_path, second = keygen(tmp_path, "second.jwk", "--type", "P-256")
    ok_json(["agent", "register", "rotator", "--public-key", str(pub(first_path))], agents_node.env())

    assert_error(
        cli(["agent", "add-key", "rotator", "--public-key", str(second_path)], agents_node.env()),
        2,
        "PRIVATE key",
    )
    added = cli(["agent", "add-key", "rotator", "--public-key", str(pub(second_path))], agents_node.env())
    assert added.returncode == 0, added.stderr
    assert second["kid"] in added.stdout
    shown = ok_json(["agent", "show", "rotator"], agents_node.env())
    assert {k["kid"] for k in shown["keys"] if k["removed_at"] is None} == {first["kid"], second["kid"]}

    no_confirm = cli(["agent", "remove-key", "--", "rotator", first["kid"]], agents_node.env())
    assert_error(no_confirm, 2, "--yes")
    removed = cli(["agent", "remove-key", "--yes", "--", "rotator", first["kid"]], agents_node.env())
    assert removed.returncode == 0, removed.stderr
    assert first["kid"] in removed.stdout
    shown = ok_json(["agent", "show", "rotator"], agents_node.env())
    active = [k["kid"] for k in shown["keys"] if k["removed_at"] is None]
    assert active == [second["kid"]]
    gone = [k for k in shown["keys"] if k["kid"] == first["kid"]]
    assert gone
    assert gone[0]["removed_at"]
    people = cli(["agent", "show", "rotator"], agents_node.env())
    assert first["kid"] in people.stdout
    assert second["kid"] in people.stdout

    last = cli(["agent", "remove-key", "--yes", "--", "rotator", second["kid"]], agents_node.env())
    assert_error(last, 1, "last active key", "409")
    shown = ok_json(["agent", "show", "rotator"], agents_node.env())
    assert [k["kid"] for k in shown["keys"] if k["removed_at"] is None] == [second["kid"]]

    unknown = cli(["agent", "remove-key", "--yes", "--", "rotator", "no-such-kid"], agents_node.env())
    assert_error(unknown, 1, "404")


def test_disable(agents_node: Node, tmp_path: Path) -> None:
    path, _ = keygen(tmp_path)
    ok_json(["agent", "register", "retiree", "--public-key", str(pub(path))], agents_node.env())
    assert_error(cli(["agent", "disable", "retiree"], agents_node.env()), 2, "--yes")
    assert ok_json(["agent", "show", "retiree"], agents_node.env())["disabled_at"] is None
    disabled = cli(["agent", "disable", "retiree", "--yes"], agents_node.env())
    assert disabled.returncode == 0, disabled.stderr
    assert "Disabled agent retiree" in disabled.stdout
    shown = ok_json(["agent", "show", "retiree"], agents_node.env())
    assert shown["disabled_at"]
    assert "disabled" in cli(["agent", "show", "retiree"], agents_node.env()).stdout
    again = cli(["agent", "disable", "retiree", "--yes"], agents_node.env())
    assert_error(again, 1, "already disabled", "409")


def test_a_secret_writer_cannot_administer_agents_or_issuers(agents_node: Node, tmp_path: Path) -> None:
    writer = operator_token(agents_node, "agents-writer", "secret-writer")
    path, _ = keygen(tmp_path)
    for args in (
        ["agent", "list"],
        ["agent", "register", "sneaky", "--public-key", str(pub(path))],
        ["agent", "show", "ci-deployer"],
        ["agent", "disable", "ci-deployer", "--yes"],
        ["issuer", "list"],
    ):
        result = cli(args, agents_node.env(writer))
        assert_error(result, 1, "403")
        assert result.stdout == ""


def test_no_token_and_a_bad_addr_are_usage_errors(tmp_path: Path) -> None:
    assert_error(run(["agent", "list"], clean_env(TETHER_ADDR="http://127.0.0.1:9")), 2, "no operator token")
    assert_error(run(["agent", "list", "--addr", "ftp://x", "--token", "t"], clean_env()), 2, "--addr")


# -- trusted issuers --------------------------------------------------------------------


def _jwks_file(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    from tether.crypto.jose import generate_private_jwk

    private = generate_private_jwk("Ed25519")
    PRIVATE_VALUES.append(private["d"])
    public = {k: v for k, v in private.items() if k != "d"}
    jwks = {"keys": [public]}
    path = tmp_path / "issuer-jwks.json"
    path.write_text(json.dumps(jwks))
    return path, jwks


def test_issuer_add_list_remove(agents_node: Node, tmp_path: Path) -> None:
    jwks_path, jwks = _jwks_file(tmp_path)
    pattern = r"spiffe://example\.org/ci/(?P<agent>[a-z0-9-]+)"
    added = ok_json(
        [
            "issuer",
            "add",
            "example-svid",
            "--issuer",
            "spiffe://example.org",
            "--audience",
            "tether",
            "--jwks-file",
            str(jwks_path),
            "--subject-pattern",
            pattern,
        ],
        agents_node.env(),
    )
    assert added["name"] == "example-svid"
    assert added["issuer"] == "spiffe://example.org"
    assert added["audience"] == "tether"
    assert added["subject_claim"] == "sub"
    assert added["subject_pattern"] == pattern
    assert [k["kid"] for k in added["jwks"]["keys"]] == [jwks["keys"][0]["kid"]]

    people = cli(
        [
            "issuer",
            "add",
            "github-ci",
            "--issuer",
            "https://token.actions.githubusercontent.com",
            "--audience",
            "tether",
            "--jwks-url",
            "https://token.actions.githubusercontent.com/.well-known/jwks",
            "--subject-claim",
            "repository",
            "--subject-pattern",
            "acme/(?P<agent>[a-z0-9-]+)",
        ],
        agents_node.env(),
    )
    assert people.returncode == 0, people.stderr
    assert "github-ci" in people.stdout

    listed = ok_json(["issuer", "list"], agents_node.env())
    assert {i["name"] for i in listed["issuers"]} == {"example-svid", "github-ci"}
    table = cli(["issuer", "list"], agents_node.env())
    assert table.returncode == 0, table.stderr
    assert "example-svid" in table.stdout
    assert "spiffe://example.org" in table.stdout

    assert_error(cli(["issuer", "remove", "example-svid"], agents_node.env()), 2, "--yes")
    removed = cli(["issuer", "remove", "example-svid", "--yes"], agents_node.env())
    assert removed.returncode == 0, removed.stderr
    assert {i["name"] for i in ok_json(["issuer", "list"], agents_node.env())["issuers"]} == {"github-ci"}
    assert_error(cli(["issuer", "remove", "example-svid", "--yes"], agents_node.env()), 1, "404")
    assert cli(["issuer", "remove", "github-ci", "--yes"], agents_node.env()).returncode == 0


def test_issuer_add_bad_input_is_one_line(agents_node: Node, tmp_path: Path) -> None:
    jwks_path, _ = _jwks_file(tmp_path)
    base = ["issuer", "add", "bad", "--issuer", "spiffe://example.org", "--audience", "tether"]
    pattern = ["--subject-pattern", "(?P<agent>.+)"]
    both = cli(
        [*base, *pattern, "--jwks-file", str(jwks_path), "--jwks-url", "https://x/jwks"], agents_node.env()
    )
    assert_error(both, 2, "exactly one")
    assert_error(cli([*base, *pattern], agents_node.env()), 2, "exactly one")
    private_jwks = tmp_path / "private-jwks.json"
    path, _ = keygen(tmp_path)
    private_jwks.write_text(json.dumps({"keys": [json.loads(path.read_text())]}))
    refused = cli([*base, *pattern, "--jwks-file", str(private_jwks)], agents_node.env())
    assert_error(refused, 2, "PRIVATE")
    not_jwks = tmp_path / "not-jwks.json"
    not_jwks.write_text("[]")
    assert_error(cli([*base, *pattern, "--jwks-file", str(not_jwks)], agents_node.env()), 2, "not a JWKS")
    no_group = cli([*base, "--subject-pattern", ".+", "--jwks-file", str(jwks_path)], agents_node.env())
    assert_error(no_group, 1, "agent")
    assert "bad" not in {i["name"] for i in ok_json(["issuer", "list"], agents_node.env())["issuers"]}
