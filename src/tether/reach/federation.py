"""Federated identities as reach subjects: which registered agents an issuer mapping can name (pure).

A trusted issuer's token names agent ``m["agent"]`` where ``m = re.fullmatch(subject_pattern,
claims[subject_claim])`` (:class:`tether.domain.agents.TrustedIssuer`), and the exchange succeeds only
for a registered, enabled agent of that name. So an agent can arrive through a mapping exactly when
some subject string fullmatches the pattern with the ``agent`` group equal to its name. Once it has
arrived, it *is* that agent (same entity, same attributes), so its reach through the mapping is its
own reach.

:func:`mapped_agents` answers the question per agent with a *witness*: a subject built from the
pattern's parse tree and then checked with ``re.fullmatch`` itself, so a listed example is proof.
Where no witness can be built (lookarounds, back-references the builder cannot satisfy) but the
``agent`` group alone matches the name, the agent is listed as ``unconfirmed`` rather than left out:
reach over-reports before it under-reports.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from re import _compiler  # type: ignore[attr-defined]
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any, Final

__all__ = ["MappedAgent", "mapped_agents"]

#: How many candidate subjects the builder tries per agent (branches multiply).
MAX_CANDIDATES: Final = 256
_POOL: Final = "a0A-_.:/@x "
_CATEGORIES: Final[dict[Any, Callable[[str], bool]]] = {
    sre.CATEGORY_DIGIT: str.isdigit,
    sre.CATEGORY_NOT_DIGIT: lambda c: not c.isdigit(),
    sre.CATEGORY_WORD: lambda c: c.isalnum() or c == "_",
    sre.CATEGORY_NOT_WORD: lambda c: not (c.isalnum() or c == "_"),
    sre.CATEGORY_SPACE: str.isspace,
    sre.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
}


@dataclass(frozen=True, slots=True)
class MappedAgent:
    """An agent a mapping can name: ``example`` is a subject that maps to it (checked with the
    pattern itself), or None when the mapping is ``unconfirmed`` (only its ``agent`` group matches)."""

    agent: str
    example: str | None

    def to_json(self) -> dict[str, Any]:
        return {"agent": self.agent, "example_subject": self.example, "confirmed": self.example is not None}


def mapped_agents(subject_pattern: str, names: Sequence[str]) -> list[MappedAgent]:
    """The agents of ``names`` a subject can map to under ``subject_pattern``, in ``names`` order.

    A pattern that does not compile or has no ``agent`` group maps to nobody (the exchange refuses it).
    """
    try:
        compiled = re.compile(subject_pattern)
        tree = sre_parse.parse(subject_pattern)
    except (re.error, RecursionError, OverflowError):
        return []
    index = compiled.groupindex.get("agent")
    if index is None:
        return []
    group = _group_pattern(tree, index)
    state = tree.state
    found: list[MappedAgent] = []
    for name in names:
        example = _witness(compiled, tree, index, name)
        if example is not None:
            found.append(MappedAgent(name, example))
        elif group is not None and _group_matches(state, group, name, compiled.flags):
            found.append(MappedAgent(name, None))
    return found


def _witness(compiled: re.Pattern[str], tree: Any, index: int, name: str) -> str | None:
    for candidate in itertools.islice(_strings(list(tree), index, name, {}), MAX_CANDIDATES):
        match = compiled.fullmatch(candidate)
        if match is not None and match["agent"] == name:
            return candidate
    return None


def _group_pattern(tree: Any, index: int) -> Any:
    for op, av in tree:
        if op is sre.SUBPATTERN and av[0] == index:
            return av[3]
        for child in _children(op, av):
            found = _group_pattern(child, index)
            if found is not None:
                return found
    return None


def _children(op: Any, av: Any) -> list[Any]:
    children: dict[Any, Any] = {
        sre.SUBPATTERN: lambda: [av[3]],
        sre.MAX_REPEAT: lambda: [av[2]],
        sre.MIN_REPEAT: lambda: [av[2]],
        sre.POSSESSIVE_REPEAT: lambda: [av[2]],
        sre.BRANCH: lambda: list(av[1]),
        sre.ATOMIC_GROUP: lambda: [av],
        sre.ASSERT: lambda: [av[1]],
        sre.ASSERT_NOT: lambda: [av[1]],
        sre.GROUPREF_EXISTS: lambda: [b for b in av[1:] if b is not None],
    }
    found = children.get(op)
    return [] if found is None else list(found())


def _group_matches(state: Any, group: Any, name: str, flags: int) -> bool:
    """Whether the ``agent`` group's own pattern fullmatches ``name``; when the check itself fails
    (the standard library's parser internals), yes: an unconfirmed entry rather than a hidden one."""
    if _opaque(group):
        return True
    try:
        sub = sre_parse.SubPattern(state, list(group))
        return _compiler.compile(sub, flags).fullmatch(name) is not None
    except Exception:  # noqa: BLE001 - over-report rather than hide an agent
        return True


def _opaque(tree: Any) -> bool:
    """Whether a subtree holds what cannot be checked on its own (back-references, lookarounds)."""
    for op, av in tree:
        if op in (sre.GROUPREF, sre.GROUPREF_EXISTS, sre.ASSERT, sre.ASSERT_NOT):
            return True
        if any(_opaque(child) for child in _children(op, av)):
            return True
    return False


def _strings(items: list[Any], index: int, name: str, groups: dict[int, str]) -> Iterator[str]:
    """Candidate strings for a sequence of parse items (the ``agent`` group yields ``name``)."""
    if not items:
        yield ""
        return
    (op, av), rest = items[0], items[1:]
    for head, captured in _item(op, av, index, name, groups):
        for tail in _strings(rest, index, name, captured):
            yield head + tail


def _item(
    op: Any, av: Any, index: int, name: str, groups: dict[int, str]
) -> Iterator[tuple[str, dict[int, str]]]:
    if op is sre.SUBPATTERN:
        number, sub = av[0], av[3]
        if number == index:
            yield name, {**groups, number: name}
            return
        for text in _strings(list(sub), index, name, groups):
            yield text, ({**groups, number: text} if number else groups)
        return
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
        low, high, sub = av
        for count in [low] if low > 0 else [0, 1]:
            if count <= high:
                yield from ((text, groups) for text in _strings(list(sub) * count, index, name, groups))
        return
    if op is sre.BRANCH:
        for branch in av[1]:
            yield from ((text, groups) for text in _strings(list(branch), index, name, groups))
        return
    if op is sre.ATOMIC_GROUP:
        yield from ((text, groups) for text in _strings(list(av), index, name, groups))
        return
    yield from ((text, groups) for text in _leaf(op, av, groups))


def _leaf(op: Any, av: Any, groups: dict[int, str]) -> list[str]:
    """Candidates for one item that holds no sub-pattern (none: no candidate, e.g. a conditional)."""
    if op is sre.LITERAL:
        return [chr(av)]
    if op is sre.NOT_LITERAL:
        return [next(c for c in _POOL if ord(c) != av)]
    if op is sre.ANY:
        return ["a"]
    if op is sre.IN:
        return _class_chars(av)
    if op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
        return [""]  # anchors and lookarounds consume nothing: fullmatch checks them
    return [groups[av]] if op is sre.GROUPREF and av in groups else []


def _class_chars(items: Any) -> list[str]:
    negate = bool(items) and items[0][0] is sre.NEGATE
    body = items[1:] if negate else items
    pool = list(_POOL)
    for op, av in body:
        if op is sre.LITERAL:
            pool.insert(0, chr(av))
        elif op is sre.RANGE:
            pool.insert(0, chr(av[0]))
    chosen = [c for c in dict.fromkeys(pool) if _in_class(c, body) != negate]
    return chosen[:2]


def _in_class(char: str, body: Any) -> bool:
    for op, av in body:
        if (op is sre.LITERAL and ord(char) == av) or (op is sre.RANGE and av[0] <= ord(char) <= av[1]):
            return True
        test = _CATEGORIES.get(av) if op is sre.CATEGORY else None
        if test is not None and test(char):
            return True
    return False
