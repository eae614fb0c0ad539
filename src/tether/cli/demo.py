"""``tether demo``: a dev node with a narrated example, what ``make run`` starts.

Everything the demo shows goes through the HTTP API with the admin token, as a user
would; the demo itself decides nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape

from tether.cli.client import APIError, OperatorClient, secret_url
from tether.cli.demo_governed import AGENTS_DIR, Governed, narrate_governed_path
from tether.cli.demo_state import DemoState, Upstream
from tether.cli.node import (
    configure_cli_logging,
    ensure_port_free,
    initialise,
    listen_address,
    run_until_stopped,
)
from tether.cli.output import CommandError, out
from tether.config import CONFIG_FILE, Settings

__all__ = ["DEMO_SECRET", "TOKEN_FILE", "run_demo"]

DEMO_SECRET = "demo/github/token"
DEMO_WRITER = "demo-writer"
DEMO_TRUST_DOMAIN = "acme.test"
TOKEN_FILE = "dev-root-token"
START_TIMEOUT_SECONDS = 15.0
_STEPS = 7


def _step(number: int, text: str) -> None:
    out.print(f"[bold cyan][{number}/{_STEPS}][/] {text}")


def _random_value() -> str:
    # Generated at run time: no secret value is ever a literal in the code.
    return "ghp_demo_" + secrets.token_urlsafe(27)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _root_token(data_dir: Path) -> str:
    """Initialise ``data_dir`` if it is new (saving the admin token for later runs), else
    read the saved token."""
    token_file = data_dir / TOKEN_FILE
    if not (data_dir / CONFIG_FILE).exists():
        outcome = initialise(data_dir, key_provider="unsafe-dev", trust_domain=DEMO_TRUST_DOMAIN)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(outcome.root_token + "\n")
        out.print(
            f"Initialised a dev data dir at {escape(str(data_dir))} "
            "(SQLite, [bold yellow]unsafe-dev[/] key provider). "
            f"The admin token is saved to {escape(str(token_file))} (mode 0600) "
            "so that later runs can show it again: a dev convenience only, never do this in production."
        )
        return outcome.root_token
    try:
        token = token_file.read_text(encoding="ascii").strip()
    except OSError:
        token = ""
    if not token:
        raise CommandError(
            f"{data_dir} is initialised but has no {TOKEN_FILE}: it was not created by `tether demo`; "
            "use another --data-dir"
        )
    return token


def _seed(
    addr: str, token: str, data_dir: Path, upstream: Upstream, engines_file: Path | None = None
) -> Governed:
    """The narrated example, over HTTP. Raises :class:`CommandError` if a step goes wrong."""
    with OperatorClient(addr, token) as api:
        operators = api.get("/v1/operators")["operators"]
        existing = next((op for op in operators if op["name"] == DEMO_WRITER), None)
        if existing is None:
            created = api.post("/v1/operators", json={"name": DEMO_WRITER, "role": "secret-writer"})
            _step(
                1,
                f"Created operator {DEMO_WRITER} (role secret-writer): it may write secrets, never read "
                f"their values nor manage operators. Its token, shown only this once: {created['token']}",
            )
        else:
            _step(1, f"Operator {DEMO_WRITER} (role secret-writer) exists already: kept as it is.")

        try:
            before: dict[str, Any] | None = api.get(secret_url(DEMO_SECRET))
        except APIError as exc:
            if exc.status != 404:
                raise
            before = None
        if before is None:
            written = api.put(
                secret_url(DEMO_SECRET),
                json={
                    "value": _random_value(),
                    "sensitivity": "confidential",
                    "purposes": ["ci"],
                    "destinations": ["github"],
                    "owner": "demo",
                },
            )
            _step(
                2,
                f"Wrote {DEMO_SECRET} version {written['current_version']} (confidential, purpose ci, "
                "destination github) with a value generated at random just now; it is encrypted before "
                "it reaches the store and is write-only from here on.",
            )
        else:
            # A re-run: the tour writes its own secret again, but leaves its metadata as it is.
            written = api.post(secret_url(DEMO_SECRET, ":rotate"), json={"value": _random_value()})
            _step(
                2,
                f"{DEMO_SECRET} exists already: its metadata is kept as it is "
                f"({escape(str(before.get('sensitivity')))}); wrote version {written['current_version']} "
                "with a value generated at random just now (each run of the tour writes the demo's own "
                "secret). It is encrypted before it reaches the store and is write-only from here on.",
            )

        shown = api.get(secret_url(DEMO_SECRET))
        _check_no_value(shown)
        _step(
            3,
            f"Read {DEMO_SECRET} back: metadata and {len(shown['versions'])} version(s), but no value. "
            "Operators never read values; agents use them through a task, decided by policy.",
        )

        rotated = api.post(secret_url(DEMO_SECRET, ":rotate"), json={"value": _random_value()})
        _step(
            4,
            f"Rotated {DEMO_SECRET}: version {rotated['current_version']} is current, with another "
            "random value; metadata is kept and older versions stay for audit.",
        )

        keys = api.post("/v1/sys/keys/rotate", timeout=600.0)
        shown = api.get(secret_url(DEMO_SECRET))
        _check_no_value(shown)
        wrapping = sorted({v["kek_version"] for v in shown["versions"]})
        if wrapping != [keys["kek_version"]]:
            raise CommandError(f"after the key rotation the versions are wrapped by KEKs {wrapping}")
        _step(
            5,
            f"Rotated the keyring: KEK v{keys['kek_version']} is active and {keys['rewrapped']} data key(s) "
            f"were rewrapped, so all {len(shown['versions'])} versions of {DEMO_SECRET} are now under "
            f"KEK v{keys['kek_version']}; the values themselves did not change.",
        )

        api.post("/v1/sys/seal")
        try:
            api.get(secret_url(DEMO_SECRET))
        except APIError as exc:
            if exc.status != 503:
                raise
            _step(
                6,
                f"Sealed Tether: its keys left memory, so reading {DEMO_SECRET} now answers "
                f"HTTP {exc.status} ({escape(exc.detail)}).",
            )
        else:
            raise CommandError("reading a secret while sealed did not fail")

        api.post("/v1/sys/unseal")
        _step(
            7,
            "Unsealed with the node's key provider (here the dev key file; in production "
            "TETHER_ROOT_KEY or a root key file).",
        )
        out.print()
        out.print(
            "[bold]The governed path[/]: an agent uses secrets only through a task, decided at every use."
        )
        return narrate_governed_path(api, data_dir, upstream, engines_file)


def _check_no_value(body: dict[str, Any]) -> None:
    versions = body.get("versions") or []
    if "value" in body or any("value" in v for v in versions):
        raise CommandError("the API answered a metadata read with a value field; refusing to go on")


def _command() -> str:
    """How to call this CLI again: ``tether`` if it is on PATH, else the script that ran."""
    script = sys.argv[0] if sys.argv else ""
    if shutil.which("tether") or not script or script.endswith(".py"):
        return "tether"
    return script


def _next_steps(addr: str, token: str, data_dir: Path, governed: Governed, *, keep_serving: bool) -> None:
    tether = escape(_command())
    out.print()
    out.print(f"[bold green]Tether is running at {addr}[/] (data: {escape(str(data_dir))}).")
    out.print(f"Admin token: [bold]{token}[/]  (dev only: also in {escape(str(data_dir / TOKEN_FILE))})")
    out.print(f"Web console: [bold]{addr}/ui[/]  (sign in with the admin token above)")
    out.print("In another terminal:")
    out.print(f"  export TETHER_ADDR={addr} TETHER_TOKEN={token}")
    out.print(f"  {tether} secret list")
    out.print(f"  {tether} secret show {DEMO_SECRET}")
    out.print(f"  {tether} keys status")
    out.print(f"  {tether} audit query --kind 'secret.*'   # every write above, values as fingerprints only")
    out.print(f"  {tether} audit verify")
    out.print(f"  {tether} task list            # the demo's tasks and their states, newest first")
    out.print(f"  {tether} reach secret prod/github/token   # who else could use it, and how")
    out.print(f"  {tether} compliance report --since 1d   # controls mapped to OWASP and NIST, with evidence")
    key = escape(str(data_dir / AGENTS_DIR / "deploy-bot.jwk"))
    out.print(  # an unmodified program using the GitHub token without ever holding it (docs/run.md)
        f"  {tether} run --agent spiffe://{DEMO_TRUST_DOMAIN}/agent/deploy-bot --agent-key {key} "
        "--purpose deploy --objective 'list issues' --secret prod/github/token --destination github "
        """-- sh -c 'curl -sS "$TETHER_GITHUB_URL/repos/acme/app/issues"'"""
    )
    if governed.approval_id:
        # Approved, then voided when its task was revoked: an approval lives no longer than its task.
        out.print(f"  {tether} approval list --status approved --status voided")
        out.print(
            f"  {tether} approval show {governed.approval_id}   # the demo's approval, and what became of it"
        )
    else:
        out.print(f"  {tether} approval list --status pending --status approved --status voided")
    out.print(f"  {tether} policy show")
    out.print(f"  curl {addr}/v1/sys/health")
    if keep_serving:
        out.print("Press Ctrl-C to stop.")
    else:
        out.print("Stopping now (--exit-after-seed).")


async def _serve_and_seed(
    settings: Settings, host: str, port: int, token: str, *, exit_after_seed: bool
) -> None:
    from tether.api.server import serve_broker, with_public_url
    from tether.broker import Broker

    broker = Broker.from_settings(with_public_url(settings, host, port))
    try:
        await broker.start()
        started = asyncio.Event()
        server = asyncio.create_task(serve_broker(broker, host, port, started=started, access_log=False))
        try:
            waiter = asyncio.create_task(started.wait())
            await asyncio.wait({server, waiter}, timeout=START_TIMEOUT_SECONDS, return_when="FIRST_COMPLETED")
            waiter.cancel()
            if not started.is_set():
                if server.done():
                    server.result()  # re-raise why it stopped
                raise CommandError(f"the HTTP server did not start on {host}:{port}")
            addr = f"http://{_url_host(host)}:{port}"
            # The github stand-in serves as long as Tether does (the README's egress step uses it),
            # on the port of the previous run when it is free.
            with Upstream(DemoState.load(settings.data_dir).upstream_port) as upstream:
                governed = await asyncio.to_thread(
                    _seed, addr, token, settings.data_dir, upstream, settings.engines_file
                )
                _next_steps(addr, token, settings.data_dir, governed, keep_serving=not exit_after_seed)
                if not exit_after_seed:
                    await server
        finally:
            if not server.done():
                server.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await server
    finally:
        await broker.close()


def run_demo(data_dir: Path, listen: str, *, exit_after_seed: bool) -> None:
    host, port = listen_address(listen)
    data_dir = data_dir.expanduser().resolve()
    ensure_port_free(host, port)
    configure_cli_logging()
    token = _root_token(data_dir)
    settings = Settings.load(data_dir)
    run_until_stopped(
        _serve_and_seed(settings, host, port, token, exit_after_seed=exit_after_seed), f"{host}:{port}"
    )
