"""Authentication before body validation, on FastAPI's routes.

FastAPI decodes a JSON body before it runs a route's dependencies, so a body that is not JSON at
all is refused (422 ``json_invalid``, or 400 when it cannot even be decoded) before the
authentication dependency has run: an unauthenticated caller would learn how the route parses
its input before being told who may call it. Any other validation error is found after the
dependencies, authentication included, have run. So when a request is refused that early, the
route's authentication runs now: an unauthenticated caller gets its 401; an authenticated one the
validation error. (The hot lane, :mod:`tether.api.hot`, authenticates before reading the body.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from tether.api.deps import get_operator
from tether.api.routes_auth import agent_caller, get_agent, get_agent_caller, get_agent_caller_deferred
from tether.broker import Broker

__all__ = ["authenticate_unparsed", "refused_before_authentication"]

# FastAPI's answer when a body cannot be decoded at all (fastapi.routing.get_request_handler).
_UNPARSABLE_BODY = "There was an error parsing the body"


async def _operator(request: Request, broker: Broker) -> object:
    return await get_operator(request, broker)


async def _agent(request: Request, broker: Broker) -> object:
    # Nothing else will happen in this request, so the proof's single use is recorded now.
    return await agent_caller(request, broker, defer_replay=False)


async def _by_scheme(request: Request, broker: Broker) -> object:
    """Routes that authenticate inside the endpoint accept an operator (``Bearer``) or an agent."""
    scheme = request.headers.get("authorization", "").partition(" ")[0].lower()
    return await (_operator if scheme == "bearer" else _agent)(request, broker)


_AUTHENTICATORS: dict[Any, Callable[[Request, Broker], Awaitable[object]]] = {
    get_operator: _operator,
    get_agent: _agent,
    get_agent_caller: _agent,
    get_agent_caller_deferred: _agent,
}


def refused_before_authentication(exc: BaseException) -> bool:
    """Whether FastAPI refused the request while decoding its body, before any dependency ran."""
    if isinstance(exc, RequestValidationError):
        return any(error.get("type") == "json_invalid" for error in exc.errors())
    return isinstance(exc, StarletteHTTPException) and exc.detail == _UNPARSABLE_BODY


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


async def authenticate_unparsed(request: Request) -> Exception | None:
    """Authenticate a request refused before its route's dependencies ran: the refusal if the
    caller is not who the route requires, else None. Routes with a body authenticate with one of
    the known dependencies or, if they take no authentication dependency (they authenticate in
    the endpoint), as an operator or an agent by the Authorization scheme: no route with a body
    is open to anonymous callers."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if not isinstance(dependant, Dependant) or not dependant.body_params:
        return None
    check = next((_AUTHENTICATORS[call] for call in _calls(dependant) if call in _AUTHENTICATORS), _by_scheme)
    try:
        await check(request, request.app.state.broker)
    except Exception as exc:  # noqa: BLE001 - the refusal is rendered by problem_for
        return exc
    return None
