"""A part of ``tether demo``: who else could reach the token (reach), where else it is (sprawl scan),
and what all this adds up to as compliance evidence (the report's summary).

Both go through the HTTP API with the demo's admin token, as ``tether reach secret`` and
``tether scan`` do; the demo decides nothing itself. No secret value is printed: reach answers
with names and policy ids, and a scan finding names the secret and its fingerprint only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.markup import escape

from tether.cli.client import OperatorClient, url_segment
from tether.cli.output import CommandError, out

__all__ = ["SPRAWL_DIR", "narrate_reach_and_scan"]

SECRET = "prod/github/token"
#: Where the demo leaves a careless copy of the token for the scan to find (in the data dir, 0600).
SPRAWL_DIR = "demo-sprawl"


def _step(label: str, text: str) -> None:
    out.print(f"[bold green]\\[{label}][/] {text}")


def narrate_reach_and_scan(api: OperatorClient, data_dir: Path, github_value: str) -> None:
    """Ask who else could reach ``prod/github/token``, then plant its value in a ``.env`` file and
    scan it. Raises :class:`CommandError` if an answer is not what Tether documents."""
    out.print()
    out.print(f"[bold]Who else, and where else[/]: the other half of the question, for {SECRET}.")
    _reach(api)
    _scan(api, data_dir, github_value)
    _compliance(api)


def _reach(api: OperatorClient) -> None:
    path = "/".join(url_segment(part) for part in SECRET.split("/"))
    report: dict[str, Any] = api.get(f"/v1/reach/secrets/{path}")
    rules = report.get("reach") or []
    if not rules:
        raise CommandError(
            f"reach found nobody who could use {SECRET}; the example policies allow deploy-bot"
        )
    agents = sorted({agent for rule in rules for agent in rule.get("agents", [])})
    by_policies: dict[str, set[str]] = {}
    for rule in rules:
        policies = ", ".join(sorted(rule.get("policies", [])))
        by_policies.setdefault(policies, set()).update(rule.get("modes", []))
    how = "; ".join(
        f"{', '.join(sorted(modes))} by {policies}" for policies, modes in sorted(by_policies.items())
    )
    purposes = sorted({p for rule in rules for p in rule.get("purposes", [])})
    approvals = {str(rule.get("approval")) for rule in rules}
    approval = "no approval needed" if approvals == {"not needed"} else "an approval needed for some"
    live = report.get("live") or {}
    injecting = sorted(d.get("name", "?") for d in live.get("destinations", []))
    _step(
        "reach",
        f"Who else could reach {SECRET}? Asked Tether (GET /v1/reach/secrets/{SECRET}, decided exactly "
        f"through the active policies): {escape(', '.join(agents))} — {escape(how)}; for purpose "
        f"{escape(', '.join(purposes) or 'any')}, {approval}. Live now: "
        f"{len(live.get('tasks', []))} task(s), {len(live.get('grants', []))} usable grant(s); injected by "
        f"destination {escape(', '.join(injecting) or '(none)')}. report-bot is on that list though it never "
        "used the token: `tether reach findings` flags such standing reach.",
    )


def _scan(api: OperatorClient, data_dir: Path, github_value: str) -> None:
    directory = data_dir / SPRAWL_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    planted = directory / ".env"
    text = f"# what a careless agent left behind\nGITHUB_TOKEN={github_value}\n"
    fd = os.open(planted, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    answer: dict[str, Any] = api.post(
        "/v1/scan", json={"documents": [{"name": str(planted), "text": text, "first_line": 1}]}
    )
    if github_value in str(answer):
        raise CommandError("the scan answer held the value; refusing to go on")
    findings = [f for doc in answer.get("documents", []) for f in doc.get("findings", [])]
    ours = [f for f in findings if f.get("kind") == "governed" and f.get("secret") == SECRET]
    if not ours:
        raise CommandError(f"the sprawl scan did not find {SECRET} in {planted}")
    found = ours[0]
    fingerprint = str(found.get("fingerprint", ""))
    _step(
        "scan",
        f"Where else is it? The demo copied the token's value into {escape(str(planted))} (0600), as a "
        f"careless agent might, and scanned it (POST /v1/scan): line {found.get('line')}: governed secret "
        f"{SECRET} ({escape(str(found.get('encoding')))}, {escape(fingerprint[:24])}…). A finding names the "
        f"secret and its audit fingerprint, never the value. Try `tether scan {escape(str(directory))}`.",
    )


def _compliance(api: OperatorClient) -> None:
    report: dict[str, Any] = api.get("/v1/compliance/report", params={"since": "1d"})
    summary = report.get("summary")
    if not isinstance(summary, str) or not summary:
        raise CommandError("the compliance report came back without its summary")
    _step(
        "compliance",
        f"The evidence so far (GET /v1/compliance/report, OWASP agentic and NHI Top 10s, NIST AI RMF): "
        f"{escape(summary)} The whole report: `tether compliance report --format html -o report.html`.",
    )
