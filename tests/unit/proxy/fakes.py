"""A fake transport for protocol tests (as uvicorn's tests/protocols do).

It records what a protocol writes and every pause/resume call, and holds what a real
transport would report (peer and local address, bytes left in its write buffer), so
framing and flow control are tested by feeding bytes to ``data_received`` (or to a
``BufferedProtocol``'s buffer) without a socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from awstoken.proxy._h1 import ClientConnection, Request

T = TypeVar("T")


class FakeTransport(asyncio.Transport):
    """Records writes, pause/resume of reading, close and abort."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 50000),
                 local: tuple[str, int] = ("127.0.0.1", 8080)) -> None:
        super().__init__()
        self.data = bytearray()
        self.calls: list[str] = []  # "pause_reading", "resume_reading", "close", "abort"
        self.reading = True
        self.closing = False
        self.aborted = False
        self.buffered = 0  # what get_write_buffer_size reports
        self.limits: tuple[int | None, int | None] | None = None
        self._extra: dict[str, Any] = {"peername": peer, "sockname": local}
        self._protocol: asyncio.BaseProtocol | None = None
        self._lost = False

    # -- what the protocols call -------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closing, "write after close"
        self.data += data

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False
        self.calls.append("pause_reading")

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True
        self.calls.append("resume_reading")

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        self.closing = True
        self.calls.append("close")
        self._lose()

    def abort(self) -> None:
        self.closing = True
        self.aborted = True
        self.calls.append("abort")
        self._lose()

    def _lose(self) -> None:
        # As a real transport: connection_lost once, on the next loop iteration.
        if self._protocol is not None and not self._lost:
            self._lost = True
            asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    # -- for the tests -----------------------------------------------------------------

    def take(self) -> bytes:
        """What was written since the last call."""
        out = bytes(self.data)
        self.data.clear()
        return out


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` on a fresh event loop (the protocols need a running one)."""
    async def wrapper() -> T:
        return await main()
    return asyncio.run(wrapper())


async def settle(rounds: int = 5) -> None:
    """Let ready callbacks and tasks run (no timers: each round is one loop iteration)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def no_requests(conn: ClientConnection, request: Request) -> None:
    """The handler of a client connection that a test never sends a request on."""
    raise AssertionError("no request is sent in this test")
