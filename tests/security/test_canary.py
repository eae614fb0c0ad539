"""Leak canaries: secret values must appear nowhere but in the (encrypted) store.

A real server process on loopback, driven over HTTP and through the CLI: write
canary secrets, rotate them, rotate keys, seal and unseal, send them in bad requests.
Then scan everything an attacker or a careless operator could read: the SQLite file
and its WAL, the PostgreSQL tables, the server log, every HTTP response and every CLI
output, for each canary in plain, URL, hex and base64 form.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.security.canaries import find_leaks, new_canary

TETHER = [sys.executable, "-m", "tether.cli.main"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Recorder:
    """Everything that left the server, kept for the scan."""

    def __init__(self) -> None:
        self.outputs: list[str] = []

    def response(self, response: httpx.Response) -> httpx.Response:
        self.outputs.append(f"{response.status_code} {dict(response.headers)} {response.text}")
        return response

    def cli(self, result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
        self.outputs.append(result.stdout + result.stderr)
        return result


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_") or k == "TETHER_AUDIT_JSONL"}
    if request.param == "sqlite":
        yield env
        return
    dsn = os.environ.get("TETHER_TEST_PG_DSN")
    if not dsn:
        pytest.skip("TETHER_TEST_PG_DSN is not set; PostgreSQL tests skipped")
    schema = "t_canary_" + secrets.token_hex(6)
    yield {**env, "TETHER_DATABASE_URL": dsn, "TETHER_PG_SCHEMA": schema}
    subprocess.run(
        ["psql", dsn, "-q", "-c", f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'],
        check=False,
        capture_output=True,
        timeout=30,
    )


def pg_dump_rows(dsn: str, schema: str) -> str:
    """Every row of every table in the schema, as text (bytea as hex) and as raw bytes."""
    query = (
        "SELECT string_agg(format('SELECT %L, t::text FROM %I.%I t', table_name, table_schema, table_name), "
        "' UNION ALL ') FROM information_schema.tables WHERE table_schema = '" + schema + "'"
    )
    union = subprocess.run(
        ["psql", dsn, "-At", "-c", query], check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()
    rows = subprocess.run(
        ["psql", dsn, "-At", "-c", union], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    assert "secret_versions" in rows  # the dump really covered the tables
    return rows


def test_canaries_never_leak(tmp_path: Path, backend_env: dict[str, str]) -> None:
    data = tmp_path / "data"
    env = backend_env
    record = Recorder()
    canaries = [new_canary(label) for label in ("first", "second", "rotated", "bad-request", "sealed", "cli")]

    init = record.cli(
        subprocess.run(
            [*TETHER, "init", "--data-dir", str(data), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    )
    assert init.returncode == 0, init.stderr
    token = json.loads(init.stdout)["root_token"]
    admin = {"Authorization": f"Bearer {token}"}

    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [*TETHER, "server", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if http.get("/v1/sys/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                assert server.poll() is None, log_path.read_text()
                time.sleep(0.1)

            first, second, rotated, bad, sealed, via_cli = canaries
            put = record.response(
                http.put("/v1/secrets/prod/app/one", json={"value": first, "purposes": ["ci"]}, headers=admin)
            )
            assert put.status_code == 201
            assert (
                record.response(
                    http.put("/v1/secrets/prod/app/two", json={"value": second}, headers=admin)
                ).status_code
                == 201
            )
            assert (
                record.response(
                    http.post("/v1/secrets/prod/app/one:rotate", json={"value": rotated}, headers=admin)
                ).status_code
                == 200
            )
            # Bad requests carrying the canary: refused without echoing it.
            for body in (
                {"value": bad, "sensitivity": "nope"},
                {"value": bad, "unknown": bad},
                {"value": [bad]},
                {"value": bad * 2000},
            ):
                response = record.response(http.put("/v1/secrets/prod/app/bad", json=body, headers=admin))
                assert response.status_code == 422, response.text
            record.response(http.put("/v1/secrets/..%2Fetc", json={"value": bad}, headers=admin))
            record.response(http.put("/v1/secrets/a/b", content=b'{"value": "' + bad.encode(), headers=admin))
            assert record.response(http.post("/v1/sys/keys/rotate", headers=admin)).status_code == 200
            assert record.response(http.post("/v1/sys/seal", headers=admin)).status_code == 200
            assert (
                record.response(
                    http.put("/v1/secrets/prod/app/sealed", json={"value": sealed}, headers=admin)
                ).status_code
                == 503
            )
            assert record.response(http.post("/v1/sys/unseal", headers=admin)).status_code == 200
            for path in ("/v1/secrets/prod/app/one", "/v1/secrets/prod/app/two", "/v1/secrets?prefix=prod/"):
                assert record.response(http.get(path, headers=admin)).status_code == 200
            assert record.response(http.get("/metrics", headers=admin)).status_code == 200
            assert record.response(http.get("/openapi.json")).status_code == 200

            cli_env = {**env, "TETHER_ADDR": base, "TETHER_TOKEN": token}
            for args, stdin in (
                (["secret", "put", "prod/app/cli", "--stdin"], via_cli),
                (["secret", "show", "prod/app/cli"], None),
                (["secret", "list", "prod/"], None),
                (["secret", "rotate", "prod/app/cli", "--stdin"], via_cli + "-2"),
                (["keys", "rotate"], None),
            ):
                result = record.cli(
                    subprocess.run(
                        [*TETHER, *args],
                        check=False,
                        env=cli_env,
                        input=stdin,
                        capture_output=True,
                        text=True,
                        timeout=60,
                    )
                )
                assert result.returncode == 0, result.stderr
            canaries.append(via_cli + "-2")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)

    places: dict[str, bytes | str] = {"server log": log_path.read_bytes()}
    assert b"/v1/secrets/prod/app/one" in log_path.read_bytes()  # the log really recorded the requests
    for index, output in enumerate(record.outputs):
        places[f"output #{index}"] = output
    if "TETHER_DATABASE_URL" in env:
        places["postgresql tables"] = pg_dump_rows(env["TETHER_DATABASE_URL"], env["TETHER_PG_SCHEMA"])
    for path in sorted(data.iterdir()):
        if path.is_file():
            places[f"data dir file {path.name}"] = path.read_bytes()
    assert any(name.startswith("data dir file tether.db") for name in places) or "postgresql tables" in places

    leaks = {place: found for place, content in places.items() if (found := find_leaks(content, canaries))}
    assert leaks == {}
