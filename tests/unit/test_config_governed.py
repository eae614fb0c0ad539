"""Settings of the governed path and of SQLite durability: parsed from TOML and the environment,
checked when loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from tether.config import DEFAULT_TASK_PURPOSES, Settings
from tether.errors import ConfigError
from tether.store import open_storage


def test_defaults(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.task_purposes == DEFAULT_TASK_PURPOSES
    assert settings.task_default_ttl_seconds <= settings.task_max_ttl_seconds
    assert settings.sqlite_synchronous == "full"


def test_purposes_from_the_environment_and_toml(tmp_path: Path) -> None:
    from_env = Settings.load(tmp_path, {"TETHER_TASK_PURPOSES": "deploy, audit,deploy"})
    assert from_env.task_purposes == ("deploy", "audit")
    (tmp_path / "tether.toml").write_text('task_purposes = ["triage", "report"]\n')
    assert Settings.load(tmp_path, {}).task_purposes == ("triage", "report")


@pytest.mark.parametrize(
    "change",
    [
        {"task_purposes": ()},
        {"task_purposes": ("Deploy",)},
        {"task_max_ttl_seconds": 10},
        {"task_default_ttl_seconds": 0},
        {"task_default_ttl_seconds": 100_000},
        {"approval_ttl_seconds": 5},
        {"max_delegation_depth": 17},
        {"sweep_interval_seconds": 0},
        {"approval_webhook_url": "ftp://x"},
        {"sqlite_synchronous": "off"},
    ],
)
def test_out_of_bounds_settings_are_refused(tmp_path: Path, change: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Settings(data_dir=tmp_path, **change)  # type: ignore[arg-type]


def test_settings_round_trip_through_toml(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, task_purposes=("ops",), sqlite_synchronous="normal")
    (tmp_path / "tether.toml").write_text(settings.to_toml())
    loaded = Settings.load(tmp_path, {})
    assert loaded.task_purposes == ("ops",)
    assert loaded.sqlite_synchronous == "normal"


@pytest.mark.parametrize(("setting", "pragma"), [("full", 2), ("normal", 1)])
async def test_sqlite_synchronous_is_applied(tmp_path: Path, setting: str, pragma: int) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 't.db'}", sqlite_synchronous=setting)
    try:
        async with storage._engine.connect() as conn:  # type: ignore[attr-defined]
            assert (await conn.execute(text("PRAGMA synchronous"))).scalar_one() == pragma
    finally:
        await storage.close()
