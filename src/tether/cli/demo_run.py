"""A part of ``tether demo``: unmodified programs (``tether run``) and dynamic credentials.

``tether run`` is run for real, as a user would run it: a child program that knows nothing of
Tether calls the demo's ``github`` stand-in through the run's sidecar, and the narration shows
that the child's environment never held the token. A dynamic credential is issued when the node
has a PostgreSQL engine (``TETHER_ENGINES_FILE``); ``make run`` needs none, so otherwise one line
says how to see it. The demo decides nothing itself: every answer comes from Tether.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from rich.markup import escape

from tether.cli.client import APIError, OperatorClient, secret_url
from tether.cli.demo_state import Upstream
from tether.cli.output import CommandError, out
from tether.errors import ConfigError
from tether.sdk import Agent

__all__ = ["CHILD_PROGRAM", "RUN_STEPS", "narrate_run"]

RUN_STEPS = 2
RUN_TIMEOUT_SECONDS = 90.0
GITHUB_SECRET = "prod/github/token"
#: The unmodified program: it reads the endpoint from its environment, calls it, and reports what
#: it got and what its environment held (to the demo, which checks it; never to the terminal).
CHILD_PROGRAM = """\
import json, os, urllib.request
url = os.environ["TETHER_GITHUB_URL"] + "/repos/acme/app/issues"
with urllib.request.urlopen(url, timeout=30) as answer:
    status, body = answer.status, json.load(answer)
try:
    with open("/proc/self/environ", "rb") as handle:
        proc = handle.read().decode("utf-8", "replace")
except OSError:
    proc = ""
print(json.dumps({"status": status, "debug_echo": body.get("debug_echo"),
                  "env": dict(os.environ), "proc_environ": proc}))
"""


def _step(number: int, text: str) -> None:
    out.print(f"[bold blue]\\[run {number}/{RUN_STEPS}][/] {text}")


def narrate_run(
    api: OperatorClient,
    bot: Agent,
    key_file: Path,
    github_value: str,
    upstream: Upstream,
    engines_file: Path | None,
) -> None:
    """``tether run`` around an unmodified child, then a dynamic credential (or how to get one).

    Raises :class:`CommandError` when ``tether run`` does not behave as documented.
    """
    out.print()
    out.print("[bold]Unmodified programs[/]: tools that read credentials from their environment.")
    _tether_run(api, key_file, github_value, upstream)
    _dynamic(api, bot, engines_file)


def _tether_run(api: OperatorClient, key_file: Path, github_value: str, upstream: Upstream) -> None:
    agents = api.get("/v1/agents")["agents"]
    agent_id = next((str(a["id"]) for a in agents if a.get("name") == "deploy-bot"), "")
    if not agent_id:
        raise CommandError("agent deploy-bot is not registered")
    # Unique per run, so that the run's task can be told from the demo's others.
    objective = f"list the open issues of acme/app (demo run {secrets.token_hex(4)})"
    command = [
        sys.executable,
        "-m",
        "tether",
        "run",
        "--addr",
        api.addr,
        "--agent",
        agent_id,
        "--agent-key",
        str(key_file),
        "--purpose",
        "deploy",
        "--objective",
        objective,
        "--secret",
        GITHUB_SECRET,
        "--destination",
        "github",
        "--ttl",
        "2m",
        "--",
        sys.executable,
        "-c",
        CHILD_PROGRAM,
    ]
    upstream.seen_token = False
    try:
        ran = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments, no shell
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandError(f"tether run did not finish: {type(exc).__name__}") from None
    if github_value in ran.stderr:
        raise CommandError("tether run wrote the token to its stderr; refusing to go on")
    if ran.returncode != 0:
        last = (ran.stderr.strip().splitlines() or ["(no message)"])[-1][:300]
        raise CommandError(f"tether run exited {ran.returncode}: {last}")
    try:
        report: dict[str, Any] = json.loads(ran.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise CommandError("the child of tether run did not report what it got") from None
    env: dict[str, str] = report.get("env") or {}
    proc = [item.partition("=")[0] for item in str(report.get("proc_environ") or "").split("\0") if item]
    # The whole report holds os.environ and /proc/self/environ: neither the token nor the agent's key
    # file may be in it, nor any Tether variable but the endpoint's.
    held = github_value in ran.stdout or str(key_file) in ran.stdout
    tether_vars = sorted({n for n in [*env, *proc] if n.startswith("TETHER_") and n != "TETHER_GITHUB_URL"})
    if held or tether_vars or report.get("status") != 200 or not upstream.seen_token:
        raise CommandError("tether run did not behave as documented (docs/run.md); refusing to go on")
    listed = api.get("/v1/tasks", params={"agent": agent_id, "limit": 1000}).get("items") or []
    ran_task: dict[str, Any] = next((t for t in listed if t.get("objective") == objective), {})
    if ran_task.get("status") != "completed":
        raise CommandError(f"the task of tether run is {ran_task.get('status')}, not completed after exit 0")
    _step(
        1,
        "Ran `tether run --agent …/deploy-bot --secret prod/github/token --destination github -- python -c "
        "<a script that knows nothing of Tether>`: it opened a task, served a sidecar on 127.0.0.1 and ran "
        "the child with TETHER_GITHUB_URL pointing at it. The child's plain GET reached the github "
        f"stand-in with the token injected by Tether (HTTP {report['status']}; the echo came back "
        f"{escape(repr(report.get('debug_echo')))}), and its environment held no secret: neither the "
        "token, the agent's key nor any TETHER_ variable but the endpoint, in os.environ or "
        f"/proc/self/environ ({len(env)} variables checked). The child exited 0, so task "
        f"{escape(str(ran_task.get('id')))} is {escape(str(ran_task.get('status')))}.",
    )


def _engine_secrets(engines_file: Path) -> list[str]:
    """The secrets a PostgreSQL engine serves, from the node's engines file (checked at start)."""
    from tether.engines.config import parse_engines

    try:
        configs = parse_engines(tomllib.loads(engines_file.read_text(encoding="utf-8")))
    except (OSError, ValueError, ConfigError):
        return []
    return [role.secret for config in configs for role in config.roles]


def _dynamic(api: OperatorClient, bot: Agent, engines_file: Path | None) -> None:
    served = _engine_secrets(engines_file) if engines_file is not None else []
    if not served:
        _step(
            2,
            "Dynamic credentials: this node has no PostgreSQL engine (make run needs none). To see one, "
            "start it with TETHER_ENGINES_FILE naming an engines file (docs/engines.md): a dynamic grant "
            "then creates a PostgreSQL role for the task alone, `tether run --postgres PATH -- psql …` "
            "hands it to a program as PG* variables, and ending the task drops the role.",
        )
        return
    for path in served:
        try:
            record: dict[str, Any] = api.get(secret_url(path))
        except APIError:
            continue
        _step(2, _issue_and_end(api, bot, path, record))
        return
    _step(
        2,
        f"Dynamic credentials: a PostgreSQL engine serves {escape(', '.join(served))}, but none of these "
        "secrets is written yet (docs/engines.md: write the admin DSN and the role's secret, then run "
        "again).",
    )


def _issue_and_end(api: OperatorClient, bot: Agent, path: str, record: dict[str, Any]) -> str:
    """One dynamic credential for a task of deploy-bot, then the task ended: what happened, in words
    (the password is never printed)."""
    purposes, destinations = record.get("purposes") or ["deploy"], record.get("destinations") or []
    task_body: dict[str, Any] = {
        "purpose": purposes[0],
        "objective": "read the app database for the demo",
        "sensitivity": record.get("sensitivity", "internal"),
        "secrets": [path],
        "destinations": destinations[:1],
        "ttl_seconds": 300,
    }
    opened = bot.request("POST", "/v1/tasks", json=task_body)
    if opened.status_code != 201:
        return f"Dynamic credentials for {escape(path)}: the task was not opened ({escape(_detail(opened))})."
    tid = opened.json()["id"]
    try:
        grant_body: dict[str, Any] = {"secret": path, "mode": "dynamic"}
        if destinations:
            grant_body["destination"] = destinations[0]
        granted = bot.request("POST", f"/v1/tasks/{tid}/grants", json=grant_body)
        if granted.status_code != 201:
            return (
                f"Dynamic credentials for {escape(path)}: the grant was refused ({escape(_detail(granted))})."
            )
        used = bot.request("POST", f"/v1/grants/{granted.json()['id']}/activate")
        if used.status_code != 200:
            return f"Dynamic credentials for {escape(path)}: activation failed ({escape(_detail(used))})."
        credential = used.json().get("credential") or {}
    finally:
        ended = bot.request("POST", f"/v1/tasks/{tid}/complete")
    leases = api.get("/v1/leases", params={"task": tid}).get("items") or []
    states = ", ".join(sorted({str(lease.get("state")) for lease in leases})) or "none"
    return (
        f"Dynamic credential: a dynamic grant for {escape(path)} made PostgreSQL role "
        f"{escape(str(credential.get('username')))} on {escape(str(credential.get('host')))}:"
        f"{escape(str(credential.get('port')))}/{escape(str(credential.get('database')))} "
        f"for task {tid} alone, "
        f"VALID UNTIL {escape(str(credential.get('expires_at')))} (its password went to the agent only, "
        f"not printed). Completing the task (HTTP {ended.status_code}) ended its lease ({escape(states)}): "
        "the role's sessions were terminated and the role dropped."
    )


def _detail(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    return f"HTTP {response.status_code}: {str(body.get('detail') or body.get('title'))[:200]}"
