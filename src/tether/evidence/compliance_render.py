"""The compliance report as Markdown and as one self-contained HTML page (pure)."""

from __future__ import annotations

from jinja2 import Environment, select_autoescape

from tether.evidence.compliance import Report, summary_paragraph

__all__ = ["render_html", "render_markdown"]


def render_markdown(report: Report) -> str:
    f = report.facts
    lines = [
        f"# Tether compliance report — {f.trust_domain}",
        "",
        f"Window: last {f.since} ({f.window_start.isoformat()} to {f.window_end.isoformat()}). "
        f"Mapping version {report.mapping.version}. Generated {report.generated_at.isoformat()}.",
        "",
        summary_paragraph(report),
        "",
    ]
    if f.truncated:
        lines += ["> Some counts stopped at a read limit; they are lower bounds.", ""]
    lines += ["## Controls and their evidence", ""]
    for control in report.mapping.controls:
        mark = "" if report.control_has_evidence(control) else " — no evidence in this window"
        lines += [f"### {control.id} {control.title}{mark}", "", control.description, ""]
        for metric_id in control.evidence:
            for statement in report.metrics[metric_id].statements:
                lines.append(f"- {statement}")
        lines.append("")
    for framework in report.mapping.frameworks:
        lines += [
            f"## {framework.title}",
            "",
            "| item | risk | Tether controls | status |",
            "|---|---|---|---|",
        ]
        for item in framework.items:
            note = f" ({item.note})" if item.note else ""
            controls = ", ".join(item.controls) or "—"
            lines.append(
                f"| {item.id} | {item.title}{note} | {controls} | {report.item_status(item)} |".replace(
                    "\n", " "
                )
            )
        lines.append("")
    return "\n".join(lines)


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Tether compliance report — {{ f.trust_domain }}</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1d1d1f}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #ddd}h3{font-size:1.05rem;margin-bottom:.2rem}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;
vertical-align:top}.evidence{color:#1a7f37}.no-evidence{color:#9a6700}.not-addressed{color:#6e7781}
.summary{background:#f6f8fa;padding:.8rem 1rem;border-radius:6px}.muted{color:#6e7781}
</style></head><body>
<h1>Tether compliance report — {{ f.trust_domain }}</h1>
<p class="muted">Window: last {{ f.since }}
({{ f.window_start.isoformat() }} to {{ f.window_end.isoformat() }}).
Mapping version {{ r.mapping.version }}. Generated {{ r.generated_at.isoformat() }}.</p>
<p class="summary">{{ summary }}</p>
{% if f.truncated %}
<p><strong>Some counts stopped at a read limit; they are lower bounds.</strong></p>
{% endif %}
<h2>Controls and their evidence</h2>
{% for c in r.mapping.controls %}{% set has = r.control_has_evidence(c) %}
<h3 id="{{ c.id }}">{{ c.id }} {{ c.title }}
<span class="{{ 'evidence' if has else 'no-evidence' }}">
{{- '' if has else '— no evidence in this window' }}</span></h3>
<p>{{ c.description }}</p><ul>
{% for m in c.evidence %}{% for s in r.metrics[m].statements %}<li>{{ s }}</li>{% endfor %}{% endfor %}
</ul>{% endfor %}
{% for fw in r.mapping.frameworks %}<h2>{{ fw.title }}</h2>
<table><tr><th>item</th><th>risk</th><th>Tether controls</th><th>status</th></tr>
{% for i in fw.items %}{% set st = r.item_status(i) %}<tr><td>{{ i.id }}</td><td>{{ i.title }}
{% if i.note %}<br><span class="muted">{{ i.note }}</span>{% endif %}</td>
<td>{% for c in i.controls %}<a href="#{{ c }}">{{ c }}</a>{{ ", " if not loop.last }}
{%- else %}—{% endfor %}</td>
<td class="{{ st }}">{{ st }}</td></tr>{% endfor %}</table>{% endfor %}
</body></html>
"""

_ENV = Environment(autoescape=select_autoescape(default=True, default_for_string=True))


def render_html(report: Report) -> str:
    """One self-contained page: inline style, no script, no external asset."""
    return _ENV.from_string(_HTML).render(r=report, f=report.facts, summary=summary_paragraph(report))
