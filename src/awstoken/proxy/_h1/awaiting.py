"""The upstream exchange as the coroutine path awaits it (the callback path needs none).

Mixed into :class:`~.upstream.UpstreamConnection`: a future per event, and the two waits
built on it (a body buffered up to a size, a body streamed to a client).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mypy_extensions import trait

from .origin import UpstreamError
from .wire import HIGH_WATER, Chunk

if TYPE_CHECKING:
    from .inbound import ClientConnection


# A trait: the one kind of second base a class compiled by mypyc may have.
@trait
class Awaiting:
    """Futures and waits over an upstream exchange's events (see ``UpstreamConnection``)."""

    # Set by the protocol: no __init__ of its own, as FlowControl.
    loop: asyncio.AbstractEventLoop
    _waiter: asyncio.Future[None] | None
    limit: int
    buffered: int
    complete: bool
    error: UpstreamError | None

    # The protocol's own (declared here so the trait type-checks and compiles).
    def _resume(self) -> None:
        raise NotImplementedError

    def attach(self, client: ClientConnection, sink: Callable[[Chunk], Any]) -> None:
        raise NotImplementedError

    def event(self) -> asyncio.Future[None]:
        """A future set by the next event (head, body progress, end, failure): awaiting it
        directly saves a coroutine frame on every wake-up of the request path."""
        waiter = self._waiter = self.loop.create_future()
        return waiter

    async def _wait(self) -> None:
        await self.event()

    async def wait_buffered(self, wanted: int) -> None:
        """Until the body is complete or at least ``wanted`` bytes are buffered."""
        self.limit = max(wanted, HIGH_WATER)
        if self.buffered < self.limit:
            self._resume()
        while not self.complete and self.buffered < wanted:
            if self.error is not None:
                raise self.error
            await self._wait()
        if self.error is not None and not self.complete:
            raise self.error

    async def stream_to(self, client: ClientConnection, sink: Callable[[Chunk], Any]) -> None:
        """Send the rest of the body through ``sink`` as it arrives, until complete."""
        self.attach(client, sink)
        while not self.complete:
            if self.error is not None:
                raise self.error
            if client.closed:
                raise ConnectionResetError("the client closed the connection")
            await self._wait()
