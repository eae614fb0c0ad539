"""What ``tether demo`` remembers between runs, and its local ``github`` stand-in.

A re-run of the demo (``make run`` again) must leave alone what the user changed. To tell
"the demo's own seed" from "the user's change" it keeps a small state file in the data dir:
the stand-in's address and the version of ``prod/github/token`` the demo wrote, with that
version's value, which the stand-in needs in order to check the token Tether injects. Like
the admin token and the dev root key next to it, this is a development convenience only.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["STATE_FILE", "DemoState", "Upstream"]

STATE_FILE = "demo-state.json"


@dataclass
class DemoState:
    """``upstream_url``: where the demo last registered the stand-in; ``github_token``: the
    version of ``prod/github/token`` the demo wrote and its value (None when unknown)."""

    upstream_url: str | None = None
    github_version: int | None = None
    github_value: str | None = field(default=None, repr=False)

    @classmethod
    def load(cls, data_dir: Path) -> DemoState:
        try:
            raw = json.loads((data_dir / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(raw, dict):
            return cls()
        url, version, value = raw.get("upstream_url"), raw.get("github_version"), raw.get("github_value")
        return cls(
            upstream_url=url if isinstance(url, str) else None,
            github_version=version if isinstance(version, int) and not isinstance(version, bool) else None,
            github_value=value if isinstance(value, str) and value else None,
        )

    @property
    def upstream_port(self) -> int | None:
        if self.upstream_url is None:
            return None
        port = self.upstream_url.rstrip("/").rpartition(":")[2]
        return int(port) if port.isdigit() and 0 < int(port) < 65536 else None

    def save(self, data_dir: Path) -> None:
        path = data_dir / STATE_FILE
        partial = path.with_name(path.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "upstream_url": self.upstream_url,
                    "github_version": self.github_version,
                    "github_value": self.github_value,
                },
                handle,
            )
        os.replace(partial, path)


class Upstream:
    """A local stand-in for an API that needs the secret: it answers 200 only with
    ``Authorization: Bearer <token>``, and (carelessly) echoes the header back, as a debugging
    endpoint or a prompt-injected tool might.

    It serves for as long as the demo's Tether serves, so that the README's egress step
    (``task.http.get("github", "/repos/acme/app")``) reaches it. It binds ``port`` when it can
    (the port of the previous run, so the ``github`` destination need not change), else any.
    """

    def __init__(self, port: int | None = None) -> None:
        self.token = ""  # set once the demo knows the secret's value
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

        self.server = _bind(Handler, port)
        self.port: int = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="demo-upstream", daemon=True)

    def __enter__(self) -> Upstream:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _bind(handler: type[BaseHTTPRequestHandler], port: int | None) -> ThreadingHTTPServer:
    if port:
        with contextlib.suppress(OSError):  # taken since the last run: any free port will do
            return ThreadingHTTPServer(("127.0.0.1", port), handler)
    return ThreadingHTTPServer(("127.0.0.1", 0), handler)
