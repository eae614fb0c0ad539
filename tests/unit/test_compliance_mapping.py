"""The compliance mapping (``tether/evidence/controls.yaml``): shipped as package data, complete,
validated at load; and the pure metrics say "no evidence" when the facts are empty."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tether.errors import ConfigError
from tether.evidence.compliance import METRICS, Facts, build_report, load_mapping, summary_paragraph

SHIPPED = Path(__file__).resolve().parents[2] / "src" / "tether" / "evidence" / "controls.yaml"


def test_the_shipped_mapping_covers_every_framework_item_and_uses_every_metric() -> None:
    mapping = load_mapping()
    assert mapping.version
    items = {fw.id: [i.id for i in fw.items] for fw in mapping.frameworks}
    assert items["owasp-asi"] == [f"ASI{n:02d}" for n in range(1, 11)]
    assert items["owasp-nhi"] == [f"NHI{n}" for n in range(1, 11)]
    assert all(i.startswith(("GOVERN", "MAP", "MEASURE", "MANAGE")) for i in items["nist-ai-rmf"])
    used = {m for c in mapping.controls for m in c.evidence}
    assert used == set(METRICS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("evidence: [use_time_decisions, decisions]", "evidence: [no_such_metric]"),
            "unknown or no metrics",
        ),
        (("controls: [TC-11, TC-04, TC-01]", "controls: [TC-99]"), "unknown controls"),
        (('version: "', 'version: "" #'), "no version"),
        (("controls: [TC-10, TC-08]", "controls: []"), "says nothing why"),
        (("controls:\n  - id: TC-01", "controls:\n  - idx: TC-01"), "must be text"),
    ],
)
def test_a_mapping_with_a_mistake_is_refused(change: tuple[str, str], message: str) -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    assert change[0] in text
    with pytest.raises(ConfigError, match=message):
        load_mapping(text.replace(change[0], change[1], 1))


def test_no_facts_means_no_evidence_except_where_absence_is_the_evidence() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    facts = Facts(
        since="30d", window_start=now - timedelta(days=30), window_end=now, trust_domain="acme.test"
    )
    report = build_report(load_mapping(), facts, now)
    assert not any(m.evidence for m in report.metrics.values())
    statuses = {i.id: report.item_status(i) for fw in report.mapping.frameworks for i in fw.items}
    assert statuses["ASI05"] == "not-addressed"
    assert statuses["NHI7"] == "no-evidence"
    assert "0 of 15 Tether controls have evidence" in summary_paragraph(report)


def test_the_wheel_ships_the_mapping(tmp_path: Path) -> None:
    wheels = sorted(Path(__file__).resolve().parents[2].glob("dist/*.whl"))
    if not wheels:
        pytest.skip("no wheel built (make dist)")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        assert "tether/evidence/controls.yaml" in wheel.namelist()
