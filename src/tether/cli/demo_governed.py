"""The second part of ``tether demo``: the governed path, narrated, over HTTP.

An example trust domain: the example policy set (examples/policies), secrets of each sensitivity,
two agents with keys kept in the data dir. Then one agent proves what it is, opens a task, gets a
grant, uses it, loses it when its context changes, asks for a restricted secret (approval), and
completes its task — after which nothing issued for it works. The demo decides nothing itself:
every answer comes from Tether.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from rich.markup import escape

from tether.cli.client import APIError, OperatorClient, secret_url
from tether.cli.output import CommandError, out
from tether.crypto.jose import generate_private_jwk
from tether.sdk import Agent
from tether.sdk.egress import EgressClient

__all__ = ["GOVERNED_STEPS", "POLICY_FILE", "narrate_governed_path"]

POLICY_FILE = Path(__file__).resolve().parents[3] / "examples" / "policies" / "tether.cedar"
GOVERNED_STEPS = 12
AGENTS_DIR = "demo-agents"

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


class _Upstream:
    """A local stand-in for an API that needs the secret: it answers 200 only with
    ``Authorization: Bearer <token>``, and (carelessly) echoes the header back, as a debugging
    endpoint or a prompt-injected tool might."""

    def __init__(self) -> None:
        self.token = ""  # set once the demo has written the secret's value
        self.seen_token = False

        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                authorization = self.headers.get("Authorization", "")
                expected = f"Bearer {upstream.token}"
                ok = bool(upstream.token) and hmac.compare_digest(authorization.encode(), expected.encode())
                upstream.seen_token = upstream.seen_token or ok
                body = json.dumps(
                    {"repo": "acme/app", "deployments": 3, "debug_echo": authorization}
                    if ok
                    else {"error": "bad credentials"}
                ).encode()
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="demo-upstream", daemon=True)

    def __enter__(self) -> _Upstream:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


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


def _seed_domain(
    api: OperatorClient, data_dir: Path, upstream_port: int
) -> tuple[dict[str, Agent], dict[str, str]]:
    if not POLICY_FILE.exists():
        raise CommandError(f"the example policy set is missing ({POLICY_FILE}); run the demo from a checkout")
    text = POLICY_FILE.read_text(encoding="utf-8")
    try:
        deployed = api.get("/v1/policies")
    except APIError as exc:
        if exc.status != 404:
            raise
        deployed = {}
    if deployed.get("sha256") != hashlib.sha256(text.encode("utf-8")).hexdigest():
        deployed = api.put("/v1/policies", json={"policies": text, "comment": "tether demo"})
    values: dict[str, str] = {}
    for path, meta in SECRETS.items():
        values[path] = "demo_" + secrets.token_urlsafe(24)  # generated now, never a literal
        api.put(secret_url(path), json={"value": values[path], "owner": "demo", **meta})
    existing = {d["name"] for d in api.get("/v1/destinations")["destinations"]}
    for name, secret in DESTINATIONS.items():
        local = name == "github"  # the local upstream, on a new port each run: registered afresh
        if name in existing and local:
            api.delete(f"/v1/destinations/{name}")
        if name in existing and not local:
            continue
        api.post(
            "/v1/destinations",
            json={
                "name": name,
                "base_url": f"http://127.0.0.1:{upstream_port}/"
                if local
                else f"https://{name}.example.test/",
                "secret": secret,
                "inject": {"type": "header", "name": "Authorization", "template": "Bearer {secret}"},
                "methods": ["GET", "POST"],
                "path_prefixes": ["/repos"] if local else ["/"],
            },
        )
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
    _step(
        1,
        f"Example trust domain: policy set v{deployed['version']} from examples/policies (default deny, "
        f"{len(deployed.get('policy_ids', []))} policies), {len(SECRETS)} secrets (public, internal, "
        f"confidential, restricted), destinations {', '.join(DESTINATIONS)}, agents {', '.join(AGENTS)} "
        f"(keys in {escape(str(data_dir / AGENTS_DIR))}); destination github is a local upstream on "
        f"127.0.0.1:{upstream_port} that needs prod/github/token.",
    )
    return agents, values


def _decision_of(api: OperatorClient, task_id: str, kind: str) -> str:
    events = api.get("/v1/audit/events", params={"task": task_id, "kind": kind})["events"]
    if not events:
        return "?"
    decision = events[-1].get("decision") or {}
    return ", ".join(decision.get("policies", [])) or "(none)"


def narrate_governed_path(api: OperatorClient, data_dir: Path) -> None:
    """Seed the example domain and walk the governed path. Raises :class:`CommandError` on surprise."""
    with _Upstream() as upstream:
        agents, values = _seed_domain(api, data_dir, upstream.port)
        upstream.token = values["prod/github/token"]
        tid = _walk(api, agents, values, upstream)
    verified = api.get("/v1/audit/verify")
    if not verified.get("ok"):
        raise CommandError(f"audit verification failed: {verified}")
    _step(
        12,
        f"Audit: every decision, issuance, use, redaction and revocation above is in the hash chain; "
        f"verified {verified.get('checked', '?')} events, ok. Try `tether audit query --task {tid}`.",
    )


def _walk(api: OperatorClient, agents: dict[str, Agent], values: dict[str, str], upstream: _Upstream) -> str:
    bot = agents["deploy-bot"]
    try:
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
        if not upstream.seen_token or values["prod/github/token"] in called.text:
            raise CommandError("the egress call did not behave as expected; refusing to go on")
        _step(
            7,
            f"Inject grant {inject['id']}: the agent called github through Tether "
            f"(GET /v1/egress/github/repos/acme/app); Tether decided again, injected prod/github/token, and "
            f"the upstream answered 200. The upstream echoed the token back; the agent got "
            f"{escape(str(answer.get('debug_echo')))!r} (an egress.redact event records it).",
        )

        patched = _checked(
            bot.request(
                "PATCH", f"/v1/tasks/{tid}", json={"secrets": ["prod/github/token", "prod/stripe/key"]}
            ),
            200,
            "changing the task",
        )
        again = _checked(
            bot.request("POST", f"/v1/grants/{grant['id']}/activate"), 403, "using a revoked grant"
        )
        _step(
            8,
            f"Changed the task's context (it no longer needs prod/docs/token): every live grant was decided "
            f"again at once and {patched['grants_revoked']} revoked; its next use is refused: "
            f"{escape(again['detail'])}. The inject grant, still within the new context, stays.",
        )

        _incident(api, bot)

        ended = _checked(bot.request("POST", f"/v1/tasks/{tid}/complete"), 200, "completing the task")
        _step(
            10,
            f"Completed task {tid}: everything issued for it is revoked in one transaction "
            f"({ended['grants_revoked']} grant(s) were still live).",
        )

        after = _checked(
            bot.request("POST", f"/v1/grants/{grant['id']}/activate"), 403, "using after completion"
        )
        blocked = _checked(http.get("github", "/repos/acme/app"), 403, "egress after completion")
        _step(
            11,
            f"Tried again: the reveal grant is refused ({escape(after['detail'])}), and so is the call "
            f"to github ({escape(blocked['detail'])}).",
        )
        return str(tid)
    finally:
        for agent in agents.values():
            agent.close()


def _incident(api: OperatorClient, bot: Agent) -> None:
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
    _step(
        9,
        f"Restricted secret prod/pagerduty/key: the first ask was answered 'approval required' "
        f"({approval_id}, policy {', '.join(pending['decision']['policies'])}); an approver approved it "
        f"with a reason, the same ask then got grant {granted['id']} (inject only), and revoking the "
        "incident task revoked it.",
    )
