"""``tether scan PATH... | -``: find governed secret values (and ungoverned secrets) in files,
directories or stdin, through ``POST /v1/scan`` (operator role ``scanner`` or ``admin``).

The governed values never leave the server: this command sends the text, in parts of bounded
size, and prints where each finding is (``path:line``), the secret's path and its HMAC
fingerprint, never a value. Exit status 3 when something is found (for CI and pre-commit),
1 on an error, 0 when the text is clean.

Memory stays bounded: files are read a line at a time into parts of at most
:data:`PART_BYTES` (a longer line is sent in pieces that overlap by :data:`OVERLAP_BYTES`, so a
value that spans a cut is still found); binary files (a NUL byte in the first 8 KiB), unreadable
files and files over ``--max-file-bytes`` are skipped with a note.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any, Final

import typer
from rich.markup import escape

from tether.cli.client import DEFAULT_ADDR, APIError, OperatorClient
from tether.cli.common import Addr, Json, Token, client
from tether.cli.output import CommandError, out, print_json, print_warning

__all__ = ["EXIT_FOUND", "scan_command"]

#: Exit status when a scan found something.
EXIT_FOUND: Final = 3
#: A part of a file sent in one document (whole lines, unless a line is longer).
PART_BYTES: Final = 64 * 1024
#: Parts sent in one request, at most this many bytes of text in all (the server takes 1 MiB).
REQUEST_BYTES: Final = 256 * 1024
#: How much of a long line a part repeats from the previous one: the longest form (hex of a
#: value up to ~8 KiB) that can still be found across a cut.
OVERLAP_BYTES: Final = 16 * 1024
BINARY_SNIFF_BYTES: Final = 8192
DEFAULT_MAX_FILE_BYTES: Final = 1024**3
_SKIPPED_DIRS: Final = frozenset({".git", ".hg", ".svn"})
_RATE_LIMIT_RETRIES: Final = 30


def parts_of(
    stream: IO[bytes], part_bytes: int = PART_BYTES, overlap: int = OVERLAP_BYTES
) -> Iterator[tuple[int, bytes]]:
    """``(first line number, bytes)`` of each part of ``stream``: whole lines up to about
    ``part_bytes``; a longer line in pieces, each repeating the last ``overlap`` bytes of the one
    before. Holds at most ``2 * part_bytes + overlap`` bytes."""
    buffer = bytearray()
    buffer_line = 1
    line = 1
    while True:
        piece = stream.readline(part_bytes)
        if not piece:
            break
        if not buffer:
            buffer_line = line
        buffer += piece
        if piece.endswith(b"\n"):
            line += 1
            if len(buffer) >= part_bytes:
                yield buffer_line, bytes(buffer)
                buffer.clear()
        elif len(buffer) >= part_bytes:
            yield buffer_line, bytes(buffer)
            unfinished = buffer[buffer.rfind(b"\n") + 1 :]
            tail = bytes(unfinished[-overlap:]) if overlap else b""
            buffer.clear()
            buffer += tail
            buffer_line = line
    if buffer:
        yield buffer_line, bytes(buffer)


@dataclass
class _Run:
    api: OperatorClient
    ungoverned: bool
    findings: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seen: set[tuple[Any, ...]] = field(default_factory=set)
    batch: list[dict[str, Any]] = field(default_factory=list)
    batch_bytes: int = 0
    files: int = 0
    scanned_bytes: int = 0

    def add(self, name: str, first_line: int, data: bytes) -> None:
        if self.batch and self.batch_bytes + len(data) > REQUEST_BYTES:
            self.flush()
        self.batch.append({"name": name, "text": data.decode("utf-8", "replace"), "first_line": first_line})
        self.batch_bytes += len(data)
        self.scanned_bytes += len(data)

    def flush(self) -> None:
        if not self.batch:
            return
        body = {"documents": self.batch, "ungoverned": self.ungoverned}
        result = self._post(body)
        self.batch, self.batch_bytes = [], 0
        for document in result["documents"]:
            if document.get("truncated"):
                self.notes.append(f"{document['name']}: too many findings; only the first were reported")
            for finding in document["findings"]:
                key = (
                    document["name"],
                    finding["line"],
                    finding["kind"],
                    finding.get("secret"),
                    finding.get("type"),
                )
                if key in self.seen:  # found again in the overlap of a long line's pieces
                    continue
                self.seen.add(key)
                self.findings.append({"file": document["name"], **finding})

    def _post(self, body: dict[str, Any]) -> Any:
        for _ in range(_RATE_LIMIT_RETRIES):
            try:
                return self.api.post("/v1/scan", json=body, timeout=120.0)
            except APIError as exc:
                if exc.status != 429:
                    raise
                print_warning("scan rate limit reached; waiting 5 seconds")
                time.sleep(5)
        raise CommandError("the scan rate limit was still reached after several minutes; try again later")

    def scan_stream(self, name: str, stream: IO[bytes]) -> None:
        self.files += 1
        for first_line, data in parts_of(stream):
            self.add(name, first_line, data)

    def scan_file(self, path: Path, max_file_bytes: int) -> None:
        name = str(path)
        try:
            size = path.stat().st_size
            if size > max_file_bytes:
                self.notes.append(f"{name}: skipped, {size} bytes is over --max-file-bytes {max_file_bytes}")
                return
            with path.open("rb") as stream:
                if b"\0" in stream.peek(BINARY_SNIFF_BYTES)[:BINARY_SNIFF_BYTES]:
                    self.notes.append(f"{name}: skipped, binary")
                    return
                self.scan_stream(name, stream)
        except OSError as exc:
            self.notes.append(f"{name}: skipped, unreadable ({exc.strerror or type(exc).__name__})")

    def scan_path(self, path: Path, max_file_bytes: int) -> None:
        if path.is_symlink() and path.is_dir():
            self.notes.append(f"{path}: skipped, a symbolic link to a directory")
        elif path.is_dir():
            for root, dirs, names in os.walk(
                path, onerror=lambda e: self.notes.append(f"{e.filename}: skipped, unreadable")
            ):
                dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
                for file_name in sorted(names):
                    file_path = Path(root, file_name)
                    if file_path.is_file():
                        self.scan_file(file_path, max_file_bytes)
        elif path.exists():
            if path.is_file():
                self.scan_file(path, max_file_bytes)
            else:
                self.notes.append(f"{path}: skipped, not a regular file")
        else:
            raise CommandError(f"{path}: no such file or directory", 2)


def scan_command(
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="PATH...", help="Files or directories to scan; '-' reads stdin.", show_default=False
        ),
    ],
    ungoverned: Annotated[
        bool,
        typer.Option(
            "--ungoverned/--no-ungoverned",
            help="Also report secrets Tether does not govern (detect-secrets).",
        ),
    ] = True,
    max_file_bytes: Annotated[
        int, typer.Option("--max-file-bytes", min=1, help="Skip (with a note) files larger than this.")
    ] = DEFAULT_MAX_FILE_BYTES,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Find governed secret values and ungoverned secrets in files, directories or stdin (scanner or admin).

    Governed values are found in plain, base64, hex and URL-encoded forms; each finding names
    path:line, the secret's path and fingerprint, never a value. Exit status 3 when something is
    found, 1 on an error."""
    if not paths:
        raise CommandError("name at least one PATH, or '-' for stdin", 2)
    with client(addr, token) as api:
        run = _Run(api, ungoverned)
        for name in paths:
            if name == "-":
                run.scan_stream("-", sys.stdin.buffer)
            else:
                run.scan_path(Path(name), max_file_bytes)
        run.flush()
    found = bool(run.findings)
    if json_output:
        print_json(
            {
                "found": found,
                "findings": run.findings,
                "notes": run.notes,
                "files": run.files,
                "scanned_bytes": run.scanned_bytes,
            }
        )
    else:
        _print_people(run)
    if found:
        raise typer.Exit(EXIT_FOUND)


def _print_people(run: _Run) -> None:
    # One line per finding, path:line first (as compilers and grep print it: editors jump there).
    for f in run.findings:
        if f["kind"] == "governed":
            what = f"governed secret {f['secret']} ({f['encoding']}, {f['fingerprint']})"
        else:
            what = f"ungoverned {f['type']}"
        out.print(escape(f"{f['file']}:{f['line']}: {what}"))
    for note in run.notes:
        out.print(escape(f"note: {note}"))
    governed = sum(1 for f in run.findings if f["kind"] == "governed")
    ungoverned = len(run.findings) - governed
    out.print(
        f"{governed} governed and {ungoverned} ungoverned finding(s) in {run.files} file(s), "
        f"{run.scanned_bytes} bytes."
    )
    if governed:
        out.print("Governed secrets outside Tether: remove them and rotate them (tether secret rotate).")
    if ungoverned:
        out.print(
            "Ungoverned secrets: put them in Tether (tether secret put), remove them here, rotate them."
        )
