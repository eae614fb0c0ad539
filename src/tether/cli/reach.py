"""``tether reach secret PATH`` and ``tether reach agent NAME``: who could use a secret (or what an
agent could reach: secrets, destinations, MCP tools), under which conditions, decided through the
active policy set; and what is live now. Paths and names only, never a value."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.markup import escape

from tether.cli.client import DEFAULT_ADDR, check_secret_path, url_segment
from tether.cli.common import Addr, Json, Token, client
from tether.cli.output import format_time, out, print_json, print_table
from tether.reach.dot import to_dot

__all__ = ["reach_app"]

reach_app = typer.Typer(
    help="Reach: who could use each secret, under which conditions (auditor or admin).", no_args_is_help=True
)

_SENSITIVITY = ("public", "internal", "confidential", "restricted")


class OutputFormat(StrEnum):
    """How a reach answer is printed."""

    TABLE = "table"
    JSON = "json"
    DOT = "dot"


Format = Annotated[
    OutputFormat,
    typer.Option(
        "--format",
        case_sensitive=False,
        help="table (for people), json (as --json), or dot (Graphviz: agents, secrets, destinations, tools).",
    ),
]


def _printed_as_data(result: dict[str, Any], json_output: bool, output: OutputFormat) -> bool:
    """Print ``result`` as JSON or DOT when asked; False when the table is wanted."""
    if json_output or output is OutputFormat.JSON:
        print_json(result)
        return True
    if output is OutputFormat.DOT:
        typer.echo(to_dot(result), nl=False)
        return True
    return False


def _values(values: list[Any], every: list[Any], show: Any = str) -> str:
    if len(values) == len(every) and len(every) > 1:
        return "any"
    return ", ".join(show(v) for v in values) or "-"


def _rules_table(result: dict[str, Any], first: str) -> None:
    grid = result["grid"]
    rows = []
    for rule in result["reach"]:
        who = ", ".join(rule["agents"]) if first == "AGENTS" else rule["secret"]
        rows.append(
            (
                who,
                rule["action"],
                _values(rule["purposes"], grid["purposes"]),
                _values(rule["sensitivities"], grid["sensitivities"], lambda s: _SENSITIVITY[s]),
                _values(rule["modes"], grid["modes"]),
                _values(rule["destinations"], grid["destinations"], lambda d: d or "(none)"),
                _values(rule["depths"], list(range(grid["max_depth"] + 1))),
                rule["approval"],
                ", ".join(rule["policies"]),
                rule["residual"] or "",
            )
        )
    if not rows:
        out.print("Nothing: no agent can issue or activate it under the active policy set.")
        return
    print_table(
        "Reach (task purpose and sensitivity, mode, destination, delegation depth)",
        [
            first,
            "ACTION",
            "PURPOSE",
            "TASK SENSITIVITY",
            "MODE",
            "DESTINATION",
            "DEPTH",
            "APPROVAL",
            "POLICIES",
            "WHEN",
        ],
        rows,
    )


def _destinations_table(result: dict[str, Any]) -> None:
    grid = result["grid"]
    rows = [
        (
            rule["destination"],
            rule["secret"],
            rule["action"],
            _values(rule["purposes"], grid["purposes"]),
            _values(rule["sensitivities"], grid["sensitivities"], lambda s: _SENSITIVITY[s]),
            _values(rule["depths"], list(range(grid["max_depth"] + 1))),
            rule["approval"],
            f"{', '.join(rule['methods'])} {', '.join(rule['path_prefixes'])}",
            ", ".join(rule["policies"]),
            rule["residual"] or "",
        )
        for rule in result.get("destination_reach", [])
    ]
    if not rows:
        out.print("No destination: it can send through none under the active policy set.")
        return
    print_table(
        "Destinations (egress injects the secret; task purpose and sensitivity, delegation depth)",
        [
            "DESTINATION",
            "SECRET",
            "ACTION",
            "PURPOSE",
            "TASK SENSITIVITY",
            "DEPTH",
            "APPROVAL",
            "REQUESTS",
            "POLICIES",
            "WHEN",
        ],
        rows,
    )


def _tools_table(result: dict[str, Any]) -> None:
    grid = result["grid"]
    rows = [
        (
            rule["tool"],
            _values(rule["purposes"], grid["purposes"]),
            _values(rule["sensitivities"], grid["sensitivities"], lambda s: _SENSITIVITY[s]),
            _values(rule["depths"], list(range(grid["max_depth"] + 1))),
            rule["approval"],
            ", ".join(rule["policies"]),
            rule["residual"] or "",
        )
        for rule in result.get("tool_reach", [])
    ]
    if not rows:
        out.print("No MCP tool: it can call none under the active policy set.")
        return
    print_table(
        "MCP tools (call_tool, when the task declares the tool; task purpose and sensitivity, depth)",
        ["TOOL", "PURPOSE", "TASK SENSITIVITY", "DEPTH", "APPROVAL", "POLICIES", "WHEN"],
        rows,
    )


def _live_tables(live: dict[str, Any], injecting: str) -> None:
    if live["tasks"]:
        print_table(
            "Live tasks",
            ["TASK", "AGENT", "STATUS", "PURPOSE", "DEPTH", "EXPIRES"],
            [
                (t["id"], t["agent"], t["status"], t["purpose"], t["depth"], format_time(t["expires_at"]))
                for t in live["tasks"]
            ],
        )
    if live["grants"]:
        print_table(
            "Live grants",
            ["GRANT", "AGENT", "TASK", "SECRET", "MODE", "DESTINATION", "EXPIRES", "USES LEFT"],
            [
                (
                    g["id"],
                    g["agent"],
                    g["task_id"],
                    g["secret"] or "",
                    g["mode"],
                    g["destination"] or "",
                    format_time(g["expires_at"]),
                    "unlimited" if g["uses_left"] is None else g["uses_left"],
                )
                for g in live["grants"]
            ],
        )
    if live["leases"]:
        print_table(
            "Live leases",
            ["LEASE", "ENGINE", "TASK", "GRANT", "EXPIRES"],
            [
                (le["id"], le["engine"], le["task_id"], le["grant_id"], format_time(le["expires_at"]))
                for le in live["leases"]
            ],
        )
    if live["destinations"]:
        print_table(
            injecting,
            ["DESTINATION", "SECRET", "BASE URL"],
            [(d["name"], d["secret"], d["base_url"]) for d in live["destinations"]],
        )
    if not (live["tasks"] or live["grants"] or live["leases"] or live["destinations"]):
        out.print("Nothing live.")


def _federated_table(result: dict[str, Any]) -> None:
    rows = [
        (
            mapping["name"],
            mapping["issuer"],
            f"{mapping['subject_claim']} ~ {mapping['subject_pattern']}",
            agent["agent"],
            agent["example_subject"] or "(unconfirmed: only the agent group matches)",
        )
        for mapping in result.get("federated", [])
        for agent in mapping["agents"]
    ]
    if rows:
        print_table(
            "Federated identities that map to these agents (token exchange)",
            ["ISSUER", "ISS", "MAPPING", "AGENT", "EXAMPLE SUBJECT"],
            rows,
        )


def _footer(result: dict[str, Any]) -> None:
    version = result["policy_version"]
    out.print(
        "No policy set is deployed: everything is denied."
        if version is None
        else f"Decided through policy set version {version}."
    )
    if result["truncated"] or result["live"]["truncated"]:
        out.print("Stopped after 10000 items: the answer is incomplete.")


@reach_app.command("secret")
def reach_secret(
    path: Annotated[str, typer.Argument(metavar="PATH", help="Secret path.")],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
    output: Format = OutputFormat.TABLE,
) -> None:
    """Who could issue or activate a secret, under which conditions, and what is live now."""
    segments = check_secret_path(path).split("/")
    with client(addr, token) as api:
        result = api.get("/v1/reach/secrets/" + "/".join(url_segment(s) for s in segments))
    if _printed_as_data(result, json_output, output):
        return
    out.print(
        escape(f"{result['secret']}")
        + escape(
            f" ({_SENSITIVITY[result['sensitivity']]}; purposes: {', '.join(result['purposes']) or '-'}; "
            f"destinations: {', '.join(result['destinations']) or '-'})"
        ),
        markup=True,
    )
    _rules_table(result, "AGENTS")
    _federated_table(result)
    _live_tables(result["live"], "Destinations that inject it")
    _footer(result)


@reach_app.command("agent")
def reach_agent(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Agent name.")],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
    output: Format = OutputFormat.TABLE,
) -> None:
    """Every secret, destination and MCP tool an agent could reach, under which conditions; its live
    tasks and grants."""
    with client(addr, token) as api:
        result = api.get("/v1/reach/agents/" + url_segment(name))
    if _printed_as_data(result, json_output, output):
        return
    attributes = result["attributes"]
    out.print(
        escape(
            f"{result['agent']} ({result['id']}; team {attributes['team'] or '-'}, environment "
            f"{attributes['environment'] or '-'}, labels {', '.join(attributes['labels']) or '-'})"
        )
        + (" [red]disabled[/]" if result["disabled"] else ""),
        markup=True,
    )
    _rules_table(result, "SECRET")
    _destinations_table(result)
    _tools_table(result)
    _federated_table(result)
    _live_tables(result["live"], "Destinations that inject these secrets")
    _footer(result)


@reach_app.command("findings")
def reach_findings(
    since: Annotated[
        str, typer.Option("--since", metavar="WINDOW", help="The audit window: 30d, 12h, 90m.")
    ] = "30d",
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Standing-privilege findings, each naming the policies that cause it."""
    with client(addr, token) as api:
        result = api.get("/v1/reach/findings", params={"since": since})
    if json_output:
        print_json(result)
        return
    findings = result["findings"]
    if not findings:
        out.print("No findings.")
    else:
        print_table(
            None,
            ["KIND", "SUBJECT", "AGENTS", "POLICIES", "DETAIL"],
            [
                (f["kind"], f["subject"], ", ".join(f["agents"]), ", ".join(f["policies"]), f["detail"])
                for f in findings
            ],
        )
    if result["truncated"]:
        out.print("Stopped at a scan limit: the findings are incomplete.")
