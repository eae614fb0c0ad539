"""``tether secret update PATH``: change a secret's metadata only (``PATCH /v1/secrets/{path}``).

No value is read or sent and no version is added; what is not named stays as it is.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from tether.cli.client import DEFAULT_ADDR, check_secret_path, secret_url
from tether.cli.common import Addr, Json, Token, client
from tether.cli.output import EXIT_USAGE, CommandError, out, print_json

__all__ = ["secret_update"]

_SENSITIVITIES = ("public", "internal", "confidential", "restricted")


def _names(values: list[str] | None) -> list[str]:
    return list(dict.fromkeys(values or ()))


def secret_update(
    path: Annotated[str, typer.Argument(metavar="PATH", help="Secret path, e.g. prod/github/token.")],
    sensitivity: Annotated[
        str | None,
        typer.Option(
            metavar="LEVEL", help="public, internal, confidential or restricted.", show_default=False
        ),
    ] = None,
    add_purpose: Annotated[
        list[str] | None,
        typer.Option("--add-purpose", metavar="PURPOSE", help="A purpose to add (repeatable)."),
    ] = None,
    remove_purpose: Annotated[
        list[str] | None,
        typer.Option("--remove-purpose", metavar="PURPOSE", help="A purpose to remove (repeatable)."),
    ] = None,
    add_destination: Annotated[
        list[str] | None,
        typer.Option("--add-destination", metavar="DESTINATION", help="A destination to add (repeatable)."),
    ] = None,
    remove_destination: Annotated[
        list[str] | None,
        typer.Option(
            "--remove-destination", metavar="DESTINATION", help="A destination to remove (repeatable)."
        ),
    ] = None,
    owner: Annotated[str | None, typer.Option(help="The new owner.", show_default=False)] = None,
    rotation_period_seconds: Annotated[
        int | None,
        typer.Option(help="How often it should be rotated, in seconds.", show_default=False),
    ] = None,
    no_rotation_period: Annotated[
        bool, typer.Option("--no-rotation-period", help="Clear the rotation period.")
    ] = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Change a secret's metadata; the value is not needed and stays as it is (no new version).

    Example: `tether secret update prod/github/token --add-destination gitlab --remove-purpose release`
    """
    check_secret_path(path)
    if sensitivity is not None and sensitivity not in _SENSITIVITIES:
        raise CommandError(f"--sensitivity must be one of {', '.join(_SENSITIVITIES)}", EXIT_USAGE)
    if no_rotation_period and rotation_period_seconds is not None:
        raise CommandError("use --rotation-period-seconds or --no-rotation-period, not both", EXIT_USAGE)
    body: dict[str, Any] = {
        key: value
        for key, value in (
            ("sensitivity", sensitivity),
            ("add_purposes", _names(add_purpose)),
            ("remove_purposes", _names(remove_purpose)),
            ("add_destinations", _names(add_destination)),
            ("remove_destinations", _names(remove_destination)),
            ("owner", owner),
            ("rotation_period_seconds", rotation_period_seconds),
        )
        if value not in (None, [])
    }
    if no_rotation_period:
        body["rotation_period_seconds"] = None
    if not body:
        raise CommandError(
            "name something to change (e.g. --add-destination NAME); see `tether secret update --help`",
            EXIT_USAGE,
        )
    with client(addr, token) as api:
        result = api.request("PATCH", secret_url(path), json=body)
    if json_output:
        print_json(result)
        return
    period = result["rotation_period_seconds"]
    out.print(
        f"Updated {escape(result['path'])} (version {result['current_version']} is unchanged): "
        f"sensitivity {result['sensitivity']}; "
        f"purposes {escape(', '.join(result['purposes']) or '-')}; "
        f"destinations {escape(', '.join(result['destinations']) or '-')}; "
        f"owner {escape(result['owner'] or '-')}; "
        f"rotation {f'every {period} s' if period else '-'}."
    )
