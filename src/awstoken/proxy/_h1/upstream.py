"""The upstream side of HTTP/1.1: one pooled connection to an upstream (the client protocol).

Responses are parsed by ``httptools`` (llhttp). A response body is buffered (bounded) until a
sink takes it; with a sink, each piece goes to the client as it arrives, and reading pauses
while the client's transport cannot take more (flow control, see ``flow``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httptools

from .awaiting import Awaiting
from .fields import (
    CHUNKED,
    CONNECTION,
    DROP,
    KINDS,
    LENGTH,
    LOCATION,
    TYPE,
    field_kind,
    names_others,
)
from .flow import FlowControl
from .origin import Origin, UpstreamError
from .wire import HIGH_WATER, MAX_HEAD, READ_SIZE, Chunk, text_fields

if TYPE_CHECKING:
    from .inbound import ClientConnection
    from .pool import Pool

class UpstreamConnection(FlowControl, Awaiting, asyncio.BufferedProtocol):
    """One pooled connection to an upstream: one exchange at a time.

    The response body is buffered until a *sink* is attached (bounded: reading pauses at
    :data:`HIGH_WATER`, or at a larger ``limit`` for bodies that are collected whole); with
    a sink, each piece goes straight to the client as it arrives, and reading pauses while
    the client's transport is paused.

    The socket is read into the pool's read buffer (``BufferedProtocol``), shared by all
    its connections: every read is consumed before the callback returns (the parser copies
    what it keeps). Once a Content-Length body is under way, its bytes bypass the parser
    and go to the sink as views of that buffer: no copy in this process between the two
    sockets.
    """

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.uses = 0
        self.in_exchange = False
        self._init_flow()
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.reason = b""
        self.raw: list[tuple[bytes, bytes]] = []  # the response head's fields, as received
        #: The fields that pass to a client as they are (see _read_head), as pieces to join
        #: into the client's head; None when the upstream named fields in ``Connection``
        #: (they are dropped by name then).
        self.kept: list[bytes] | None = []
        self._headers: list[tuple[str, str]] | None = None
        self.chunks: list[bytes] = []
        self.sink: Callable[[Chunk], Any] | None = None
        self.client: ClientConnection | None = None
        self.pump: asyncio.Task[None] | None = None
        self.peer: tuple[Any, ...] | None = None  # the address actually connected to
        self.local_host = ""  # our side's address on that connection
        self._head_size = 0
        self._last = 0.0
        #: Called (instead of waking a coroutine) on each event of an exchange answered with
        #: callbacks: once per read at most, after the read is parsed. ``job`` is its state.
        self.listener: Callable[[UpstreamConnection], None] | None = None
        self.job: Any = None
        self._feeding = False
        self._pending = False
        self._reset()

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The response head's fields as text (latin-1), decoded on first use."""
        headers = self._headers
        if headers is None:
            headers = self._headers = text_fields(self.raw)
        return headers

    @headers.setter
    def headers(self, headers: list[tuple[str, str]]) -> None:
        self._headers = headers

    def _reset(self) -> None:
        # Per exchange. (Parser state is reset in on_message_begin; sink, client, pump and
        # chunks are cleared by release(); the read-pause flag follows the transport.)
        self.head_only = False
        self.status = 0
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.length: int | None = None
        self.chunked = False
        self.content_type: str | None = None
        self.location: str | None = None
        self.error: UpstreamError | None = None
        self.buffered = 0
        self.limit = HIGH_WATER
        self.received_any = False
        self._interim = False
        self.body_seen = 0  # body bytes that went through the parser
        self.body_left = 0  # body bytes still to come past the parser (see buffer_updated)

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = tuple(peer) if isinstance(peer, (tuple, list)) else None
        sock = transport.get_extra_info("sockname")
        self.local_host = str(sock[0]) if isinstance(sock, (tuple, list)) else ""

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        self._cancel_timer()
        self._drain_lost()
        if not self.in_exchange or self.complete:
            return
        if self.head_done and not self.head_only and self.length is None and not self.chunked \
                and exc is None:
            self._finish()  # a body delimited by the end of the connection
            return
        self._fail(UpstreamError("body" if self.head_done else "protocol",
                                 f"upstream {self.origin.host} closed the connection",
                                 before_response=not self.received_any))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.pool.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.listener is None:
            self._read(nbytes)
            return
        # Events of this read reach the listener once, after the whole read is parsed: a
        # small answer that came in one read is then complete, not just begun.
        self._feeding = True
        try:
            self._read(nbytes)
        finally:
            self._feeding = False
        if self._pending:
            self._pending = False
            listener = self.listener
            if listener is not None:
                listener(self)

    def _read(self, nbytes: int) -> None:
        view = self.pool.read_buffer[:nbytes]
        if self.body_left:
            self._body_direct(view)
            return
        self.data_received(view)
        if self.head_done and not self.complete and self.error is None and \
                self.length is not None and not self.closed:
            # The rest of this body needs no parsing: count it instead (_body_direct).
            self.body_left = self.length - self.body_seen

    def _body_direct(self, view: memoryview) -> None:
        """Body bytes of a Content-Length response, straight from the read buffer."""
        if not self.in_exchange:
            self.abort()
            return
        self._last = self.loop.time()
        size = len(view)
        left = self.body_left
        if size > left:
            view = view[:left]  # more than the response: the connection cannot be reused
            self.keep_alive = False
            size = left
        sink = self.sink
        if sink is not None:
            try:
                sink(view)
            except Exception as exc:  # noqa: BLE001  the sink is the caller's (client, cache file): whatever it raises ends this exchange, not the read callback
                self._fail(UpstreamError("body", f"cannot pass the body of upstream "
                                         f"{self.origin.host} on ({type(exc).__name__})"))
                self.abort()
                return
            client = self.client
            if client is not None:
                transport = client.transport
                if transport is not None and transport.get_write_buffer_size():
                    # The transport kept (a part of) the view to send later: leave that
                    # buffer to it and read into a new one.
                    self.pool.read_buffer = memoryview(bytearray(READ_SIZE))
                if client.write_paused or client.closed:
                    self._pause_for_client(client)
        else:
            self.chunks.append(bytes(view))
            self.buffered += size
            if self.buffered >= self.limit:
                self._pause()
                self._wake()
        self.body_left = left - size
        if not self.body_left:
            # The parser stopped at the start of this body: a fresh one for the next answer.
            self.parser = httptools.HttpResponseParser(self)
            self._finish()

    def data_received(self, data: bytes | memoryview) -> None:
        if not self.in_exchange or self.complete:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted
            return
        self.received_any = True
        self._last = self.loop.time()
        try:
            if self.head_done:
                self.parser.feed_data(data)
            elif not self._feed_head(data):
                self._fail(UpstreamError("protocol", f"upstream {self.origin.host}: response "
                                         f"head over {MAX_HEAD} bytes"))
                self.abort()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _HeadDone):
                return
            self._fail(cause if isinstance(cause, UpstreamError) else
                       UpstreamError("protocol", f"upstream {self.origin.host}: bad response"))
            self.abort()
        except httptools.HttpParserError as malformed:
            self._fail(UpstreamError("body" if self.head_done else "protocol",
                                     f"upstream {self.origin.host}: malformed response "
                                     f"({type(malformed).__name__})"))
            self.abort()

    def _feed_head(self, data: bytes | memoryview) -> bool:
        """Feed bytes while the head is incomplete: at most MAX_HEAD bytes of them before
        the head must be complete (counted here per read, not in on_header per field:
        that cost about 500 instructions per field). What follows the head in the same
        read is fed after it. False when the head is too large."""
        seen = self._head_size + len(data)
        if seen <= MAX_HEAD:
            self._head_size = seen
            self.parser.feed_data(data)
            return True
        room = MAX_HEAD - self._head_size
        self._head_size = MAX_HEAD
        self.parser.feed_data(data[:room])
        if not self.head_done:
            return False
        self.parser.feed_data(data[room:])
        return True

    def eof_received(self) -> bool | None:
        return False

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.raw = []
        self._headers = None
        self.reason = b""

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # trailers of a chunked body are dropped, never promoted
            self.raw.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True  # 100 Continue, 103 Early Hints: the answer comes after
            return
        self.status = status
        self._read_head()
        if self.chunked:
            self.length = None
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True
        if self.head_only or status in (204, 304):
            # llhttp cannot be told that a HEAD answer has no body: finish here, and use a
            # fresh parser for the next exchange on this connection.
            self.parser = httptools.HttpResponseParser(self)
            self._finish()
            raise _HeadDone
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body_seen += len(body)
        sink = self.sink
        if sink is not None:
            sink(body)
            client = self.client
            if client is not None and (client.write_paused or client.closed):
                self._pause_for_client(client)
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered >= self.limit:
            self._pause()
            self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.keep_alive = self.keep_alive and self.parser.should_keep_alive()
        self._finish()

    def _read_head(self) -> None:
        """Framing facts of the head, and the fields that pass to a client unchanged: all
        but hop-by-hop and framing fields, in one bytes string."""
        kept: list[bytes] | None = []
        for name, value in self.raw:
            kind = KINDS.get(name)
            if kind is None:
                kind = field_kind(name)
            if kind >= DROP:
                if kind == LENGTH:
                    self.length = int(value)
                elif kind == CHUNKED:
                    self.chunked = True
                elif kind == CONNECTION and names_others(value, self.raw):
                    kept = None  # fields it names are hop-by-hop too: filtered by name later
                continue
            if kind == TYPE:
                self.content_type = value.decode("latin-1")
            elif kind == LOCATION:
                self.location = value.decode("latin-1")
            if kept is not None:
                kept.append(name)
                kept.append(b": ")
                kept.append(value)
                kept.append(b"\r\n")
        self.kept = kept

    # -- flow control and timers ---------------------------------------------------------------

    def _pause(self) -> None:
        self.pause_reading("read")

    def _resume(self) -> None:
        if self.resume_reading("read"):
            self._last = self.loop.time()

    def _pause_for_client(self, client: ClientConnection) -> None:
        if client.closed:
            self.abort()
            return
        self._pause()
        client.on_resume = self._resume

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_timeout(self) -> None:
        # Lazy timer: reads only stamp a time; this runs once per read_timeout and re-arms
        # itself until nothing has arrived (while we were waiting for it) for that long.
        self._timer = None
        if not self.in_exchange or self.complete or self.closed:
            return
        now = self.loop.time()
        due = self._last + self.pool.read_timeout
        if now < due:
            self._timer = self.loop.call_at(max(due, now + 0.05), self._check_timeout)
            return
        # Inactivity, not duration: nothing read or written for read_timeout. Paused for
        # the client that long means the client has stopped reading.
        if self._pausers:
            message = f"the client stopped reading the body of upstream {self.origin.host}"
        elif self.head_done:
            message = f"upstream {self.origin.host} stalled while sending the body"
        else:
            message = f"upstream {self.origin.host} did not answer in time"
        self._fail(UpstreamError("timeout", message))
        self.abort()

    # -- the exchange --------------------------------------------------------------------------

    def _wake(self) -> None:
        listener = self.listener
        if listener is not None:
            if self._feeding:
                self._pending = True  # called once the read is parsed (buffer_updated)
            else:
                listener(self)
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self) -> None:
        # The read timer is left to lapse (it re-arms itself only while an exchange waits):
        # cancelling and re-creating it on every request would cost more than it saves.
        self.complete = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None and not self.complete:
            self.error = error
            self._cancel_timer()
            self._wake()

    def start(self, head: bytes, head_only: bool) -> None:
        """Send a request head (the body, if any, follows through :meth:`write`);
        ``head_only`` for a HEAD request (its answer has no body). Positional: called for
        every request, and a keyword costs more."""
        self._reset()
        self._head_size = 0  # bytes of this exchange's answer head(s) so far
        self.uses += 1
        self.in_exchange = True
        self.head_only = head_only
        assert self.transport is not None
        self.transport.write(head)
        self._last = now = self.loop.time()  # the read timer armed: once per request
        if self._timer is None:
            self._timer = self.loop.call_at(now + self.pool.read_timeout, self._check_timeout)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self._last = self.loop.time()  # a request body on its way is activity too
            self.transport.write(data)

    def _lost_message(self) -> str:
        return "upstream closed the connection"

    def take(self) -> bytes:
        """The buffered body bytes (and forget them)."""
        chunks, self.chunks, self.buffered = self.chunks, [], 0
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def poke(self) -> None:
        """Have the listener look at the exchange again (e.g. its client went away)."""
        self._wake()

    def attach(self, client: ClientConnection, sink: Callable[[Chunk], Any]) -> None:
        """From now on, each piece of the body goes through ``sink`` as it arrives (what is
        buffered first); reading pauses while ``client`` cannot take more."""
        self.client = client
        self.sink = sink
        if self.chunks:
            sink(self.take())
        if client.write_paused:
            self._pause_for_client(client)
        else:
            self._resume()

    def release(self) -> None:
        """Back to the pool when the exchange ended cleanly; otherwise close the connection."""
        if not self.in_exchange:
            return
        self.in_exchange = False
        self.listener = None
        self.job = None
        pump, self.pump = self.pump, None
        pump_ok = pump is None or (pump.done() and not pump.cancelled() and pump.exception() is None)
        if pump is not None and not pump.done():
            pump.cancel()
        self.sink = None
        self.client = None
        self.body_left = 0
        if self.chunks:
            self.chunks = []
        if self.complete and self.keep_alive and pump_ok and not self.closed and \
                not self._pausers and not self.pool.closing:
            self.pool.put(self)
        else:
            self.abort()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.pool.forget(self)


class _HeadDone(Exception):
    """Stops the parser after a body-less answer (raised from a callback, then ignored)."""

