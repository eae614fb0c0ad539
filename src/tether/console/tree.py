"""The delegation tree drawn as SVG: a layout of boxes and edges, pure (the template draws it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["TreeLayout", "TreeNode", "layout_tree"]

_ROW = 56
_INDENT = 40
_BOX_W = 360  # at least; wider for longer labels
_CHAR_W = 8  # 13 px monospace
_BOX_H = 40
_PAD = 8


@dataclass(frozen=True, slots=True)
class TreeNode:
    id: str
    label: str
    status: str
    x: int
    y: int
    current: bool
    parent_x: int | None = None
    parent_y: int | None = None


@dataclass(frozen=True, slots=True)
class TreeLayout:
    nodes: tuple[TreeNode, ...]
    width: int
    height: int
    box_width: int = _BOX_W
    box_height: int = _BOX_H


def layout_tree(items: Sequence[tuple[str, str | None, str, str]], current: str) -> TreeLayout:
    """Place ``(id, parent_id, label, status)`` items depth first, each child indented under its
    parent, one row each. Items whose parent is not among them are drawn as roots."""
    known = {item[0] for item in items}
    children: dict[str | None, list[tuple[str, str | None, str, str]]] = {}
    for item in items:
        parent = item[1] if item[1] in known else None
        children.setdefault(parent, []).append(item)
    placed: list[TreeNode] = []
    where: dict[str, tuple[int, int]] = {}
    stack = [(item, 0) for item in reversed(children.get(None, []))]
    while stack:
        (task_id, parent_id, label, status), depth = stack.pop()
        if task_id in where:  # a cycle cannot come from the store; never loop on one
            continue
        x, y = _PAD + depth * _INDENT, _PAD + len(placed) * _ROW
        where[task_id] = (x, y)
        origin = where.get(parent_id) if parent_id is not None else None
        placed.append(
            TreeNode(
                task_id,
                label,
                status,
                x,
                y,
                task_id == current,
                None if origin is None else origin[0] + 12,
                None if origin is None else origin[1] + _BOX_H,
            )
        )
        stack.extend((child, depth + 1) for child in reversed(children.get(task_id, [])))
    deepest = max((node.x for node in placed), default=_PAD)
    box = max([_BOX_W, *(len(node.label) * _CHAR_W + 24 for node in placed)])
    return TreeLayout(tuple(placed), deepest + box + _PAD, _PAD + max(1, len(placed)) * _ROW, box_width=box)
