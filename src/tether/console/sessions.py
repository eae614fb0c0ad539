"""Console sessions: a signed cookie, pure (the key and ``now`` are passed in).

A session is ``base64url(JSON) "." base64url(HMAC-SHA256)``: its id, the operator's id, when it
was opened and when it was last used. Nothing in it is secret (no operator token, never a secret
value); the MAC makes it unforgeable. The key is derived from the deployment's root key, so every
worker and node of a deployment accepts the sessions any of them opened, and none survives a
change of root key. Whether the operator is still active, and whether the session was closed, is
read on every request by the caller; this module only checks integrity and the two timeouts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tether.errors import AuthenticationError

__all__ = [
    "COOKIE",
    "LOGIN_COOKIE",
    "ConsoleSession",
    "csrf_token",
    "decode_session",
    "derive_session_key",
    "encode_session",
    "new_session",
]

#: The session cookie (``__Host-`` under TLS: bound to the host, ``Secure``, path ``/``).
COOKIE = "tether_console"
#: The sign-in form's anti-forgery cookie (double submit: no session exists yet).
LOGIN_COOKIE = "tether_console_login"
_VERSION = 1
_MAX_COOKIE_CHARS = 1024
_KEY_INFO = b"tether console session v1"


def derive_session_key(root_key: bytes) -> bytes:
    """The console's MAC key, derived from the root key (HKDF-SHA256, its own label)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(root_key)


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """One signed-in operator's session. Times are whole seconds since the epoch."""

    id: str
    operator_id: str
    opened_at: int
    seen_at: int

    def check(self, now: datetime, *, idle_seconds: int, max_seconds: int) -> None:
        """Refuse a session past its idle or absolute timeout (or from the future)."""
        t = int(now.timestamp())
        if self.seen_at < self.opened_at or self.seen_at > t + 60:
            raise AuthenticationError("console session is not valid")
        if t - self.opened_at >= max_seconds:
            raise AuthenticationError("console session expired: sign in again")
        if t - self.seen_at >= idle_seconds:
            raise AuthenticationError("console session timed out (idle): sign in again")

    def touched(self, now: datetime) -> ConsoleSession:
        return ConsoleSession(self.id, self.operator_id, self.opened_at, int(now.timestamp()))


def new_session(operator_id: str, now: datetime) -> ConsoleSession:
    t = int(now.timestamp())
    return ConsoleSession(secrets.token_urlsafe(18), operator_id, t, t)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Strict base64url (``ValueError`` otherwise): its alphabet only, no padding, and canonical, so
    that a cookie has one spelling (the lenient decoder ignored the unused bits of the last
    character, and characters outside the alphabet)."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


def _mac(key: bytes, label: bytes, data: bytes) -> bytes:
    return hmac.new(key, label + b"\x00" + data, hashlib.sha256).digest()


def encode_session(session: ConsoleSession, key: bytes) -> str:
    body = json.dumps(
        {
            "v": _VERSION,
            "sid": session.id,
            "op": session.operator_id,
            "iat": session.opened_at,
            "seen": session.seen_at,
        },
        separators=(",", ":"),
    ).encode("ascii")
    return f"{_b64(body)}.{_b64(_mac(key, b'session', body))}"


def decode_session(cookie: str, key: bytes) -> ConsoleSession:
    """The session a cookie carries, if its MAC is right; :class:`AuthenticationError` otherwise."""
    refused = AuthenticationError("no valid console session: sign in")
    if not cookie or len(cookie) > _MAX_COOKIE_CHARS or cookie.count(".") != 1:
        raise refused
    body_text, mac_text = cookie.split(".")
    try:
        body, mac = _unb64(body_text), _unb64(mac_text)
    except ValueError:
        raise refused from None
    if not hmac.compare_digest(mac, _mac(key, b"session", body)):
        raise refused
    try:
        raw = json.loads(body)
        session = ConsoleSession(str(raw["sid"]), str(raw["op"]), int(raw["iat"]), int(raw["seen"]))
    except (ValueError, KeyError, TypeError):
        raise refused from None
    if raw.get("v") != _VERSION:
        raise refused
    return session


def csrf_token(session_id: str, key: bytes) -> str:
    """The anti-forgery token of one session: every form carries it, every POST must match it."""
    return _b64(_mac(key, b"csrf", session_id.encode("ascii")))


def csrf_matches(session_id: str, key: bytes, presented: str) -> bool:
    return hmac.compare_digest(csrf_token(session_id, key).encode(), presented.encode("utf-8", "replace"))
