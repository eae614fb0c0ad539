"""``tether compliance report``: Tether's controls mapped to OWASP ASI, OWASP NHI and NIST AI RMF,
with evidence from this deployment's data, through ``GET /v1/compliance/report`` (auditor or admin).
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from tether.cli.client import DEFAULT_ADDR
from tether.cli.common import Addr, Json, Token, client
from tether.cli.output import CommandError

__all__ = ["compliance_app"]

compliance_app = typer.Typer(
    help="Compliance evidence from this deployment's own data (auditor or admin).", no_args_is_help=True
)


class ReportFormat(StrEnum):
    """How the report is written."""

    MD = "md"
    JSON = "json"
    HTML = "html"


@compliance_app.command("report")
def report(
    output_format: Annotated[
        ReportFormat,
        typer.Option(
            "--format",
            case_sensitive=False,
            help="md (Markdown, for people), json (for machines) or html (one self-contained page).",
        ),
    ] = ReportFormat.MD,
    since: Annotated[str, typer.Option("--since", help="The window: 30d, 12h, 90m (at most 366d).")] = "30d",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write the report to this file instead of stdout.", dir_okay=False
        ),
    ] = None,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Map Tether's controls to OWASP ASI01-ASI10, NHI1-NHI10 and NIST AI RMF, with evidence.

    Each control shows what this deployment's store and audit log prove over the window (uses
    decided at use time, task lifetimes, revocations, approvals, the audit chain and its last
    signed checkpoint, sprawl findings, DPoP replays refused, reach findings); a control with no
    evidence says so. The report names the mapping's version.

    Example: tether compliance report --format html --since 7d -o report.html"""
    fmt = ReportFormat.JSON if json_output else output_format
    chunks: list[bytes] = []
    with client(addr, token) as api:
        api.stream("/v1/compliance/report", chunks.append, params={"since": since, "format": fmt.value})
    body = b"".join(chunks)
    if output is None:
        sys.stdout.buffer.write(body if body.endswith(b"\n") else body + b"\n")
        sys.stdout.flush()
        return
    try:
        output.write_bytes(body)
    except OSError as exc:
        raise CommandError(f"cannot write {output}: {exc.strerror or type(exc).__name__}") from None
    typer.echo(f"wrote the {fmt.value} report to {output}", err=True)
