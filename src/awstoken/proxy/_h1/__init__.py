"""HTTP/1.1 mechanics of the fast engine, split by side.

- ``wire``: what both sides share (limits, message heads, reasons, ``ProtocolError``);
- ``flow``: flow control between the two transports (one helper for both sides);
- ``inbound``: client connections (the server protocol);
- ``frontend``: the listener's side of them (admission, idle sweeps, shutdown);
- ``upstream``: one connection to an upstream (the client protocol);
- ``origin``: where an upstream lives, and how an exchange with it fails;
- ``pool``: keep-alive upstream connections per origin.

asyncio protocols parsed by ``httptools`` (llhttp, the parser uvicorn uses) on both sides.
No policy lives here (see ``_fast``): this package frames messages, moves bytes and keeps
flow control. Memory stays bounded both ways: a side that reads faster than the other can
write is paused (``pause_reading``) until the slow side drains (``resume_writing``).
"""

from .flow import FlowControl
from .frontend import MAX_CONNECTIONS, Frontend, close_listeners
from .inbound import BodyStream, ClientConnection, FastHandler, Handler, Request
from .origin import Origin, UpstreamError
from .pool import Pool
from .upstream import UpstreamConnection
from .wire import (
    HEAD_TIMEOUT,
    HIGH_WATER,
    KEEPALIVE_TIMEOUT,
    MAX_HEAD,
    MAX_IDLE,
    READ_SIZE,
    Chunk,
    ProtocolError,
    encode_head,
    http_date,
    reason,
)

__all__ = [
    "HEAD_TIMEOUT",
    "HIGH_WATER",
    "KEEPALIVE_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_HEAD",
    "MAX_IDLE",
    "READ_SIZE",
    "BodyStream",
    "Chunk",
    "ClientConnection",
    "FastHandler",
    "FlowControl",
    "Frontend",
    "Handler",
    "Origin",
    "Pool",
    "ProtocolError",
    "Request",
    "UpstreamConnection",
    "UpstreamError",
    "close_listeners",
    "encode_head",
    "http_date",
    "reason",
]
