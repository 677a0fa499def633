"""Serving a cache hit: the object from disk, as a registry would answer it.

HEAD, single byte ranges (206) and unsatisfiable ones (416); the body goes out by the
kernel (sendfile) where the transport allows it, read and written otherwise (TLS).
"""

from __future__ import annotations

import asyncio
import os

from .._h1 import ClientConnection, Request, http_date
from .._h1 import encode_head as _encode_head
from .._h1 import reason as _reason
from .._headers import header
from .keys import Key
from .store import Entry


def parse_range(value: str, size: int) -> tuple[int, int] | bool | None:
    """``(first, last)`` of a single ``bytes=`` range; None to ignore the header (not
    bytes, several ranges, malformed: the whole object is answered); False when
    unsatisfiable (416)."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first_s:
            suffix = int(last_s)
            if suffix <= 0:
                return False if suffix == 0 else None
            return (max(size - suffix, 0), size - 1) if size else False
        first = int(first_s)
        last = int(last_s) if last_s else None
    except ValueError:
        return None
    if first < 0 or (last is not None and last < first):
        return None  # invalid: ignored, as RFC 9110 14.2 allows
    if first >= size:
        return False
    return first, size - 1 if last is None else min(last, size - 1)


async def serve_entry(conn: ClientConnection, request: Request, entry: Entry, key: Key) -> int:
    """Answer ``request`` from a cached object, as a registry would (HEAD, single
    ranges, 416); the body goes out with sendfile."""
    size = entry.size
    headers = [("Date", http_date()), ("Content-Type", entry.content_type),
               ("Accept-Ranges", "bytes")]
    etag = f'"{key.digest}"'
    if key.repo:
        headers += [("Docker-Content-Digest", key.digest), ("ETag", etag)]
    status, first, count = 200, 0, size
    wanted = header(request.headers, "range")
    if_range = header(request.headers, "if-range")
    if wanted is not None and (if_range is None or if_range.strip() == etag):
        parsed = parse_range(wanted, size)
        if parsed is False:
            status, count = 416, 0
            headers.append(("Content-Range", f"bytes */{size}"))
        elif isinstance(parsed, tuple):
            status, first, count = 206, parsed[0], parsed[1] - parsed[0] + 1
            headers.append(("Content-Range", f"bytes {parsed[0]}-{parsed[1]}/{size}"))
    headers.append(("Content-Length", str(count)))
    if not request.keep_alive:
        headers.append(("Connection", "close"))
    elif request.version == "1.0":
        headers.append(("Connection", "keep-alive"))
    conn.response_started = True
    conn.write(_encode_head(f"HTTP/1.1 {status} {_reason(status)}", headers))
    if request.method == "HEAD" or not count:
        return status
    await send_file(conn, entry.fd, entry.offset + first, count)
    return status


async def send_file(conn: ClientConnection, fd: int, offset: int, count: int) -> None:
    """``count`` bytes of ``fd`` from ``offset`` to the client, by the kernel (sendfile).

    ``loop.sendfile`` where the loop has it (asyncio's); uvloop has none, so there the
    socket is written with ``os.sendfile`` directly, once the transport's own buffer is
    empty, waiting for writability on a duplicate of its descriptor.
    """
    transport = conn.transport
    if transport is None or conn.closed:
        raise ConnectionResetError("the client closed the connection")
    await conn.drain()
    loop = conn.loop
    if transport.get_extra_info("sslcontext") is None:
        with os.fdopen(os.dup(fd), "rb") as file:
            try:
                await loop.sendfile(transport, file, offset, count, fallback=False)
                conn.sent += count
                return
            except (NotImplementedError, asyncio.SendfileNotAvailableError):
                pass  # uvloop has no loop.sendfile; both are raised before any byte is sent
        sock = transport.get_extra_info("socket")
        if sock is not None:
            await _sendfile_socket(conn, loop, sock.fileno(), fd, offset, count)
            return
    await _copy(conn, fd, offset, count)


async def _sendfile_socket(conn: ClientConnection, loop: asyncio.AbstractEventLoop, sock: int,
                           fd: int, offset: int, count: int) -> None:
    out = os.dup(sock)  # a descriptor of our own to watch (the transport owns ``sock``)
    try:
        end = offset + count
        while offset < end:
            if conn.closed:
                raise ConnectionResetError("the client closed the connection")
            try:
                sent = os.sendfile(out, fd, offset, end - offset)
            except BlockingIOError:
                waiter = loop.create_future()
                loop.add_writer(out, _wake, waiter)
                try:
                    await waiter
                finally:
                    loop.remove_writer(out)
                continue
            if sent == 0:
                raise ConnectionResetError("the cached file shrank while being sent")
            offset += sent
            conn.sent += sent
    finally:
        os.close(out)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _copy(conn: ClientConnection, fd: int, offset: int, count: int) -> None:
    """Read and write (TLS transports, where the kernel cannot send the file)."""
    end = offset + count
    while offset < end:
        data = os.pread(fd, min(1024 * 1024, end - offset), offset)
        if not data:
            raise ConnectionResetError("the cached file shrank while being sent")
        conn.write(data)
        conn.sent += len(data)
        offset += len(data)
        await conn.drain()


__all__ = ["parse_range", "send_file", "serve_entry"]
