"""The static engine: the credential is the stored secret's current value.

A static value cannot be taken back from the upstream, so ``revoke`` only forgets the lease;
what ends the agent's access is that the grant and the task end (and rotation of the value).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tether.domain.tasks import Lease
from tether.engines.base import IssuedCredential, LeaseRequest
from tether.errors import EngineError

__all__ = ["StaticEngine"]

ValueReader = Callable[[str], Awaitable[tuple[int, bytes]]]


class StaticEngine:
    """Serves the stored value of a secret (``read_value(path) -> (version, bytes)``)."""

    name = "static"
    reveals_value = True  # the credential is the stored value: decided as a reveal

    def __init__(self, read_value: ValueReader) -> None:
        self._read_value = read_value

    async def issue(self, request: LeaseRequest) -> IssuedCredential:
        version, value = await self._read_value(request.secret)
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise EngineError("the static engine serves UTF-8 text values only") from None
        return IssuedCredential(
            credential={"type": "static", "value": text, "version": version},
            handle={"secret": request.secret, "version": version},
            expires_at=request.expires_at,
        )

    async def revoke(self, lease: Lease) -> None:
        return None
