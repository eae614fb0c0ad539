"""Which parts of the request context a set of policies can read, found in their conditions.

Cedar parses the whole context of every request (~0.4 M instructions for Tether's context, most of
a decision's cost), yet policies typically read a few attributes of it. An attribute no condition
reads cannot change a decision, so a decision hands Cedar only the attributes its policies read:
the same answer, with less to parse.

The analysis is conservative. A read is a chain of attribute accesses on ``context``
(``context.task.purpose``, ``context["mode"]``, ``context has approval``): the chain's value is kept
whole. Any other use of ``context`` (``context == {...}``, a ``context`` inside an ``if``, in a
record or a set, as a function argument) keeps the whole context. An attribute a policy reads but
the request lacks is still absent, so Cedar answers exactly as it would with everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Projection", "context_projection", "project"]

# For each attribute kept: None keeps its whole value; a nested projection keeps part of a record.
Projection = Mapping[str, "Projection | None"]

_ACCESS = (".", "has")


class _WholeContextError(Exception):
    """``context`` is used other than through attribute access: keep it whole."""


def _chain(node: Mapping[str, Any]) -> tuple[list[str], Any]:
    """Unwind ``a.b.c`` (or ``a.b has c``) into (["b", "c"], the base expression of ``a``)."""
    attrs: list[str] = []
    current: Any = node
    while isinstance(current, Mapping) and len(current) == 1:
        kind = next(iter(current))
        if kind not in _ACCESS:
            break
        inner = current[kind]
        if not isinstance(inner, Mapping) or not isinstance(inner.get("attr"), str):
            break
        attrs.append(inner["attr"])
        current = inner.get("left")
    attrs.reverse()
    return attrs, current


def _is_context(node: Any) -> bool:
    return isinstance(node, Mapping) and len(node) == 1 and node.get("Var") == "context"


def _reads(node: Any, found: set[tuple[str, ...]], tested: set[tuple[str, ...]]) -> None:
    """Add to ``found`` every attribute path of ``context`` read in ``node`` (an EST expression),
    and to ``tested`` those only tested for presence (``has``)."""
    if isinstance(node, list):
        for item in node:
            _reads(item, found, tested)
        return
    if not isinstance(node, Mapping):
        return
    if _is_context(node):
        raise _WholeContextError
    if len(node) == 1 and next(iter(node)) in _ACCESS:
        attrs, base = _chain(node)
        if attrs and _is_context(base):
            (tested if "has" in node else found).add(tuple(attrs))
            return
    for value in node.values():
        _reads(value, found, tested)


def context_projection(ests: Iterable[Mapping[str, Any]]) -> Projection | None:
    """The context attributes policies (their EST JSON) can read; None when they may read all of it."""
    paths: set[tuple[str, ...]] = set()
    tested: set[tuple[str, ...]] = set()
    try:
        for est in ests:
            _reads(est.get("conditions", []), paths, tested)
    except _WholeContextError:
        return None
    tree: dict[str, Any] = {}
    # Shorter paths first, so a value kept whole is never narrowed again; a value only tested for
    # presence is kept as an empty record (or as it is, when it is no record) unless also read.
    for path, whole in sorted([(p, True) for p in paths] + [(p, False) for p in tested], key=_by_length):
        node = tree
        for attr in path[:-1]:
            child = node.setdefault(attr, {})
            if child is None:
                break
            node = child
        else:
            if whole:
                node[path[-1]] = None
            else:
                node.setdefault(path[-1], {})
    return tree


def _by_length(item: tuple[tuple[str, ...], bool]) -> int:
    return len(item[0])


def project(context: Mapping[str, Any], projection: Projection) -> dict[str, Any]:
    """The part of ``context`` that ``projection`` keeps."""
    kept: dict[str, Any] = {}
    for attr, inner in projection.items():
        if attr in context:
            value = context[attr]
            kept[attr] = project(value, inner) if inner is not None and isinstance(value, Mapping) else value
    return kept
