"""Policy as code: the Cedar schema, compiled and indexed policy sets, decisions, tests and explanations.

Pure: no I/O. Storage and deployment of policy sets live elsewhere.
"""

from __future__ import annotations

from tether.domain.decision import Decision
from tether.policy.cases import CaseReport, run_cases
from tether.policy.compile import MAX_POLICY_TEXT_BYTES, PolicyValidationError, compile_policy_set
from tether.policy.engine import CompiledPolicySet
from tether.policy.explain import explain
from tether.policy.request import DecisionRequest, Entity
from tether.policy.schema import ACTIONS, RESOURCE_TYPES, SCHEMA_TEXT

__all__ = [
    "ACTIONS",
    "MAX_POLICY_TEXT_BYTES",
    "RESOURCE_TYPES",
    "SCHEMA_TEXT",
    "CaseReport",
    "CompiledPolicySet",
    "Decision",
    "DecisionRequest",
    "Entity",
    "PolicyValidationError",
    "compile_policy_set",
    "explain",
    "run_cases",
]
