"""Framing of a streamed answer to the client: its headers, and the writer of its body."""

from __future__ import annotations

from collections.abc import Callable

from ._h1 import Chunk, ClientConnection, Request


def stream_framing(request: Request, headers: list[tuple[str, str]], length: int | None) -> bool:
    """Add the framing of a streamed answer to ``headers``; True when it goes chunked.

    Content-Length when known; chunked to an HTTP/1.1 client otherwise; else the end of the
    connection delimits the body (the request stops being kept alive).
    """
    chunked = length is None and request.version == "1.1"
    if length is not None:
        headers.append(("Content-Length", str(length)))
    elif chunked:
        headers.append(("Transfer-Encoding", "chunked"))
    if not request.keep_alive or (length is None and not chunked):
        headers.append(("Connection", "close"))
        request.keep_alive = False
    elif request.version == "1.0":
        headers.append(("Connection", "keep-alive"))
    return chunked


def body_sink(conn: ClientConnection, chunked: bool) -> Callable[[Chunk], None]:
    """What writes each piece of a streamed body to the client (and counts it)."""
    transport = conn.transport
    assert transport is not None
    if chunked:
        def sink(data: Chunk) -> None:
            if data:
                transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
                conn.sent += len(data)
    else:
        def sink(data: Chunk) -> None:
            transport.write(data)
            conn.sent += len(data)
    return sink


__all__ = ["body_sink", "stream_framing"]
