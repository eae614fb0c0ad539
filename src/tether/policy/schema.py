"""The Cedar schema policies are written against (DESIGN.md, Policy), and the actions."""

from __future__ import annotations

from typing import Final

__all__ = ["ACTIONS", "RESOURCE_TYPES", "SCHEMA_TEXT"]

ACTIONS: Final = ("open_task", "issue", "activate", "delegate", "call_tool")

# Extend, do not rename: policies in the field depend on these names.
SCHEMA_TEXT: Final = """\
entity Agent = { team: String, environment: String, owner: String, labels: Set<String> };
entity Secret = { path: String, sensitivity: Long, purposes: Set<String>, destinations: Set<String>,
  owner: String };
entity Destination = { host: String };
entity Tool = { server: String, name: String };
type TaskCtx = { id: String, purpose: String, objective_sha256: String, sensitivity: Long,
  secrets: Set<String>, destinations: Set<String>, tools: Set<String>, depth: Long, chain: Set<String>,
  age_seconds: Long, remaining_seconds: Long };
type Req = { method: String, path: String };
type Ctx = { task: TaskCtx, approval: Bool, mode: String, destination: String, request: Req, uses: Long,
  arguments?: Set<String> };
action open_task, delegate appliesTo { principal: Agent, resource: Agent, context: Ctx };
action issue, activate appliesTo { principal: Agent, resource: [Secret, Destination], context: Ctx };
action call_tool appliesTo { principal: Agent, resource: Tool, context: Ctx };
"""

# Which resource types each action applies to, per the schema above.
RESOURCE_TYPES: Final[dict[str, tuple[str, ...]]] = {
    "open_task": ("Agent",),
    "delegate": ("Agent",),
    "issue": ("Secret", "Destination"),
    "activate": ("Secret", "Destination"),
    "call_tool": ("Tool",),
}
