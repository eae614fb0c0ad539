"""Human explanations of decisions."""

from __future__ import annotations

from tether.domain.decision import Decision

__all__ = ["explain"]


def _ids(policies: tuple[str, ...]) -> str:
    return ", ".join(policies)


def explain(decision: Decision) -> str:
    """Say in one or two lines why ``decision`` came out as it did.

    Args:
        decision: Any decision.

    Returns:
        Text for people (CLI output, logs for operators).
    """
    if decision.allowed:
        return f"allowed by {_ids(decision.policies)}"
    if decision.errors:
        first = f"denied: policy evaluation failed, so the answer is deny (fail closed): {decision.errors[0]}"
        more = len(decision.errors) - 1
        return first if not more else f"{first}\n  and {more} more error{'s' if more > 1 else ''}"
    if decision.missing:
        line = f"denied: {_ids(decision.missing)} required"
        if decision.policies:
            line += f"; {_ids(decision.policies)} would allow it with {_ids(decision.missing)}"
        return line
    if decision.policies:
        return f"denied by {_ids(decision.policies)}"
    return "denied: no policy permits this request (default deny)"
