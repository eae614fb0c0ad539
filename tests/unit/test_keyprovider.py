"""Where the root key comes from: ``tether.crypto.keyprovider``."""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import pytest

from tether.crypto.keyprovider import (
    EnvKeyProvider,
    FileKeyProvider,
    KeyProvider,
    UnsafeDevKeyProvider,
    decode_root_key,
    generate_root_key,
)
from tether.errors import KeyProviderError

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()


def write_key(path: Path, text: str, mode: int) -> Path:
    path.write_text(text, encoding="ascii")
    path.chmod(mode)
    return path


# -- generate / decode --------------------------------------------------------------------------


def test_generated_root_keys_are_fresh_base64_of_32_bytes() -> None:
    first, second = generate_root_key(), generate_root_key()
    assert first != second
    assert len(decode_root_key(first, "test")) == 32


@pytest.mark.parametrize(
    "text",
    [
        "not base64!",
        "QUJD=",
        base64.b64encode(b"\0" * 31).decode(),
        base64.b64encode(b"\0" * 33).decode(),
        "",
    ],
)
def test_decode_root_key_refuses_malformed_keys_without_echoing_them(text: str) -> None:
    with pytest.raises(KeyProviderError) as caught:
        decode_root_key(text, "SOURCE")
    message = str(caught.value)
    assert message.startswith("SOURCE:")
    if text:
        assert text not in message


def test_decode_root_key_ignores_surrounding_whitespace() -> None:
    assert decode_root_key(f"  {KEY_B64}\n", "test") == KEY


# -- EnvKeyProvider ---------------------------------------------------------------------------


def test_env_provider_reads_a_base64_key() -> None:
    provider = EnvKeyProvider(environ={"TETHER_ROOT_KEY": KEY_B64})
    assert provider.root_key() == KEY
    assert provider.name == "env"
    assert isinstance(provider, KeyProvider)


@pytest.mark.parametrize("environ", [{}, {"TETHER_ROOT_KEY": ""}, {"OTHER": KEY_B64}])
def test_env_provider_without_the_variable_fails(environ: dict[str, str]) -> None:
    with pytest.raises(KeyProviderError, match="TETHER_ROOT_KEY is not set"):
        EnvKeyProvider(environ=environ).root_key()


def test_env_provider_refuses_bad_base64() -> None:
    with pytest.raises(KeyProviderError, match="not valid base64"):
        EnvKeyProvider(environ={"TETHER_ROOT_KEY": "%%%not-base64%%%"}).root_key()


def test_env_provider_refuses_a_key_of_the_wrong_length() -> None:
    short = base64.b64encode(KEY[:16]).decode()
    with pytest.raises(KeyProviderError, match="32 bytes") as caught:
        EnvKeyProvider(environ={"TETHER_ROOT_KEY": short}).root_key()
    assert short not in str(caught.value)


def test_env_provider_reads_a_custom_variable() -> None:
    provider = EnvKeyProvider("MY_KEY", environ={"MY_KEY": KEY_B64, "TETHER_ROOT_KEY": "ignored"})
    assert provider.root_key() == KEY


def test_env_provider_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_ROOT_KEY", KEY_B64)
    assert EnvKeyProvider().root_key() == KEY


# -- FileKeyProvider --------------------------------------------------------------------------


def test_file_provider_reads_a_0600_file(tmp_path: Path) -> None:
    path = write_key(tmp_path / "root.key", KEY_B64 + "\n", 0o600)
    provider = FileKeyProvider(path)
    assert provider.root_key() == KEY
    assert provider.name == "file"


def test_file_provider_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyProviderError, match="does not exist"):
        FileKeyProvider(tmp_path / "absent.key").root_key()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610, 0o601, 0o666])
def test_file_provider_refuses_a_file_readable_by_group_or_others(tmp_path: Path, mode: int) -> None:
    path = write_key(tmp_path / "root.key", KEY_B64, mode)
    with pytest.raises(KeyProviderError, match="chmod 600"):
        FileKeyProvider(path).root_key()


def test_file_provider_refuses_malformed_content(tmp_path: Path) -> None:
    path = write_key(tmp_path / "root.key", "hello", 0o600)
    with pytest.raises(KeyProviderError):
        FileKeyProvider(path).root_key()


def test_file_provider_accepts_a_0400_file(tmp_path: Path) -> None:
    path = write_key(tmp_path / "root.key", KEY_B64, 0o400)
    assert FileKeyProvider(path).root_key() == KEY


# -- UnsafeDevKeyProvider ---------------------------------------------------------------------


def test_dev_provider_creates_a_0600_key_file_once_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "data" / "dev-root.key"
    provider = UnsafeDevKeyProvider(path)
    assert provider.create_if_missing() is True
    assert provider.create_if_missing() is False
    with caplog.at_level(logging.WARNING, logger="tether.crypto.keyprovider"):
        first = provider.root_key()
        second = provider.root_key()

    assert first == second
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert decode_root_key(path.read_text(encoding="ascii"), str(path)) == first
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "UNSAFE" in warnings[0].getMessage()
    assert str(path) in warnings[0].getMessage()
    assert provider.name == "unsafe-dev"


def test_dev_provider_reuses_an_existing_key_file(tmp_path: Path) -> None:
    path = tmp_path / "dev-root.key"
    UnsafeDevKeyProvider(path).create_if_missing()
    first = UnsafeDevKeyProvider(path).root_key()
    mtime = path.stat().st_mtime_ns
    assert UnsafeDevKeyProvider(path).root_key() == first
    assert path.stat().st_mtime_ns == mtime


def test_dev_provider_file_is_private_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        UnsafeDevKeyProvider(tmp_path / "new-dir" / "dev-root.key").create_if_missing()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new-dir" / "dev-root.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "new-dir").stat().st_mode) == 0o700


def test_dev_provider_never_invents_a_missing_key_outside_init(tmp_path: Path) -> None:
    path = tmp_path / "dev-root.key"
    with pytest.raises(KeyProviderError, match="does not exist"):
        UnsafeDevKeyProvider(path).root_key()
    assert not path.exists()


def test_dev_provider_refuses_an_existing_key_file_readable_by_others(tmp_path: Path) -> None:
    path = write_key(tmp_path / "dev-root.key", KEY_B64, 0o644)
    with pytest.raises(KeyProviderError, match="chmod 600"):
        UnsafeDevKeyProvider(path).root_key()
