"""What a decision is asked about: entities and the request, validated when built."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tether.errors import InvalidInputError
from tether.policy.schema import ACTIONS, RESOURCE_TYPES

__all__ = ["ENTITY_TYPES", "DecisionRequest", "Entity"]

ENTITY_TYPES = ("Agent", "Secret", "Destination", "Tool")
MAX_ENTITY_ID_LENGTH = 1024
_ENTITY_ID = re.compile(r"[^\x00-\x1f\x7f]+")


@dataclass(frozen=True, slots=True)
class Entity:
    """A Cedar entity: ``Agent``, ``Secret``, ``Destination`` or ``Tool``.

    Attributes:
        type: The entity type, one of :data:`ENTITY_TYPES`.
        id: The entity id (a SPIFFE ID, a secret path, a destination or tool name).
        attributes: The attributes the schema declares for ``type``; checked by Cedar at decision time
            (a mismatch is an error, so a deny).
        parents: ``(type, id)`` pairs of the entity's parents.
    """

    type: str
    id: str
    attributes: Mapping[str, Any] = field(default_factory=dict, hash=False)
    parents: tuple[tuple[str, str], ...] = ()
    _json: str | None = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.type not in ENTITY_TYPES:
            raise InvalidInputError(f"entity type must be one of {'|'.join(ENTITY_TYPES)}", field="type")
        if (
            not isinstance(self.id, str)
            or len(self.id) > MAX_ENTITY_ID_LENGTH
            or not _ENTITY_ID.fullmatch(self.id)
        ):
            raise InvalidInputError(
                f"entity id must be 1-{MAX_ENTITY_ID_LENGTH} printable characters", field="id"
            )
        if not isinstance(self.attributes, Mapping) or not all(isinstance(k, str) for k in self.attributes):
            raise InvalidInputError(
                "entity attributes must be a mapping with string keys", field="attributes"
            )
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))
        parents = tuple(self.parents)
        for parent in parents:
            if (
                not isinstance(parent, tuple)
                or len(parent) != 2
                or parent[0] not in ENTITY_TYPES
                or not isinstance(parent[1], str)
                or not parent[1]
            ):
                raise InvalidInputError("entity parents must be (type, id) pairs", field="parents")
        object.__setattr__(self, "parents", parents)

    @property
    def uid(self) -> tuple[str, str]:
        """The entity's ``(type, id)``."""
        return (self.type, self.id)

    def cedar_json(self) -> str:
        """The entity in Cedar's JSON entity format, as text; built once per entity (an entity is a
        value: the broker builds it from one stored row and never changes it)."""
        text = self._json
        if text is None:
            text = json.dumps(self.to_cedar())
            object.__setattr__(self, "_json", text)
        return text

    def to_cedar(self) -> dict[str, Any]:
        """The entity in Cedar's JSON entity format."""
        return {
            "uid": {"type": self.type, "id": self.id},
            "attrs": {key: to_cedar_value(value) for key, value in self.attributes.items()},
            "parents": [{"type": kind, "id": ident} for kind, ident in self.parents],
        }


def json_default(value: Any) -> Any:
    """``json.dumps`` hook: sets become lists, other mappings dicts; anything else is refused."""
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not a Cedar value")


def to_cedar_value(value: Any) -> Any:
    """Turn Python values into Cedar JSON values (sets and tuples become lists)."""
    if isinstance(value, Mapping):
        return {str(key): to_cedar_value(item) for key, item in value.items()}
    if isinstance(value, set | frozenset | tuple | list):
        return [to_cedar_value(item) for item in value]
    return value


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    """One question for the policy set: may ``principal`` do ``action`` on ``resource`` in ``context``?

    Attributes:
        principal: The acting agent (type ``Agent``).
        action: One of :data:`tether.policy.ACTIONS`.
        resource: The entity acted on; its type must be one the action applies to.
        context: The ``Ctx`` record of the schema: ``task``, ``approval``, ``mode``, ``destination``,
            ``request`` (``method``, ``path``) and ``uses``. Its shape is checked by Cedar against the
            schema at decision time; a mismatch is an error, so a deny.
        entities: Further entities the policies may refer to (e.g. parents).
    """

    principal: Entity
    action: str
    resource: Entity
    context: Mapping[str, Any] = field(default_factory=dict, hash=False)
    entities: Sequence[Entity] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.principal, Entity) or self.principal.type != "Agent":
            raise InvalidInputError("principal must be an Agent entity", field="principal")
        if self.action not in ACTIONS:
            raise InvalidInputError(f"action must be one of {'|'.join(ACTIONS)}", field="action")
        if not isinstance(self.resource, Entity) or self.resource.type not in RESOURCE_TYPES[self.action]:
            allowed = "|".join(RESOURCE_TYPES[self.action])
            raise InvalidInputError(f"resource of {self.action} must be of type {allowed}", field="resource")
        if not isinstance(self.context, Mapping) or not all(isinstance(k, str) for k in self.context):
            raise InvalidInputError("context must be a mapping with string keys", field="context")
        object.__setattr__(self, "context", MappingProxyType(dict(self.context)))
        entities = tuple(self.entities)
        if not all(isinstance(entity, Entity) for entity in entities):
            raise InvalidInputError("entities must be Entity values", field="entities")
        object.__setattr__(self, "entities", entities)
