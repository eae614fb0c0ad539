"""``tether audit``: verify (live or an export, offline), query, tail, export, checkpoint, hash."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tether.cli.client import DEFAULT_ADDR, APIError, OperatorClient, check_secret_path, url_segment
from tether.cli.common import Addr, FromFile, Json, Stdin, Token, client, read_value
from tether.cli.output import EXIT_FAILURE, EXIT_USAGE, CommandError, err, out, print_json, print_table

__all__ = ["audit_app"]

audit_app = typer.Typer(
    help="The tamper-evident audit log: verify, query, tail, export, checkpoints, fingerprints.",
    no_args_is_help=True,
)

# The API's largest page (``tether.audit.MAX_QUERY_LIMIT``), used when paging through everything.
_PAGE = 1000
# Offline verification shows a progress bar for files at least this large (on a terminal).
_PROGRESS_BYTES = 4 * 1024 * 1024
_POLL_SECONDS = 1.0

_COLUMNS = ["SEQ", "TIME", "KIND", "ACTOR", "RESOURCE", "DECISION / REASON", "DETAIL"]


# -- rendering --------------------------------------------------------------------------


def _event_time(event: dict[str, Any]) -> str:
    micros = event.get("time_us")
    if not isinstance(micros, int):
        return ""
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _event_actor(event: dict[str, Any]) -> str:
    actor = event.get("actor")
    if isinstance(actor, dict):
        return f"{actor.get('type', '?')}:{actor.get('id', '?')}"
    return "?"


def _event_outcome(event: dict[str, Any]) -> str:
    """The decision with the policies that made it and what is missing, then the reason."""
    parts: list[str] = []
    decision = event.get("decision")
    if isinstance(decision, dict):
        allowed = bool(decision.get("allowed"))
        policies = [str(p) for p in decision.get("policies") or []]
        if policies:
            parts.append(f"{'allowed' if allowed else 'DENIED'} by {', '.join(policies)}")
        else:
            parts.append("allowed" if allowed else "DENIED (no policy permits it: default deny)")
        missing = decision.get("missing") or []
        if missing:
            parts.append("missing " + ", ".join(str(m) for m in missing))
        errors = decision.get("errors") or []
        if errors:
            parts.append(f"{len(errors)} policy error(s)")
    reason = event.get("reason")
    if reason:
        parts.append(str(reason))
    return "; ".join(parts) or "-"


# What the DETAIL column calls some data fields; the rest are shown by their own names.
_DETAIL_LABELS = {
    "value": "value fingerprint",
    "jkt": "key thumbprint",
    "expires_at": "expires",
}
_DETAIL_FIRST = ("value", "jkt", "expires_at")
_DETAIL_ITEM_CHARS = 100
_DETAIL_CHARS = 300


def _detail_value(value: object) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str | int | float):
        text = str(value)
    elif isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        text = ", ".join(str(v) for v in value) or "-"
    else:
        return None  # nested structures stay in --json
    return text if len(text) <= _DETAIL_ITEM_CHARS else text[: _DETAIL_ITEM_CHARS - 1] + "…"


def _event_detail(event: dict[str, Any]) -> str:
    """The event's data in a line: a secret write's value fingerprint, a token's key thumbprint
    and expiry, and so on (never a value: events hold none)."""
    data = event.get("data")
    if not isinstance(data, dict) or not data:
        return "-"
    keys = [k for k in _DETAIL_FIRST if k in data] + sorted(k for k in data if k not in _DETAIL_FIRST)
    parts: list[str] = []
    for key in keys:
        shown = _detail_value(data[key])
        if shown is not None:
            parts.append(f"{_DETAIL_LABELS.get(key, key)} {shown}")
    text = "; ".join(parts) or "-"
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"


def _event_row(event: dict[str, Any]) -> tuple[str, ...]:
    return (
        str(event.get("seq", "?")),
        _event_time(event),
        str(event.get("kind", "?")),
        _event_actor(event),
        str(event.get("resource") or "-"),
        _event_outcome(event),
        _event_detail(event),
    )


def _print_events(events: list[dict[str, Any]]) -> None:
    print_table(None, _COLUMNS, [_event_row(e) for e in events])


def _print_event_line(event: dict[str, Any]) -> None:
    out.print(escape("  ".join(_event_row(event))))


def _print_json_line(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")
    sys.stdout.flush()


# -- verify -----------------------------------------------------------------------------


def _report_verdict(result: dict[str, Any], line: str, json_output: bool) -> None:
    """Print the verdict; exit 1 when the chain is broken."""
    if json_output:
        print_json(result)
    elif result.get("ok"):
        out.print(escape(line))
    else:
        out.print(f"[bold red]FAILED[/] {escape(line)}")
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row("problem", escape(str(result.get("problem"))))
        grid.add_row("first bad seq", escape(str(result.get("first_bad_seq"))))
        grid.add_row("detail", escape(str(result.get("detail") or "-")))
        head = result.get("head_seq") or 0
        grid.add_row("intact", f"events 1..{head}" if head else "none")
        out.print(grid)
    if not result.get("ok"):
        raise typer.Exit(EXIT_FAILURE)


def _remote_line(result: dict[str, Any]) -> str:
    if result.get("ok"):
        line = f"ok: {result.get('checked')} events verified, head seq {result.get('head_seq')}"
        checkpoints = result.get("checkpoints") or 0
        return line + (f", {checkpoints} checkpoint(s) checked" if checkpoints else "")
    return f"{result.get('problem')} at seq {result.get('first_bad_seq')}: {result.get('detail')}"


def _progress_lines(handle: IO[str], size: int) -> Iterator[str]:
    """The lines of ``handle`` with a progress bar on stderr (by bytes read)."""
    columns = (
        TextColumn("Verifying"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("verify", total=size)
        done = 0
        for line in handle:
            done += len(line.encode("utf-8", errors="surrogateescape"))
            if done - progress.tasks[0].completed >= 256 * 1024:
                progress.update(task, completed=done)
            yield line
        progress.update(task, completed=size)


def _verify_file(path: Path, checkpoint_file: Path | None) -> tuple[dict[str, Any], str]:
    from tether.audit import MalformedCheckpointError, load_checkpoint, result_line, verify_events
    from tether.audit.verify import iter_jsonl

    checkpoint = None
    if checkpoint_file is not None:
        try:
            checkpoint = load_checkpoint(checkpoint_file)
        except MalformedCheckpointError as exc:
            raise CommandError(f"checkpoint {checkpoint_file} is not usable: {exc}") from None
    try:
        size = path.stat().st_size
        # As tether.audit.verify_jsonl does, with a progress bar for large files.
        with path.open(encoding="utf-8", errors="surrogateescape") as handle:
            lines: Iterable[str] = handle
            if size >= _PROGRESS_BYTES and err.is_terminal:
                lines = _progress_lines(handle, size)
            result = verify_events(iter_jsonl(lines), checkpoint)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    verdict, line = result.to_json(), result_line(result)
    if checkpoint is not None:
        # Say that the checkpoint was checked, and what it pins: without this line an auditor
        # cannot tell a verification against a checkpoint from one without.
        verdict["checkpoint"] = {
            "seq": checkpoint.seq,
            "head_hash": checkpoint.head_hash.hex(),
            "key_id": checkpoint.key_id,
            "time": checkpoint.time.isoformat(),
        }
        if result.ok:
            line += (
                f"; checkpoint checked: the export matches the checkpoint at seq {checkpoint.seq} "
                f"(head hash {checkpoint.head_hash.hex()[:16]}…, signed {checkpoint.time:%Y-%m-%d %H:%M:%SZ} "
                f"by key {checkpoint.key_id})"
            )
        else:
            line += f" (checked against the checkpoint at seq {checkpoint.seq})"
    return verdict, line


@audit_app.command("verify")
def audit_verify(
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            metavar="EXPORT.jsonl",
            help="Verify this export offline (no server needed), as an auditor would.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            metavar="FILE",
            help="With --file: a checkpoint kept outside Tether; catches truncation and rewritten history.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Check the hash chain and checkpoints: ok, or the first broken seq and why. Exits 1 when broken.

    Without --file, the server walks its live store (and the checkpoints it keeps). With
    --file, an export from `tether audit export` is verified here, offline.
    """
    if file is None:
        if checkpoint is not None:
            raise CommandError(
                "--checkpoint needs --file: export the log (`tether audit export -o FILE`) "
                "and verify the file against your checkpoint",
                EXIT_USAGE,
            )
        with client(addr, token) as api, err.status("Verifying the audit chain…"):
            result = api.get("/v1/audit/verify", timeout=3600.0)
        _report_verdict(result, _remote_line(result), json_output)
        return
    result, line = _verify_file(file, checkpoint)
    if not result["ok"] and result.get("problem") == "malformed" and not json_output:
        raise CommandError(f"{file} is not a well-formed audit export: {line}")
    _report_verdict(result, line, json_output)


# -- query and tail ---------------------------------------------------------------------


def _iso(value: str | None, option: str) -> str | None:
    """An ISO 8601 time for the API; a time without a zone is taken as UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(
            f"{option} must be an ISO 8601 time such as 2025-01-31T12:00:00Z, not {value[:40]!r}", EXIT_USAGE
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.isoformat()


def _pages(
    api: OperatorClient, params: dict[str, Any], after: int, *, follow_all: bool
) -> Iterator[tuple[list[dict[str, Any]], int | None]]:
    """Pages of events from ``after`` on: one page, or every page with ``follow_all``."""
    cursor = after
    while True:
        page = api.get("/v1/audit/events", params={**params, "after": cursor})
        events: list[dict[str, Any]] = page["events"]
        next_after = page.get("next_after")
        yield events, next_after
        if not follow_all or next_after is None:
            return
        cursor = int(next_after)


_ACTOR_TYPES = ("agent", "operator", "system")


def _agent_id(api: OperatorClient, name: str) -> str | None:
    """The SPIFFE ID of the agent called ``name`` (None: no such agent)."""
    try:
        record = api.get(f"/v1/agents/{url_segment(name)}")
    except APIError as exc:
        if exc.status in (400, 404, 422):
            return None
        raise
    return str(record["id"])


def _actor_ids(api: OperatorClient, actor: str) -> list[str]:
    """The actor ids that ``--actor`` means. Events name an agent by its SPIFFE ID and an
    operator by name, so a bare name means the operator of that name and the agent of that
    name, if there is one; ``agent:``, ``operator:`` and ``system:`` (as the table shows
    actors) pick one."""
    if not actor:
        raise CommandError("--actor needs a name or an id", EXIT_USAGE)
    if actor.startswith("spiffe://"):
        return [actor]
    kind, sep, rest = actor.partition(":")
    if sep and kind in _ACTOR_TYPES:
        if not rest:
            raise CommandError(f"--actor {actor!r} needs a name after {kind}:", EXIT_USAGE)
        if kind != "agent" or rest.startswith("spiffe://"):
            return [rest]
        found = _agent_id(api, rest)
        if found is None:
            raise CommandError(f"no agent is called {rest!r}")
        return [found]
    found = _agent_id(api, actor)
    return [actor] if found is None else [actor, found]


def _merged_pages(
    api: OperatorClient,
    params: dict[str, Any],
    actors: list[str | None],
    after: int,
    limit: int,
    *,
    follow_all: bool,
) -> Iterator[tuple[list[dict[str, Any]], int | None]]:
    """Pages as :func:`_pages` gives them, for events of any of ``actors`` (merged by seq)."""
    if len(actors) == 1:
        only = {**params, "actor": actors[0]} if actors[0] is not None else params
        yield from _pages(api, only, after, follow_all=follow_all)
        return
    cursor = after
    while True:
        merged: list[dict[str, Any]] = []
        more = False
        for one in actors:
            page = api.get("/v1/audit/events", params={**params, "actor": one, "after": cursor})
            merged.extend(page["events"])
            more = more or page.get("next_after") is not None
        merged.sort(key=lambda e: int(e["seq"]))
        more = more or len(merged) > limit
        merged = merged[:limit]
        next_after = int(merged[-1]["seq"]) if more and merged else None
        yield merged, next_after
        if not follow_all or next_after is None:
            return
        cursor = next_after


@audit_app.command("query")
def audit_query(
    kind: Annotated[
        str | None, typer.Option(help="An event kind, or a family such as secret.*", show_default=False)
    ] = None,
    actor: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Who acted: an agent's name or SPIFFE ID, an operator's name (a bare name matches "
            "both), or agent:NAME / operator:NAME / system:NODE.",
            show_default=False,
        ),
    ] = None,
    task: Annotated[str | None, typer.Option(help="Task id.", show_default=False)] = None,
    resource: Annotated[
        str | None, typer.Option(help="Resource, e.g. secret:prod/db or audit:events.", show_default=False)
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(
            "--secret", metavar="PATH", help="Shorthand for --resource secret:PATH.", show_default=False
        ),
    ] = None,
    allowed: Annotated[
        bool | None,
        typer.Option(
            "--allowed/--denied", help="Only allowed, or only denied, decisions.", show_default=False
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="From this ISO 8601 time (inclusive; UTC if no zone).", show_default=False),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Before this ISO 8601 time (exclusive).", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=_PAGE, help="Events per page.")] = 100,
    after: Annotated[int, typer.Option(min=0, help="Start after this seq (paging).")] = 0,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow every page.")] = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Events in sequence order, filtered, a page at a time (auditor or admin)."""
    if secret is not None:
        if resource is not None:
            raise CommandError("give either --secret or --resource, not both", EXIT_USAGE)
        check_secret_path(secret)
    candidates: dict[str, Any] = {
        "kind": kind,
        "actor": actor,
        "task": task,
        "resource": resource,
        "secret": secret,
        "allowed": None if allowed is None else ("true" if allowed else "false"),
        "since": _iso(since, "--since"),
        "until": _iso(until, "--until"),
        "limit": limit,
    }
    params = {k: v for k, v in candidates.items() if v is not None}
    events: list[dict[str, Any]] = []
    next_after: int | None = None
    with client(addr, token) as api:
        actors: list[str | None] = [*_actor_ids(api, actor)] if actor is not None else [None]
        for page, cursor in _merged_pages(api, params, actors, after, limit, follow_all=all_pages):
            events.extend(page)
            next_after = cursor
    if json_output:
        print_json({"events": events, "next_after": next_after})
        return
    if not events:
        out.print("No events match.")
        return
    _print_events(events)
    if next_after is not None:
        out.print(f"More events follow: pass --all, or --after {next_after}.")


@audit_app.command("tail")
def audit_tail(
    lines: Annotated[int, typer.Option("-n", "--lines", min=0, help="How many of the latest events.")] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep polling (every second) for new events until Ctrl-C.")
    ] = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """The latest events; with --follow, new ones as they are recorded.

    --json prints JSON Lines: one event per line, as in an export.
    """
    last: deque[dict[str, Any]] = deque(maxlen=lines)
    with client(addr, token) as api:
        cursor = _read_to_end(api, 0, last.extend)
        if json_output:
            for event in last:
                _print_json_line(event)
        elif follow:
            for event in last:
                _print_event_line(event)
        elif last:
            _print_events(list(last))
        else:
            out.print("No events yet.")
        if not follow:
            return
        show = _print_json_line if json_output else _print_event_line

        def show_all(events: list[dict[str, Any]]) -> None:
            for event in events:
                show(event)

        try:
            while True:
                time.sleep(_POLL_SECONDS)
                cursor = _read_to_end(api, cursor, show_all)
        except KeyboardInterrupt:
            return


def _read_to_end(api: OperatorClient, after: int, take: Callable[[list[dict[str, Any]]], object]) -> int:
    """Hand every event after ``after`` to ``take``, page by page; returns the last seq seen."""
    cursor = after
    for page, _ in _pages(api, {"limit": _PAGE}, after, follow_all=True):
        take(page)
        if page:
            cursor = int(page[-1]["seq"])
    return cursor


# -- export and checkpoints ---------------------------------------------------------------


class _Counter:
    """Writes export bytes through, counting complete lines (events)."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.events = 0
        self.bytes = 0

    def write(self, chunk: bytes) -> None:
        self.sink.write(chunk)
        self.events += chunk.count(b"\n")
        self.bytes += len(chunk)


@audit_app.command("export")
def audit_export(
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help="JSON Lines, one event a line (the only format, and the default).")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write here (default: stdout).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
) -> None:
    """The whole chain as JSON Lines, for offline verification with `tether audit verify --file`.

    Written to FILE only once complete (a failed export leaves no partial FILE). The count goes
    to stderr.
    """
    del jsonl  # the only format
    with client(addr, token) as api:
        if output is None:
            counter = _Counter(sys.stdout.buffer)
            api.stream("/v1/audit/export", counter.write)
            sys.stdout.buffer.flush()
            err.print(f"Exported {counter.events} event(s).")
            return
        partial = output.with_name(output.name + ".partial")
        try:
            with partial.open("wb") as handle:
                counter = _Counter(handle)
                with err.status("Exporting the audit log…") as status:

                    def write(chunk: bytes) -> None:
                        counter.write(chunk)
                        status.update(f"Exporting the audit log… {counter.events} event(s)")

                    api.stream("/v1/audit/export", write)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, output)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise CommandError(f"cannot write {output}: {exc.strerror or type(exc).__name__}") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    err.print(
        f"Exported {counter.events} event(s) to {escape(str(output))}. "
        f"Verify it with: tether audit verify --file {escape(str(output))}"
    )


@audit_app.command("checkpoint")
def audit_checkpoint(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write here (default: stdout).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
) -> None:
    """Sign the chain's head now and print the checkpoint (JSON). Keep it outside Tether.

    A checkpoint kept elsewhere is what proves, later, that the log was not truncated or
    rewritten: `tether audit verify --file EXPORT --checkpoint FILE`.
    """
    with client(addr, token) as api:
        result = api.post("/v1/audit/checkpoints")
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        try:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                os.fchmod(handle.fileno(), 0o644)
                handle.write(text)
        except OSError as exc:
            raise CommandError(f"cannot write {output}: {exc.strerror or type(exc).__name__}") from None
    where = f" to {escape(str(output))}" if output is not None else ""
    err.print(
        f"Checkpoint at seq {result.get('seq')} written{where}. Keep it outside Tether (another machine, "
        "an auditor's archive): it is what proves the log was not truncated or rewritten."
    )


@audit_app.command("hash")
def audit_hash(
    value: Annotated[
        str | None,
        typer.Argument(
            metavar="VALUE",
            help="The value. Prefer --stdin: a value on the command line lands in shell history.",
            show_default=False,
        ),
    ] = None,
    from_file: FromFile = None,
    stdin: Stdin = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """The deployment's fingerprint of a value you know, to find its uses in the log.

    Prefer `--stdin` (or --from-file, or the hidden prompt): a VALUE argument lands in your
    shell history and the process list. One trailing newline is removed from stdin and files.
    Search with: `tether audit query --all --json | grep FINGERPRINT`.
    """
    if value is not None:
        if stdin or from_file is not None:
            raise CommandError("give the value either as VALUE or with --stdin / --from-file", EXIT_USAGE)
        if not value:
            raise CommandError("the value is empty", EXIT_USAGE)
    else:
        value = read_value(from_file, stdin, prompt="Value to fingerprint")
    with client(addr, token) as api:
        result = api.post("/v1/audit/hash", json={"value": value})
    if json_output:
        print_json(result)
        return
    sys.stdout.write(f"{result['fingerprint']}\n")
    sys.stdout.flush()
