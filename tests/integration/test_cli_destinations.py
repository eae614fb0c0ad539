"""``tether destination`` against a real server in a subprocess: add with each injection type,
list, show, remove, the one-line errors for bad input and refusals, and that no secret value is
ever printed (the CLI only ever names a secret's path)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_cli import (
    SECRET_VALUES,
    Node,
    assert_error,
    new_value,
    operator,
    run,
    running_node,
)

SECRET = "cli/dest/token"


@pytest.fixture(scope="module")
def dest_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with running_node(tmp_path_factory.mktemp("cli-destinations"), forbidden=SECRET_VALUES) as started:
        put = run(["secret", "put", SECRET, "--stdin"], started.env(), stdin=new_value())
        assert put.returncode == 0, put.stderr
        yield started


def ok(args: list[str], node: Node, token: str | None = None) -> subprocess.CompletedProcess[str]:
    result = run(args, node.env(token))
    assert result.returncode == 0, result.stderr
    return result


def ok_json(args: list[str], node: Node, token: str | None = None) -> Any:
    return json.loads(ok([*args, "--json"], node, token).stdout)


def add_args(name: str, *extra: str) -> list[str]:
    return ["destination", "add", name, "--base-url", "https://api.github.com", "--secret", SECRET, *extra]


def test_add_with_a_header_template_then_show_and_list(dest_node: Node) -> None:
    added = ok_json(
        add_args(
            "github",
            "--inject-header",
            "Authorization=Bearer {secret}",
            "--method",
            "get",
            "--method",
            "POST",
            "--path-prefix",
            "/repos",
            "--path-prefix",
            "/user/",
            "--timeout-seconds",
            "10",
            "--max-body-bytes",
            "2048",
            "--max-response-bytes",
            "4096",
        ),
        dest_node,
    )
    assert added["name"] == "github"
    assert added["base_url"] == "https://api.github.com/"
    assert added["host"] == "api.github.com"
    assert added["secret"] == SECRET
    assert added["inject"] == {"type": "header", "name": "Authorization", "template": "Bearer {secret}"}
    assert added["methods"] == ["GET", "POST"]
    assert added["path_prefixes"] == ["/repos", "/user/"]
    assert (added["timeout_seconds"], added["max_body_bytes"], added["max_response_bytes"]) == (
        10,
        2048,
        4096,
    )

    assert ok_json(["destination", "show", "github"], dest_node) == added
    listed = ok_json(["destination", "list"], dest_node)
    assert added in listed["destinations"]

    human = ok(["destination", "show", "github"], dest_node).stdout
    for fragment in ("https://api.github.com/", SECRET, "header Authorization: Bearer {secret}", "/repos"):
        assert fragment in human
    table = ok(["destination", "list"], dest_node).stdout
    assert "github" in table
    assert "GET,POST" in table


def test_add_with_basic_and_query_injections(dest_node: Node) -> None:
    basic = ok(add_args("jira", "--inject-basic", "bot@acme.test"), dest_node).stdout
    assert "Added destination jira" in basic
    assert "basic auth, user bot@acme.test" in basic
    query = ok_json(add_args("maps", "--inject-query", "key={secret}"), dest_node)
    assert query["inject"] == {"type": "query", "name": "key", "template": "{secret}"}
    bare = ok_json(add_args("plain", "--inject-header", "X-Api-Key"), dest_node)
    assert bare["inject"] == {"type": "header", "name": "X-Api-Key", "template": "{secret}"}
    assert bare["methods"] == ["GET"]
    assert bare["path_prefixes"] == ["/"]


def test_remove_needs_confirmation_then_removes(dest_node: Node) -> None:
    ok(add_args("gone", "--inject-header", "X-Key={secret}"), dest_node)
    assert_error(run(["destination", "remove", "gone"], dest_node.env()), 2, "--yes")
    assert ok_json(["destination", "show", "gone"], dest_node)["name"] == "gone"
    assert "Removed destination gone." in ok(["destination", "remove", "gone", "--yes"], dest_node).stdout
    assert_error(run(["destination", "show", "gone"], dest_node.env()), 1, "no destination")
    assert_error(run(["destination", "remove", "gone", "--yes"], dest_node.env()), 1, "no destination")


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (add_args("x1"), 2, "exactly one of --inject-header"),
        (add_args("x2", "--inject-header", "A={secret}", "--inject-basic", "u"), 2, "exactly one"),
        (add_args("x3", "--inject-header", "=Bearer {secret}"), 2, "NAME=TEMPLATE"),
        (add_args("x4", "--inject-header", "Authorization=Bearer token"), 1, "{secret}"),
        (add_args("x5", "--inject-header", "Host={secret}"), 1, "Host"),
        (add_args("x6", "--inject-header", "A={secret}", "--method", "TRACE"), 1, "TRACE"),
        (add_args("x7", "--inject-header", "A={secret}", "--path-prefix", "/a/../b"), 1, "'..'"),
        (
            [
                "destination",
                "add",
                "x8",
                "--base-url",
                "http://api.github.com",
                "--secret",
                SECRET,
                "--inject-basic",
                "u",
            ],
            1,
            "https",
        ),
        (
            [
                "destination",
                "add",
                "x9",
                "--base-url",
                "https://api.github.com",
                "--secret",
                "no/such",
                "--inject-basic",
                "u",
            ],
            1,
            "no secret",
        ),
        (
            [
                "destination",
                "add",
                "x10",
                "--base-url",
                "https://a.test",
                "--secret",
                "../etc",
                "--inject-basic",
                "u",
            ],
            2,
            "invalid secret path",
        ),
        (add_args("x11", "--inject-basic", "u", "--timeout-seconds", "0"), 2, "timeout-seconds"),
    ],
)
def test_bad_input_is_one_error_line_and_nothing_is_added(
    dest_node: Node, args: list[str], code: int, fragment: str
) -> None:
    assert_error(run(args, dest_node.env()), code, fragment)
    names = [d["name"] for d in ok_json(["destination", "list"], dest_node)["destinations"]]
    assert args[2] not in names


def test_taken_name_is_refused(dest_node: Node) -> None:
    ok(add_args("twice", "--inject-basic", "u"), dest_node)
    assert_error(run(add_args("twice", "--inject-basic", "u"), dest_node.env()), 1, "already exists")


def test_an_approver_is_refused_and_an_auditor_only_reads(dest_node: Node) -> None:
    ok(add_args("readable", "--inject-basic", "u"), dest_node)
    approver = operator(dest_node, "dest-approver", "approver")
    auditor = operator(dest_node, "dest-auditor", "auditor")
    writer = operator(dest_node, "dest-writer", "secret-writer")
    assert_error(run(["destination", "list"], dest_node.env(approver)), 1, "destination.read")
    assert_error(
        run(add_args("nope", "--inject-basic", "u"), dest_node.env(approver)), 1, "destination.write"
    )
    assert ok_json(["destination", "show", "readable"], dest_node, auditor)["name"] == "readable"
    assert_error(
        run(["destination", "remove", "readable", "--yes"], dest_node.env(auditor)), 1, "destination.write"
    )
    assert (
        ok_json(add_args("by-writer", "--inject-basic", "u"), dest_node, writer)["created_by"]
        == "dest-writer"
    )
    ok(["destination", "remove", "by-writer", "--yes"], dest_node, writer)
