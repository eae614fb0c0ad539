"""The console's plumbing: sessions on requests, CSRF checks, rendering, errors as pages, headers.

Every page handler runs inside :func:`serve`: the session is checked (signature, timeouts, the
operator still active, not signed out), a form action's CSRF token is checked, and the response gets
the console's security headers and a renewed session cookie. No rules live here either.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from tether.api.problems import problem_for
from tether.broker import Broker
from tether.console.sessions import (
    COOKIE,
    ConsoleSession,
    csrf_matches,
    csrf_token,
    decode_session,
    derive_session_key,
    encode_session,
)
from tether.domain.operators import OperatorRecord, Permission, role_allows
from tether.errors import AuthenticationError, InvalidInputError, PermissionDeniedError, TetherError

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "HEADERS",
    "HERE",
    "PAGES",
    "Redirect",
    "Signed",
    "broker_of",
    "check_csrf",
    "error_page",
    "form_of",
    "is_secure",
    "read_form",
    "render",
    "serve",
    "set_session_cookie",
    "signed_in",
    "templates",
    "with_headers",
]

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))

#: No inline script or style anywhere; everything comes from Tether itself.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make browsers send Origin: null
    "Cache-Control": "no-store",
}
_MAX_FORM_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class _Page:
    name: str
    path: str
    permission: Permission


#: The navigation, in priority order; each page shows for the roles whose permission it needs
#: (the broker still decides every read and action).
PAGES = (
    _Page("Approvals", "/ui/approvals", Permission.APPROVAL_DECIDE),
    _Page("Tasks", "/ui/tasks", Permission.TASK_READ),
    _Page("Audit", "/ui/audit", Permission.AUDIT_READ),
    _Page("Reach", "/ui/reach", Permission.AUDIT_READ),
    _Page("Policies", "/ui/policies", Permission.POLICY_READ),
    _Page("Secrets", "/ui/secrets", Permission.SECRET_READ_METADATA),
    _Page("Destinations", "/ui/destinations", Permission.DESTINATION_READ),
)


@dataclass(frozen=True, slots=True)
class Signed:
    """A request's signed-in operator, its session and the session key."""

    operator: OperatorRecord
    session: ConsoleSession
    key: bytes
    broker: Broker

    @property
    def csrf(self) -> str:
        return csrf_token(self.session.id, self.key)

    def may(self, permission: Permission) -> bool:
        return role_allows(self.operator.role, permission)


class Redirect(Exception):  # noqa: N818 - control flow to the sign-in page, not an error
    def __init__(self, location: str) -> None:
        self.location = location


def broker_of(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


def is_secure(request: Request) -> bool:
    """Served over TLS: the request came over HTTPS, or Tether's public URL is HTTPS (TLS ends at a
    proxy in front, which may talk plain HTTP to Tether)."""
    public_url = broker_of(request).settings.public_url or ""
    return request.url.scheme == "https" or public_url.startswith("https://")


def with_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers[name] = value
    return response


def set_session_cookie(request: Request, response: Response, value: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=max_age,
        path="/ui",
        httponly=True,
        secure=is_secure(request),
        samesite="strict",
    )


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    signed: Signed | None = None,
) -> Response:
    values: dict[str, Any] = {
        "request": request,
        "signed": signed,
        "pages": [p for p in PAGES if signed is not None and signed.may(p.permission)],
        "current": request.url.path,
        **context,
    }
    return with_headers(templates.TemplateResponse(request, template, values, status_code=status))


def error_page(request: Request, exc: BaseException, signed: Signed | None) -> Response:
    """A refusal as a page: status, title and detail from the one error → problem mapping."""
    problem = problem_for(exc)
    body = json.loads(bytes(problem.body))
    if "html" not in request.headers.get("accept", "html"):
        return with_headers(problem)  # a non-browser client gets the problem+json it expects
    return render(
        request,
        "error.html",
        {
            "title": body.get("title", "Error"),
            "detail": body.get("detail", ""),
            "status": problem.status_code,
        },
        status=problem.status_code,
        signed=signed,
    )


async def signed_in(request: Request) -> Signed:
    """The session's operator, or a redirect to the sign-in page. Timeouts and sign-out are
    enforced here; the operator is read from the store (a revoked operator is out at once)."""
    broker = broker_of(request)
    key = derive_session_key(broker.keys.root_key())  # sealed: SealedError, a 503 page
    cookie = request.cookies.get(COOKIE, "")
    back = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe="/?=&")
    if not cookie:
        raise Redirect(f"/ui/login?next={back}")
    try:
        session = decode_session(cookie, key)
        settings = broker.settings
        session.check(
            broker.clock.now(),
            idle_seconds=settings.console_idle_timeout_seconds,
            max_seconds=settings.console_session_max_seconds,
        )
        operator = await broker.operators.console_operator(session.operator_id, session.id)
    except AuthenticationError as exc:
        raise Redirect(f"/ui/login?next={back}&why={_why(exc)}") from None
    return Signed(operator, session, key, broker)


def _why(exc: AuthenticationError) -> str:
    """A code for the sign-in page (which shows fixed texts only)."""
    text = str(exc)
    for code in ("idle", "expired", "closed", "revoked"):
        if code in text:
            return code
    return "signin"


Handler = Callable[[Request, Signed], Awaitable[Response]]


async def serve(request: Request, handler: Handler, *, form_action: bool = False) -> Response:
    """Sign-in check, CSRF check for actions, the handler, errors as pages, the session renewed."""
    signed: Signed | None = None
    try:
        signed = await signed_in(request)
        if form_action:
            await check_csrf(request, signed)
        response = await handler(request, signed)
    except Redirect as redirect:
        return with_headers(RedirectResponse(redirect.location, status_code=303))
    except TetherError as exc:
        response = error_page(request, exc, signed)
    if signed is not None:
        renewed = signed.session.touched(signed.broker.clock.now())
        max_age = signed.broker.settings.console_session_max_seconds
        set_session_cookie(request, response, encode_session(renewed, signed.key), max_age)
    return response


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the app bounds its size), one value a field."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise InvalidInputError("a form (application/x-www-form-urlencoded) is expected", field="body")
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        raise InvalidInputError("the form is too large", field="body")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        raise InvalidInputError("the form could not be read", field="body") from None
    return {name: values[-1] for name, values in parsed.items()}


async def check_csrf(request: Request, signed: Signed) -> None:
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise PermissionDeniedError("the form was sent from another origin")
    form = await read_form(request)
    if not csrf_matches(signed.session.id, signed.key, form.get("csrf", "")):
        raise PermissionDeniedError(
            "the form's anti-forgery token is missing or wrong: reload the page and retry"
        )
    request.state.form = form


def form_of(request: Request) -> dict[str, str]:
    form: dict[str, str] = request.state.form
    return form


def _iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


templates.env.filters["when"] = _iso
templates.env.filters["pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=True, default=str)
