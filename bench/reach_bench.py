"""Reach benchmark: who could reach one secret, with 1,000 agents, 1,000 secrets and 200 policies.

Run: ``python -m bench.reach_bench [--agents 1000] [--secrets 1000] [--policies 200] [--reps 3]``.
Prints a table, writes bench/results/reach.json and the "Reach" section of bench/results/latest.md
(between its markers; ``bench.compare`` keeps it). Issue 16's goal: reach of a secret under 1 s.

A real node (``Broker``) on SQLite (a temporary file, ``synchronous=normal`` to seed faster) holds
the agents, secrets, 20 destinations and the policy set; the measured call is what
``GET /v1/reach/secrets/{path}`` runs: ``ReachService.of_secret`` (read every agent, every
destination and what is live, group the agents, decide the whole grid through Cedar). Also timed:
the pure part alone (``group_agents`` + ``compute_reach``) and reach of one agent over every secret
(``of_agent``).

The data is what a growing deployment looks like, drawn from a fixed seed: agents on 10 teams, in
3 environments, with labels from {deploy, incident, report, oncall} and 100 owners; secrets owned
by teams, of each sensitivity, serving 1-3 purposes and reaching 1-2 destinations. The policy set
is the example set (examples/policies/tether.cedar) and, up to the size asked, policies that read
what such sets read: per-team permits on the team's secrets, per-secret pins to a destination and a
mode, environment forbids, on-call permits that need an approval, short-lived-task permits (a
residual on ``context.task.remaining_seconds``), and open_task, delegate and call_tool policies
that reach does not evaluate. The measured secret is one the team permits, a pin and an
environment forbid all apply to. A benchmark measures and reports; it asserts nothing.
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
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tether.broker import Broker
from tether.broker._decisions import agent_entity
from tether.broker.reach import ReachService
from tether.config import Settings
from tether.domain.agents import AgentAttributes
from tether.domain.destinations import Injection, InjectionType
from tether.domain.operators import OperatorRecord
from tether.domain.secrets import SecretMetadata, Sensitivity
from tether.reach import compute_reach, group_agents
from tether.reach.compute import _EVALUATORS

RESULTS = Path(__file__).parent / "results" / "reach.json"
LATEST = Path(__file__).parent / "results" / "latest.md"
BEGIN, END = "<!-- reach-bench:begin -->", "<!-- reach-bench:end -->"
EXAMPLE_POLICIES = Path(__file__).resolve().parents[1] / "examples" / "policies" / "tether.cedar"
GOAL_SECONDS = 1.0
TEAMS = ("platform", "data", "sre", "payments", "ml", "web", "mobile", "search", "billing", "identity")
ENVIRONMENTS = ("prod", "staging", "dev")
LABELS = ("deploy", "incident", "report", "oncall")
PURPOSES = ("deploy", "incident", "maintenance", "report", "research", "support", "testing")
DESTINATIONS = 20


def secret_path(i: int) -> str:
    return f"{TEAMS[i % len(TEAMS)]}/service-{i:04d}/token"


def policy_text(size: int, secrets: int, rng: random.Random) -> str:
    """The example set, then generated policies up to ``size`` (see the module docstring)."""
    parts = [EXAMPLE_POLICIES.read_text(encoding="utf-8")]
    count = parts[0].count("@id(")
    i = 0
    while count < size:
        team = TEAMS[i % len(TEAMS)]
        kind = i % 8
        if kind == 0:
            parts.append(
                f'@id("team-{i}") permit(principal, action in [Action::"issue", Action::"activate"], '
                f'resource is Secret) when {{ principal.team == "{team}" && resource.owner == "{team}" '
                "&& resource.purposes.contains(context.task.purpose) "
                '&& resource.destinations.contains(context.destination) && context.mode == "inject" };'
            )
        elif kind == 1:
            target = rng.randrange(secrets)
            parts.append(
                f'@id("pin-{i}") permit(principal, action == Action::"activate", '
                f'resource == Secret::"{secret_path(target)}") when {{ principal.team == "{team}" '
                f'&& context.mode == "inject" && context.destination == "dest-{i % DESTINATIONS:02d}" }};'
            )
        elif kind == 2:
            parts.append(
                f'@id("no-dev-{i}") forbid(principal, action in [Action::"issue", Action::"activate"], '
                f'resource is Secret) when {{ principal.environment == "dev" && resource.owner == "{team}" '
                "&& resource.sensitivity >= 2 };"
            )
        elif kind == 3:
            parts.append(
                f'@id("oncall-{i}") permit(principal, action == Action::"activate", resource is Secret) '
                f'when {{ principal.labels.contains("oncall") && resource.owner == "{team}" '
                '&& context.approval && context.task.purpose == "incident" && context.task.depth <= 1 };'
            )
        elif kind == 4:
            parts.append(
                f'@id("short-lived-{i}") permit(principal, action == Action::"issue", resource is Secret) '
                f'when {{ principal.team == "{team}" && resource.owner == "{team}" '
                '&& context.task.purpose == "maintenance" && context.task.remaining_seconds <= 900 };'
            )
        elif kind == 5:
            parts.append(
                f'@id("open-{i}") permit(principal, action == Action::"open_task", resource) '
                f'when {{ principal.team == "{team}" && principal.labels.contains(context.task.purpose) }};'
            )
        elif kind == 6:
            parts.append(
                f'@id("delegate-{i}") permit(principal, action == Action::"delegate", resource) '
                f'when {{ principal.team == "{team}" && resource.team == "{team}" '
                "&& context.task.depth < 2 };"
            )
        else:
            parts.append(
                f'@id("tool-{i}") permit(principal, action == Action::"call_tool", resource is Tool) '
                f'when {{ resource.server == "mcp-{i}" && principal.team == "{team}" }};'
            )
        count += 1
        i += 1
    return "\n".join(parts)


async def seed(broker: Broker, root: OperatorRecord, args: argparse.Namespace, rng: random.Random) -> str:
    """Agents, secrets, destinations and the policy set; returns the measured secret's path."""
    for i in range(args.secrets):
        team = TEAMS[i % len(TEAMS)]
        await broker.secrets.put(
            root,
            secret_path(i),
            f"bench-value-{i}",
            SecretMetadata(
                sensitivity=Sensitivity(rng.randrange(4)),
                purposes=frozenset(rng.sample(PURPOSES, rng.randint(1, 3))),
                destinations=frozenset(
                    f"dest-{d:02d}" for d in rng.sample(range(DESTINATIONS), rng.randint(1, 2))
                ),
                owner=team,
            ),
        )
    # The measured secret: the platform team's, confidential (environment forbids apply), for deploy
    # and incident, towards two destinations (one a pin names).
    measured = "platform/reach-bench/token"
    await broker.secrets.put(
        root,
        measured,
        "bench-value-measured",
        SecretMetadata(
            sensitivity=Sensitivity.CONFIDENTIAL,
            purposes=frozenset({"deploy", "incident"}),
            destinations=frozenset({"dest-00", "dest-08"}),
            owner="platform",
        ),
    )
    for d in range(DESTINATIONS):
        await broker.destinations.add(
            root,
            name=f"dest-{d:02d}",
            base_url=f"http://127.0.0.1:9/dest-{d:02d}",
            secret=measured if d in (0, 8) else secret_path(d),
            inject=Injection(InjectionType.HEADER, "Authorization", "Bearer {secret}"),
        )
    for i in range(args.agents):
        labels = frozenset(label for label in LABELS if rng.random() < 0.3)
        await broker.agents.register(
            root,
            f"agent-{i:04d}",
            None,
            AgentAttributes(
                team=TEAMS[rng.randrange(len(TEAMS))],
                environment=ENVIRONMENTS[rng.randrange(len(ENVIRONMENTS))],
                owner=f"person-{rng.randrange(100):03d}",
                labels=labels,
            ),
        )
    text = policy_text(args.policies - 1, args.secrets, rng)
    # One pin on the measured secret, so a pin applies to it too.
    text += (
        '\n@id("pin-measured") permit(principal, action == Action::"activate", '
        f'resource == Secret::"{measured}") when {{ principal.team == "sre" && context.mode == "inject" '
        '&& context.destination == "dest-08" };'
    )
    await broker.policies.deploy(root, text)
    return measured


def _timed(samples: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(samples), 4), "min_s": round(min(samples), 4)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker.from_settings(Settings(data_dir=Path(tmp), sqlite_synchronous="normal"))
        root = (await broker.init()).root
        try:
            started = time.perf_counter()
            measured = await seed(broker, root, args, rng)
            seeded = time.perf_counter() - started
            service = ReachService(
                broker.storage, broker.audit, broker.clock, broker.settings, broker.policies, broker.engines
            )
            compiled = await broker.policies.active()
            assert compiled is not None
            load = os.getloadavg()[0]
            cold, of_secret = [], []
            for _ in range(args.reps):
                _EVALUATORS.clear()  # as after a deploy: the policy set's evaluator starts empty
                t = time.perf_counter()
                report = await service.of_secret(root, measured)
                cold.append(time.perf_counter() - t)
            for _ in range(args.reps):
                t = time.perf_counter()
                report = await service.of_secret(root, measured)
                of_secret.append(time.perf_counter() - t)
            agents, _ = await service._agents()
            record = await broker.storage.get_secret(measured)
            assert record is not None
            target = service._target(record)
            grid = service._grid(await broker.storage.list_destinations())
            pure, groups = [], []
            for _ in range(args.reps):
                t = time.perf_counter()
                groups = group_agents(compiled, [(a.name, agent_entity(a)) for a in agents])
                compute_reach(compiled, groups, [target], grid)
                pure.append(time.perf_counter() - t)
            of_agent = []
            if not args.skip_agent:
                for _ in range(args.agent_reps):
                    t = time.perf_counter()
                    agent_report = await service.of_agent(root, "agent-0000")
                    of_agent.append(time.perf_counter() - t)
            reaching = {name for rule in report.rules for name in rule.agents}
            results: dict[str, Any] = {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "agents": args.agents,
                "secrets": args.secrets + 1,
                "policies": compiled.text.count("@id("),
                "destinations": DESTINATIONS,
                "grid_points": grid.size(),
                "groups": len(groups),
                "rules": len(report.rules),
                "agents_reaching": len(reaching),
                "seed_s": round(seeded, 1),
                "reps": args.reps,
                "of_secret_cold": _timed(cold),
                "of_secret": _timed(of_secret),
                "compute_only": _timed(pure),
                "goal_s": GOAL_SECONDS,
                "load_average_1m": round(load, 2),
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "machine": platform.machine(),
                "cedarpy": metadata.version("cedarpy"),
            }
            if of_agent:
                results["of_agent"] = _timed(of_agent)
                results["of_agent_rules"] = len(agent_report.rules)
                results["of_agent_reps"] = args.agent_reps
            return results
        finally:
            await broker.close()


def markdown(results: dict[str, Any]) -> str:
    """The "Reach" section of latest.md, between its markers."""
    secret = results["of_secret"]["median_s"]
    cold = results["of_secret_cold"]["median_s"]
    verdict = "PASS" if max(secret, cold) < results["goal_s"] else "MISS"
    lines = [
        BEGIN,
        "## Reach (issue 16)",
        "",
        f"`python -m bench.reach_bench --agents {results['agents']} --secrets {results['secrets'] - 1} "
        f"--policies {results['policies']}` ({results['when']}, reach.json): a node on SQLite with "
        f"{results['agents']} agents, {results['secrets']} secrets, {results['destinations']} destinations "
        f"and {results['policies']} policies; the grid has {results['grid_points']} points per agent group "
        f"and action. The agents fall into {results['groups']} groups (identical in what the policies "
        f"read); {results['agents_reaching']} of them reach the measured secret, in {results['rules']} "
        f"rules. Median of {results['reps']} runs each: *first* is the first answer under a policy set "
        "(nothing remembered yet, as after a deploy or a restart), *again* the next ones (the policy "
        "set's parsed policies and what Cedar proved about each agent class are kept per set version):",
        "",
        "| | seconds |",
        "|---|---|",
        f"| reach of one secret, first (`ReachService.of_secret`: store reads, grouping, the grid through "
        f"Cedar) | {cold} |",
        f"| reach of one secret, again | {secret} |",
        f"| of which the computation, again (`group_agents` + `compute_reach`) | "
        f"{results['compute_only']['median_s']} |",
    ]
    if "of_agent" in results:
        lines.append(
            f"| reach of one agent over every secret (`of_agent`, {results['of_agent_rules']} rules; "
            f"{results['of_agent_reps']} run, not a goal of the issue) | {results['of_agent']['median_s']} |"
        )
    lines += [
        "",
        f"Goal (issue 16): reach of a secret under {results['goal_s']:.0f} s: {cold} s first, {secret} s "
        f"again, {verdict}.",
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
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--secrets", type=int, default=1000)
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--agent-reps", type=int, default=1, help="runs of reach of one agent (slow)")
    parser.add_argument("--skip-agent", action="store_true", help="do not time reach of one agent")
    parser.add_argument("--no-write", action="store_true", help="print only; write neither file")
    args = parser.parse_args(argv)
    if min(args.agents, args.secrets, args.policies, args.reps) < 1:
        parser.error("--agents, --secrets, --policies and --reps must be at least 1")
    results = asyncio.run(run(args))
    if not args.no_write:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        write_latest(markdown(results))
    print(markdown(results).replace(BEGIN + "\n", "").replace("\n" + END, ""))
    return results


if __name__ == "__main__":
    main()
