"""The console's templates and assets ship in the wheel (package data), htmx with its license."""

from __future__ import annotations

import zipfile
from pathlib import Path

from hatchling.builders.wheel import WheelBuilder

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_consoles_templates_and_assets(tmp_path: Path) -> None:
    wheel = next(iter(WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])))
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {p.name for p in (ROOT / "src/tether/console/templates").iterdir()}
    assert templates >= {"base.html", "login.html", "approvals.html", "task.html", "audit.html"}
    for name in templates:
        assert f"tether/console/templates/{name}" in names
    for name in ("htmx.min.js", "htmx.LICENSE", "console.css"):
        assert f"tether/console/static/{name}" in names
