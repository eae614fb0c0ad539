"""The ``tether`` command against a real server in a subprocess: no mocks, real HTTP.

One node is initialised and served (``tether server`` in a subprocess) for the whole module;
each test drives the CLI as a user would (with TETHER_ADDR / TETHER_TOKEN) and checks exit
codes, the one-line errors, the ``--json`` shapes, and that no secret value is ever printed.

Commands that talk to the server run in this process (:func:`run`): the real entry point
(``tether.cli.main.main``) with its own stdin, stdout, stderr and environment, over real HTTP to
the node, which saves starting an interpreter per command. Commands that act on a data directory
(``init``, ``server``, ``migrate``, ``demo``: they set up logging, signal handlers and an event
loop for their whole process) and the smoke tests (``real_process=True``, and
:func:`test_in_process_runs_answer_as_the_installed_command_does`) run the installed ``tether``
script in a subprocess.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether.store.migrations import head_revision

_SCRIPT = Path(sys.executable).with_name("tether")
TETHER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "tether.cli.main"]
COMMAND_TIMEOUT = 30
START_TIMEOUT = 60.0  # a loaded machine (parallel tests) starts an interpreter slowly

# Every secret value any test writes; no command output may ever contain one.
SECRET_VALUES: list[str] = []


def new_value() -> str:
    value = "cli-test-" + secrets.token_urlsafe(18)
    SECRET_VALUES.append(value)
    return value


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(extra)
    return env


# Commands that configure their whole process (logging, signal handlers, an event loop): always
# a real process, never this one.
PROCESS_COMMANDS = frozenset({"init", "server", "migrate", "demo"})


def run(
    args: list[str],
    env: dict[str, str],
    *,
    stdin: str | None = None,
    timeout: float = COMMAND_TIMEOUT,
    real_process: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``tether ARGS`` with exactly ``env`` as its environment and ``stdin`` as its input; in this
    process unless ``real_process`` or the command is one of :data:`PROCESS_COMMANDS`."""
    if real_process or (args and args[0] in PROCESS_COMMANDS):
        result = run_process(args, env, stdin=stdin, timeout=timeout)
    else:
        result = run_in_process(args, env, stdin=stdin)
    for value in SECRET_VALUES:
        assert value not in result.stdout, f"secret value printed on stdout by {args}"
        assert value not in result.stderr, f"secret value printed on stderr by {args}"
    assert "Traceback" not in result.stderr
    return result


def run_process(
    args: list[str], env: dict[str, str], *, stdin: str | None = None, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """The installed ``tether`` script in a subprocess."""
    return subprocess.run(
        [*TETHER, *args],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def run_in_process(
    args: list[str], env: dict[str, str], *, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``tether.cli.main.main(args)`` here, as the script would run it in a subprocess with its
    output piped: ``env`` replaces the ``TETHER_*`` variables, stdin, stdout and stderr are
    buffers (not terminals), and the consoles are as a pipe makes them (``output._PIPE_WIDTH``:
    200 columns for stdout, no colour; 80 columns for help and stderr, rich's width off a terminal)."""
    from click.testing import CliRunner

    from tether.cli import output
    from tether.cli.main import main

    overrides: dict[str, str | None] = {k: None for k in os.environ if k.startswith("TETHER_")}
    overrides.update(env)
    if "COLUMNS" not in env:
        overrides["COLUMNS"] = "80"  # the width rich falls back to when no descriptor is a terminal
    consoles = {console: (console._width, console._color_system) for console in (output.out, output.err)}
    output.out._width = None if "COLUMNS" in env else 200
    for console in consoles:
        console._color_system = None
    code: int
    try:
        with CliRunner().isolation(input=stdin, env=overrides) as (stdout, stderr, _):
            try:
                main(args)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # what the script's interpreter would print, and exit 1
                sys.stderr.write(traceback.format_exc())
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            out_text = stdout.getvalue().decode()
            err_text = stderr.getvalue().decode()
    finally:
        for console, (width, color_system) in consoles.items():
            console._width, console._color_system = width, color_system
    return subprocess.CompletedProcess([*TETHER, *args], code, out_text, err_text)


def assert_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """Exactly one line on stderr, starting with ``error:``, containing each fragment."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, line
    return line


def wait_healthy(addr: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    if not _healthy_or_exited(addr, proc):
        text = log.read_text(errors="replace")
        if proc.poll() is not None:
            pytest.fail(f"tether server exited with {proc.returncode}:\n{text}")
        pytest.fail(f"tether server did not become healthy in {START_TIMEOUT} s:\n{text}")


def _healthy_or_exited(addr: str, proc: subprocess.Popen[bytes]) -> bool:
    """True once ``GET /v1/sys/health`` answers 200; False if the process exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(f"{addr}/v1/sys/health", timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def start_server(data_dir: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``tether server`` (one process: these tests are of the CLI, several workers have their own
    tests) on a free loopback port, healthy. A port another test process took between probing and
    listening (tests run in parallel) is retried on another port; any other failure fails."""
    for attempt in range(1, 4):
        port = free_port()
        offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            command = [
                "server",
                "--data-dir",
                str(data_dir),
                "--listen",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
            ]
            proc = subprocess.Popen(
                [*TETHER, *command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_env(),
            )
        addr = f"http://127.0.0.1:{port}"
        if _healthy_or_exited(addr, proc):
            return proc, port
        with log_path.open("rb") as log:
            log.seek(offset)
            taken = b"already in use" in log.read()
        if not (taken and proc.poll() is not None and attempt < 3):
            stop(proc)
            wait_healthy(addr, proc, log_path)  # fails, with the log
    raise AssertionError("unreachable")


def stop(proc: subprocess.Popen[bytes]) -> int:
    """Ctrl-C, as a user would; kill if it does not stop in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


@dataclass(frozen=True)
class Node:
    data_dir: Path
    port: int
    addr: str
    token: str
    init: dict[str, Any]
    init_stderr: str

    def env(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return clean_env(TETHER_ADDR=self.addr, TETHER_TOKEN=token or self.token, **extra)


@contextlib.contextmanager
def running_node(base: Path, *init_args: str, forbidden: list[str]) -> Iterator[Node]:
    """``tether init`` then ``tether server`` as a real process on loopback; afterwards, none of
    the ``forbidden`` values (secrets, private keys) may appear in the server log."""
    data_dir = base / "data"
    init = run(["init", "--data-dir", str(data_dir), *init_args, "--json"], clean_env())
    assert init.returncode == 0, init.stderr
    info = json.loads(init.stdout)
    log_path = base / "server.log"
    proc, port = start_server(data_dir, log_path)
    try:
        addr = f"http://127.0.0.1:{port}"
        yield Node(data_dir, port, addr, info["root_token"], info, init.stderr)
    finally:
        stop(proc)
    server_log = log_path.read_text(errors="replace")
    for value in forbidden:
        assert value not in server_log


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with running_node(tmp_path_factory.mktemp("cli"), forbidden=SECRET_VALUES) as started:
        yield started


# The smoke tests of the in-process runner: each command through the installed script and in
# this process gives the same exit code, stdout and stderr (usage errors, API errors, no token,
# no server, help, JSON and tables).
SMOKE = [
    pytest.param(["sys", "health", "--json"], "no token", None, id="health"),
    pytest.param(["operator", "whoami", "--json"], "admin", None, id="whoami-json"),
    pytest.param(["operator", "list"], "admin", None, id="operator-table"),
    pytest.param(["secret", "show", "a//b"], "admin", None, id="bad-path"),
    pytest.param(["secret", "list", "--limit", "0"], "admin", None, id="usage-error"),
    pytest.param(["secret", "rotate", "cli/smoke/missing", "--stdin"], "admin", "v", id="api-404"),
    pytest.param(["secret", "put", "cli/smoke/empty", "--stdin"], "admin", "", id="empty-stdin"),
    pytest.param(["secret", "list"], "no token", None, id="no-token"),
    pytest.param(["secret", "list"], "no server", None, id="no-server"),
    pytest.param(["secret", "put", "--help"], "admin", None, id="help"),
    pytest.param([], "admin", None, id="no-args"),
    pytest.param(["--version"], "admin", None, id="version"),
]


@pytest.mark.parametrize(("args", "who", "stdin"), SMOKE)
def test_in_process_runs_answer_as_the_installed_command_does(
    node: Node, args: list[str], who: str, stdin: str | None
) -> None:
    env = {
        "admin": node.env(),
        "no token": clean_env(TETHER_ADDR=node.addr),
        "no server": clean_env(TETHER_ADDR=f"http://127.0.0.1:{free_port()}", TETHER_TOKEN=node.token),
    }[who]
    real = run(args, env, stdin=stdin, real_process=True)
    here = run(args, env, stdin=stdin)
    assert (here.returncode, here.stdout, here.stderr) == (real.returncode, real.stdout, real.stderr)


def operator(node: Node, name: str, role: str) -> str:
    result = run(["operator", "create", name, "--role", role, "--json"], node.env())
    assert result.returncode == 0, result.stderr
    token: str = json.loads(result.stdout)["token"]
    return token


# -- init -------------------------------------------------------------------------------


def test_init_prints_the_token_once_as_json_and_warns_about_the_dev_key(node: Node) -> None:
    assert set(node.init) == {"root_token", "data_dir", "key_provider", "storage"}
    assert node.init["root_token"].startswith("tto_")
    assert node.init["data_dir"] == str(node.data_dir.resolve())
    assert node.init["key_provider"] == "unsafe-dev"
    assert node.init["storage"] == "sqlite"
    assert "UNSAFE" in node.init_stderr
    assert node.data_dir.stat().st_mode & 0o777 == 0o700
    assert (node.data_dir / "tether.toml").exists()


def test_init_for_people_says_store_the_token_now(tmp_path: Path) -> None:
    result = run(["init", "--data-dir", str(tmp_path / "d")], clean_env())
    assert result.returncode == 0, result.stderr
    assert "tto_" in result.stdout
    assert "shown only once" in result.stdout
    assert "export TETHER_TOKEN=tto_" in result.stdout


def test_init_twice_is_refused_and_changes_nothing(node: Node) -> None:
    config = node.data_dir / "tether.toml"
    before = (config.read_bytes(), config.stat().st_mtime_ns, sorted(p.name for p in node.data_dir.iterdir()))
    result = run(["init", "--data-dir", str(node.data_dir), "--json"], clean_env())
    assert_error(result, 1, "already initialised")
    assert result.stdout == ""
    after = (config.read_bytes(), config.stat().st_mtime_ns, sorted(p.name for p in node.data_dir.iterdir()))
    assert after == before


def test_init_of_a_store_that_has_operators_is_refused_and_leaves_no_files(
    node: Node, tmp_path: Path
) -> None:
    # A second data dir pointing at the first node's database: the store refuses a second root.
    other = tmp_path / "other"
    url = f"sqlite:///{node.data_dir / 'tether.db'}"
    key = f"--root-key-file={node.data_dir / 'dev-root.key'}"
    result = run(["init", "--data-dir", str(other), "--database-url", url, key], clean_env())
    assert_error(result, 1, "already initialised")
    assert not other.exists()


# -- secrets ----------------------------------------------------------------------------


def test_put_from_stdin_then_show_gives_metadata_and_versions_but_no_value(node: Node) -> None:
    value = new_value()
    put = run(
        [
            "secret",
            "put",
            "cli/stdin/token",
            "--stdin",
            "--sensitivity",
            "restricted",
            "--purpose",
            "ci",
            "--purpose",
            "deploy",
            "--destination",
            "github",
            "--owner",
            "team-a",
            "--rotation-period-seconds",
            "86400",
            "--json",
        ],
        node.env(),
        stdin=value + "\n",
    )
    assert put.returncode == 0, put.stderr
    written = json.loads(put.stdout)
    assert written["path"] == "cli/stdin/token"
    assert written["current_version"] == 1
    assert "value" not in written

    show = run(["secret", "show", "cli/stdin/token", "--json"], node.env())
    assert show.returncode == 0, show.stderr
    body = json.loads(show.stdout)
    assert body["sensitivity"] == "restricted"
    assert body["purposes"] == ["ci", "deploy"]
    assert body["destinations"] == ["github"]
    assert body["owner"] == "team-a"
    assert body["rotation_period_seconds"] == 86400
    assert [v["version"] for v in body["versions"]] == [1]
    assert "value" not in body
    assert all("value" not in v for v in body["versions"])

    human = run(["secret", "show", "cli/stdin/token"], node.env())
    assert human.returncode == 0, human.stderr
    assert "cli/stdin/token" in human.stdout
    assert "restricted" in human.stdout
    assert "Versions" in human.stdout


def test_put_from_file_then_rotate_adds_a_version(node: Node, tmp_path: Path) -> None:
    value_file = tmp_path / "value.txt"
    value_file.write_text(new_value() + "\n", encoding="utf-8")
    put = run(["secret", "put", "cli/file/token", "--from-file", str(value_file)], node.env())
    assert put.returncode == 0, put.stderr
    assert "cli/file/token" in put.stdout
    assert "version 1" in put.stdout

    rotate = run(["secret", "rotate", "cli/file/token", "--stdin", "--json"], node.env(), stdin=new_value())
    assert rotate.returncode == 0, rotate.stderr
    assert json.loads(rotate.stdout)["current_version"] == 2

    human = run(["secret", "rotate", "cli/file/token", "--from-file", str(value_file)], node.env())
    assert human.returncode == 0, human.stderr
    assert "version 3" in human.stdout

    show = run(["secret", "show", "cli/file/token", "--json"], node.env())
    assert [v["version"] for v in json.loads(show.stdout)["versions"]] == [1, 2, 3]


def test_rotate_of_a_missing_secret_is_one_line_404(node: Node) -> None:
    result = run(["secret", "rotate", "cli/missing", "--stdin"], node.env(), stdin=new_value())
    assert_error(result, 1, "does not exist", "404")


def test_list_json_shape_pages_and_all(node: Node) -> None:
    for name in ("a", "b", "c"):
        result = run(["secret", "put", f"cli/list/{name}", "--stdin"], node.env(), stdin=new_value())
        assert result.returncode == 0, result.stderr

    page = run(["secret", "list", "cli/list/", "--limit", "2", "--json"], node.env())
    assert page.returncode == 0, page.stderr
    body = json.loads(page.stdout)
    assert set(body) == {"secrets", "next_after"}
    assert [s["path"] for s in body["secrets"]] == ["cli/list/a", "cli/list/b"]
    assert body["next_after"] == "cli/list/b"
    assert {"path", "sensitivity", "purposes", "destinations", "current_version"} <= set(body["secrets"][0])

    every = run(["secret", "list", "cli/list/", "--limit", "2", "--all", "--json"], node.env())
    body = json.loads(every.stdout)
    assert [s["path"] for s in body["secrets"]] == ["cli/list/a", "cli/list/b", "cli/list/c"]
    assert body["next_after"] is None

    human = run(["secret", "list", "cli/list/", "--limit", "2"], node.env())
    assert human.returncode == 0, human.stderr
    assert "cli/list/a" in human.stdout
    assert "cli/list/c" not in human.stdout
    assert "--all" in human.stdout


def test_delete_asks_for_confirmation_then_deletes(node: Node) -> None:
    assert run(["secret", "put", "cli/delete/me", "--stdin"], node.env(), stdin=new_value()).returncode == 0
    refused = run(["secret", "delete", "cli/delete/me"], node.env())
    assert_error(refused, 2, "--yes")
    assert run(["secret", "show", "cli/delete/me"], node.env()).returncode == 0

    deleted = run(["secret", "delete", "cli/delete/me", "--yes"], node.env())
    assert deleted.returncode == 0, deleted.stderr
    assert_error(run(["secret", "show", "cli/delete/me"], node.env()), 1, "does not exist")


def test_bad_path_is_refused_with_the_reason(node: Node) -> None:
    assert_error(run(["secret", "show", "a//b"], node.env()), 2, "invalid secret path", "empty segment")


# Paths an HTTP client would normalise (``a/../b`` -> ``b``) or that the server would refuse:
# the CLI must refuse every one itself, before any URL is built, and touch nothing.
TRAVERSAL_PATHS = [
    "junk/../cli/guarded/db",
    "nothing/../CLI/guarded/x",
    "../cli/guarded/db",
    "cli/guarded/db/..",
    "cli/./guarded/db",
    "./cli/guarded/db",
    "cli/guarded/db/.",
    "junk/%2e%2e/cli/guarded/db",
    "junk/%2E%2E/cli/guarded/db",
    "%2e%2e/cli/guarded/db",
    "junk/.%2e/cli/guarded/db",
    "cli//guarded/db",
    "/cli/guarded/db",
    "cli/guarded/db/",
    "cli/guarded%2fdb",
    "cli\\..\\guarded",
]


def _secret_state(node: Node) -> dict[str, int]:
    listed = run(["secret", "list", "--all", "--json"], node.env())
    assert listed.returncode == 0, listed.stderr
    return {s["path"]: s["current_version"] for s in json.loads(listed.stdout)["secrets"]}


@pytest.mark.parametrize("command", ["put", "rotate", "show", "delete"])
def test_dot_segments_encoded_dots_and_empty_segments_are_refused_and_change_nothing(
    node: Node, command: str
) -> None:
    for target in ("cli/guarded/db", "CLI/guarded/x"):
        if run(["secret", "show", target], node.env()).returncode != 0:
            put = run(["secret", "put", target, "--stdin"], node.env(), stdin=new_value())
            assert put.returncode == 0, put.stderr
    before = _secret_state(node)
    for path in TRAVERSAL_PATHS:
        if command in {"put", "rotate"}:
            result = run(["secret", command, path, "--stdin"], node.env(), stdin=new_value())
        elif command == "delete":
            result = run(["secret", "delete", path, "--yes"], node.env())
        else:
            result = run(["secret", "show", path, "--json"], node.env())
        assert_error(result, 2, "invalid secret path")
        assert result.stdout == "", (path, result.stdout)
    assert _secret_state(node) == before


def test_list_refuses_a_traversing_prefix_or_cursor(node: Node) -> None:
    assert_error(run(["secret", "list", "junk/../cli/"], node.env()), 2, "invalid secret prefix", "'..'")
    assert_error(run(["secret", "list", "--after", "a/../b"], node.env()), 2, "invalid secret path")


def test_operator_revoke_refuses_dot_segments(node: Node) -> None:
    for name in ("..", "."):
        assert_error(run(["operator", "revoke", name], node.env()), 2, "not a valid name or id")


def test_there_is_no_value_option_and_usage_errors_exit_2(node: Node) -> None:
    value = new_value()
    assert_error(run(["secret", "put", "cli/x", "--value", value], node.env()), 2, "--value")
    assert_error(run(["secret", "put", "cli/x"], node.env()), 2, "--stdin", "shell history")
    both = run(["secret", "put", "cli/x", "--stdin", "--from-file", "/dev/null"], node.env(), stdin="v")
    assert_error(both, 2, "not both")
    assert_error(run(["secret", "put", "cli/x", "--stdin"], node.env(), stdin=""), 1, "empty")
    assert_error(run(["secret", "list", "--limit", "0"], node.env()), 2, "--limit")
    help_text = run(["secret", "put", "--help"], node.env())
    assert help_text.returncode == 0
    assert "shell history" in help_text.stdout


# -- operators --------------------------------------------------------------------------


def test_operator_create_list_revoke_and_the_revoked_token_gets_401(node: Node) -> None:
    created = run(["operator", "create", "cli-writer", "--role", "secret-writer", "--json"], node.env())
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    assert body["name"] == "cli-writer"
    assert body["role"] == "secret-writer"
    writer = body["token"]

    whoami = run(["operator", "whoami", "--json"], node.env(writer))
    assert json.loads(whoami.stdout)["name"] == "cli-writer"
    human = run(["operator", "whoami"], node.env(writer))
    assert "cli-writer" in human.stdout
    assert "secret-writer" in human.stdout

    listed = run(["operator", "list", "--json"], node.env())
    names = {op["name"]: op for op in json.loads(listed.stdout)["operators"]}
    assert names["root"]["role"] == "admin"
    assert names["cli-writer"]["revoked_at"] is None
    assert all("token" not in op for op in names.values())
    assert "cli-writer" in run(["operator", "list"], node.env()).stdout

    revoked = run(["operator", "revoke", "cli-writer", "--json"], node.env())
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked_at"] is not None

    assert_error(run(["operator", "whoami"], node.env(writer)), 1, "401")
    assert_error(run(["secret", "list"], node.env(writer)), 1, "401")


def test_human_operator_create_prints_the_token_once(node: Node) -> None:
    created = run(["operator", "create", "cli-auditor", "--role", "auditor"], node.env())
    assert created.returncode == 0, created.stderr
    assert "tto_" in created.stdout
    assert "shown only once" in created.stdout


def test_a_secret_writer_writes_secrets_but_cannot_create_operators(node: Node) -> None:
    writer = operator(node, "cli-writer-2", "secret-writer")
    put = run(["secret", "put", "cli/writer/token", "--stdin", "--json"], node.env(writer), stdin=new_value())
    assert put.returncode == 0, put.stderr
    assert (json.loads(put.stdout)["path"], json.loads(put.stdout)["current_version"]) == (
        "cli/writer/token",
        1,
    )
    denied = run(["operator", "create", "sneaky", "--role", "admin"], node.env(writer))
    assert_error(denied, 1, "403")
    assert_error(run(["keys", "rotate"], node.env(writer)), 1, "403")


def test_unknown_role_is_a_usage_error(node: Node) -> None:
    assert_error(run(["operator", "create", "x", "--role", "root"], node.env()), 2, "--role")


# -- keys and sys -----------------------------------------------------------------------


def test_keys_rotate_then_status_shows_the_new_active_version(node: Node) -> None:
    before = json.loads(run(["keys", "status", "--json"], node.env()).stdout)
    rotated = run(["keys", "rotate", "--json"], node.env())
    assert rotated.returncode == 0, rotated.stderr
    result = json.loads(rotated.stdout)
    assert result["kek_version"] == before["active"] + 1
    assert result["rewrapped"] >= 0

    status = json.loads(run(["keys", "status", "--json"], node.env()).stdout)
    assert status["active"] == result["kek_version"]
    assert [k["version"] for k in status["versions"]][-1] == result["kek_version"]
    assert status["provider"] == "unsafe-dev"

    human = run(["keys", "rotate"], node.env())
    assert human.returncode == 0, human.stderr
    assert "rewrapped" in human.stdout
    assert f"v{result['kek_version'] + 1}" in run(["keys", "status"], node.env()).stdout


def test_health_needs_no_token(node: Node) -> None:
    result = run(["sys", "health", "--json"], clean_env(TETHER_ADDR=node.addr))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["status"] == "ok"
    assert body["sealed"] is False
    assert run(["sys", "health"], clean_env(TETHER_ADDR=node.addr)).stdout.startswith("ok")


def test_sealed_node_refuses_secret_reads_until_unsealed(node: Node, tmp_path: Path) -> None:
    assert run(["secret", "put", "cli/seal/token", "--stdin"], node.env(), stdin=new_value()).returncode == 0
    sealed = run(["sys", "seal", "--json"], node.env())
    try:
        assert sealed.returncode == 0, sealed.stderr
        assert json.loads(sealed.stdout) == {"sealed": True}
        assert_error(run(["secret", "show", "cli/seal/token"], node.env()), 1, "sealed")
        health = json.loads(run(["sys", "health", "--json"], node.env()).stdout)
        assert health["sealed"] is True

        wrong = tmp_path / "wrong.key"
        wrong.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
        assert_error(run(["sys", "unseal", "--root-key-file", str(wrong)], node.env()), 1)
        assert_error(run(["secret", "show", "cli/seal/token"], node.env()), 1, "sealed")

        key_file = node.data_dir / "dev-root.key"
        unsealed = run(["sys", "unseal", "--root-key-file", str(key_file)], node.env())
        assert unsealed.returncode == 0, unsealed.stderr
        assert "Unsealed" in unsealed.stdout
        assert run(["secret", "show", "cli/seal/token"], node.env()).returncode == 0

        assert run(["sys", "seal"], node.env()).returncode == 0
    finally:
        unseal = run(["sys", "unseal", "--json"], node.env())
    assert unseal.returncode == 0, unseal.stderr
    assert json.loads(unseal.stdout) == {"sealed": False}


# -- connection and configuration errors ------------------------------------------------


def test_missing_token_says_to_set_TETHER_TOKEN(node: Node) -> None:
    result = run(["secret", "list"], clean_env(TETHER_ADDR=node.addr))
    line = assert_error(result, 2, "TETHER_TOKEN")
    assert "set" in line


def test_server_down_is_one_line_naming_the_address(node: Node) -> None:
    addr = f"http://127.0.0.1:{free_port()}"
    line = assert_error(run(["secret", "list"], clean_env(TETHER_ADDR=addr, TETHER_TOKEN=node.token)), 1)
    assert addr in line
    assert node.token not in line


def test_bad_addr_is_a_usage_error(node: Node) -> None:
    assert_error(run(["secret", "list", "--addr", "127.0.0.1:8420"], node.env()), 2, "http")


def test_server_with_unreachable_postgres_exits_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text('database_url = "postgresql://postgres@127.0.0.1:1/x"\n')
    result = run(["server", "--data-dir", str(tmp_path), "--listen", f"127.0.0.1:{free_port()}"], clean_env())
    assert result.returncode != 0
    assert_error(result, 1, "unavailable")


def test_server_on_an_uninitialised_dir_exits_with_one_line(tmp_path: Path) -> None:
    result = run(["server", "--data-dir", str(tmp_path), "--listen", f"127.0.0.1:{free_port()}"], clean_env())
    assert_error(result, 1, "tether init")
    assert list(tmp_path.iterdir()) == []


def test_server_on_a_taken_port_exits_with_one_line(node: Node) -> None:
    result = run(
        ["server", "--data-dir", str(node.data_dir), "--listen", f"127.0.0.1:{node.port}"], clean_env()
    )
    assert_error(result, 1, "already in use")


def test_server_stops_quietly_on_ctrl_c(node: Node, tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    proc, _ = start_server(node.data_dir, log_path)
    assert stop(proc) == 0
    assert "Traceback" not in log_path.read_text(errors="replace")


def test_migrate_reports_the_revision(node: Node) -> None:
    result = run(["migrate", "--data-dir", str(node.data_dir), "--json"], clean_env())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"revision": head_revision(), "storage": "sqlite"}
    human = run(["migrate", "--data-dir", str(node.data_dir)], clean_env())
    assert head_revision() in human.stdout


def test_no_url_is_built_from_a_path_the_validator_refused() -> None:
    from tether.cli.client import secret_url, url_segment
    from tether.cli.output import CommandError

    for path in TRAVERSAL_PATHS:
        with pytest.raises(CommandError) as refused:
            secret_url(path)
        assert refused.value.exit_code == 2
    for name in ("", ".", ".."):
        with pytest.raises(CommandError):
            url_segment(name)
    url = httpx.Request("GET", "http://tether.test" + secret_url("prod/db.main", ":rotate")).url
    assert url.path == "/v1/secrets/prod/db.main:rotate"
    assert url_segment("a/b") == "a%2Fb"


def test_keys_rotate_signing_publishes_a_new_token_key(node: Node) -> None:
    rotated = run(["keys", "rotate-signing", "--json"], node.env())
    assert rotated.returncode == 0, rotated.stderr
    kid = json.loads(rotated.stdout)["kid"]
    jwks = httpx.get(node.env()["TETHER_ADDR"] + "/v1/auth/jwks", timeout=10).json()
    assert kid in {key["kid"] for key in jwks["keys"]}
