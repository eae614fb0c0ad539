"""Delegation properties (issue 7), driven in process against a real node on SQLite.

(a) No sequence of delegations — each asking for random subsets *or supersets* of its parent's
    secrets, destinations and tools, any sensitivity and any TTL — yields a stored task whose
    scope, sensitivity or lifetime exceeds any of its ancestors', or whose purpose, depth or chain
    disagrees with them.
(b) Ending any task of a delegation tree (revoked by an operator, or completed, failed or revoked
    by its agent) makes the grants of that task and of every descendant fail to activate, and
    leaves every other task's grants usable.

One broker serves the whole module (each example uses fresh agents and a fresh tree), under a
policy that permits everything except the example set's ``no-restricted-when-delegated``.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets as _random
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.broker import Broker
from tether.broker.auth import AgentCaller
from tether.config import Settings
from tether.crypto.jose import generate_private_jwk
from tether.domain.agents import AgentAttributes
from tether.domain.commands import Delegate, IssueGrant, OpenTask
from tether.domain.destinations import Injection, InjectionType
from tether.domain.operators import OperatorRecord
from tether.domain.secrets import SecretMetadata, Sensitivity
from tether.domain.tasks import Grant, GrantMode, Task
from tether.errors import ConflictError, DeniedError, InvalidInputError, NotFoundError

T = TypeVar("T")

MAX_DEPTH = 3
SECRETS = {  # path -> sensitivity
    "prop/public": Sensitivity.PUBLIC,
    "prop/internal-a": Sensitivity.INTERNAL,
    "prop/internal-b": Sensitivity.INTERNAL,
    "prop/confidential": Sensitivity.CONFIDENTIAL,
    "prop/restricted": Sensitivity.RESTRICTED,
}
DESTINATIONS = {"dst-a": "prop/internal-a", "dst-b": "prop/confidential", "dst-c": "prop/restricted"}
TOOLS = ("git.clone", "git.push", "shell.exec", "http.get")
LEVELS = ("public", "internal", "confidential", "restricted")
POLICY = """
@id("permit-all")
permit(principal, action, resource);

@id("no-restricted-when-delegated")
forbid(principal, action in [Action::"issue", Action::"activate"], resource is Secret)
when { resource.sensitivity >= 3 && context.task.depth > 0 };
"""
ROOT_INTENT: dict[str, Any] = {
    "purpose": "research",
    "objective": "root task",
    "sensitivity": "confidential",
    "secrets": ["prop/public", "prop/internal-a", "prop/internal-b", "prop/confidential"],
    "destinations": ["dst-a", "dst-b"],
    "tools": ["git.clone", "git.push"],
    "ttl_seconds": 900,
}
REFUSED = (DeniedError, InvalidInputError, ConflictError)
AGENTS_PER_TREE = 4


@dataclass
class Node:
    """A module-wide broker driven from a private event loop (hypothesis calls us synchronously)."""

    runner: asyncio.Runner
    broker: Broker
    root: OperatorRecord
    names: Iterator[int]

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    async def agents(self, count: int) -> list[AgentCaller]:
        """``count`` fresh agents (same team), each with its own key thumbprint."""
        callers = []
        for _ in range(count):
            jwk = generate_private_jwk()
            public = {k: v for k, v in jwk.items() if k in {"kty", "crv", "x"}}
            record = await self.broker.agents.register(
                self.root,
                f"prop-{next(self.names)}",
                public,
                AgentAttributes(team="platform", environment="test", owner="props"),
            )
            callers.append(AgentCaller(record, _random.token_urlsafe(32)))
        return callers

    async def tree(self, root: Task) -> dict[str, Task]:
        return {task.id: task for task in await self.broker.storage.list_tasks(root_id=root.id, limit=1000)}


async def _setup(tmp: Path) -> tuple[Broker, OperatorRecord]:
    broker = Broker.from_settings(Settings(data_dir=tmp, max_delegation_depth=MAX_DEPTH))
    root = (await broker.init()).root
    await broker.policies.deploy(root, POLICY)
    for path, sensitivity in SECRETS.items():
        await broker.secrets.put(
            root,
            path,
            f"value of {path}",
            SecretMetadata(sensitivity=sensitivity, purposes=frozenset({"research"})),
        )
    for name, secret in DESTINATIONS.items():
        await broker.destinations.add(
            root,
            name=name,
            base_url=f"http://127.0.0.1:9/{name}",
            secret=secret,
            inject=Injection(InjectionType.HEADER, "Authorization", "Bearer {secret}"),
        )
    return broker, root


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with asyncio.Runner() as runner:
        broker, root = runner.run(_setup(tmp_path_factory.mktemp("delegation-props")))
        try:
            yield Node(runner, broker, root, itertools.count())
        finally:
            runner.run(broker.close())


# -- (a) nothing widens ----------------------------------------------------------------------------
hops = st.lists(
    st.fixed_dictionaries(
        {
            "parent": st.integers(min_value=0, max_value=50),  # index into the tasks so far (mod)
            "delegate": st.integers(min_value=0, max_value=AGENTS_PER_TREE - 1),
            # Mostly clipped to the parent (so trees grow deep), sometimes as drawn (often wider).
            "clip": st.booleans() | st.just(True),
            "secrets": st.sets(st.sampled_from(sorted(SECRETS)), max_size=len(SECRETS)),
            "destinations": st.sets(st.sampled_from(sorted(DESTINATIONS)), max_size=len(DESTINATIONS)),
            "tools": st.sets(st.sampled_from(TOOLS), max_size=len(TOOLS)),
            "sensitivity": st.none() | st.sampled_from(LEVELS),
            "ttl_seconds": st.none() | st.integers(min_value=1, max_value=2000),
        }
    ),
    min_size=1,
    max_size=10,
)


def _check_against_ancestors(task: Task, tree: dict[str, Task]) -> None:
    ancestors = []
    parent_id = task.parent_id
    while parent_id is not None:
        ancestors.append(tree[parent_id])
        parent_id = tree[parent_id].parent_id
    ancestors.reverse()
    assert task.chain == tuple(a.id for a in ancestors), task
    assert task.depth == len(ancestors) <= MAX_DEPTH
    assert task.root_id == (ancestors[0].id if ancestors else task.id)
    for ancestor in ancestors:
        mine, theirs = task.intent, ancestor.intent
        assert mine.secrets <= theirs.secrets, (task.id, ancestor.id)
        assert mine.destinations <= theirs.destinations, (task.id, ancestor.id)
        assert mine.tools <= theirs.tools, (task.id, ancestor.id)
        assert mine.sensitivity <= theirs.sensitivity, (task.id, ancestor.id)
        assert mine.purpose == theirs.purpose
        assert task.expires_at <= ancestor.expires_at, (task.id, ancestor.id)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=hops)
def test_no_sequence_of_delegations_widens_any_task(node: Node, steps: list[dict[str, Any]]) -> None:
    async def scenario() -> None:
        callers = await node.agents(AGENTS_PER_TREE)
        by_id = {caller.agent.id: caller for caller in callers}
        root = await node.broker.tasks.open(callers[0], OpenTask(**ROOT_INTENT))
        tasks = [root]
        for step in steps:
            parent = tasks[step["parent"] % len(tasks)]
            wanted = {field: set(step[field]) for field in ("secrets", "destinations", "tools")}
            sensitivity, ttl = step["sensitivity"], step["ttl_seconds"]
            if step["clip"]:
                wanted = {field: names & getattr(parent.intent, field) for field, names in wanted.items()}
                if sensitivity is not None:
                    sensitivity = LEVELS[min(LEVELS.index(sensitivity), int(parent.intent.sensitivity))]
                ttl = None if ttl is None else min(ttl, 300)
            body = {
                "agent": callers[step["delegate"]].agent.id,
                "objective": "a sub-task",
                **{field: sorted(names) for field, names in wanted.items()},
                "sensitivity": sensitivity,
                "ttl_seconds": ttl,
            }
            try:
                child = await node.broker.tasks.delegate(by_id[parent.agent_id], parent.id, Delegate(**body))
            except REFUSED:
                continue
            widening = child.intent.widening(parent.intent)
            assert not widening, widening
            tasks.append(child)
        stored = await node.tree(root)
        assert set(stored) == {task.id for task in tasks}  # nothing refused was stored
        for task in stored.values():
            _check_against_ancestors(task, stored)

    node.run(scenario())


# -- (b) ending an ancestor ends its descendants' grants ----------------------------------------------
trees = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=50),  # parent (index, mod)
        st.integers(min_value=0, max_value=AGENTS_PER_TREE - 1),  # delegate
        st.sets(
            st.sampled_from(sorted(SECRETS)), max_size=3
        ),  # extra secrets to keep, if the parent has them
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=trees,
    victim=st.integers(min_value=0, max_value=50),
    how=st.sampled_from(["operator", "complete", "fail", "revoke"]),
)
def test_ending_any_ancestor_stops_every_descendant_grant(
    node: Node, shape: list[tuple[int, int, set[str]]], victim: int, how: str
) -> None:
    async def scenario() -> None:
        tasks_service = node.broker.tasks
        callers = await node.agents(AGENTS_PER_TREE)
        by_id = {caller.agent.id: caller for caller in callers}
        tasks = [await tasks_service.open(callers[0], OpenTask(**ROOT_INTENT))]
        refusals: list[str] = []
        for parent_index, delegate, extra in shape:
            parent = tasks[parent_index % len(tasks)]
            keep = {"prop/internal-a"} | (extra & parent.intent.secrets)  # a narrowing, always
            body = {"agent": callers[delegate].agent.id, "objective": "a part", "secrets": sorted(keep)}
            try:
                tasks.append(
                    await tasks_service.delegate(by_id[parent.agent_id], parent.id, Delegate(**body))
                )
            except (InvalidInputError, DeniedError) as exc:  # self-delegation, depth limit
                refusals.append(str(exc))
        assert all("itself" in why or "deeper" in why for why in refusals), refusals
        grants: dict[str, list[Grant]] = {}
        for task in tasks:
            caller = by_id[task.agent_id]
            grants[task.id] = [
                await tasks_service.issue(caller, task.id, IssueGrant(secret=path, mode=GrantMode.REVEAL))
                for path in sorted(task.intent.secrets)
            ]
        target = tasks[victim % len(tasks)]
        if how == "operator":
            ended = await tasks_service.revoke_by_operator(node.root, target.id, "property")
        else:
            ended = await tasks_service.end_by_agent(by_id[target.agent_id], target.id, how)
        below = {t.id for t in tasks if t.id == target.id or target.id in t.chain}
        assert set(ended.task_ids) == below
        assert ended.grants_revoked == sum(len(grants[task_id]) for task_id in below)
        for task in tasks:
            caller = by_id[task.agent_id]
            for grant in grants[task.id]:
                use = tasks_service.activate(caller, grant.id, method="POST", path="/v1/grants/x/activate")
                if task.id in below:
                    with pytest.raises(DeniedError):
                        await use
                else:
                    assert (await use).value == f"value of {grant.secret}"
        # The delegator of a surviving task still cannot use a grant of its delegate.
        for task in tasks:
            if task.parent_id is not None and grants[task.id]:
                parent_agent = next(t.agent_id for t in tasks if t.id == task.parent_id)
                if parent_agent != task.agent_id:
                    with pytest.raises(NotFoundError):
                        await tasks_service.activate(
                            by_id[parent_agent], grants[task.id][0].id, method="POST", path="/x"
                        )

    node.run(scenario())
