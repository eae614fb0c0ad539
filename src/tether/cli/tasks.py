"""``tether task``, ``tether approval`` and ``tether revoke``: watch the governed path and act on it.

Operators list and inspect tasks (with their grants), revoke a task, decide the approvals that
policy asks for, and revoke in an emergency: a task, every task of an agent, or every grant of
a secret. Nothing here ever handles a secret value.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree as RichTree

from tether.cli.client import DEFAULT_ADDR, OperatorClient, check_secret_path, url_segment
from tether.cli.common import Addr, Json, Token, client
from tether.cli.output import EXIT_USAGE, CommandError, format_time, out, print_json, print_table

__all__ = ["approval_app", "revoke", "task_app"]

task_app = typer.Typer(help="Tasks: what agents are doing, with what, until when.", no_args_is_help=True)
approval_app = typer.Typer(help="Approvals: human decisions that policy asks for.", no_args_is_help=True)


class TaskStatusChoice(StrEnum):
    pending_approval = "pending_approval"
    active = "active"
    completed = "completed"
    failed = "failed"
    revoked = "revoked"
    expired = "expired"


class ApprovalStatusChoice(StrEnum):
    pending = "pending"
    approved = "approved"
    denied = "denied"
    expired = "expired"
    voided = "voided"


def check_id(value: str, prefix: str, what: str) -> str:
    """``value`` if it is a well-formed ``<prefix>_`` id, else a usage error (before any URL is built)."""
    from tether.domain.tasks import validate_id
    from tether.errors import InvalidInputError

    try:
        return validate_id(value, prefix, what)
    except InvalidInputError:
        raise CommandError(
            f"invalid {what} {value[:80]!r}: expected {prefix}_ followed by 22-43 URL-safe characters",
            EXIT_USAGE,
        ) from None


def _task_url(task_id: str, suffix: str = "") -> str:
    return f"/v1/tasks/{url_segment(check_id(task_id, 'tsk', 'task id'))}{suffix}"


def _approval_url(approval_id: str, suffix: str = "") -> str:
    return f"/v1/approvals/{url_segment(check_id(approval_id, 'apr', 'approval id'))}{suffix}"


def _agent_name(agent_id: str) -> str:
    """``spiffe://td/agent/ci`` is shown as ``ci``; anything else as it is."""
    _, sep, name = agent_id.partition("/agent/")
    return name if sep and agent_id.startswith("spiffe://") and name else agent_id


def _paged(
    api: OperatorClient, url: str, params: dict[str, Any], all_pages: bool
) -> tuple[list[dict[str, Any]], str | None]:
    items: list[dict[str, Any]] = []
    while True:
        page = api.get(url, params=params)
        items.extend(page["items"])
        next_after = page.get("next_after")
        if not all_pages or next_after is None:
            return items, next_after
        params = {**params, "after": next_after}


def _more(kind: str, next_after: str | None) -> None:
    if next_after is not None:
        out.print(f"More {kind} follow: pass --all, or --after {escape(str(next_after))}.")


def _ended(result: dict[str, Any]) -> str:
    tasks = len(result.get("tasks_ended") or [])
    grants = result.get("grants_revoked", 0)
    return (
        f"{tasks} task{'s' if tasks != 1 else ''} ended, {grants} grant{'s' if grants != 1 else ''} revoked"
    )


Limit = Annotated[int, typer.Option(min=1, max=1000, help="Items per page.")]
All = Annotated[bool, typer.Option("--all", help="Follow every page.")]
Reason = Annotated[str, typer.Option("--reason", metavar="TEXT", help="Why (audited).")]
RequiredReason = Annotated[
    str, typer.Option("--reason", metavar="TEXT", help="Why (required, audited).", show_default=False)
]


# -- tasks ---------------------------------------------------------------------------------------
class TaskSort(StrEnum):
    newest = "newest"
    oldest = "oldest"
    expires = "expires"
    id = "id"


def _when(value: object) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# How each order ranks a task; ties are broken by id, so the order is stable.
_SORT_KEYS: dict[TaskSort, Callable[[dict[str, Any]], tuple[datetime, str]]] = {
    TaskSort.newest: lambda t: (_when(t.get("created_at")), t["id"]),
    TaskSort.oldest: lambda t: (_when(t.get("created_at")), t["id"]),
    TaskSort.expires: lambda t: (_when(t.get("expires_at")), t["id"]),
}
_PAGE = 1000


@task_app.command("list")
def task_list(
    agent: Annotated[
        str | None,
        typer.Option("--agent", metavar="NAME", help="Only this agent's tasks (name or SPIFFE ID)."),
    ] = None,
    status: Annotated[
        list[TaskStatusChoice] | None,
        typer.Option(
            "--status", metavar="STATUS", help="Only tasks in this status (repeatable).", show_default=False
        ),
    ] = None,
    sort: Annotated[
        TaskSort,
        typer.Option(
            "--sort",
            help="newest or oldest (creation time), expires (soonest first), or id (the server's "
            "order, paged with --after).",
        ),
    ] = TaskSort.newest,
    limit: Limit = 100,
    after: Annotated[
        str | None, typer.Option(help="Start after this task id (paging; with --sort id).")
    ] = None,
    all_pages: All = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Tasks, newest first by default, filtered by agent and status."""
    params: dict[str, Any] = {"limit": limit}
    if agent is not None:
        params["agent"] = agent
    if status:
        params["status"] = sorted({s.value for s in status})
    if after is not None:
        if sort is not TaskSort.id:
            raise CommandError("--after pages in id order: use it with --sort id", EXIT_USAGE)
        params["after"] = check_id(after, "tsk", "task id")
    with client(addr, token) as api:
        if sort is TaskSort.id:
            items, next_after = _paged(api, "/v1/tasks", params, all_pages)
            hidden = 0
        else:
            # The server pages in id order: read every matching task, then order them here.
            everything, _ = _paged(api, "/v1/tasks", {**params, "limit": _PAGE}, True)
            everything.sort(key=_SORT_KEYS[sort], reverse=sort is TaskSort.newest)
            items = everything if all_pages else everything[:limit]
            next_after, hidden = None, len(everything) - len(items)
    if json_output:
        print_json({"items": items, "next_after": next_after})
        return
    if not items:
        out.print("No tasks.")
        return
    print_table(
        None,
        ["ID", "AGENT", "STATUS", "PURPOSE", "SENSITIVITY", "DEPTH", "CREATED", "EXPIRES"],
        [
            (
                t["id"],
                _agent_name(t["agent"]),
                t["status"],
                t["purpose"],
                t["sensitivity"],
                t.get("depth", 0),
                format_time(t.get("created_at")),
                format_time(t.get("expires_at")),
            )
            for t in items
        ],
    )
    _more("tasks", next_after)
    if hidden:
        out.print(f"{hidden} more task(s): pass --all, or a larger --limit.")


def _print_task(task: dict[str, Any], grants: list[dict[str, Any]]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, object]] = [
        ("id", task["id"]),
        ("agent", task["agent"]),
        ("status", task["status"] + (f" ({task['end_reason']})" if task.get("end_reason") else "")),
        ("purpose", task["purpose"]),
        ("objective", task["objective"]),
        ("sensitivity", task["sensitivity"]),
        ("secrets", ", ".join(task.get("secrets") or []) or "-"),
        ("destinations", ", ".join(task.get("destinations") or []) or "-"),
        ("tools", ", ".join(task.get("tools") or []) or "-"),
        ("created", format_time(task.get("created_at"))),
        ("expires", format_time(task.get("expires_at"))),
        ("ended", format_time(task.get("ended_at")) or "-"),
        ("parent", task.get("parent_id") or "-"),
        ("depth", task.get("depth", 0)),
    ]
    if task.get("approval_id"):
        rows.append(("approval", task["approval_id"]))
    for label, shown in rows:
        grid.add_row(label, escape(str(shown)))
    out.print(grid)
    if not grants:
        out.print("No grants.")
        return
    print_table(
        "Grants",
        ["ID", "MODE", "SECRET", "DESTINATION", "STATUS", "USES", "EXPIRES"],
        [
            (
                g["id"],
                g["mode"],
                g.get("secret") or "-",
                g.get("destination") or "-",
                g["status"] + (f" ({g['revoke_reason']})" if g.get("revoke_reason") else ""),
                f"{g['uses']}/{g['max_uses']}" if g.get("max_uses") is not None else str(g["uses"]),
                format_time(g.get("expires_at")),
            )
            for g in grants
        ],
    )


@task_app.command("show")
def task_show(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="Task id (tsk_…).")],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """A task: its intent, status and lifetime, and every grant issued in it."""
    url = _task_url(task_id)
    with client(addr, token) as api:
        task = api.get(url)
        grants = api.get(url + "/grants")["items"]
    if json_output:
        print_json({"task": task, "grants": grants})
        return
    _print_task(task, grants)


@task_app.command("tree")
def task_tree(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="Any task of the tree (tsk_…).")],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """The delegation tree a task belongs to, root first, each task with its agent and state."""
    url = _task_url(task_id, "/tree")
    with client(addr, token) as api:
        tree = api.get(url)
    if json_output:
        print_json(tree)
        return
    items: list[dict[str, Any]] = tree["items"]
    children: dict[str | None, list[dict[str, Any]]] = {}
    for item in items:
        children.setdefault(item.get("parent_id"), []).append(item)
    rich_tree = RichTree(_tree_label(children[None][0], task_id) if None in children else escape(task_id))

    def add(node: RichTree, parent_id: str) -> None:
        for child in children.get(parent_id, []):
            add(node.add(_tree_label(child, task_id)), child["id"])

    if None in children:
        add(rich_tree, children[None][0]["id"])
    out.print(rich_tree)


def _tree_label(item: dict[str, Any], marked: str) -> str:
    status = item["status"]
    colour = {"active": "green", "pending_approval": "yellow"}.get(status, "dim")
    mark = " [bold]◀[/]" if item["id"] == marked else ""
    scope = ", ".join(item.get("secrets") or []) or "no secrets"
    return (
        f"{escape(item['id'])} [{colour}]{escape(status)}[/] {escape(_agent_name(item['agent']))} "
        f"(depth {item['depth']}, {escape(item['sensitivity'])}; {escape(scope)}){mark}"
    )


@task_app.command("revoke")
def task_revoke(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="Task id (tsk_…).")],
    reason: Reason = "",
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Revoke a task: it and its sub-tasks end, and everything issued for them stops working."""
    url = _task_url(task_id, "/revoke")
    with client(addr, token) as api:
        result = api.post(url, json={"reason": reason})
    if json_output:
        print_json(result)
        return
    out.print(f"Revoked task {escape(task_id)}: {_ended(result)}.")


# -- approvals -----------------------------------------------------------------------------------
@approval_app.command("list")
def approval_list(
    status: Annotated[
        list[ApprovalStatusChoice] | None,
        typer.Option("--status", help="Only approvals in this status (repeatable; default pending)."),
    ] = None,
    limit: Limit = 100,
    after: Annotated[str | None, typer.Option(help="Start after this approval id (paging).")] = None,
    all_pages: All = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Approvals in id order, a page at a time; by default the pending ones."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = sorted({s.value for s in status})
    if after is not None:
        params["after"] = check_id(after, "apr", "approval id")
    with client(addr, token) as api:
        items, next_after = _paged(api, "/v1/approvals", params, all_pages)
    if json_output:
        print_json({"items": items, "next_after": next_after})
        return
    if not items:
        out.print("No approvals." if status else "No pending approvals.")
        return
    print_table(
        None,
        ["ID", "TASK", "AGENT", "ACTION", "RESOURCE", "STATUS", "EXPIRES"],
        [
            (
                a["id"],
                a["task_id"],
                _agent_name(a["agent"]),
                a["action"],
                a["resource"],
                a["status"],
                format_time(a.get("expires_at")),
            )
            for a in items
        ],
    )
    _more("approvals", next_after)


@approval_app.command("show")
def approval_show(
    approval_id: Annotated[str, typer.Argument(metavar="ID", help="Approval id (apr_…).")],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """One approval: the task, action and resource it is bound to, and its decision."""
    url = _approval_url(approval_id)
    with client(addr, token) as api:
        result = api.get(url)
    if json_output:
        print_json(result)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, shown in (
        ("id", result["id"]),
        ("task", result["task_id"]),
        ("agent", result["agent"]),
        ("action", result["action"]),
        ("resource", result["resource"]),
        ("status", result["status"]),
        ("policies", ", ".join(result.get("policies") or []) or "-"),
        ("requested", format_time(result.get("requested_at"))),
        ("expires", format_time(result.get("expires_at"))),
        ("decided", format_time(result.get("decided_at")) or "-"),
        ("decided by", result.get("decided_by") or "-"),
        ("reason", result.get("reason") or "-"),
    ):
        grid.add_row(label, escape(str(shown)))
    out.print(grid)


def _decide(verb: str, describe: Callable[[dict[str, Any]], str]) -> Callable[..., None]:
    def command(
        approval_id: Annotated[str, typer.Argument(metavar="ID", help="Approval id (apr_…).")],
        reason: RequiredReason,
        addr: Addr = DEFAULT_ADDR,
        token: Token = None,
        json_output: Json = False,
    ) -> None:
        if not reason.strip():
            raise CommandError("--reason must not be empty", EXIT_USAGE)
        url = _approval_url(approval_id, f"/{verb}")
        with client(addr, token) as api:
            result = api.post(url, json={"reason": reason})
        if json_output:
            print_json(result)
            return
        out.print(describe(result))

    return command


def _approved(a: dict[str, Any]) -> str:
    return (
        f"Approved {escape(a['id'])}: {escape(a['action'])} on {escape(a['resource'])} "
        f"for task {escape(a['task_id'])}, until {format_time(a.get('expires_at'))} "
        "or until the task's context changes."
    )


def _denied(a: dict[str, Any]) -> str:
    return (
        f"Denied {escape(a['id'])}: {escape(a['action'])} on {escape(a['resource'])} "
        f"for task {escape(a['task_id'])}."
    )


approval_app.command(
    "approve",
    help="Approve: the request it is bound to is allowed until the approval expires or the task's "
    "context changes.",
)(_decide("approve", _approved))
approval_app.command("deny", help="Deny: a task that waits for this approval to open is revoked.")(
    _decide("deny", _denied)
)


# -- emergency revocation ------------------------------------------------------------------------
def revoke(
    task: Annotated[
        str | None,
        typer.Option("--task", metavar="ID", help="A task (and its sub-tasks).", show_default=False),
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent",
            metavar="NAME",
            help="Every live task of an agent (name or SPIFFE ID).",
            show_default=False,
        ),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option("--secret", metavar="PATH", help="Every live grant of a secret.", show_default=False),
    ] = None,
    reason: Reason = "",
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Emergency revocation: give exactly one of --task, --agent and --secret. What is revoked
    stops working at once, on every node."""
    if sum(value is not None for value in (task, agent, secret)) != 1:
        raise CommandError("give exactly one of --task, --agent and --secret", EXIT_USAGE)
    body: dict[str, Any] = {"reason": reason}
    if task is not None:
        body["task"] = check_id(task, "tsk", "task id")
        target = f"task {task}"
    elif agent is not None:
        if not agent:
            raise CommandError("--agent needs an agent name or id", EXIT_USAGE)
        body["agent"] = agent
        target = f"agent {agent}"
    else:
        assert secret is not None
        body["secret"] = check_secret_path(secret)
        target = f"secret {secret}"
    with client(addr, token) as api:
        result = api.post("/v1/revocations", json=body)
    if json_output:
        print_json(result)
        return
    out.print(f"Revoked {escape(target)}: {_ended(result)}.")
