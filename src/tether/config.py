"""Settings: defaults, then ``<data dir>/tether.toml``, then ``TETHER_*`` environment variables, then
command-line flags (each later source overrides the earlier ones).

Built with pydantic-settings: one source per place a value can come from (the TOML file, the
environment, the flags a command passes), validated by one frozen model. Settings are checked when
built; units are in the names; an unknown key is an error that names it; an error never quotes a
value (a database URL may carry a password). docs/operations.md lists every setting.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, BeforeValidator, StrictStr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tether._cpus import available_cpus
from tether.crypto.keyprovider import EnvKeyProvider, FileKeyProvider, KeyProvider, UnsafeDevKeyProvider
from tether.domain.secrets import DEFAULT_MAX_SECRET_BYTES, MAX_SECRET_BYTES_CAP
from tether.errors import ConfigError

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_LISTEN",
    "DEFAULT_TASK_PURPOSES",
    "ENV_VARS",
    "LOG_FORMATS",
    "Settings",
    "parse_listen",
]

CONFIG_FILE = "tether.toml"
DEFAULT_LISTEN = "127.0.0.1:8420"
KEY_PROVIDERS = ("unsafe-dev", "env", "file")
LOG_FORMATS = ("text", "json")
MAX_WORKERS = 64


def default_workers() -> int:
    """``tether server``'s workers when the ``workers`` setting is unset: one per core this process
    may use (its CPU affinity and cgroup CPU limit: :func:`tether._cpus.available_cpus`), at most
    :data:`MAX_WORKERS`."""
    return min(available_cpus(), MAX_WORKERS)


_TRUST_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
_DIGITS = re.compile(r"[0-9]{1,9}")

#: The environment variable of each setting (public names: do not rename).
ENV_VARS: Mapping[str, str] = {
    "database_url": "TETHER_DATABASE_URL",
    "pg_schema": "TETHER_PG_SCHEMA",
    "key_provider": "TETHER_KEY_PROVIDER",
    "root_key_file": "TETHER_ROOT_KEY_FILE",
    "trust_domain": "TETHER_TRUST_DOMAIN",
    "node_id": "TETHER_NODE_ID",
    "max_secret_bytes": "TETHER_MAX_SECRET_BYTES",
    "audit_jsonl_path": "TETHER_AUDIT_JSONL",
    "engines_file": "TETHER_ENGINES_FILE",
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
    "replay_max_decisions": "TETHER_REPLAY_MAX_DECISIONS",
    "sweep_interval_seconds": "TETHER_SWEEP_INTERVAL_SECONDS",
    "sqlite_synchronous": "TETHER_SQLITE_SYNCHRONOUS",
    "workers": "TETHER_WORKERS",
    "log_format": "TETHER_LOG_FORMAT",
    "auth_refusal_window_seconds": "TETHER_AUTH_REFUSAL_WINDOW_SECONDS",
    "auth_refusals_per_client": "TETHER_AUTH_REFUSALS_PER_CLIENT",
    "auth_refusals_per_address": "TETHER_AUTH_REFUSALS_PER_ADDRESS",
    "console": "TETHER_CONSOLE",
    "console_idle_timeout_seconds": "TETHER_CONSOLE_IDLE_TIMEOUT_SECONDS",
    "console_session_max_seconds": "TETHER_CONSOLE_SESSION_MAX_SECONDS",
}

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
    "replay_max_decisions",
    "sweep_interval_seconds",
    "auth_refusal_window_seconds",
    "auth_refusals_per_client",
    "auth_refusals_per_address",
    "console_idle_timeout_seconds",
    "console_session_max_seconds",
)
_STRINGS = (
    "database_url",
    "pg_schema",
    "key_provider",
    "root_key_file",
    "trust_domain",
    "node_id",
    "audit_jsonl_path",
    "engines_file",
    "public_url",
    "approval_webhook_url",
    "sqlite_synchronous",
    "log_format",
    "console",
)


# -- value checks (each raises ValueError; the model turns them into one ConfigError) ----------


def _integer(value: object) -> int:
    """An integer from TOML (int, not bool or float) or the environment (ASCII digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    raise ValueError("must be an integer")


def _between(low: int, high: int) -> AfterValidator:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return AfterValidator(check)


def _path(value: object) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str):
        return Path(value)
    raise ValueError("must be a path string")


def _one_of(*choices: str) -> AfterValidator:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return AfterValidator(check)


def _purposes(value: object) -> tuple[str, ...]:
    if isinstance(value, str):  # from the environment: comma-separated
        value = [p.strip() for p in value.split(",") if p.strip()]
    if (
        not isinstance(value, tuple | list)
        or not value
        or not all(isinstance(p, str) and _PURPOSE.fullmatch(p) for p in value)
    ):
        raise ValueError("must be a non-empty list of lowercase names")
    return tuple(dict.fromkeys(value))


def _trust_domain(value: str) -> str:
    if not _TRUST_DOMAIN.fullmatch(value):
        raise ValueError("is not a lowercase DNS name")
    return value


def _http_url(*, bare: bool) -> Callable[[str], str]:
    """An http(s) URL; ``bare``: without query or fragment too."""
    shape = "an http(s) URL without query or fragment" if bare else "an http(s) URL"

    def check(value: str) -> str:
        parts = urlsplit(value)
        if (
            parts.scheme not in {"http", "https"}
            or not parts.netloc
            or (bare and (parts.query or parts.fragment))
        ):
            raise ValueError(f"must be {shape}")
        return value

    return check


Integer = Annotated[int, BeforeValidator(_integer)]
PathSetting = Annotated[Path, BeforeValidator(_path)]


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


# -- sources ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Load:
    """What :meth:`Settings.load` adds to the values passed in: the file and the environment."""

    path: Path
    environ: Mapping[str, str]


_LOADING: ContextVar[_Load | None] = ContextVar("tether_settings_load", default=None)


class _EnvironmentSource(PydanticBaseSettingsSource):
    """``TETHER_*`` variables, by the names in :data:`ENV_VARS`; an empty variable is unset.

    Values stay text: the model parses them (digits for integers, commas for lists), so the
    environment cannot smuggle in JSON structures.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = ENV_VARS.get(field_name)
        return (self._environ.get(variable) or None) if variable else None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {name: self._environ[var] for name, var in ENV_VARS.items() if self._environ.get(var)}


class _FileSource(TomlConfigSettingsSource):
    """``<data dir>/tether.toml``; malformed TOML and ``data_dir`` in it are errors."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        try:
            super().__init__(settings_cls, toml_file=path)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        if "data_dir" in self.toml_data:
            raise ConfigError(f"{path}: data_dir cannot be set in the file (it is the file's directory)")


def _describe(exc: ValidationError, origins: Mapping[str, str]) -> str:
    """One line per problem, naming the setting and where it came from, never its value."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        name = str(error["loc"][0]) if error["loc"] else ""
        origin = f" (from {origins[name]})" if name in origins else ""
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown setting {name!r}{origin}")
        elif not name:  # a check across settings: the message names them
            problems.append(message)
        elif message.startswith(("must ", "is ")):
            problems.append(f"{name} {message}{origin}")
        else:
            problems.append(f"{name}: {message}{origin}")
    return "; ".join(problems)


# -- the model --------------------------------------------------------------------------------


class Settings(BaseSettings):
    """Everything a Tether node needs to start. Frozen; built only from checked values.

    ``Settings(data_dir=..., **values)`` takes the given values and defaults only;
    :meth:`load` adds the data dir's ``tether.toml`` and the ``TETHER_*`` environment.
    """

    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_default=True)

    data_dir: PathSetting
    database_url: StrictStr = ""
    pg_schema: StrictStr | None = None
    key_provider: Annotated[StrictStr, _one_of(*KEY_PROVIDERS)] = "unsafe-dev"
    root_key_file: PathSetting | None = None
    trust_domain: Annotated[StrictStr, AfterValidator(_trust_domain)] = "tether.local"
    node_id: StrictStr = "node-1"
    max_secret_bytes: Annotated[Integer, _between(1, MAX_SECRET_BYTES_CAP)] = DEFAULT_MAX_SECRET_BYTES
    audit_jsonl_path: PathSetting | None = None
    engines_file: PathSetting | None = None
    audit_checkpoint_every_events: Annotated[Integer, _between(1, 10_000_000)] = 1000
    audit_checkpoint_interval_seconds: Annotated[Integer, _between(1, 86_400)] = 60
    public_url: Annotated[StrictStr, AfterValidator(_http_url(bare=True))] | None = None
    token_ttl_seconds: Annotated[Integer, _between(60, 3600)] = 600
    task_max_ttl_seconds: Annotated[Integer, _between(60, 30 * 86_400)] = 86_400
    task_default_ttl_seconds: Annotated[Integer, _between(1, 30 * 86_400)] = 900
    approval_ttl_seconds: Annotated[Integer, _between(60, 7 * 86_400)] = 900
    task_purposes: Annotated[tuple[str, ...], BeforeValidator(_purposes)] = DEFAULT_TASK_PURPOSES
    approval_webhook_url: Annotated[StrictStr, AfterValidator(_http_url(bare=False))] | None = None
    max_delegation_depth: Annotated[Integer, _between(0, 16)] = 4
    #: Policy replay (``tether policy replay``) takes at most this many decision events of its
    #: window at once; a larger window is refused with how to narrow it (docs/reach.md).
    replay_max_decisions: Annotated[Integer, _between(1, 10_000_000)] = 200_000
    sweep_interval_seconds: Annotated[Integer, _between(1, 3600)] = 5
    #: ``full``: every commit (an audit event with what it records) is fsynced before it is
    #: acknowledged — survives power loss. ``normal`` (WAL): survives a crash of the process, not
    #: of the machine; an order of magnitude faster per commit. See docs/operations.md.
    sqlite_synchronous: Annotated[StrictStr, _one_of("full", "normal")] = "full"
    #: HTTP worker processes of ``tether server`` (1..64); unset: one per core it may use.
    workers: Annotated[Integer, _between(1, MAX_WORKERS)] | None = None
    #: ``text`` (one line for people) or ``json`` (one object per line); ``--log-format`` overrides.
    log_format: Annotated[StrictStr, _one_of(*LOG_FORMATS)] = "text"
    #: Refused token requests: the window they are counted in, and how many refusals one client id
    #: and one source address may have in it before further requests get 429 (docs/operations.md).
    auth_refusal_window_seconds: Annotated[Integer, _between(1, 3600)] = 60
    auth_refusals_per_client: Annotated[Integer, _between(1, 100_000)] = 10
    auth_refusals_per_address: Annotated[Integer, _between(1, 100_000)] = 50
    #: The web console at ``/ui`` (docs/console.md): ``on`` or ``off``. Its sessions end after
    #: ``console_idle_timeout_seconds`` without a request, and ``console_session_max_seconds`` after
    #: sign-in whatever happens.
    console: Annotated[StrictStr, _one_of("on", "off")] = "on"
    console_idle_timeout_seconds: Annotated[Integer, _between(60, 86_400)] = 900
    console_session_max_seconds: Annotated[Integer, _between(300, 7 * 86_400)] = 28_800

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            load = _LOADING.get()
            origins: dict[str, str] = {}
            if load is not None:  # say where each value came from, highest precedence last
                origins.update(dict.fromkeys(_file_keys(load.path), str(load.path)))
                origins.update({n: v for n, v in ENV_VARS.items() if load.environ.get(v)})
                origins.update(dict.fromkeys((k for k in values if k != "data_dir"), "the command line"))
            raise ConfigError(_describe(exc, origins)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The one precedence order: flags (values passed in) > environment > ``tether.toml``."""
        load = _LOADING.get()
        if load is None:  # built directly: the values given and the defaults, nothing else
            return (init_settings,)
        return (
            init_settings,
            _EnvironmentSource(settings_cls, load.environ),
            _FileSource(settings_cls, load.path),
        )

    @model_validator(mode="before")
    @classmethod
    def _default_database(cls, values: Any) -> Any:
        if isinstance(values, dict) and not values.get("database_url"):
            data_dir = values.get("data_dir")
            if isinstance(data_dir, str | Path):
                values = {**values, "database_url": f"sqlite:///{Path(data_dir) / 'tether.db'}"}
        return values

    @model_validator(mode="after")
    def _check_together(self) -> Settings:
        if not self.database_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("database_url must start with sqlite:/// or postgresql://")
        if self.key_provider == "file" and self.root_key_file is None:
            raise ValueError("key_provider 'file' needs root_key_file (or TETHER_ROOT_KEY_FILE)")
        if self.task_default_ttl_seconds > self.task_max_ttl_seconds:
            raise ValueError("task_default_ttl_seconds must be between 1 and task_max_ttl_seconds")
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"settings are frozen: {name} cannot be changed (use with_overrides)")

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if value is None:
                continue
            yield name, _redact_url(value) if name == "database_url" else value

    def _default_database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'tether.db'}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_FILE

    @property
    def worker_count(self) -> int:
        """``workers``, or when unset :func:`default_workers`."""
        return self.workers if self.workers is not None else default_workers()

    @property
    def backend(self) -> str:
        return "sqlite" if self.database_url.startswith("sqlite:") else "postgresql"

    def key_provider_instance(self) -> KeyProvider:
        if self.key_provider == "env":
            return EnvKeyProvider()
        if self.key_provider == "file":
            assert self.root_key_file is not None  # checked when built
            return FileKeyProvider(self.root_key_file)
        return UnsafeDevKeyProvider(self.data_dir / "dev-root.key")

    @classmethod
    def load(cls, data_dir: Path, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then the data dir's ``tether.toml``, then the environment, then ``overrides``
        (the command's flags; ``None`` means the flag was not given)."""
        load = _Load(data_dir / CONFIG_FILE, os.environ if environ is None else environ)
        token = _LOADING.set(load)
        try:
            return cls(data_dir=data_dir, **{k: v for k, v in overrides.items() if v is not None})
        finally:
            _LOADING.reset(token)

    def with_overrides(self, **changes: Any) -> Settings:
        """A checked copy with ``changes`` applied."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        if "data_dir" in changes and self.database_url == self._default_database_url():
            values.pop("database_url")  # the default follows the data dir
        return type(self)(**{**values, **changes})

    def to_toml(self) -> str:
        """The settings worth persisting, as TOML (strings and integers only)."""
        lines = ["# Tether settings; TETHER_* environment variables and command-line flags override these."]
        for name in _STRINGS:
            value = getattr(self, name)
            default = type(self).model_fields[name].default
            if value is None or (name == "database_url" and value == self._default_database_url()):
                continue  # the default follows the data dir, so the dir can move
            if name == "log_format" and value == default:
                continue
            text = str(value).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{name} = "{text}"')
        for name in _INTEGERS:
            lines.append(f"{name} = {getattr(self, name)}")
        if self.workers is not None:  # unset follows the machine's cores
            lines.append(f"workers = {self.workers}")
        lines.append("task_purposes = [" + ", ".join(f'"{p}"' for p in self.task_purposes) + "]")
        return "\n".join(lines) + "\n"


def _file_keys(path: Path) -> list[str]:
    try:
        return list(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return []
