"""Standing-privilege findings, from reach rules and what is live (pure: no I/O).

Each finding names what it is about and the policies that cause it:

- ``restricted-without-approval``: a restricted secret some agent can be issued or use without an
  approval.
- ``revealable-injected``: a destination injects a secret that policy would also let an agent see
  (``reveal``), so the agent could see what egress hides.
- ``reach-never-used``: an agent could reach a secret it did not use in the audit window.
- ``grant-never-activated``: a live grant that has not been used once.
- ``task-near-max-lifetime``: a live task whose lifetime is at least 90% of the configured maximum.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from tether.domain.tasks import Grant, Task
from tether.errors import InvalidInputError
from tether.reach.rules import ReachRule

__all__ = ["NEAR_MAX_LIFETIME", "Finding", "find", "parse_window"]

#: A task whose lifetime is at least this share of the maximum is "near the maximum".
NEAR_MAX_LIFETIME: Final = 0.9
RESTRICTED: Final = 3
MAX_WINDOW_DAYS: Final = 366
_WINDOW: Final = re.compile(r"([1-9][0-9]{0,6})([smhd])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s``: at most 366 days."""
    match = _WINDOW.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidInputError("since must be a duration such as 30d, 12h, 90m or 3600s", field="since")
    window = timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    if window > timedelta(days=MAX_WINDOW_DAYS):
        raise InvalidInputError(f"since is at most {MAX_WINDOW_DAYS}d", field="since")
    return window


@dataclass(frozen=True, slots=True)
class Finding:
    """One standing-privilege finding: its kind, what it is about, who, why, and the policies."""

    kind: str
    subject: str
    detail: str
    agents: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "detail": self.detail,
            "agents": list(self.agents),
            "policies": list(self.policies),
        }


def find(
    rules: Sequence[ReachRule],
    sensitivity: Mapping[str, int],
    injected_by: Mapping[str, Sequence[str]],
    used: set[tuple[str, str]],
    grants: Iterable[Grant],
    tasks: Iterable[Task],
    agent_names: Mapping[str, str],
    *,
    max_task_ttl_seconds: int,
    window: str,
    now: datetime,
) -> list[Finding]:
    """The findings for ``rules`` (over every agent and secret) and what is live.

    Args:
        sensitivity: Each secret's sensitivity (0-3), by path.
        injected_by: The destinations that inject each secret, by path.
        used: ``(agent name, secret path)`` pairs with an allowed activation in the audit window.
        grants: Live grants; tasks: live tasks; agent_names: agent id to name.
        window: The audit window as the user gave it (for the text).
    """
    found: list[Finding] = []
    found += _restricted_without_approval(rules, sensitivity)
    found += _revealable_injected(rules, injected_by)
    found += _never_used(rules, used, window)
    for grant in grants:
        if grant.uses == 0 and grant.secret is not None:
            agent = agent_names.get(grant.agent_id, grant.agent_id)
            policies = _policies(r for r in rules if r.secret == grant.secret and agent in r.agents)
            found.append(
                Finding(
                    "grant-never-activated",
                    f"grant:{grant.id}",
                    f"{grant.mode.value} grant for {grant.secret} (task {grant.task_id}) issued "
                    f"{_ago(now - grant.created_at)} ago, never used",
                    (agent,),
                    policies,
                )
            )
    limit = max_task_ttl_seconds * NEAR_MAX_LIFETIME
    for task in tasks:
        lifetime = (task.expires_at - task.created_at).total_seconds()
        if lifetime >= limit:
            found.append(
                Finding(
                    "task-near-max-lifetime",
                    f"task:{task.id}",
                    f"lifetime {_ago(task.expires_at - task.created_at)} of at most "
                    f"{_ago(timedelta(seconds=max_task_ttl_seconds))} (purpose {task.intent.purpose})",
                    (agent_names.get(task.agent_id, task.agent_id),),
                )
            )
    return found


def _restricted_without_approval(rules: Sequence[ReachRule], sensitivity: Mapping[str, int]) -> list[Finding]:
    grouped: dict[str, tuple[set[str], set[str]]] = {}
    for rule in rules:
        if sensitivity.get(rule.secret) == RESTRICTED and False in rule.values["approval"]:
            agents, policies = grouped.setdefault(rule.secret, (set(), set()))
            agents.update(rule.agents)
            policies.update(rule.policies)
    return [
        Finding(
            "restricted-without-approval",
            f"secret:{path}",
            "a restricted secret can be issued or used without an approval",
            tuple(sorted(agents)),
            tuple(sorted(policies)),
        )
        for path, (agents, policies) in sorted(grouped.items())
    ]


def _revealable_injected(
    rules: Sequence[ReachRule], injected_by: Mapping[str, Sequence[str]]
) -> list[Finding]:
    found = []
    for path, destinations in sorted(injected_by.items()):
        revealing = [r for r in rules if r.secret == path and "reveal" in r.values["mode"]]
        if not revealing or not destinations:
            continue
        for destination in sorted(destinations):
            found.append(
                Finding(
                    "revealable-injected",
                    f"destination:{destination}",
                    f"injects {path}, which policy also lets agents see (reveal)",
                    tuple(sorted({a for r in revealing for a in r.agents})),
                    _policies(revealing),
                )
            )
    return found


def _never_used(rules: Sequence[ReachRule], used: set[tuple[str, str]], window: str) -> list[Finding]:
    reachable: dict[tuple[str, str], list[ReachRule]] = {}
    for rule in rules:
        for agent in rule.agents:
            reachable.setdefault((agent, rule.secret), []).append(rule)
    return [
        Finding(
            "reach-never-used",
            f"secret:{path}",
            f"{agent} could reach it and did not use it in the last {window}",
            (agent,),
            _policies(found),
        )
        for (agent, path), found in sorted(reachable.items())
        if (agent, path) not in used
    ]


def _policies(rules: Iterable[ReachRule]) -> tuple[str, ...]:
    return tuple(sorted({policy for rule in rules for policy in rule.policies}))


def _ago(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 86400:
        return f"{seconds // 86400}d{(seconds % 86400) // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60}m"
    return f"{seconds // 60}m{seconds % 60}s"
