"""The SDK's ``DispatchContext`` for a message that has no channel back to its sender, on either
side of the gateway: a request answered with one JSON body at the front
(:mod:`tether.mcp.exchange`), and a message an upstream sent on a call's event stream
(:mod:`tether.mcp.dispatcher`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import NoBackChannelError
from mcp.shared.message import MessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types import RequestId

__all__ = ["ONE_WAY", "Forward", "OneWay"]

#: Streamable HTTP without a back channel for requests.
ONE_WAY = TransportContext(kind="streamable-http", can_send_request=False)

#: Where a handler's notifications go (the ``notify`` of a dispatcher), if anywhere.
Forward = Callable[[str, Mapping[str, Any] | None, CallOptions | None], Awaitable[None]]


@dataclass(slots=True)
class OneWay:
    """A request to the peer raises ``NoBackChannelError``; a notification goes to ``forward``
    (dropped without one), progress is dropped; the cancellation event is never set (a request on
    such a channel is cancelled by closing its connection) and made on first use, as most requests
    never ask."""

    request_id: RequestId | None
    message_metadata: MessageMetadata = None
    forward: Forward | None = None
    transport: TransportContext = ONE_WAY
    can_send_request: bool = False
    _cancel: anyio.Event | None = None

    @property
    def cancel_requested(self) -> anyio.Event:
        if self._cancel is None:
            self._cancel = anyio.Event()
        return self._cancel

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        raise NoBackChannelError(method)

    async def notify(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> None:
        if self.forward is not None:
            await self.forward(method, params, opts)

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        return None
