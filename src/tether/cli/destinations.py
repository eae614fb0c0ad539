"""``tether destination``: register the upstreams that egress forwards to, and how a secret is
injected into calls to them (a header template, HTTP basic auth, or a query parameter).

Only the secret's *path* is ever given here: the value stays in Tether.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tether.cli.client import DEFAULT_ADDR, check_secret_path, url_segment
from tether.cli.common import Addr, Json, Token, client
from tether.cli.output import EXIT_USAGE, CommandError, format_time, out, print_json, print_table

__all__ = ["destination_app"]

destination_app = typer.Typer(
    help="Destinations: upstreams that agents reach through Tether, with a secret injected.",
    no_args_is_help=True,
)


def _split_injection(value: str, option: str) -> tuple[str, str]:
    """``NAME=TEMPLATE`` (or a bare ``NAME``: the template is then ``{secret}``)."""
    name, sep, template = value.partition("=")
    if not name:
        raise CommandError(
            f"{option} needs NAME=TEMPLATE, e.g. 'Authorization=Bearer {{secret}}'", EXIT_USAGE
        )
    return name, template if sep else "{secret}"


def _injection(header: str | None, basic: str | None, query: str | None) -> dict[str, str]:
    given = [v is not None for v in (header, basic, query)]
    if sum(given) != 1:
        raise CommandError(
            "give exactly one of --inject-header, --inject-basic and --inject-query", EXIT_USAGE
        )
    if header is not None:
        name, template = _split_injection(header, "--inject-header")
        return {"type": "header", "name": name, "template": template}
    if query is not None:
        name, template = _split_injection(query, "--inject-query")
        return {"type": "query", "name": name, "template": template}
    assert basic is not None
    return {"type": "basic", "name": basic}


def _describe_injection(inject: dict[str, Any]) -> str:
    kind = inject.get("type")
    if kind == "basic":
        return f"basic auth, user {inject.get('name')}"
    if kind == "query":
        return f"query {inject.get('name')}={inject.get('template')}"
    return f"header {inject.get('name')}: {inject.get('template')}"


def _print_destination(d: dict[str, Any]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, shown in (
        ("name", d["name"]),
        ("base url", d["base_url"]),
        ("host", d.get("host") or "-"),
        ("secret", d["secret"]),
        ("inject", _describe_injection(d.get("inject") or {})),
        ("methods", ", ".join(d.get("methods") or [])),
        ("path prefixes", ", ".join(d.get("path_prefixes") or [])),
        ("timeout", f"{d.get('timeout_seconds')} s"),
        ("max body", f"{d.get('max_body_bytes')} bytes"),
        ("max response", f"{d.get('max_response_bytes')} bytes"),
        ("created", format_time(d.get("created_at"))),
        ("created by", d.get("created_by") or "-"),
    ):
        grid.add_row(label, escape(str(shown)))
    out.print(grid)


@destination_app.command("add")
def destination_add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Destination name (lowercase), e.g. github.")],
    base_url: Annotated[
        str,
        typer.Option(
            "--base-url", metavar="URL", help="The upstream's base URL: https (http only for loopback)."
        ),
    ],
    secret: Annotated[
        str, typer.Option("--secret", metavar="PATH", help="The path of the secret to inject (must exist).")
    ],
    inject_header: Annotated[
        str | None,
        typer.Option(
            "--inject-header",
            metavar="NAME=TEMPLATE",
            help="Inject into header NAME; TEMPLATE holds {secret} once, "
            "e.g. 'Authorization=Bearer {secret}'.",
            show_default=False,
        ),
    ] = None,
    inject_basic: Annotated[
        str | None,
        typer.Option(
            "--inject-basic",
            metavar="USERNAME",
            help="HTTP basic auth as USERNAME, with the secret as the password.",
            show_default=False,
        ),
    ] = None,
    inject_query: Annotated[
        str | None,
        typer.Option(
            "--inject-query",
            metavar="NAME=TEMPLATE",
            help="Inject into query parameter NAME, e.g. 'api_key={secret}'.",
            show_default=False,
        ),
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option("--method", metavar="METHOD", help="An allowed HTTP method (repeatable; default GET)."),
    ] = None,
    path_prefix: Annotated[
        list[str] | None,
        typer.Option("--path-prefix", metavar="PATH", help="An allowed path prefix (repeatable; default /)."),
    ] = None,
    timeout_seconds: Annotated[
        int | None, typer.Option("--timeout-seconds", min=1, max=300, help="Upstream timeout (default 30).")
    ] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option("--max-body-bytes", min=1, help="Largest request body (default 1 MiB).")
    ] = None,
    max_response_bytes: Annotated[
        int | None,
        typer.Option("--max-response-bytes", min=1, help="Largest response body (default 8 MiB)."),
    ] = None,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Register an upstream. Agents reach it through Tether with a grant; the secret is injected
    into each call and never seen by the agent.

    Example: `tether destination add github --base-url https://api.github.com
    --secret prod/github/token --inject-header 'Authorization=Bearer {secret}'
    --method GET --method POST --path-prefix /repos`
    """
    body: dict[str, Any] = {
        "name": name,
        "base_url": base_url,
        "secret": check_secret_path(secret),
        "inject": _injection(inject_header, inject_basic, inject_query),
    }
    if method:
        body["methods"] = sorted({m.strip().upper() for m in method})
    if path_prefix:
        body["path_prefixes"] = path_prefix
    for key, value in (
        ("timeout_seconds", timeout_seconds),
        ("max_body_bytes", max_body_bytes),
        ("max_response_bytes", max_response_bytes),
    ):
        if value is not None:
            body[key] = value
    with client(addr, token) as api:
        result = api.post("/v1/destinations", json=body)
    if json_output:
        print_json(result)
        return
    out.print(
        f"Added destination {escape(result['name'])}: {escape(result['base_url'])} "
        f"({escape(_describe_injection(result['inject']))} from {escape(result['secret'])})."
    )


@destination_app.command("list")
def destination_list(addr: Addr = DEFAULT_ADDR, token: Token = None, json_output: Json = False) -> None:
    """Every destination."""
    with client(addr, token) as api:
        result = api.get("/v1/destinations")
    if json_output:
        print_json(result)
        return
    destinations = result["destinations"]
    if not destinations:
        out.print("No destinations.")
        return
    print_table(
        None,
        ["NAME", "BASE URL", "SECRET", "INJECT", "METHODS", "PATH PREFIXES"],
        [
            (
                d["name"],
                d["base_url"],
                d["secret"],
                _describe_injection(d.get("inject") or {}),
                ",".join(d.get("methods") or []),
                ",".join(d.get("path_prefixes") or []),
            )
            for d in destinations
        ],
    )


@destination_app.command("show")
def destination_show(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Destination name.")],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """One destination: where it goes, what is injected, what is allowed."""
    with client(addr, token) as api:
        result = api.get(f"/v1/destinations/{url_segment(name)}")
    if json_output:
        print_json(result)
        return
    _print_destination(result)


@destination_app.command("remove")
def destination_remove(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Destination name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
) -> None:
    """Remove a destination: calls through it stop."""
    url = f"/v1/destinations/{url_segment(name)}"
    if not yes:
        if not sys.stdin.isatty():
            raise CommandError("refusing without confirmation: pass --yes", EXIT_USAGE)
        typer.confirm(f"Remove destination {name}?", abort=True)
    with client(addr, token) as api:
        api.delete(url)
    out.print(f"Removed destination {escape(name)}.")
