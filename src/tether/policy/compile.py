"""Compile a Cedar policy set: parse the text, insist on a unique, well-formed ``@id`` per policy
(so explanations name what users wrote), validate it against
:data:`~tether.policy.schema.SCHEMA_TEXT`, and build the :class:`~tether.policy.engine.CompiledPolicySet`
that decides.

Refusals are :class:`PolicyValidationError` with every reason, naming policies by ``@id``; a text
that does not parse is located (line, column) for the message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import cedarpy

from tether.errors import InvalidInputError
from tether.policy.engine import _SCHEMA, CompiledPolicySet, _clip, _Policy
from tether.policy.schema import ACTIONS, RESOURCE_TYPES
from tether.policy.syntax import locate_parse_error

__all__ = ["MAX_NESTING", "MAX_POLICY_TEXT_BYTES", "PolicyValidationError", "compile_policy_set"]

MAX_POLICY_TEXT_BYTES: Final = 1024 * 1024
_POLICY_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CEDAR_ID: Final = re.compile(r"\bpolicy(\d+)\b")
_ALL_TYPES: Final = frozenset(t for types in RESOURCE_TYPES.values() for t in types)


class PolicyValidationError(InvalidInputError):
    """A policy set was refused; ``messages`` holds every reason, naming policies by ``@id``."""

    def __init__(self, messages: Sequence[str]) -> None:
        self.messages: list[str] = list(messages) or ["policy set is invalid"]
        super().__init__("invalid policy set: " + "; ".join(self.messages[:5]), field="policies")


def _scope_actions(scope: Mapping[str, Any]) -> frozenset[str]:
    op = scope.get("op")
    if op == "All":
        return frozenset(ACTIONS)
    if op == "==":
        return frozenset({scope["entity"]["id"]})
    if op == "in":
        entities = scope["entities"] if "entities" in scope else [scope["entity"]]
        return frozenset(entity["id"] for entity in entities)
    return frozenset(ACTIONS)  # unknown shape: assume it can apply (never drop a forbid)


def _scope_principal(scope: Mapping[str, Any]) -> str | None:
    if scope.get("op") == "==" and "entity" in scope and scope["entity"].get("type") == "Agent":
        return str(scope["entity"]["id"])
    return None  # All, `is`, `in` (hierarchy) or unknown shape: any principal


def _scope_resource(scope: Mapping[str, Any]) -> tuple[frozenset[str], str | None]:
    op = scope.get("op")
    if op == "==" and "entity" in scope:
        return frozenset({scope["entity"]["type"]}), scope["entity"]["id"]
    if op == "is":
        return frozenset({scope["entity_type"]}), None
    return _ALL_TYPES, None  # All, `in` (hierarchy), or unknown shape: any type


MAX_NESTING = 64
_UNARY = frozenset("!-")


def _check_nesting(text: str) -> None:
    """Refuse deeply nested expressions before Cedar sees them: its parser overflows the native
    stack (killing the process, not raising) at a few hundred levels. Strings and comments are
    skipped; brackets and chains of unary operators count as nesting."""
    depth = deepest = unary = 0
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif char == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
        if char in _UNARY:
            unary += 1
        elif not char.isspace():
            unary = 0
        if deepest > MAX_NESTING or unary > MAX_NESTING:
            raise PolicyValidationError([f"policies nest deeper than {MAX_NESTING} levels"])
        i += 1


def compile_policy_set(text: str) -> CompiledPolicySet:
    """Parse, check and index a Cedar policy set.

    Args:
        text: Cedar policies; each must carry a unique ``@id("...")`` matching ``[A-Za-z0-9._:-]{1,128}``.

    Returns:
        The compiled set. An empty set, or one without a ``permit``, denies everything.

    Raises:
        InvalidInputError: ``text`` is not a string, not valid Unicode, or larger than 1 MiB.
        PolicyValidationError: the text does not parse, an ``@id`` is missing, ill-formed or repeated,
            or the set fails validation against the schema.
    """
    if not isinstance(text, str):
        raise InvalidInputError("policies must be Cedar text", field="policies")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInputError("policy text is not valid Unicode", field="policies") from None
    if size > MAX_POLICY_TEXT_BYTES:
        raise InvalidInputError("policy text is larger than 1 MiB", field="policies")
    _check_nesting(text)
    try:
        document = json.loads(cedarpy.policies_to_json_str(text))
    except Exception as exc:  # noqa: BLE001 - any parser failure is a refusal with its message
        raise PolicyValidationError([_clip(_parse_failure(text, exc))]) from None
    if document.get("templates"):
        raise PolicyValidationError(["policy templates (?principal / ?resource) are not supported"])
    statics: dict[str, Any] = document.get("staticPolicies", {})
    ordered = sorted(statics.items(), key=lambda item: _policy_number(item[0]))
    messages: list[str] = []
    names = _check_ids(ordered, messages)
    result = cedarpy.validate_policies(text, _SCHEMA)
    if not result.validation_passed:
        for error in result.errors:
            message = _CEDAR_ID.sub(
                lambda match: names.get(match.group(0), f"policy #{int(match.group(1)) + 1}"), str(error)
            )
            messages.append(_clip(message))
    if messages:
        raise PolicyValidationError(messages)
    policies = []
    for position, (cedar_id, est) in enumerate(ordered):
        resource_types, resource_id = _scope_resource(est.get("resource", {}))
        policies.append(
            _Policy(
                position=position,
                id=names[cedar_id],
                effect=est["effect"],
                est=est,
                actions=_scope_actions(est.get("action", {})),
                resource_types=resource_types,
                resource_id=resource_id,
                principal_id=_scope_principal(est.get("principal", {})),
            )
        )
    return CompiledPolicySet(text, policies)


def _parse_message(text: str) -> str | None:
    try:
        cedarpy.policies_to_json_str(text)
    except Exception as exc:  # noqa: BLE001 - the parser's refusal is the answer
        return str(exc)
    return None


def _parse_failure(text: str, exc: Exception) -> str:
    """``policies do not parse: line L, column C: <Cedar's message> (at `<text there>`)``; Cedar
    gives no position, so it is found by parsing again (see :mod:`tether.policy.syntax`)."""
    location = locate_parse_error(text, _parse_message)
    if location is None:
        return f"policies do not parse: {exc}"
    return (
        f"policies do not parse: line {location.line}, column {location.column}: {exc} (at `{location.text}`)"
    )


def _policy_number(cedar_id: str) -> int:
    match = re.fullmatch(r"policy(\d+)", cedar_id)
    return int(match.group(1)) if match else 0


def _describe(est: Mapping[str, Any]) -> str:
    """A short, recognisable summary of a policy for messages about it: its effect and actions."""
    actions = sorted(_scope_actions(est.get("action", {})))
    scope = "any action" if len(actions) == len(ACTIONS) else "action " + "|".join(actions)
    return f"{est.get('effect', '?')}, {scope}"


def _check_ids(ordered: Sequence[tuple[str, Any]], messages: list[str]) -> dict[str, str]:
    """Map Cedar's positional ids (``policyN``) to each policy's ``@id``; append refusals to ``messages``."""
    names: dict[str, str] = {}
    seen: set[str] = set()
    for position, (cedar_id, est) in enumerate(ordered, start=1):
        annotations = est.get("annotations") or {}
        name = annotations.get("id")
        where = f"policy #{position} ({_describe(est)})"
        if name is None:
            messages.append(f'{where} has no @id("...") annotation; every policy needs one')
        elif not isinstance(name, str) or not _POLICY_ID.fullmatch(name):
            messages.append(f"{where} has an ill-formed @id {name!r}: use 1-128 of A-Z a-z 0-9 . _ : -")
        elif name in seen:
            messages.append(f"@id {name!r} is used by more than one policy ({where} repeats it)")
        else:
            seen.add(name)
            names[cedar_id] = name
    return names
