"""Settings: read from ``<data dir>/tether.toml``, overridden by ``TETHER_*`` environment variables.

Settings are frozen and checked when built; units are in the names.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tether.crypto.keyprovider import EnvKeyProvider, FileKeyProvider, KeyProvider, UnsafeDevKeyProvider
from tether.errors import ConfigError

__all__ = ["CONFIG_FILE", "DEFAULT_LISTEN", "Settings", "parse_listen"]

CONFIG_FILE = "tether.toml"
DEFAULT_LISTEN = "127.0.0.1:8420"
KEY_PROVIDERS = ("unsafe-dev", "env", "file")
_TRUST_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")

_DIGITS = re.compile(r"[0-9]{1,9}")

_ENV = {
    "database_url": "TETHER_DATABASE_URL",
    "pg_schema": "TETHER_PG_SCHEMA",
    "key_provider": "TETHER_KEY_PROVIDER",
    "root_key_file": "TETHER_ROOT_KEY_FILE",
    "trust_domain": "TETHER_TRUST_DOMAIN",
    "node_id": "TETHER_NODE_ID",
    "max_secret_bytes": "TETHER_MAX_SECRET_BYTES",
    "audit_jsonl_path": "TETHER_AUDIT_JSONL",
    "public_url": "TETHER_PUBLIC_URL",
    "token_ttl_seconds": "TETHER_TOKEN_TTL_SECONDS",
    "audit_checkpoint_every_events": "TETHER_AUDIT_CHECKPOINT_EVERY_EVENTS",
    "audit_checkpoint_interval_seconds": "TETHER_AUDIT_CHECKPOINT_INTERVAL_SECONDS",
    "task_max_ttl_seconds": "TETHER_TASK_MAX_TTL_SECONDS",
    "task_default_ttl_seconds": "TETHER_TASK_DEFAULT_TTL_SECONDS",
    "approval_ttl_seconds": "TETHER_APPROVAL_TTL_SECONDS",
    "task_purposes": "TETHER_TASK_PURPOSES",
    "approval_webhook_url": "TETHER_APPROVAL_WEBHOOK_URL",
    "max_delegation_depth": "TETHER_MAX_DELEGATION_DEPTH",
    "sweep_interval_seconds": "TETHER_SWEEP_INTERVAL_SECONDS",
    "sqlite_synchronous": "TETHER_SQLITE_SYNCHRONOUS",
    "workers": "TETHER_WORKERS",
}
MAX_WORKERS = 64

#: The purposes a task may declare unless the deployment configures its own vocabulary.
DEFAULT_TASK_PURPOSES = ("deploy", "incident", "maintenance", "report", "research", "support", "testing")
_PURPOSE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_INTEGERS = (
    "max_secret_bytes",
    "audit_checkpoint_every_events",
    "audit_checkpoint_interval_seconds",
    "token_ttl_seconds",
    "task_max_ttl_seconds",
    "task_default_ttl_seconds",
    "approval_ttl_seconds",
    "max_delegation_depth",
    "sweep_interval_seconds",
)


def _integer(name: str, value: object) -> int:
    """An integer from TOML (int, not bool or float) or the environment (ASCII digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    raise ConfigError(f"{name} must be an integer")


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` → (host, port), with the port checked."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not _DIGITS.fullmatch(port_text) or not (0 < int(port_text) < 65536):
        raise ConfigError(f"listen address {value!r} must be host:port, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]"), int(port_text)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a Tether node needs to start."""

    data_dir: Path
    database_url: str = ""
    pg_schema: str | None = None
    key_provider: str = "unsafe-dev"
    root_key_file: Path | None = None
    trust_domain: str = "tether.local"
    node_id: str = "node-1"
    max_secret_bytes: int = 64 * 1024
    audit_jsonl_path: Path | None = None
    audit_checkpoint_every_events: int = 1000
    audit_checkpoint_interval_seconds: int = 60
    public_url: str | None = None
    token_ttl_seconds: int = 600
    task_max_ttl_seconds: int = 86_400
    task_default_ttl_seconds: int = 900
    approval_ttl_seconds: int = 900
    task_purposes: tuple[str, ...] = DEFAULT_TASK_PURPOSES
    approval_webhook_url: str | None = None
    max_delegation_depth: int = 4
    sweep_interval_seconds: int = 5
    #: ``full``: every commit (an audit event with what it records) is fsynced before it is
    #: acknowledged — survives power loss. ``normal`` (WAL): survives a crash of the process, not
    #: of the machine; an order of magnitude faster per commit. See docs/operations.md.
    sqlite_synchronous: str = "full"
    #: HTTP worker processes of ``tether server`` (1..64); unset: one per CPU core.
    workers: int | None = None

    def __post_init__(self) -> None:
        if not self.database_url:
            object.__setattr__(self, "database_url", self._default_database_url())
        if not self.database_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ConfigError("database_url must start with sqlite:/// or postgresql://")
        if self.key_provider not in KEY_PROVIDERS:
            raise ConfigError(f"key_provider must be one of {', '.join(KEY_PROVIDERS)}")
        if self.key_provider == "file" and self.root_key_file is None:
            raise ConfigError("key_provider 'file' needs root_key_file (or TETHER_ROOT_KEY_FILE)")
        if not _TRUST_DOMAIN.fullmatch(self.trust_domain):
            raise ConfigError(f"trust_domain {self.trust_domain!r} is not a lowercase DNS name")
        if not (1 <= self.max_secret_bytes <= 1024 * 1024):
            raise ConfigError("max_secret_bytes must be between 1 and 1048576")
        if not (1 <= self.audit_checkpoint_every_events <= 10_000_000):
            raise ConfigError("audit_checkpoint_every_events must be between 1 and 10000000")
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if parts.scheme not in {"http", "https"} or not parts.netloc or parts.query or parts.fragment:
                raise ConfigError("public_url must be an http(s) URL without query or fragment")
        if not (60 <= self.token_ttl_seconds <= 3600):
            raise ConfigError("token_ttl_seconds must be between 60 and 3600")
        if not (1 <= self.audit_checkpoint_interval_seconds <= 86_400):
            raise ConfigError("audit_checkpoint_interval_seconds must be between 1 and 86400")
        self._check_task_settings()
        self._check_node_settings()

    def _check_node_settings(self) -> None:
        if self.sqlite_synchronous not in {"full", "normal"}:
            raise ConfigError("sqlite_synchronous must be full or normal")
        if self.workers is not None and not (1 <= self.workers <= MAX_WORKERS):
            raise ConfigError(f"workers must be between 1 and {MAX_WORKERS}")

    def _check_task_settings(self) -> None:
        if not (60 <= self.task_max_ttl_seconds <= 30 * 86_400):
            raise ConfigError("task_max_ttl_seconds must be between 60 and 2592000")
        if not (1 <= self.task_default_ttl_seconds <= self.task_max_ttl_seconds):
            raise ConfigError("task_default_ttl_seconds must be between 1 and task_max_ttl_seconds")
        if not (60 <= self.approval_ttl_seconds <= 7 * 86_400):
            raise ConfigError("approval_ttl_seconds must be between 60 and 604800")
        if not (0 <= self.max_delegation_depth <= 16):
            raise ConfigError("max_delegation_depth must be between 0 and 16")
        if not (1 <= self.sweep_interval_seconds <= 3600):
            raise ConfigError("sweep_interval_seconds must be between 1 and 3600")
        purposes = self.task_purposes
        if isinstance(purposes, str):  # from the environment: comma-separated
            purposes = tuple(p.strip() for p in purposes.split(",") if p.strip())
        elif isinstance(purposes, list):  # from TOML
            purposes = tuple(purposes)
        if (
            not isinstance(purposes, tuple | list)
            or not purposes
            or not all(isinstance(p, str) and _PURPOSE.fullmatch(p) for p in purposes)
        ):
            raise ConfigError("task_purposes must be a non-empty list of lowercase names")
        object.__setattr__(self, "task_purposes", tuple(dict.fromkeys(purposes)))
        if self.approval_webhook_url is not None:
            parts = urlsplit(self.approval_webhook_url)
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise ConfigError("approval_webhook_url must be an http(s) URL")

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={_redact_url(v) if f.name == 'database_url' else v!r}"
            for f in fields(self)
            if (v := getattr(self, f.name)) is not None
        )
        return f"Settings({shown})"

    def _default_database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'tether.db'}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_FILE

    @property
    def worker_count(self) -> int:
        """``workers``, or one per CPU core (at most 64) when unset."""
        if self.workers is not None:
            return self.workers
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))

    @property
    def backend(self) -> str:
        return "sqlite" if self.database_url.startswith("sqlite:") else "postgresql"

    def key_provider_instance(self) -> KeyProvider:
        if self.key_provider == "env":
            return EnvKeyProvider()
        if self.key_provider == "file":
            assert self.root_key_file is not None  # checked in __post_init__
            return FileKeyProvider(self.root_key_file)
        return UnsafeDevKeyProvider(self.data_dir / "dev-root.key")

    @classmethod
    def load(cls, data_dir: Path, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then the data dir's ``tether.toml``, then the environment, then ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        path = data_dir / CONFIG_FILE
        if path.exists():
            try:
                values.update(tomllib.loads(path.read_text(encoding="utf-8")))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        for name, variable in _ENV.items():
            if env.get(variable):
                values[name] = env[variable]
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)} - {"data_dir"}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        for name in ("root_key_file", "audit_jsonl_path"):
            if name in values:
                if not isinstance(values[name], str | Path):
                    raise ConfigError(f"{name} must be a path string")
                values[name] = Path(values[name])
        for name in (*_INTEGERS, "workers"):
            if name in values:
                values[name] = _integer(name, values[name])
        for name in (
            "database_url",
            "pg_schema",
            "key_provider",
            "trust_domain",
            "node_id",
            "public_url",
            "approval_webhook_url",
            "sqlite_synchronous",
        ):
            if name in values and not isinstance(values[name], str):
                raise ConfigError(f"{name} must be a string")
        return cls(data_dir=data_dir, **values)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def to_toml(self) -> str:
        """The settings worth persisting, as TOML (strings and integers only)."""
        lines = ["# Tether settings; TETHER_* environment variables override these."]
        for name in (
            "database_url",
            "pg_schema",
            "key_provider",
            "root_key_file",
            "trust_domain",
            "node_id",
            "audit_jsonl_path",
            "public_url",
            "approval_webhook_url",
            "sqlite_synchronous",
        ):
            value = getattr(self, name)
            if value is None or (name == "database_url" and value == self._default_database_url()):
                continue  # the default follows the data dir, so the dir can move
            text = str(value).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{name} = "{text}"')
        for name in _INTEGERS:
            lines.append(f"{name} = {getattr(self, name)}")
        if self.workers is not None:  # unset follows the machine's cores
            lines.append(f"workers = {self.workers}")
        lines.append("task_purposes = [" + ", ".join(f'"{p}"' for p in self.task_purposes) + "]")
        return "\n".join(lines) + "\n"
