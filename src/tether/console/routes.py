"""The web console's routes (``/ui``): parse → broker → render. No rules live here.

Every page reads through the broker services the JSON API uses, as the signed-in operator, so
each page is allowed or refused (and refusals audited) exactly as the API would. Actions (approve,
deny, revoke) are forms carrying the session's CSRF token and call the same broker methods as the
API's routes; their audit events are the API's. The console never shows a secret value: no page
reads one (the broker services it calls return metadata only).
"""

from __future__ import annotations

import difflib
import hmac
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from tether.audit import AuditFilter, checkpoint_to_json, event_to_json
from tether.broker.access import authorize
from tether.broker.leases import LeaseService
from tether.broker.reach import ReachService, report_to_json
from tether.broker.simulate import SIMULATED_ACTIONS, Simulation, SimulatorService
from tether.console._web import (
    CONTENT_SECURITY_POLICY,
    HEADERS,
    HERE,
    PAGES,
    Redirect,
    Signed,
    broker_of,
    error_page,
    form_of,
    is_secure,
    read_form,
    render,
    serve,
    set_session_cookie,
    with_headers,
)
from tether.console.sessions import (
    COOKIE,
    LOGIN_COOKIE,
    ConsoleSession,
    derive_session_key,
    encode_session,
    new_session,
)
from tether.console.tree import layout_tree
from tether.domain.operators import Permission
from tether.domain.secrets import Sensitivity
from tether.domain.tasks import TaskStatus
from tether.errors import AuthenticationError, InvalidInputError, PermissionDeniedError, TetherError

__all__ = ["CONTENT_SECURITY_POLICY", "router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

_STATIC = {
    "console.css": "text/css; charset=utf-8",
    "htmx.min.js": "text/javascript; charset=utf-8",
}
_LIST_LIMIT = 200


# -- static assets, sign-in, sign-out -------------------------------------------------------------
@router.get("/static/{name}")
async def static(name: str) -> Response:
    """The console's own assets (vendored htmx, the stylesheet): nothing comes from elsewhere."""
    media_type = _STATIC.get(name)
    if media_type is None:
        return with_headers(Response("not found", status_code=404, media_type="text/plain"))
    response = FileResponse(HERE / "static" / name, media_type=media_type)
    for header, value in HEADERS.items():
        response.headers[header] = value
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@router.get("")
@router.get("/")
async def home(request: Request) -> Response:
    async def first_page(request: Request, signed: Signed) -> Response:
        pages = [p for p in PAGES if signed.may(p.permission)]
        if not pages:
            raise PermissionDeniedError(f"the role {signed.operator.role.value} has no console page")
        return with_headers(RedirectResponse(pages[0].path, status_code=303))

    return await serve(request, first_page)


def _safe_next(value: str) -> str:
    """Only a path of the console itself (no open redirect)."""
    if value.startswith("/ui") and not value.startswith("//") and "\\" not in value and "\n" not in value:
        return value
    return "/ui/"


#: Why the sign-in page is shown, by code: only these fixed texts are displayed (a link cannot make
#: the sign-in page say something else).
_WHY = {
    "signin": "Sign in to continue.",
    "idle": "Your session timed out (idle): sign in again.",
    "expired": "Your session expired: sign in again.",
    "closed": "This session was closed: sign in again.",
    "signed-out": "You are signed out.",
    "revoked": "Your operator was revoked or is unknown.",
}


@router.get("/login")
async def login_form(request: Request, next: str = "/ui/", why: str = "") -> Response:
    nonce = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        {"csrf": nonce, "next": _safe_next(next), "why": _WHY.get(why, ""), "error": ""},
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=900,
        path="/ui",
        httponly=True,
        secure=is_secure(request),
        samesite="strict",
    )
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    """The operator token, once, for a session cookie. The token is not kept anywhere."""
    broker = broker_of(request)
    try:
        form = await read_form(request)
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(expected.encode(), form.get("csrf", "").encode()):
            raise PermissionDeniedError(
                "the sign-in form's anti-forgery token is missing or wrong: reload and retry"
            )
        key = derive_session_key(broker.keys.root_key())
        session = new_session("pending", broker.clock.now())
        operator = await broker.operators.open_console_session(form.get("token", "").strip(), session.id)
    except AuthenticationError as exc:
        return render(
            request,
            "login.html",
            {"csrf": request.cookies.get(LOGIN_COOKIE, ""), "next": "/ui/", "why": "", "error": str(exc)},
            status=401,
        )
    except TetherError as exc:
        return error_page(request, exc, None)
    session = ConsoleSession(session.id, operator.id, session.opened_at, session.seen_at)
    response = with_headers(RedirectResponse(_safe_next(form.get("next", "/ui/")), status_code=303))
    set_session_cookie(
        request, response, encode_session(session, key), broker.settings.console_session_max_seconds
    )
    response.delete_cookie(LOGIN_COOKIE, path="/ui")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    async def close(request: Request, signed: Signed) -> Response:
        await signed.broker.operators.close_console_session(signed.operator, signed.session.id)
        raise Redirect("/ui/login?why=signed-out")

    response = await serve(request, close, form_action=True)
    if response.status_code == 303:
        response.delete_cookie(COOKIE, path="/ui")
    return response


# -- approvals -------------------------------------------------------------------------------------
async def _approval_rows(signed: Signed) -> list[dict[str, Any]]:
    broker = signed.broker
    now = broker.clock.now()
    rows = []
    for approval in await broker.tasks.list_approvals(signed.operator, statuses=("pending",), limit=100):
        task = await broker.tasks.get_for_operator(signed.operator, approval.task_id)
        rows.append(
            {
                "approval": approval,
                "status": approval.effective_status(now).value,
                "task": task,
                "agent": approval.agent_id,
                "request": dict(approval.request) or _intent_of(task, approval.action),
            }
        )
    return rows


def _intent_of(task: Any, action: str) -> dict[str, Any]:
    """What an ``open_task`` approval allows: opening the task with exactly its declared intent."""
    if action != "open_task":
        return {}
    intent = task.intent
    return {
        "open_task": {
            "purpose": intent.purpose,
            "objective_sha256": intent.objective_sha256,
            "sensitivity": intent.sensitivity.label,
            "secrets": sorted(intent.secrets),
            "destinations": sorted(intent.destinations),
            "tools": sorted(intent.tools),
            "expires_at": task.expires_at.isoformat(),
        }
    }


@router.get("/approvals")
async def approvals(request: Request, done: str = "") -> Response:
    async def page(request: Request, signed: Signed) -> Response:
        recent = await signed.broker.tasks.list_approvals(
            signed.operator, statuses=("approved", "denied"), limit=100
        )
        recent.sort(key=lambda a: a.decided_at or a.requested_at, reverse=True)
        return render(
            request,
            "approvals.html",
            {"rows": await _approval_rows(signed), "recent": recent[:20], "done": done[:200]},
            signed=signed,
        )

    return await serve(request, page)


@router.get("/approvals/queue")
async def approvals_queue(request: Request) -> Response:
    """The pending queue alone (htmx polls it for live updates)."""

    async def fragment(request: Request, signed: Signed) -> Response:
        return render(request, "_queue.html", {"rows": await _approval_rows(signed)}, signed=signed)

    return await serve(request, fragment)


async def _decide(request: Request, approval_id: str, *, approve: bool) -> Response:
    async def act(request: Request, signed: Signed) -> Response:
        reason = form_of(request).get("reason", "")
        approval, _ = await signed.broker.tasks.decide_approval(
            signed.operator, approval_id, approve=approve, reason=reason
        )
        verb = "approved" if approve else "denied"
        query = urlencode({"done": f"{verb} {approval.id} (task {approval.task_id})"})
        return with_headers(RedirectResponse(f"/ui/approvals?{query}", status_code=303))

    return await serve(request, act, form_action=True)


@router.post("/approvals/{approval_id}/approve")
async def approve(request: Request, approval_id: str) -> Response:
    return await _decide(request, approval_id, approve=True)


@router.post("/approvals/{approval_id}/deny")
async def deny(request: Request, approval_id: str) -> Response:
    return await _decide(request, approval_id, approve=False)


# -- tasks -----------------------------------------------------------------------------------------
_TASK_STATES = tuple(status.value for status in TaskStatus)


@router.get("/tasks")
async def tasks(request: Request, agent: str = "", status: str = "", purpose: str = "") -> Response:
    async def page(request: Request, signed: Signed) -> Response:
        broker = signed.broker
        if status and status not in _TASK_STATES:
            raise InvalidInputError(f"status must be one of {'|'.join(_TASK_STATES)}", field="status")
        agent_id = broker.agents.id_of(agent.strip()) if agent.strip() else None
        found = await broker.tasks.list_for_operator(
            signed.operator, agent_id=agent_id, statuses=(status,) if status else (), limit=_LIST_LIMIT
        )
        now = broker.clock.now()
        rows = [
            {"task": t, "status": t.effective_status(now).value}
            for t in found
            if not purpose.strip() or t.intent.purpose == purpose.strip()
        ]
        rows.reverse()  # newest first
        return render(
            request,
            "tasks.html",
            {"rows": rows, "agent": agent, "status": status, "purpose": purpose, "states": _TASK_STATES},
            signed=signed,
        )

    return await serve(request, page)


@router.get("/tasks/{task_id}")
async def task_page(request: Request, task_id: str, done: str = "") -> Response:
    async def page(request: Request, signed: Signed) -> Response:
        broker = signed.broker
        now = broker.clock.now()
        task = await broker.tasks.get_for_operator(signed.operator, task_id)
        grants = await broker.tasks.grants_of(task)
        tree = await broker.tasks.tree(signed.operator, task_id)
        layout = layout_tree(
            [
                (
                    t.id,
                    t.parent_id,
                    f"{t.id} · {t.intent.purpose} · {t.effective_status(now).value}",
                    t.effective_status(now).value,
                )
                for t in tree
            ],
            task.id,
        )
        leases = await LeaseService(broker.storage, broker.audit, broker.clock).list_for_operator(
            signed.operator, state=None, task_id=task.id, limit=100
        )
        events = None
        if signed.may(Permission.AUDIT_READ):
            found = await broker.audit.query(AuditFilter(task_id=task.id), limit=200)
            events = [event_to_json(e) for e in found.events]
        return render(
            request,
            "task.html",
            {
                "task": task,
                "status": task.effective_status(now).value,
                "grants": [(g, _grant_state(g, now)) for g in grants],
                "leases": leases,
                "tree": layout,
                "events": events,
                "may_revoke": signed.may(Permission.TASK_REVOKE),
                "done": done[:200],
            },
            signed=signed,
        )

    return await serve(request, page)


def _grant_state(grant: Any, now: datetime) -> str:
    reason: str | None = grant.unusable(now)
    return "usable" if reason is None else reason


@router.post("/tasks/{task_id}/revoke")
async def revoke_task(request: Request, task_id: str) -> Response:
    async def act(request: Request, signed: Signed) -> Response:
        reason = form_of(request).get("reason", "")[:500]
        ended = await signed.broker.tasks.revoke_by_operator(signed.operator, task_id, reason)
        query = urlencode({"done": f"revoked {len(ended.task_ids)} task(s), {ended.grants_revoked} grant(s)"})
        return with_headers(RedirectResponse(f"/ui/tasks/{quote(task_id)}?{query}", status_code=303))

    return await serve(request, act, form_action=True)


# -- audit -----------------------------------------------------------------------------------------
@router.get("/audit")
async def audit(
    request: Request,
    kind: str = "",
    actor: str = "",
    task: str = "",
    resource: str = "",
    allowed: str = "",
    after: int = 0,
) -> Response:
    async def page(request: Request, signed: Signed) -> Response:
        broker = signed.broker
        await authorize(broker.audit, signed.operator, Permission.AUDIT_READ, "audit:events")
        if allowed not in {"", "true", "false"}:
            raise InvalidInputError("allowed must be true, false or empty", field="allowed")
        where = AuditFilter(
            kind=kind.strip() or None,
            actor=actor.strip() or None,
            task_id=task.strip() or None,
            resource=resource.strip() or None,
            allowed=None if not allowed else allowed == "true",
        )
        found = await broker.audit.query(where, after_seq=max(0, after), limit=100)
        checkpoint = await broker.audit.latest_checkpoint()
        filters = {"kind": kind, "actor": actor, "task": task, "resource": resource, "allowed": allowed}
        next_query = (
            urlencode({**{k: v for k, v in filters.items() if v}, "after": found.next_after})
            if found.next_after
            else ""
        )
        return render(
            request,
            "audit.html",
            {
                "events": [event_to_json(e) for e in found.events],
                "filters": filters,
                "next_query": next_query,
                "checkpoint": None if checkpoint is None else checkpoint_to_json(checkpoint),
                "checkpoint_time": None if checkpoint is None else checkpoint.time,
            },
            signed=signed,
        )

    return await serve(request, page)


@router.get("/audit/verification")
async def audit_verification(request: Request) -> Response:
    """The whole chain verified now (a page of its own: it reads every event)."""

    async def page(request: Request, signed: Signed) -> Response:
        await authorize(signed.broker.audit, signed.operator, Permission.AUDIT_READ, "audit:verify")
        result = (await signed.broker.audit.verify()).to_json()
        fragment = request.headers.get("hx-request") == "true"
        return render(
            request,
            "_verification.html" if fragment else "verification.html",
            {"result": result},
            signed=signed,
        )

    return await serve(request, page)


# -- reach -----------------------------------------------------------------------------------------
@router.get("/reach")
async def reach(request: Request, secret: str = "", agent: str = "") -> Response:
    async def page(request: Request, signed: Signed) -> Response:
        broker = signed.broker
        service = ReachService(
            broker.storage, broker.audit, broker.clock, broker.settings, broker.policies, broker.engines
        )
        report: dict[str, Any] | None = None
        matrix: dict[str, Any] | None = None
        if secret.strip():
            report = report_to_json(
                await service.of_secret(signed.operator, secret.strip()), broker.clock.now()
            )
            matrix = _matrix(report, by="agents")
        elif agent.strip():
            report = report_to_json(
                await service.of_agent(signed.operator, agent.strip()), broker.clock.now()
            )
            matrix = _matrix(report, by="secret")
        else:
            await authorize(broker.audit, signed.operator, Permission.AUDIT_READ, "reach:*")
        secrets_page = (
            await broker.secrets.list(signed.operator, limit=100)
            if signed.may(Permission.SECRET_READ_METADATA)
            else None
        )
        overview = None
        if report is None and secrets_page is not None and secrets_page.items:
            # Every agent by every secret (the first _OVERVIEW_SECRETS): one reach answer per secret.
            reports = []
            for record in secrets_page.items[:_OVERVIEW_SECRETS]:
                answer = await service.of_secret(signed.operator, record.path)
                reports.append(report_to_json(answer, broker.clock.now()))
            overview = _heatmap(reports)
        return render(
            request,
            "reach.html",
            {
                "secret": secret,
                "agent": agent,
                "report": report,
                "matrix": matrix,
                "secret_paths": [] if secrets_page is None else [s.path for s in secrets_page.items],
                "overview": overview,
            },
            signed=signed,
        )

    return await serve(request, page)


_OVERVIEW_SECRETS = 25
_LEVELS = ("none", "approval", "conditional", "always")  # from least to most reach


def _level(rule: Mapping[str, Any]) -> str:
    if rule.get("approval") == "required":
        return "approval"
    return "conditional" if rule.get("residual") else "always"


def _heatmap(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Agents (rows) by secrets (columns): the widest way each agent can activate each secret."""
    secrets_ = [str(report["secret"]) for report in reports]
    cells: dict[str, dict[str, str]] = {}
    for path, report in zip(secrets_, reports, strict=True):
        for rule in report.get("reach", []):
            if rule["action"] != "activate":
                continue
            for agent in rule["agents"]:
                row = cells.setdefault(str(agent), {})
                level = _level(rule)
                if _LEVELS.index(level) > _LEVELS.index(row.get(path, "none")):
                    row[path] = level
    rows = [
        {"name": name, "cells": [cells[name].get(path, "none") for path in secrets_]}
        for name in sorted(cells)
    ]
    return {"secrets": secrets_, "rows": rows}


def _matrix(report: Mapping[str, Any], *, by: str) -> dict[str, Any]:
    """Rows (agents, or secrets) by actions: how each pair is reachable — ``always``, ``approval``
    (only with an approval), ``conditional`` (only under some conditions)."""
    actions = ["issue", "activate"]
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for rule in report.get("reach", []):
        names = rule["agents"] if by == "agents" else [rule["secret"]]
        for name in names:
            cell = cells.setdefault(str(name), {}).setdefault(
                rule["action"], {"rules": 0, "kinds": set(), "policies": set()}
            )
            cell["rules"] += 1
            cell["policies"].update(rule.get("policies", []))
            cell["kinds"].add(_level(rule))
    rows = []
    for name in sorted(cells):
        row = []
        for action in actions:
            found = cells[name].get(action)
            if found is None:
                row.append({"level": "none", "label": "no", "policies": ""})
                continue
            cell = found
            kinds = cell["kinds"]
            level = (
                "always" if "always" in kinds else ("conditional" if "conditional" in kinds else "approval")
            )
            label = {"always": "yes", "conditional": "under conditions", "approval": "with approval"}[level]
            row.append(
                {
                    "level": level,
                    "label": f"{label} ({cell['rules']})",
                    "policies": ", ".join(sorted(cell["policies"])),
                }
            )
        rows.append({"name": name, "cells": row})
    return {"actions": actions, "rows": rows, "by": by}


# -- policies --------------------------------------------------------------------------------------
@router.get("/policies")
async def policies(request: Request, a: int = 0, b: int = 0) -> Response:
    async def page(request: Request, signed: Signed) -> Response:
        return await _policies_page(request, signed, a=a, b=b)

    return await serve(request, page)


async def _policies_page(
    request: Request,
    signed: Signed,
    *,
    a: int = 0,
    b: int = 0,
    simulation: dict[str, Any] | None = None,
    asked: Mapping[str, str] | None = None,
    status: int = 200,
) -> Response:
    broker = signed.broker
    records, active = await broker.policies.versions(signed.operator, limit=50)
    active_text = ""
    if active is not None:
        active_text = (await broker.policies.show(signed.operator, active)).text
    diff: list[tuple[str, str]] | None = None
    if a and b:
        old = await broker.policies.show(signed.operator, a)
        new = await broker.policies.show(signed.operator, b)
        diff = [
            (_diff_class(line), line)
            for line in difflib.unified_diff(
                old.text.splitlines(), new.text.splitlines(), f"version {a}", f"version {b}", lineterm=""
            )
        ]
    return render(
        request,
        "policies.html",
        {
            "versions": records,
            "active": active,
            "active_text": active_text,
            "a": a,
            "b": b,
            "diff": diff,
            "actions": SIMULATED_ACTIONS,
            "sensitivities": [s.label for s in Sensitivity],
            "simulation": simulation,
            "asked": asked or {"action": "issue", "mode": "inject", "sensitivity": "internal"},
        },
        signed=signed,
        status=status,
    )


def _diff_class(line: str) -> str:
    if line.startswith(("+++", "---", "@@")):
        return "hunk"
    if line.startswith("+"):
        return "add"
    if line.startswith("-"):
        return "del"
    return "same"


@router.post("/policies/simulate")
async def simulate(request: Request) -> Response:
    async def act(request: Request, signed: Signed) -> Response:
        form = form_of(request)
        broker = signed.broker
        try:
            version = int(form["version"]) if form.get("version", "").strip() else None
            depth = int(form.get("depth", "0") or "0")
        except ValueError:
            raise InvalidInputError("version and depth must be whole numbers", field="version") from None
        question = Simulation(
            agent=form.get("agent", ""),
            action=form.get("action", ""),
            purpose=form.get("purpose", ""),
            secret=form.get("secret", ""),
            sensitivity=form.get("sensitivity", "internal"),
            mode=form.get("mode", "inject"),
            destination=form.get("destination", ""),
            method=form.get("method", ""),
            path=form.get("path", ""),
            approval=form.get("approval") == "on",
            depth=depth,
            version=version,
        )
        result = await SimulatorService(broker.storage, broker.audit, broker.policies).simulate(
            signed.operator, question
        )
        simulation = {
            "allowed": result.decision.allowed,
            "policies": list(result.decision.policies),
            "missing": list(result.decision.missing),
            "errors": list(result.decision.errors),
            "explanation": result.explanation,
            "version": result.version,
        }
        asked = {k: v for k, v in form.items() if k != "csrf"}
        return await _policies_page(request, signed, simulation=simulation, asked=asked)

    return await serve(request, act, form_action=True)


# -- secrets and destinations (metadata only) ------------------------------------------------------
@router.get("/secrets")
async def secrets_page(request: Request, prefix: str = "") -> Response:
    async def page(request: Request, signed: Signed) -> Response:
        found = await signed.broker.secrets.list(signed.operator, prefix.strip(), limit=_LIST_LIMIT)
        return render(request, "secrets.html", {"secrets": found.items, "prefix": prefix}, signed=signed)

    return await serve(request, page)


@router.get("/destinations")
async def destinations(request: Request) -> Response:
    async def page(request: Request, signed: Signed) -> Response:
        found = await signed.broker.destinations.list(signed.operator)
        return render(request, "destinations.html", {"destinations": found}, signed=signed)

    return await serve(request, page)
