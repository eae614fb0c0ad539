"""Issue 13's "Done means" table and the light-generator sections of latest.md (from light.json).

Pure functions of the results dict; :mod:`bench.compare` writes the file.
"""

from __future__ import annotations

from typing import Any

CPU_ACTIVATION_US = 1200.0
CPU_ISSUANCE_US = 2000.0
ACTIVATION_VS_COUNTED = 1.0
ISSUANCE_VS_CREATE = 1.5
EGRESS_ADDED_US = 2000.0
DECISION_US = 100.0
PG_NAMES = ("pg-1-node", "pg-2-nodes")


def _get(data: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _us(value: float | None) -> str:
    if value is None:
        return "not measured"
    return f"{value / 1000:,.2f} ms" if value >= 1000 else f"{value:,.0f} µs"


def _row(target: str, figure: str, ok: bool | None, note: str = "") -> dict[str, Any]:
    return {"target": target, "figure": figure, "pass": ok, "note": note}


def _pg_cpu(light: dict[str, Any], op: str) -> str:
    parts = []
    for name in PG_NAMES:
        value = _num(_get(light, "tether", name, op, "server_cpu_us_per_op"))
        if value is not None:
            parts.append(f"{name} {_us(value)}")
        elif _get(light, "tether", name, "error") or _get(light, "tether", name, op, "error"):
            parts.append(f"{name} failed")
    return "PostgreSQL: " + ", ".join(parts) if parts else "PostgreSQL: not measured"


def done_means(light: dict[str, Any] | None, policy: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each target of issue 13 with its figure and PASS / MISS (None: not measured)."""
    light = light or {}
    rows: list[dict[str, Any]] = []
    for op, limit, label in (
        ("activate", CPU_ACTIVATION_US, "activation"),
        ("issue", CPU_ISSUANCE_US, "issuance (task + grant)"),
    ):
        for mode in ("normal", "full"):
            cpu = _num(_get(light, "tether", f"sqlite-{mode}", op, "server_cpu_us_per_op"))
            note = _pg_cpu(light, op) if mode == "normal" else ""
            if op == "issue" and _get(light, "tether", f"sqlite-{mode}", "issue", "one_request") is False:
                note = ("two requests: the server has no `grants` on POST /v1/tasks yet. " + note).strip()
            rows.append(
                _row(
                    f"server CPU per {label} <= {_us(limit)} (SQLite, synchronous={mode}, all workers)",
                    _us(cpu),
                    None if cpu is None else cpu <= limit,
                    note,
                )
            )
    tether_act = _num(_get(light, "tether", "sqlite-normal", "activate", "ops_per_second"))
    counted = _num(_get(light, "openbao", "kv_read_counted", "ops_per_second"))
    plain = _num(_get(light, "openbao", "kv_read", "ops_per_second"))
    ratio = tether_act / counted if tether_act and counted else None
    plain_ratio = (
        f"; vs plain KV read {plain:,.0f}/s: {tether_act / plain:.2f}x" if tether_act and plain else ""
    )
    rows.append(
        _row(
            f"activation throughput >= {ACTIVATION_VS_COUNTED}x OpenBao counted-use KV read (16 conn.)",
            "not measured"
            if ratio is None
            else f"{tether_act:,.0f}/s vs {counted:,.0f}/s: {ratio:.2f}x{plain_ratio}",
            None if ratio is None else ratio >= ACTIVATION_VS_COUNTED,
            "Tether at synchronous=normal, like OpenBao's file audit (no fsync); full in its own table",
        )
    )
    tether_iss = _num(_get(light, "tether", "sqlite-normal", "issue", "ops_per_second"))
    create = _num(_get(light, "openbao", "token_create", "ops_per_second"))
    ratio = tether_iss / create if tether_iss and create else None
    one = _get(light, "tether", "sqlite-normal", "issue", "one_request")
    rows.append(
        _row(
            f"issuance throughput >= {ISSUANCE_VS_CREATE}x OpenBao child-token creation (16 conn.)",
            "not measured" if ratio is None else f"{tether_iss:,.0f}/s vs {create:,.0f}/s: {ratio:.2f}x",
            None if ratio is None else ratio >= ISSUANCE_VS_CREATE,
            "one request (task + grant)"
            if one
            else "two requests, measured apart and combined"
            if one is False
            else "",
        )
    )
    for mode in ("normal", "full"):
        added = _num(_get(light, "tether", f"sqlite-{mode}", "egress", "added_p50_us"))
        rows.append(
            _row(
                f"egress added latency p50 <= {_us(EGRESS_ADDED_US)} (synchronous={mode})",
                _us(added),
                None if added is None else added <= EGRESS_ADDED_US,
                "one connection, same loopback upstream, direct vs via /v1/egress",
            )
        )
    decision = _num(_get(light, "decision", "policies_1000", "latency", "activate allow", "p50_us"))
    floor = _num(_get(light, "decision", "cedarpy_floor", "p50_us"))
    if decision is None and policy is not None:  # policy.json from `make bench`'s policy_bench
        decision = next(
            (
                _num(_get(r, "latency", "activate allow", "p50_us"))
                for r in policy.get("results", [])
                if r.get("policies") == 1000
            ),
            None,
        )
        floor = _num(_get(policy, "cedarpy_floor", "p50_us"))
    rows.append(
        _row(
            f"decision p50 at 1,000 policies <= {DECISION_US:.0f} µs (or cedarpy's floor, shown)",
            _us(decision) + (f"; cedarpy floor {_us(floor)} per call" if floor is not None else ""),
            None if decision is None else decision <= DECISION_US,
            "floor: one trivial policy, cedarpy.is_authorized",
        )
    )
    return rows


def verdict(row: dict[str, Any]) -> str:
    return "not measured" if row["pass"] is None else ("PASS" if row["pass"] else "MISS")


def _measure_row(name: str, m: dict[str, Any] | None) -> str:
    if not m:
        return f"| {name} | not measured | | | | | | |"
    if "error" in m and "ops_per_second" not in m:
        return f"| {name} | failed: {str(m['error'])[:120]} | | | | | | |"
    errors = m.get("status_errors", 0) + m.get("socket_errors", 0)
    flags = (f"{errors}" if errors else "0") + (" (pool ran out)" if m.get("pool_exhausted") else "")
    gen, cpu = m.get("generator_cpu_us_per_request"), m.get("server_cpu_us_per_op")
    share = f" ({100 * gen / cpu:.1f}%)" if gen and cpu else ""
    low, high = m["ops_per_second_min"], m["ops_per_second_max"]
    return (
        f"| {name} | {m['ops_per_second']:,.1f} ({low:,.0f}-{high:,.0f}) "
        f"| {_us(cpu)} | {m.get('server_cpu_cores')} | {gen} µs{share} "
        f"| {m['p50_us'] / 1000:.2f} / {m['p99_us'] / 1000:.2f} | {flags} | {m.get('reps')} |"
    )


HEADER = [
    "| measure | ops/s median (min-max) | server CPU / op | server cores | generator CPU / request "
    "(% of server's) | p50 / p99 ms | errors | reps |",
    "|---|---|---|---|---|---|---|---|",
]


def _generator_share(light: dict[str, Any]) -> tuple[float, str] | None:
    """The largest generator-CPU / server-CPU ratio over every measure with both figures."""
    worst: tuple[float, str] | None = None
    sections = [("openbao " + k, v) for k, v in (light.get("openbao") or {}).items() if isinstance(v, dict)]
    for dep, ops in (light.get("tether") or {}).items():
        if isinstance(ops, dict):
            sections += [(f"{dep} {k}", v) for k, v in ops.items() if isinstance(v, dict) and k != "egress"]
    for name, m in sections:
        gen, cpu = _num(m.get("generator_cpu_us_per_request")), _num(m.get("server_cpu_us_per_op"))
        if gen and cpu and (worst is None or gen / cpu > worst[0]):
            worst = (gen / cpu, name)
    return worst


def light_md(light: dict[str, Any]) -> list[str]:
    cfg = light.get("config", {})
    lines = [
        "## Light load generator (issue 13)",
        "",
        f"`python -m bench.light` — {cfg.get('generator')} ({cfg.get('wrk_threads')} thread), "
        f"{cfg.get('concurrency')} keep-alive connections, closed loop, {cfg.get('seconds')} s a run, "
        f"{cfg.get('reps')} runs per measure (median, min-max); Tether: {cfg.get('workers_note')}. "
        "Requests are built before the run; each Tether request carries its own DPoP proof, pre-signed "
        "with the SDK's signer and sent once. Server CPU = utime+stime of the server process and all "
        "its workers (/proc), between the moment every generator is ready and its exit; divided by "
        "the successful operations. Generator CPU is measured the same way (rusage), per request.",
        "",
    ]
    worst = _generator_share(light)
    if worst is not None:
        lines += [
            f"The generator's CPU is at most {100 * worst[0]:.1f}% of the server's CPU per operation "
            f"(worst case: {worst[1]}), so the figures are the server's, not the client's.",
            "",
        ]
    gens = light.get("generators") or {}
    if gens:
        lines += [
            "Which generator is lighter (same static loopback upstream, 16 connections):",
            "",
            "| generator | requests/s | CPU per request | cores |",
            "|---|---|---|---|",
        ]
        for name, g in gens.items():
            if "error" in g:
                lines.append(f"| {name} | {g['error']} | | |")
            else:
                lines.append(
                    f"| {name} | {g['ops_per_second']:,.0f} | {g['generator_cpu_us_per_request']} µs "
                    f"| {g['generator_cpu_cores']} |"
                )
        lines.append("")
    bao = light.get("openbao") or {}
    tether = light.get("tether") or {}
    lines += ["### Tether vs OpenBao (same run, alternating)", "", *HEADER]
    if "error" in bao and isinstance(bao.get("error"), str):
        lines.append(f"| OpenBao | {bao['error']} | | | | | | |")
    normal = tether.get("sqlite-normal") or {}
    one = _get(normal, "issue", "one_request")
    issue_label = {True: "one request", False: "two requests, combined"}.get(one, "one request if supported")
    for name, m in (
        ("B3 Tether activation (reveal), SQLite normal", normal.get("activate")),
        ("B3 OpenBao KV v2 read, token with num_uses (a write per use)", bao.get("kv_read_counted")),
        ("B3 OpenBao KV v2 read, plain token", bao.get("kv_read")),
        (f"B2 Tether issuance: task + grant ({issue_label}), SQLite normal", normal.get("issue")),
        ("B2 OpenBao child service token creation", bao.get("token_create")),
    ):
        lines.append(_measure_row(name, m))
    lines += [
        "",
        "OpenBao: raft storage, file audit device (no fsync), 16 tokens rotated per measure "
        "(counted tokens: num_uses 10,000,000, so none runs out). Tether: 16 grants rotated, 4 agents.",
        "",
        "### Tether by store",
        "",
        *HEADER,
    ]
    for dep in ("sqlite-normal", "sqlite-full", *PG_NAMES):
        section = tether.get(dep)
        if section is None:
            lines.append(f"| {dep} | not measured | | | | | | |")
            continue
        if "error" in section:
            lines.append(f"| {dep} | failed: {str(section['error'])[:160]} | | | | | | |")
            continue
        lines.append(_measure_row(f"{dep}: activation", section.get("activate")))
        issue = section.get("issue") or {}
        label = "one request" if issue.get("one_request") else "two requests, combined"
        lines.append(_measure_row(f"{dep}: issuance ({label})", issue))
    lines += [
        "",
        "PostgreSQL: 127.0.0.1:5432, a fresh schema per run (dropped after); 2 nodes = two `tether "
        "server` processes on one store, each given half the connections, CPU summed over both.",
        "",
        "### Egress added latency (one connection)",
        "",
        "| SQLite | direct p50 / p99 ms | via /v1/egress p50 / p99 ms | added p50 | via egress ops/s "
        "| server CPU / op |",
        "|---|---|---|---|---|---|",
    ]
    for dep in ("sqlite-normal", "sqlite-full"):
        eg = _get(tether, dep, "egress")
        if not eg:
            continue
        d, e = eg.get("direct") or {}, eg.get("egress") or {}
        if "error" in d or "error" in e:
            lines.append(f"| {dep} | {d.get('error', '')[:80]} | {e.get('error', '')[:80]} | | | |")
            continue
        lines.append(
            f"| {dep} | {d['latency_us']['p50'] / 1000:.3f} / {d['latency_us']['p99'] / 1000:.3f} "
            f"| {e['latency_us']['p50'] / 1000:.2f} / {e['latency_us']['p99'] / 1000:.2f} "
            f"| {_us(eg.get('added_p50_us'))} | {e['ops_per_second']:,.1f} "
            f"| {_us(e.get('server_cpu_us_per_op'))} |"
        )
    lines.append("")
    dec = light.get("decision")
    if dec:
        row = dec["policies_1000"]
        allow, whole = row["latency"]["activate allow"], row["latency"]["whole set, no index"]
        remembered = row["latency"].get("activate allow, remembered")
        lines += [
            "### Decision",
            "",
            f"At 1,000 policies ({row['evaluated']['activate allow']} evaluated for the request): "
            f"activate allow p50 {allow['p50_us']} µs, p99 {allow['p99_us']} µs (evaluated by Cedar every "
            f"time); whole set without the index p50 {whole['p50_us']} µs. cedarpy's floor (one trivial "
            f"policy, `is_authorized`): p50 {dec['cedarpy_floor']['p50_us']} µs."
            + (
                f" The broker decides with `remember=True`: an input identical to an earlier one is "
                f"answered from the policy set's memory of its own answers, p50 {remembered['p50_us']} µs."
                if remembered
                else ""
            ),
            "",
        ]
    prof = light.get("profile")
    if prof and "self" in prof:
        lines += profile_md(prof)
    return lines


def profile_md(prof: dict[str, Any], top: int = 15) -> list[str]:
    # Frames on every sample (runpy, the worker's main, the event loop's run) say nothing: skip them.
    ceiling = max((r["percent"] for r in prof["inclusive"]), default=0) - 0.5
    inclusive = [r for r in prof["inclusive"] if r["percent"] < ceiling]
    lines = [
        "### Profile: Tether server under 16-concurrent activation (py-spy, on-CPU samples)",
        "",
        f"{prof['how']}; {prof['samples']} samples over the server and its workers; "
        f"{prof.get('ops_per_second_while_sampled')} activations/s and "
        f"{_us(_num(prof.get('server_cpu_us_per_op_while_sampled')))} server CPU each while sampled. "
        "Self time in `Runner.run` is C code under the event loop (uvloop, httptools) with no Python "
        "frame of its own. Raw stacks (for flame graphs): " + f"`{prof.get('raw_stacks')}`.",
        "",
        "| self % | frame | | inclusive % | frame | | inclusive % | Tether frame |",
        "|---|---|---|---|---|---|---|---|",
    ]
    tether = [r for r in prof["inclusive_tether"] if r["percent"] < ceiling]
    for i in range(top):
        cells = []
        for rows in (prof["self"], inclusive, tether):
            r = rows[i] if i < len(rows) else None
            cells.append(f"{r['percent']} | {r['function']}" if r else " | ")
        lines.append("| " + " | | ".join(cells) + " |")
    return [*lines, ""]


def done_means_md(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Done means (issue 13)",
        "",
        "| target | figure | verdict | note |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['target']} | {row['figure']} | {verdict(row)} | {row['note']} |")
    return [*lines, ""]
