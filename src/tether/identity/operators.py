"""Operator bearer tokens: random 256-bit, shown once, stored only as a hash."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

from tether.errors import AuthenticationError

__all__ = ["TOKEN_PREFIX", "hash_token", "new_operator_id", "new_token", "parse_token"]

TOKEN_PREFIX = "tto_"  # "tether token, operator": recognisable by secret scanners
_TOKEN = re.compile(r"tto_[A-Za-z0-9_-]{43}")


def new_token() -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def new_operator_id() -> str:
    return "op_" + secrets.token_hex(8)


def parse_token(token: str) -> str:
    """Check the token's shape before touching the store; malformed tokens are refused."""
    if not _TOKEN.fullmatch(token):
        raise AuthenticationError("malformed operator token")
    return token


def hash_token(token: str) -> bytes:
    """SHA-256 suffices: the token has 256 bits of entropy, so there is nothing to brute-force."""
    return hashlib.sha256(token.encode("ascii")).digest()
