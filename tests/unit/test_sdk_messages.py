"""What the SDK's exceptions say: which policies decided a denial and what is missing, what to
check when authentication is refused, and where Tether could not be reached. Egress paths that
httpx would rewrite before sending are refused before sending."""

from __future__ import annotations

import base64
import json
import socket
from typing import Any

import httpx
import pytest

from tether.crypto.jose import generate_private_jwk
from tether.egress.paths import UnsafePathError, normalise_path
from tether.errors import InvalidInputError, TetherError
from tether.sdk import Agent, ApprovalRequired, AsyncAgent, TetherAPIError, TetherDenied
from tether.sdk.client import AUTH_FAILED_HINT, TetherConnectionError, api_error
from tether.sdk.egress import EgressClient, egress_path

AGENT = "spiffe://acme.test/agent/ci"
TASK = "tsk_" + "a" * 26


def _denial(policies: list[str], missing: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "urn:tether:problem:denied",
        "title": "Denied",
        "status": 403,
        "detail": "activate denied",
        "decision": {"allowed": False, "policies": policies, "errors": [], "missing": missing},
        **extra,
    }


def test_denied_message_names_the_deciding_policies_and_what_is_missing() -> None:
    error = api_error(403, _denial(["forbid-restricted-outside-incident"], []))
    assert isinstance(error, TetherDenied)
    assert str(error) == "HTTP 403: activate denied (policies: forbid-restricted-outside-incident)"
    assert error.policies == ["forbid-restricted-outside-incident"]


def test_denied_for_an_approval_names_the_permit_the_missing_approval_and_the_request() -> None:
    error = api_error(403, _denial(["permit-restricted"], ["approval"], approval_id="apr_1"))
    assert isinstance(error, ApprovalRequired)
    assert str(error) == (
        "HTTP 403: activate denied (policies: permit-restricted; missing: approval; approval apr_1)"
    )


def test_default_deny_says_no_policy_permits_it() -> None:
    assert str(api_error(403, _denial([], []))) == "HTTP 403: activate denied (no policy permits it)"


def _refusing_transport(seen: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            401,
            json={"error": "invalid_client", "error_description": "client authentication failed"},
        )

    return httpx.MockTransport(answer)


def test_refused_authentication_stays_opaque_but_says_what_to_check() -> None:
    seen: list[httpx.Request] = []
    http = httpx.Client(transport=_refusing_transport(seen))
    agent = Agent("http://tether.test", AGENT, generate_private_jwk(), http=http)
    with agent, pytest.raises(TetherAPIError) as refused:
        agent.whoami()
    assert refused.value.status == 401
    assert str(refused.value) == f"HTTP 401: client authentication failed ({AUTH_FAILED_HINT})"
    assert "tether audit query --kind auth.*" in str(refused.value)
    assert refused.value.body["error_description"] == "client authentication failed"
    assert [r.url.path for r in seen] == ["/v1/auth/token"]


async def test_async_refused_authentication_says_what_to_check() -> None:
    http = httpx.AsyncClient(transport=_refusing_transport([]))
    async with AsyncAgent("http://tether.test", AGENT, generate_private_jwk(), http=http) as agent:
        with pytest.raises(TetherAPIError, match="the agent is unknown, disabled, or the key does not match"):
            await agent.whoami()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: nothing listens there


def test_server_down_raises_the_sdks_own_error_naming_the_address() -> None:
    address = f"http://127.0.0.1:{_closed_port()}"
    agent = Agent(address, AGENT, generate_private_jwk())
    with agent, pytest.raises(TetherConnectionError) as down:
        agent.whoami()
    assert isinstance(down.value, TetherError)
    assert not isinstance(down.value, httpx.HTTPError)
    assert down.value.address == address
    assert str(down.value) == f"cannot connect to Tether at {address}: is `tether server` running there?"


async def test_async_server_down_raises_the_sdks_own_error() -> None:
    address = f"http://127.0.0.1:{_closed_port()}"
    async with AsyncAgent(address, AGENT, generate_private_jwk()) as agent:
        with pytest.raises(TetherConnectionError, match="cannot connect to Tether at"):
            await agent.whoami()


def test_timeout_is_the_sdks_own_error_too() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    http = httpx.Client(transport=httpx.MockTransport(slow))
    agent = Agent("http://tether.test", AGENT, generate_private_jwk(), http=http)
    with agent, pytest.raises(TetherConnectionError, match=r"^Tether at http://tether\.test did not answer"):
        agent.token()


DOT_PATHS = [
    "/api/../etc/passwd",
    "/api/./x",
    "/..",
    "/api/%2e%2e/etc/passwd",
    "/api/%2E%2e/x",
    "/api/.%2e/x",
    "/api/..;x/etc",
    "/api/%2e/x",
    "/a/b/../",
]


@pytest.mark.parametrize("path", DOT_PATHS)
def test_dot_segments_are_refused_before_sending_as_tether_refuses_them(path: str) -> None:
    with pytest.raises(UnsafePathError, match=r"'\.' or '\.\.' segments"):
        normalise_path(path)  # what Tether answers with 400 unsafe-path
    with pytest.raises(InvalidInputError, match=r"'\.' or '\.\.' segments") as refused:
        egress_path("local", path)
    assert refused.value.field == "path"
    assert "unsafe-path" in str(refused.value)


def test_egress_call_with_dot_segments_sends_nothing() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": "t", "expires_in": 60})

    http = httpx.Client(transport=httpx.MockTransport(answer))
    agent = Agent("http://tether.test", AGENT, generate_private_jwk(), http=http)
    with agent, pytest.raises(InvalidInputError, match="unsafe path"):
        EgressClient(agent, TASK).get("local", "/api/../etc/passwd")
    assert seen == []


@pytest.mark.parametrize("path", ["/repos/acme/app", "/a..b/c", "/.well-known/x", "/v1/x/", "/a%20b"])
def test_paths_without_dot_segments_pass(path: str) -> None:
    assert egress_path("local", path) == f"/v1/egress/local{path}"


def test_the_proof_signs_the_url_httpx_sends() -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"access_token": "t", "expires_in": 60})

    http = httpx.Client(transport=httpx.MockTransport(answer))
    with Agent("http://tether.test", AGENT, generate_private_jwk(), http=http) as agent:
        agent.request("GET", "/v1/egress/local/a b/%C3%A9")
    payload = sent[-1].headers["DPoP"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["htu"] == "http://tether.test/v1/egress/local/a%20b/%C3%A9"
    assert sent[-1].url.raw_path == b"/v1/egress/local/a%20b/%C3%A9"
