"""Settings: defaults, ``tether.toml``, ``TETHER_*`` overrides, validation (``tether.config``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.config import DEFAULT_LISTEN, Settings, parse_listen
from tether.crypto.keyprovider import EnvKeyProvider, FileKeyProvider, UnsafeDevKeyProvider
from tether.errors import ConfigError


def write_toml(data_dir: Path, text: str) -> None:
    (data_dir / "tether.toml").write_text(text, encoding="utf-8")


# -- defaults ---------------------------------------------------------------------------------


def test_defaults_use_sqlite_in_the_data_dir_and_the_unsafe_dev_key(tmp_path: Path) -> None:
    settings = Settings.load(tmp_path, environ={})
    assert settings.data_dir == tmp_path
    assert settings.database_url == f"sqlite:///{tmp_path / 'tether.db'}"
    assert settings.backend == "sqlite"
    assert settings.pg_schema is None
    assert settings.key_provider == "unsafe-dev"
    assert settings.root_key_file is None
    assert settings.trust_domain == "tether.local"
    assert settings.node_id == "node-1"
    assert settings.max_secret_bytes == 64 * 1024
    assert settings.config_path == tmp_path / "tether.toml"


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(AttributeError):
        settings.node_id = "other"  # type: ignore[misc]


def test_key_provider_instance_follows_the_setting(tmp_path: Path) -> None:
    assert isinstance(Settings(data_dir=tmp_path).key_provider_instance(), UnsafeDevKeyProvider)
    assert isinstance(Settings(data_dir=tmp_path, key_provider="env").key_provider_instance(), EnvKeyProvider)
    file_settings = Settings(data_dir=tmp_path, key_provider="file", root_key_file=tmp_path / "k")
    assert isinstance(file_settings.key_provider_instance(), FileKeyProvider)


# -- file and environment ---------------------------------------------------------------------


def test_toml_file_sets_values(tmp_path: Path) -> None:
    write_toml(
        tmp_path,
        'database_url = "postgresql://db.internal/tether"\n'
        'pg_schema = "tether_a"\n'
        'trust_domain = "acme.test"\n'
        'node_id = "node-7"\n'
        "max_secret_bytes = 1024\n",
    )
    settings = Settings.load(tmp_path, environ={})
    assert settings.database_url == "postgresql://db.internal/tether"
    assert settings.backend == "postgresql"
    assert settings.pg_schema == "tether_a"
    assert settings.trust_domain == "acme.test"
    assert settings.node_id == "node-7"
    assert settings.max_secret_bytes == 1024


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    write_toml(tmp_path, 'trust_domain = "file.test"\nnode_id = "from-file"\n')
    settings = Settings.load(
        tmp_path,
        environ={
            "TETHER_TRUST_DOMAIN": "env.test",
            "TETHER_MAX_SECRET_BYTES": "2048",
            "TETHER_KEY_PROVIDER": "file",
            "TETHER_ROOT_KEY_FILE": "/etc/tether/root.key",
        },
    )
    assert settings.trust_domain == "env.test"
    assert settings.node_id == "from-file"
    assert settings.max_secret_bytes == 2048
    assert settings.key_provider == "file"
    assert settings.root_key_file == Path("/etc/tether/root.key")


def test_empty_environment_variables_do_not_override(tmp_path: Path) -> None:
    write_toml(tmp_path, 'node_id = "from-file"\n')
    assert Settings.load(tmp_path, environ={"TETHER_NODE_ID": ""}).node_id == "from-file"


def test_explicit_overrides_beat_the_environment_and_none_is_ignored(tmp_path: Path) -> None:
    settings = Settings.load(
        tmp_path, environ={"TETHER_NODE_ID": "from-env"}, node_id="from-flag", trust_domain=None
    )
    assert settings.node_id == "from-flag"
    assert settings.trust_domain == "tether.local"


def test_load_reads_the_process_environment_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_NODE_ID", "from-process-env")
    assert Settings.load(tmp_path).node_id == "from-process-env"


def test_to_toml_round_trips_through_load(tmp_path: Path) -> None:
    original = Settings(
        data_dir=tmp_path,
        database_url="postgresql://db/tether",
        pg_schema="s1",
        key_provider="file",
        root_key_file=tmp_path / 'dir "quoted"' / "root.key",
        trust_domain="acme.test",
        node_id="n2",
        max_secret_bytes=4096,
    )
    write_toml(tmp_path, original.to_toml())
    assert Settings.load(tmp_path, environ={}) == original


def test_with_overrides_returns_a_checked_copy(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.with_overrides(node_id="n9").node_id == "n9"
    assert settings.node_id == "node-1"
    with pytest.raises(ConfigError):
        settings.with_overrides(trust_domain="Bad Domain")


# -- refusals ---------------------------------------------------------------------------------


def test_unknown_keys_in_the_file_are_refused(tmp_path: Path) -> None:
    write_toml(tmp_path, 'node_id = "n"\nlisten_adress = "x"\n')
    with pytest.raises(ConfigError, match="listen_adress"):
        Settings.load(tmp_path, environ={})


def test_data_dir_cannot_be_set_from_the_file(tmp_path: Path) -> None:
    write_toml(tmp_path, 'data_dir = "/elsewhere"\n')
    with pytest.raises(ConfigError, match="data_dir"):
        Settings.load(tmp_path, environ={})


def test_malformed_toml_is_a_config_error(tmp_path: Path) -> None:
    write_toml(tmp_path, "node_id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load(tmp_path, environ={})


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_bytes(b'node_id = "\xff"\n')
    with pytest.raises(ConfigError):
        Settings.load(tmp_path, environ={})


@pytest.mark.parametrize(
    ("toml", "environ"),
    [
        ("max_secret_bytes = 0\n", {}),
        ("max_secret_bytes = 1048577\n", {}),
        ('max_secret_bytes = "lots"\n', {}),
        ("", {"TETHER_MAX_SECRET_BYTES": "64k"}),
        ('key_provider = "kms"\n', {}),
        ('key_provider = "file"\n', {}),  # file provider without a key file
        ('database_url = "mysql://db/tether"\n', {}),
        ("", {"TETHER_DATABASE_URL": "sqlite://relative.db"}),
        ('trust_domain = "Acme.Test"\n', {}),
        ('trust_domain = "acme..test"\n', {}),
        ('trust_domain = "-acme.test"\n', {}),
        ('trust_domain = ""\n', {}),
        ("node_id = 7\n", {}),
        ("database_url = 1\n", {}),
        ("pg_schema = true\n", {}),
        ('trust_domain = ["a"]\n', {}),
    ],
)
def test_bad_values_are_config_errors(tmp_path: Path, toml: str, environ: dict[str, str]) -> None:
    write_toml(tmp_path, toml)
    with pytest.raises(ConfigError):
        Settings.load(tmp_path, environ=environ)


@pytest.mark.parametrize("max_secret_bytes", [1, 1024 * 1024])
def test_max_secret_bytes_bounds_are_inclusive(tmp_path: Path, max_secret_bytes: int) -> None:
    assert Settings(data_dir=tmp_path, max_secret_bytes=max_secret_bytes).max_secret_bytes == max_secret_bytes


# -- parse_listen -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (DEFAULT_LISTEN, ("127.0.0.1", 8420)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:8420", ("::1", 8420)),
    ],
)
def test_parse_listen_accepts_host_and_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "8420", ":8420", "localhost:", "localhost:0", "localhost:65536", "host:-1", "host:http", "host:+80"],
)
def test_parse_listen_refuses_malformed_addresses(value: str) -> None:
    with pytest.raises(ConfigError, match="host:port"):
        parse_listen(value)


@pytest.mark.parametrize("toml", ["max_secret_bytes = true\n", "max_secret_bytes = 1.5\n"])
def test_non_integer_max_secret_bytes_is_refused(tmp_path: Path, toml: str) -> None:
    write_toml(tmp_path, toml)
    with pytest.raises(ConfigError):
        Settings.load(tmp_path, environ={})


def test_bad_root_key_file_error_names_the_right_setting(tmp_path: Path) -> None:
    write_toml(tmp_path, "root_key_file = 5\n")
    with pytest.raises(ConfigError, match="root_key_file"):
        Settings.load(tmp_path, environ={})


@pytest.mark.parametrize("value", ["host:\uff18\uff14\uff12\uff10", "host:\u0668\u0664"])
def test_parse_listen_refuses_non_ascii_digits(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(value)


def test_repr_of_settings_hides_the_database_password(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql://tether:pa55-w0rd@db/tether")
    assert "pa55-w0rd" not in repr(settings)
