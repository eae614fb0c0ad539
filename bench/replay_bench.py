"""Policy replay benchmark: 100,000 recorded decisions re-decided with a candidate policy set.

Run: ``python -m bench.replay_bench [--decisions 100000] [--policies 200] [--reps 3] [--skip-store]``.
Prints a table, writes bench/results/replay.json and the "Policy replay" section of
bench/results/latest.md (between its markers). Issue 16's goal: replay at ≥ 20,000 decisions/s.

The decisions are what a deployment records: 200 agents (10 teams, 3 environments, labels), 1,000
secrets and the 200-policy set of ``bench.reach_bench`` (the example set plus per-team permits,
pins, environment forbids, approvals, a ``remaining_seconds`` condition on issuance). Tasks of
random agents and purposes each record one ``open_task``, two ``issue`` decisions and activations
of one grant with growing ``uses`` and ``age_seconds``; a task's contexts are built by the broker's
own ``decision_context`` and decided by the deployed set (version 1) to get what was recorded.

Measured (median of ``--reps``):

* *one by one*: ``CompiledPolicySet.decide`` per decision (what the engine did before: the baseline),
  over the first 5,000 decisions;
* *engine*: ``tether.reach.replay.replay`` over all of them (dedupe on the context the policies read,
  cedarpy batch calls, chunked), with a candidate (the set without two of its permits) and with the
  recorded version (the self-check, which must reproduce every decision);
* *end to end* (unless ``--skip-store``): the same decisions recorded as audit events with their
  inputs (snapshots by hash) in a SQLite node, then ``PolicyReplayService.replay`` — what
  ``POST /v1/policies/replay`` runs: count, read and parse the window's events and snapshots, replay.

A benchmark measures and reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.reach_bench import DESTINATIONS, ENVIRONMENTS, LABELS, PURPOSES, TEAMS, policy_text, secret_path
from tether.domain.decision import Decision
from tether.domain.inputs import SnapshotMemo, decision_inputs
from tether.domain.tasks import Intent, Task, decision_context, new_id
from tether.policy import CompiledPolicySet, DecisionRequest, Entity, compile_policy_set
from tether.reach.replay import RecordedDecision, replay

RESULTS = Path(__file__).parent / "results" / "replay.json"
LATEST = Path(__file__).parent / "results" / "latest.md"
BEGIN, END = "<!-- replay-bench:begin -->", "<!-- replay-bench:end -->"
GOAL_PER_SECOND = 20_000
AGENTS = 200
SECRETS = 1000
ONE_BY_ONE = 5000
NOW = datetime.now(UTC).replace(microsecond=0)
#: Permits the candidate drops (so that it changes something).
DROPPED = ("use-secret-within-intent", "team-0")


def _agent(i: int, rng: random.Random) -> Entity:
    return Entity(
        "Agent",
        f"spiffe://tether.local/agent/agent-{i:04d}",
        {
            "team": TEAMS[rng.randrange(len(TEAMS))],
            "environment": ENVIRONMENTS[rng.randrange(len(ENVIRONMENTS))],
            "owner": f"person-{rng.randrange(100):03d}",
            "labels": sorted(label for label in LABELS if rng.random() < 0.4),
        },
    )


def _secret(i: int, rng: random.Random) -> Entity:
    return Entity(
        "Secret",
        secret_path(i),
        {
            "path": secret_path(i),
            "sensitivity": rng.randrange(4),
            "purposes": sorted(rng.sample(PURPOSES, rng.randint(1, 3))),
            "destinations": sorted(
                f"dest-{d:02d}" for d in rng.sample(range(DESTINATIONS), rng.randint(1, 2))
            ),
            "owner": TEAMS[i % len(TEAMS)],
        },
    )


def _without(text: str, policy_ids: tuple[str, ...]) -> str:
    for policy_id in policy_ids:
        start = text.index(f'@id("{policy_id}")')
        end = text.index("};", start) + 2
        text = text[:start] + text[end:]
    return text


def requests(count: int, rng: random.Random) -> list[tuple[str, DecisionRequest, str]]:
    """``count`` decisions as the broker asks them: (kind of event, request, task id)."""
    agents = [_agent(i, rng) for i in range(AGENTS)]
    secrets = [_secret(i, rng) for i in range(SECRETS)]
    asked: list[tuple[str, DecisionRequest, str]] = []
    while len(asked) < count:
        agent, secret = rng.choice(agents), rng.choice(secrets)
        destination = rng.choice(secret.attributes["destinations"])
        created = NOW - timedelta(seconds=rng.randrange(3600, 6 * 86400))
        task = Task(
            id=new_id("tsk"),
            agent_id=agent.id,
            intent=Intent(
                purpose=rng.choice([*secret.attributes["purposes"], rng.choice(PURPOSES)]),
                objective="replay bench",
                sensitivity=rng.randrange(4),
                secrets=frozenset({secret.id}),
                destinations=frozenset({destination}),
            ),
            status="active",
            created_at=created,
            expires_at=created + timedelta(seconds=rng.choice((600, 900, 3600))),
        )
        at = created + timedelta(seconds=1)
        opening = DecisionRequest(agent, "open_task", agent, decision_context(task, at))
        asked.append(("task.open", opening, task.id))
        mode = rng.choice(("inject", "inject", "inject", "reveal"))
        for _ in range(2):
            context = decision_context(
                task, at, mode=mode, destination=destination, method="POST", path="/v1/tasks"
            )
            asked.append(("grant.issue", DecisionRequest(agent, "issue", secret, context), task.id))
        for use in range(rng.randint(2, 12)):
            at += timedelta(seconds=rng.randint(1, 30))
            context = decision_context(
                task, at, mode=mode, destination=destination, method="GET", path="/repos", uses=use
            )
            asked.append(("grant.activate", DecisionRequest(agent, "activate", secret, context), task.id))
    return asked[:count]


def recorded(
    asked: list[tuple[str, DecisionRequest, str]], compiled: CompiledPolicySet
) -> list[RecordedDecision]:
    """What the broker recorded: each decided on its own, as ``DecisionPoint.decide`` does."""
    decided = [compiled.decide(request, trusted_context=True) for _, request, _ in asked]
    return [
        RecordedDecision(
            str(n), NOW, r.principal, r.action, r.resource, r.context, d.allowed, d.policies, policy_version=1
        )
        for n, ((_, r, _), d) in enumerate(zip(asked, decided, strict=True))
    ]


def _rate(count: int, samples: list[float]) -> dict[str, float]:
    median = statistics.median(samples)
    return {
        "median_s": round(median, 3),
        "min_s": round(min(samples), 3),
        "per_second": round(count / median),
    }


async def _store(
    asked: list[tuple[str, DecisionRequest, str]],
    decided: list[Decision],
    candidate_text: str,
    text: str,
    reps: int,
) -> dict[str, Any]:
    """Record the decisions as audit events with their inputs in a SQLite node; time the service."""
    from tether.broker import Broker
    from tether.broker.policy_replay import PolicyReplayService
    from tether.config import Settings
    from tether.domain.events import Actor, DecisionSummary
    from tether.store.base import PutSnapshots

    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker.from_settings(Settings(data_dir=Path(tmp), sqlite_synchronous="normal"))
        root = (await broker.init()).root
        try:
            await broker.policies.deploy(root, text)
            memo = SnapshotMemo()
            started = time.perf_counter()
            for start in range(0, len(asked), 2000):
                pending = []
                for (kind, request, task_id), decision in zip(
                    asked[start : start + 2000], decided[start : start + 2000], strict=True
                ):
                    principal, resource = request.principal, request.resource
                    inputs = decision_inputs(
                        memo,
                        request.action,
                        (principal.type, principal.id, principal.attributes),
                        (resource.type, resource.id, resource.attributes),
                        request.context,
                        1,
                    )
                    effects = (
                        (PutSnapshots(tuple((s.hash, s.kind, s.body) for s in inputs.snapshots)),)
                        if inputs.snapshots
                        else ()
                    )
                    memo.stored(inputs.snapshots)
                    pending.append(
                        broker.audit.record(
                            kind if decision.allowed else "decision",
                            Actor.agent(principal.id),
                            resource=f"{resource.type.lower()}:{resource.id}",
                            task_id=task_id,
                            decision=DecisionSummary(decision.allowed, decision.policies, decision.missing),
                            data=inputs.event_data(),
                            effects=effects,
                        )
                    )
                await asyncio.gather(*pending)
            written = time.perf_counter() - started
            service = PolicyReplayService(
                broker.storage, broker.audit, broker.clock, broker.settings, broker.policies
            )
            candidate, verify = [], []
            answer = None
            for _ in range(reps):
                t = time.perf_counter()
                answer = await service.replay(root, candidate_text, "30d")
                candidate.append(time.perf_counter() - t)
            for _ in range(reps):
                t = time.perf_counter()
                checked = await service.replay(root, None, "30d", verify=True)
                verify.append(time.perf_counter() - t)
            assert answer is not None
            return {
                "events_written_s": round(written, 1),
                "events": answer.events,
                "candidate": _rate(answer.events, candidate),
                "verify": _rate(answer.events, verify),
                "reproduced": checked.reproduced,
                "not_replayable": sum(checked.not_replayable.values()),
            }
        finally:
            await broker.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    text = policy_text(args.policies, SECRETS, rng)
    compiled = compile_policy_set(text)
    candidate_text = _without(text, DROPPED)
    candidate = compile_policy_set(candidate_text)
    asked = requests(args.decisions, rng)
    decisions = recorded(asked, compiled)
    load = os.getloadavg()[0]
    sample = decisions[:ONE_BY_ONE]
    one = []
    for _ in range(args.reps):
        t = time.perf_counter()
        for d in sample:
            compiled.decide(d.request(), trusted_context=True)
        one.append(time.perf_counter() - t)
    engine, verify = [], []
    report = checked = None
    for _ in range(args.reps):
        fresh = compile_policy_set(candidate_text)  # nothing remembered between runs
        t = time.perf_counter()
        report = replay(fresh, decisions)
        engine.append(time.perf_counter() - t)
    for _ in range(args.reps):
        fresh = compile_policy_set(text)
        t = time.perf_counter()
        checked = replay(None, decisions, versions={1: fresh})
        verify.append(time.perf_counter() - t)
    assert report is not None
    assert checked is not None
    kinds: dict[str, int] = {}
    for kind, _, _ in asked:
        kinds[kind] = kinds.get(kind, 0) + 1
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "decisions": len(decisions),
        "kinds": kinds,
        "allowed": sum(d.allowed for d in decisions),
        "policies": compiled.text.count("@id("),
        "agents": AGENTS,
        "secrets": SECRETS,
        "dropped": list(DROPPED),
        "reps": args.reps,
        "one_by_one": _rate(len(sample), one),
        "engine_candidate": _rate(len(decisions), engine),
        "engine_verify": _rate(len(decisions), verify),
        "changed": report.changed,
        "counts": dict(report.counts),
        "reproduced": checked.reproduced,
        "goal_per_second": GOAL_PER_SECOND,
        "load_average_1m": round(load, 2),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cedarpy": metadata.version("cedarpy"),
    }
    del candidate
    if not args.skip_store:
        decided = [Decision(d.allowed, d.policies) for d in decisions]
        results["store"] = asyncio.run(_store(asked, decided, candidate_text, text, args.reps))
    return results


def markdown(results: dict[str, Any]) -> str:
    """The "Policy replay" section of latest.md, between its markers."""
    engine = results["engine_candidate"]["per_second"]
    verdict = "PASS" if engine >= results["goal_per_second"] else "MISS"
    kinds = ", ".join(f"{n:,} {kind}" for kind, n in sorted(results["kinds"].items()))
    counts = results["counts"]
    self_check = "every decision reproduced" if results["reproduced"] else "NOT reproduced"
    lines = [
        BEGIN,
        "## Policy replay (issue 16)",
        "",
        f"`python -m bench.replay_bench --decisions {results['decisions']} --policies {results['policies']}` "
        f"({results['when']}, replay.json): {results['decisions']:,} recorded decisions ({kinds}; "
        f"{results['allowed']:,} allowed) of {results['agents']} agents on {results['secrets']:,} secrets "
        f"under a {results['policies']}-policy set, replayed with a candidate that drops "
        f"{', '.join(results['dropped'])} ({results['changed']:,} decisions change: "
        f"{counts['allowed->denied']:,} allowed → denied, {counts['denied->allowed']:,} "
        f"denied → allowed, {counts['policies-changed']:,} by other policies) and with the "
        f"recorded version (self-check: {self_check}). "
        f"Median of {results['reps']} runs:",
        "",
        "| | seconds | decisions/s |",
        "|---|---|---|",
        f"| one by one (`CompiledPolicySet.decide`, first {ONE_BY_ONE:,}; the engine before) | "
        f"{results['one_by_one']['median_s']} | {results['one_by_one']['per_second']:,} |",
        "| replay engine, candidate (entities' pruning, dedupe, cedarpy batches) | "
        f"{results['engine_candidate']['median_s']} | {engine:,} |",
        f"| replay engine, self-check (recorded version) | {results['engine_verify']['median_s']} | "
        f"{results['engine_verify']['per_second']:,} |",
    ]
    store = results.get("store")
    if store:
        lines += [
            f"| end to end, candidate (`PolicyReplayService.replay` on SQLite: count, read and parse "
            f"{store['events']:,} events and their snapshots, replay) | {store['candidate']['median_s']} | "
            f"{store['candidate']['per_second']:,} |",
            f"| end to end, `verify` (reproduced: {store['reproduced']}) | {store['verify']['median_s']} | "
            f"{store['verify']['per_second']:,} |",
        ]
    lines += [
        "",
        "What bounds it: after pruning and dedupe, almost every request left to decide is the only one "
        "of its (agent, secret) pair, so cedarpy's batches hold one request each and Cedar's own time "
        "per request remains (on this host about 40 µs to read the context plus a few µs per policy "
        "left). A denial is asked again with an approval only where that can change the answer (no "
        "held forbid that ignores `context.approval`, and a permit left that reads it or a forbid that "
        "held and reads it).",
        "",
        f"Goal (issue 16): replay at ≥ {results['goal_per_second']:,} decisions/s: {engine:,}/s (engine), "
        f"{verdict}" + (f"; end to end {store['candidate']['per_second']:,}/s." if store else "."),
        "",
        f"Python {results['python']} on {results['machine']}; cedarpy {results['cedarpy']}; load average "
        f"{results['load_average_1m']} on {results['cpus']} CPUs when the timed runs began (the machine "
        "shared with other work: figures scale with it).",
        END,
    ]
    return "\n".join(lines)


def write_latest(section: str) -> None:
    """Replace this benchmark's section of latest.md (or append it); the rest is left as it is."""
    text = LATEST.read_text(encoding="utf-8") if LATEST.exists() else "# Tether benchmarks: latest run\n"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        text = before + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    LATEST.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--skip-store", action="store_true", help="time the engine only (no SQLite node)")
    parser.add_argument("--no-write", action="store_true", help="print only; write neither file")
    args = parser.parse_args(argv)
    if min(args.decisions, args.policies, args.reps) < 1:
        parser.error("--decisions, --policies and --reps must be at least 1")
    results = run(args)
    if not args.no_write:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        write_latest(markdown(results))
    print(markdown(results).replace(BEGIN + "\n", "").replace("\n" + END, ""))
    return results


if __name__ == "__main__":
    main()
