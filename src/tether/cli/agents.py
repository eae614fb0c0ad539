"""``tether keygen``, ``tether agent`` and ``tether issuer``: agent keys, the agent registry and
the external issuers trusted to vouch for agents.

A private key never leaves the machine it was generated on: ``keygen`` writes it to a file
of mode 0600 and prints only the public half; ``agent register`` and ``agent add-key``
refuse a file that holds private key material.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tether.cli.client import DEFAULT_ADDR, OperatorClient, url_segment
from tether.cli.common import Addr, Json, Token, client
from tether.cli.output import (
    EXIT_USAGE,
    CommandError,
    format_time,
    out,
    print_json,
    print_table,
)

__all__ = ["agent_app", "issuer_app", "keygen"]

agent_app = typer.Typer(
    help="Agents: register with a public key, list, show, disable, rotate keys.", no_args_is_help=True
)
issuer_app = typer.Typer(
    help="Trusted issuers whose tokens (OIDC, JWT-SVID, CI) agents may exchange.", no_args_is_help=True
)

# A JWK or JWKS file is small; anything larger is not one.
MAX_KEY_FILE_BYTES = 256 * 1024
PUBLIC_SUFFIX = ".pub.json"
# JWK members that only a private (or symmetric) key has (RFC 7518 §6).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class KeyTypeChoice(StrEnum):
    ed25519 = "Ed25519"
    p256 = "P-256"


Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
PublicKeyOption = Annotated[
    str,
    typer.Option(
        "--public-key",
        metavar="FILE_OR_JSON",
        help="The agent's public JWK: a file (the .pub.json from `tether keygen`) or inline JSON.",
        show_default=False,
    ),
]


def _confirm(question: str) -> None:
    """Ask on a terminal; without one, refuse (the caller must pass --yes)."""
    if not sys.stdin.isatty():
        raise CommandError("refusing without confirmation: pass --yes", EXIT_USAGE)
    typer.confirm(question, abort=True)


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


# -- reading keys -----------------------------------------------------------------------


def _read_json_file(path: Path, what: str) -> Any:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {_os_reason(exc)}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise CommandError(f"{path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a {what}", EXIT_USAGE)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CommandError(f"{path} does not hold JSON: expected a {what}", EXIT_USAGE) from None


def read_public_jwk(value: str) -> dict[str, Any]:
    """A public JWK from a file path or inline JSON. A JWK with private members is refused:
    a private key must never be sent anywhere, not even to Tether."""
    if value.lstrip().startswith("{"):
        source = "the --public-key JSON"
        try:
            jwk = json.loads(value)
        except ValueError:
            raise CommandError("--public-key is neither a file nor valid JSON", EXIT_USAGE) from None
    else:
        source = value
        jwk = _read_json_file(Path(value).expanduser(), "public JWK")
    if not isinstance(jwk, dict):
        raise CommandError(f"{source} does not hold a JWK object", EXIT_USAGE)
    if _PRIVATE_MEMBERS & set(jwk):
        hint = (
            f"pass {value}{PUBLIC_SUFFIX} (written by `tether keygen`)"
            if source == value and not value.endswith(PUBLIC_SUFFIX)
            else "pass the public key file (the .pub.json written by `tether keygen`)"
        )
        raise CommandError(f"{source} holds a PRIVATE key and was not sent: {hint}", EXIT_USAGE)
    return jwk


# -- keygen -----------------------------------------------------------------------------


def _public_path(path: Path) -> Path:
    return path.with_name(path.name + PUBLIC_SUFFIX)


def _write_atomically(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to a fresh temporary file of ``mode`` beside ``path``, then rename it over
    ``path``: readers see the old file or the new one, never a partial one or a wider mode."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create ``path`` with ``mode``; fail if anything (a symlink too) is there already."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _write_key_files(private_path: Path, private_text: str, public_text: str, *, force: bool) -> Path:
    public_path = _public_path(private_path)
    if not force:
        for existing in (private_path, public_path):
            if existing.exists() or existing.is_symlink():
                raise CommandError(f"{existing} exists: pass --force to replace it", EXIT_USAGE)
    try:
        if force:
            _write_atomically(private_path, private_text, 0o600)
        else:
            _write_new(private_path, private_text, 0o600)
    except FileExistsError:
        raise CommandError(f"{private_path} exists: pass --force to replace it", EXIT_USAGE) from None
    except OSError as exc:
        raise CommandError(f"cannot write {private_path}: {_os_reason(exc)}") from None
    try:
        _write_atomically(public_path, public_text, 0o644)
    except OSError as exc:
        if not force:  # do not leave a private key without its public half behind
            private_path.unlink(missing_ok=True)
        raise CommandError(f"cannot write {public_path}: {_os_reason(exc)}") from None
    return public_path


def keygen(
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Where to write the PRIVATE key (mode 0600); the public key goes to FILE.pub.json.",
            dir_okay=False,
        ),
    ] = Path("agent.jwk"),
    key_type: Annotated[
        KeyTypeChoice, typer.Option("--type", help="The key's type.")
    ] = KeyTypeChoice.ed25519,
    force: Annotated[bool, typer.Option("--force", help="Replace existing key files.")] = False,
    json_output: Json = False,
) -> None:
    """Generate an agent key pair: the private JWK to FILE (mode 0600), the public JWK printed.

    Register the agent with the public key (`tether agent register NAME --public-key
    FILE.pub.json`); give FILE to the agent (`tether.sdk.Agent(..., key=FILE)`). The private
    key is never printed.
    """
    from tether.crypto.jose import generate_private_jwk, private_key_from_jwk

    private = generate_private_jwk(key_type.value)
    _, public = private_key_from_jwk(private)
    public_jwk: dict[str, str] = {**public.jwk, "kid": public.kid}
    private_text = json.dumps(private, indent=2) + "\n"
    public_text = json.dumps(public_jwk, indent=2) + "\n"
    public_path = _write_key_files(output, private_text, public_text, force=force)
    del private, private_text
    hint = f"tether agent register NAME --public-key {public_path}"
    if json_output:
        print_json(
            {
                "kid": public.kid,
                "public_jwk": public_jwk,
                "private_key_file": str(output),
                "public_key_file": str(public_path),
                "next": hint,
            }
        )
        return
    out.print(f"Private key: {escape(str(output))} (mode 0600; keep it secret, give it only to the agent)")
    out.print(f"Public key:  {escape(str(public_path))} (kid {public.kid})")
    out.print(escape(json.dumps(public_jwk)))
    out.print(f"Next: {escape(hint)}")


# -- agents -----------------------------------------------------------------------------


def _agent_url(name: str, suffix: str = "") -> str:
    return f"/v1/agents/{url_segment(name)}{suffix}"


def _agent_name(api: OperatorClient, name_or_id: str) -> str:
    """The agent name meant by a name or a SPIFFE ID (``spiffe://<td>/agent/<name>``). An id is
    checked against the server's record, so that an id of another trust domain is refused
    rather than taken for the local agent of the same name."""
    if not name_or_id.startswith("spiffe://"):
        return name_or_id
    _, sep, name = name_or_id.partition("/agent/")
    if not sep or not name or "/" in name:
        raise CommandError(
            f"{name_or_id!r} is not an agent id (spiffe://<trust-domain>/agent/<name>)", EXIT_USAGE
        )
    record = api.get(_agent_url(name))
    if record.get("id") != name_or_id:
        raise CommandError(
            f"no agent {name_or_id} here: this deployment's agent {name} is {record.get('id')}"
        )
    return name


def _active_keys(agent: dict[str, Any]) -> list[dict[str, Any]]:
    return [k for k in agent.get("keys") or [] if not k.get("removed_at")]


def _key_type(jwk: object) -> str:
    if not isinstance(jwk, dict):
        return "?"
    return str(jwk.get("crv") or jwk.get("kty") or "?")


def _thumbprint(jwk: dict[str, Any]) -> str:
    """The key's id (its RFC 7638 thumbprint), as the server computes it; "?" if unparsable."""
    from tether.crypto.jose import parse_public_jwk
    from tether.errors import InvalidInputError

    try:
        return parse_public_jwk(jwk).kid
    except InvalidInputError:
        return "?"


def _print_agent(agent: dict[str, Any]) -> None:
    attributes = agent.get("attributes") or {}
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, shown in (
        ("id", agent["id"]),
        ("name", agent["name"]),
        ("trust domain", agent.get("trust_domain") or "-"),
        ("team", attributes.get("team") or "-"),
        ("environment", attributes.get("environment") or "-"),
        ("owner", attributes.get("owner") or "-"),
        ("labels", ", ".join(attributes.get("labels") or []) or "-"),
        ("created", format_time(agent.get("created_at"))),
        ("created by", agent.get("created_by") or "-"),
        ("disabled", format_time(agent.get("disabled_at")) or "no"),
    ):
        grid.add_row(label, escape(str(shown)))
    out.print(grid)
    keys = agent.get("keys") or []
    if not keys:
        out.print("No keys: the agent can authenticate only through a trusted issuer.")
        return
    print_table(
        "Keys",
        ["KID", "TYPE", "ADDED", "REMOVED"],
        [
            (
                k["kid"],
                _key_type(k.get("jwk")),
                format_time(k.get("added_at")),
                format_time(k.get("removed_at")) or "-",
            )
            for k in keys
        ],
    )


@agent_app.command("register")
def agent_register(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Agent name (lowercase), e.g. ci-deployer.")],
    public_key: Annotated[
        str | None,
        typer.Option(
            "--public-key",
            metavar="FILE_OR_JSON",
            help="Its public JWK: the .pub.json from `tether keygen`, or inline JSON. "
            "Without one the agent can only authenticate through a trusted issuer.",
            show_default=False,
        ),
    ] = None,
    team: Annotated[str | None, typer.Option(help="Team attribute.", show_default=False)] = None,
    environment: Annotated[
        str | None, typer.Option(help="Environment attribute, e.g. prod.", show_default=False)
    ] = None,
    owner: Annotated[str | None, typer.Option(help="Owner attribute.", show_default=False)] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", metavar="LABEL", help="A label (repeatable).")
    ] = None,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Register an agent; its id is `spiffe://<trust-domain>/agent/NAME`."""
    body: dict[str, Any] = {"name": name}
    if public_key is not None:
        body["public_key"] = read_public_jwk(public_key)
    attributes: dict[str, Any] = {
        k: v for k, v in {"team": team, "environment": environment, "owner": owner}.items() if v is not None
    }
    if label:
        attributes["labels"] = label
    if attributes:
        body["attributes"] = attributes
    with client(addr, token) as api:
        result = api.post("/v1/agents", json=body)
    if json_output:
        print_json(result)
        return
    keys = _active_keys(result)
    key_note = f"key {keys[0]['kid']}" if len(keys) == 1 else f"{len(keys)} key(s)"
    out.print(f"Registered agent {escape(result['name'])}: {escape(result['id'])} ({key_note}).")


@agent_app.command("list")
def agent_list(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Agents per page.")] = 100,
    after: Annotated[str | None, typer.Option(help="Start after this name (paging).")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow every page.")] = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Agents in name order, a page at a time."""
    items: list[dict[str, Any]] = []
    next_after = after
    with client(addr, token) as api:
        while True:
            params: dict[str, Any] = {"limit": limit}
            if next_after is not None:
                params["after"] = next_after
            page = api.get("/v1/agents", params=params)
            items.extend(page["agents"])
            next_after = page.get("next_after")
            if not all_pages or next_after is None:
                break
    if json_output:
        print_json({"agents": items, "next_after": next_after})
        return
    if not items:
        out.print("No agents.")
        return
    print_table(
        None,
        ["NAME", "ID", "TEAM", "ENVIRONMENT", "OWNER", "KEYS", "CREATED", "DISABLED"],
        [
            (
                a["name"],
                a["id"],
                (a.get("attributes") or {}).get("team") or "-",
                (a.get("attributes") or {}).get("environment") or "-",
                (a.get("attributes") or {}).get("owner") or "-",
                len(_active_keys(a)),
                format_time(a.get("created_at")),
                format_time(a.get("disabled_at")) or "-",
            )
            for a in items
        ],
    )
    if next_after is not None:
        out.print(f"More agents follow: pass --all, or --after {escape(str(next_after))}.")


@agent_app.command("show")
def agent_show(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Agent name or SPIFFE ID.")],
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """An agent's id, attributes and keys (removed keys too, for the record)."""
    with client(addr, token) as api:
        result = api.get(_agent_url(_agent_name(api, name)))
    if json_output:
        print_json(result)
        return
    _print_agent(result)


@agent_app.command("disable")
def agent_disable(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Agent name or SPIFFE ID.")],
    yes: Yes = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Disable an agent: its tokens stop working on the next request. There is no undo."""
    with client(addr, token) as api:
        url = _agent_url(_agent_name(api, name), "/disable")
        if not yes:
            _confirm(f"Disable agent {name}? Its tokens stop working at once")
        result = api.post(url)
    if json_output:
        print_json(result)
        return
    out.print(
        f"Disabled agent {escape(result['name'])} ({escape(result['id'])}) at "
        f"{format_time(result.get('disabled_at'))}: its tokens no longer work."
    )


@agent_app.command("add-key")
def agent_add_key(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Agent name or SPIFFE ID.")],
    public_key: PublicKeyOption,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Add a public key (rotation: add the new key, move the agent to it, remove the old one)."""
    body = {"public_key": read_public_jwk(public_key)}
    with client(addr, token) as api:
        result = api.post(_agent_url(_agent_name(api, name), "/keys"), json=body)
    if json_output:
        print_json(result)
        return
    out.print(f"Added key {escape(_thumbprint(body['public_key']))} to agent {escape(name)}.")


@agent_app.command("remove-key")
def agent_remove_key(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Agent name or SPIFFE ID.")],
    kid: Annotated[str, typer.Argument(metavar="KID", help="The key's id (see `tether agent show`).")],
    yes: Yes = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
) -> None:
    """Remove one of an agent's keys: tokens bound to it stop working. The last key cannot be removed."""
    with client(addr, token) as api:
        url = _agent_url(_agent_name(api, name), f"/keys/{url_segment(kid)}")
        if not yes:
            _confirm(f"Remove key {kid} from agent {name}?")
        api.delete(url)
    out.print(f"Removed key {escape(kid)} from agent {escape(name)}.")


# -- trusted issuers --------------------------------------------------------------------


def _read_jwks(path: Path) -> dict[str, Any]:
    jwks = _read_json_file(path.expanduser(), "JWKS")
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise CommandError(f'{path} is not a JWKS: expected {{"keys": [JWK, ...]}}', EXIT_USAGE)
    if any(isinstance(k, dict) and _PRIVATE_MEMBERS & set(k) for k in jwks["keys"]):
        raise CommandError(
            f"{path} holds PRIVATE key material and was not sent: a JWKS holds the issuer's public keys only",
            EXIT_USAGE,
        )
    return jwks


def _issuer_keys(issuer: dict[str, Any]) -> str:
    if issuer.get("jwks_url"):
        return str(issuer["jwks_url"])
    jwks = issuer.get("jwks")
    count = len(jwks.get("keys") or []) if isinstance(jwks, dict) else 0
    return f"inline ({count} key(s))"


@issuer_app.command("add")
def issuer_add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A name for this issuer (lowercase).")],
    issuer: Annotated[
        str, typer.Option("--issuer", metavar="ISS", help="The tokens' iss (https URL or spiffe://TD).")
    ],
    audience: Annotated[
        str, typer.Option("--audience", metavar="AUD", help="The aud the tokens must carry.")
    ],
    subject_pattern: Annotated[
        str,
        typer.Option(
            "--subject-pattern",
            metavar="REGEX",
            help="Matched in full against the subject claim; the group `(?P<agent>...)` names the agent.",
        ),
    ],
    jwks_file: Annotated[
        Path | None,
        typer.Option(
            "--jwks-file",
            metavar="FILE",
            help="The issuer's JWKS (public keys), sent inline.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    jwks_url: Annotated[
        str | None,
        typer.Option(
            "--jwks-url", metavar="URL", help="Where the server fetches the JWKS.", show_default=False
        ),
    ] = None,
    subject_claim: Annotated[
        str, typer.Option("--subject-claim", metavar="CLAIM", help="The claim that names the agent.")
    ] = "sub",
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
    json_output: Json = False,
) -> None:
    """Trust an external issuer: its tokens may be exchanged for an agent's access token.

    Example (JWT-SVIDs): `--issuer spiffe://example.org --audience tether
    --subject-pattern 'spiffe://example\\.org/ci/(?P<agent>[a-z0-9-]+)'`
    """
    if (jwks_file is None) == (jwks_url is None):
        raise CommandError("give exactly one of --jwks-file and --jwks-url", EXIT_USAGE)
    body: dict[str, Any] = {
        "name": name,
        "issuer": issuer,
        "audience": audience,
        "subject_claim": subject_claim,
        "subject_pattern": subject_pattern,
    }
    if jwks_file is not None:
        body["jwks"] = _read_jwks(jwks_file)
    else:
        body["jwks_url"] = jwks_url
    with client(addr, token) as api:
        result = api.post("/v1/auth/issuers", json=body)
    if json_output:
        print_json(result)
        return
    out.print(
        f"Trusted issuer {escape(result['name'])}: {escape(result['issuer'])} "
        f"(audience {escape(result['audience'])}, keys {escape(_issuer_keys(result))})."
    )


@issuer_app.command("list")
def issuer_list(addr: Addr = DEFAULT_ADDR, token: Token = None, json_output: Json = False) -> None:
    """Every trusted issuer and how its tokens map to agents."""
    with client(addr, token) as api:
        result = api.get("/v1/auth/issuers")
    if json_output:
        print_json(result)
        return
    issuers = result["issuers"]
    if not issuers:
        out.print("No trusted issuers.")
        return
    print_table(
        None,
        ["NAME", "ISSUER", "AUDIENCE", "KEYS", "SUBJECT", "CREATED", "CREATED BY"],
        [
            (
                i["name"],
                i["issuer"],
                i["audience"],
                _issuer_keys(i),
                f"{i.get('subject_claim', 'sub')} ~ {i.get('subject_pattern', '')}",
                format_time(i.get("created_at")),
                i.get("created_by") or "-",
            )
            for i in issuers
        ],
    )


@issuer_app.command("remove")
def issuer_remove(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Issuer name.")],
    yes: Yes = False,
    addr: Addr = DEFAULT_ADDR,
    token: Token = None,
) -> None:
    """Stop trusting an issuer: its tokens can no longer be exchanged."""
    url = f"/v1/auth/issuers/{url_segment(name)}"
    if not yes:
        _confirm(f"Stop trusting issuer {name}?")
    with client(addr, token) as api:
        api.delete(url)
    out.print(f"Removed trusted issuer {escape(name)}.")
