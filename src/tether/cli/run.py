"""``tether run``: a task around an unmodified program.

    tether run --agent spiffe://acme.test/agent/ci --agent-key ci.jwk \\
        --purpose deploy --objective "label release issues" \\
        --secret prod/github/token --destination github --ttl 10m \\
        --env GITHUB_API_URL=github -- gh issue list

opens a task, issues an ``inject`` grant per destination, serves a loopback sidecar that forwards
the child's requests to Tether's egress (:mod:`tether.sdk.sidecar`), runs the child with the
endpoints in its environment, and ends the task when the child exits: completed on exit 0, failed
on another exit code, revoked when the child or ``tether run`` was ended by a signal. A
``--postgres`` secret gets a ``dynamic`` grant whose short-lived credential goes to the child as
``PG*`` variables (the one documented case where the child holds a credential).

Everything that can be refused is refused before the child starts, with one line and a non-zero
exit: no command, a bad option, an unknown secret or destination, a denied task or grant.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from tether.cli.client import DEFAULT_ADDR
from tether.cli.common import Addr
from tether.cli.output import EXIT_USAGE, CommandError, err

__all__ = [
    "PG_ENV",
    "RunPlan",
    "child_environment",
    "exit_code",
    "parse_duration",
    "postgres_environment",
    "run",
]

#: The variables a ``--postgres`` credential is passed in (libpq's, read by psql, psycopg, asyncpg…).
PG_ENV = ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD")
#: Variables never inherited by the child: Tether's own configuration (an operator token, the
#: agent's key file) and any libpq setting a ``--postgres`` credential would otherwise mix with.
_DROPPED_PREFIXES = ("TETHER_",)
_DURATION = re.compile(r"(\d{1,7})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL_SECONDS = 30 * 86400
#: How often a pending task is read again while waiting for its approval.
APPROVAL_POLL_SECONDS = 1.0
#: How long the child has to exit after the forwarded signal before it is killed.
KILL_AFTER_SECONDS = 10.0


def parse_duration(text: str, option: str = "--ttl") -> int:
    """Seconds in ``text``: ``90``, ``90s``, ``10m``, ``2h``, ``1d`` (1 s to 30 days)."""
    matched = _DURATION.fullmatch(text.strip())
    if matched is None:
        raise CommandError(f"{option} {text[:40]!r} is not a duration like 90s, 10m, 2h or 1d", EXIT_USAGE)
    seconds = int(matched.group(1)) * _UNITS[matched.group(2)]
    if not 1 <= seconds <= MAX_TTL_SECONDS:
        raise CommandError(f"{option} must be between 1 s and 30 days, not {text[:40]!r}", EXIT_USAGE)
    return seconds


@dataclass(frozen=True)
class RunPlan:
    """What one ``tether run`` does, checked before anything is sent."""

    command: tuple[str, ...]
    purpose: str
    objective: str
    secrets: tuple[str, ...]
    destinations: tuple[str, ...]
    postgres: str | None
    sensitivity: str
    ttl_seconds: int | None
    url_env: str
    named_env: Mapping[str, str] = field(default_factory=dict)
    wait_approval_seconds: int | None = None

    def __post_init__(self) -> None:
        from tether.domain.destinations import validate_destination_name
        from tether.domain.secrets import validate_path
        from tether.errors import InvalidInputError
        from tether.sdk.sidecar import env_name

        if not self.command:
            raise CommandError("no command to run: tether run [OPTIONS] -- CMD [ARGS]...", EXIT_USAGE)
        try:
            for name in self.destinations:
                validate_destination_name(name)
            for path in (*self.secrets, *((self.postgres,) if self.postgres else ())):
                validate_path(path)
            for name in self.destinations:
                env_name(self.url_env, name)
        except InvalidInputError as exc:
            raise CommandError(str(exc), EXIT_USAGE) from None
        for variable, destination in self.named_env.items():
            if destination not in self.destinations:
                raise CommandError(
                    f"--env {variable}={destination}: {destination!r} is not one of the run's --destination",
                    EXIT_USAGE,
                )

    def endpoint_variables(self, urls: Mapping[str, str]) -> dict[str, str]:
        """The variables that name each destination's sidecar endpoint."""
        from tether.sdk.sidecar import env_name

        variables = {env_name(self.url_env, name): url for name, url in urls.items()}
        variables.update({variable: urls[destination] for variable, destination in self.named_env.items()})
        return variables


def parse_named_env(items: Sequence[str]) -> dict[str, str]:
    """``--env VAR=DESTINATION`` options as a mapping."""
    named: dict[str, str] = {}
    for item in items:
        variable, sep, destination = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", variable) or not destination:
            raise CommandError(f"--env {item[:80]!r}: expected VARIABLE=DESTINATION", EXIT_USAGE)
        named[variable] = destination
    return named


def postgres_environment(credential: Mapping[str, Any]) -> dict[str, str]:
    """libpq's variables for a ``postgresql`` credential (see ``docs/engines.md``)."""
    if credential.get("type") != "postgresql":
        raise CommandError(
            f"--postgres: the secret's engine issued a {str(credential.get('type'))[:40]!r} credential, "
            "not a postgresql one"
        )
    try:
        values = {
            "PGHOST": str(credential["host"]),
            "PGPORT": str(int(credential["port"])),
            "PGDATABASE": str(credential["database"]),
            "PGUSER": str(credential["username"]),
            "PGPASSWORD": str(credential["password"]),
        }
    except (KeyError, TypeError, ValueError):
        raise CommandError(
            "--postgres: the credential lacks host, port, database, username or password"
        ) from None
    return values


def child_environment(
    inherited: Mapping[str, str], endpoints: Mapping[str, str], postgres: Mapping[str, str]
) -> dict[str, str]:
    """The child's environment: the caller's, without Tether's own variables (and without libpq's
    when a PostgreSQL credential replaces them), plus the endpoints and the credential. Loopback is
    added to ``NO_PROXY`` so that a configured HTTP proxy does not carry the sidecar's traffic."""
    env = {
        name: value
        for name, value in inherited.items()
        if not name.startswith(_DROPPED_PREFIXES) and not (postgres and name.startswith("PG"))
    }
    env.update(endpoints)
    env.update(postgres)
    if endpoints:
        for name in ("NO_PROXY", "no_proxy"):
            present = [part for part in env.get(name, "").split(",") if part]
            env[name] = ",".join([*present, *(h for h in ("127.0.0.1", "localhost") if h not in present)])
    return env


def exit_code(returncode: int) -> int:
    """The exit code of ``tether run``: the child's, or 128 + the signal that ended it."""
    return returncode if returncode >= 0 else 128 - returncode


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _end(task: Any, how: str) -> None:
    from tether.sdk import TetherAPIError

    try:
        await getattr(task, how)()
    except TetherAPIError as exc:
        if exc.status != 409:  # 409: it ended meanwhile (expired, revoked): nothing left to revoke
            err.print(f"warning: could not {how} task {task.id}: {_why(exc)}", markup=False)


async def _run(addr: str, agent_id: str, key: Path, plan: RunPlan) -> int:
    from tether.sdk import AsyncAgent, TetherAPIError
    from tether.sdk.sidecar import Sidecar, SidecarRoutes

    async with AsyncAgent(addr, agent_id, key) as agent:
        try:
            task = await agent.task(
                purpose=plan.purpose,
                objective=plan.objective,
                secrets=[*plan.secrets, *((plan.postgres,) if plan.postgres else ())],
                destinations=plan.destinations,
                sensitivity=plan.sensitivity,
                ttl_seconds=plan.ttl_seconds,
            )
        except TetherAPIError as exc:
            raise CommandError(f"the task was not opened: {_why(exc)}; nothing was run") from None
        if task.status != "active":
            await _await_approval(task, plan.wait_approval_seconds)
        try:
            pg = await _issue(task, plan)
        except BaseException:
            await _end(task, "revoke")
            raise
        sidecar = Sidecar(agent, task.id, SidecarRoutes(plan.destinations)) if plan.destinations else None
        try:
            async with sidecar.serving() if sidecar is not None else contextlib.nullcontext() as serving:
                endpoints = plan.endpoint_variables(serving.urls()) if serving is not None else {}
                env = child_environment(os.environ, endpoints, pg)
                pg.clear()
                try:
                    returncode, signalled = await _supervise(plan.command, env)
                except OSError as exc:
                    await _end(task, "fail")
                    raise CommandError(
                        f"cannot run {plan.command[0][:200]!r}: {exc.strerror or _why(exc)}"
                    ) from None
                finally:
                    env.clear()
        except (RuntimeError, OSError, asyncio.CancelledError, KeyboardInterrupt) as exc:
            # The sidecar did not start, or the run was interrupted before the child ended.
            await _end(task, "revoke")
            if isinstance(exc, RuntimeError | OSError):
                raise CommandError(f"the sidecar did not start ({_why(exc)}); nothing was run") from None
            raise
        await _end(
            task, "revoke" if signalled or returncode < 0 else "complete" if returncode == 0 else "fail"
        )
        return exit_code(returncode)


async def _issue(task: Any, plan: RunPlan) -> dict[str, str]:
    """The run's grants: inject per destination; the ``--postgres`` credential (activated now) as
    libpq's variables. A refusal is a :class:`CommandError` naming what was refused."""
    from tether.sdk import TetherAPIError

    for destination in plan.destinations:
        try:
            await task.grant(destination=destination, mode="inject")
        except TetherAPIError as exc:
            raise CommandError(f"destination {destination!r}: {_why(exc)}; nothing was run") from None
    if plan.postgres is None:
        return {}
    try:
        grant = await task.grant(secret=plan.postgres, mode="dynamic")
        activated = await task.activate(grant)
    except TetherAPIError as exc:
        raise CommandError(f"--postgres {plan.postgres}: {_why(exc)}; nothing was run") from None
    return postgres_environment(activated.get("credential") or {})


async def _await_approval(task: Any, wait_seconds: int | None) -> None:
    """Wait (polling) until an approver opens the pending task, for up to ``wait_seconds``; without
    a wait, or when it runs out or the task is refused, the task is revoked (its approval is then
    void) and the run stops before the child starts."""
    approval = task.approval_id
    if wait_seconds:
        err.print(
            f"task {task.id} waits for approval {approval} (`tether approval approve {approval}`); "
            f"waiting up to {wait_seconds} s",
            markup=False,
        )
        deadline = asyncio.get_running_loop().time() + wait_seconds
        try:
            while asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(APPROVAL_POLL_SECONDS)
                await task.refresh()
                if task.status == "active":
                    return
                if task.status != "pending_approval":
                    raise CommandError(f"task {task.id} was not approved ({task.status}); nothing was run")
        except (asyncio.CancelledError, KeyboardInterrupt):  # Ctrl-C while waiting: withdraw the request
            await _end(task, "revoke")
            raise
    await _end(task, "revoke")
    raise CommandError(
        f"task {task.id} needs an approval ({approval}) and was withdrawn"
        + (" after waiting" if wait_seconds else "")
        + "; run again with --wait-approval DURATION and have an approver approve it; nothing was run"
    )


async def _supervise(command: Sequence[str], env: Mapping[str, str]) -> tuple[int, bool]:
    """Run the child to its end; SIGINT, SIGTERM and SIGHUP sent to ``tether run`` are forwarded to
    it (and it is killed if it has not exited :data:`KILL_AFTER_SECONDS` later). Returns its return
    code and whether a signal ended the run."""
    child = await asyncio.create_subprocess_exec(
        *command, env=dict(env), preexec_fn=functools.partial(_die_with_parent, os.getpid())
    )
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def forward(signum: int) -> None:
        received.append(signum)
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)
            loop.call_later(KILL_AFTER_SECONDS, _kill, child)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for signum in handled:
        loop.add_signal_handler(signum, forward, signum)
    try:
        returncode = await child.wait()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        if child.returncode is None:
            _kill(child)
            await child.wait()
    return returncode, bool(received)


def _die_with_parent(parent: int) -> None:
    """In the child, before exec (Linux): SIGTERM when ``tether run`` dies, even by SIGKILL, so that
    the child never outlives its sidecar and task. Elsewhere a no-op."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _kill(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.kill()


Agent = Annotated[
    str,
    typer.Option(
        "--agent",
        envvar="TETHER_AGENT",
        metavar="SPIFFE-ID",
        help="The agent's id: spiffe://TRUST-DOMAIN/agent/NAME.",
        show_default=False,
    ),
]
AgentKey = Annotated[
    Path,
    typer.Option(
        "--agent-key",
        envvar="TETHER_AGENT_KEY",
        metavar="FILE",
        help="The agent's private key (from `tether keygen`).",
        show_default=False,
        dir_okay=False,
    ),
]


def run(
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="-- CMD [ARGS]...", help="The program to run.", show_default=False),
    ] = None,
    agent: Agent = "",
    agent_key: AgentKey = Path("agent.jwk"),
    purpose: Annotated[str, typer.Option("--purpose", help="The task's purpose.", show_default=False)] = "",
    objective: Annotated[
        str, typer.Option("--objective", help="What the task is for, in words.", show_default=False)
    ] = "",
    secret: Annotated[
        list[str] | None,
        typer.Option(
            "--secret", metavar="PATH", help="A secret the task needs (repeat).", show_default=False
        ),
    ] = None,
    destination: Annotated[
        list[str] | None,
        typer.Option(
            "--destination",
            metavar="NAME",
            help="A destination the child calls through the sidecar (repeat); Tether injects its secret.",
            show_default=False,
        ),
    ] = None,
    postgres: Annotated[
        str | None,
        typer.Option(
            "--postgres",
            metavar="PATH",
            help="A secret of a postgresql engine: the child gets a short-lived role in PG* variables.",
            show_default=False,
        ),
    ] = None,
    sensitivity: Annotated[
        str, typer.Option("--sensitivity", help="public, internal, confidential or restricted.")
    ] = "internal",
    ttl: Annotated[
        str | None,
        typer.Option(
            "--ttl", metavar="DURATION", help="The task's lifetime: 90s, 10m, 2h, 1d.", show_default=False
        ),
    ] = None,
    wait_approval: Annotated[
        str | None,
        typer.Option(
            "--wait-approval",
            metavar="DURATION",
            help="If policy asks for an approval, wait this long for it (e.g. 10m) before giving up.",
            show_default=False,
        ),
    ] = None,
    url_env: Annotated[
        str,
        typer.Option(
            "--url-env",
            metavar="TEMPLATE",
            help="The variable naming each destination's endpoint; {NAME} is the name in upper case.",
        ),
    ] = "TETHER_{NAME}_URL",
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            metavar="VAR=DESTINATION",
            help="Also put DESTINATION's endpoint in VAR, e.g. GITHUB_API_URL=github (repeat).",
            show_default=False,
        ),
    ] = None,
    addr: Addr = DEFAULT_ADDR,
) -> int:
    """Run CMD inside a task: its HTTP calls reach destinations through a loopback sidecar that
    Tether injects the secrets for; the task ends when CMD exits.
    """
    plan = RunPlan(
        command=tuple(command or ()),
        purpose=purpose,
        objective=objective,
        secrets=tuple(secret or ()),
        destinations=tuple(dict.fromkeys(destination or ())),
        postgres=postgres,
        sensitivity=sensitivity,
        ttl_seconds=parse_duration(ttl) if ttl is not None else None,
        url_env=url_env,
        named_env=parse_named_env(env or ()),
        wait_approval_seconds=parse_duration(wait_approval, "--wait-approval") if wait_approval else None,
    )
    if not agent:
        raise CommandError("--agent is required (or TETHER_AGENT): the agent's SPIFFE ID", EXIT_USAGE)
    if not purpose or not objective:
        raise CommandError("--purpose and --objective are required: they are the task's intent", EXIT_USAGE)
    if not destination and postgres is None:
        raise CommandError(
            "nothing to give the command: name a --destination or a --postgres secret", EXIT_USAGE
        )
    if not agent_key.is_file():
        raise CommandError(f"--agent-key {agent_key}: no such file", EXIT_USAGE)
    code = asyncio.run(_run(addr, agent, agent_key, plan))
    sys.stdout.flush()
    return code if code else 0
