"""Agent authentication: the OAuth token endpoint, the JWKS, and who-am-I."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from tether.api.deps import BrokerDep
from tether.api.problems import PROBLEM_BASE, Problem
from tether.broker import Broker
from tether.broker.auth import AgentCaller
from tether.domain.agents import AgentRecord
from tether.errors import AuthenticationError, RateLimitedError

router = APIRouter(tags=["auth"])

MAX_FORM_BYTES = 16 * 1024
CLIENT_AUTH_FAILED = "client authentication failed"
_DPOP_ALGS = 'algs="Ed25519 EdDSA ES256"'
# RFC 6749 §5.2: a failed client authentication is 401; everything else the token endpoint refuses is 400.
_STATUS = {"invalid_client": 401}


_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_OTHER_URL = "DPoP proof was made for another URL"


@lru_cache(maxsize=16)
def _loopback_public_url(public: str) -> tuple[str, int, str] | None:
    """``(scheme, port, path)`` of a public URL whose host is a loopback name, else None."""
    parts = urlsplit(public)
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or parts.hostname not in _LOOPBACK_HOSTS:
        return None
    return parts.scheme, port or _DEFAULT_PORTS[parts.scheme], parts.path.rstrip("/")


@lru_cache(maxsize=64)  # per request otherwise: clients send the same few Host headers
def _loopback_alias(public: tuple[str, int, str], host_header: str | None) -> str | None:
    """The public URL spelled with the request's ``Host`` when that is another loopback name
    (``localhost``, ``127.0.0.1``, ``[::1]``) with the same port; None otherwise (see
    docs/identity.md, "Loopback aliases", for why this is safe)."""
    if not host_header:
        return None
    try:
        parts = urlsplit("//" + host_header)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    scheme, public_port, path = public
    if (
        host not in _LOOPBACK_HOSTS
        or parts.username is not None
        or parts.password is not None
        or parts.path
        or parts.query
        or parts.fragment
        or (port or _DEFAULT_PORTS[scheme]) != public_port
    ):
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return f"{scheme}://{netloc}{path}"


def public_base_url(request: Request) -> str:
    """The base URL agents sign for: the configured public URL (``tether server`` always has
    one), else — for an app embedded without one — the request's own. A loopback public URL
    also answers to its other loopback names (``localhost`` for ``127.0.0.1`` and back), same
    scheme, port and path; any other public URL must be used exactly."""
    public = request.app.state.broker.settings.public_url
    if not public:
        return f"{request.url.scheme}://{request.url.netloc}"
    loopback = _loopback_public_url(public)
    if loopback is not None:
        alias = _loopback_alias(loopback, request.headers.get("host"))
        if alias is not None:
            return alias
    return str(public).rstrip("/")


def endpoint_url(request: Request, path: str) -> str:
    """The URL agents sign for (``htu``, ``aud``): :func:`public_base_url` + ``path``."""
    return public_base_url(request) + path


def _explained(request: Request, exc: AuthenticationError) -> str:
    """The refusal's text; a proof made for another URL also says which URL this Tether serves
    (its public URL, which every agent is given anyway) and what to set."""
    message = str(exc)
    if message != _OTHER_URL:
        return message
    public = request.app.state.broker.settings.public_url
    if not public:
        return message
    return (
        f"{message}: this Tether serves {str(public).rstrip('/')}; give agents that URL "
        "(or set TETHER_PUBLIC_URL / public_url to the URL agents use)"
    )


def request_path(request: Request) -> str:
    """The path as the client sent it (still percent-encoded), which is what it signed as htu."""
    raw = request.scope.get("raw_path")
    return raw.decode("latin-1") if isinstance(raw, bytes) else request.url.path


def oauth_error(code: str, description: str, status: int | None = None) -> JSONResponse:
    """An RFC 6749 §5.2 error body that is also an RFC 9457 problem."""
    status = status or _STATUS.get(code, 400)
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = f'DPoP {_DPOP_ALGS}, error="{code}"'
    body = {
        "error": code,
        "error_description": description,
        "type": f"{PROBLEM_BASE}oauth-{code.replace('_', '-')}",
        "title": "Token request refused",
        "status": status,
    }
    return JSONResponse(body, status_code=status, headers=headers)


async def _form(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise AuthenticationError(
            "the token endpoint takes application/x-www-form-urlencoded", code="invalid_request"
        )
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise AuthenticationError(
            f"the token request is larger than {MAX_FORM_BYTES} bytes", code="invalid_request"
        )
    try:
        pairs = parse_qsl(
            body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=16
        )
    except (UnicodeDecodeError, ValueError):
        raise AuthenticationError("malformed form body", code="invalid_request") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:  # RFC 6749 §3.2: parameters must not be included more than once
            raise AuthenticationError(f"parameter {name[:40]!r} is repeated", code="invalid_request")
        form[name] = value
    return form


@router.post("/v1/auth/token", response_model=None)
async def token(request: Request, broker: BrokerDep) -> JSONResponse:
    """Client credentials (RFC 7523 assertion) or token exchange (RFC 8693) → a DPoP-bound token."""
    return await token_endpoint(request)


def too_many_refusals(exc: RateLimitedError) -> JSONResponse:
    """429 with ``Retry-After``: this client id or address used up its refused token requests
    for the current window (docs/operations.md, "Rate limits of refused authentication"). The
    same words for both, so the answer tells nothing about which agents exist."""
    seconds = exc.retry_after_seconds
    body = {
        "error": "slow_down",
        "error_description": f"too many refused token requests; retry after {seconds} seconds",
        "type": f"{PROBLEM_BASE}rate-limited",
        "title": "Too many refused token requests",
        "status": 429,
        "detail": f"too many refused token requests; retry after {seconds} seconds",
    }
    headers = {"Retry-After": str(seconds), "Cache-Control": "no-store"}
    return JSONResponse(body, status_code=429, headers=headers)


async def token_endpoint(request: Request) -> JSONResponse:
    """``POST /v1/auth/token`` as a plain endpoint (the hot lane serves it; see ``tether.api.hot``)."""
    broker: Broker = request.app.state.broker
    address = request.client.host if request.client is not None else None
    try:
        form = await _form(request)
    except AuthenticationError as exc:
        try:
            await broker.auth.refuse_token_request(exc, address=address)
        except RateLimitedError as limited:
            return too_many_refusals(limited)
        return oauth_error(exc.code, str(exc))
    try:
        grant = await broker.auth.issue_token(
            form, request.headers.get("dpop"), endpoint_url(request, "/v1/auth/token"), address=address
        )
    except RateLimitedError as exc:
        return too_many_refusals(exc)
    except AuthenticationError as exc:
        # Client authentication failures all read the same to the caller, so that nobody can
        # probe which agents exist or are disabled; the audit event holds the precise reason.
        description = CLIENT_AUTH_FAILED if exc.code == "invalid_client" else _explained(request, exc)
        return oauth_error(exc.code, description)
    body: dict[str, Any] = {
        "access_token": grant.token.token,
        "token_type": "DPoP",
        "expires_in": grant.ttl_seconds,
    }
    if grant.grant_type.endswith("token-exchange"):
        body["issued_token_type"] = "urn:ietf:params:oauth:token-type:access_token"
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@router.get("/v1/auth/jwks")
async def jwks(broker: BrokerDep) -> dict[str, Any]:
    """Tether's token-signing public keys, for anyone who verifies Tether's access tokens."""
    return broker.auth.jwks()


async def get_agent(request: Request, broker: BrokerDep) -> AgentRecord:
    """The agent behind ``Authorization: DPoP`` and its proof; 401 otherwise."""
    return (await get_agent_caller(request, broker)).agent


async def get_agent_caller(request: Request, broker: BrokerDep) -> AgentCaller:
    """The agent behind ``Authorization: DPoP`` and the key its token is bound to; 401 otherwise."""
    return await agent_caller(request, broker, defer_replay=False)


async def get_agent_caller_deferred(request: Request, broker: BrokerDep) -> AgentCaller:
    """As :func:`get_agent_caller`, the proof's single use recorded by the service together with
    what the request does (activation routes: one write instead of two)."""
    return await agent_caller(request, broker, defer_replay=True)


async def agent_caller(request: Request, broker: Broker, *, defer_replay: bool) -> AgentCaller:
    """The agent behind the request's ``Authorization: DPoP`` and ``DPoP`` headers; a 401 problem
    otherwise. With ``defer_replay``, the proof's single use is left to the service (see
    :meth:`~tether.broker.auth.AuthService.authenticate_caller`)."""
    url = endpoint_url(request, request_path(request))
    try:
        return await broker.auth.authenticate_caller(
            request.headers.get("authorization"),
            request.headers.get("dpop"),
            request.method,
            url,
            defer_replay=defer_replay,
        )
    except AuthenticationError as exc:
        raise Problem(
            401,
            "unauthenticated",
            "Authentication required",
            f"{exc.code}: {_explained(request, exc)}",
            headers={"WWW-Authenticate": f'DPoP {_DPOP_ALGS}, error="{exc.code}"'},
        ) from None


AgentDep = Annotated[AgentRecord, Depends(get_agent)]
AgentCallerDep = Annotated[AgentCaller, Depends(get_agent_caller)]
ActivatingCallerDep = Annotated[AgentCaller, Depends(get_agent_caller_deferred)]


@router.get("/v1/auth/whoami")
async def whoami(agent: AgentDep) -> dict[str, Any]:
    """The authenticated agent: its SPIFFE ID and attributes."""
    attributes = agent.attributes
    return {
        "id": agent.id,
        "name": agent.name,
        "trust_domain": agent.trust_domain,
        "attributes": {
            "team": attributes.team,
            "environment": attributes.environment,
            "owner": attributes.owner,
            "labels": sorted(attributes.labels),
        },
    }
