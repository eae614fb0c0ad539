"""Upstream MCP servers and their pinned tools: pure values and rules, no I/O.

An operator registers an upstream (a command Tether starts per task over stdio, or a streamable
HTTP URL). At registration each tool's definition — name, description, input schema, annotations —
is *pinned* by the SHA-256 of its canonical JSON. A definition that differs later (a "rug pull"),
or a tool that appears later, is *quarantined*: hidden from ``tools/list`` and refused on
``tools/call`` until an operator approves it.

Names are collision-free by construction: a server name is lowercase letters, digits and ``-``
(no ``_``, no ``/``), and the gateway shows upstream tool ``t`` of server ``s`` as ``s__t``
(MCP's tool-name alphabet, SEP-986) and to policies as ``Tool::"s/t"``. The first ``__`` of a
gateway name ends the server part, so two upstreams can never produce the same name.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any, Final
from urllib.parse import urlsplit

from tether.domain.destinations import Injection, InjectionType
from tether.domain.secrets import validate_path
from tether.errors import InvalidInputError
from tether.policy.request import Entity

__all__ = [
    "MAX_ARGS",
    "MAX_TOOLS",
    "SEPARATOR",
    "Drift",
    "McpServer",
    "PinnedTool",
    "UpstreamKind",
    "argument_shape",
    "cedar_tool_id",
    "declared",
    "front_name",
    "pin",
    "split_front_name",
    "tool_entity",
    "validate_server_name",
]

SEPARATOR: Final = "__"
MAX_TOOLS: Final = 256
MAX_ARGS: Final = 64
MAX_ARG_CHARS: Final = 1024
MAX_ENV: Final = 32
MAX_DEFINITION_BYTES: Final = 64 * 1024
MAX_TIMEOUT_SECONDS: Final = 300
MAX_TIMEOUT = MAX_TIMEOUT_SECONDS
DEFAULT_TIMEOUT_SECONDS: Final = 30
MAX_URL_CHARS: Final = 2048
#: Tool entities remembered (each tool's is the same value on every call).
MAX_TOOL_ENTITIES: Final = 4096

_SERVER: Final = re.compile(r"[a-z0-9](?:-?[a-z0-9]){0,31}")
_TOOL: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")
_ENV_VAR: Final = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
# The child's environment is clean (PATH, HOME, ... of Tether's own, see tether.mcp.upstreams);
# these would change how it starts, not what credential it holds.
_RESERVED_ENV: Final = frozenset({"PATH", "HOME", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "IFS"})
_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})


def _refuse(message: str, what: str) -> InvalidInputError:
    return InvalidInputError(message, field=what)


def validate_server_name(name: object) -> str:
    """A server name: 1 to 32 lowercase letters, digits and single ``-`` between them."""
    if not isinstance(name, str) or not _SERVER.fullmatch(name):
        raise _refuse("name must be 1 to 32 lowercase letters, digits and single '-' between them", "name")
    return name


def front_name(server: str, tool: str) -> str:
    """The name the gateway shows for ``tool`` of ``server``."""
    return f"{server}{SEPARATOR}{tool}"


def split_front_name(name: str) -> tuple[str, str]:
    """``(server, tool)`` of a gateway tool name; :class:`InvalidInputError` if it is not one."""
    server, sep, tool = name.partition(SEPARATOR)
    if not sep or not _SERVER.fullmatch(server) or not _TOOL.fullmatch(tool):
        raise _refuse(f"unknown tool {name[:140]!r}", "name")
    return server, tool


def cedar_tool_id(server: str, tool: str) -> str:
    """The tool as policies and task intents name it: ``server/tool``."""
    return f"{server}/{tool}"


@lru_cache(maxsize=MAX_TOOL_ENTITIES)
def tool_entity(server: str, tool: str) -> Entity:
    """A tool as ``call_tool`` policies see it: ``Tool::"server/tool"`` with its server and name.

    An entity is a value (its Cedar text built once with it), so the same tool's is made once."""
    return Entity("Tool", cedar_tool_id(server, tool), {"server": server, "name": tool})


def declared(tools: Iterable[str], server: str, tool: str) -> bool:
    """Whether a task's declared ``tools`` include ``server/tool`` (or ``server/*``)."""
    wanted = cedar_tool_id(server, tool)
    return any(item in (wanted, f"{server}/*") for item in tools)


def argument_shape(arguments: Mapping[str, Any]) -> list[str]:
    """The arguments' names and JSON types (``name:type``), sorted; never a value."""
    shape = []
    for name, value in arguments.items():
        if isinstance(value, bool):
            kind = "boolean"
        elif isinstance(value, int):
            kind = "integer"
        elif isinstance(value, float):
            kind = "number"
        elif isinstance(value, str):
            kind = "string"
        elif value is None:
            kind = "null"
        elif isinstance(value, list):
            kind = "array"
        else:
            kind = "object"
        clean = "".join(ch if ch.isprintable() else "?" for ch in str(name)[:64])
        shape.append(f"{clean}:{kind}")
    return sorted(shape)[:MAX_ARGS]


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class PinnedTool:
    """One tool definition as an upstream listed it, and its SHA-256."""

    name: str
    sha256: str
    definition: Mapping[str, Any]

    @property
    def input_schema(self) -> Mapping[str, Any]:
        schema = self.definition.get("inputSchema")
        return schema if isinstance(schema, Mapping) else {"type": "object"}

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "definition": dict(self.definition)}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> PinnedTool:
        pinned = pin(body["definition"])
        if pinned.sha256 != body["sha256"] or pinned.name != body["name"]:
            raise _refuse("a pinned tool's hash does not match its definition", "tools")
        return pinned


def pin(tool: Mapping[str, Any]) -> PinnedTool:
    """Pin one tool as an upstream lists it (MCP's ``Tool`` as JSON): its name, description,
    input schema and annotations, hashed canonically. Other fields (icons, ``_meta``) are not
    part of the pin and are not shown through the gateway."""
    name = tool.get("name")
    if not isinstance(name, str) or not _TOOL.fullmatch(name):
        raise _refuse(f"an upstream tool has an invalid name ({str(name)[:80]!r})", "tools")
    schema = tool.get("inputSchema", {"type": "object"})
    if not isinstance(schema, Mapping):
        raise _refuse(f"tool {name!r} has an input schema that is not an object", "tools")
    definition: dict[str, Any] = {"name": name, "inputSchema": dict(schema)}
    for key in ("description", "annotations", "title"):
        value = tool.get(key)
        if value is not None:
            definition[key] = value
    encoded = _canonical(definition)
    if len(encoded) > MAX_DEFINITION_BYTES:
        raise _refuse(f"tool {name!r} has a definition over {MAX_DEFINITION_BYTES} bytes", "tools")
    return PinnedTool(name=name, sha256=hashlib.sha256(encoded).hexdigest(), definition=definition)


class UpstreamKind(StrEnum):
    STDIO = "stdio"
    HTTP = "http"


def _validate_url(url: object) -> str:
    what = "url"
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS or not url.isascii():
        raise _refuse(f"url must be an ASCII URL of at most {MAX_URL_CHARS} characters", what)
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url) or "\\" in url:
        raise _refuse("url must not contain spaces, control characters or '\\'", what)
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        raise _refuse("url is not a valid URL", what) from None
    scheme = parts.scheme.lower()
    if scheme not in {"https", "http"} or not host:
        raise _refuse("url must be https (http only for a loopback host) with a host", what)
    if scheme == "http" and host not in _LOOPBACK:
        raise _refuse("url must use https; plain http is allowed only for 127.0.0.1, ::1 and localhost", what)
    if "@" in parts.netloc:
        raise _refuse("url must not carry credentials (user or password)", what)
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise _refuse("url must not have a query or a fragment", what)
    if port == 0:
        raise _refuse("url has an invalid port", what)
    segments = parts.path.split("/")[1:]
    if any(segment in {".", ".."} for segment in segments) or re.search(r"%(2e|2f|5c)", url, re.I):
        raise _refuse("url path must not have '.' or '..' segments or encoded separators", what)
    return url


def _validate_command(command: object, args: Sequence[object]) -> tuple[str, tuple[str, ...]]:
    if not isinstance(command, str) or not command.startswith("/") or len(command) > 4096:
        raise _refuse("command must be an absolute path (it runs without a shell and a PATH)", "command")
    if "\x00" in command or len(args) > MAX_ARGS:
        raise _refuse(f"command takes at most {MAX_ARGS} arguments, without NUL", "command")
    clean: list[str] = []
    for arg in args:
        if not isinstance(arg, str) or "\x00" in arg or len(arg) > MAX_ARG_CHARS:
            raise _refuse(f"each argument is text of at most {MAX_ARG_CHARS} characters", "args")
        clean.append(arg)
    return command, tuple(clean)


def _validate_env(env: Mapping[str, object]) -> dict[str, str]:
    if len(env) > MAX_ENV:
        raise _refuse(f"at most {MAX_ENV} environment variables", "env")
    clean: dict[str, str] = {}
    for var, path in env.items():
        if not isinstance(var, str) or not _ENV_VAR.fullmatch(var) or var in _RESERVED_ENV:
            raise _refuse(f"env: {str(var)[:70]!r} is not a usable variable name", "env")
        if var.startswith(("LD_", "DYLD_")):
            raise _refuse(f"env: {var} would change how the child is loaded", "env")
        if not isinstance(path, str):
            raise _refuse("env values are secret paths", "env")
        clean[var] = validate_path(path)
    return clean


@dataclass(frozen=True, slots=True)
class Drift:
    """How an upstream's live tool list differs from the pins."""

    changed: tuple[PinnedTool, ...] = ()
    new: tuple[PinnedTool, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.changed or self.new)


@dataclass(frozen=True, slots=True)
class McpServer:
    """A registered upstream MCP server.

    ``env`` maps a variable of a stdio child's environment to the secret path placed there;
    ``secret`` and ``inject`` say how an HTTP upstream gets its credential (a header). ``tools``
    are the approved pins; ``quarantined`` the definitions seen since that wait for an operator.
    """

    name: str
    kind: UpstreamKind
    created_at: datetime
    created_by: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    url: str | None = None
    secret: str | None = None
    inject: Injection | None = None
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    tools: Mapping[str, PinnedTool] = field(default_factory=dict)
    quarantined: Mapping[str, PinnedTool] = field(default_factory=dict)
    version: int = 1

    def __post_init__(self) -> None:
        validate_server_name(self.name)
        if not isinstance(self.kind, UpstreamKind):
            try:
                object.__setattr__(self, "kind", UpstreamKind(self.kind))
            except ValueError:
                raise _refuse("kind must be stdio or http", "kind") from None
        if self.kind is UpstreamKind.STDIO:
            _, args = _validate_command(self.command, self.args)
            object.__setattr__(self, "args", args)
            object.__setattr__(self, "env", _validate_env(self.env))
            if self.url is not None or self.secret is not None or self.inject is not None:
                raise _refuse("a stdio upstream takes --env VAR=secret:PATH, not a URL or --inject", "url")
        else:
            _validate_url(self.url)
            if self.command is not None or self.args or self.env:
                raise _refuse("an HTTP upstream takes a URL, not a command or --env", "command")
            if (self.secret is None) != (self.inject is None):
                raise _refuse("an HTTP upstream's secret and inject go together", "inject")
            if self.secret is not None:
                validate_path(self.secret)
            if self.inject is not None and self.inject.type is not InjectionType.HEADER:
                raise _refuse("an HTTP upstream's secret is injected into a header", "inject")
        timeout = self.timeout_seconds
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= MAX_TIMEOUT:
            raise _refuse(f"timeout_seconds must be between 1 and {MAX_TIMEOUT_SECONDS}", "timeout_seconds")
        if len(self.tools) + len(self.quarantined) > 2 * MAX_TOOLS:
            raise _refuse(f"an upstream may have at most {MAX_TOOLS} tools", "tools")

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret path this upstream is given, sorted."""
        paths = set(self.env.values())
        if self.secret is not None:
            paths.add(self.secret)
        return tuple(sorted(paths))

    def drift(self, listed: Iterable[PinnedTool]) -> Drift:
        """Compare a live tool list with the pins (definitions already quarantined count again:
        the caller decides whether to record them anew)."""
        changed: list[PinnedTool] = []
        new: list[PinnedTool] = []
        seen: set[str] = set()
        for tool in listed:
            seen.add(tool.name)
            pinned = self.tools.get(tool.name)
            if pinned is None:
                new.append(tool)
            elif pinned.sha256 != tool.sha256:
                changed.append(tool)
        removed = tuple(sorted(name for name in self.tools if name not in seen))
        return Drift(tuple(changed), tuple(new), removed)

    def quarantine(self, drift: Drift) -> McpServer:
        """This server with ``drift``'s definitions quarantined (the newest seen of each)."""
        waiting = dict(self.quarantined)
        for tool in (*drift.changed, *drift.new):
            waiting[tool.name] = tool
        return replace(self, quarantined=waiting, version=self.version + 1)

    def approve(self, names: Iterable[str] | None = None) -> McpServer:
        """This server with the quarantined definitions ``names`` (all if None) pinned."""
        chosen = set(self.quarantined) if names is None else set(names)
        unknown = chosen - set(self.quarantined)
        if unknown:
            raise _refuse(f"no quarantined tool {sorted(unknown)[0]!r}", "tools")
        tools = dict(self.tools)
        waiting = dict(self.quarantined)
        for name in chosen:
            tools[name] = waiting.pop(name)
        return replace(self, tools=tools, quarantined=waiting, version=self.version + 1)

    def usable(self, tool: str, live: PinnedTool | None) -> PinnedTool | None:
        """The pinned definition of ``tool`` if it may be called: pinned, not waiting in
        quarantine, and (when the live definition is known) unchanged."""
        pinned = self.tools.get(tool)
        if pinned is None or tool in self.quarantined:
            return None
        if live is not None and live.sha256 != pinned.sha256:
            return None
        return pinned

    # -- JSON --------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind.value,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "timeout_seconds": self.timeout_seconds,
            "tools": [tool.to_json() for tool in sorted(self.tools.values(), key=lambda t: t.name)],
            "quarantined": [
                tool.to_json() for tool in sorted(self.quarantined.values(), key=lambda t: t.name)
            ],
            "version": self.version,
        }
        if self.kind is UpstreamKind.STDIO:
            body.update(command=self.command, args=list(self.args), env=dict(self.env))
        else:
            body["url"] = self.url
            if self.secret is not None and self.inject is not None:
                body["secret"] = self.secret
                body["inject"] = {
                    "type": self.inject.type.value,
                    "name": self.inject.name,
                    "template": self.inject.template,
                }
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> McpServer:
        inject = body.get("inject")
        return cls(
            name=body["name"],
            kind=UpstreamKind(body["kind"]),
            created_at=datetime.fromisoformat(body["created_at"]),
            created_by=body["created_by"],
            command=body.get("command"),
            args=tuple(body.get("args") or ()),
            env=dict(body.get("env") or {}),
            url=body.get("url"),
            secret=body.get("secret"),
            inject=None if inject is None else Injection(**inject),
            timeout_seconds=body.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS),
            tools={tool["name"]: PinnedTool.from_json(tool) for tool in body.get("tools") or ()},
            quarantined={tool["name"]: PinnedTool.from_json(tool) for tool in body.get("quarantined") or ()},
            version=body.get("version", 1),
        )
