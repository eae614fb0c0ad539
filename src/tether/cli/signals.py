"""``tether signals``: Shared Signals (SSF / CAEP) receivers — register a stream, list, pause, remove,
send a verification event, read the delivery log (``/v1/ssf/…``; admins manage, auditors read)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tether.cli.client import DEFAULT_ADDR, url_segment
from tether.cli.common import Addr, Json, Token, client
from tether.cli.output import format_time, out, print_json, print_table

__all__ = ["signals_app"]

signals_app = typer.Typer(
    help="Shared Signals (CAEP): push task endings and revocations to receivers (admin; auditors read).",
    no_args_is_help=True,
)
stream_app = typer.Typer(help="Receivers' streams: add, list, show, status, remove.", no_args_is_help=True)
signals_app.add_typer(stream_app, name="stream")

_SHORT = {
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked": "session-revoked",
    "https://schemas.openid.net/secevent/caep/event-type/credential-change": "credential-change",
    "urn:tether:secevent:event-type:task-context-change": "task-context-change",
    "https://schemas.openid.net/secevent/ssf/event-type/verification": "verification",
}


def _events(uris: list[str]) -> str:
    return ", ".join(_SHORT.get(u, u) for u in uris)


def _print_stream(stream: dict[str, Any]) -> None:
    out.print(f"stream   {stream['stream_id']}  ({stream['status']})")
    out.print(f"receiver {stream['delivery']['endpoint_url']}")
    out.print(f"aud      {stream['aud']}")
    out.print(f"events   {_events(stream['events_requested'])}")


@stream_app.command("add")
def stream_add(
    endpoint_url: Annotated[
        str, typer.Argument(metavar="URL", help="The receiver: https (http only for loopback).")
    ],
    events: Annotated[
        list[str],
        typer.Option(
            "--event",
            help="session-revoked, credential-change or task-context-change (repeatable; default: all).",
        ),
    ] = [],  # noqa: B006 - typer's way to say "repeatable, may be absent"
    aud: Annotated[
        str | None, typer.Option("--aud", help="The aud the receiver expects (default: its origin).")
    ] = None,
    description: Annotated[str, typer.Option("--description", help="A note for operators.")] = "",
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Register a receiver: Tether pushes it signed SETs (RFC 8417 over RFC 8935) for these events."""
    body: dict[str, Any] = {
        "delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": endpoint_url},
        "events_requested": events or ["session-revoked", "credential-change", "task-context-change"],
        "description": description,
    }
    if aud is not None:
        body["aud"] = aud
    with client(addr, token) as api:
        stream = api.post("/v1/ssf/streams", json=body)
    if json_output:
        print_json(stream)
        return
    _print_stream(stream)


@stream_app.command("list")
def stream_list(addr: Addr = DEFAULT_ADDR, token: Token = None, json_output: Json = False) -> None:
    """Every stream, its receiver, status and events."""
    with client(addr, token) as api:
        result = api.get("/v1/ssf/streams")
    if json_output:
        print_json(result)
        return
    rows = [
        (s["stream_id"], s["status"], s["delivery"]["endpoint_url"], _events(s["events_requested"]))
        for s in result["items"]
    ]
    print_table(None, ("STREAM", "STATUS", "RECEIVER", "EVENTS"), rows)


@stream_app.command("show")
def stream_show(
    stream_id: Annotated[str, typer.Argument(metavar="STREAM")],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """One stream's configuration."""
    with client(addr, token) as api:
        stream = api.get(f"/v1/ssf/streams/{url_segment(stream_id)}")
    if json_output:
        print_json(stream)
        return
    _print_stream(stream)


@stream_app.command("status")
def stream_status(
    stream_id: Annotated[str, typer.Argument(metavar="STREAM")],
    status: Annotated[str, typer.Argument(metavar="enabled|paused|disabled")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")] = "",
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Enable, pause (SETs are kept and sent when enabled again) or disable (none are kept) a stream."""
    with client(addr, token) as api:
        result = api.post("/v1/ssf/status", json={"stream_id": stream_id, "status": status, "reason": reason})
    if json_output:
        print_json(result)
        return
    out.print(f"stream {result['stream_id']} is {result['status']}")


@stream_app.command("remove")
def stream_remove(
    stream_id: Annotated[str, typer.Argument(metavar="STREAM")],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
) -> None:
    """Remove a stream and its delivery log."""
    with client(addr, token) as api:
        api.delete(f"/v1/ssf/streams/{url_segment(stream_id)}")
    out.print(f"removed stream {stream_id}")


@signals_app.command("verify")
def verify(
    stream_id: Annotated[str, typer.Argument(metavar="STREAM")],
    state: Annotated[str | None, typer.Option("--state", help="Echoed in the verification event.")] = None,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Send the stream an SSF verification event; `tether signals deliveries STREAM` shows the outcome."""
    with client(addr, token) as api:
        delivery = api.post("/v1/ssf/verify", json={"stream_id": stream_id, "state": state})
    if json_output:
        print_json(delivery)
        return
    out.print(f"verification event {delivery['id']} queued for {stream_id}")


@signals_app.command("deliveries")
def deliveries(
    stream_id: Annotated[str, typer.Argument(metavar="STREAM")],
    status: Annotated[str | None, typer.Option("--status", help="pending, delivered or failed.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """The stream's delivery log, newest first: each SET, its status, attempts and last error."""
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        params["status"] = status
    with client(addr, token) as api:
        result = api.get(f"/v1/ssf/streams/{url_segment(stream_id)}/deliveries", params=params)
    if json_output:
        print_json(result)
        return
    rows = []
    for d in result["items"]:
        subject = d.get("subject") or {}
        about = (subject.get("session") or {}).get("id") or subject.get("id") or ""
        rows.append(
            (
                format_time(d["created_at"]),
                _SHORT.get(d["event_type"], d["event_type"]),
                about,
                d["status"],
                d["attempts"],
                d["last_error"] or "",
                format_time(d["next_attempt_at"]) if d["next_attempt_at"] else "",
            )
        )
    print_table(
        None, ("CREATED", "EVENT", "SUBJECT", "STATUS", "ATTEMPTS", "LAST ERROR", "NEXT ATTEMPT"), rows
    )
