"""The second part of ``tether demo``: the governed path, narrated, over HTTP.

An example trust domain: the example policy set (examples/policies), secrets of each sensitivity,
two agents with keys kept in the data dir. Then one agent proves what it is, opens a task, gets a
grant, uses it, loses it when its context changes, asks for a restricted secret (approval), and
completes its task — after which nothing issued for it works. The demo decides nothing itself:
every answer comes from Tether.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.markup import escape

from tether.cli.client import APIError, OperatorClient, secret_url
from tether.cli.demo_reach import narrate_reach_and_scan
from tether.cli.demo_run import narrate_run
from tether.cli.demo_state import DemoState, Upstream
from tether.cli.output import CommandError, out
from tether.crypto.jose import generate_private_jwk
from tether.sdk import Agent
from tether.sdk.egress import EgressClient

__all__ = ["GOVERNED_STEPS", "POLICY_FILE", "Governed", "narrate_governed_path"]

POLICY_FILE = Path(__file__).resolve().parents[3] / "examples" / "policies" / "tether.cedar"
GOVERNED_STEPS = 13
AGENTS_DIR = "demo-agents"
GITHUB_SECRET = "prod/github/token"
# The stand-in's address as earlier demo runs registered it (before the state file existed).
_LOCAL_STAND_IN = re.compile(r"http://127\.0\.0\.1:[0-9]{1,5}/")

# One secret of each sensitivity (values are generated at run time, never literals).
SECRETS: dict[str, dict[str, Any]] = {
    "prod/docs/token": {"sensitivity": "public", "purposes": ["deploy"], "destinations": ["github"]},
    "prod/github/token": {"sensitivity": "internal", "purposes": ["deploy"], "destinations": ["github"]},
    "prod/stripe/key": {"sensitivity": "confidential", "purposes": ["deploy"], "destinations": ["stripe"]},
    "prod/pagerduty/key": {
        "sensitivity": "restricted",
        "purposes": ["incident"],
        "destinations": ["pagerduty"],
    },
}
#: The example upstream MCP server (examples/mcp), started per task with prod/github/token in its env.
MCP_SERVER = "issues"
MCP_EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "mcp" / "issues_server.py"
MCP_ACCEPT = "application/json, text/event-stream"
DESTINATIONS = {"github": "prod/github/token", "stripe": "prod/stripe/key", "pagerduty": "prod/pagerduty/key"}
AGENTS = {
    "deploy-bot": {
        "team": "platform",
        "environment": "prod",
        "owner": "alice",
        "labels": ["deploy", "incident"],
    },
    "report-bot": {"team": "data", "environment": "prod", "owner": "carol", "labels": ["report"]},
}


@dataclass
class Seeded:
    """What seeding found: ``fresh`` when the example set was deployed now (a first run);
    ``kept``: what differs from the example and was left as it is."""

    fresh: bool = False
    kept: list[str] = field(default_factory=list)
    repointed: str | None = None
    github_value: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Governed:
    """What the narrated walk left behind, for the next-step hints (None: not walked)."""

    task_id: str | None = None
    approval_id: str | None = None


def _step(number: int, text: str) -> None:
    out.print(f"[bold magenta]\\[governed {number}/{GOVERNED_STEPS}][/] {text}")


def _masked(value: str) -> str:
    """What the demo says about a revealed value: never any of it."""
    return f"a {len(value)}-character value (not printed here)"


def _agent_key(data_dir: Path, name: str) -> dict[str, Any]:
    """The agent's private key, kept in the data dir (0600) so later runs act as the same agent."""
    directory = data_dir / AGENTS_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"{name}.jwk"
    if path.exists():
        key: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return key
    key = generate_private_jwk()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(key, handle)
    return key


def _checked(response: httpx.Response, status: int, what: str) -> dict[str, Any]:
    if response.status_code != status:
        raise CommandError(
            f"{what}: expected HTTP {status}, got {response.status_code}: {response.text[:300]}"
        )
    body: dict[str, Any] = response.json()
    return body


def _secret_or_none(api: OperatorClient, path: str) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = api.get(secret_url(path))
    except APIError as exc:
        if exc.status != 404:
            raise
        return None
    return record


def _differs(record: dict[str, Any], meta: dict[str, Any]) -> bool:
    return (
        record.get("sensitivity") != meta["sensitivity"]
        or sorted(record.get("purposes") or []) != sorted(meta["purposes"])
        or sorted(record.get("destinations") or []) != sorted(meta["destinations"])
    )


def _seed_policies(api: OperatorClient, seeded: Seeded) -> dict[str, Any]:
    """Deploy the example set when no set is active; an active set is never replaced."""
    if not POLICY_FILE.exists():
        raise CommandError(f"the example policy set is missing ({POLICY_FILE}); run the demo from a checkout")
    text = POLICY_FILE.read_text(encoding="utf-8")
    try:
        active: dict[str, Any] = api.get("/v1/policies")
    except APIError as exc:
        if exc.status != 404:
            raise
        seeded.fresh = True
        deployed: dict[str, Any] = api.put("/v1/policies", json={"policies": text, "comment": "tether demo"})
        return deployed
    if active.get("sha256") != hashlib.sha256(text.encode("utf-8")).hexdigest():
        seeded.kept.append(
            f"policy set v{active.get('version')} (not the example's; to restore the example: "
            f"tether policy deploy {POLICY_FILE})"
        )
    return active


def _seed_secrets(api: OperatorClient, state: DemoState, seeded: Seeded) -> None:
    """Write the example secrets that are missing; existing ones are kept as they are."""
    for path, meta in SECRETS.items():
        record = _secret_or_none(api, path)
        if record is None:
            value = "demo_" + secrets.token_urlsafe(24)  # generated now, never a literal
            written = api.put(secret_url(path), json={"value": value, "owner": "demo", **meta})
            if path == GITHUB_SECRET:
                state.github_version, state.github_value = int(written["current_version"]), value
            continue
        if path == GITHUB_SECRET and record.get("current_version") != state.github_version:
            state.github_version, state.github_value = None, None
            seeded.kept.append(
                f"{path} (version {record.get('current_version')} was not written by the demo, so the "
                "github stand-in cannot check it)"
            )
        elif _differs(record, meta):
            seeded.kept.append(f"{path} (its metadata differs from the example's)")


def _seed_destinations(api: OperatorClient, upstream: Upstream, state: DemoState, seeded: Seeded) -> None:
    """Register the missing destinations. ``github`` is the local stand-in: when it still points
    at the stand-in of an earlier run (another port), it follows the stand-in; when someone
    pointed it elsewhere, it is kept."""
    existing = {d["name"]: d for d in api.get("/v1/destinations")["destinations"]}
    for name, secret in DESTINATIONS.items():
        local = name == "github"
        record = existing.get(name)
        if record is not None and not local:
            continue
        if record is not None:
            base_url = str(record.get("base_url"))
            if base_url == upstream.url:
                continue
            ours = base_url == state.upstream_url or (
                state.upstream_url is None and _LOCAL_STAND_IN.fullmatch(base_url) is not None
            )
            if not ours:
                seeded.kept.append(
                    f"destination github (it points at {base_url}, not at the demo's stand-in)"
                )
                continue
            api.delete(f"/v1/destinations/{name}")
            seeded.repointed = base_url
        api.post(
            "/v1/destinations",
            json={
                "name": name,
                "base_url": upstream.url if local else f"https://{name}.example.test/",
                "secret": secret,
                "inject": {"type": "header", "name": "Authorization", "template": "Bearer {secret}"},
                "methods": ["GET", "POST"],
                "path_prefixes": ["/repos"] if local else ["/"],
            },
        )
    state.upstream_url = upstream.url


def _seed_mcp(api: OperatorClient, seeded: Seeded) -> None:
    """Register the example upstream MCP server if it is missing (Tether starts it once to pin its
    tools); one registered otherwise is kept."""
    existing = {s["name"]: s for s in api.get("/v1/mcp-servers")["servers"]}
    record = existing.get(MCP_SERVER)
    if record is not None:
        if record.get("args") != [str(MCP_EXAMPLE)] or record.get("quarantined"):
            seeded.kept.append(f"MCP server {MCP_SERVER} (not the example's, or tools in quarantine)")
        return
    if not MCP_EXAMPLE.exists():
        raise CommandError(f"the example MCP server is missing ({MCP_EXAMPLE}); run the demo from a checkout")
    api.post(
        "/v1/mcp-servers",
        json={
            "name": MCP_SERVER,
            "command": sys.executable,
            "args": [str(MCP_EXAMPLE)],
            "env": {"ISSUES_TOKEN": GITHUB_SECRET},
        },
    )


def _seed_agents(api: OperatorClient, data_dir: Path) -> dict[str, Agent]:
    agents: dict[str, Agent] = {}
    registered = {a["name"]: a for a in api.get("/v1/agents")["agents"]}
    for name, attributes in AGENTS.items():
        key = _agent_key(data_dir, name)
        public = {k: v for k, v in key.items() if k in {"kty", "crv", "x", "y"}}
        record = registered.get(name)
        if record is None:
            record = api.post(
                "/v1/agents", json={"name": name, "public_key": public, "attributes": attributes}
            )
        agents[name] = Agent(api.addr, record["id"], key)
    return agents


def _seed_domain(api: OperatorClient, data_dir: Path, upstream: Upstream) -> tuple[dict[str, Agent], Seeded]:
    """Seed what is missing of the example domain; say what an earlier run (or the user) left
    that differs from the example, and keep it."""
    state = DemoState.load(data_dir)
    seeded = Seeded()
    deployed = _seed_policies(api, seeded)
    _seed_secrets(api, state, seeded)
    _seed_destinations(api, upstream, state, seeded)
    _seed_mcp(api, seeded)
    state.save(data_dir)
    upstream.token = state.github_value or ""
    seeded.github_value = state.github_value
    agents = _seed_agents(api, data_dir)
    origin = "deployed from examples/policies" if seeded.fresh else "active"
    repointed = (
        f" (it pointed at the stand-in of an earlier run, {seeded.repointed}: "
        "re-registered at the new address)"
        if seeded.repointed
        else ""
    )
    _step(
        1,
        f"Example trust domain: policy set v{deployed['version']} {origin} (default deny, "
        f"{len(deployed.get('policy_ids', []))} policies), {len(SECRETS)} secrets (public, internal, "
        f"confidential, restricted), destinations {', '.join(DESTINATIONS)}, agents {', '.join(AGENTS)} "
        f"(keys in {escape(str(data_dir / AGENTS_DIR))}); destination github is a local stand-in at "
        f"{upstream.url} that needs prod/github/token and serves as long as this demo does{repointed}. "
        "What exists already is kept: a re-run seeds only what is missing.",
    )
    return agents, seeded


def _decision_of(api: OperatorClient, task_id: str, kind: str) -> str:
    events = api.get("/v1/audit/events", params={"task": task_id, "kind": kind})["events"]
    if not events:
        return "?"
    decision = events[-1].get("decision") or {}
    return ", ".join(decision.get("policies", [])) or "(none)"


def narrate_governed_path(
    api: OperatorClient, data_dir: Path, upstream: Upstream, engines_file: Path | None = None
) -> Governed:
    """Seed what is missing of the example domain and walk the governed path, then ``tether run``,
    a dynamic credential (with a PostgreSQL engine in ``engines_file``), reach and a sprawl scan.

    ``upstream`` is the local ``github`` stand-in, serving for as long as the caller keeps it.
    On a first run any surprise raises :class:`CommandError`. On a re-run what the user changed
    is kept: the walk is skipped when the example no longer holds, and a surprise on the way
    is a warning, so that Tether keeps serving.
    """
    agents, seeded = _seed_domain(api, data_dir, upstream)
    walked = Governed()
    try:
        if seeded.kept:
            out.print(
                "[bold yellow]Kept as they are[/] (the walk below assumes the example, so it is skipped; "
                "a fresh --data-dir shows it): " + escape("; ".join(seeded.kept)) + "."
            )
        else:
            assert seeded.github_value is not None
            try:
                walked = _walk(api, agents, seeded.github_value, upstream)
                key_file = data_dir / AGENTS_DIR / "deploy-bot.jwk"
                narrate_run(api, agents["deploy-bot"], key_file, seeded.github_value, upstream, engines_file)
                narrate_reach_and_scan(api, data_dir, seeded.github_value)
            except CommandError as exc:
                if seeded.fresh:
                    raise
                out.print(
                    f"[bold yellow]The narrated walk stopped[/]: {escape(str(exc))}. It assumes the example "
                    "as first seeded (something was changed since); Tether keeps serving."
                )
    finally:
        for agent in agents.values():
            agent.close()
    verified = api.get("/v1/audit/verify")
    if not verified.get("ok"):
        raise CommandError(f"audit verification failed: {verified}")
    hint = f" Try `tether audit query --task {walked.task_id}`." if walked.task_id else ""
    _step(
        13,
        f"Audit: every decision, issuance, use, redaction, revocation and scan above is in the hash chain; "
        f"verified {verified.get('checked', '?')} events, ok.{hint}",
    )
    return walked


def _walk(api: OperatorClient, agents: dict[str, Agent], github_value: str, upstream: Upstream) -> Governed:
    bot = agents["deploy-bot"]
    me = bot.whoami()
    _step(2, f"deploy-bot proved what it is with its key: {me['id']} (a DPoP-bound token, minutes long).")

    task = _checked(
        bot.request(
            "POST",
            "/v1/tasks",
            json={
                "purpose": "deploy",
                "objective": "Deploy release 1.4 of acme/app",
                "sensitivity": "confidential",
                "secrets": ["prod/docs/token", "prod/github/token", "prod/stripe/key"],
                "destinations": ["github", "stripe"],
                "tools": [f"{MCP_SERVER}/search_issues"],
                "ttl_seconds": 600,
            },
        ),
        201,
        "opening a task",
    )
    tid = task["id"]
    _step(
        3,
        f"Opened task {tid} (purpose deploy, 10 minutes): open_task allowed by "
        f"{_decision_of(api, tid, 'task.open')}.",
    )

    grant = _checked(
        bot.request(
            "POST",
            f"/v1/tasks/{tid}/grants",
            json={"secret": "prod/docs/token", "destination": "github", "mode": "reveal", "max_uses": 3},
        ),
        201,
        "issuing a grant",
    )
    _step(
        4,
        f"Issued grant {grant['id']} (reveal prod/docs/token, 3 uses, bound to deploy-bot's key). "
        "It holds no secret: issuance is not use.",
    )

    used = _checked(bot.request("POST", f"/v1/grants/{grant['id']}/activate"), 200, "activating")
    _step(
        5,
        f"Activated it: decided again now, then audited and counted in one write (uses left "
        f"{used['uses_left']}); only then was the value handed over: {_masked(used['value'])}.",
    )

    refused = bot.request(
        "POST",
        f"/v1/tasks/{tid}/grants",
        json={"secret": "prod/stripe/key", "destination": "stripe", "mode": "reveal"},
    )
    body = _checked(refused, 403, "revealing a confidential secret")
    _step(
        6,
        f"Asked to reveal prod/stripe/key (confidential): denied by "
        f"{', '.join(body['decision']['policies'])} — confidential values are injected, never shown.",
    )

    inject = _checked(
        bot.request("POST", f"/v1/tasks/{tid}/grants", json={"destination": "github", "mode": "inject"}),
        201,
        "issuing an inject grant",
    )
    http = EgressClient(bot, tid)
    called = http.get("github", "/repos/acme/app")
    answer = _checked(called, 200, "calling github through egress")
    if not upstream.seen_token or github_value in called.text:
        raise CommandError("the egress call did not behave as expected; refusing to go on")
    _step(
        7,
        f"Inject grant {inject['id']}: the agent called github through Tether "
        f"(GET /v1/egress/github/repos/acme/app); Tether decided again, injected prod/github/token, and "
        f"the upstream answered 200. The upstream echoed the token back; the agent got "
        f"{escape(str(answer.get('debug_echo')))!r} (an egress.redact event records it).",
    )

    _mcp(bot, tid, github_value)

    patched = _checked(
        bot.request("PATCH", f"/v1/tasks/{tid}", json={"secrets": ["prod/github/token", "prod/stripe/key"]}),
        200,
        "changing the task",
    )
    again = _checked(bot.request("POST", f"/v1/grants/{grant['id']}/activate"), 403, "using a revoked grant")
    _step(
        9,
        f"Changed the task's context (it no longer needs prod/docs/token): every live grant was decided "
        f"again at once and {patched['grants_revoked']} revoked; its next use is refused: "
        f"{escape(again['detail'])}. The inject grant, still within the new context, stays.",
    )

    approval_id = _incident(api, bot)

    ended = _checked(bot.request("POST", f"/v1/tasks/{tid}/complete"), 200, "completing the task")
    _step(
        11,
        f"Completed task {tid}: everything issued for it is revoked in one transaction "
        f"({ended['grants_revoked']} grant(s) were still live).",
    )

    after = _checked(bot.request("POST", f"/v1/grants/{grant['id']}/activate"), 403, "using after completion")
    blocked = _checked(http.get("github", "/repos/acme/app"), 403, "egress after completion")
    _step(
        12,
        f"Tried again: the reveal grant is refused ({escape(after['detail'])}), and so is the call "
        f"to github ({escape(blocked['detail'])}).",
    )
    return Governed(task_id=str(tid), approval_id=approval_id)


def _mcp_call(bot: Agent, tid: str, number: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One JSON-RPC request to Tether's /mcp, as any MCP client sends it (with DPoP and the task)."""
    body = {"jsonrpc": "2.0", "id": number, "method": method, "params": params}
    headers = {"Tether-Task": tid, "Accept": MCP_ACCEPT}
    answer = _checked(bot.request("POST", "/mcp", json=body, headers=headers), 200, f"MCP {method}")
    if "result" not in answer:
        raise CommandError(f"MCP {method} failed: {answer.get('error')}")
    result: dict[str, Any] = answer["result"]
    return result


def _mcp(bot: Agent, tid: str, github_value: str) -> None:
    listed = _mcp_call(bot, tid, 1, "tools/list", {})
    names = [tool["name"] for tool in listed.get("tools", [])]
    called = _mcp_call(
        bot, tid, 2, "tools/call", {"name": f"{MCP_SERVER}__search_issues", "arguments": {"query": "deploy"}}
    )
    shown = json.dumps(called)
    if github_value in shown or "[REDACTED]" not in shown:
        raise CommandError("the MCP call did not behave as expected; refusing to go on")
    first = str((called.get("content") or [{}])[0].get("text", "")).splitlines()[0]
    _step(
        8,
        f"MCP: deploy-bot connected to Tether as its MCP server (POST /mcp, DPoP, Tether-Task). tools/list "
        f"showed {', '.join(names)} (declared by the task and allowed by policy; close_issue is not). "
        f"Calling it, Tether decided call_tool, started the example server {MCP_SERVER} for this task "
        f"with prod/github/token in its environment, and answered {escape(repr(first))}; the server echoed "
        "the token in a debug field, which came back [REDACTED] (a tool.redact event records it).",
    )


def _incident(api: OperatorClient, bot: Agent) -> str:
    incident = _checked(
        bot.request(
            "POST",
            "/v1/tasks",
            json={
                "purpose": "incident",
                "objective": "Page the on-call engineer about the failed deploy",
                "sensitivity": "restricted",
                "secrets": ["prod/pagerduty/key"],
                "destinations": ["pagerduty"],
                "ttl_seconds": 300,
            },
        ),
        201,
        "opening an incident task",
    )
    iid = incident["id"]
    request = {"destination": "pagerduty", "mode": "inject"}
    pending = _checked(
        bot.request("POST", f"/v1/tasks/{iid}/grants", json=request), 403, "a restricted grant"
    )
    approval_id = pending.get("approval_id")
    if not approval_id or pending["decision"]["missing"] != ["approval"]:
        raise CommandError(f"expected an approval request, got {pending}")
    try:
        api.post(f"/v1/approvals/{approval_id}/approve", json={"reason": "demo: on-call page approved"})
    except APIError as exc:
        raise CommandError(f"approving failed: {exc.detail}") from None
    granted = _checked(
        bot.request("POST", f"/v1/tasks/{iid}/grants", json=request), 201, "the approved grant"
    )
    _checked(bot.request("POST", f"/v1/tasks/{iid}/revoke"), 200, "revoking the incident task")
    status = api.get(f"/v1/approvals/{approval_id}").get("status", "?")
    _step(
        10,
        f"Restricted secret prod/pagerduty/key: the first ask was answered 'approval required' "
        f"({approval_id}, policy {', '.join(pending['decision']['policies'])}); an approver approved it "
        f"with a reason, the same ask then got grant {granted['id']} (inject only), and revoking the "
        f"incident task revoked it. The approval is now {escape(str(status))}: it lives no longer than "
        "its task.",
    )
    return str(approval_id)
