"""The docs check: every shell and Python snippet of README.md and docs/*.md runs against a live node.

For each Markdown file, a fresh ``tether demo`` (what ``make run`` starts: the example trust domain
``acme.test``, its agents, secrets, policies and the ``github`` stand-in) serves on a free port of
127.0.0.1 in a private copy of the checkout (symlinks to the repository, its own ``.tether/dev``).
The file's ``sh``/``bash``/``console`` and ``python`` blocks then run in order, as a user following
the page would:

- shell blocks with bash (``set -eo pipefail``), with ``TETHER_ADDR``, ``TETHER_TOKEN`` and ``PATH``
  (``.venv/bin`` first) set as the docs tell the user to; variables a block sets, and the directory it
  ends in, carry over to the next block of the file, as in one terminal;
- Python blocks in one interpreter and one namespace per file, as if pasted into one session.

The documented address ``127.0.0.1:8420`` is rewritten to the node's, and ``/tmp/`` to a directory
private to the run (``HOME`` points into it too). Blocks that would act outside the run (install
packages, set up a production node, start a server that never returns) must be marked skip.
Markers (``<!-- docs-check: skip (why) -->``, ``expect-fail``) and the
``# error`` convention are described in :mod:`tests.docs.snippets`. Every block has a time limit;
a failure names the file, the line, the block and its output.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.docs.snippets import (
    SHELL,
    Block,
    MarkerError,
    blocks_of,
    console_script,
    expected_fragments,
    shell_script,
)

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DOCUMENTED_ADDR = "127.0.0.1:8420"
BLOCK_TIMEOUT_SECONDS = 90.0
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
OUTPUT_LIMIT_CHARS = 4000
WORKER = Path(__file__).with_name("python_worker.py")


@dataclass
class LiveNode:
    """A running ``tether demo`` and the private checkout it serves from."""

    workspace: Path
    port: int
    token: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 25) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _tether() -> str:
    here = Path(sys.executable).parent / "tether"
    return str(here) if here.exists() else shutil.which("tether") or "tether"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _checkout(root: Path) -> Path:
    """A private view of the repository: symlinks to everything but a user's ``.tether`` data."""
    workspace = root / "checkout"
    workspace.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {".tether", "tmp"}:
            (workspace / entry.name).symlink_to(entry)
    (workspace / "tmp").mkdir()
    return workspace


def _base_env(workspace: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "PYTEST_"))}
    env["PATH"] = (
        f"{workspace / '.venv' / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
        + env.get("PATH", "")
    )
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "160"
    return env


def _start_demo(
    workspace: Path, data: Path, env: dict[str, str], log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """``tether demo`` on a free port, serving once it says so. A port taken between choosing it and
    binding it (another test's server) is a new try on another port, up to three times."""
    for _ in range(3):
        port = _free_port()
        with log.open("w", encoding="utf-8") as handle:
            proc = subprocess.Popen(
                [_tether(), "demo", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"],
                cwd=workspace,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while "Tether is running at" not in log.read_text(encoding="utf-8", errors="replace"):
            if proc.poll() is not None and "already in use" in log.read_text(
                encoding="utf-8", errors="replace"
            ):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-60:])
                pytest.fail(f"tether demo did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.1)
        else:
            return proc, port
    pytest.fail(f"tether demo found no free port in three tries:\n{log.read_text(encoding='utf-8')}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _stop_group(proc.pid)


@contextlib.contextmanager
def live_node(root: Path) -> Iterator[LiveNode]:
    """Start ``tether demo`` as ``make run`` does; stop it (SIGINT, then kill) at the end."""
    workspace = _checkout(root)
    data = workspace / ".tether" / "dev"
    log = root / "tether-demo.log"
    env = _base_env(workspace)
    proc, port = _start_demo(workspace, data, env, log)
    node = LiveNode(workspace, port, "", log)
    try:
        node.token = (data / "dev-root-token").read_text(encoding="ascii").strip()
        home = workspace / "tmp" / "home"  # what a block writes to ~ stays in the run's directory
        home.mkdir()
        node.env = env | {"TETHER_ADDR": f"http://{node.addr}", "TETHER_TOKEN": node.token, "HOME": str(home)}
        yield node
    finally:
        _stop(proc)


def _stop_group(pgid: int) -> None:
    """Kill what a block left running in its process group (a block that started a server)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    output: str


def _localised(text: str, node: LiveNode) -> str:
    return (
        text.replace(DOCUMENTED_ADDR, node.addr)
        .replace("localhost:8420", f"localhost:{node.port}")
        .replace("/tmp/", f"{node.workspace / 'tmp'}/")
    )


class Shell:
    """Bash, one process per block, with variables and the directory carried from block to block."""

    def __init__(self, node: LiveNode, state: Path) -> None:
        self.env = dict(node.env)
        self.cwd = node.workspace
        self.state = state
        state.mkdir()

    def run(self, script: str) -> Outcome:
        env_file, cwd_file = self.state / "env", self.state / "cwd"
        for stale in (env_file, cwd_file):
            stale.unlink(missing_ok=True)
        wrapped = (
            f'trap \'rc=$?; env -0 > "{env_file}"; pwd > "{cwd_file}"; exit $rc\' EXIT\n'
            "set -a\nset -eo pipefail\n" + script
        )
        proc = subprocess.Popen(
            ["bash", "-c", wrapped],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: whatever it starts is stopped with it
        )
        try:
            output, _ = proc.communicate(timeout=BLOCK_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            _stop_group(proc.pid)
            output, _ = proc.communicate()
            return Outcome(False, f"{output}\n[timed out after {BLOCK_TIMEOUT_SECONDS:.0f} s]")
        finally:
            _stop_group(proc.pid)
        if env_file.exists():
            pairs = (item.split("=", 1) for item in env_file.read_text().split("\0") if "=" in item)
            self.env = {k: v for k, v in pairs if k not in {"_", "SHLVL", "OLDPWD", "PWD"}}
        if cwd_file.exists():
            self.cwd = Path(cwd_file.read_text().strip())
        failed = f"\n[exit {proc.returncode}]" if proc.returncode else ""
        return Outcome(proc.returncode == 0, output + failed)


class Python:
    """One interpreter (tests/docs/python_worker.py) for a file's Python blocks."""

    def __init__(self, node: LiveNode) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            cwd=node.workspace,
            env=node.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.answers: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.answers.put(line)
        self.answers.put("")

    def run(self, block: Block, code: str) -> Outcome:
        assert self.proc.stdin is not None
        request = {"code": code, "filename": str(block.path.relative_to(REPO)), "line": block.first_code_line}
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return Outcome(False, "[the Python interpreter of this file has exited]")
        try:
            line = self.answers.get(timeout=BLOCK_TIMEOUT_SECONDS)
        except queue.Empty:
            self.proc.kill()
            return Outcome(False, f"[timed out after {BLOCK_TIMEOUT_SECONDS:.0f} s]")
        if not line:
            return Outcome(False, "[the Python interpreter of this file has exited]")
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            return Outcome(False, line)
        return Outcome(bool(answer["ok"]), answer["output"] + answer["error"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        _stop_group(self.proc.pid)
        self.reader.join(STOP_TIMEOUT_SECONDS)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _numbered(block: Block, text: str) -> str:
    return "\n".join(f"{block.first_code_line + i:5d} | {row}" for i, row in enumerate(text.splitlines()))


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= OUTPUT_LIMIT_CHARS else "…" + text[-OUTPUT_LIMIT_CHARS:]


def _failure(block: Block, outcome: Outcome, why: str = "") -> str:
    expected = f" (marked expect-fail: {why or 'but it succeeded'})" if block.action == "expect-fail" else ""
    return (
        f"{block.path.relative_to(REPO)}:{block.line}: ```{block.lang} block failed{expected}\n"
        f"{_numbered(block, block.text)}\n"
        f"--- output ---\n{_clip(outcome.output) or '(none)'}"
    )


def _run_file(path: Path, node: LiveNode, root: Path) -> list[str]:
    blocks = blocks_of(path, path.read_text(encoding="utf-8"))
    shell = Shell(node, root / "shell-state")
    python: Python | None = None
    failures: list[str] = []
    try:
        for block in blocks:
            if block.lang not in SHELL | {"console", "python"}:
                continue
            if block.action == "skip":
                continue
            if block.lang == "python":
                python = python or Python(node)
                outcome = python.run(block, _localised(block.text, node))
            else:
                script = console_script(block) if block.lang == "console" else shell_script(block)
                outcome = shell.run(_localised(script, node))
            if outcome.ok != (block.action == "run"):
                failures.append(_failure(block, outcome))
            elif block.action == "expect-fail" and block.reason and block.reason not in outcome.output:
                failures.append(_failure(block, outcome, f"it failed, but without {block.reason!r}"))
    finally:
        if python is not None:
            python.close()
    return failures


def _not_run(path: Path) -> str | None:
    """Why the docs check starts no node for ``path`` (None: it does)."""
    blocks = blocks_of(path, path.read_text(encoding="utf-8"))
    if not any(b.lang in SHELL | {"console", "python"} for b in blocks):
        return f"{path.name} has no shell or Python blocks"
    if all(b.action == "skip" for b in blocks if b.lang in SHELL | {"console", "python"}):
        return f"every shell and Python block of {path.name} is marked skip"
    return None


class _Nodes:
    """One fresh node per file, each started while the file before it runs, and stopped after
    its file in the background: ``tether demo`` takes seconds to start and to stop, most of it
    spent in its own process while this one would only wait. The files run one after another on
    one worker (this module's tests share this module-scoped fixture, so they are one xdist
    group), in the order of :data:`DOC_FILES`; a node serves exactly one file, as before."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="docs-node")
        self.starting: dict[
            Path, Future[tuple[contextlib.AbstractContextManager[LiveNode], LiveNode, Path]]
        ] = {}
        self.stopping: list[Future[object]] = []

    def _prefetch(self, path: Path) -> None:
        if path not in self.starting:
            root = self.factory.mktemp("docs-node")
            self.starting[path] = self.pool.submit(self._start, root)

    @staticmethod
    def _start(root: Path) -> tuple[contextlib.AbstractContextManager[LiveNode], LiveNode, Path]:
        manager = live_node(root)
        return manager, manager.__enter__(), root

    @contextlib.contextmanager
    def node_for(self, path: Path) -> Iterator[tuple[LiveNode, Path]]:
        """The node for ``path`` (started now if it was not yet), and its private directory; the
        next file's node starts meanwhile."""
        self._prefetch(path)
        later = LIVE_FILES[LIVE_FILES.index(path) + 1 :] if path in LIVE_FILES else []
        if later:
            self._prefetch(later[0])
        manager, node, root = self.starting.pop(path).result()  # a failed start fails this file
        try:
            yield node, root
        finally:
            self.stopping.append(self.pool.submit(manager.__exit__, None, None, None))

    def close(self) -> None:
        """Stop every node: those stopping, and those started for a file that did not run (-x)."""
        for future in self.starting.values():
            with contextlib.suppress(BaseException):
                manager, _, _ = future.result()
                manager.__exit__(None, None, None)
        for stopping in self.stopping:
            stopping.result()
        self.pool.shutdown()


def _live_files() -> list[Path]:
    found = []
    for path in DOC_FILES:
        try:
            if _not_run(path) is None:
                found.append(path)
        except MarkerError:  # reported by its own test and by test_every_doc_has_well_formed_markers
            found.append(path)
    return found


LIVE_FILES = _live_files()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Nodes]:
    started = _Nodes(tmp_path_factory)
    try:
        yield started
    finally:
        started.close()


@pytest.mark.slow
@pytest.mark.parametrize("path", DOC_FILES, ids=[str(p.relative_to(REPO)) for p in DOC_FILES])
def test_doc_snippets_run_against_a_live_node(path: Path, nodes: _Nodes) -> None:
    why = _not_run(path)
    if why is not None:
        pytest.skip(why)
    with nodes.node_for(path) as (node, root):
        failures = _run_file(path, node, root)
        if failures:
            pytest.fail(
                f"{len(failures)} block(s) of {path.relative_to(REPO)} failed against a live node "
                f"(tether demo on {node.addr}):\n\n"
                + "\n\n".join(failures)
                + f"\n\n--- tether demo log (tail) ---\n{node.log_tail()}",
                pytrace=False,
            )


def _marked_skip() -> list[Block]:
    found: list[Block] = []
    for path in DOC_FILES:
        with contextlib.suppress(MarkerError):  # reported by test_every_doc_has_well_formed_markers
            found.extend(b for b in blocks_of(path, path.read_text(encoding="utf-8")) if b.action == "skip")
    return found


MARKED_SKIP = _marked_skip()


@pytest.mark.parametrize(
    "block", MARKED_SKIP, ids=[str(b.path.relative_to(REPO)) + f":{b.line}" for b in MARKED_SKIP]
)
def test_doc_block_marked_skip(block: Block) -> None:
    """One skipped test per block marked skip, so that every run lists them with their reasons."""
    pytest.skip(f"docs-check: {block.path.relative_to(REPO)}:{block.line} not run: {block.reason}")


def test_every_doc_has_well_formed_markers() -> None:
    for path in DOC_FILES:
        blocks_of(path, path.read_text(encoding="utf-8"))  # raises MarkerError


def test_a_skip_without_a_reason_is_refused() -> None:
    text = "<!-- docs-check: skip -->\n```sh\nmake run\n```\n"
    with pytest.raises(MarkerError, match="needs a reason"):
        blocks_of(Path("x.md"), text)


def test_a_marker_must_precede_a_runnable_block() -> None:
    text = "<!-- docs-check: skip (output) -->\n```json\n{}\n```\n"
    with pytest.raises(MarkerError, match="never run"):
        blocks_of(Path("x.md"), text)
    with pytest.raises(MarkerError, match="not followed"):
        blocks_of(Path("x.md"), "<!-- docs-check: expect-fail -->\nsome text\n```sh\nfalse\n```\n")


def test_markers_and_error_comments_are_read() -> None:
    text = (
        "<!-- docs-check: skip (starts a long-running server) -->\n"
        "```sh\nmake run\n```\n\n"
        "  ```console\n  $ tether x\n  error: no\n  $ tether y\n  ok\n  ```\n"
        "```sh\ntether secret show a   # error: sealed\ntether sys unseal\n```\n"
    )
    skip, console, shell = blocks_of(Path("x.md"), text)
    assert (skip.action, skip.reason, skip.line) == ("skip", "starts a long-running server", 2)
    assert console.text == "$ tether x\nerror: no\n$ tether y\nok\n"
    assert console_script(console).startswith("__out=$( { tether x\n} 2>&1 ) && ")
    assert "grep -F -- no > /dev/null" in console_script(console)
    assert console_script(console).splitlines()[-1] == "tether y"
    assert shell_script(shell).startswith("__out=$( { tether secret show a\n} 2>&1 ) && ")
    assert "grep -F -- sealed > /dev/null" in shell_script(shell)
    assert shell_script(shell).splitlines()[-1] == "tether sys unseal"


def test_a_documented_error_promises_its_text_between_elisions() -> None:
    assert expected_fragments("error: Tether is sealed ... (HTTP 503)") == ["Tether is sealed", "(HTTP 503)"]
    assert expected_fragments("error: a   b…c") == ["a b", "c"]
    assert expected_fragments("error") == []


@pytest.mark.parametrize(
    ("command", "shown", "ok"),
    [
        (
            "echo 'error: Tether is sealed: no key (HTTP 503)' >&2; false",
            "error: Tether is sealed ... (HTTP 503)",
            True,
        ),
        ("echo 'error: something else' >&2; false", "error: Tether is sealed ... (HTTP 503)", False),
        ("true", "error: anything", False),
    ],
)
def test_a_documented_failure_must_fail_with_its_text(command: str, shown: str, ok: bool) -> None:
    block = Block(Path("x.md"), 1, "sh", f"{command}   # {shown}\n")
    done = subprocess.run(
        ["bash", "-c", "set -eo pipefail\n" + shell_script(block)], capture_output=True, check=False
    )
    assert (done.returncode == 0) is ok, done


_TEST_REFERENCE = re.compile(r"(?P<file>[\w/]*test_\w+\.py)(?:::(?P<test>\w+))?")


def test_tests_named_in_the_docs_exist() -> None:
    """security.md and others prove claims by naming tests (``test_x.py::test_y``): they must exist."""
    sources = {p.name: p.read_text(encoding="utf-8") for p in (REPO / "tests").rglob("test_*.py")}
    missing = []
    for path in DOC_FILES:
        for match in _TEST_REFERENCE.finditer(path.read_text(encoding="utf-8")):
            source = sources.get(Path(match["file"]).name)
            test = match["test"]
            if source is None or (
                test and not re.search(rf"^\s*(async )?def {test}\b|^class {test}\b", source, re.M)
            ):
                missing.append(f"{path.relative_to(REPO)}: {match[0]}")
    assert not missing, "the docs name tests that do not exist:\n" + "\n".join(sorted(set(missing)))


_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def _synopses() -> list[tuple[str, list[str]]]:
    """The usage lines of docs/cli.md (its plain blocks): each ``tether ...`` line with its
    continuation lines, comments dropped."""
    path = REPO / "docs" / "cli.md"
    found: list[tuple[str, list[str]]] = []
    for block in blocks_of(path, path.read_text(encoding="utf-8")):
        if block.lang:
            continue
        for row in block.text.splitlines():
            text = re.split(r"\s#\s", row, maxsplit=1)[0].rstrip()
            if text.startswith("tether "):
                found.append((f"cli.md:{block.line}", [text]))
            elif text.strip() and found and row[:1].isspace():
                found[-1][1].append(text)
    return found


def test_cli_synopses_name_real_commands_and_options() -> None:
    """Every ``tether ...`` usage line of docs/cli.md names a real command, and every option it shows
    is one of that command's options."""
    import typer

    from tether.cli.main import app

    root = typer.main.get_command(app)
    problems = []
    synopses = _synopses()
    assert len(synopses) > 30, "docs/cli.md's usage blocks were not found"
    for where, rows in synopses:
        words = rows[0].split()[1:]
        command = root
        path = ["tether"]
        while hasattr(command, "commands") and words and words[0] in command.commands:
            path.append(words[0])
            command = command.commands[words.pop(0)]
        if hasattr(command, "commands"):
            problems.append(f"{where}: {' '.join(rows)!r} names no command")
            continue
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        known |= {"--help", "-h"}
        for option in _OPTION.findall(" ".join(rows)):
            if option not in known:
                problems.append(f"{where}: {' '.join(path)} has no option {option}")
    assert not problems, "docs/cli.md disagrees with the CLI:\n" + "\n".join(problems)


_ROUTE = re.compile(r"`(?P<method>GET|HEAD|POST|PUT|PATCH|DELETE|ANY) (?P<path>/[^`\s]*)`")


def _route_key(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path.rstrip("/"))


def test_routes_named_in_the_docs_exist() -> None:
    """Every ``METHOD /path`` the docs name is a route of the API (from its OpenAPI document)."""
    from tether.api.app import DEFAULT_MAX_REQUEST_BYTES, _build_app

    app = _build_app(max_request_bytes=DEFAULT_MAX_REQUEST_BYTES)  # routes only: nothing is served
    served: dict[str, set[str]] = {}
    for path, operations in app.openapi()["paths"].items():
        served.setdefault(_route_key(path), set()).update(m.upper() for m in operations)
    served.setdefault("/docs", set()).add("GET")  # FastAPI's own pages
    served.setdefault("/openapi.json", set()).add("GET")
    problems = []
    for doc in DOC_FILES:
        for match in _ROUTE.finditer(doc.read_text(encoding="utf-8")):
            path = re.split(r"[?\[]", match["path"], maxsplit=1)[0].removesuffix(":rotate")
            head, _, last = path.rpartition("/")
            for alternative in last.split("|"):
                key = _route_key(f"{head}/{alternative}")
                methods = served.get(key, set())
                any_method = match["method"] == "ANY" and len(methods) >= 5
                if not any_method and match["method"] not in methods:
                    problems.append(f"{doc.relative_to(REPO)}: {match[0]} is not a route")
    assert not problems, "the docs name routes the API does not have:\n" + "\n".join(sorted(set(problems)))


_FENCED = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1", re.M | re.S)


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a page's headings (lowercase, punctuation dropped, spaces to
    hyphens, repeats numbered)."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(
        r"^#{1,6}\s+(.+?)\s*#*$", _FENCED.sub("", path.read_text(encoding="utf-8")), re.M
    ):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_links_between_the_docs_resolve() -> None:
    """Relative links in README.md and docs/ point at files that exist, and at headings that exist."""
    broken = []
    for doc in DOC_FILES:
        for link in re.findall(r"\]\(([^)\s]+)\)", _FENCED.sub("", doc.read_text(encoding="utf-8"))):
            if re.match(r"[a-z][a-z0-9+.-]*:", link):
                continue  # https:, mailto:, …
            target, _, anchor = link.partition("#")
            path = (doc.parent / target).resolve() if target else doc
            if not path.exists():
                broken.append(f"{doc.relative_to(REPO)}: {link} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{doc.relative_to(REPO)}: {link} (no such heading)")
    assert not broken, "broken links in the docs:\n" + "\n".join(broken)
