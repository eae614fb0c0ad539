"""PostgreSQL text, without I/O: quoting identifiers and literals, role templates (parsed, checked,
rendered), and the names of the roles Tether creates.

A role template is a list of SQL statements run after Tether has created the role, usually
``GRANT`` statements. Placeholders are written ``{{name}}`` and are replaced by values the engine
quotes itself (identifiers with :func:`quote_ident`, literals with :func:`quote_literal`, as
PostgreSQL's functions of the same names do); a placeholder inside quotes or a comment is refused,
so a template can never quote a value wrong. A template that does not lex, uses an unknown
placeholder, holds more than one statement per entry, or names a privilege that would let the role
escape its grants (``SUPERUSER``, ``CREATEROLE``, ``ALTER ROLE``, ``SET ROLE``, ``DO``, …) is
refused when the engine is configured, with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from tether.errors import ConfigError

__all__ = [
    "DANGEROUS_ROLES",
    "MAX_STATEMENTS",
    "MAX_STATEMENT_CHARS",
    "PLACEHOLDERS",
    "Template",
    "lease_of_role",
    "quote_ident",
    "quote_literal",
    "role_name",
]

#: What a template may use: the role's name, its password, its expiry (a timestamp literal) and
#: the database the credential is for (an identifier).
PLACEHOLDERS = frozenset({"name", "password", "expiration", "database"})
_IDENT_PLACEHOLDERS = frozenset({"name", "database"})
MAX_STATEMENTS = 32
MAX_STATEMENT_CHARS = 4096
#: Predefined roles a dynamic role must never be a member of (they reach the server's files,
#: programs or other sessions).
DANGEROUS_ROLES = (
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_signal_backend",
    "pg_create_subscription",
    "pg_checkpoint",
    "pg_use_reserved_connections",
)
# Words and phrases that give a role more than its grants, or run code the engine cannot check.
_FORBIDDEN = (
    ("SUPERUSER",),
    ("CREATEROLE",),
    ("CREATEDB",),
    ("REPLICATION",),
    ("BYPASSRLS",),
    ("ALTER", "ROLE"),
    ("ALTER", "USER"),
    ("ALTER", "GROUP"),
    ("ALTER", "SYSTEM"),
    ("ALTER", "DEFAULT"),
    ("CREATE", "ROLE"),
    ("CREATE", "USER"),
    ("CREATE", "GROUP"),
    ("DROP", "ROLE"),
    ("DROP", "USER"),
    ("SET", "ROLE"),
    ("SESSION", "AUTHORIZATION"),
    ("ADMIN", "OPTION"),
    ("WITH", "ADMIN"),
    ("DO",),
    ("EXECUTE",),
    ("CALL",),
    ("COPY",),
    ("LOAD",),
    ("SECURITY", "DEFINER"),
)
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_LEASE_ID = re.compile(r"lse_[A-Za-z0-9_-]{22,43}")
_PREFIX = re.compile(r"[a-z][a-z0-9_]{0,15}")


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (PostgreSQL's ``quote_ident``, always quoting)."""
    if not name or "\0" in name:
        raise ValueError("an identifier must be non-empty and hold no NUL")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``value`` as a SQL string literal, as PostgreSQL's ``quote_literal`` writes it: quotes
    doubled, and backslashes doubled in an ``E''`` literal (right whatever
    ``standard_conforming_strings`` says)."""
    if "\0" in value:
        raise ValueError("a literal must hold no NUL")
    quoted = value.replace("'", "''")
    if "\\" in quoted:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"


def check_role_prefix(prefix: str) -> str:
    """A role name prefix: a lowercase letter, then up to 15 lowercase letters, digits or ``_``."""
    if not _PREFIX.fullmatch(prefix):
        raise ConfigError(
            "role_prefix must be a lowercase letter followed by up to 15 lowercase letters, digits or '_'"
        )
    return prefix


def role_name(prefix: str, lease_id: str) -> str:
    """The role Tether creates for lease ``lease_id``: found again from the lease id alone (a lease
    recorded before a crash has no handle)."""
    if not _LEASE_ID.fullmatch(lease_id):
        raise ValueError("not a lease id")
    return prefix + lease_id


def lease_of_role(prefix: str, role: str) -> str | None:
    """The lease id a role of :func:`role_name` was created for, or None for any other role."""
    if not role.startswith(prefix):
        return None
    lease_id = role[len(prefix) :]
    return lease_id if _LEASE_ID.fullmatch(lease_id) else None


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "code", "quoted" (strings, quoted identifiers, comments), "placeholder"
    text: str


def _lex(statement: str) -> Iterator[_Token]:
    """Split ``statement`` into code and placeholders, skipping quoted text and comments (which
    must hold no placeholder). Raises ValueError with the reason."""
    i, n = 0, len(statement)
    code_start = 0
    while i < n:
        c = statement[i]
        if c == "{" and statement.startswith("{{", i):
            match = _PLACEHOLDER.match(statement, i)
            if match is None:
                raise ValueError("'{{' does not start a placeholder such as {{name}}")
            yield _Token("code", statement[code_start:i])
            yield _Token("placeholder", match.group(1))
            i = code_start = match.end()
            continue
        if c == "}" and statement.startswith("}}", i):
            raise ValueError("'}}' without a placeholder before it")
        end: int
        if c in "'\"":
            end = _quoted_end(statement, i, c)
        elif c == "-" and statement.startswith("--", i):
            newline = statement.find("\n", i)
            end = n if newline < 0 else newline
        elif c == "/" and statement.startswith("/*", i):
            end = _block_comment_end(statement, i)
        elif (
            c == "$"
            and (tag := _DOLLAR_TAG.match(statement, i)) is not None
            and (i == 0 or not (statement[i - 1].isalnum() or statement[i - 1] == "_"))
        ):
            close = statement.find(tag.group(0), tag.end())
            if close < 0:
                raise ValueError(f"unterminated dollar-quoted string {tag.group(0)}")
            end = close + len(tag.group(0))
        else:
            i += 1
            continue
        if "{{" in statement[i:end] or "}}" in statement[i:end]:
            raise ValueError(
                "a placeholder inside quotes or a comment: write {{name}} bare, Tether quotes the value"
            )
        yield _Token("code", statement[code_start:i])
        yield _Token("quoted", statement[i:end])
        i = code_start = end
    yield _Token("code", statement[code_start:])


def _quoted_end(text: str, start: int, quote: str) -> int:
    i = start + 1
    escapes = quote == "'" and start > 0 and text[start - 1] in "eE"
    while i < len(text):
        if escapes and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            if text.startswith(quote * 2, i):
                i += 2
                continue
            return i + 1
        i += 1
    raise ValueError("unterminated quoted " + ("string" if quote == "'" else "identifier"))


def _block_comment_end(text: str, start: int) -> int:
    depth, i = 0, start
    while i < len(text):
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    raise ValueError("unterminated /* comment")


def _check(statement: str) -> tuple[_Token, ...]:
    tokens = tuple(_lex(statement))
    # Checked without quoted text and comments (a quoted identifier reads as one opaque name).
    code = "".join(t.text if t.kind == "code" else " x " for t in tokens)
    body = code.rstrip().removesuffix(";")
    if ";" in body:
        raise ValueError("one statement per entry (a ';' may only end it)")
    if not body.strip():
        raise ValueError("the statement is empty")
    words = [w.upper() for w in _WORD.findall(code)]
    for phrase in _FORBIDDEN:
        for k in range(len(words) - len(phrase) + 1):
            if tuple(words[k : k + len(phrase)]) == phrase:
                raise ValueError(
                    f"{' '.join(phrase)} is not allowed: a dynamic role gets privileges by GRANT only"
                )
    lowered = statement.lower()  # quoted or not
    for role in DANGEROUS_ROLES:
        if role in lowered:
            raise ValueError(f"membership in {role} is not allowed")
    for token in tokens:
        if token.kind == "placeholder" and token.text not in PLACEHOLDERS:
            raise ValueError(
                f"unknown placeholder {{{{{token.text}}}}} (known: "
                + ", ".join("{{" + p + "}}" for p in sorted(PLACEHOLDERS))
                + ")"
            )
    return tokens


@dataclass(frozen=True, slots=True)
class Template:
    """A role template's statements, checked when built (:class:`ConfigError` with the reason)."""

    statements: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.statements, tuple) or not self.statements:
            raise ConfigError("a role template needs at least one statement (e.g. a GRANT)")
        if len(self.statements) > MAX_STATEMENTS:
            raise ConfigError(f"a role template has at most {MAX_STATEMENTS} statements")
        for number, statement in enumerate(self.statements, 1):
            if not isinstance(statement, str) or len(statement) > MAX_STATEMENT_CHARS:
                raise ConfigError(
                    f"statement {number}: must be text of at most {MAX_STATEMENT_CHARS} characters"
                )
            try:
                _check(statement)
            except ValueError as exc:
                raise ConfigError(f"statement {number}: {exc}") from None

    def render(self, values: Mapping[str, str]) -> list[str]:
        """Each statement with its placeholders replaced by quoted ``values``."""
        rendered: list[str] = []
        for statement in self.statements:
            parts: list[str] = []
            for token in _check(statement):
                if token.kind != "placeholder":
                    parts.append(token.text)
                elif token.text in _IDENT_PLACEHOLDERS:
                    parts.append(quote_ident(values[token.text]))
                else:
                    parts.append(quote_literal(values[token.text]))
            rendered.append("".join(parts))
        return rendered
