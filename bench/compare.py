"""Fold every benchmark's results into bench/results/latest.json and latest.md, against the bars.

Run: ``python -m bench.compare [--run] [--profile] [--quick]``. ``--run`` first runs the
side-by-side measurements through the SDK (:mod:`bench.openbao`, which writes openbao.json);
without it the files already in bench/results/ are used. Reads light.json (issue 13: the light
load generator, server CPU per operation; ``--quick``: light-quick.json, rendered to
latest-quick.md), openbao.json (through the SDK: B2, B3, B4, B6 bytes, RSS, CPU), policy.json
(B1), egress.json (B5), audit.json (B6 rates), identity.json and governed.json when present; a
missing file is reported as missing, never guessed. "Done means" is issue 13's; the older bar is
issue 8's; both measured on this machine.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.light.report import done_means, done_means_md, light_md, verdict

RESULTS = Path(__file__).parent / "results"
INPUTS = ("light", "openbao", "openbao-full", "policy", "egress", "governed", "audit", "identity")


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _walk(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, (*path, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, (*path, str(i)))
    else:
        yield path, value


def decision_p50_us(policy: dict[str, Any] | None) -> float | None:
    """B1: p50 of an allowed activation decision at 1000 policies (policy.json)."""
    if policy is None:
        return None
    for row in policy.get("results", []):
        if row.get("policies") == 1000:
            value = row.get("latency", {}).get("activate allow", {}).get("p50_us")
            return float(value) if value is not None else None
    return None


def egress_added_p50_us(egress: dict[str, Any] | None) -> float | None:
    """B5: the egress path's added p50 latency (egress.json; the first p50 under an "added" key)."""
    if egress is None:
        return None
    for path, value in _walk(egress):
        joined = "/".join(path).lower()
        if "added" in joined and "p50" in joined and isinstance(value, int | float):
            # Unit from the key: ..._ms or ..._us (microseconds by default).
            return float(value) * 1000 if joined.endswith("ms") else float(value)
    return None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0 or math.isnan(denominator):
        return None
    return numerator / denominator


def bar(
    side: dict[str, Any] | None, policy: dict[str, Any] | None, egress: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Each target of issue 8: figure, ratio, pass / miss (or "not measured")."""
    rows: list[dict[str, Any]] = []

    def conc(label: str, who: str) -> float | None:
        if side is None:
            return None
        return float(side[label][who]["concurrent_16"]["ops_per_second"]["median"])

    activation = ratio(conc("B3_activation", "tether"), conc("B3_activation", "openbao"))
    rows.append(
        {
            "target": "activation throughput >= 1.0x OpenBao KV v2 read (16 concurrent)",
            "figure": _fmt_pair(conc("B3_activation", "tether"), conc("B3_activation", "openbao"), "ops/s"),
            "ratio": activation,
            "needed": 1.0,
            "pass": None if activation is None else activation >= 1.0,
        }
    )
    issuance = ratio(conc("B2_issuance", "tether"), conc("B2_issuance", "openbao"))
    rows.append(
        {
            "target": "issuance throughput >= 2x OpenBao service-token creation (16 concurrent)",
            "figure": _fmt_pair(conc("B2_issuance", "tether"), conc("B2_issuance", "openbao"), "ops/s"),
            "ratio": issuance,
            "needed": 2.0,
            "pass": None if issuance is None else issuance >= 2.0,
        }
    )
    t_revoke = o_revoke = None
    if side is not None:
        t_revoke = side["B4_revocation"]["tether_1000_grants"]["revoke_ms"]["median"]
        o_revoke = side["B4_revocation"]["openbao_1000_children"]["revoke_ms"]["median"]
    speedup = ratio(o_revoke, t_revoke)
    rows.append(
        {
            "target": "revoking 1000 grants >= 20x faster than OpenBao revoking 1000 child tokens",
            "figure": _fmt_pair(t_revoke, o_revoke, "ms"),
            "ratio": speedup,
            "needed": 20.0,
            "pass": None if speedup is None else speedup >= 20.0,
        }
    )
    decision = decision_p50_us(policy)
    rows.append(
        {
            "target": "decision p50 <= 100 us at 1000 policies",
            "figure": "not measured (policy.json missing)" if decision is None else f"{decision:.1f} us",
            "ratio": None if decision is None else decision / 100.0,
            "needed": "<= 1.0 of the limit",
            "pass": None if decision is None else decision <= 100.0,
        }
    )
    added = egress_added_p50_us(egress)
    rows.append(
        {
            "target": "egress added latency p50 <= 1 ms",
            "figure": "not measured (egress.json missing)" if added is None else f"{added:.1f} us",
            "ratio": None if added is None else added / 1000.0,
            "needed": "<= 1.0 of the limit",
            "pass": None if added is None else added <= 1000.0,
        }
    )
    return rows


def _fmt_pair(tether: float | None, openbao: float | None, unit: str) -> str:
    if tether is None or openbao is None:
        return "not measured (openbao.json missing)"
    return f"Tether {tether:,.1f} {unit} vs OpenBao {openbao:,.1f} {unit}"


def _verdict(row: dict[str, Any]) -> str:
    return "not measured" if row["pass"] is None else ("PASS" if row["pass"] else "MISS")


def _r(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(latest: dict[str, Any]) -> str:
    side = latest["inputs"].get("openbao")
    lines = ["# Tether benchmarks: latest run", ""]
    lines.append(
        f"Generated {latest['generated']} by `make bench` (`python -m bench`, `python -m bench.light`, "
        "`python -m bench.compare --run --profile`). Ratios are Tether / OpenBao."
    )
    lines.append("")
    m = latest.get("machine") or {}
    if m:
        lines += [
            "## Machine",
            "",
            f"- CPU: {m.get('cpu_model')} ({m.get('cores')} cores), RAM {m.get('ram_gib')} GiB, "
            f"kernel {m.get('kernel')}",
            f"- Python {m.get('python')}, Tether {m.get('tether')}, {m.get('openbao')}",
            "",
        ]
    lines += done_means_md(latest["done_means"])
    light = latest["inputs"].get("light")
    if light is not None:
        lines += light_md(light)
    else:
        lines += ["## Light load generator (issue 13)", "", "Not measured: light.json is missing.", ""]
    lines += [
        "## The earlier bar (issue 8, through the SDK)",
        "",
        "Measured through the httpx-based SDK harness below, whose client costs 1.2-1.7 ms of CPU per "
        "request: kept for continuity; the fair figures are the light generator's above.",
        "",
        "| target | figure | ratio | needed | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in latest["bar"]:
        needed = row["needed"] if isinstance(row["needed"], str) else f">= {row['needed']}x"
        lines.append(
            f"| {row['target']} | {row['figure']} | {_r(row['ratio'])} | {needed} | {_verdict(row)} |"
        )
    lines.append("")
    if side is not None:
        lines += _side_by_side_md(side)
    strict = latest["inputs"].get("openbao-full")
    if strict is not None:
        lines += _strict_md(strict)
    lines += ["## Inputs", ""]
    for name in INPUTS:
        lines.append(f"- {name}.json: {'included' if latest['inputs'].get(name) else 'missing'}")
    lines.append("")
    return "\n".join(lines)


def _strict_md(side: dict[str, Any]) -> list[str]:
    """The same comparison with Tether at sqlite_synchronous=full (openbao-full.json, a separate run)."""
    lines = [
        "## With every Tether commit fsynced (sqlite_synchronous=full)",
        "",
        "A separate run (`python -m bench.openbao --sqlite-synchronous full`), not part of `make bench`: the "
        "figures below are from whenever it was last run (openbao-full.json), possibly an older Tether; the "
        "light generator's tables above measure `full` for this build. OpenBao's file audit device "
        "writes without fsync; with `full`, Tether fsyncs every commit (audit event and state together) "
        "before it answers — stricter than OpenBao, and this is what it costs.",
        "",
        "| measure | mode | Tether ops/s | OpenBao ops/s | ratio |",
        "|---|---|---|---|---|",
    ]
    for label, name in (("B2_issuance", "B2 issuance"), ("B3_activation", "B3 activation")):
        for mode in ("sequential", "concurrent_16"):
            t = side[label]["tether"][mode]["ops_per_second"]["median"]
            o = side[label]["openbao"][mode]["ops_per_second"]["median"]
            lines.append(f"| {name} | {mode} | {t:,.1f} | {o:,.1f} | {_r(ratio(t, o))} |")
    return [*lines, ""]


def _side_by_side_md(side: dict[str, Any]) -> list[str]:
    cfg = side["config"]
    lines = [
        "## Through the SDK (httpx client)",
        "",
        "The earlier side-by-side harness (`python -m bench.openbao`): every Tether request goes through "
        "the SDK's `AsyncAgent` (httpx, a DPoP proof signed per request, as an agent does), OpenBao's "
        "through httpx. The client's own CPU per request is of the order of the server's, so these "
        "figures show what an SDK user sees, not the server's capacity.",
        "",
        f"Both servers on 127.0.0.1, persistence and audit on. Tether: {cfg['tether']}. "
        f"OpenBao: {cfg['openbao']}. 16 concurrent = {cfg['client_processes']} client processes x "
        f"{cfg['concurrency'] // cfg['client_processes']} coroutines, {cfg['concurrent_seconds']} s a run, "
        f"{cfg['reps']} runs (median, min-max); sequential = one client, one request at a time.",
        "",
        "| measure | mode | Tether ops/s (min-max) | OpenBao ops/s (min-max) | ratio | Tether p50 / p99 ms "
        "| OpenBao p50 / p99 ms | server CPU us/op T / O | server cores T / O | client cores T / O |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, name in (("B2_issuance", "B2 issuance"), ("B3_activation", "B3 activation")):
        for mode in ("sequential", "concurrent_16"):
            t, o = side[label]["tether"][mode], side[label]["openbao"][mode]
            tr, orr = t["ops_per_second"], o["ops_per_second"]
            lines.append(
                f"| {name} | {mode} | {tr['median']:,.1f} ({tr['min']:,.0f}-{tr['max']:,.0f}) "
                f"| {orr['median']:,.1f} ({orr['min']:,.0f}-{orr['max']:,.0f}) "
                f"| {_r(ratio(tr['median'], orr['median']))} "
                f"| {t['p50_us'] / 1000:.2f} / {t['p99_us'] / 1000:.2f} "
                f"| {o['p50_us'] / 1000:.2f} / {o['p99_us'] / 1000:.2f} "
                f"| {t['server_cpu_us_per_op']['median']:,.0f} / {o['server_cpu_us_per_op']['median']:,.0f} "
                f"| {t['server_cpu_cores']} / {o['server_cpu_cores']} "
                f"| {t['client_cpu_cores']} / {o['client_cpu_cores']} |"
            )
    lines += [
        "",
        "Tether issuance is two requests (open task, issue grant); OpenBao's is one (token create).",
        "",
        "### B4 revocation",
        "",
        "| case | items | revoke call ms (min-max) | until every one refused ms "
        "| all refused at first check |",
        "|---|---|---|---|---|",
    ]
    for name, row in side["B4_revocation"].items():
        rv, ua = row["revoke_ms"], row["until_all_refused_ms"]
        lines.append(
            f"| {name} | {row['items']} | {rv['median']:,.1f} ({rv['min']:,.1f}-{rv['max']:,.1f}) "
            f"| {ua['median']:,.1f} | {row['all_refused_at_first_check']} |"
        )
    lines += [
        "",
        '"Until every one refused" = the revoke call plus one pass that tries every grant / child token '
        "(16 at a time); its length is mostly the cost of that pass, so the bar uses the revoke call, "
        "valid because every item was refused on the first pass.",
        "",
    ]
    audit = side["B6_audit"]
    lines += [
        "### B6 audit cost per activation",
        "",
        "| | events / op | bytes / event | bytes / op | what |",
        "|---|---|---|---|---|",
    ]
    for who in ("tether", "openbao"):
        a = audit[who]
        lines.append(
            f"| {who} | {a['events_per_op']} | {a['bytes_per_event']} | {a['bytes_per_op']} | {a['what']} |"
        )
    rss = side["rss"]
    lines += [
        "",
        "### Server memory",
        "",
        f"- Tether RSS peak {rss['tether']['peak_bytes'] / 2**20:.0f} MiB, at the end "
        f"{rss['tether']['final_bytes'] / 2**20:.0f} MiB with {rss['tether']['tasks']} tasks "
        f"({rss['tether']['tasks_active']} active) and {rss['tether']['grants']} grants in the store",
        f"- OpenBao RSS peak {rss['openbao']['peak_bytes'] / 2**20:.0f} MiB, at the end "
        f"{rss['openbao']['final_bytes'] / 2**20:.0f} MiB",
        "",
    ]
    prof = side.get("profile_tether_activation")
    # This harness samples one process; with worker processes it sees only the supervisor, so its
    # profile says nothing (the light generator's profile above samples every worker).
    if prof and "self" in prof and prof.get("server_cpu_us_per_op_by_thread"):
        lines += [
            "### Profile: Tether server under 16-concurrent activation (py-spy)",
            "",
            f"{prof['ops_per_second_while_sampled']} ops/s while sampled; "
            "server CPU per activation by thread: "
            + ", ".join(f"{k} {v} us" for k, v in prof["server_cpu_us_per_op_by_thread"].items())
            + ". Shares of the event-loop thread's samples:",
            "",
            "| self % | function | | inclusive % | Tether function |",
            "|---|---|---|---|---|",
        ]
        for a, b in zip(prof["self"][:15], prof["inclusive_tether"][:15], strict=False):
            lines.append(f"| {a['percent']} | {a['function']} | | {b['percent']} | {b['function']} |")
        lines.append("")
    return lines


_SECTION = re.compile(r"<!-- ([a-z0-9-]+):begin -->.*?<!-- \1:end -->", re.DOTALL)


def kept_sections(md: Path) -> str:
    """The sections other benchmarks write into latest.md between their own markers (the MCP
    gateway, dynamic credentials, the sprawl scan): kept as they are when the rest is rewritten."""
    if not md.exists():
        return ""
    found = [m.group(0) for m in _SECTION.finditer(md.read_text(encoding="utf-8"))]
    return "".join(f"\n{section}\n" for section in found)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="store_true", help="run the side-by-side measurements first")
    parser.add_argument("--profile", action="store_true", help="with --run: also py-spy the Tether server")
    parser.add_argument(
        "--quick", action="store_true", help="render light-quick.json into latest-quick.md (not committed)"
    )
    args, rest = parser.parse_known_args(argv)
    if args.run:
        from bench.openbao.run import main as run_side_by_side

        run_side_by_side([*rest, *(["--profile"] if args.profile else [])])
    inputs = {name: load(name) for name in INPUTS}
    if args.quick:
        inputs["light"] = load("light-quick")
    side, light = inputs["openbao"], inputs["light"]
    latest: dict[str, Any] = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": (light or {}).get("machine") or (side["machine"] if side else None),
        "done_means": done_means(light, inputs["policy"]),
        "bar": bar(side, inputs["policy"], inputs["egress"]),
        "inputs": inputs,
    }
    md = RESULTS / ("latest-quick.md" if args.quick else "latest.md")
    if not args.quick:
        (RESULTS / "latest.json").write_text(json.dumps(latest, indent=2) + "\n", encoding="utf-8")
    md.write_text(markdown(latest) + kept_sections(md), encoding="utf-8")
    print("Done means (issue 13):")
    for row in latest["done_means"]:
        print(f"  {verdict(row):12} {row['target']}: {row['figure']}")
    print("Issue 8's bar (through the SDK):")
    for row in latest["bar"]:
        print(f"  {_verdict(row):12} {row['target']}: {row['figure']} (ratio {_r(row['ratio'])})")
    print(f"wrote {md}" + ("" if args.quick else f" and {RESULTS / 'latest.json'}"))
    return latest


if __name__ == "__main__":
    main()
