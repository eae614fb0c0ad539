"""``tether --help`` for people: every command has a one-line summary and an example, and no
help shows a Python type (``<bool>``, ``<str>``, ``<list[...]>``); shell completion installs
and completes."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import typer

from tether.cli.help import EXAMPLES, commands
from tether.cli.main import app, main

RAW_TYPE = re.compile(r"<(bool|str|int|float|path|file|list\[|int range|[a-z_-]+\|)")
# The command tree, built once (~0.1 s a build): the tests read it, none changes it.
BY_PATH = dict(commands(typer.main.get_command(app)))
ALL = list(BY_PATH)
LEAVES = [path for path, command in BY_PATH.items() if not hasattr(command, "commands")]


def help_of(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> str:
    monkeypatch.setenv("COLUMNS", "80")  # narrow, as a small terminal: where types wrapped mid-word
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "tether")
def test_help_shows_no_python_types(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = help_of(path, capsys, monkeypatch)
    assert RAW_TYPE.search(text) is None, text
    assert "{" + "PATH}" not in text  # required arguments are written as themselves in the usage


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_every_command_has_a_summary_and_an_example(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    command = BY_PATH[path]
    summary = " ".join(inspect.cleandoc(command.help or "").split("\n\n")[0].split())
    assert summary.endswith("."), summary  # what `tether GROUP --help` lists
    assert len(summary) <= 200, summary
    text = " ".join(help_of(path, capsys, monkeypatch).split())
    example = EXAMPLES[" ".join(path)]
    assert example.startswith("tether " + " ".join(path))
    assert "Example: " + " ".join(example.split()) in text


def test_every_example_uses_options_its_command_has() -> None:
    by_path = dict(commands(typer.main.get_command(app)))
    for name, example in EXAMPLES.items():
        command = by_path[tuple(name.split())]
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        words = example.split(" < ")[0].split()
        assert [w for w in words if w.startswith("-") and w not in options] == [], example


def test_shell_completion_completes_commands(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("_TETHER_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "tether sec")
    monkeypatch.setenv("COMP_CWORD", "1")
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 0
    assert capsys.readouterr().out.split() == ["secret"]


def test_install_completion_installs_for_bash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SHELL", "/bin/bash")
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    root = typer.main.get_command(app)
    assert "--install-completion" in {o for p in root.params for o in p.opts}
    with pytest.raises(SystemExit) as exited:
        main(["--install-completion", "bash"])
    assert exited.value.code == 0
    script = tmp_path / ".bash_completions" / "tether.sh"
    assert "_TETHER_COMPLETE" in script.read_text()
    assert str(script) in (tmp_path / ".bashrc").read_text()
