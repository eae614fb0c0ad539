"""The engines file (``engines_file`` / ``TETHER_ENGINES_FILE``): which secret engines a node runs
and which secrets each serves. Read and checked when the node starts; a bad file stops the start
with the reason (see docs/engines.md)::

    [postgresql.app-db]
    admin_secret = "db/admin/app"          # a governed secret: the admin DSN
    default_ttl_seconds = 900
    max_ttl_seconds = 3600

    [postgresql.app-db.roles."db/app/readonly"]
    statements = ["GRANT SELECT ON ALL TABLES IN SCHEMA public TO {{name}}"]
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tether.domain.secrets import validate_path
from tether.engines.pgsql import Template
from tether.engines.postgresql import PostgresEngine, PostgresEngineConfig, PostgresRole, ValueReader
from tether.errors import ConfigError, InvalidInputError

__all__ = ["load_engines", "parse_engines"]

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_ENGINE_KEYS = {
    "admin_secret",
    "roles",
    "role_prefix",
    "default_ttl_seconds",
    "max_ttl_seconds",
    "host",
    "port",
    "database",
    "connect_timeout_seconds",
    "max_connections",
}
_ROLE_KEYS = {"statements", "default_ttl_seconds"}


def _int(where: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where} must be an integer")
    return value


def _unknown(where: str, table: Mapping[str, Any], known: set[str]) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r} (known: {', '.join(sorted(known))})")


def _roles(name: str, roles_table: Mapping[str, Any], default_ttl: int) -> tuple[PostgresRole, ...]:
    roles: list[PostgresRole] = []
    for secret, role in roles_table.items():
        role_where = f'[postgresql.{name}.roles."{secret}"]'
        if not isinstance(role, Mapping):
            raise ConfigError(f"{role_where} must be a table")
        _unknown(role_where, role, _ROLE_KEYS)
        statements = role.get("statements")
        if not isinstance(statements, list) or not all(isinstance(s, str) for s in statements):
            raise ConfigError(f"{role_where}: statements must be a list of SQL strings")
        try:
            validate_path(secret)
            template = Template(tuple(statements))
        except (ConfigError, InvalidInputError) as exc:
            raise ConfigError(f"{role_where}: {exc}") from None
        ttl = _int(f"{role_where} default_ttl_seconds", role.get("default_ttl_seconds", default_ttl))
        roles.append(PostgresRole(secret=secret, template=template, default_ttl_seconds=ttl))
    return tuple(roles)


def _options(where: str, table: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key in ("role_prefix", "host", "database"):
        if key in table:
            if not isinstance(table[key], str) or not table[key]:
                raise ConfigError(f"{where} {key} must be a non-empty string")
            options[key] = table[key]
    for key in ("max_ttl_seconds", "port", "max_connections"):
        if key in table:
            options[key] = _int(f"{where} {key}", table[key])
    if "connect_timeout_seconds" in table:
        timeout = table["connect_timeout_seconds"]
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 60:
            raise ConfigError(f"{where} connect_timeout_seconds must be a number of seconds up to 60")
        options["connect_timeout_seconds"] = float(timeout)
    if "port" in options and not 1 <= options["port"] <= 65535:
        raise ConfigError(f"{where} port must be between 1 and 65535")
    if "max_connections" in options and not 1 <= options["max_connections"] <= 64:
        raise ConfigError(f"{where} max_connections must be between 1 and 64")
    return options


def _postgresql(name: str, table: object) -> PostgresEngineConfig:
    where = f"[postgresql.{name}]"
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: an engine name is 1-64 lowercase letters, digits, '.', '_' or '-'")
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table")
    _unknown(where, table, _ENGINE_KEYS)
    admin = table.get("admin_secret")
    if not isinstance(admin, str):
        raise ConfigError(f"{where}: admin_secret (the path of the secret holding the admin DSN) is required")
    default_ttl = _int(f"{where} default_ttl_seconds", table.get("default_ttl_seconds", 3600))
    roles_table = table.get("roles")
    if not isinstance(roles_table, Mapping) or not roles_table:
        raise ConfigError(f'{where}: at least one [postgresql.{name}.roles."<secret path>"] is required')
    roles = _roles(name, roles_table, default_ttl)
    options = _options(where, table)
    try:
        validate_path(admin)
    except InvalidInputError as exc:
        raise ConfigError(f"{where} admin_secret: {exc}") from None
    return PostgresEngineConfig(
        name=name, admin_secret=admin, roles=roles, default_ttl_seconds=default_ttl, **options
    )


def parse_engines(document: Mapping[str, Any]) -> list[PostgresEngineConfig]:
    """The engine configurations of a parsed engines file; :class:`ConfigError` names what is wrong."""
    _unknown("the engines file", document, {"postgresql"})
    table = document.get("postgresql", {})
    if not isinstance(table, Mapping):
        raise ConfigError("[postgresql] must be a table of engines")
    configs = [_postgresql(name, engine) for name, engine in table.items()]
    secrets = [role.secret for config in configs for role in config.roles]
    if len(set(secrets)) != len(secrets):
        raise ConfigError("the engines file: a secret is served by two engines")
    return configs


def load_engines(path: Path, read_value: ValueReader) -> list[PostgresEngine]:
    """The engines of the file at ``path``, checked (not yet connected)."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"cannot read the engines file {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the engines file {path} is not valid TOML: {exc}") from None
    return [PostgresEngine(config, read_value) for config in parse_engines(document)]
