"""A compiled Cedar policy set (built by :func:`tether.policy.compile.compile_policy_set`), and
deciding requests against the policies that can apply.

The set keeps an index: for each action and resource type, the policies whose scope can match, with
the policies pinned to one resource (``resource == Secret::"x"``) or one agent
(``principal == Agent::"x"``) kept apart and added only for requests about that resource or from
that agent. A decision hands Cedar only that subset, pre-parsed; :meth:`CompiledPolicySet.decide_many`
decides a batch (policy replay), setting aside the policies each pair of entities makes false.

Decisions fail closed: any error Cedar reports (Cedar skips a policy that errors at runtime, which
can silently switch a ``forbid`` off), any exception, an unknown determining policy: deny.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, Final, Protocol

import cedarpy

from tether.domain.decision import Decision
from tether.policy.prune import NEVER as _NEVER_UNKNOWN
from tether.policy.prune import Prefix, dropped, side_results, static_prefix
from tether.policy.reads import Projection, context_projection, project
from tether.policy.request import DecisionRequest, Entity, json_default
from tether.policy.schema import ACTIONS, RESOURCE_TYPES, SCHEMA_TEXT

__all__ = ["Asked", "CompiledPolicySet"]

MAX_MESSAGE_LENGTH: Final = 2000
_ERRORED_POLICY: Final = re.compile(r"while evaluating policy `([A-Za-z0-9._:-]{1,128})`")
_SCHEMA: Final = cedarpy.Schema.from_str(SCHEMA_TEXT)
_ENTITIES_CACHE_SIZE: Final = 4096
# Parsed (and schema-checked) entity sets by their JSON: agents and secrets recur across requests,
# and parsing them is a large share of a decision's cost. Memoisation only; bounded; no I/O.
_entities_cache: dict[str, cedarpy.Entities] = {}
_DECISIONS_REMEMBERED: Final = 8192
# A remembered decision's key: everything the decision is a function of, within one compiled set
# (action, resource type and id, principal id — which select the policies —, the entities' JSON,
# the context's JSON as handed to Cedar, whether it was validated, and the approval flag).
_MemoKey = tuple[str, str, str, str, str, str, bool, object]

# A bucket is the set of policies that can apply to (action, resource type).
_BucketKey = tuple[str, str]


class Asked(Protocol):
    """A request as :meth:`CompiledPolicySet.decide_many` reads it: what :class:`DecisionRequest`
    holds, built from values already checked (policy replay's recorded decisions)."""

    @property
    def principal(self) -> Entity: ...
    @property
    def action(self) -> str: ...
    @property
    def resource(self) -> Entity: ...
    @property
    def context(self) -> Mapping[str, Any]: ...
    @property
    def entities(self) -> Sequence[Entity]: ...


@dataclass(frozen=True, slots=True)
class _Policy:
    position: int
    id: str
    effect: str
    est: Mapping[str, Any]
    actions: frozenset[str]
    resource_types: frozenset[str]
    resource_id: str | None  # set when the scope pins one resource: `resource == T::"id"`
    principal_id: str | None  # set when the scope pins one agent: `principal == Agent::"id"`


def _policy_set(policies: Sequence[_Policy]) -> cedarpy.PolicySet:
    # Cedar's policy ids are the users' @id values, so reasons and errors name them directly.
    document = {
        "staticPolicies": {policy.id: policy.est for policy in policies},
        "templates": {},
        "templateLinks": [],
    }
    return cedarpy.PolicySet.from_json_str(json.dumps(document))


_HANDLE_CACHE_SIZE: Final = 4096
_SIDE_CACHE_SIZE: Final = 100_000


@dataclass(slots=True)
class _Bucket:
    """The policies for one (action, resource type): those that apply to every request, plus pins."""

    general: tuple[_Policy, ...]
    by_resource: dict[str, tuple[_Policy, ...]]  # resource pinned (principal pinned or not)
    by_principal: dict[str, tuple[_Policy, ...]]  # principal pinned, resource not
    handle: cedarpy.PolicySet | None
    reads: Projection | None  # the context attributes the general policies read (None: all)
    pinned_handles: dict[tuple[int, ...], tuple[cedarpy.PolicySet, Projection | None]] = field(
        default_factory=dict
    )
    # For decide_many (policy replay): what each entity rules out, and handles of what is left.
    pruning: _Pruning | None = None

    def select(self, principal_id: str, resource_id: str) -> tuple[_Policy, ...]:
        extra = [
            policy
            for policy in self.by_resource.get(resource_id, ())
            if policy.principal_id is None or policy.principal_id == principal_id
        ]
        extra += self.by_principal.get(principal_id, ())
        if not extra:
            return self.general
        return tuple(sorted((*self.general, *extra), key=lambda policy: policy.position))

    def handle_for(
        self, principal_id: str, resource_id: str
    ) -> tuple[cedarpy.PolicySet | None, tuple[_Policy, ...], Projection | None]:
        policies = self.select(principal_id, resource_id)
        if policies is self.general:
            return self.handle, policies, self.reads
        key = tuple(policy.position for policy in policies)
        pinned = self.pinned_handles.get(key)
        if pinned is None:
            # Built on first use and memoised (pure; only saves parsing), so compiling stays linear.
            pinned = (_policy_set(policies), context_projection(policy.est for policy in policies))
            if len(self.pinned_handles) >= _HANDLE_CACHE_SIZE:
                self.pinned_handles.clear()
            self.pinned_handles[key] = pinned
        return pinned[0], policies, pinned[1]


@dataclass(frozen=True, slots=True)
class _Kept:
    """The policies a pair of entities leaves standing, as :meth:`CompiledPolicySet.decide_many`
    needs them: the handle (None: no policy), the context they read, whether a permit among them
    reads ``context.approval`` and the forbids that do not (for the derived approval)."""

    handle: cedarpy.PolicySet | None
    reads: Projection | None
    permit_reads_approval: bool = True
    approval_blind_forbids: frozenset[str] = frozenset()


_NOTHING_KEPT: Final = _Kept(None, None)


def _reads_approval(policy: _Policy) -> bool:
    """Whether a policy can read ``context.approval`` (conservatively: a whole-context use does)."""
    reads = context_projection([policy.est])
    return reads is None or "approval" in reads


#: What one entity decides of a bucket's policies: the side, whether all is decided, and by
#: position (first false, first undecided).
_Side = tuple[Any, ...]


@dataclass(slots=True)
class _Pruning:
    """A bucket's policies as :mod:`tether.policy.prune` sees them, and what it found (bounded)."""

    policies: tuple[_Policy, ...]  # every policy of the bucket, pinned ones too
    prefixes: tuple[Prefix, ...]
    sides: dict[tuple[str, int], tuple[Any, dict[int, tuple[int, int]], bool, _Side]] = field(
        default_factory=dict
    )
    handles: dict[tuple[int, ...], _Kept] = field(default_factory=dict)
    pairs: dict[tuple[int, int], tuple[Any, Any, _Kept]] = field(default_factory=dict)
    # Entities that decide the same of every policy share one (interned) side; pairs of sides with
    # the same pinned policies leave the same policies standing (by the sides' identity).
    interned: dict[_Side, _Side] = field(default_factory=dict)
    combos: dict[tuple[int, int, Any], tuple[_Side, _Side, _Kept]] = field(default_factory=dict)
    approval_readers: dict[int, bool] = field(default_factory=dict)  # by policy position

    def for_pair(self, bucket: _Bucket, principal: Any, resource: Any) -> _Kept:
        """The handle (None: no policy is left), context reads and approval readers of the policies
        this principal and resource leave standing (memoised per pair of entities)."""
        found = self.pairs.get((id(principal), id(resource)))
        if found is not None and found[0] is principal and found[1] is resource:
            return found[2]
        if len(self.pairs) >= _SIDE_CACHE_SIZE:
            self.pairs.clear()
        by_principal, principal_decided, principal_side = self.side("principal", principal)
        by_resource, resource_decided, resource_side = self.side("resource", resource)
        # What select() adds to the general policies depends on these ids only when one is pinned
        # (a policy pinned to this resource may also be pinned to an agent).
        if resource.id in bucket.by_resource:
            pins: tuple[str | None, str | None] = (resource.id, principal.id)
        else:
            pins = (None, principal.id if principal.id in bucket.by_principal else None)
        combo = (id(principal_side), id(resource_side), pins)
        known = self.combos.get(combo)
        if known is not None and known[0] is principal_side and known[1] is resource_side:
            answer = known[2]
        else:
            selected = bucket.select(principal.id, resource.id)
            if not any(policy.effect == "permit" for policy in selected):
                answer = _NOTHING_KEPT  # default deny
            else:
                # Forbids that are left are still asked (one could fail, which is a deny naming it);
                # with nothing left, Cedar would answer a deny without reasons: so does no handle.
                if principal_decided and resource_decided:  # each entry is a false conjunct
                    out: Collection[int] = by_principal.keys() | by_resource.keys()
                else:
                    out = dropped(by_principal, by_resource)
                kept = tuple(policy for policy in selected if policy.position not in out) if out else selected
                answer = self.handle(kept)
            if len(self.combos) >= _SIDE_CACHE_SIZE:
                self.combos.clear()
            self.combos[combo] = (principal_side, resource_side, answer)
        self.pairs[(id(principal), id(resource))] = (principal, resource, answer)
        return answer

    @classmethod
    def of(cls, bucket: _Bucket) -> _Pruning:
        every = {p.position: p for p in bucket.general}
        for group in (*bucket.by_resource.values(), *bucket.by_principal.values()):
            every.update({p.position: p for p in group})
        policies = tuple(sorted(every.values(), key=lambda policy: policy.position))
        return cls(policies, tuple(static_prefix(policy.est) for policy in policies))

    def side(self, side: str, entity: Any) -> tuple[dict[int, tuple[int, int]], bool, _Side]:
        """What ``entity`` (as the principal or the resource) decides of each policy's prefix, by
        policy position; True when nothing was left undecided; the same as an interned value."""
        found = self.sides.get((side, id(entity)))
        if found is not None and found[0] is entity:
            return found[1], found[2], found[3]
        if len(self.sides) >= _SIDE_CACHE_SIZE:
            self.sides.clear()
        if len(self.interned) >= _SIDE_CACHE_SIZE:
            self.interned.clear()  # a new object for a value seen before: only a cache miss
        results = side_results(self.prefixes, side, entity.attributes)
        # Keyed by policy position (the results index into self.policies).
        by_position = {self.policies[index].position: result for index, result in results.items()}
        decided = all(unknown == _NEVER_UNKNOWN for _, unknown in by_position.values())
        value = (side, decided, *sorted(by_position.items()))
        interned = self.interned.setdefault(value, value)
        self.sides[(side, id(entity))] = (entity, by_position, decided, interned)
        return by_position, decided, interned

    def reads_approval(self, policy: _Policy) -> bool:
        found = self.approval_readers.get(policy.position)
        if found is None:
            found = self.approval_readers[policy.position] = _reads_approval(policy)
        return found

    def handle(self, kept: tuple[_Policy, ...]) -> _Kept:
        key = tuple(policy.position for policy in kept)
        found = self.handles.get(key)
        if found is None:
            if len(self.handles) >= _HANDLE_CACHE_SIZE:
                self.handles.clear()
            handle = _policy_set(kept) if kept else None
            readers = {policy.id for policy in kept if self.reads_approval(policy)}
            found = self.handles[key] = _Kept(
                handle,
                context_projection(policy.est for policy in kept),
                any(policy.effect == "permit" for policy in kept if policy.id in readers),
                frozenset(
                    policy.id for policy in kept if policy.effect == "forbid" and policy.id not in readers
                ),
            )
        return found


class CompiledPolicySet:
    """A validated, indexed policy set. Build with :func:`compile_policy_set`.

    Attributes:
        text: The Cedar text as deployed.
        policy_ids: Every policy's ``@id``, in the order written.
        sha256: Hex SHA-256 of ``text`` (UTF-8).
    """

    __slots__ = ("_buckets", "_effects", "_remembered", "policy_ids", "sha256", "text")

    def __init__(self, text: str, policies: Sequence[_Policy]) -> None:
        self.text = text
        self.policy_ids: tuple[str, ...] = tuple(policy.id for policy in policies)
        self.sha256 = sha256(text.encode("utf-8")).hexdigest()
        self._effects = {policy.id: policy.effect for policy in policies}
        self._remembered: dict[_MemoKey, Decision] = {}
        self._buckets: dict[_BucketKey, _Bucket] = {}
        for action in ACTIONS:
            for resource_type in RESOURCE_TYPES[action]:
                applicable = [
                    p for p in policies if action in p.actions and resource_type in p.resource_types
                ]
                general = tuple(p for p in applicable if p.resource_id is None and p.principal_id is None)
                by_resource: dict[str, tuple[_Policy, ...]] = {}
                by_principal: dict[str, tuple[_Policy, ...]] = {}
                for policy in applicable:
                    if policy.resource_id is not None:
                        by_resource[policy.resource_id] = (*by_resource.get(policy.resource_id, ()), policy)
                    elif policy.principal_id is not None:
                        pid = policy.principal_id
                        by_principal[pid] = (*by_principal.get(pid, ()), policy)
                handle = _policy_set(general) if general else None
                reads = context_projection(policy.est for policy in general)
                self._buckets[(action, resource_type)] = _Bucket(
                    general, by_resource, by_principal, handle, reads
                )

    def applicable(
        self, action: str, resource_type: str, resource_id: str, principal_id: str = ""
    ) -> tuple[str, ...]:
        """The ids of the policies a request for this action, resource and principal is evaluated against."""
        bucket = self._buckets.get((action, resource_type))
        if bucket is None:
            return ()
        return tuple(policy.id for policy in bucket.select(principal_id, resource_id))

    def decide(
        self, request: DecisionRequest, *, trusted_context: bool = False, remember: bool = False
    ) -> Decision:
        """Decide ``request``: allow only if a permit matches, no forbid does, and nothing errored.

        ``trusted_context``: the context was built by :func:`tether.domain.tasks.decision_context`
        (always the schema's shape), so Cedar need not validate it again; any other context is.

        ``remember``: a decision is a pure function of this policy set and the request as handed
        to Cedar (the entities' attributes and the context attributes the policies read; Cedar
        has no clock and no I/O), so the answer to an identical input may be remembered and
        given again without evaluating. Nothing about the world is remembered: the broker
        re-reads the agent, its keys, the grant, the task and the secret on every request, and
        any change in what the policies read is a different input. A new policy set is a new
        :class:`CompiledPolicySet`, with nothing remembered. Decisions that carry errors are
        never remembered.

        A deny that an approval would turn into an allow says so: ``missing == ("approval",)``, with the
        permits that would allow as ``policies``.
        """
        bucket = self._buckets.get((request.action, request.resource.type))
        if bucket is None:  # DecisionRequest validation makes this unreachable; fail closed anyway
            return Decision.deny(errors=(f"no policies index for {request.action}",))
        handle, policies, reads = bucket.handle_for(request.principal.id, request.resource.id)
        if handle is None or not any(policy.effect == "permit" for policy in policies):
            return Decision.deny()  # default deny: nothing can permit this request
        # A trusted context is handed to Cedar with only the attributes these policies read (the
        # same answer, less to parse); anyone else's is validated against the schema whole.
        given = request.context if reads is None or not trusted_context else project(request.context, reads)
        try:
            entities = _entities_json(request)
            context = json.dumps(dict(given), default=json_default)
        except (TypeError, ValueError, RecursionError) as exc:
            return Decision.deny(errors=(_clip(f"request is unusable: {type(exc).__name__}: {exc}"),))
        key: _MemoKey | None = None
        if remember:
            approval = request.context.get("approval")
            key = (
                request.action,
                request.resource.type,
                request.resource.id,
                request.principal.id,
                entities,
                context,
                trusted_context,
                approval if isinstance(approval, bool) else None,
            )
            known = self._remembered.get(key)
            if known is not None:
                return known
        decision = self._decide_now(request, handle, given, entities, context, trusted_context)
        if key is not None and not decision.errors:
            if len(self._remembered) >= _DECISIONS_REMEMBERED:
                self._remembered.clear()
            self._remembered[key] = decision
        return decision

    def _decide_now(
        self,
        request: DecisionRequest,
        handle: cedarpy.PolicySet,
        given: Mapping[str, Any],
        entities: str,
        context: str,
        trusted: bool,
    ) -> Decision:
        cedar_request = {
            "principal": {"type": request.principal.type, "id": request.principal.id},
            "action": {"type": "Action", "id": request.action},
            "resource": {"type": request.resource.type, "id": request.resource.id},
            "context": context,
        }
        decision = self._evaluate(handle, cedar_request, entities, trusted=trusted)
        if decision.allowed or decision.errors or request.context.get("approval") is not False:
            return decision
        # Derived approval: would the same request be allowed with an approval?
        approved = json.dumps({**given, "approval": True}, default=json_default)
        with_approval = self._evaluate(
            handle, {**cedar_request, "context": approved}, entities, trusted=trusted
        )
        if with_approval.allowed:
            return Decision.deny(policies=with_approval.policies, missing=("approval",))
        return decision

    def decide_many(
        self,
        requests: Sequence[DecisionRequest | Asked],
        memo: dict[tuple[int, str, Any], tuple[cedarpy.PolicySet, Decision]] | None = None,
    ) -> list[Decision]:
        """:meth:`decide` (with ``trusted_context``) for many requests at once, for policy replay:
        requests that agree on the policies selected, the entities and the context those policies
        read are decided once, and those sharing policies and entities go to Cedar in one batch.
        Each answer equals what :meth:`decide` answers for that request alone. ``memo`` keeps
        answers across calls (the caller bounds it, and uses it with this set only)."""
        answers: list[Decision | None] = [None] * len(requests)
        # (handle, entities JSON) -> context key -> (Cedar request, indexes of the requests)
        groups: dict[tuple[int, str], dict[Any, tuple[dict[str, Any], list[int]]]] = {}
        kept_of: dict[int, _Kept] = {}
        entity_json: dict[tuple[int, int], str] = {}  # by the entities' identity, within this call
        for index, request in enumerate(requests):
            asked = self._batch_item(request, entity_json)
            if isinstance(asked, Decision):
                answers[index] = asked
                continue
            kept, entities, key = asked
            handle_id = id(kept.handle)
            known = None if memo is None else memo.get((handle_id, entities, key))
            if known is not None and known[0] is kept.handle:
                answers[index] = known[1]
                continue
            kept_of[handle_id] = kept
            same = groups.setdefault((handle_id, entities), {})
            found = same.get(key)
            if found is not None:
                found[1].append(index)
                continue
            # The context as Cedar reads it: made once per distinct key (equal keys, equal JSON).
            try:
                context = _context_json(request.context, kept.reads)
            except (TypeError, ValueError, RecursionError) as exc:
                answers[index] = Decision.deny(
                    errors=(_clip(f"request is unusable: {type(exc).__name__}: {exc}"),)
                )
                continue
            same[key] = (_cedar_request(request, context), [index])
        for (handle_id, entities), contexts in groups.items():
            kept = kept_of[handle_id]
            decided = self._decide_group(kept, entities, list(contexts.values()), requests)
            for key, decision, (_, indexes) in zip(contexts, decided, contexts.values(), strict=True):
                if memo is not None and kept.handle is not None:
                    memo[(handle_id, entities, key)] = (kept.handle, decision)
                for index in indexes:
                    answers[index] = decision
        # Every index was answered above; fail closed if not (a Decision is falsy when it denies).
        return [Decision.deny(errors=("not decided",)) if a is None else a for a in answers]

    def _batch_item(
        self, request: DecisionRequest | Asked, entity_json: dict[tuple[int, int], str]
    ) -> Decision | tuple[_Kept, str, Any]:
        """What :meth:`decide` would hand Cedar for ``request`` (the policies left, the entities,
        and a key that is equal for contexts equal in what those policies read), or the decision
        when Cedar need not be asked."""
        bucket = self._buckets.get((request.action, request.resource.type))
        if bucket is None:
            return Decision.deny(errors=(f"no policies index for {request.action}",))
        # Set aside the policies this principal and resource make false whatever the context (they
        # neither apply nor error): the same decision, with less to evaluate and to tell apart.
        # No handle: no permit applies (the default deny, as decide() answers), or no policy is left
        # (each is false: Cedar would deny without reasons).
        if bucket.pruning is None:
            bucket.pruning = _Pruning.of(bucket)
        kept = bucket.pruning.for_pair(bucket, request.principal, request.resource)
        if kept.handle is None:
            return Decision.deny()  # every policy is false for these entities: a deny, no reasons
        try:
            pair = (id(request.principal), id(request.resource))
            entities = None if request.entities else entity_json.get(pair)
            if entities is None:
                entities = _entities_json(request)
                if not request.entities:
                    entity_json[pair] = entities
            key = _context_key(request.context, kept.reads)
        except (TypeError, ValueError, RecursionError) as exc:
            return Decision.deny(errors=(_clip(f"request is unusable: {type(exc).__name__}: {exc}"),))
        return kept, entities, key

    def _decide_group(
        self,
        kept: _Kept,
        entities: str,
        asked: list[tuple[dict[str, Any], list[int]]],
        requests: Sequence[DecisionRequest | Asked],
    ) -> list[Decision]:
        handle = kept.handle
        if handle is None:  # unreachable: _batch_item answers when no policy is left; fail closed
            return [Decision.deny(errors=("no policies left",)) for _ in asked]
        decided = self._evaluate_many(handle, [request for request, _ in asked], entities)
        # Derived approval, as decide() does: a deny without errors, asked without an approval —
        # would an approval allow it? Only the approval differs when asked again, so the answer
        # cannot change when a forbid that held does not read it (it holds again), nor when no
        # forbid held (then no permit did either) and no permit reads it (none will).
        blind = kept.approval_blind_forbids
        permits_may_change = kept.permit_reads_approval
        again = [
            (position, request)
            for position, ((request, indexes), decision) in enumerate(zip(asked, decided, strict=True))
            if not decision.allowed
            and not decision.errors
            and requests[indexes[0]].context.get("approval") is False
            and blind.isdisjoint(decision.policies)
            and (permits_may_change or decision.policies)
        ]
        if again:
            approved = [
                {**request, "context": json.dumps({**json.loads(request["context"]), "approval": True})}
                for _, request in again
            ]
            for (position, _), with_approval in zip(
                again, self._evaluate_many(handle, approved, entities), strict=True
            ):
                if with_approval.allowed:
                    decided[position] = Decision.deny(policies=with_approval.policies, missing=("approval",))
        return decided

    def _evaluate_many(
        self, handle: cedarpy.PolicySet, cedar_requests: list[dict[str, Any]], entities: str
    ) -> list[Decision]:
        try:
            results = cedarpy.is_authorized_batch(cedar_requests, handle, _entities(entities))
        except Exception:  # noqa: BLE001 - one by one, so that each request fails closed on its own
            return [self._evaluate(handle, request, entities, trusted=True) for request in cedar_requests]
        return [self._interpret(result) for result in results]

    def _interpret(self, result: cedarpy.AuthzResult) -> Decision:
        """Cedar's answer as a decision, failing closed: any error is a deny naming the policies that
        failed; an allow needs a determining permit."""
        try:
            errors = tuple(_clip(str(error)) for error in result.diagnostics.errors)
            reasons = tuple(str(reason) for reason in result.diagnostics.reasons)
            allowed = result.decision is cedarpy.Decision.Allow
        except Exception as exc:  # noqa: BLE001 - fail closed on anything the engine throws
            return Decision.deny(errors=(_clip(f"policy engine failed: {type(exc).__name__}: {exc}"),))
        unknown = [reason for reason in reasons if reason not in self._effects]
        if unknown:
            errors = (*errors, f"engine named unknown policies: {', '.join(sorted(unknown))}")
        if errors:
            failed = dict.fromkeys(
                match.group(1) for error in errors for match in _ERRORED_POLICY.finditer(error)
            )
            return Decision.deny(policies=tuple(p for p in failed if p in self._effects), errors=errors)
        if allowed and all(self._effects[reason] == "permit" for reason in reasons) and reasons:
            return Decision(allowed=True, policies=reasons)
        if allowed:
            return Decision.deny(errors=("engine allowed without a determining permit",))
        return Decision.deny(policies=tuple(r for r in reasons if self._effects[r] == "forbid"))

    def _evaluate(
        self, handle: cedarpy.PolicySet, cedar_request: dict[str, Any], entities: str, *, trusted: bool
    ) -> Decision:
        try:
            # The entities were checked against the schema when parsed (cached). A context Tether built
            # itself (``decision_context``, one fixed shape, tested against the schema) skips the
            # request validation, which costs ~40% of a decision; anyone else's context is validated.
            schema = None if trusted else _SCHEMA
            result = cedarpy.is_authorized(cedar_request, handle, _entities(entities), schema=schema)
        except Exception as exc:  # noqa: BLE001 - fail closed on anything the engine throws
            return Decision.deny(errors=(_clip(f"policy engine failed: {type(exc).__name__}: {exc}"),))
        return self._interpret(result)

    def __repr__(self) -> str:
        return f"CompiledPolicySet(policies={len(self.policy_ids)}, sha256={self.sha256[:12]}…)"


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_LENGTH else message[: MAX_MESSAGE_LENGTH - 1] + "…"


def _cedar_request(request: DecisionRequest | Asked, context: str) -> dict[str, Any]:
    return {
        "principal": {"type": request.principal.type, "id": request.principal.id},
        "action": {"type": "Action", "id": request.action},
        "resource": {"type": request.resource.type, "id": request.resource.id},
        "context": context,
    }


def _context_json(context: Mapping[str, Any], reads: Projection | None) -> str:
    """The context as :meth:`CompiledPolicySet.decide_many` hands it to Cedar: what ``reads`` keeps."""
    given = context if reads is None else project(context, reads)
    return json.dumps(dict(given), default=json_default, sort_keys=True)


def _context_key(context: Mapping[str, Any], reads: Projection | None) -> Any:
    """A hashable key of what ``reads`` keeps of ``context``, cheaper to make than its JSON: equal
    keys give equal :func:`_context_json` (types are part of the key, so ``true`` is not ``1``; a
    value of another type is keyed by its JSON). ``reads`` is the same for every key compared."""
    if reads is None:
        return _frozen(context)
    key = []
    for attr, inner in reads.items():
        value = context.get(attr, _ABSENT)
        kind = type(value)
        if kind is str:
            key.append((attr, value))
        elif value is _ABSENT:
            continue  # absent: left out, as project() leaves it out
        elif inner is not None and isinstance(value, Mapping):
            key.append((attr, _context_key(value, inner)))
        else:
            key.append((attr, _frozen(value)))
    return tuple(key)


_ABSENT: Final = object()


def _frozen(value: Any) -> Any:
    """``value`` as a hashable key; equal keys are values with equal JSON."""
    kind = type(value)
    if kind is str:
        return value
    if kind is bool or kind is int:
        return (kind, value)
    if kind is list or kind is tuple:
        return ("L", *map(_frozen, value))
    if kind is dict and all(type(k) is str for k in value):
        return ("D", *sorted((k, _frozen(v)) for k, v in value.items()))
    if value is None:
        return None
    return ("J", json.dumps(value, default=json_default, sort_keys=True))


def _entities_json(request: DecisionRequest | Asked) -> str:
    """The request's entities as Cedar's JSON entity list (each entity's text built once, by
    :meth:`Entity.cedar_json`); one entity given twice with different attributes is refused."""
    seen: dict[tuple[str, str], str] = {}
    for entity in (request.principal, request.resource, *request.entities):
        text = entity.cedar_json()
        previous = seen.get(entity.uid)
        if previous is not None and previous != text and json.loads(previous) != json.loads(text):
            raise ValueError(f"entity {entity.type}::{entity.id!r} is given twice with different attributes")
        seen[entity.uid] = text
    return "[" + ", ".join(seen.values()) + "]"


def _entities(entities_json: str) -> cedarpy.Entities:
    """The parsed entity set for ``entities_json``, checked against the schema (``ValueError`` if not)."""
    parsed = _entities_cache.get(entities_json)
    if parsed is None:
        parsed = cedarpy.Entities.from_json_str(entities_json, _SCHEMA)
        if len(_entities_cache) >= _ENTITIES_CACHE_SIZE:
            _entities_cache.clear()
        _entities_cache[entities_json] = parsed
    return parsed
