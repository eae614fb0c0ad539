"""Help for people: every command's ``--help`` has a summary and an example, and says what a
value looks like (``FILE``, ``N``, ``public|internal``) rather than a Python type (``<str>``,
``<bool>``, ``<list[...]>``).

Applied once to the Click command tree that Typer builds (:func:`readable_help`), so command
modules keep their plain Typer declarations.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

__all__ = ["EXAMPLES", "commands", "readable_help"]

# One example per command, as a user would type it (keys are the command path after `tether`).
EXAMPLES: dict[str, str] = {
    "init": "tether init --data-dir /var/lib/tether --key-provider file --root-key-file /etc/tether/root.key",
    "server": "tether server --data-dir /var/lib/tether --listen 127.0.0.1:8420",
    "migrate": "tether migrate --data-dir /var/lib/tether",
    "demo": "tether demo --data-dir .tether/dev",
    "keygen": "tether keygen -o ci-deployer.jwk",
    "revoke": 'tether revoke --agent ci-deployer --reason "key leaked"',
    "run": "tether run --agent spiffe://acme.test/agent/ci --agent-key ci.jwk --purpose deploy "
    "--objective 'list issues' --secret prod/github/token --destination github "
    "--env GITHUB_API_URL=github gh issue list",
    "keys rotate": "tether keys rotate",
    "keys rotate-signing": "tether keys rotate-signing",
    "keys status": "tether keys status --json",
    "sys health": "tether sys health",
    "sys seal": "tether sys seal",
    "sys unseal": "tether sys unseal --root-key-file /etc/tether/root.key",
    "secret put": "tether secret put prod/github/token --from-file token.txt --purpose deploy "
    "--destination github",
    "secret rotate": "tether secret rotate prod/github/token --stdin < token.txt",
    "secret show": "tether secret show prod/github/token",
    "secret update": "tether secret update prod/github/token --add-destination gitlab "
    "--remove-purpose release",
    "secret list": "tether secret list prod/ --all",
    "secret delete": "tether secret delete prod/github/token --yes",
    "operator create": "tether operator create ci-bot --role secret-writer",
    "operator list": "tether operator list",
    "operator revoke": "tether operator revoke ci-bot",
    "operator whoami": "tether operator whoami",
    "audit verify": "tether audit verify --file audit.jsonl --checkpoint checkpoint.json",
    "audit query": "tether audit query --actor ci-deployer --kind 'grant.*' --since 2025-01-31",
    "audit tail": "tether audit tail -n 50 --follow",
    "audit export": "tether audit export -o audit.jsonl",
    "audit checkpoint": "tether audit checkpoint -o checkpoint.json",
    "audit hash": "tether audit hash --stdin < token.txt",
    "agent register": "tether agent register ci-deployer --public-key ci-deployer.jwk.pub.json "
    "--label deploy",
    "agent list": "tether agent list",
    "agent show": "tether agent show ci-deployer",
    "agent disable": "tether agent disable spiffe://acme.test/agent/ci-deployer --yes",
    "agent add-key": "tether agent add-key ci-deployer --public-key new.jwk.pub.json",
    "agent remove-key": "tether agent remove-key ci-deployer KID --yes",
    "issuer add": "tether issuer add github-actions --issuer https://token.actions.githubusercontent.com "
    "--jwks-url https://token.actions.githubusercontent.com/.well-known/jwks",
    "issuer list": "tether issuer list",
    "issuer remove": "tether issuer remove github-actions",
    "destination add": "tether destination add github --base-url https://api.github.com "
    "--secret prod/github/token --inject-header 'Authorization=Bearer {secret}'",
    "destination list": "tether destination list",
    "destination show": "tether destination show github",
    "destination remove": "tether destination remove github --yes",
    "mcp-server add": "tether mcp-server add github --command /usr/bin/python3 "
    "--env GITHUB_TOKEN=secret:prod/github/token /opt/mcp/github_server.py",
    "mcp-server list": "tether mcp-server list",
    "mcp-server show": "tether mcp-server show github",
    "mcp-server diff": "tether mcp-server diff github",
    "mcp-server check": "tether mcp-server check github",
    "mcp-server approve": "tether mcp-server approve github search_issues",
    "mcp-server remove": "tether mcp-server remove github --yes",
    "mcp connect": "tether mcp connect --addr https://tether.example --agent spiffe://acme.test/agent/ide "
    "--agent-key ide.jwk --task tsk_0123456789abcdefghijkl",
    "policy validate": "tether policy validate policies.cedar --offline",
    "policy deploy": 'tether policy deploy policies.cedar -m "allow deploys"',
    "policy show": "tether policy show --version 3",
    "policy versions": "tether policy versions",
    "policy rollback": "tether policy rollback 3",
    "policy test": "tether policy test cases.yaml --policies policies.cedar",
    "policy explain": "tether policy explain --request request.json",
    "policy replay": "tether policy replay candidate.cedar --since 7d --verify",
    "task list": "tether task list --agent ci-deployer --status active",
    "task show": "tether task show tsk_...",
    "task tree": "tether task tree tsk_...",
    "task revoke": 'tether task revoke tsk_... --reason "runaway agent"',
    "approval list": "tether approval list --status pending",
    "lease list": "tether lease list --state failed",
    "reach secret": "tether reach secret prod/github/token",
    "reach agent": "tether reach agent deploy-bot --json",
    "reach findings": "tether reach findings --since 7d",
    "scan": "tether scan . --json",
    "signals stream add": "tether signals stream add https://rp.example/caep --event session-revoked",
    "signals stream list": "tether signals stream list --json",
    "signals stream show": "tether signals stream show ssf_...",
    "signals stream status": 'tether signals stream status ssf_... paused --reason "receiver maintenance"',
    "signals stream remove": "tether signals stream remove ssf_...",
    "signals verify": "tether signals verify ssf_... --state hello",
    "signals deliveries": "tether signals deliveries ssf_... --status failed",
    "compliance report": "tether compliance report --format html --since 7d -o report.html",
    "approval show": "tether approval show apr_...",
    "approval approve": 'tether approval approve apr_... --reason "on-call page, ticket 4711"',
    "approval deny": 'tether approval deny apr_... --reason "not during a freeze"',
}


def commands(root: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command under ``root`` (a Click group), with its path, groups included."""
    yield path, root
    for name, sub in sorted(getattr(root, "commands", {}).items()):
        yield from commands(sub, (*path, name))


def _choices(annotation: Any) -> list[str] | None:
    args = get_args(annotation)
    if args:  # list[Choice] or Choice | None
        for arg in args:
            found = _choices(arg)
            if found is not None:
                return found
        return None
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(member.value) for member in annotation]
    return None


def _base(annotation: Any) -> Any:
    args = [a for a in get_args(annotation) if a is not type(None)]
    return _base(args[0]) if args else annotation


def _value_name(param: Any) -> str | None:
    """What the option's value looks like, for the help's type column."""
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    choices = _choices(annotation)
    if choices:
        return "|".join(choices)
    base = _base(annotation)
    if base is Path or getattr(descriptor, "is_path", False):
        return "FILE" if not getattr(param, "dir_okay", True) else "PATH"
    if base is int or base is float:
        return "N"
    if base is str:
        return "TEXT"
    return None


def _tidy(param: Any) -> None:
    if getattr(param, "param_type_name", "") == "argument":
        name = param.metavar or param.name.upper()
        shown = name if param.required else f"[{name}]"
        # The name column already says what it is; the type column would repeat a Python type.
        param.display_type_rich = lambda ctx: None
        param.get_usage_pieces = lambda ctx: [shown]
        return
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        param.metavar = ""  # a flag takes no value: nothing to show
        return
    if param.metavar is None:
        param.metavar = _value_name(param)


def _flagless_help(command: Any) -> None:
    """``--help`` is made per context, after the tidy: tidy it as it is made."""
    made = command.get_help_option

    def get_help_option(ctx: Any) -> Any:
        option = made(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option


def readable_help(root: Any) -> Any:
    """Tidy every parameter's help and add each command's example; returns ``root``."""
    for path, command in commands(root):
        for param in getattr(command, "params", []):
            _tidy(param)
        _flagless_help(command)
        example = EXAMPLES.get(" ".join(path))
        if example and command.help and "Example:" not in command.help:
            command.help = f"{command.help.rstrip()}\n\nExample: `{example}`"
    return root
