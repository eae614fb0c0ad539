"""Fenced code blocks of the Markdown docs, and how the docs check runs each (pure: no I/O).

A block is run when its fence says ``sh``, ``bash``, ``console`` or ``python``. An HTML comment on
the last non-blank line before the fence changes that:

- ``<!-- docs-check: skip (why) -->``: not run; the reason is required and is listed by the check.
- ``<!-- docs-check: expect-fail -->``: the block must fail (shell: exit non-zero; Python: raise), as
  documented error examples do. ``expect-fail (TEXT)``: and its output must contain TEXT (an exception
  name, an error message), so that it cannot pass by failing for another reason.

Inside a shell block, a command whose trailing comment starts with ``error`` (``tether secret show x
# error: Tether is sealed ... (HTTP 503)``) is documented to fail, so the check asserts that it fails,
with the text shown (each part between elisions, whitespace collapsed), and goes on. In a ``console``
block, the lines starting with ``$ `` are the commands; a command whose shown output starts with
``error:`` must fail with that text, every other must succeed (other output is not compared: it holds
ids, times and hashes).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RUNNABLE",
    "Block",
    "MarkerError",
    "blocks_of",
    "console_script",
    "shell_script",
]

SHELL = frozenset({"sh", "bash", "shell"})
RUNNABLE = SHELL | {"console", "python"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")
_MARKER = re.compile(r"^\s*<!--\s*docs-check:\s*(?P<body>.*?)\s*-->\s*$")
_MARKER_BODY = re.compile(r"^(?P<kind>skip|expect-fail)\s*(?:\((?P<reason>.*)\))?$")
_ERROR_COMMENT = re.compile(r"^(?P<command>.*\S)\s+#\s*(?P<shown>error\b.*)$")
_ELISION = re.compile(r"\.\.\.|…")


class MarkerError(ValueError):
    """A ``docs-check`` comment that is malformed or not right before a runnable block."""


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced block: where it is, its language, its text and what the check does with it."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    action: str = "run"  # "run", "skip" or "expect-fail"
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def first_code_line(self) -> int:
        return self.line + 1


def _marker(line: str, path: Path, number: int) -> tuple[str, str] | None:
    match = _MARKER.match(line)
    if match is None:
        return None
    body = _MARKER_BODY.match(match["body"])
    if body is None:
        raise MarkerError(
            f"{path.name}:{number}: unknown docs-check comment {match['body']!r} "
            "(use 'skip (reason)' or 'expect-fail')"
        )
    reason = (body["reason"] or "").strip()
    if body["kind"] == "skip" and not reason:
        raise MarkerError(f"{path.name}:{number}: a docs-check skip needs a reason: skip (why)")
    return body["kind"], reason


def blocks_of(path: Path, text: str) -> list[Block]:
    """Every fenced block of a Markdown text, in order, with its docs-check marker applied."""
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: tuple[str, str, int] | None = None  # marker kind, reason, its line
    i = 0
    while i < len(lines):
        line = lines[i]
        found = _marker(line, path, i + 1)
        if found is not None:
            if pending is not None:
                raise MarkerError(
                    f"{path.name}:{pending[2]}: docs-check comment not followed by a code block"
                )
            pending = (found[0], found[1], i + 1)
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence is None:
            if line.strip() and pending is not None:
                raise MarkerError(
                    f"{path.name}:{pending[2]}: docs-check comment not followed by a code block"
                )
            i += 1
            continue
        indent, marks, lang = fence["indent"], fence["fence"], fence["info"].lower()
        body: list[str] = []
        j = i + 1
        closing = re.compile(rf"^[ \t]*{re.escape(marks[0])}{{{len(marks)},}}[ \t]*$")
        while j < len(lines) and not closing.match(lines[j]):
            row = lines[j]
            body.append(row[len(indent) :] if row.startswith(indent) else row.lstrip())
            j += 1
        action, reason = "run", ""
        if pending is not None:
            if lang not in RUNNABLE:
                raise MarkerError(
                    f"{path.name}:{pending[2]}: docs-check comment before a {lang or 'plain'} block, "
                    "which is never run"
                )
            action, reason = pending[0], pending[1]
            pending = None
        blocks.append(Block(path, i + 1, lang, "\n".join(body) + "\n", action, reason))
        i = j + 1
    if pending is not None:
        raise MarkerError(f"{path.name}:{pending[2]}: docs-check comment not followed by a code block")
    return blocks


def expected_fragments(shown: str) -> list[str]:
    """What a documented error line promises: its text between elisions (``...``, ``…``), with
    whitespace collapsed; ``error: Tether is sealed ... (HTTP 503)`` promises both parts."""
    text = shown.strip().removeprefix("error").lstrip(":").strip()
    return [" ".join(part.split()) for part in _ELISION.split(text) if part.strip()]


def _must_fail(command: str, where: str, shown: str) -> str:
    q = shlex.quote
    succeeded = q(f"docs-check: {where}: documented to fail, but it succeeded: {command}")
    show = "printf '%s\\n' \"$__out\""
    rows = [f"__out=$( {{ {command}\n}} 2>&1 ) && {{ {show}; echo {succeeded} >&2; exit 97; }}", show]
    for fragment in expected_fragments(shown):
        lacks = q(
            f"docs-check: {where}: the error shown in the docs is not what it says: {fragment!r} is missing"
        )
        rows.append(
            f"printf '%s' \"$__out\" | tr -s '[:space:]' ' ' | grep -F -- {q(fragment)} > /dev/null"
            f" || {{ echo {lacks} >&2; exit 98; }}"
        )
    return "\n".join(rows)


def shell_script(block: Block) -> str:
    """The block as a bash script: commands documented to fail (``# error...``) must fail."""
    out: list[str] = []
    continued = False
    for offset, row in enumerate(block.text.splitlines()):
        match = None if continued else _ERROR_COMMENT.match(row)
        continued = row.rstrip().endswith("\\")
        if match is not None and not continued:
            where = f"{block.path.name}:{block.first_code_line + offset}"
            out.append(_must_fail(match["command"], where, match["shown"]))
        else:
            out.append(row)
    return "\n".join(out) + "\n"


def console_script(block: Block) -> str:
    """The ``$ `` commands of a console block as a bash script (those shown failing must fail)."""
    commands: list[tuple[str, int, list[str]]] = []
    rows = block.text.splitlines()
    i = 0
    while i < len(rows):
        row = rows[i]
        if row.startswith("$ "):
            command = [row[2:]]
            line = block.first_code_line + i
            while command[-1].rstrip().endswith("\\") and i + 1 < len(rows):
                i += 1
                command.append(rows[i].removeprefix("> "))
            commands.append(("\n".join(command), line, []))
        elif commands:
            commands[-1][2].append(row)
        i += 1
    out: list[str] = []
    for command, line, shown in commands:
        if shown and shown[0].startswith("error:"):
            out.append(_must_fail(command, f"{block.path.name}:{line}", shown[0]))
        else:
            out.append(command)
    return "\n".join(out) + "\n"
