"""``tether lease list``: the credentials secret engines issued for tasks, and whether they are
live, being revoked, failed to be revoked (still retried) or revoked. Never a credential."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from tether.cli.client import DEFAULT_ADDR
from tether.cli.common import Addr, Json, Token, client
from tether.cli.output import format_time, out, print_json, print_table
from tether.cli.tasks import check_id

__all__ = ["lease_app"]

lease_app = typer.Typer(help="Leases: credentials secret engines issued for tasks.", no_args_is_help=True)


class LeaseStateChoice(StrEnum):
    active = "active"
    revoking = "revoking"
    failed = "failed"
    revoked = "revoked"


@lease_app.command("list")
def lease_list(
    state: Annotated[
        LeaseStateChoice | None,
        typer.Option(
            "--state",
            help="Only leases in this state (failed: revocation unconfirmed 30 s after the lease ended).",
            show_default=False,
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option("--task", metavar="TASK-ID", help="Only this task's leases.", show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 100,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Leases, newest first, with their state."""
    params: dict[str, Any] = {"limit": limit}
    if state is not None:
        params["state"] = state.value
    if task is not None:
        params["task"] = check_id(task, "tsk", "task id")
    with client(addr, token) as api:
        items = api.get("/v1/leases", params=params)["items"]
    if json_output:
        print_json({"items": items})
        return
    if not items:
        out.print("No leases.")
        return
    print_table(
        None,
        ["ID", "STATE", "ENGINE", "TASK", "ROLE", "CREATED", "EXPIRES"],
        [
            (
                lease["id"],
                lease["state"],
                lease["engine"],
                lease["task_id"],
                str(lease["handle"].get("role", "")),
                format_time(lease["created_at"]),
                format_time(lease["expires_at"]),
            )
            for lease in items
        ],
    )
