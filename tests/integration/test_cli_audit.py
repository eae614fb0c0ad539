"""``tether audit`` against a real server in a subprocess: query, hash, verify (live and
offline), export, checkpoints, tail, tampering with an export, and who may read the log."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_cli import (
    SECRET_VALUES,
    TETHER,
    Node,
    assert_error,
    clean_env,
    new_value,
    run,
    running_node,
)


@pytest.fixture(scope="module")
def audit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A node with some history: secret writes, an operator, a seal and an unseal."""
    with running_node(tmp_path_factory.mktemp("cli-audit"), forbidden=SECRET_VALUES) as node:
        for path in ("audit/one", "audit/two", "audit/three"):
            put = run(["secret", "put", path, "--stdin"], node.env(), stdin=new_value())
            assert put.returncode == 0, put.stderr
        created = run(["operator", "create", "audit-bystander", "--role", "approver"], node.env())
        assert created.returncode == 0, created.stderr
        assert run(["sys", "seal"], node.env()).returncode == 0
        assert run(["sys", "unseal"], node.env()).returncode == 0
        yield node


def token_for(node: Node, name: str, role: str) -> str:
    result = run(["operator", "create", name, "--role", role, "--json"], node.env())
    assert result.returncode == 0, result.stderr
    token: str = json.loads(result.stdout)["token"]
    return token


def query(node: Node, *args: str, token: str | None = None) -> dict[str, Any]:
    result = run(["audit", "query", *args, "--json"], node.env(token))
    assert result.returncode == 0, result.stderr
    page: dict[str, Any] = json.loads(result.stdout)
    return page


def export(node: Node, path: Path) -> list[str]:
    result = run(["audit", "export", "--jsonl", "-o", str(path)], node.env())
    assert result.returncode == 0, result.stderr
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert f"Exported {len(lines)} event(s)" in result.stderr
    return lines


def verify_file(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # Offline: no TETHER_ADDR and no token, so nothing can be fetched from a server.
    return run(["audit", "verify", "--file", str(path), *extra], clean_env())


def verdict(path: Path, *extra: str) -> dict[str, Any]:
    result = run(["audit", "verify", "--file", str(path), *extra, "--json"], clean_env())
    found: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == (0 if found["ok"] else 1), (result.returncode, found)
    return found


# -- query and hash ---------------------------------------------------------------------


def test_secret_write_is_recorded_with_the_fingerprint_of_its_value_never_the_value(
    audit_node: Node,
) -> None:
    value = new_value()
    put = run(["secret", "put", "audit/fingerprinted", "--stdin"], audit_node.env(), stdin=value + "\n")
    assert put.returncode == 0, put.stderr

    page = query(audit_node, "--kind", "secret.write", "--secret", "audit/fingerprinted")
    assert len(page["events"]) == 1
    event = page["events"][0]
    assert event["kind"] == "secret.write"
    assert event["resource"] == "secret:audit/fingerprinted"
    assert event["actor"] == {"type": "operator", "id": "root"}
    assert value not in json.dumps(page)

    hashed = run(["audit", "hash", "--stdin"], audit_node.env(), stdin=value + "\n")
    assert hashed.returncode == 0, hashed.stderr
    fingerprint = hashed.stdout.strip()
    assert fingerprint.startswith("hmac-sha256:")
    assert hashed.stdout == fingerprint + "\n"
    assert event["data"]["value"] == fingerprint

    as_json = run(["audit", "hash", "--stdin", "--json"], audit_node.env(), stdin=value)
    assert json.loads(as_json.stdout) == {"fingerprint": fingerprint}

    # Finding the uses of a known value: every secret.* event carrying the fingerprint.
    everything = query(audit_node, "--kind", "secret.*", "--all")
    carrying = [e["seq"] for e in everything["events"] if fingerprint in json.dumps(e)]
    assert carrying == [event["seq"]]


def test_hash_takes_a_value_argument_but_says_to_prefer_stdin(audit_node: Node) -> None:
    by_argument = run(["audit", "hash", "not-a-secret"], audit_node.env())
    by_stdin = run(["audit", "hash", "--stdin"], audit_node.env(), stdin="not-a-secret")
    assert by_argument.returncode == 0, by_argument.stderr
    assert by_argument.stdout == by_stdin.stdout
    assert_error(run(["audit", "hash", "x", "--stdin"], audit_node.env(), stdin="y"), 2, "either")
    assert_error(run(["audit", "hash"], audit_node.env()), 2, "--stdin")
    help_text = run(["audit", "hash", "--help"], audit_node.env())
    assert "Prefer" in help_text.stdout
    assert "--stdin" in help_text.stdout


def test_admin_actions_are_queryable_by_kind_and_actor(audit_node: Node) -> None:
    kinds = [e["kind"] for e in query(audit_node, "--all")["events"]]
    for kind in ("sys.init", "operator.create", "secret.write", "sys.seal", "sys.unseal"):
        assert kind in kinds, kinds
    assert kinds.index("sys.seal") < kinds.index("sys.unseal")

    sys_events = query(audit_node, "--kind", "sys.*")["events"]
    assert {e["kind"] for e in sys_events} >= {"sys.init", "sys.seal", "sys.unseal"}
    assert all(e["kind"].startswith("sys.") for e in sys_events)

    created = query(audit_node, "--kind", "operator.create", "--resource", "operator:audit-bystander")
    assert [e["actor"]["id"] for e in created["events"]] == ["root"]

    by_root = query(audit_node, "--actor", "root", "--all")["events"]
    assert by_root
    assert all(e["actor"]["id"] == "root" for e in by_root)


def test_query_pages_with_limit_after_and_all(audit_node: Node) -> None:
    everything = query(audit_node, "--all", "--limit", "2")["events"]
    seqs = [e["seq"] for e in everything]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) >= 8

    first = query(audit_node, "--limit", "2")
    assert [e["seq"] for e in first["events"]] == [1, 2]
    assert first["next_after"] == 2
    second = query(audit_node, "--limit", "2", "--after", "2")
    assert [e["seq"] for e in second["events"]] == [3, 4]

    since_future = query(audit_node, "--since", "2999-01-01T00:00:00Z")
    assert since_future["events"] == []
    assert query(audit_node, "--until", "2000-01-01")["events"] == []


def test_query_for_people_is_a_table(audit_node: Node) -> None:
    result = run(["audit", "query", "--kind", "secret.write", "--limit", "1"], audit_node.env())
    assert result.returncode == 0, result.stderr
    for column in ("SEQ", "TIME", "KIND", "ACTOR", "RESOURCE", "DECISION"):
        assert column in result.stdout
    assert "secret.write" in result.stdout
    assert "operator:root" in result.stdout
    assert "More events follow" in result.stdout


def test_query_usage_errors(audit_node: Node) -> None:
    env = audit_node.env()
    assert_error(run(["audit", "query", "--since", "yesterday"], env), 2, "--since", "ISO 8601")
    assert_error(run(["audit", "query", "--secret", "a/../b"], env), 2, "invalid secret path")
    assert_error(run(["audit", "query", "--secret", "a", "--resource", "b"], env), 2, "not both")
    assert_error(run(["audit", "query", "--limit", "0"], env), 2, "--limit")


# -- who may read the log ---------------------------------------------------------------


def test_an_auditor_can_read_the_log_and_a_secret_writer_gets_one_line_403(audit_node: Node) -> None:
    auditor = token_for(audit_node, "audit-reader", "auditor")
    writer = token_for(audit_node, "audit-writer", "secret-writer")

    assert query(audit_node, "--kind", "secret.write", token=auditor)["events"]
    verified = run(["audit", "verify"], audit_node.env(auditor))
    assert verified.returncode == 0, verified.stderr

    for args in (
        ["audit", "query"],
        ["audit", "verify"],
        ["audit", "tail"],
        ["audit", "export", "--jsonl"],
        ["audit", "checkpoint"],
    ):
        result = run(args, audit_node.env(writer))
        assert_error(result, 1, "403")
        assert result.stdout == "", args
    assert_error(run(["audit", "hash", "--stdin"], audit_node.env(writer), stdin="x"), 1, "403")

    # The refusal itself is on the record.
    denied = query(audit_node, "--actor", "audit-writer", "--denied", "--all", token=auditor)["events"]
    assert denied, "a denied audit read was not recorded"
    assert all(e["decision"]["allowed"] is False for e in denied)


# -- verify, export, checkpoints ----------------------------------------------------------


def test_live_verify_is_ok(audit_node: Node) -> None:
    result = run(["audit", "verify"], audit_node.env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")
    as_json = json.loads(run(["audit", "verify", "--json"], audit_node.env()).stdout)
    assert as_json["ok"] is True
    assert as_json["first_bad_seq"] is None
    assert as_json["head_seq"] >= 8


def test_export_verifies_offline_and_against_a_kept_checkpoint(audit_node: Node, tmp_path: Path) -> None:
    cp_file = tmp_path / "cp.json"
    made = run(["audit", "checkpoint", "-o", str(cp_file)], audit_node.env())
    assert made.returncode == 0, made.stderr
    assert "outside Tether" in made.stderr
    assert stat.S_IMODE(cp_file.stat().st_mode) == 0o644
    checkpoint = json.loads(cp_file.read_text())
    assert {"seq", "head_hash", "signature", "public_key", "key_id"} <= set(checkpoint)

    export_file = tmp_path / "export.jsonl"
    lines = export(audit_node, export_file)
    assert len(lines) >= checkpoint["seq"]
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, len(lines) + 1))

    plain = verify_file(export_file)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert plain.stdout.startswith(f"ok: {len(lines)} events verified")
    with_cp = verify_file(export_file, "--checkpoint", str(cp_file))
    assert with_cp.returncode == 0, with_cp.stdout + with_cp.stderr
    assert verdict(export_file, "--checkpoint", str(cp_file))["checkpoints"] == 1

    # Export to stdout is the same stream; the count goes to stderr.
    to_stdout = run(["audit", "export", "--jsonl"], audit_node.env())
    assert to_stdout.returncode == 0, to_stdout.stderr
    assert to_stdout.stdout.splitlines(keepends=True)[: len(lines)] == lines
    assert "event(s)" in to_stdout.stderr
    # Checkpoint to stdout is the JSON alone.
    cp_stdout = run(["audit", "checkpoint"], audit_node.env())
    assert json.loads(cp_stdout.stdout)["seq"] >= checkpoint["seq"]


@pytest.fixture(scope="module")
def exported(audit_node: Node, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """A verified export of the module's node, and a checkpoint kept at its head."""
    base = tmp_path_factory.mktemp("tamper")
    cp_file = base / "cp.json"
    assert run(["audit", "checkpoint", "-o", str(cp_file)], audit_node.env()).returncode == 0
    lines = export(audit_node, base / "export.jsonl")
    assert len(lines) >= 8
    return lines, cp_file


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(lines), encoding="utf-8")
    return path


def assert_broken(path: Path, problem: str, seq: int, *extra: str) -> None:
    found = verdict(path, *extra)
    assert found["ok"] is False
    assert (found["problem"], found["first_bad_seq"]) == (problem, seq), found
    human = verify_file(path, *extra)
    assert human.returncode == 1
    assert f"{problem} at seq {seq}" in human.stdout
    assert "first bad seq" in human.stdout


def test_a_modified_middle_line_is_reported_modified_at_its_seq(
    exported: tuple[list[str], Path], tmp_path: Path
) -> None:
    lines, _ = exported
    k = len(lines) // 2
    record = json.loads(lines[k - 1])
    record["resource"] = "secret:somewhere/else"
    tampered = [*lines[: k - 1], json.dumps(record) + "\n", *lines[k:]]
    assert_broken(write_lines(tmp_path / "modified.jsonl", tampered), "modified", k)


def test_a_deleted_line_is_reported_missing_at_its_seq(
    exported: tuple[list[str], Path], tmp_path: Path
) -> None:
    lines, _ = exported
    k = len(lines) // 2
    tampered = lines[: k - 1] + lines[k:]
    assert_broken(write_lines(tmp_path / "deleted.jsonl", tampered), "missing", k)


def test_two_swapped_lines_are_reported_reordered(exported: tuple[list[str], Path], tmp_path: Path) -> None:
    lines, _ = exported
    k = len(lines) // 2
    tampered = list(lines)
    tampered[k - 1], tampered[k] = tampered[k], tampered[k - 1]
    assert_broken(write_lines(tmp_path / "swapped.jsonl", tampered), "reordered", k)


def test_a_duplicated_line_is_reported_inserted(exported: tuple[list[str], Path], tmp_path: Path) -> None:
    lines, _ = exported
    k = len(lines) // 2
    tampered = [*lines[:k], lines[k - 1], *lines[k:]]
    assert_broken(write_lines(tmp_path / "inserted.jsonl", tampered), "inserted", k + 1)


def test_truncation_before_the_checkpoint_is_reported_truncated(
    exported: tuple[list[str], Path], tmp_path: Path
) -> None:
    lines, cp_file = exported
    cp_seq = json.loads(cp_file.read_text())["seq"]
    keep = cp_seq - 3
    short = write_lines(tmp_path / "short.jsonl", lines[:keep])
    # Alone, a truncated chain still verifies: only the kept checkpoint shows it.
    assert verdict(short)["ok"] is True
    assert_broken(short, "truncated", keep + 1, "--checkpoint", str(cp_file))


def test_a_tampered_checkpoint_is_a_bad_signature(exported: tuple[list[str], Path], tmp_path: Path) -> None:
    lines, cp_file = exported
    checkpoint = json.loads(cp_file.read_text())
    checkpoint["seq"] -= 1
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(checkpoint))
    export_file = write_lines(tmp_path / "export.jsonl", lines)
    assert_broken(export_file, "bad_signature", checkpoint["seq"], "--checkpoint", str(forged))


def test_offline_verify_of_unreadable_or_malformed_input_is_one_line(tmp_path: Path) -> None:
    assert_error(verify_file(tmp_path / "absent.jsonl"), 1, "cannot read", "absent.jsonl")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("this is not an audit export\n")
    assert_error(verify_file(garbage), 1, "not a well-formed audit export", "malformed")
    not_a_cp = tmp_path / "cp.json"
    not_a_cp.write_text("{}")
    empty = write_lines(tmp_path / "empty.jsonl", [])
    assert_error(verify_file(empty, "--checkpoint", str(not_a_cp)), 1, "checkpoint", "not usable")
    assert_error(
        run(["audit", "verify", "--checkpoint", str(not_a_cp)], clean_env()), 2, "--checkpoint needs --file"
    )


# -- tail -------------------------------------------------------------------------------


def test_tail_shows_the_last_n_events(audit_node: Node) -> None:
    head = query(audit_node, "--all")["events"][-1]["seq"]
    result = run(["audit", "tail", "-n", "3", "--json"], audit_node.env())
    assert result.returncode == 0, result.stderr
    seqs = [json.loads(line)["seq"] for line in result.stdout.splitlines()]
    assert seqs[-1] >= head
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    people = run(["audit", "tail", "-n", "2"], audit_node.env())
    assert people.returncode == 0, people.stderr
    assert "SEQ" in people.stdout


def _holds_a_socket(pid: int) -> bool:
    """The process has a socket open (the CLI's connection to the node: its first read is done
    or under way). Linux ``/proc``."""
    fds = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        return any(os.readlink(fd).startswith("socket:") for fd in fds.iterdir())
    return False


@contextlib.contextmanager
def _signals_as_from_a_shell() -> Iterator[None]:
    """While a child is started: SIGINT unblocked and handled here, so the child starts with it
    unblocked and at its default, as a shell starts a command. A test process's signal state is
    not a user's shell's: in a parallel run something earlier in the same worker can leave SIGINT
    blocked or ignored, which the child would inherit (Ctrl-C would never reach it)."""
    mask = signal.pthread_sigmask(signal.SIG_SETMASK, [])
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def test_tail_follow_prints_new_events_and_ctrl_c_exits_0(audit_node: Node) -> None:
    with _signals_as_from_a_shell():
        proc = subprocess.Popen(
            [*TETHER, "audit", "tail", "-n", "0", "--follow", "--json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=audit_node.env(),
        )
    stdout_pipe, stderr_pipe = proc.stdout, proc.stderr
    assert stdout_pipe is not None
    assert stderr_pipe is not None
    lines: queue.Queue[str] = queue.Queue()
    errors: list[str] = []

    def read_lines() -> None:
        for line in stdout_pipe:
            lines.put(line)

    readers = [
        threading.Thread(target=read_lines, daemon=True),
        threading.Thread(target=lambda: errors.append(stderr_pipe.read()), daemon=True),
    ]
    for reader in readers:
        reader.start()
    printed: list[str] = []
    try:
        # Started (however slowly a loaded machine starts a process), then read to the end once.
        deadline = time.monotonic() + 60
        while not _holds_a_socket(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        put = run(["secret", "put", "audit/followed", "--stdin"], audit_node.env(), stdin=new_value())
        assert put.returncode == 0, put.stderr
        deadline = time.monotonic() + 60  # it polls every second
        while not any("audit/followed" in line for line in printed) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                printed.append(lines.get(timeout=0.2))
        time.sleep(1.5)  # one more poll: nothing else may follow
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            state = [
                line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if "Sig" in line
            ]
            raise AssertionError(f"Ctrl-C did not end `tether audit tail`: {state}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for reader in readers:
            reader.join(timeout=10)
        stdout_pipe.close()
        stderr_pipe.close()
    while not lines.empty():
        printed.append(lines.get())
    stdout, stderr = "".join(printed), "".join(errors)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [e["resource"] for e in events if e["kind"] == "secret.write"] == ["secret:audit/followed"]
    for value in SECRET_VALUES:
        assert value not in stdout
