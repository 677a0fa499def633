"""Request bodies on their way upstream: copied as they arrive, recorded for a replay.

Backpressure holds both ways: the client is paused while its body waits in memory (see
``BodyStream``), and the copy waits while the upstream's transport is full.
"""

from __future__ import annotations

import asyncio

from ._h1 import BodyStream, UpstreamConnection
from ._replay import BodyRecorder


async def pump(body: BodyStream, up: UpstreamConnection, chunked: bool,
                recorder: BodyRecorder | None) -> None:
    """Copy a request body to the upstream with backpressure on both sides.

    With a ``recorder`` the body is also copied there, and the copy goes on to the end of
    the body when the upstream stops taking it (it refused and closed, or the refusal was
    seen: ``recorder.detached``), so the request can be sent again.
    """
    sending = True
    while data := await body.read():
        if recorder is not None:
            await recorder.add(data)
            if recorder.detached or not sending:
                if recorder.overflow:
                    return
                continue
        if chunked:
            up.write(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            up.write(data)
        try:
            await up.drain()
        except ConnectionError:
            if recorder is None:
                raise
            sending = False
    if chunked and sending and (recorder is None or not recorder.detached):
        up.write(b"0\r\n\r\n")
    if recorder is not None:
        await recorder.finish()


async def finish_recording(pump: asyncio.Task[None], up: UpstreamConnection,
                            recorder: BodyRecorder | None) -> bool:
    """The upstream refused a request with a body: stop sending the body, finish the copy.

    True when the whole body is recorded (the request can be sent again).
    """
    if not pump.done():
        # The rest must not go to an upstream that already said no: this connection is
        # closed (it cannot be reused mid-body) while the copy, if any, goes on to the end.
        up.abort()
        if recorder is None:
            pump.cancel()
            return False
        recorder.detached = True
        try:
            await asyncio.shield(pump)
        except asyncio.CancelledError:
            pump.cancel()
            raise
        except ConnectionError:
            return False
    elif pump.cancelled() or pump.exception() is not None:
        up.abort()  # the body went out incomplete: the connection cannot be reused
        return False
    return recorder is not None and not recorder.overflow


async def pump_replay(recorder: BodyRecorder, up: UpstreamConnection) -> None:
    """Send a recorded body again."""
    async for data in recorder.read():
        up.write(data)
        await up.drain()


__all__ = ["finish_recording", "pump", "pump_replay"]
