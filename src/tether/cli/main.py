"""The ``tether`` command line: parse, call the broker or the API, render.

Output is for people by default and for machines with ``--json``. Every failure is
one line on stderr starting with ``error:``; the exit code is 1 for runtime and API
errors and 2 for usage errors. No command ever prints a secret value.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from tether import __version__
from tether.cli.agents import agent_app, issuer_app, keygen
from tether.cli.audit import audit_app
from tether.cli.client import (
    DEFAULT_ADDR,
    check_secret_path,
    check_secret_prefix,
    secret_url,
    url_segment,
)
from tether.cli.common import (
    Addr,
    DataDir,
    FromFile,
    Json,
    Listen,
    Stdin,
    Token,
    client,
    read_value,
)
from tether.cli.compliance import compliance_app
from tether.cli.destinations import destination_app
from tether.cli.help import readable_help
from tether.cli.leases import lease_app
from tether.cli.mcp import mcp_app, mcp_server_app
from tether.cli.output import (
    EXIT_FAILURE,
    EXIT_USAGE,
    CommandError,
    err,
    format_time,
    out,
    print_error,
    print_json,
    print_table,
    yes_no,
)
from tether.cli.policy import policy_app
from tether.cli.reach import reach_app
from tether.cli.run import run as run_command
from tether.cli.scan import scan_command
from tether.cli.secret_update import secret_update
from tether.cli.signals import signals_app
from tether.cli.tasks import approval_app, revoke, task_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="tether",
    help="Tether: a secret-governance broker for AI agents.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
keys_app = typer.Typer(help="The keyring: status and rotation.", no_args_is_help=True)
sys_app = typer.Typer(help="Operations: health, seal, unseal.", no_args_is_help=True)
secret_app = typer.Typer(help="Secrets: write-only values, readable metadata.", no_args_is_help=True)
operator_app = typer.Typer(help="Operators and their bearer tokens.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(sys_app, name="sys")
app.add_typer(secret_app, name="secret")
app.add_typer(operator_app, name="operator")
app.add_typer(audit_app, name="audit")
app.add_typer(agent_app, name="agent")
app.add_typer(issuer_app, name="issuer")
app.add_typer(destination_app, name="destination")
app.add_typer(policy_app, name="policy")
app.add_typer(task_app, name="task")
app.add_typer(approval_app, name="approval")
app.add_typer(mcp_server_app, name="mcp-server")
app.add_typer(mcp_app, name="mcp")
app.add_typer(lease_app, name="lease")
app.add_typer(reach_app, name="reach")
app.add_typer(compliance_app, name="compliance")
app.add_typer(signals_app, name="signals")
app.command("revoke")(revoke)
app.command("scan")(scan_command)
app.command("run", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})(
    run_command
)
app.command("keygen")(keygen)
secret_app.command("update")(secret_update)


class SensitivityChoice(StrEnum):
    public = "public"
    internal = "internal"
    confidential = "confidential"
    restricted = "restricted"


class RoleChoice(StrEnum):
    admin = "admin"
    secret_writer = "secret-writer"
    policy_author = "policy-author"
    approver = "approver"
    auditor = "auditor"
    scanner = "scanner"


class LogFormatChoice(StrEnum):
    text = "text"
    json = "json"


class KeyProviderChoice(StrEnum):
    unsafe_dev = "unsafe-dev"
    env = "env"
    file = "file"


def _version(value: bool) -> None:
    if value:
        out.print(f"tether {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Tether: a secret-governance broker for AI agents."""


# -- node commands (act on a data directory) ----------------------------------------------


@app.command()
def init(
    data_dir: DataDir,
    json_output: Json = False,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="sqlite:///PATH or postgresql://... (default: SQLite in the data dir).", show_default=False
        ),
    ] = None,
    pg_schema: Annotated[str | None, typer.Option(help="PostgreSQL schema for Tether's tables.")] = None,
    key_provider: Annotated[
        KeyProviderChoice | None,
        typer.Option(help="Where the root key comes from (default: unsafe-dev).", show_default=False),
    ] = None,
    root_key_file: Annotated[
        Path | None, typer.Option(help="Root key file (implies --key-provider file).", dir_okay=False)
    ] = None,
    trust_domain: Annotated[str | None, typer.Option(help="This deployment's trust domain.")] = None,
) -> None:
    """Initialise a data dir: settings, schema, keyring and the first admin token (shown once)."""
    from tether.cli.node import configure_cli_logging, initialise

    configure_cli_logging()
    provider = key_provider.value if key_provider is not None else None
    if root_key_file is not None and provider is None:
        provider = KeyProviderChoice.file.value
    outcome = initialise(
        data_dir,
        database_url=database_url,
        pg_schema=pg_schema,
        key_provider=provider,
        root_key_file=root_key_file.expanduser().resolve() if root_key_file is not None else None,
        trust_domain=trust_domain,
    )
    if json_output:
        print_json(
            {
                "root_token": outcome.root_token,
                "data_dir": str(outcome.data_dir),
                "key_provider": outcome.key_provider,
                "storage": outcome.storage,
            }
        )
        return
    out.print(
        f"Initialised Tether in {escape(str(outcome.data_dir))} "
        f"(storage: {outcome.storage}, key provider: {outcome.key_provider})."
    )
    out.print()
    out.print(f"Admin token: [bold]{outcome.root_token}[/]")
    out.print(
        "[bold yellow]Store it now: it is shown only once.[/] "
        "Tether keeps only its hash and cannot show it again."
    )
    out.print(f"  export TETHER_TOKEN={outcome.root_token}")
    out.print(f"Then start the server:  tether server --data-dir {escape(str(outcome.data_dir))}")


@app.command()
def server(
    data_dir: DataDir,
    listen: Listen = "127.0.0.1:8420",
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help=(
                "Worker processes on the one socket (default: the workers setting, else one per core "
                "it may use)."
            ),
            show_default=False,
        ),
    ] = None,
    log_format: Annotated[
        LogFormatChoice | None,
        typer.Option(
            help="Log lines as text or JSON, each with its request id (default: the log_format setting).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a node: migrate, unseal with the configured key provider, serve HTTP until Ctrl-C."""
    from tether.cli.node import serve

    serve(data_dir, listen, workers, log_format.value if log_format is not None else None)


@app.command()
def migrate(data_dir: DataDir, json_output: Json = False) -> None:
    """Bring the store's schema to the newest revision."""
    from tether.cli.node import configure_cli_logging
    from tether.cli.node import migrate as run_migrate

    configure_cli_logging()
    revision, backend = run_migrate(data_dir)
    if json_output:
        print_json({"revision": revision, "storage": backend})
        return
    out.print(f"Schema is at revision {revision} (newest; storage: {backend}).")


@app.command()
def demo(
    data_dir: DataDir,
    listen: Listen = "127.0.0.1:8420",
    exit_after_seed: Annotated[
        bool, typer.Option("--exit-after-seed", help="Stop once the example is seeded (for tests).")
    ] = False,
) -> None:
    """A dev node with a narrated example (what `make run` starts). Development only."""
    from tether.cli.demo import run_demo

    run_demo(data_dir, listen, exit_after_seed=exit_after_seed)


# -- keys -------------------------------------------------------------------------------


@keys_app.command("rotate")
def keys_rotate(addr: Addr = DEFAULT_ADDR, token: Token = None, json_output: Json = False) -> None:
    """Add a key-encryption-key version and rewrap every data key under it."""
    with client(addr, token) as api, err.status("Rotating the keyring and rewrapping every data key…"):
        result = api.post("/v1/sys/keys/rotate", timeout=3600.0)
    if json_output:
        print_json(result)
        return
    out.print(
        f"Keyring rotated: KEK v{result['kek_version']} is active; "
        f"{result['rewrapped']} data key(s) rewrapped. Values did not change."
    )


@keys_app.command("rotate-signing")
def keys_rotate_signing(addr: Addr = DEFAULT_ADDR, token: Token = None, json_output: Json = False) -> None:
    """A new Ed25519 key for signing agents' access tokens; the previous one keeps verifying them."""
    with client(addr, token) as api:
        result = api.post("/v1/sys/token-keys/rotate")
    if json_output:
        print_json(result)
        return
    out.print(
        f"Token-signing key rotated: new kid {result['kid']}; earlier tokens stay valid until they expire."
    )


@keys_app.command("status")
def keys_status(addr: Addr = DEFAULT_ADDR, token: Token = None, json_output: Json = False) -> None:
    """The keyring's versions (never the keys)."""
    with client(addr, token) as api:
        result = api.get("/v1/sys/keys")
    if json_output:
        print_json(result)
        return
    out.print(f"Active KEK: v{result['active']} (key provider: {result['provider']})")
    print_table(
        None,
        ["KEK", "CREATED", "ACTIVE"],
        [
            (f"v{k['version']}", format_time(k["created_at"]), yes_no(k["version"] == result["active"]))
            for k in result["versions"]
        ],
    )


# -- sys --------------------------------------------------------------------------------


@sys_app.command("health")
def sys_health(addr: Addr = DEFAULT_ADDR, json_output: Json = False) -> None:
    """Liveness and seal state (no token needed). Exits 1 when the node is unavailable."""
    with client(addr, None) as api:
        result = api.get("/v1/sys/health", auth=False, accept_status=frozenset({503}))
    if json_output:
        print_json(result)
    else:
        storage = f"{result['storage']} ({'reachable' if result['storage_ok'] else 'UNREACHABLE'})"
        out.print(
            f"{result['status']}: {'sealed' if result['sealed'] else 'unsealed'}, storage {storage}, "
            f"version {result['version']}, node {result['node_id']}"
        )
    if result.get("status") == "unavailable":
        raise typer.Exit(EXIT_FAILURE)


@sys_app.command("seal")
def sys_seal(addr: Addr = DEFAULT_ADDR, token: Token = None, json_output: Json = False) -> None:
    """Drop every key from memory: no secret is served until unsealed."""
    with client(addr, token) as api:
        result = api.post("/v1/sys/seal")
    if json_output:
        print_json(result)
        return
    out.print("Sealed: no secret is served until `tether sys unseal`.")


@sys_app.command("unseal")
def sys_unseal(
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    root_key_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the base64 root key; without it the node's key provider is used.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    json_output: Json = False,
) -> None:
    """Open the keyring again."""
    body: dict[str, str] | None = None
    if root_key_file is not None:
        try:
            body = {"root_key": root_key_file.read_text(encoding="ascii").strip()}
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
            raise CommandError(f"cannot read {root_key_file}: {reason}") from None
    with client(addr, token) as api:
        result = api.post("/v1/sys/unseal", json=body)
    if json_output:
        print_json(result)
        return
    out.print("Unsealed: secrets are served again.")


# -- secrets ----------------------------------------------------------------------------


def _print_secret_written(result: dict[str, Any], verb: str) -> None:
    out.print(f"{verb} {escape(result['path'])}: version {result['current_version']} is current.")


@secret_app.command("put")
def secret_put(
    path: Annotated[str, typer.Argument(metavar="PATH", help="Secret path, e.g. prod/github/token.")],
    sensitivity: Annotated[
        SensitivityChoice | None,
        typer.Option(help="How much harm a leak does (default: confidential).", show_default=False),
    ] = None,
    purpose: Annotated[
        list[str] | None,
        typer.Option("--purpose", metavar="PURPOSE", help="A purpose it may serve (repeatable)."),
    ] = None,
    destination: Annotated[
        list[str] | None,
        typer.Option("--destination", metavar="DESTINATION", help="A destination it may reach (repeatable)."),
    ] = None,
    owner: Annotated[str | None, typer.Option(help="Who owns it.")] = None,
    rotation_period_seconds: Annotated[
        int | None, typer.Option(help="How often it should be rotated, in seconds.")
    ] = None,
    cas: Annotated[
        int | None,
        typer.Option(help="Check-and-set: the version expected to be current (0: must not exist)."),
    ] = None,
    from_file: FromFile = None,
    stdin: Stdin = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Write a new version of a secret, with its metadata.

    The value comes from --from-file, --stdin, or a hidden prompt; one trailing newline is
    removed. There is deliberately no --value option: a value on the command line would land
    in your shell history and in the process list.
    """
    check_secret_path(path)
    value = read_value(from_file, stdin)
    body: dict[str, Any] = {"value": value}
    optional = {
        "sensitivity": sensitivity.value if sensitivity is not None else None,
        "purposes": purpose,
        "destinations": destination,
        "owner": owner,
        "rotation_period_seconds": rotation_period_seconds,
        "cas": cas,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    with client(addr, token) as api:
        result = api.put(secret_url(path), json=body)
    if json_output:
        print_json(result)
        return
    _print_secret_written(result, "Created" if result["current_version"] == 1 else "Wrote")


@secret_app.command("rotate")
def secret_rotate(
    path: Annotated[str, typer.Argument(metavar="PATH", help="Secret path.")],
    from_file: FromFile = None,
    stdin: Stdin = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Write a new value for an existing secret; its metadata is kept.

    The value comes from --from-file, --stdin, or a hidden prompt (no --value option, by design).
    """
    check_secret_path(path)
    value = read_value(from_file, stdin)
    with client(addr, token) as api:
        result = api.post(secret_url(path, ":rotate"), json={"value": value})
    if json_output:
        print_json(result)
        return
    _print_secret_written(result, "Rotated")


@secret_app.command("show")
def secret_show(
    path: Annotated[str, typer.Argument(metavar="PATH", help="Secret path.")],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """A secret's metadata and versions (never its value)."""
    check_secret_path(path)
    with client(addr, token) as api:
        result = api.get(secret_url(path))
    if json_output:
        print_json(result)
        return
    period = result["rotation_period_seconds"]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, shown in (
        ("path", result["path"]),
        ("sensitivity", result["sensitivity"]),
        ("purposes", ", ".join(result["purposes"]) or "-"),
        ("destinations", ", ".join(result["destinations"]) or "-"),
        ("owner", result["owner"] or "-"),
        ("rotation", f"every {period} s (due: {yes_no(result['rotation_due'])})" if period else "-"),
        ("current version", str(result["current_version"])),
        ("created", format_time(result["created_at"])),
        ("updated", format_time(result["updated_at"])),
    ):
        grid.add_row(label, escape(str(shown)))
    out.print(grid)
    print_table(
        "Versions",
        ["VERSION", "CREATED", "CREATED BY", "KEK"],
        [
            (v["version"], format_time(v["created_at"]), v["created_by"], f"v{v['kek_version']}")
            for v in result.get("versions") or []
        ],
    )


@secret_app.command("list")
def secret_list(
    prefix: Annotated[str, typer.Argument(metavar="PREFIX", help="Only paths starting with this.")] = "",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Secrets per page.")] = 100,
    after: Annotated[str | None, typer.Option(help="Start after this path (paging).")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow every page.")] = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Secrets in path order, a page at a time."""
    check_secret_prefix(prefix)
    if after is not None:
        check_secret_path(after)
    items: list[dict[str, Any]] = []
    next_after = after
    with client(addr, token) as api:
        while True:
            params: dict[str, Any] = {"prefix": prefix, "limit": limit}
            if next_after is not None:
                params["after"] = next_after
            page = api.get("/v1/secrets", params=params)
            items.extend(page["secrets"])
            next_after = page.get("next_after")
            if not all_pages or next_after is None:
                break
    if json_output:
        print_json({"secrets": items, "next_after": next_after})
        return
    if not items:
        out.print(f"No secrets under {escape(repr(prefix))}." if prefix else "No secrets.")
        return
    print_table(
        None,
        ["PATH", "SENSITIVITY", "VERSION", "PURPOSES", "DESTINATIONS", "UPDATED", "ROTATION DUE"],
        [
            (
                s["path"],
                s["sensitivity"],
                s["current_version"],
                ", ".join(s["purposes"]),
                ", ".join(s["destinations"]),
                format_time(s["updated_at"]),
                yes_no(s["rotation_due"]),
            )
            for s in items
        ],
    )
    if next_after is not None:
        out.print(f"More secrets follow: pass --all, or --after {escape(next_after)}.")


@secret_app.command("delete")
def secret_delete(
    path: Annotated[str, typer.Argument(metavar="PATH", help="Secret path.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
) -> None:
    """Delete a secret: it disappears from reads; its versions are kept."""
    check_secret_path(path)
    if not yes:
        if not sys.stdin.isatty():
            raise CommandError("refusing to delete without confirmation: pass --yes", EXIT_USAGE)
        typer.confirm(f"Delete secret {path}?", abort=True)
    with client(addr, token) as api:
        api.delete(secret_url(path))
    out.print(f"Deleted {escape(path)}.")


# -- operators --------------------------------------------------------------------------


def _operator_row(op: dict[str, Any]) -> tuple[str, ...]:
    return (
        op["name"],
        op["role"],
        op["id"],
        format_time(op["created_at"]),
        op["created_by"],
        format_time(op["revoked_at"]) or "-",
    )


_OPERATOR_COLUMNS = ["NAME", "ROLE", "ID", "CREATED", "CREATED BY", "REVOKED"]


@operator_app.command("create")
def operator_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Operator name (lowercase).")],
    role: Annotated[RoleChoice, typer.Option(help="What the operator may do.", show_default=False)],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Create an operator and print its token, once."""
    with client(addr, token) as api:
        result = api.post("/v1/operators", json={"name": name, "role": role.value})
    if json_output:
        print_json(result)
        return
    out.print(f"Created operator {escape(result['name'])} (role {result['role']}, id {result['id']}).")
    out.print(f"Token: [bold]{result['token']}[/]")
    out.print("[bold yellow]Store it now: it is shown only once.[/] Hand it over through a safe channel.")


@operator_app.command("list")
def operator_list(addr: Addr = DEFAULT_ADDR, token: Token = None, json_output: Json = False) -> None:
    """Every operator, active and revoked (never their tokens)."""
    with client(addr, token) as api:
        result = api.get("/v1/operators")
    if json_output:
        print_json(result)
        return
    print_table(None, _OPERATOR_COLUMNS, [_operator_row(op) for op in result["operators"]])


@operator_app.command("revoke")
def operator_revoke(
    name_or_id: Annotated[str, typer.Argument(metavar="NAME_OR_ID", help="Operator name or id.")],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Revoke an operator's token at once."""
    with client(addr, token) as api:
        result = api.post(f"/v1/operators/{url_segment(name_or_id)}/revoke")
    if json_output:
        print_json(result)
        return
    out.print(
        f"Revoked operator {escape(result['name'])} ({result['id']}) at {format_time(result['revoked_at'])}."
    )


@operator_app.command("whoami")
def operator_whoami(addr: Addr = DEFAULT_ADDR, token: Token = None, json_output: Json = False) -> None:
    """The operator behind the token in use."""
    with client(addr, token) as api:
        result = api.get("/v1/operators/me")
    if json_output:
        print_json(result)
        return
    out.print(f"{escape(result['name'])} (role {result['role']}, id {result['id']})")


# -- the edge ---------------------------------------------------------------------------


def _exit(message: str, code: int) -> NoReturn:
    print_error(message)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run a command and turn every failure into one ``error:`` line."""
    from tether.errors import TetherError

    command = readable_help(typer.main.get_command(app))
    try:
        result = command.main(args=argv, prog_name="tether", standalone_mode=False)
    except CommandError as exc:
        _exit(str(exc), exc.exit_code)
    except TetherError as exc:
        _exit(str(exc), EXIT_FAILURE)
    except typer.TyperException as exc:  # usage errors (exit code 2) and other parsing failures
        message = exc.format_message()
        if not message.strip():  # `no_args_is_help`: the help was printed already
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        hint = (
            f" (see `{ctx.command_path} --help`)" if ctx is not None and exc.exit_code == EXIT_USAGE else ""
        )
        _exit(message + hint, exc.exit_code)
    except typer.Abort:
        _exit("aborted", EXIT_FAILURE)
    except KeyboardInterrupt:
        _exit("interrupted", 130)
    except ModuleNotFoundError as exc:  # a command's lazy import of a module of an extra
        from tether._extras import missing_extra_message

        args = sys.argv[1:] if argv is None else argv
        extra = missing_extra_message(exc, next((a for a in args if not a.startswith("-")), None))
        if extra is None and os.environ.get("TETHER_DEBUG"):
            raise
        unexpected = f"unexpected {type(exc).__name__}; run with TETHER_DEBUG=1 for a traceback"
        _exit(extra or unexpected, EXIT_FAILURE)
    except Exception as exc:
        if os.environ.get("TETHER_DEBUG"):
            raise
        # The class name only: exception text from deep inside may quote data.
        _exit(f"unexpected {type(exc).__name__}; run with TETHER_DEBUG=1 for a traceback", EXIT_FAILURE)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
