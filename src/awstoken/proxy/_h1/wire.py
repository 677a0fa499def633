"""What both sides of HTTP/1.1 share: limits, message heads, status reasons, errors."""

from __future__ import annotations

import email.utils
import time
from http import HTTPStatus
from typing import Final

#: A request head (request line and headers) may be at most this big; 431 above it.
MAX_HEAD: Final = 64 * 1024
#: Body bytes buffered before the sending side is paused.
HIGH_WATER: Final = 1024 * 1024
#: Idle keep-alive client connections are closed after this many seconds.
KEEPALIVE_TIMEOUT: Final = 75.0
#: A client must send a whole request head within this many seconds.
HEAD_TIMEOUT: Final = 60.0
#: Seconds a connection may go on sending a request body that its answer did not need (a
#: refusal, an error), read and dropped before the connection is kept or closed (nginx's
#: lingering_time).
LINGER: Final = 30.0
#: ... and it is closed sooner when it sends nothing of it for this many seconds (nginx's
#: lingering_timeout): a client gone silent mid-body (its upload timed out) holds no slot.
LINGER_IDLE: Final = 5.0
#: Idle upstream connections kept per origin.
MAX_IDLE: Final = 128
#: Bytes read from an upstream per system call, into one buffer per pool. Larger reads
#: than nginx's 256k buffers: fewer system calls per GiB streamed (measured: 1 MiB cut the
#: CPU per GiB by a fifth against 256 KiB).
READ_SIZE: Final = 1024 * 1024

#: Response fields that never pass through as they are: hop-by-hop (RFC 9110 7.6.1, plus
#: the old Proxy-Connection) and framing (Content-Length: the proxy frames each answer).
HOP_BY_HOP: Final = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"content-length"))

#: A piece of a body as handed to a sink: the parser's bytes, or a view of a read buffer
#: that is valid only during the call (see ``UpstreamConnection.buffer_updated``).
Chunk = bytes | memoryview

_REASONS: Final = {s.value: s.phrase for s in HTTPStatus}


def reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


_date: tuple[int, str] = (0, "")


def http_date() -> str:
    """The current time for a ``Date`` header (formatted once per second)."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]


def text_fields(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Header fields kept as bytes, as text (latin-1), in order, repeats kept."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


def encode_head(first_line: str, headers: list[tuple[str, str]]) -> bytes:
    """A message head: the first line, the headers in order, the blank line (latin-1)."""
    parts = [first_line, "\r\n"]
    for key, value in headers:
        parts += (key, ": ", value, "\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


class ProtocolError(Exception):
    """A message on the wire broke HTTP/1.1 (or our limits); ``status`` is the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

