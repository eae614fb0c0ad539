"""The deployment the API fuzzer runs against: a real broker on SQLite, seeded over HTTP, reached in
process through schemathesis' ASGI client, with every request signed as the route expects.

Schemathesis drives ASGI apps on one event loop of its own (a thread with a blocking portal), so
the broker is built *inside* that loop: :class:`FuzzApp` wraps ``create_app`` and builds, initialises
and closes the broker in the ASGI lifespan. Everything after that (seeding, the agent's token,
the fuzzed requests) goes through :class:`SignedClient`, a schemathesis ``ASGIClient`` that adds
``Authorization`` (operator bearer, or agent DPoP with a fresh proof over the exact method and URL
it is about to send) to each request and counts the answers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import requests
from schemathesis.python.asgi import ASGIClient

from tests.integration.governed import EXAMPLE_POLICIES, SECRETS
from tests.security.canaries import new_canary
from tether.api import create_app
from tether.broker import Broker
from tether.config import Settings
from tether.crypto.jose import generate_private_jwk
from tether.sdk import Agent

BASE = "http://testserver"  # the host schemathesis' ASGI client sends (schemathesis.python.asgi.HOST)

# Routes an agent calls (DPoP). Everything else is an operator route (bearer).
AGENT_ROUTES = {
    ("POST", "/v1/tasks"),
    ("PATCH", "/v1/tasks/{task_id}"),
    ("POST", "/v1/tasks/{task_id}/complete"),
    ("POST", "/v1/tasks/{task_id}/fail"),
    ("POST", "/v1/tasks/{task_id}/delegate"),
    ("POST", "/v1/tasks/{task_id}/grants"),
    ("POST", "/v1/grants/{grant_id}/activate"),
    ("GET", "/v1/auth/whoami"),
}
# Routes both may call: alternate between the two identities.
EITHER_ROUTES = {
    ("GET", "/v1/tasks/{task_id}"),
    ("POST", "/v1/tasks/{task_id}/revoke"),
    ("GET", "/v1/tasks/{task_id}/grants"),
}
# Routes that authenticate themselves (the token endpoint's client assertion) or need nothing.
UNAUTHENTICATED_ROUTES = {("POST", "/v1/auth/token"), ("GET", "/v1/auth/jwks")}


def identity_for(method: str, path: str, turn: int) -> str:
    """``agent``, ``operator`` or ``none``: who sends a request to this operation."""
    key = (method.upper(), path)
    if key in UNAUTHENTICATED_ROUTES:
        return "none"
    if key in AGENT_ROUTES or path.startswith("/v1/egress/"):
        return "agent"
    if key in EITHER_ROUTES:
        return "agent" if turn % 2 == 0 else "operator"
    return "operator"


# -- a loopback upstream for egress ---------------------------------------------------------------


class _Echo(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"ok": True, "method": self.command}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer  # noqa: N815 - stdlib names

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Upstream:
    """A loopback HTTP server that answers every request with 200 and a small JSON body."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# -- the app ------------------------------------------------------------------------------------------


class FuzzApp:
    """``create_app(broker)`` whose broker lives on the event loop that serves it (built at
    lifespan startup, closed at shutdown)."""

    def __init__(self, data_dir: Path, audit_jsonl_path: Path | None) -> None:
        self.settings = Settings(
            data_dir=data_dir, audit_jsonl_path=audit_jsonl_path, sqlite_synchronous="normal"
        )
        self.broker: Broker | None = None
        self.app: Any = None
        self.root_token = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.broker = Broker.from_settings(self.settings)
                    self.root_token = (await self.broker.init()).root_token
                    self.app = create_app(self.broker)
                except Exception as exc:  # reported to schemathesis, which raises it in the test
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.broker is not None:
                    await self.broker.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


# -- signing and counting ---------------------------------------------------------------------------


@dataclass
class Tally:
    tried: int = 0
    refused: int = 0
    server_errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def count(self, status: int) -> None:
        self.tried += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if 400 <= status < 500:
            self.refused += 1
        elif status >= 500:
            self.server_errors += 1


class SignedClient(ASGIClient):
    """An ASGI client that authenticates each request for its route and counts the answers.

    The route (method + path template) of the request about to be sent is set by the test in
    :attr:`route`; schemathesis' own follow-up requests (e.g. the ``ignored_auth`` check) go out
    through other sessions, unsigned, which is what they test.
    """

    def __init__(self, app: FuzzApp, tally: Tally | None = None) -> None:
        super().__init__(app)
        self.fuzz_app = app
        self.tally = tally
        self.route: tuple[str, str] | None = None
        self.agent: Agent | None = None
        self.task_header: str | None = None
        self.turn = 0

    def agent_token(self) -> str:
        assert self.agent is not None
        session = self.agent._session
        cached = session.fresh_token()
        if cached is not None:
            return cached
        form, headers = session.token_request()
        response = super().send(
            self.prepare_request(
                requests.Request("POST", BASE + "/v1/auth/token", data=form, headers=headers)
            )
        )
        return session.accept_token(response)  # type: ignore[arg-type] - same shape as httpx's

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if self.route is not None:
            method, template = self.route
            who = identity_for(method, template, self.turn)
            self.turn += 1
            if who == "operator":
                request.headers["Authorization"] = f"Bearer {self.fuzz_app.root_token}"
            elif who == "agent":
                assert self.agent is not None
                assert request.method is not None
                assert request.url is not None
                request.headers.update(
                    self.agent._session.signed_headers(request.method, request.url, self.agent_token())
                )
                if (
                    template.startswith("/v1/egress/")
                    and self.task_header
                    and "Tether-Task" not in request.headers
                ):
                    request.headers["Tether-Task"] = self.task_header
        response = super().send(request, **kwargs)
        if self.route is not None and self.tally is not None:
            self.tally.count(response.status_code)
        return response


# -- seeding ------------------------------------------------------------------------------------------


class Seeds:
    """What the fuzzed routes act on, made over HTTP and remade before each operation (an
    operation may complete the task, delete a secret, disable an agent, roll policies back)."""

    def __init__(self, http: SignedClient, upstream: Upstream) -> None:
        self.http = http
        self.upstream = upstream
        self.values = {path: new_canary(f"fuzz {path}") for path in SECRETS}
        self.round = 0
        self.ids: dict[str, str] = {}
        self.dirty: set[str] = set()
        self.admin = {"Authorization": f"Bearer {http.fuzz_app.root_token}"}

    def _call(self, method: str, path: str, ok: tuple[int, ...], **kwargs: Any) -> requests.Response:
        route, self.http.route = self.http.route, None
        try:
            headers = {**self.admin, **kwargs.pop("headers", {})}
            response = self.http.request(method, BASE + path, headers=headers, **kwargs)
        finally:
            self.http.route = route
        assert response.status_code in ok, f"seeding {method} {path}: {response.status_code} {response.text}"
        return response

    def _agent(self, method: str, path: str, ok: tuple[int, ...], **kwargs: Any) -> requests.Response:
        assert self.http.agent is not None
        url = BASE + path
        headers = self.http.agent._session.signed_headers(method, url, self.http.agent_token())
        route, self.http.route = self.http.route, None
        try:
            response = self.http.request(method, url, headers=headers, **kwargs)
        finally:
            self.http.route = route
        assert response.status_code in ok, f"seeding {method} {path}: {response.status_code} {response.text}"
        return response

    def _register(self, name: str) -> tuple[str, dict[str, Any]]:
        private = generate_private_jwk()
        public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
        attributes = {
            "team": "platform",
            "environment": "prod",
            "owner": "alice",
            "labels": ["deploy", "incident"],
        }
        body = {"name": name, "public_key": public, "attributes": attributes}
        response = self._call("POST", "/v1/agents", (201,), json=body)
        return str(response.json()["id"]), private

    def first(self) -> None:
        """Once: the fuzzing agent, then everything else."""
        agent_id, private = self._register("fuzz-bot")
        self.http.agent = Agent(BASE, agent_id, private, http=_NO_HTTP)
        self.ids["agent_id"] = agent_id
        self.dirty = set(PARTS)
        self.refresh()

    def touched(self, method: str, template: str) -> None:
        """Note what an operation may have changed, so that :meth:`refresh` remakes it."""
        if method in {"GET", "HEAD", "OPTIONS"} and not template.startswith("/v1/egress/"):
            return
        for prefix, parts in _TOUCHES:
            if template.startswith(prefix):
                self.dirty |= parts
        if template == "/v1/sys/token-keys/rotate" and self.http.agent is not None:
            self.http.agent._session.token = None  # fetch a token signed with the new key

    def refresh(self) -> None:
        """Remake what the operations since the last refresh may have changed."""
        dirty, self.dirty = self.dirty, set()
        self.round += 1
        if "policies" in dirty:
            self._call(
                "PUT", "/v1/policies", (200, 201), json={"policies": EXAMPLE_POLICIES.read_text("utf-8")}
            )
        if "secrets" in dirty:
            for path, meta in SECRETS.items():
                self._call(
                    "PUT", f"/v1/secrets/{path}", (200, 201), json={"value": self.values[path], **meta}
                )
        if "destinations" in dirty:
            self._destinations()
        if "agents" in dirty:
            victim, _ = self._register(f"victim-{self.round}")
            self.ids["victim_agent"] = victim.rsplit("/", 1)[-1]
        if "operators" in dirty:
            self.ids["victim_operator"] = f"victim-op-{self.round}"
            body = {"name": self.ids["victim_operator"], "role": "auditor"}
            self._call("POST", "/v1/operators", (201,), json=body)
        if dirty & {"tasks", "policies", "secrets", "destinations"}:
            self._tasks()

    def _destinations(self) -> None:
        for name, secret in (("github", "prod/github/token"), ("pagerduty", "prod/pagerduty/key")):
            if self._call("GET", f"/v1/destinations/{name}", (200, 404)).status_code == 404:
                body = {
                    "name": name,
                    "base_url": f"{self.upstream.url}/{name}",
                    "secret": secret,
                    "inject": {"type": "header", "name": "Authorization", "template": "Bearer {secret}"},
                    "methods": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                }
                self._call("POST", "/v1/destinations", (201,), json=body)

    def _tasks(self) -> None:
        """An open deploy task with a reveal and an inject grant, and an incident task whose
        restricted grant waits for an approval."""
        task = self._agent(
            "POST",
            "/v1/tasks",
            (201,),
            json={
                "purpose": "deploy",
                "objective": f"fuzz round {self.round}",
                "sensitivity": "internal",
                "secrets": ["prod/github/token", "prod/docs/token"],
                "destinations": ["github"],
                "ttl_seconds": 3600,
            },
        ).json()
        self.ids["task_id"] = task["id"]
        self.http.task_header = task["id"]
        reveal = self._agent(
            "POST",
            f"/v1/tasks/{task['id']}/grants",
            (201,),
            json={"secret": "prod/docs/token", "destination": "github", "mode": "reveal", "max_uses": 1000},
        ).json()
        self.ids["grant_id"] = reveal["id"]
        self._agent(
            "POST",
            f"/v1/tasks/{task['id']}/grants",
            (201,),
            json={"secret": "prod/github/token", "destination": "github", "mode": "inject", "max_uses": 1000},
        )
        incident = self._agent(
            "POST",
            "/v1/tasks",
            (201,),
            json={
                "purpose": "incident",
                "objective": f"fuzz incident {self.round}",
                "sensitivity": "restricted",
                "secrets": ["prod/pagerduty/key"],
                "destinations": ["pagerduty"],
                "ttl_seconds": 3600,
            },
        ).json()
        pending = self._agent(
            "POST",
            f"/v1/tasks/{incident['id']}/grants",
            (403,),
            json={"secret": "prod/pagerduty/key", "destination": "pagerduty", "mode": "inject"},
        ).json()
        if isinstance(pending.get("approval_id"), str):
            self.ids["approval_id"] = pending["approval_id"]

    def substitutes(self, template: str) -> dict[str, list[str]]:
        """Seeded values a path parameter of this operation may take instead of a generated one."""
        ids = self.ids
        out: dict[str, list[str]] = {
            "task_id": [ids["task_id"]],
            "grant_id": [ids["grant_id"]],
            "kid": [],
            "version": ["1", "2"],
            "destination": ["github", "pagerduty"],
            "name_or_id": [ids["victim_operator"]],
        }
        if "approval_id" in ids:
            out["approval_id"] = [ids["approval_id"]]
        if template.startswith("/v1/secrets/"):
            out["path"] = list(SECRETS)
        elif template.startswith("/v1/egress/"):
            out["path"] = ["repos/acme/tether", "v1/items"]
        if template.startswith("/v1/agents/"):
            out["name"] = [ids["victim_agent"]]
        elif template.startswith("/v1/destinations/"):
            out["name"] = ["github"]
        return out

    def overlays(self) -> dict[str, st.SearchStrategy[Any]]:
        """Plausible values for body fields the schema types only loosely (a purpose from the
        vocabulary, a seeded secret path, a lowercase name): half of the generated bodies get the
        fields they already have replaced by these, so requests get past input validation."""
        ids = self.ids
        private = generate_private_jwk()
        victim_id = ids["agent_id"].rsplit("/", 1)[0] + "/" + ids.get("victim_agent", "victim")
        return {
            "purpose": st.sampled_from(["deploy", "incident", "maintenance"]),
            "sensitivity": st.sampled_from(["public", "internal", "confidential", "restricted"]),
            "secrets": st.lists(st.sampled_from(sorted(SECRETS)), max_size=3, unique=True),
            "secret": st.sampled_from(sorted(SECRETS)),
            "destinations": st.lists(
                st.sampled_from(["github", "pagerduty", "stripe"]), max_size=2, unique=True
            ),
            "destination": st.sampled_from(["github", "pagerduty"]),
            "mode": st.sampled_from(["inject", "reveal", "dynamic"]),
            "name": st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
            "role": st.sampled_from(["admin", "secret-writer", "policy-author", "approver", "auditor"]),
            "agent": st.just(victim_id),
            "task": st.just(ids["task_id"]),
            "public_key": st.just({k: v for k, v in private.items() if k in {"kty", "crv", "x"}}),
            "base_url": st.just(f"{self.upstream.url}/fuzz"),
            "policies": st.sampled_from(
                [
                    EXAMPLE_POLICIES.read_text("utf-8"),
                    'permit(principal, action == Action::"open_task", resource);',
                ]
            ),
            "version": st.integers(min_value=1, max_value=3),
            "ttl_seconds": st.integers(min_value=1, max_value=7200),
        }

    def leaked(self, text: str) -> list[str]:
        return [path for path, value in self.values.items() if value in text]


PARTS = frozenset({"policies", "secrets", "destinations", "agents", "operators", "tasks"})
# What a state-changing operation under each prefix may break for the operations after it.
_TOUCHES: tuple[tuple[str, frozenset[str]], ...] = (
    ("/v1/policies", frozenset({"policies"})),
    ("/v1/secrets", frozenset({"secrets"})),
    ("/v1/destinations", frozenset({"destinations"})),
    ("/v1/agents", frozenset({"agents"})),
    ("/v1/operators", frozenset({"operators"})),
    ("/v1/tasks", frozenset({"tasks"})),
    ("/v1/grants", frozenset({"tasks"})),
    ("/v1/approvals", frozenset({"tasks"})),
    ("/v1/revocations", frozenset({"tasks", "agents"})),
    ("/v1/egress", frozenset({"tasks"})),
)


class _NoHTTP:
    """The SDK client is used only for signing here; it must never send on its own."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the fuzzing agent's own HTTP client was used ({name})")


_NO_HTTP: Any = _NoHTTP()


def iter_statuses(tally: Tally) -> Iterator[str]:
    for status, n in sorted(tally.statuses.items()):
        yield f"{status}:{n}"
