"""What the command modules share: connection options, the API client, reading a value."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tether.cli.client import OperatorClient
from tether.cli.output import EXIT_USAGE, CommandError
from tether.domain.secrets import MAX_SECRET_BYTES_CAP, value_too_large

__all__ = [
    "MAX_VALUE_READ_BYTES",
    "Addr",
    "DataDir",
    "FromFile",
    "Json",
    "Listen",
    "Stdin",
    "Token",
    "client",
    "read_value",
]

#: The CLI reads no more of a value than the server could ever accept (the setting's cap).
MAX_VALUE_READ_BYTES = MAX_SECRET_BYTES_CAP

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir", envvar="TETHER_DATA_DIR", help="The node's data directory.", show_default=False
    ),
]
Addr = Annotated[
    str,
    typer.Option(
        "--addr", envvar="TETHER_ADDR", help="The Tether server's URL.", rich_help_panel="Connection"
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="TETHER_TOKEN",
        help="Operator bearer token. Prefer the TETHER_TOKEN variable: options land in shell history.",
        show_default=False,
        show_envvar=True,
        rich_help_panel="Connection",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
Listen = Annotated[
    str, typer.Option("--listen", help="host:port to listen on (plain HTTP; loopback by default).")
]
FromFile = Annotated[
    Path | None,
    typer.Option(
        "--from-file",
        metavar="FILE",
        help="Read the value from this file.",
        show_default=False,
        dir_okay=False,
    ),
]
Stdin = Annotated[bool, typer.Option("--stdin", help="Read the value from standard input.")]


def client(addr: str, token: str | None) -> OperatorClient:
    return OperatorClient(addr, token)


def read_value(from_file: Path | None, use_stdin: bool, *, prompt: str = "Secret value") -> str:
    """A value from a file, stdin or a hidden prompt (one trailing newline removed). Never
    from an argument, where it would land in shell history and the process list."""
    if from_file is not None and use_stdin:
        raise CommandError("use either --from-file or --stdin, not both", EXIT_USAGE)
    if from_file is not None:
        source = str(from_file)
        try:
            with from_file.open("rb") as handle:
                data = handle.read(MAX_VALUE_READ_BYTES + 1)
        except OSError as exc:
            raise CommandError(f"cannot read {from_file}: {exc.strerror or type(exc).__name__}") from None
    elif use_stdin:
        source = "stdin"
        data = sys.stdin.buffer.read(MAX_VALUE_READ_BYTES + 1)
    elif sys.stdin.isatty():
        value: str = typer.prompt(prompt, hide_input=True, confirmation_prompt=True)
        if not value:
            raise CommandError("the value is empty")
        return value
    else:
        raise CommandError(
            "no value: use --from-file F or --stdin, or run in a terminal to be prompted "
            "(there is deliberately no --value option: it would land in shell history)",
            EXIT_USAGE,
        )
    if len(data) > MAX_VALUE_READ_BYTES:
        # The server's message; reading stopped at the cap, which no server setting exceeds.
        raise CommandError(f"{source}: {value_too_large(None, MAX_VALUE_READ_BYTES)}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(f"the value from {source} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise CommandError(f"the value from {source} is empty")
    return text
