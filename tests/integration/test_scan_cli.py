"""``tether scan`` against a real server over HTTP, on real files: governed values found in
files, directories and stdin, in their encodings, by path:line, secret path and fingerprint;
ungoverned secrets named; binary, oversized and unreadable files skipped with a note; exit 3
when something is found, 0 when clean; never a value on stdout, stderr or in the server log."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

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
from tether.cli.scan import EXIT_FOUND, PART_BYTES


@pytest.fixture(scope="module")
def scan_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, dict[str, str], str]]:
    base = tmp_path_factory.mktemp("cli-scan")
    with running_node(base, forbidden=SECRET_VALUES) as node:
        values = {"prod/db/password": new_value() + "/+", "prod/github/token": new_value()}
        for path, value in values.items():
            put = run(["secret", "put", path, "--stdin"], node.env(), stdin=value)
            assert put.returncode == 0, put.stderr
        yield node, values, operator(node, "ci-scanner", "scanner")


def _tree(root: Path, values: dict[str, str]) -> Path:
    db, gh = values["prod/db/password"], values["prod/github/token"]
    (root / "app").mkdir(parents=True)
    (root / "app" / ".env").write_text(f"# local settings\nDB_PASSWORD={db}\n")
    (root / "app" / "settings.yaml").write_text(
        f"github:\n  auth: {base64.b64encode(gh.encode()).decode()}\n"
    )
    (root / "logs").mkdir()
    (root / "logs" / "ci.log").write_text(f"step 1\nstep 2\nconnect postgres://app:{quote(db, safe='')}@db\n")
    (root / "memory.json").write_text(json.dumps({"notes": ["x", gh.encode().hex()]}, indent=1))
    (root / "clean.txt").write_text("nothing here\n")
    (root / "image.bin").write_bytes(b"\x89PNG\0\0" + db.encode())
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text(db)  # not scanned
    return root


def test_a_directory_scan_finds_every_governed_value_by_path_line_and_fingerprint(
    scan_node: tuple[Node, dict[str, str], str], tmp_path: Path
) -> None:
    node, values, token = scan_node
    root = _tree(tmp_path / "repo", values)
    result = run(["scan", str(root), "--json"], node.env(token))
    assert result.returncode == EXIT_FOUND, result.stderr
    body = json.loads(result.stdout)
    assert body["found"] is True
    found = sorted(
        (
            Path(f["file"]).relative_to(root).as_posix(),
            f["line"],
            f["kind"],
            f.get("secret"),
            f.get("encoding"),
        )
        for f in body["findings"]
    )
    assert found == [
        ("app/.env", 2, "governed", "prod/db/password", "plain"),
        ("app/settings.yaml", 2, "governed", "prod/github/token", "base64"),
        ("logs/ci.log", 3, "governed", "prod/db/password", "url"),
        ("memory.json", 4, "governed", "prod/github/token", "hex"),
    ]
    assert all(f["fingerprint"].startswith("hmac-sha256:") for f in body["findings"])
    assert body["notes"] == [f"{root / 'image.bin'}: skipped, binary"]
    assert body["files"] == 5  # .git is not scanned; the binary file is skipped

    table = run(["scan", str(root)], node.env(token))
    assert table.returncode == EXIT_FOUND
    assert f"{root / 'app' / '.env'}:2: governed secret prod/db/password (plain, hmac-sha256:" in table.stdout
    assert "4 governed and 0 ungoverned finding(s) in 5 file(s)" in table.stdout


def test_stdin_and_clean_files(scan_node: tuple[Node, dict[str, str], str], tmp_path: Path) -> None:
    node, values, token = scan_node
    piped = run(
        ["scan", "-", "--json"], node.env(token), stdin=f"prompt: use {values['prod/github/token']}\n"
    )
    assert piped.returncode == EXIT_FOUND, piped.stderr
    (finding,) = json.loads(piped.stdout)["findings"]
    assert (finding["file"], finding["line"], finding["secret"]) == ("-", 1, "prod/github/token")

    clean = tmp_path / "clean.md"
    clean.write_text("# Nothing secret\n\nJust prose.\n")
    ok = run(["scan", str(clean)], node.env(token))
    assert ok.returncode == 0, ok.stderr
    assert "0 governed and 0 ungoverned finding(s) in 1 file(s)" in ok.stdout


def test_ungoverned_secrets_are_reported_with_a_suggestion(
    scan_node: tuple[Node, dict[str, str], str], tmp_path: Path
) -> None:
    node, _, token = scan_node
    config = tmp_path / "deploy.env"
    config.write_text("REGION=eu\nAWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n")
    result = run(["scan", str(config), "--json"], node.env(token))
    assert result.returncode == EXIT_FOUND, result.stderr
    (finding,) = json.loads(result.stdout)["findings"]
    assert (finding["line"], finding["kind"], finding["type"]) == (2, "ungoverned", "AWS Access Key")
    assert "put it in Tether" in finding["suggestion"]
    assert "AKIAIOSFODNN7EXAMPLE" not in result.stdout
    off = run(["scan", str(config), "--no-ungoverned"], node.env(token))
    assert off.returncode == 0, off.stdout


def test_a_large_file_with_a_value_on_a_long_line_is_streamed_in_parts(
    scan_node: tuple[Node, dict[str, str], str], tmp_path: Path
) -> None:
    node, values, token = scan_node
    big = tmp_path / "big.log"
    with big.open("w") as out:
        for i in range(20_000):  # ~1.3 MB of lines: several requests
            out.write(f"2026-01-01 line {i} ok ok ok ok ok ok ok ok\n")
        # one long line whose value straddles the first part boundary
        out.write("x" * (PART_BYTES - 10) + values["prod/db/password"] + "y" * PART_BYTES + "\n")
        out.write("tail\n")
    result = run(["scan", str(big), "--json", "--no-ungoverned"], node.env(token))
    assert result.returncode == EXIT_FOUND, result.stderr
    findings = json.loads(result.stdout)["findings"]
    assert [(f["line"], f["secret"]) for f in findings] == [(20_001, "prod/db/password")]


def test_oversized_and_unreadable_files_are_skipped_with_a_note(
    scan_node: tuple[Node, dict[str, str], str], tmp_path: Path
) -> None:
    node, values, token = scan_node
    large = tmp_path / "large.txt"
    large.write_text(values["prod/db/password"] * 10)
    result = run(["scan", str(large), "--max-file-bytes", "16", "--json"], node.env(token))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["notes"] == [
        f"{large}: skipped, {large.stat().st_size} bytes is over --max-file-bytes 16"
    ]
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.txt"
        locked.write_text("x")
        locked.chmod(0)
        result = run(["scan", str(locked), "--json"], node.env(token))
        assert result.returncode == 0
        assert "unreadable" in json.loads(result.stdout)["notes"][0]


def test_bad_input_and_other_roles_get_one_error_line(
    scan_node: tuple[Node, dict[str, str], str], tmp_path: Path
) -> None:
    node, _, _ = scan_node
    missing = run(["scan", str(tmp_path / "nope")], node.env())
    assert_error(missing, 2, "no such file or directory")
    auditor = operator(node, "scan-auditor", "auditor")
    (tmp_path / "a.txt").write_text("hello\n")
    refused = run(["scan", str(tmp_path / "a.txt")], node.env(auditor))
    assert_error(refused, 1, "scan.run")
