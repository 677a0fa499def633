"""Flow control between two transports, written once for both sides.

A protocol that mixes in :class:`FlowControl` pauses its transport's reading for one or
more named reasons (a full buffer, a pipelined request waiting its turn, a peer that is
not taking bytes) and reads again once none is left; it records when its own transport
cannot take more (``pause_writing``) and wakes whoever waits in :meth:`drain`, and calls
``on_resume`` then (the peer on the other side of the proxy that paused its reading for
this one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mypy_extensions import trait


# A trait: the protocols' second base, the one kind mypyc compiles beside a class base.
@trait
class FlowControl:
    """Read pausing by reason, write pausing with a drain future, a resume hook."""

    # Set by the protocol (in __init__ and connection_made): no __init__ of its own, so
    # the protocols keep one flat constructor.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    closed: bool
    write_paused: bool
    #: Called when this transport can take more again (e.g. resume a paused upstream).
    on_resume: Callable[[], None] | None
    _pausers: set[str]
    _drain: asyncio.Future[None] | None

    def _init_flow(self) -> None:
        self.write_paused = False
        self.on_resume = None
        self._pausers = set()
        self._drain = None

    @property
    def read_paused(self) -> bool:
        return bool(self._pausers)

    def pause_reading(self, why: str) -> None:
        """Stop reading from the transport until every reason given is withdrawn."""
        if not self._pausers and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._pausers.add(why)

    def resume_reading(self, why: str) -> bool:
        """Withdraw ``why``; read again when no reason is left. True when reading resumed."""
        pausers = self._pausers
        if why in pausers:
            pausers.discard(why)
            if not pausers and self.transport is not None and not self.closed:
                self.transport.resume_reading()
                return True
        return False

    # -- asyncio write flow control --------------------------------------------------------

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.on_resume is not None:
            self.on_resume()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    async def drain(self) -> None:
        """Until the transport can take more (raises ConnectionResetError once closed)."""
        if self.closed:
            raise ConnectionResetError(self._lost_message())
        if self.write_paused:
            self._drain = self.loop.create_future()
            await self._drain

    def _lost_message(self) -> str:
        return "the peer closed the connection"

    def _drain_lost(self) -> None:
        """The connection is gone: whoever waits in :meth:`drain` gets ConnectionResetError."""
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError(self._lost_message()))
