"""``tether policy``: validate, deploy, show, list versions, roll back, test and explain policy sets.

``validate --offline``, ``test`` and ``explain`` run the policy engine locally, so users can
check their policies in their own CI. Without ``--policies FILE``, ``test`` and ``explain``
fetch the active set from the server (nothing else leaves the machine).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from tether.cli.client import DEFAULT_ADDR
from tether.cli.common import Addr, Json, Token, client
from tether.cli.output import (
    EXIT_FAILURE,
    EXIT_USAGE,
    CommandError,
    format_time,
    out,
    print_json,
    print_table,
    print_warning,
)

if TYPE_CHECKING:
    from tether.policy import CompiledPolicySet, Decision

__all__ = ["policy_app"]

policy_app = typer.Typer(
    help="Policy sets (Cedar): validate, deploy, show, versions, rollback, test, explain.",
    no_args_is_help=True,
)

MAX_CASES_FILE_BYTES = 4 * 1024 * 1024

PolicyFile = Annotated[
    Path, typer.Argument(metavar="FILE", help="A policy set: Cedar text.", dir_okay=False, show_default=False)
]
PoliciesOption = Annotated[
    Path | None,
    typer.Option(
        "--policies",
        metavar="FILE",
        help="Policy set to use (Cedar text); default: the server's active set.",
        dir_okay=False,
        show_default=False,
    ),
]


def _read_text(path: Path, limit: int, what: str) -> str:
    try:
        with path.expanduser().open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or type(exc).__name__}", EXIT_USAGE) from None
    if len(data) > limit:
        raise CommandError(f"{path} is larger than {limit} bytes: not a {what}", EXIT_USAGE)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(f"{path} is not UTF-8 text: not a {what}", EXIT_USAGE) from None


def _read_policies(path: Path) -> str:
    from tether.policy import MAX_POLICY_TEXT_BYTES

    return _read_text(path, MAX_POLICY_TEXT_BYTES, "policy set")


def _read_data(path: Path, what: str) -> Any:
    """JSON, or YAML for a ``.yaml``/``.yml`` file."""
    text = _read_text(path, MAX_CASES_FILE_BYTES, what)
    if path.suffix.lower() in {".yaml", ".yml"}:
        import yaml  # type: ignore[import-untyped]  # no stubs; safe_load only

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise CommandError(f"{path} is not valid YAML{where}", EXIT_USAGE) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CommandError(f"{path} is not valid JSON: {exc}", EXIT_USAGE) from None


def _compile(text: str, source: str) -> CompiledPolicySet:
    from tether.policy import PolicyValidationError, compile_policy_set

    try:
        return compile_policy_set(text)
    except PolicyValidationError as exc:
        raise CommandError(f"{source} is invalid: " + "; ".join(exc.messages)) from None


def _compiled_set(policies: Path | None, addr: str, token: str | None) -> tuple[CompiledPolicySet, str]:
    """The policy set to evaluate locally and where it came from."""
    if policies is not None:
        return _compile(_read_policies(policies), str(policies)), str(policies)
    with client(addr, token) as api:
        active = api.get("/v1/policies")
    source = f"active set version {active['version']}"
    return _compile(active["policies"], source), source


def _print_summary(record: dict[str, Any], verb: str) -> None:
    ids = ", ".join(record.get("policy_ids") or []) or "no policies"
    out.print(f"{verb} policy set version {record['version']} ({escape(ids)})")
    out.print(f"sha256 {record['sha256']}")


@policy_app.command("validate")
def policy_validate(
    file: PolicyFile,
    offline: Annotated[
        bool, typer.Option("--offline", help="Check locally; do not contact the server.")
    ] = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Check a policy set against the schema without deploying it."""
    text = _read_policies(file)
    result: dict[str, Any]
    if offline:
        compiled = _compile(text, str(file))
        result = {"valid": True, "policy_ids": list(compiled.policy_ids), "sha256": compiled.sha256}
    else:
        with client(addr, token) as api:
            result = api.post("/v1/policies/validate", json={"policies": text})
    if json_output:
        print_json(result)
        return
    ids = ", ".join(str(i) for i in result["policy_ids"]) or "no policies"
    out.print(f"{escape(str(file))} is valid ({escape(ids)})")


@policy_app.command("deploy")
def policy_deploy(
    file: PolicyFile,
    comment: Annotated[str, typer.Option("--comment", "-m", help="Why (kept with the version).")] = "",
    allow_empty: Annotated[
        bool,
        typer.Option(
            "--allow-empty",
            help="Deploy a set without a single policy: it denies every agent every action "
            "(an emergency stop). Refused without this flag.",
        ),
    ] = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Deploy a policy set: it becomes the newest, active version.

    A set without a single policy denies everything; deploying one needs --allow-empty.
    """
    text = _read_policies(file)
    body: dict[str, Any] = {"policies": text, "comment": comment}
    if allow_empty:
        body["allow_empty"] = True
    with client(addr, token) as api:
        record = api.put("/v1/policies", json=body)
    if json_output:
        print_json(record)
        return
    _print_summary(record, "Deployed")
    if not record.get("policy_ids"):
        print_warning(
            "this policy set has no policies: every agent is now denied every action (default deny)"
        )


@policy_app.command("show")
def policy_show(
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="A stored version (default: the active one).")
    ] = None,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Print a policy set (the active one by default)."""
    url = "/v1/policies" if version is None else f"/v1/policies/{version}"
    with client(addr, token) as api:
        record = api.get(url)
    if json_output:
        print_json(record)
        return
    state = "active" if record.get("active") else "inactive"
    header = (
        f"# version {record['version']} ({state}), deployed {format_time(record.get('created_at'))} "
        f"by {record.get('created_by')}"
    )
    out.print(escape(header))
    if record.get("comment"):
        out.print(escape(f"# {record['comment']}"))
    out.print(escape(record["policies"]), end="" if record["policies"].endswith("\n") else "\n")


@policy_app.command("versions")
def policy_versions(
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many.")] = 100,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Deployed versions, newest first."""
    with client(addr, token) as api:
        page = api.get("/v1/policies/versions", params={"limit": limit})
    if json_output:
        print_json(page)
        return
    if not page["versions"]:
        out.print("No policy set deployed yet: everything is denied.")
        return
    print_table(
        None,
        ["VERSION", "ACTIVE", "DEPLOYED", "BY", "POLICIES", "COMMENT"],
        [
            (
                v["version"],
                "*" if v["active"] else "",
                format_time(v.get("created_at")),
                v.get("created_by") or "-",
                len(v.get("policy_ids") or []),
                v.get("comment") or "",
            )
            for v in page["versions"]
        ],
    )


@policy_app.command("rollback")
def policy_rollback(
    version: Annotated[
        int, typer.Argument(metavar="VERSION", min=1, help="The version to make active again.")
    ],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Make a stored version active again."""
    with client(addr, token) as api:
        record = api.post("/v1/policies/rollback", json={"version": version})
    if json_output:
        print_json(record)
        return
    _print_summary(record, "Rolled back to")


def _decision_json(decision: Decision) -> Any:
    return decision.to_json()


@policy_app.command("test")
def policy_test(
    cases_file: Annotated[
        Path,
        typer.Argument(
            metavar="CASES_FILE",
            help="Request cases, YAML or JSON: a list, or {cases: [...]}.",
            dir_okay=False,
            show_default=False,
        ),
    ],
    policies: PoliciesOption = None,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Run request cases (principal, action, resource, context -> expected decision) against a
    policy set, locally. Exit 1 if any case fails."""
    from tether.errors import InvalidInputError
    from tether.policy import explain, run_cases

    data = _read_data(cases_file, "cases file")
    cases = data.get("cases") if isinstance(data, dict) else data
    if not isinstance(cases, list) or not cases:
        raise CommandError(f"{cases_file} holds no cases: expected a list or {{cases: [...]}}", EXIT_USAGE)
    names = [case.get("name") if isinstance(case, dict) else None for case in cases]
    compiled, source = _compiled_set(policies, addr, token)
    try:
        report = run_cases(compiled, cases)
    except InvalidInputError as exc:
        raise CommandError(f"{cases_file}: {exc}", EXIT_USAGE) from None
    failed = {name: (expected, decision) for name, expected, decision in report.failed}
    if json_output:
        print_json(
            {
                "policies": source,
                "passed": report.passed,
                "failed": [
                    {"name": name, "expected": expected, "decision": _decision_json(decision)}
                    for name, (expected, decision) in failed.items()
                ],
            }
        )
    else:
        for name in names:
            if name in failed:
                expected, decision = failed[name]
                why = explain(decision)
                out.print(f"[red]FAIL[/] {escape(str(name))}: expected {escape(expected)}; {escape(why)}")
            else:
                out.print(f"[green]ok[/]   {escape(str(name))}")
        total = report.passed + len(failed)
        out.print(f"{report.passed} of {total} cases passed against {escape(source)}")
    if failed:
        raise typer.Exit(EXIT_FAILURE)


def _entity(raw: Any, key: str) -> Any:
    from tether.policy import Entity

    if not isinstance(raw, dict) or not {"type", "id"} <= raw.keys():
        raise CommandError(f"the request's {key} must be an object with type, id and attributes", EXIT_USAGE)
    parents = raw.get("parents") or []
    if not isinstance(parents, list):
        raise CommandError(f"the request's {key}.parents must be a list", EXIT_USAGE)
    return Entity(
        type=raw["type"],
        id=raw["id"],
        attributes=raw.get("attributes") or {},
        parents=tuple((p["type"], p["id"]) if isinstance(p, dict) else (p[0], p[1]) for p in parents),
    )


@policy_app.command("explain")
def policy_explain(
    request: Annotated[
        Path,
        typer.Option(
            "--request",
            metavar="REQUEST_FILE",
            help="One request, JSON or YAML: principal, action, resource, context, entities.",
            dir_okay=False,
            show_default=False,
        ),
    ],
    policies: PoliciesOption = None,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Decide one request locally and say why."""
    from tether.errors import InvalidInputError
    from tether.policy import DecisionRequest, explain

    raw = _read_data(request, "request")
    if not isinstance(raw, dict):
        raise CommandError(f"{request} must hold one request object", EXIT_USAGE)
    try:
        question = DecisionRequest(
            principal=_entity(raw.get("principal"), "principal"),
            action=raw.get("action"),  # type: ignore[arg-type]  # validated by DecisionRequest
            resource=_entity(raw.get("resource"), "resource"),
            context=raw.get("context") or {},
            entities=tuple(_entity(e, "entities") for e in raw.get("entities") or []),
        )
    except (InvalidInputError, TypeError, IndexError, KeyError) as exc:
        raise CommandError(f"{request}: {exc}", EXIT_USAGE) from None
    compiled, source = _compiled_set(policies, addr, token)
    decision = compiled.decide(question)
    if json_output:
        print_json(
            {"policies": source, "decision": _decision_json(decision), "explanation": explain(decision)}
        )
        return
    out.print(escape(explain(decision)))


#: Replay can take a while on a large window (see docs/reach.md): wait for it.
_REPLAY_TIMEOUT_SECONDS = 600.0


def _candidate_errors(text: str, source: str) -> None:
    """Refuse a candidate that does not parse or validate, each message at its line and column."""
    from tether.policy import PolicyValidationError
    from tether.reach.replay import compile_candidate, locate_errors

    try:
        compile_candidate(text)
    except PolicyValidationError as exc:
        lines = [
            f"{source}:{e['line']}:{e['column']}: {e['message']}"
            if e["line"]
            else f"{source}: {e['message']}"
            for e in locate_errors(text, exc.messages)
        ]
        raise CommandError("the candidate is invalid:\n" + "\n".join(lines)) from None


def _examples(group: dict[str, Any]) -> str:
    return "; ".join(
        f"#{e['ref']} {e['agent'].rsplit('/', 1)[-1]} {e['action']} {e['resource']}"
        for e in group["examples"]
    )


def _print_changes(report: dict[str, Any], title: str) -> None:
    kinds = ("allowed->denied", "denied->allowed", "policies-changed")
    columns = ["ALLOWED→DENIED", "DENIED→ALLOWED", "OTHER POLICIES", "EXAMPLES (event #)"]
    for key, heading in (("by_policy", "POLICY"), ("by_agent", "AGENT")):
        groups = report[key]
        if not groups:
            continue
        print_table(
            f"{title}, by {heading.lower()}",
            [heading, *columns],
            [
                (name, *(group["counts"][k] for k in kinds), _examples(group))
                for name, group in groups.items()
            ],
        )


@policy_app.command("replay")
def policy_replay(
    candidate: Annotated[
        Path | None,
        typer.Argument(
            metavar="[CANDIDATE]",
            help="A candidate policy set (Cedar text); optional with --verify.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    since: Annotated[str, typer.Option("--since", help="The audit window: 7d, 12h, 90m, 3600s.")] = "7d",
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Replay each decision with the policy version that made it: every decision must be "
            "reproduced exactly (exit 1 otherwise).",
        ),
    ] = False,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent's decisions.")] = None,
    secret: Annotated[str | None, typer.Option("--secret", help="Only decisions about this secret.")] = None,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Replay the audit window's decisions with a candidate policy set: what would change.

    Reports allowed → denied, denied → allowed and other determining policies, by policy and by
    agent. Nothing is deployed. With --verify, the self-check: exit 1 unless every decision is
    reproduced with the policy version that made it."""
    import httpx

    from tether.cli.client import OperatorClient

    if candidate is None and not verify:
        raise CommandError("give a CANDIDATE policy file, or --verify", EXIT_USAGE)
    body: dict[str, Any] = {"since": since, "verify": verify}
    if candidate is not None:
        text = _read_policies(candidate)
        _candidate_errors(text, str(candidate))
        body["policies"] = text
    if agent is not None:
        body["agent"] = agent
    if secret is not None:
        body["secret"] = secret
    timeout = httpx.Timeout(_REPLAY_TIMEOUT_SECONDS, connect=5.0)
    with OperatorClient(addr, token, timeout=timeout) as api:
        answer = api.post("/v1/policies/replay", json=body)
    reproduced = answer["verify"] is None or answer["verify"]["reproduced"]
    if json_output:
        print_json(answer)
    else:
        _print_replay(answer, None if candidate is None else str(candidate))
    if not reproduced:
        raise typer.Exit(EXIT_FAILURE)


def _print_replay(answer: dict[str, Any], source: str | None) -> None:
    scope = "".join(
        f" {word} {escape(str(answer[key]))}"
        for key, word in (("agent", "by"), ("secret", "about"))
        if answer[key]
    )
    out.print(
        f"{answer['events']} decision events{scope} from {format_time(answer['from'])} to "
        f"{format_time(answer['until'])} (since {escape(answer['since'])})"
    )
    skipped = answer["not_replayable"]
    if skipped["count"]:
        reasons = "; ".join(f"{escape(reason)}: {n}" for reason, n in skipped["reasons"].items())
        print_warning(f"{skipped['count']} not replayable, counted and left out ({reasons})")
    checked = answer["verify"]
    if checked is not None:
        versions = ", ".join("none" if v is None else str(v) for v in checked["policy_versions"]) or "-"
        if checked["reproduced"]:
            out.print(
                f"[green]Self-check passed[/]: all {checked['decisions']} replayed decisions reproduced "
                f"exactly with the policy versions that made them ({versions})."
            )
        else:
            out.print(
                f"[red]Self-check FAILED[/]: {checked['changed']} of {checked['decisions']} decisions "
                f"were not reproduced with the versions that made them ({versions})."
            )
            _print_changes(checked, "Not reproduced")
    report = answer["candidate"]
    if report is not None:
        counts = report["counts"]
        out.print(
            f"Candidate {escape(source or '?')} (sha256 {report['sha256'][:12]}…) over {report['decisions']} "
            f"decisions: {counts['allowed->denied']} allowed → denied, {counts['denied->allowed']} denied → "
            f"allowed, {counts['policies-changed']} by other policies."
        )
        if report["changed"]:
            _print_changes(report, "What would change")
        else:
            out.print("Nothing would change.")
