"""Policy decision benchmark: latency p50/p99 at 10, 100 and 1000 policies.

Run: ``python -m bench.policy_bench [--iterations N]``. Prints a table and writes
bench/results/policy.json.

Each set is what a growing deployment looks like: a few policies that apply broadly (base
permits, a restricted-needs-approval rule, a depth forbid) and many that do not apply to the
measured request: per-secret pins (``resource == Secret::"..."``) for other secrets, tool policies,
open_task and delegate rules by team. Measured requests:

- activate allow: an activation of a secret with its own pinned policy (one Cedar call);
- open_task allow: opening a task (one Cedar call);
- activate approval: a restricted secret without approval, so the derived-approval rule
  evaluates twice and answers ``missing=("approval",)``;
- whole set, no index: the activate allow request handed to Cedar with every policy (a
  pre-parsed handle, pre-parsed entities), for comparison with the indexed subset.

A decision's floor is cedarpy's per-call cost (context JSON, schema check of the request,
result JSON), roughly 100-130 µs on its own here; the index keeps the rest flat as sets grow.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cedarpy

from tether.policy import SCHEMA_TEXT, DecisionRequest, Entity, compile_policy_set
from tether.policy.request import to_cedar_value

RESULTS = Path(__file__).parent / "results" / "policy.json"
SIZES = (10, 100, 1000)
TEAMS = ("platform", "data", "sre", "payments", "ml", "web")

BROAD = """
@id("base-activate") permit(principal, action in [Action::"issue", Action::"activate"], resource is Secret)
  when { resource.purposes.contains(context.task.purpose) && resource.sensitivity < 3
         && context.task.secrets.contains(resource.path) };
@id("restricted-needs-approval") permit(principal, action == Action::"activate", resource is Secret)
  when { resource.sensitivity == 3 && context.approval && context.task.purpose == "incident"
         && context.task.depth == 0 };
@id("open-prod") permit(principal, action == Action::"open_task", resource)
  when { principal.environment == "prod" && context.task.remaining_seconds <= 3600 };
@id("no-deep-delegation") forbid(principal, action, resource) when { context.task.depth > 3 };
"""


def policy_text(size: int) -> str:
    """A set of ``size`` policies: the broad few, then filler that does not apply to the measured requests."""
    parts = [BROAD.strip()]
    count = 4
    i = 0
    while count < size - 1:  # the last slot is the measured secret's own pin
        team = TEAMS[i % len(TEAMS)]
        kind = i % 5
        if kind in (0, 1):
            parts.append(
                f'@id("pin-{i}") permit(principal, action == Action::"activate", '
                f'resource == Secret::"{team}/service-{i}/token") '
                f'when {{ principal.team == "{team}" && context.mode == "inject" '
                f'&& context.destination == "dest-{i}" }};'
            )
        elif kind == 2:
            parts.append(
                f'@id("tool-{i}") permit(principal, action == Action::"call_tool", resource is Tool) '
                f'when {{ resource.server == "mcp-{i}" && principal.team == "{team}" }};'
            )
        elif kind == 3:
            parts.append(
                f'@id("delegate-{i}") permit(principal, action == Action::"delegate", resource) '
                f'when {{ principal.team == "{team}" && resource.team == "{team}" '
                "&& context.task.depth < 2 };"
            )
        else:
            parts.append(
                f'@id("dest-{i}") forbid(principal, action == Action::"activate", '
                f'resource == Destination::"dest-{i}") unless {{ context.request.method == "GET" }};'
            )
        count += 1
        i += 1
    parts.append(
        '@id("pin-release") permit(principal, action == Action::"activate", '
        'resource == Secret::"platform/release/token") when { principal.team == "platform" };'
    )
    return "\n".join(parts[: size + 1]) + "\n"


AGENT = Entity(
    "Agent",
    "spiffe://acme.test/agent/release-bot",
    {"team": "platform", "environment": "prod", "owner": "ops", "labels": ["ci"]},
)


def secret(path: str, sensitivity: int) -> Entity:
    return Entity(
        "Secret",
        path,
        {
            "path": path,
            "sensitivity": sensitivity,
            "purposes": ["deploy", "incident"],
            "destinations": ["github"],
            "owner": "ops",
        },
    )


def context(purpose: str, secrets: list[str]) -> dict[str, Any]:
    return {
        "task": {
            "id": "tsk_1",
            "purpose": purpose,
            "objective_sha256": "0" * 64,
            "sensitivity": 2,
            "secrets": secrets,
            "destinations": ["github"],
            "tools": [],
            "depth": 0,
            "chain": [],
            "age_seconds": 12,
            "remaining_seconds": 900,
        },
        "approval": False,
        "mode": "inject",
        "destination": "github",
        "request": {"method": "POST", "path": "/repos/acme/app/releases"},
        "uses": 3,
    }


def measure(fn: Callable[[], object], iterations: int) -> dict[str, float]:
    for _ in range(min(200, iterations)):
        fn()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return {
        "p50_us": round(samples[len(samples) // 2] / 1000, 1),
        "p99_us": round(samples[int(len(samples) * 0.99)] / 1000, 1),
        "mean_us": round(statistics.fmean(samples) / 1000, 1),
    }


def run(size: int, iterations: int) -> dict[str, Any]:
    text = policy_text(size)
    start = time.perf_counter()
    compiled = compile_policy_set(text)
    compile_ms = (time.perf_counter() - start) * 1000
    assert len(compiled.policy_ids) == size, (len(compiled.policy_ids), size)

    release = secret("platform/release/token", 2)
    pager = secret("sre/pagerduty/key", 3)
    activate_allow = DecisionRequest(
        AGENT, "activate", release, context("deploy", ["platform/release/token"])
    )
    open_task = DecisionRequest(AGENT, "open_task", AGENT, context("deploy", []))
    activate_approval = DecisionRequest(AGENT, "activate", pager, context("incident", ["sre/pagerduty/key"]))
    # Sanity: the measured decisions are the intended ones.
    assert compiled.decide(activate_allow).allowed
    assert compiled.decide(open_task).allowed
    assert compiled.decide(activate_approval).missing == ("approval",)

    whole = cedarpy.PolicySet.from_str(text)
    schema = cedarpy.Schema.from_str(SCHEMA_TEXT)
    raw_request = {
        "principal": {"type": "Agent", "id": AGENT.id},
        "action": {"type": "Action", "id": "activate"},
        "resource": {"type": "Secret", "id": release.id},
        "context": to_cedar_value(activate_allow.context),
    }
    # Same footing as the indexed path: entities pre-parsed once, schema as a handle.
    raw_entities = cedarpy.Entities.from_json_str(json.dumps([AGENT.to_cedar(), release.to_cedar()]), schema)

    def whole_set() -> object:
        result = cedarpy.is_authorized(raw_request, whole, raw_entities, schema=schema)
        assert result.allowed
        return result

    return {
        "policies": size,
        "compile_ms": round(compile_ms, 1),
        "evaluated": {
            "activate allow": len(compiled.applicable("activate", "Secret", release.id)),
            "open_task allow": len(compiled.applicable("open_task", "Agent", AGENT.id)),
            "activate approval": len(compiled.applicable("activate", "Secret", pager.id)),
            "whole set, no index": size,
            "activate allow, context validated": len(compiled.applicable("activate", "Secret", release.id)),
            "activate allow, remembered": len(compiled.applicable("activate", "Secret", release.id)),
        },
        "latency": {
            # As the broker decides: contexts it built itself are not validated again by Cedar.
            "activate allow": measure(
                lambda: compiled.decide(activate_allow, trusted_context=True), iterations
            ),
            "open_task allow": measure(lambda: compiled.decide(open_task, trusted_context=True), iterations),
            "activate approval": measure(
                lambda: compiled.decide(activate_approval, trusted_context=True), iterations
            ),
            "activate allow, context validated": measure(lambda: compiled.decide(activate_allow), iterations),
            # The broker decides with remember=True: the same input again is answered from the
            # set's memory of its own answers (the rows above always evaluate).
            "activate allow, remembered": measure(
                lambda: compiled.decide(activate_allow, trusted_context=True, remember=True), iterations
            ),
            "whole set, no index": measure(whole_set, iterations),
        },
    }


def cedar_floor(iterations: int) -> dict[str, Any]:
    """cedarpy's own cost per call: a trivial one-policy ``is_authorized`` (no schema, no entities,
    an empty context), pre-parsed policy set. No decision through cedarpy can be cheaper."""
    trivial = cedarpy.PolicySet.from_str("permit(principal, action, resource);")
    request = {
        "principal": {"type": "Agent", "id": "a"},
        "action": {"type": "Action", "id": "activate"},
        "resource": {"type": "Secret", "id": "s"},
        "context": {},
    }

    def call() -> object:
        result = cedarpy.is_authorized(request, trivial, [])
        assert result.allowed
        return result

    return {"what": "cedarpy.is_authorized, 1 trivial policy, pre-parsed set", **measure(call, iterations)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=5000)
    args = parser.parse_args(argv)
    rows = [run(size, args.iterations) for size in SIZES]
    report = {
        "benchmark": "policy decision latency",
        "iterations": args.iterations,
        "python": sys.version.split()[0],
        "cedarpy": getattr(cedarpy, "__version__", None) or _version(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "bar": "p50 <= 100 us at 1000 policies (issue 8)",
        "results": rows,
        "cedarpy_floor": cedar_floor(args.iterations),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'policies':>8}  {'request':<20} {'evaluated':>9} {'p50 µs':>9} {'p99 µs':>9}")
    for row in rows:
        for name, figures in row["latency"].items():
            print(
                f"{row['policies']:>8}  {name:<20} {row['evaluated'][name]:>9} "
                f"{figures['p50_us']:>9} {figures['p99_us']:>9}"
            )
        print(f"{row['policies']:>8}  compile {row['compile_ms']} ms")
    print(f"cedarpy floor (1 trivial policy, is_authorized): p50 {report['cedarpy_floor']['p50_us']} µs")
    print(f"wrote {RESULTS}")
    return report


def _version() -> str | None:
    from importlib.metadata import version

    try:
        return version("cedarpy")
    except Exception:
        return None


if __name__ == "__main__":
    main()
