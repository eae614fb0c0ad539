"""Run Tether's MCP gateway for the MCP conformance suite (server mode); see docs/mcp.md.

``python -m tests.conformance.mcp_conformance_proxy [PORT]``, then
``npx -y -p node@22 -p @modelcontextprotocol/conformance -- conformance server --url
http://127.0.0.1:PORT/mcp``.

The suite's client connects without credentials; this starts, in one process, an upstream MCP
server (the benchmark's, one ``search`` tool), Tether (SQLite in a temporary directory) with that
upstream registered, an agent and a task, and a loopback proxy that adds what every request to
``/mcp`` needs (``Authorization: DPoP``, a fresh proof, ``Tether-Task``). Point the suite at the URL
it prints; stop with Ctrl-C. Test-only: the proxy holds the agent's key.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from bench.egress_bench import serve
from bench.mcp_bench import serve_with_lifespan, setup, upstream_app

from tether.api import create_app
from tether.api.routes_mcp import close_mcp
from tether.broker import Broker
from tether.config import Settings

HOP = {"host", "content-length", "connection", "transfer-encoding", "authorization", "dpop", "tether-task"}


async def main(port: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker.from_settings(Settings(data_dir=Path(tmp)))
        init = await broker.init()
        app = create_app(broker)
        up_server, up_task, up_port = await serve_with_lifespan(upstream_app())
        server, task, tether_port = await serve(app)
        url = f"http://127.0.0.1:{tether_port}"
        async with httpx.AsyncClient(timeout=60) as http:
            agent, task_id = await setup(
                http, url, {"Authorization": f"Bearer {init.root_token}"}, f"http://127.0.0.1:{up_port}/mcp"
            )

            own_origins = {f"http://127.0.0.1:{port}", f"http://localhost:{port}"}

            async def proxy(scope: Any, receive: Any, send: Any) -> None:
                if scope["type"] != "http":
                    return
                body = b""
                while True:
                    message = await receive()
                    body += message.get("body", b"")
                    if not message.get("more_body"):
                        break
                token = await agent.token()
                target = url + "/mcp"
                signed = agent._session.signed_headers(scope["method"], target, token)
                headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.decode() not in HOP}
                if headers.get("origin") in own_origins:  # the proxy stands for Tether's own origin
                    headers["origin"] = url
                request = http.build_request(
                    scope["method"],
                    target,
                    content=body,
                    headers={**headers, **signed, "Tether-Task": task_id},
                )
                response = await http.send(request, stream=True)
                out = [(k.encode(), v.encode()) for k, v in response.headers.items() if k.lower() not in HOP]
                await send({"type": "http.response.start", "status": response.status_code, "headers": out})
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await response.aclose()
                await send({"type": "http.response.body", "body": b""})

            front = uvicorn.Server(uvicorn.Config(proxy, host="127.0.0.1", port=port, log_level="warning"))
            print(f"MCP gateway for the conformance suite: http://127.0.0.1:{port}/mcp", flush=True)
            try:
                await front.serve()
            finally:
                server.should_exit = True
                up_server.should_exit = True
                await asyncio.gather(task, up_task)
                await close_mcp(app)
                await broker.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8931))
