"""``tether mcp-server``: the MCP gateway's upstream registry (operators); ``tether mcp connect``:
the stdio bridge an MCP client starts (agents).

Only secret *paths* are given here; values stay in Tether. See docs/mcp.md.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from tether.cli.client import DEFAULT_ADDR, check_secret_path, url_segment
from tether.cli.common import Addr, Json, Token, client
from tether.cli.output import EXIT_USAGE, CommandError, out, print_json, print_table

__all__ = ["mcp_app", "mcp_server_app"]

mcp_server_app = typer.Typer(
    help="Upstream MCP servers behind the gateway: register, pin, review, approve.",
    no_args_is_help=True,
)
mcp_app = typer.Typer(help="The MCP gateway, from an MCP client's side.", no_args_is_help=True)

_SECRET_PREFIX = "secret:"


def _env(values: list[str] | None) -> dict[str, str]:
    """``VAR=secret:PATH`` each."""
    env: dict[str, str] = {}
    for item in values or []:
        var, sep, ref = item.partition("=")
        if not sep or not var or not ref.startswith(_SECRET_PREFIX):
            raise CommandError(f"--env needs VAR=secret:PATH, got {item!r}", EXIT_USAGE)
        env[var] = check_secret_path(ref.removeprefix(_SECRET_PREFIX))
    return env


def _inject(value: str) -> dict[str, str]:
    """``header:NAME=TEMPLATE`` (or ``header:NAME``: the template is then ``{secret}``)."""
    kind, sep, rest = value.partition(":")
    name, eq, template = rest.partition("=")
    if kind != "header" or not sep or not name:
        raise CommandError(
            "--inject needs header:NAME=TEMPLATE, e.g. 'header:Authorization=Bearer {secret}'", EXIT_USAGE
        )
    return {"name": name, "template": template if eq else "{secret}"}


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _tool_rows(tools: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [
        (
            tool["name"],
            tool["sha256"][:16],
            " ".join(str(tool["definition"].get("description", "")).split())[:70],
        )
        for tool in tools
    ]


@mcp_server_app.command("add")
def mcp_server_add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Server name: lowercase letters, digits, '-'.")],
    args: Annotated[
        list[str] | None,
        typer.Argument(metavar="[ARGS]...", help="The command's arguments (after -- if they start with -).'"),
    ] = None,
    command: Annotated[
        str | None,
        typer.Option("--command", metavar="CMD", help="stdio: the program, an absolute path (no shell)."),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            metavar="VAR=secret:PATH",
            help="stdio: a secret for the child's environment (repeat).",
        ),
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", metavar="URL", help="HTTP: the upstream's MCP endpoint.")
    ] = None,
    inject: Annotated[
        str | None,
        typer.Option(
            "--inject", metavar="header:NAME=TEMPLATE", help="HTTP: where the secret goes, with {secret}."
        ),
    ] = None,
    secret: Annotated[
        str | None, typer.Option("--secret", metavar="PATH", help="HTTP: the secret injected.")
    ] = None,
    timeout_seconds: Annotated[
        int, typer.Option("--timeout-seconds", min=1, max=300, help="Per call and for opening it.")
    ] = 30,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Register an upstream MCP server. Tether starts it once and pins every tool it lists.

    Example: `tether mcp-server add github --command /usr/bin/python3 --env
    GITHUB_TOKEN=secret:prod/github/token /opt/mcp/github_server.py`
    """
    body: dict[str, Any] = {"name": name, "timeout_seconds": timeout_seconds}
    if (command is None) == (url is None):
        raise CommandError("give exactly one of --command (stdio) and --url (HTTP)", EXIT_USAGE)
    if command is not None:
        if inject or secret:
            raise CommandError("--inject and --secret are for --url; a command takes --env", EXIT_USAGE)
        body.update(command=command, args=list(args or []), env=_env(env))
    else:
        if args or env:
            raise CommandError("arguments and --env are for --command; a URL takes --inject", EXIT_USAGE)
        body["url"] = url
        if (inject is None) != (secret is None):
            raise CommandError("--inject and --secret go together", EXIT_USAGE)
        if inject is not None and secret is not None:
            body.update(inject=_inject(inject), secret=check_secret_path(secret))
    with client(addr, token) as api:
        result = api.post("/v1/mcp-servers", json=body)
    if json_output:
        print_json(result)
        return
    tools = ", ".join(tool["name"] for tool in result["tools"]) or "none"
    out.print(f"Added MCP server {escape(result['name'])} ({result['kind']}); pinned tools: {escape(tools)}.")


@mcp_server_app.command("list")
def mcp_server_list(addr: Addr = DEFAULT_ADDR, token: Token = None, json_output: Json = False) -> None:
    """Every upstream MCP server."""
    with client(addr, token) as api:
        result = api.get("/v1/mcp-servers")
    if json_output:
        print_json(result)
        return
    servers = result["servers"]
    if not servers:
        out.print("No MCP servers.")
        return
    print_table(
        None,
        ["NAME", "KIND", "REACHED AS", "SECRETS", "TOOLS", "QUARANTINED"],
        [
            (
                s["name"],
                s["kind"],
                s.get("command") or s.get("url") or "-",
                ", ".join(sorted({*s.get("env", {}).values(), *([s["secret"]] if s.get("secret") else [])}))
                or "-",
                str(len(s["tools"])),
                str(len(s["quarantined"])),
            )
            for s in servers
        ],
    )


@mcp_server_app.command("show")
def mcp_server_show(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Server name.")],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """One upstream: how it is reached, its pinned tools and the definitions in quarantine."""
    with client(addr, token) as api:
        result = api.get(f"/v1/mcp-servers/{url_segment(name)}")
    if json_output:
        print_json(result)
        return
    reached = result.get("command") or result.get("url")
    out.print(f"[bold]{escape(result['name'])}[/bold] ({result['kind']}): {escape(str(reached))}")
    print_table("pinned", ["TOOL", "SHA-256", "DESCRIPTION"], _tool_rows(result["tools"]))
    if result["quarantined"]:
        print_table("quarantined", ["TOOL", "SHA-256", "DESCRIPTION"], _tool_rows(result["quarantined"]))


def _lines(definition: Any) -> list[str]:
    return json.dumps(definition, indent=2, sort_keys=True).splitlines()


@mcp_server_app.command("diff")
def mcp_server_diff(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Server name.")],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
) -> None:
    """What changed: each quarantined definition against its pin (a new tool against nothing)."""
    with client(addr, token) as api:
        result = api.get(f"/v1/mcp-servers/{url_segment(name)}")
    pinned = {tool["name"]: tool for tool in result["tools"]}
    if not result["quarantined"]:
        out.print("Nothing in quarantine.")
        return
    for tool in result["quarantined"]:
        before = pinned.get(tool["name"])
        old = (
            [] if before is None else json.dumps(before["definition"], indent=2, sort_keys=True).splitlines()
        )
        new = json.dumps(tool["definition"], indent=2, sort_keys=True).splitlines()
        label = f"{name}/{tool['name']}"
        for line in difflib.unified_diff(old, new, f"{label} (pinned)", f"{label} (seen)", lineterm=""):
            sys.stdout.write(line + "\n")


@mcp_server_app.command("check")
def mcp_server_check(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Server name.")],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Start the upstream now and quarantine every tool definition that differs from its pin."""
    with client(addr, token) as api:
        result = api.post(f"/v1/mcp-servers/{url_segment(name)}/check")
    if json_output:
        print_json(result)
        return
    waiting = ", ".join(tool["name"] for tool in result["quarantined"])
    out.print(f"In quarantine: {escape(waiting)}." if waiting else "Every tool matches its pin.")


@mcp_server_app.command("approve")
def mcp_server_approve(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Server name.")],
    tools: Annotated[
        list[str] | None, typer.Argument(metavar="[TOOL]...", help="The tools to approve (default: all).")
    ] = None,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Pin quarantined definitions (review them first with `tether mcp-server diff`)."""
    with client(addr, token) as api:
        result = api.post(f"/v1/mcp-servers/{url_segment(name)}/approve", json={"tools": tools or None})
    if json_output:
        print_json(result)
        return
    left = ", ".join(tool["name"] for tool in result["quarantined"])
    out.print(
        f"Approved. Still in quarantine: {escape(left)}." if left else "Approved; nothing in quarantine."
    )


@mcp_server_app.command("remove")
def mcp_server_remove(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Server name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
) -> None:
    """Remove an upstream: its tools disappear from every task."""
    if not yes:
        if not sys.stdin.isatty():
            raise CommandError("refusing without confirmation: pass --yes", EXIT_USAGE)
        typer.confirm(f"Remove MCP server {name}?", abort=True)
    with client(addr, token) as api:
        api.delete(f"/v1/mcp-servers/{url_segment(name)}")
    out.print(f"Removed MCP server {escape(name)}.")


@mcp_app.command("connect")
def mcp_connect(
    agent: Annotated[
        str,
        typer.Option(
            "--agent", envvar="TETHER_AGENT", metavar="SPIFFE-ID", help="The agent's id.", show_default=False
        ),
    ],
    agent_key: Annotated[
        Path,
        typer.Option(
            "--agent-key",
            envvar="TETHER_AGENT_KEY",
            metavar="FILE",
            help="The agent's private key (from `tether keygen`).",
            dir_okay=False,
            show_default=False,
        ),
    ],
    task: Annotated[
        str, typer.Option("--task", envvar="TETHER_TASK", metavar="ID", help="The task.", show_default=False)
    ],
    addr: Addr = DEFAULT_ADDR,
) -> None:
    """Speak MCP over stdio and forward every message to Tether's /mcp, signed as the agent.

    Start it from an MCP client's configuration (see docs/mcp.md); it ends when the client closes stdin.
    """
    from tether.domain.tasks import validate_id
    from tether.errors import InvalidInputError
    from tether.mcp.bridge import bridge
    from tether.sdk import AsyncAgent

    try:
        validate_id(task, "tsk", "--task")
    except InvalidInputError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    if not agent_key.is_file():
        raise CommandError(f"--agent-key {agent_key}: no such file", EXIT_USAGE)

    async def run() -> None:
        async with AsyncAgent(addr, agent, agent_key) as signer:
            await bridge(addr, signer, task)

    asyncio.run(run())
