"""The compliance report: Tether's controls, mapped to OWASP ASI, OWASP NHI and NIST AI RMF, with
evidence computed from one deployment's own data (pure: no I/O but reading the shipped mapping).

The mapping is data (``controls.yaml`` next to this module, versioned and reviewed like code); the
broker gathers :class:`Facts` from the store and the audit log (``tether.broker.compliance``);
:func:`build_report` turns both into a :class:`Report` with the metrics of ``compliance_metrics``;
``compliance_render`` renders it as Markdown or a self-contained HTML page. A metric with nothing to
show in the window says so, and so does every control and framework item that rests only on such
metrics. Paths, ids and counts only: never a secret value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, Final

import yaml  # type: ignore[import-untyped]  # no stubs; safe_load only

from tether.errors import ConfigError
from tether.evidence.compliance_metrics import (
    METRICS,
    EventTally,
    Facts,
    Metric,
    TaskTimes,
    compute_metrics,
)

__all__ = [
    "METRICS",
    "Control",
    "ControlMapping",
    "EventTally",
    "Facts",
    "Framework",
    "FrameworkItem",
    "Metric",
    "Report",
    "TaskTimes",
    "build_report",
    "load_mapping",
    "summary_paragraph",
]

MAPPING_RESOURCE: Final = "controls.yaml"

# -- the mapping -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Control:
    id: str
    title: str
    description: str
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FrameworkItem:
    id: str
    title: str
    controls: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True, slots=True)
class Framework:
    id: str
    title: str
    url: str
    items: tuple[FrameworkItem, ...]


@dataclass(frozen=True, slots=True)
class ControlMapping:
    """The reviewed mapping (``controls.yaml``); validated when built."""

    version: str
    controls: tuple[Control, ...]
    frameworks: tuple[Framework, ...]

    def __post_init__(self) -> None:
        if not self.version:
            raise ConfigError("the compliance mapping has no version")
        ids = [c.id for c in self.controls]
        if len(set(ids)) != len(ids) or not ids:
            raise ConfigError("the compliance mapping's control ids must be present and unique")
        for control in self.controls:
            unknown = [m for m in control.evidence if m not in METRICS]
            if unknown or not control.evidence:
                raise ConfigError(f"control {control.id} names unknown or no metrics: {unknown}")
        mapped: set[str] = set()
        for framework in self.frameworks:
            items = [i.id for i in framework.items]
            if len(set(items)) != len(items) or not items:
                raise ConfigError(f"framework {framework.id} has missing or duplicate items")
            for item in framework.items:
                unknown = [c for c in item.controls if c not in ids]
                if unknown:
                    raise ConfigError(f"{framework.id} {item.id} names unknown controls {unknown}")
                if not item.controls and not item.note:
                    raise ConfigError(f"{framework.id} {item.id} maps no control and says nothing why")
                mapped.update(item.controls)
        if set(ids) - mapped:
            raise ConfigError(f"controls mapped to nothing: {sorted(set(ids) - mapped)}")

    def control(self, control_id: str) -> Control:
        return next(c for c in self.controls if c.id == control_id)


def _text(entry: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"the compliance mapping's {key!r} must be text")
    return value.strip()


def _ids(entry: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = entry.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"the compliance mapping's {key!r} must be a list of ids")
    return tuple(value)


def load_mapping(text: str | None = None) -> ControlMapping:
    """The mapping in ``text`` (YAML), or the one shipped with Tether."""
    if text is None:
        text = resources.files("tether.evidence").joinpath(MAPPING_RESOURCE).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        return ControlMapping(
            version=_text(data, "version"),
            controls=tuple(
                Control(_text(c, "id"), _text(c, "title"), _text(c, "description"), _ids(c, "evidence"))
                for c in data["controls"]
            ),
            frameworks=tuple(
                Framework(
                    _text(f, "id"),
                    _text(f, "title"),
                    _text(f, "url", ""),
                    tuple(
                        FrameworkItem(
                            _text(i, "id"), _text(i, "title"), _ids(i, "controls"), _text(i, "note", "")
                        )
                        for i in f["items"]
                    ),
                )
                for f in data["frameworks"]
            ),
        )
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"the compliance mapping is malformed: {type(exc).__name__}: {exc}") from None


# -- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    mapping: ControlMapping
    facts: Facts
    metrics: Mapping[str, Metric]
    generated_at: datetime

    def control_has_evidence(self, control: Control) -> bool:
        return any(self.metrics[m].evidence for m in control.evidence)

    def item_status(self, item: FrameworkItem) -> str:
        """``evidence``, ``no-evidence`` (its controls had nothing to show) or ``not-addressed``."""
        if not item.controls:
            return "not-addressed"
        controls = [self.mapping.control(c) for c in item.controls]
        return "evidence" if any(self.control_has_evidence(c) for c in controls) else "no-evidence"

    def to_json(self) -> dict[str, Any]:
        f = self.facts
        return {
            "mapping_version": self.mapping.version,
            "generated_at": self.generated_at.isoformat(),
            "trust_domain": f.trust_domain,
            "window": {"since": f.since, "from": f.window_start.isoformat(), "to": f.window_end.isoformat()},
            "summary": summary_paragraph(self),
            "truncated": f.truncated,
            "metrics": {m.id: m.to_json() for m in self.metrics.values()},
            "controls": [
                {
                    "id": c.id,
                    "title": c.title,
                    "description": c.description,
                    "evidence": self.control_has_evidence(c),
                    "metrics": list(c.evidence),
                }
                for c in self.mapping.controls
            ],
            "frameworks": [
                {
                    "id": fw.id,
                    "title": fw.title,
                    "url": fw.url,
                    "items": [
                        {
                            "id": i.id,
                            "title": i.title,
                            "controls": list(i.controls),
                            "status": self.item_status(i),
                            "note": i.note or None,
                        }
                        for i in fw.items
                    ],
                }
                for fw in self.mapping.frameworks
            ],
        }


def build_report(mapping: ControlMapping, facts: Facts, now: datetime) -> Report:
    return Report(mapping, facts, compute_metrics(facts), now)


def summary_paragraph(report: Report) -> str:
    """One paragraph for people (the ``make run`` narration, the top of every format)."""
    m = report.metrics
    covered = sum(1 for c in report.mapping.controls if report.control_has_evidence(c))
    items = [i for fw in report.mapping.frameworks for i in fw.items]
    with_evidence = sum(1 for i in items if report.item_status(i) == "evidence")
    not_addressed = sum(1 for i in items if report.item_status(i) == "not-addressed")
    parts = [
        f"Over the last {report.facts.since} (mapping {report.mapping.version}), {covered} of "
        f"{len(report.mapping.controls)} Tether controls have evidence, covering {with_evidence} of "
        f"{len(items)} framework items ({not_addressed} not addressed by Tether)."
    ]
    for metric_id in ("use_time_decisions", "revocation_at_end", "audit_chain", "sprawl_scans"):
        metric = m[metric_id]
        if metric.evidence:
            parts.append(metric.statements[0])
    return " ".join(parts)
