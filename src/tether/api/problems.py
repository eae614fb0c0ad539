"""RFC 9457 problem details: every error leaves the API as ``application/problem+json``.

Each problem has a stable ``type`` (``urn:tether:problem:<slug>``) that clients can
branch on. Details never carry secret values or request bodies.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tether import errors
from tether.store.base import AuditCorruptionError

__all__ = ["PROBLEM_JSON", "Problem", "install_problem_handlers", "problem_for", "problem_response"]

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "urn:tether:problem:"


class Problem(Exception):  # noqa: N818 - RFC 9457 calls it a problem
    """An HTTP error raised from the API layer itself (not from the service)."""

    def __init__(
        self, status: int, slug: str, title: str, detail: str = "", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = headers or {}


# (status, slug, title) per error class; the most specific class wins (checked in MRO order).
_MAPPING: dict[type[errors.TetherError], tuple[int, str, str]] = {
    errors.InvalidInputError: (422, "invalid-input", "Invalid input"),
    errors.NotFoundError: (404, "not-found", "Not found"),
    errors.ConflictError: (409, "conflict", "Conflict"),
    errors.AuthenticationError: (401, "unauthenticated", "Authentication required"),
    errors.DeniedError: (403, "denied", "Denied"),
    errors.PermissionDeniedError: (403, "forbidden", "Forbidden"),
    errors.RateLimitedError: (429, "too-many-requests", "Too many requests"),
    errors.EngineUnavailableError: (503, "engine-unavailable", "A secret engine is unavailable"),
    errors.EngineError: (502, "engine-failed", "A secret engine failed"),
    errors.SealedError: (503, "sealed", "Tether is sealed"),
    errors.DecryptionError: (500, "decryption-failed", "A stored value could not be decrypted"),
    errors.KeyProviderError: (503, "key-unavailable", "The root key is unavailable"),
    errors.CryptoError: (400, "crypto", "Key error"),
    AuditCorruptionError: (500, "audit-corrupted", "The audit log failed verification"),
    errors.StorageUnavailableError: (503, "storage-unavailable", "Storage is unavailable"),
    errors.StorageError: (503, "storage-error", "Storage error"),
    errors.ConfigError: (500, "config", "Configuration error"),
}

_HTTP_SLUGS = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "invalid-input",
    429: "too-many-requests",
}


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str = "",
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"type": PROBLEM_BASE + slug, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _for_tether_error(exc: errors.TetherError) -> JSONResponse:
    for cls in type(exc).__mro__:
        if cls in _MAPPING:
            status, slug, title = _MAPPING[cls]
            break
    else:  # pragma: no cover - TetherError itself is not raised
        status, slug, title = 500, "internal", "Internal error"
    headers = {"WWW-Authenticate": 'Bearer realm="tether"'} if status == 401 else None
    if isinstance(exc, errors.AuthenticationError) and exc.code == "invalid_dpop_proof":
        # An agent request (DPoP) refused after authentication, e.g. a replayed proof.
        headers = {"WWW-Authenticate": f'DPoP error="{exc.code}"'}
    if status == 503:
        headers = {"Retry-After": "5"}
    if isinstance(exc, errors.RateLimitedError):
        headers = {"Retry-After": str(exc.retry_after_seconds)}
    extra: dict[str, Any] = {}
    if isinstance(exc, errors.DeniedError):
        decision = exc.decision.to_json() if exc.decision is not None else None
        extra["decision"] = decision or {"allowed": False, "policies": [], "errors": [], "missing": []}
        if exc.approval_id is not None:
            extra["approval_id"] = exc.approval_id
    messages = getattr(exc, "messages", None)  # a policy set's validator messages
    located = getattr(exc, "located", None)  # the same, placed in a replay candidate (line, column)
    if isinstance(exc, errors.InvalidInputError) and isinstance(located, list) and located:
        extra["errors"] = located
    elif isinstance(exc, errors.InvalidInputError) and isinstance(messages, list) and messages:
        extra["errors"] = [{"message": str(message)} for message in messages]
    elif isinstance(exc, errors.InvalidInputError) and exc.field:
        extra["errors"] = [{"field": exc.field, "message": str(exc)}]
    detail = str(exc)
    if isinstance(exc, errors.StorageError | errors.ConfigError | errors.EngineError) or status == 500:
        # Operators read the specifics in the log; callers (perhaps unauthenticated) learn
        # nothing about paths, hosts or internals.
        log.error("request failed: %s: %s", type(exc).__name__, exc)
        detail = "see the server log for details"
    return problem_response(status, slug, title, detail, headers=headers, **extra)


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc if part not in {"body", "query", "path"}) or "body"


def _for_validation_error(exc: RequestValidationError) -> JSONResponse:
    # Never echo the offending input: it may be a secret value.
    details = [
        {
            "field": "body" if e.get("type") == "json_invalid" else _loc(tuple(e.get("loc", ()))),
            "message": str(e.get("msg", "")),
        }
        for e in exc.errors()
    ]
    detail = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return problem_response(422, "invalid-input", "Invalid input", detail, errors=details)


def problem_for(exc: BaseException) -> JSONResponse:
    """The one way from an exception to its problem response (FastAPI's handlers and the hot
    lane's endpoints both use it)."""
    if isinstance(exc, errors.TetherError):
        return _for_tether_error(exc)
    if isinstance(exc, Problem):
        return problem_response(exc.status, exc.slug, exc.title, exc.detail, headers=exc.headers)
    if isinstance(exc, RequestValidationError):
        return _for_validation_error(exc)
    if isinstance(exc, StarletteHTTPException):
        slug = _HTTP_SLUGS.get(exc.status_code, "http-error")
        title = str(exc.detail) if isinstance(exc.detail, str) else "HTTP error"
        return problem_response(exc.status_code, slug, title, headers=dict(exc.headers or {}))
    # The class name only: exception text from deep inside may quote data.
    log.error("unexpected error: %s", type(exc).__name__)
    return problem_response(500, "internal", "Internal error", "the request failed; see the server log")


def install_problem_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        from tether.api.auth_first import authenticate_unparsed, refused_before_authentication

        if refused_before_authentication(exc):  # authenticate first: 401 before 422
            exc = await authenticate_unparsed(request) or exc
        return problem_for(exc)

    for kind in (errors.TetherError, Problem, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, handle)
