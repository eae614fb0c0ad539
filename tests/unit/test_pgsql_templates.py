"""Role templates of the postgresql engine: quoting as PostgreSQL does, and every template that
does not lex, uses an unknown placeholder or reaches beyond GRANT is refused with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.engines.config import load_engines, parse_engines
from tether.engines.pgsql import Template, lease_of_role, quote_ident, quote_literal, role_name
from tether.errors import ConfigError


def test_quoting_follows_postgresql() -> None:
    assert quote_ident("tether_x") == '"tether_x"'
    assert quote_ident('a"b') == '"a""b"'
    assert quote_literal("it's") == "'it''s'"
    assert quote_literal("a\\b'c") == "E'a\\\\b''c'"
    for bad in ("", "a\0b"):
        with pytest.raises(ValueError, match=r"NUL|empty"):
            quote_ident(bad)
    with pytest.raises(ValueError, match="NUL"):
        quote_literal("\0")


def test_role_names_come_back_to_their_lease() -> None:
    lease = "lse_" + "A-b_" * 6
    name = role_name("tether_", lease)
    assert name == "tether_" + lease
    assert lease_of_role("tether_", name) == lease
    assert lease_of_role("tether_", "tether_admin") is None
    assert lease_of_role("other_", name) is None
    with pytest.raises(ValueError, match="lease"):
        role_name("tether_", "not-a-lease")


def test_render_quotes_each_placeholder() -> None:
    template = Template(
        (
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {{name}};",
            "GRANT CONNECT ON DATABASE {{ database }} TO {{name}}",
            "-- a comment with 'quotes'\nALTER TABLE t OWNER TO {{name}}",
            "SELECT {{password}}, {{expiration}}, 'literal {not a placeholder}'",
        )
    )
    values = {
        "name": 'tether_"x',
        "database": "app",
        "password": "p'w",
        "expiration": "2026-01-01 00:00:00+00",
    }
    assert template.render(values) == [
        'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "tether_""x";',
        'GRANT CONNECT ON DATABASE "app" TO "tether_""x"',
        '-- a comment with \'quotes\'\nALTER TABLE t OWNER TO "tether_""x"',
        "SELECT 'p''w', '2026-01-01 00:00:00+00', 'literal {not a placeholder}'",
    ]


@pytest.mark.parametrize(
    ("statement", "reason"),
    [
        ("GRANT SELECT ON t TO {{user}}", "unknown placeholder {{user}}"),
        ("GRANT SELECT ON t TO '{{name}}'", "inside quotes"),
        ('GRANT SELECT ON t TO "{{name}}"', "inside quotes"),
        ("GRANT SELECT ON t TO {{name}} -- {{name}}", "inside quotes or a comment"),
        ("GRANT SELECT ON 't TO {{name}}", "unterminated quoted string"),
        ('GRANT SELECT ON "t TO {{name}}', "unterminated quoted identifier"),
        ("GRANT SELECT ON t TO {{name}} /* x", "unterminated /* comment"),
        ("SELECT $f$ x", "unterminated dollar-quoted"),
        ("GRANT SELECT ON t TO {{name", "does not start a placeholder"),
        ("GRANT SELECT ON t TO name}}", "without a placeholder"),
        ("GRANT SELECT ON t TO {{name}}; DROP TABLE t", "one statement per entry"),
        ("ALTER ROLE {{name}} SUPERUSER", "SUPERUSER is not allowed"),
        ("alter role {{name}} with login", "ALTER ROLE is not allowed"),
        ("ALTER USER {{name}} CONNECTION LIMIT 5", "ALTER USER is not allowed"),
        ("GRANT admin TO {{name}} WITH ADMIN OPTION", "is not allowed"),
        ("GRANT pg_execute_server_program TO {{name}}", "pg_execute_server_program"),
        ('GRANT "pg_read_server_files" TO {{name}}', "pg_read_server_files"),
        ("DO $$ BEGIN EXECUTE 'x'; END $$", "DO is not allowed"),
        ("CREATE ROLE other", "CREATE ROLE is not allowed"),
        ("SET ROLE postgres", "SET ROLE is not allowed"),
        ("COPY t TO PROGRAM 'sh'", "COPY is not allowed"),
        ("  ;", "empty"),
    ],
)
def test_bad_statements_are_refused_with_the_reason(statement: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Template((statement,))
    assert reason in str(caught.value)
    assert str(caught.value).startswith("statement 1: ")


def test_a_template_needs_statements_and_bounds_them() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        Template(())
    with pytest.raises(ConfigError, match="at most 32"):
        Template(("GRANT SELECT ON t TO {{name}}",) * 33)
    with pytest.raises(ConfigError, match="at most 4096"):
        Template(("GRANT SELECT ON t TO {{name}} " + "-" * 5000,))


GOOD = """
[postgresql.app-db]
admin_secret = "db/admin/app"
default_ttl_seconds = 900
max_ttl_seconds = 3600

[postgresql.app-db.roles."db/app/readonly"]
statements = ["GRANT SELECT ON ALL TABLES IN SCHEMA public TO {{name}}"]
default_ttl_seconds = 600
"""


def test_an_engines_file_is_parsed_into_engines(tmp_path: Path) -> None:
    path = tmp_path / "engines.toml"
    path.write_text(GOOD, encoding="utf-8")

    async def read(_: str) -> tuple[int, bytes]:
        raise AssertionError("not connected when loaded")

    (engine,) = load_engines(path, read)
    assert engine.name == "app-db"
    assert engine.reveals_value is False
    (role,) = engine.config.roles
    assert (role.secret, role.default_ttl_seconds) == ("db/app/readonly", 600)
    assert engine.config.default_ttl_seconds == 900


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("default_ttl_seconds = 600", "statements2 = []"), "unknown key 'statements2'"),
        (('admin_secret = "db/admin/app"', 'admin = "x"'), "unknown key 'admin'"),
        (('admin_secret = "db/admin/app"', ""), "admin_secret"),
        (("{{name}}", "{{role}}"), "unknown placeholder {{role}}"),
        (
            ("GRANT SELECT", 'ALTER ROLE {{name}} SUPERUSER", "GRANT SELECT'),
            "statement 1: SUPERUSER is not allowed",
        ),
        (("default_ttl_seconds = 600", "default_ttl_seconds = 7200"), "between 1 and max_ttl_seconds"),
        (('"db/app/readonly"', '"db/../x"'), 'roles."db/../x"'),
        (("[postgresql.app-db]", "[postgresql.App]"), "engine name"),
        (('"db/app/readonly"', '"db/admin/app"'), "cannot be the admin secret"),
    ],
)
def test_a_bad_engines_file_is_refused_with_the_reason(change: tuple[str, str], reason: str) -> None:
    import tomllib

    text = GOOD.replace(change[0], change[1], 1)
    if change == ("[postgresql.app-db]", "[postgresql.App]"):
        text = text.replace("postgresql.app-db.roles", "postgresql.App.roles")
    with pytest.raises(ConfigError) as caught:
        parse_engines(tomllib.loads(text))
    assert reason in str(caught.value)


def test_an_unreadable_or_invalid_engines_file_is_a_config_error(tmp_path: Path) -> None:
    async def read(_: str) -> tuple[int, bytes]:
        raise AssertionError

    with pytest.raises(ConfigError, match="cannot read the engines file"):
        load_engines(tmp_path / "missing.toml", read)
    bad = tmp_path / "bad.toml"
    bad.write_text("[postgresql", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_engines(bad, read)
    with pytest.raises(ConfigError, match="unknown key 'vault'"):
        parse_engines({"vault": {}})
