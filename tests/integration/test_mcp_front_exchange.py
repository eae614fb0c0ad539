"""The MCP front's single-exchange path: a handshake-era JSON-RPC request (no
``MCP-Protocol-Version``, or 2024-11-05 … 2025-11-25) that needs no event stream is answered with
one JSON body by the SDK's kernel, without the SDK's per-request transport. Malformed requests get
JSON-RPC errors, never a crash; every request's proof is used up; refusals are recorded.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.integration.test_mcp_gateway import Gateway, alive, gw, wait_dead  # noqa: F401 - the fixture
from tether.mcp.front import DENIED

JSON_ONLY = {"Accept": "application/json", "Content-Type": "application/json"}
BOTH = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def post(
    gw: Gateway,  # noqa: F811 - the fixture's value
    task_id: str,
    body: Any,
    headers: dict[str, str] | None = None,
    signed: dict[str, str] | None = None,
) -> tuple[httpx.Response, dict[str, str]]:
    """POST ``body`` (JSON, or bytes as they are) to /mcp with a fresh proof; the response and the
    signed headers (to replay them)."""
    if signed is None:
        token = await gw.agent.token()
        signed = gw.agent._session.signed_headers("POST", gw.url + "/mcp", token)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {**(headers or JSON_ONLY), **signed, "Tether-Task": task_id}
    return await gw.http.post("/mcp", content=content, headers=all_headers), signed


def call(request_id: int, name: str, arguments: dict[str, Any], **params: Any) -> dict[str, Any]:
    body = {"name": name, "arguments": arguments, **params}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": body}


async def test_handshake_era_requests_are_answered_with_one_json_body(gw: Gateway) -> None:  # noqa: F811
    task_id = await gw.open_task(["gh/search"])
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }
    response, _ = await post(gw, task_id, init)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert "mcp-session-id" not in response.headers  # stateless
    result = response.json()["result"]
    assert result["protocolVersion"] == "2025-06-18"
    assert result["serverInfo"]["name"] == "tether"
    assert "tools" in result["capabilities"]
    version = {"MCP-Protocol-Version": "2025-06-18"}
    listed, _ = await post(
        gw, task_id, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, {**BOTH, **version}
    )
    assert listed.status_code == 200, listed.text
    assert listed.headers["content-type"] == "application/json"
    assert [tool["name"] for tool in listed.json()["result"]["tools"]] == ["gh__search"]
    called, _ = await post(gw, task_id, call(3, "gh__search", {"query": "flaky"}))
    assert called.status_code == 200, called.text
    answered = called.json()
    assert (answered["jsonrpc"], answered["id"]) == ("2.0", 3)
    assert answered["result"]["content"] == [{"type": "text", "text": "results for flaky (limit 10)"}]
    assert answered["result"]["isError"] is False
    events = await gw.events("tool.call", task_id)
    assert [event["resource"] for event in events] == ["tool:gh/search"]


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"{not json", JSON_ONLY, 400, -32700),
        ([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}] * 2, JSON_ONLY, 400, -32600),  # a batch
        ({"jsonrpc": "1.0", "id": 1, "method": "tools/list"}, JSON_ONLY, 400, -32600),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, JSON_ONLY, 400, -32600),
        ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "tools/list"}, JSON_ONLY, 400, -32600),
        ("a string", JSON_ONLY, 400, -32600),
        (
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            {**JSON_ONLY, "Accept": "text/plain"},
            406,
            -32600,
        ),
        (
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            {**JSON_ONLY, "Content-Type": "text/plain"},
            415,
            -32600,
        ),
        ({"jsonrpc": "2.0", "id": 7, "method": "no/such/method"}, JSON_ONLY, 200, -32601),
        ({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": 5}}, JSON_ONLY, 200, -32602),
        (
            {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"arguments": {}}},
            JSON_ONLY,
            200,
            -32602,
        ),
        (call(7, "gh__search", {"query": 5}), JSON_ONLY, 200, -32602),  # the pinned schema: a string
        (call(7, "gh__search", "not an object"), JSON_ONLY, 200, -32602),
        (call(7, "no-such-server__x", {}), JSON_ONLY, 200, -32602),
        (call(7, "gh__whoami", {}), JSON_ONLY, 200, DENIED),  # not declared by the task
    ],
)
async def test_malformed_or_refused_requests_get_json_rpc_errors_and_use_up_the_proof(
    gw: Gateway,  # noqa: F811
    body: Any,
    headers: dict[str, str],
    status: int,
    code: int,
) -> None:
    task_id = await gw.open_task(["gh/search"])
    response, signed = await post(gw, task_id, body, headers)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["jsonrpc"] == "2.0"
    assert error["error"]["code"] == code, error
    assert error["id"] == (7 if status == 200 else None)
    again, _ = await post(gw, task_id, body, headers, signed)  # the same proof again
    # Refused at once (401), or, for a call whose proof is recorded with its event, as a JSON-RPC
    # refusal that names the replay.
    assert again.status_code == 401 or "DPoP proof replayed" in again.json()["error"]["message"], again.text
    assert await gw.events("tool.call", task_id) == []


async def test_notifications_and_responses_are_accepted_without_a_body(gw: Gateway) -> None:  # noqa: F811
    task_id = await gw.open_task(["gh/search"])
    for message in (
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}},
        {"jsonrpc": "2.0", "id": 9, "result": {}},
    ):
        response, signed = await post(gw, task_id, message)
        assert response.status_code == 202, response.text
        assert response.content == b""
        again, _ = await post(gw, task_id, message, signed=signed)
        assert again.status_code == 401


async def test_a_call_that_asks_for_progress_is_answered_as_an_event_stream(gw: Gateway) -> None:  # noqa: F811
    task_id = await gw.open_task(["gh/search"])
    body = call(4, "gh__search", {"query": "flaky"}, _meta={"progressToken": "p1"})
    response, _ = await post(gw, task_id, body, BOTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "results for flaky" in response.text
    assert len(await gw.events("tool.call", task_id)) == 1


async def test_a_call_the_sdk_refuses_on_the_2026_wire_uses_up_its_proof(gw: Gateway) -> None:  # noqa: F811
    """On the 2026-07-28 wire the SDK's own entry answers; a call whose parameters it refuses
    before any handler runs still uses up its proof (after the answer): the proof cannot then
    carry a valid call."""
    task_id = await gw.open_task(["gh/search"])
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    headers = {
        **BOTH,
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "gh__search",
    }
    response, signed = await post(gw, task_id, call(5, "gh__search", "not an object", _meta=meta), headers)
    assert response.json()["error"]["code"] == -32602, response.text
    valid = call(6, "gh__search", {"query": "flaky"}, _meta=meta)
    again, _ = await post(gw, task_id, valid, headers, signed)  # the same proof, now for a valid call
    assert again.status_code == 401 or "DPoP proof replayed" in again.json()["error"]["message"], again.text
    assert await gw.events("tool.call", task_id) == []
    ok, _ = await post(gw, task_id, valid, headers)  # a fresh proof
    assert ok.status_code == 200, ok.text
    assert "results for flaky" in ok.text
    assert len(await gw.events("tool.call", task_id)) == 1


MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
MODERN = {**BOTH, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "gh__search"}


def _shape(response: httpx.Response) -> tuple[int, str, Any]:
    """The status, the media type and the whole body (JSON parsed)."""
    media = response.headers.get("content-type", "").partition(";")[0]
    if media != "application/json" or not response.content:
        return response.status_code, media, response.content
    return response.status_code, media, response.json()


@pytest.mark.parametrize(
    ("case", "body", "headers"),
    [
        ("a valid call", call(1, "gh__search", {"query": "flaky"}, _meta=MODERN_META), MODERN),
        (
            "Mcp-Name not the body's",
            call(2, "gh__search", {"query": "x"}, _meta=MODERN_META),
            {**MODERN, "Mcp-Name": "gh__whoami"},
        ),
        (
            "Mcp-Method missing",
            call(3, "gh__search", {"query": "x"}, _meta=MODERN_META),
            {k: v for k, v in MODERN.items() if k != "Mcp-Method"},
        ),
        ("no _meta envelope", call(4, "gh__search", {"query": "x"}), MODERN),
        (
            "an Mcp-Param header the tool's schema does not declare",
            call(9, "gh__search", {"query": "x"}, _meta=MODERN_META),
            {**MODERN, "Mcp-Param-Query": "y"},
        ),
        (
            "an unknown method",
            {"jsonrpc": "2.0", "id": 5, "method": "nope/nope", "params": {"_meta": MODERN_META}},
            {**MODERN, "Mcp-Method": "nope/nope"},
        ),
        ("parameters the kernel refuses", call(6, "gh__search", "not an object", _meta=MODERN_META), MODERN),
        (
            "a notification",
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
            {**MODERN, "Mcp-Method": "notifications/cancelled"},
        ),
        ("a batch", [call(7, "gh__search", {"query": "x"}, _meta=MODERN_META)], MODERN),
        ("not JSON", b"{nope", MODERN),
        (
            "JSON not accepted",
            call(8, "gh__search", {"query": "x"}, _meta=MODERN_META),
            {**MODERN, "Accept": "text/event-stream"},
        ),
    ],
)
async def test_the_2026_wire_answers_as_the_sdks_own_entry_does(
    gw: Gateway,  # noqa: F811 - the fixture's value
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    body: Any,
    headers: dict[str, str],
) -> None:
    """Tether answers a plain 2026-07-28 request itself (the SDK's checks, then its kernel) and
    leaves anything else to the SDK's entry: either way, the client sees what the SDK's own entry
    answers."""
    task_id = await gw.open_task(["gh/search"])
    ours, _ = await post(gw, task_id, body, headers)
    monkeypatch.setattr("tether.mcp.front.answer_modern", _never)  # the SDK's entry, always
    theirs, _ = await post(gw, task_id, body, headers)
    assert _shape(ours) == _shape(theirs), (case, ours.text, theirs.text)


async def _never(*_: Any) -> None:
    return None


async def test_an_upstream_opened_by_handshake_era_calls_dies_when_its_task_expires(gw: Gateway) -> None:  # noqa: F811
    """The loop that closes the upstreams of ended tasks runs whichever path opened the session:
    here only one-JSON-body requests ever reach the front, and the task then expires unused."""
    task_id = await gw.open_task(["gh/whoami"], ttl_seconds=5)
    response, _ = await post(gw, task_id, call(1, "gh__whoami", {}))
    assert response.status_code == 200, response.text
    pid = response.json()["result"]["structuredContent"]["pid"]
    assert alive(pid)
    assert await wait_dead(pid, 25), "the upstream outlived its expired task"


async def test_arguments_that_cannot_be_sent_as_utf8_are_refused_and_the_upstream_lives_on(
    gw: Gateway,  # noqa: F811 - the fixture's value
) -> None:
    """A lone surrogate (valid JSON escape, not UTF-8 text) is refused for that call alone: before,
    serializing it failed the task's upstream session, and every later call with it."""
    task_id = await gw.open_task(["gh/search"])
    body = json.dumps(call(1, "gh__search", {"query": "PLACEHOLDER"}, _meta=MODERN_META)).encode()
    body = body.replace(b'"PLACEHOLDER"', b'"\\ud800"')
    refused, _ = await post(gw, task_id, body, MODERN)
    assert refused.json()["error"]["code"] == -32602, refused.text
    assert "UTF-8" in refused.json()["error"]["message"]
    ok, _ = await post(gw, task_id, call(2, "gh__search", {"query": "flaky"}, _meta=MODERN_META), MODERN)
    assert ok.status_code == 200, ok.text
    assert "results for flaky" in ok.text


@pytest.mark.parametrize("modern", [False, True], ids=["bare", "2026-07-28"])
async def test_a_result_names_tether_as_its_server_never_the_upstream(
    gw: Gateway,  # noqa: F811 - the fixture's value
    modern: bool,
) -> None:
    task_id = await gw.open_task(["gh/search"])
    body = call(1, "gh__search", {"query": "flaky"}, **({"_meta": MODERN_META} if modern else {}))
    response, _ = await post(gw, task_id, body, MODERN if modern else JSON_ONLY)
    assert response.status_code == 200, response.text
    meta = response.json()["result"].get("_meta", {})
    info = meta.get("io.modelcontextprotocol/serverInfo")
    assert info is None or info["name"] == "tether", meta
