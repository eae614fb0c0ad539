"""Settings sources and their one precedence order (defaults < tether.toml < TETHER_* < flags),
unknown keys, and errors that say where a bad value came from without quoting it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.config import ENV_VARS, Settings
from tether.errors import ConfigError


def write_toml(data_dir: Path, text: str) -> None:
    (data_dir / "tether.toml").write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    ("toml", "environ", "flags", "expected"),
    [
        ("", {}, {}, "node-1"),  # default
        ('node_id = "file"\n', {}, {}, "file"),  # file over default
        ('node_id = "file"\n', {"TETHER_NODE_ID": "env"}, {}, "env"),  # environment over file
        ('node_id = "file"\n', {"TETHER_NODE_ID": "env"}, {"node_id": "flag"}, "flag"),  # flag over all
        ("", {"TETHER_NODE_ID": "env"}, {"node_id": "flag"}, "flag"),
        ('node_id = "file"\n', {}, {"node_id": "flag"}, "flag"),
        ('node_id = "file"\n', {"TETHER_NODE_ID": ""}, {"node_id": None}, "file"),  # unset, not given
    ],
)
def test_one_precedence_order_file_then_environment_then_flags(
    tmp_path: Path, toml: str, environ: dict[str, str], flags: dict[str, object], expected: str
) -> None:
    write_toml(tmp_path, toml)
    assert Settings.load(tmp_path, environ, **flags).node_id == expected


def test_precedence_is_per_setting(tmp_path: Path) -> None:
    write_toml(tmp_path, 'node_id = "file"\ntrust_domain = "file.test"\nmax_secret_bytes = 10\n')
    settings = Settings.load(tmp_path, {"TETHER_TRUST_DOMAIN": "env.test"}, max_secret_bytes=20)
    assert (settings.node_id, settings.trust_domain, settings.max_secret_bytes) == ("file", "env.test", 20)


def test_building_settings_directly_reads_neither_file_nor_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_toml(tmp_path, 'node_id = "file"\n')
    monkeypatch.setenv("TETHER_TRUST_DOMAIN", "env.test")
    settings = Settings(data_dir=tmp_path)
    assert (settings.node_id, settings.trust_domain) == ("node-1", "tether.local")


def test_unknown_key_in_the_file_is_named_with_the_file(tmp_path: Path) -> None:
    write_toml(tmp_path, "max_secret_byte = 5\n")
    with pytest.raises(ConfigError) as refused:
        Settings.load(tmp_path, {})
    assert str(refused.value) == f"unknown setting 'max_secret_byte' (from {tmp_path / 'tether.toml'})"


def test_unknown_flag_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'listen_address' \\(from the command line\\)"):
        Settings.load(tmp_path, {}, listen_address="x")


def test_unknown_keyword_is_named_when_built_directly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        Settings(data_dir=tmp_path, colour="blue")


def test_unrelated_environment_variables_are_ignored(tmp_path: Path) -> None:
    settings = Settings.load(tmp_path, {"TETHER_TEST_PG_DSN": "postgresql://x", "TETHER_NOPE": "1"})
    assert settings.node_id == "node-1"


def test_bad_environment_value_names_the_variable_and_not_the_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.load(tmp_path, {"TETHER_MAX_SECRET_BYTES": "64k-hunter2"})
    assert str(refused.value) == "max_secret_bytes must be an integer (from TETHER_MAX_SECRET_BYTES)"


def test_errors_never_quote_a_value(tmp_path: Path) -> None:
    write_toml(tmp_path, 'node_id = 7\npg_schema = ["pa55-w0rd"]\n')
    with pytest.raises(ConfigError) as refused:
        Settings.load(tmp_path, {"TETHER_DATABASE_URL": "mysql://tether:pa55-w0rd@db/tether"})
    message = str(refused.value)
    assert "pa55-w0rd" not in message
    assert "node_id" in message
    assert "pg_schema" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    write_toml(tmp_path, "max_secret_bytes = 0\nsweep_interval_seconds = 0\n")
    with pytest.raises(ConfigError) as refused:
        Settings.load(tmp_path, {})
    assert "max_secret_bytes must be between 1 and 1048576" in str(refused.value)
    assert "sweep_interval_seconds must be between 1 and 3600" in str(refused.value)


def test_the_environment_cannot_pass_structured_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="task_purposes"):
        Settings.load(tmp_path, {"TETHER_TASK_PURPOSES": '["deploy"]'})


def test_every_setting_has_its_environment_variable(tmp_path: Path) -> None:
    fields = set(Settings.model_fields) - {"data_dir"}
    assert set(ENV_VARS) == fields
    assert all(variable.startswith("TETHER_") for variable in ENV_VARS.values())
    # the public names that existed before the settings moved to pydantic-settings
    assert ENV_VARS["audit_jsonl_path"] == "TETHER_AUDIT_JSONL"
    assert ENV_VARS["workers"] == "TETHER_WORKERS"


def test_new_settings_defaults_bounds_and_round_trip(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.log_format == "text"
    assert (
        settings.auth_refusal_window_seconds,
        settings.auth_refusals_per_client,
        settings.auth_refusals_per_address,
    ) == (60, 10, 50)
    changed = Settings.load(
        tmp_path,
        {"TETHER_LOG_FORMAT": "json", "TETHER_AUTH_REFUSALS_PER_CLIENT": "3"},
        auth_refusal_window_seconds=30,
    )
    assert (changed.log_format, changed.auth_refusals_per_client) == ("json", 3)
    write_toml(tmp_path, changed.to_toml())
    assert Settings.load(tmp_path, {}) == changed
    for bad in ({"log_format": "xml"}, {"auth_refusal_window_seconds": 0}, {"auth_refusals_per_address": 0}):
        with pytest.raises(ConfigError):
            Settings(data_dir=tmp_path, **bad)  # type: ignore[arg-type]


def test_with_overrides_keeps_the_data_dir_default_database(tmp_path: Path) -> None:
    moved = Settings(data_dir=tmp_path).with_overrides(data_dir=tmp_path / "b")
    assert moved.database_url == f"sqlite:///{tmp_path / 'b' / 'tether.db'}"
