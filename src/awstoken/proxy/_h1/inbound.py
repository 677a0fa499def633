"""The inbound side of HTTP/1.1: client connections (the server protocol) and the listener.

Requests are parsed by ``httptools`` (llhttp) and answered one at a time, in order, per
connection (pipelining-safe). Defenses against request smuggling come from llhttp in its
strict default mode (a request with both Content-Length and Transfer-Encoding, a
Transfer-Encoding whose last coding is not chunked, duplicate differing Content-Length,
invalid chunk framing and bad header syntax are parse errors), plus a bound on the size of
a request head (431). A request body pauses the client above ``HIGH_WATER``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import httptools

from .flow import FlowControl
from .wire import (
    HIGH_WATER,
    LINGER,
    MAX_HEAD,
    ProtocolError,
    encode_head,
    reason,
    text_fields,
)

if TYPE_CHECKING:
    from .frontend import Frontend

log = logging.getLogger("awstoken.proxy")


class BodyStream:
    """A request body as it arrives from the client; pauses the client above HIGH_WATER."""

    __slots__ = ("_chunks", "_conn", "_size", "_waiter", "discarding", "done", "error",
                 "received")

    def __init__(self, conn: ClientConnection) -> None:
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self.done = False
        self.discarding = False
        self.received = 0
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.discarding:
            self._conn.since = self._conn.loop.time()  # still sending: not idle (LINGER_IDLE)
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= HIGH_WATER:
            self._conn.pause_reading("body")
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def discard(self) -> None:
        """Drop what is buffered and whatever else comes: nobody reads this body any more."""
        self.discarding = True
        self._chunks.clear()
        self._size = 0
        self._conn.resume_reading("body")

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self.error = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes:
        """The next piece of the body; ``b""`` at its end."""
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.done:
                return b""
            self._waiter = self._conn.loop.create_future()
            await self._waiter
        data = self._chunks.popleft()
        self._size -= len(data)
        if self._size < HIGH_WATER // 2:
            self._conn.resume_reading("body")
        return data


class Request:
    """One parsed request head; ``body`` is None when the request has none.

    Its fields are kept as received (``raw``, bytes); ``headers`` is the same as text
    (latin-1), decoded on first use: the common request never needs it.
    """

    __slots__ = ("_headers", "body", "chunked", "expect_continue", "host", "keep_alive",
                 "length", "method", "raw", "target", "version")

    # Positional, no defaults: built for every request, and a call with keywords costs
    # about three times as much (see bench/bench_callbacks.py). ``Request.of`` for others.
    def __init__(self, method: str, target: str, version: str, raw: list[tuple[bytes, bytes]],
                 keep_alive: bool, body: BodyStream | None, chunked: bool, length: int | None,
                 host: str | None, expect_continue: bool) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.raw = raw
        self._headers: list[tuple[str, str]] | None = None
        self.keep_alive = keep_alive
        self.body = body
        self.chunked = chunked
        self.length = length
        self.host = host
        self.expect_continue = expect_continue

    @classmethod
    def of(cls, *, method: str, target: str, headers: list[tuple[str, str]],
           version: str = "1.1", keep_alive: bool = True, host: str | None = None) -> Request:
        """A request without a body made here (not parsed), from text fields."""
        request = cls(method, target, version,
                      [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
                      keep_alive, None, False, None, host, False)
        request._headers = headers
        return request

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The fields as text (latin-1), in order, repeats kept."""
        headers = self._headers
        if headers is None:
            headers = self._headers = text_fields(self.raw)
        return headers


Handler = Callable[["ClientConnection", Request], Awaitable[None]]
#: Answers a request with callbacks, without a coroutine, when it can (True): the common
#: case. It then calls ``conn.done(request)`` when the answer is complete, or hands the
#: request to a coroutine with ``conn.run(request, coro)``. False: ``Handler`` answers.
FastHandler = Callable[["ClientConnection", Request], bool]


_FRAMING_FIELDS: Final = frozenset((b"content-length", b"transfer-encoding", b"host", b"expect"))


def _framing(headers: list[tuple[bytes, bytes]],
             version: str) -> tuple[int | None, bool, str | None, bool]:
    """Content-Length, chunked, Host and Expect: 100-continue of a request head, checked."""
    chunked = False
    length: int | None = None
    host: str | None = None
    expect = False
    for key, value in headers:
        low = key.lower()
        if low not in _FRAMING_FIELDS:
            continue  # most fields: one lookup, not four comparisons
        if low == b"content-length":
            length = int(value)  # llhttp checked the syntax and duplicates
        elif low == b"transfer-encoding":
            chunked = True  # llhttp rejects any coding list that does not end in chunked
        elif low == b"host":
            if host is not None:
                raise ProtocolError(400, "more than one Host header")
            host = value.decode("latin-1")
        elif low == b"expect" and value.decode("latin-1").strip().lower() == "100-continue":
            expect = True
    _check_version(version, host, chunked)
    return length, chunked, host, expect


def _check_version(version: str, host: str | None, chunked: bool) -> None:
    if version == "1.1" and host is None:
        raise ProtocolError(400, "HTTP/1.1 request without Host")
    if chunked and version != "1.1":
        # RFC 9112 6.1: HTTP/1.0 framing with Transfer-Encoding is faulty.
        raise ProtocolError(400, "Transfer-Encoding in an HTTP/1.0 request")
    if version not in ("1.0", "1.1"):
        raise ProtocolError(400, f"HTTP/{version} is not served")


_BUSY: Final = encode_head("HTTP/1.1 503 Service Unavailable", [
    ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "33"),
    ("Retry-After", "1"), ("Connection", "close")]) + b"too many connections, retry soon\n"


class ClientConnection(FlowControl, asyncio.Protocol):
    """One client connection: parses requests, runs them one at a time (pipelining-safe)."""

    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend
        self.loop = frontend.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.local = ""
        self.queue: collections.deque[Request] = collections.deque()
        self.task: asyncio.Task[None] | None = None  # answering a request as a coroutine
        self.busy = False  # a request is being answered
        #: Called when the connection is lost while a request is answered with callbacks.
        self.on_lost: Callable[[], None] | None = None
        #: What the fast handler keeps for the rest of the connection (its own business).
        self.memo: tuple[object, bytes] | None = None
        # A request head is awaited or being received (head_timeout applies): from the
        # start, so a client that connects and sends nothing is closed as a trickling one.
        self.in_head = True
        self.since = self.loop.time()
        self.closed = False
        self.eof = False  # the client shut its sending side: answer what is queued, then close
        #: Answered, its body still coming: read and dropped until it ends (``done``), or
        #: until ``linger_until`` (loop time).
        self.lingering: Request | None = None
        self.linger_until = 0.0
        self._init_flow()
        self.response_started = False
        self.sent = 0  # body bytes of the current response
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._body: BodyStream | None = None
        self._parsing: Request | None = None  # head parsed, message not complete yet

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Paused as soon as a write is left pending (the kernel's send buffer is full), and
        # resumed once nothing is: a streamed body's read-ahead lives in the two sockets'
        # kernel buffers, not in this process. The upstream feeding this client reads again
        # only when the client has taken everything, into a buffer no transport holds.
        # Measured against a 1 MiB mark: same throughput or better, 9 MiB less peak RSS
        # (a 4 MiB mark was slower and went over 64 MiB).
        transport.set_write_buffer_limits(high=0, low=0)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else None
        sock = transport.get_extra_info("sockname")
        if isinstance(sock, tuple):
            host = str(sock[0])
            self.local = f"[{host}]:{sock[1]}" if ":" in host else f"{host}:{sock[1]}"
        if not self.frontend.admit(self):
            self.closed = True
            transport.write(_BUSY)  # type: ignore[attr-defined]
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.frontend.connections.discard(self)
        lost = ConnectionResetError("the client closed the connection")
        for request in (*self.queue, ):
            if request.body is not None:
                request.body.fail(lost)
        if self._body is not None:
            self._body.fail(lost)
        self._drain_lost()
        if self.task is not None and self.busy:
            self.task.cancel()  # stops the exchange; its upstream connection is aborted
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost()  # the same for an exchange answered with callbacks

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade()
        except ProtocolError as refused:
            self._reject(refused)
        except httptools.HttpParserCallbackError as raised:
            # Each clause names its own exception: compiled (mypyc), one name is one typed
            # local, and httptools' exceptions are not ProtocolErrors.
            cause = raised.__context__
            self._reject(cause if isinstance(cause, ProtocolError) else
                         ProtocolError(400, "malformed request"))
        except httptools.HttpParserError as malformed:
            # llhttp's reasons are short phrases ("Invalid header value char"), no bytes.
            self._reject(ProtocolError(400, f"malformed request: {str(malformed)[:100]}"))
        # After the whole read is parsed: a malformed request after a good one in the same
        # read aborts the connection before the good one goes anywhere.
        if self.queue and not self.busy and not self.closed:
            self._dispatch()

    def _upgrade(self) -> None:
        # The parser stops after an Upgrade request's head. Upgrades are not offered:
        # answer that request as a plain one, then close.
        if not self.queue or self.queue[-1].body is not None:
            # llhttp ends the message at the head and leaves what follows to the new
            # protocol: a body announced in the head would never come (the upstream would
            # wait for it until the read timeout). Refuse at once; the request was queued
            # by this very call, so it has not started.
            if self.queue:
                self.queue.pop()
            self._reject(ProtocolError(400, "protocol upgrades are not supported"))
            return
        self.queue[-1].keep_alive = False
        if self._body is not None:
            self._body.fail(ConnectionResetError("request body after an Upgrade head"))
            self._body = None
        self.pause_reading("upgrade")

    def eof_received(self) -> bool | None:
        self.eof = True
        if self._body is not None:
            self._body.fail(ConnectionResetError("the client closed its side mid-body"))
        if not self.busy and not self.queue:
            self.close()
        return True  # keep our side open: answers in flight still go out

    # -- parser callbacks (httptools) ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_head = True
        self.since = self.loop.time()
        self._url = []
        self._headers = []
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            raise ProtocolError(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD:
            raise ProtocolError(431, "request header fields too large")
        if self.in_head:
            self._headers.append((name, value))
        # else: a chunked body's trailer. Dropped: appended to the head's list it would reach
        # the upstream as a header (and inbound auth) when the whole request came in one read.

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        version = parser.get_http_version()
        length, chunked, host, expect = _framing(self._headers, version)
        has_body = chunked or bool(length)
        body = BodyStream(self) if has_body else None
        self._body = body
        self._parsing = request = Request(
            parser.get_method().decode("ascii"), b"".join(self._url).decode("latin-1"),
            version, self._headers, parser.should_keep_alive(), body, chunked,
            None if chunked else length, host, expect and has_body and version == "1.1")
        self.queue.append(request)
        if self.busy or len(self.queue) > 1:
            self.pause_reading("pipeline")  # answer in order; read on when this one's turn comes

    def on_body(self, body: bytes) -> None:
        if self._body is not None:
            self._body.feed(body)

    def on_message_complete(self) -> None:
        self._parsing = None
        body = self._body
        if body is not None:
            body.finish()
            self._body = None
            lingering = self.lingering
            if lingering is not None and lingering.body is body:
                self.lingering = None
                self.since = self.loop.time()  # idle from now on, or the next request's turn
                if not lingering.keep_alive:
                    self.close()

    # -- running requests ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start answering the next queued request: with callbacks when the fast handler
        takes it, else as a coroutine (one task per such request)."""
        request = self.queue.popleft()
        if self._pausers:  # a call saved on every request that was not waiting its turn
            self.resume_reading("pipeline")
        self.busy = True
        self.response_started = False
        self.sent = 0
        fast = self.frontend.fast
        if fast is None or not fast(self, request):
            self.run(request, self.frontend.handler(self, request))

    def run(self, request: Request, answer: Awaitable[None]) -> None:
        """Answer ``request`` with a coroutine (also a fast answer that falls over to one)."""
        self.on_lost = None
        self.task = self.loop.create_task(self._run(request, answer))

    async def _run(self, request: Request, answer: Awaitable[None]) -> None:
        try:
            await answer
        except asyncio.CancelledError:
            self.abort()
        except Exception:
            log.exception("awstoken: unexpected error while answering a request")
            self.abort()
        finally:
            self.task = None
        self.done(request)

    def done(self, request: Request) -> None:
        """The answer to ``request`` is complete: keep the connection for the next one (and
        start it when it is queued already), or close it."""
        self.busy = False
        self.on_resume = None
        self.on_lost = None
        self.since = self.loop.time()
        body = request.body
        if body is not None and not body.done and body.error is None and not self.closed and \
                not self.frontend.closing and not request.expect_continue:
            # Answered before the client finished sending the body (a refusal, an error).
            # Closing now would reset the connection under a client that is still sending,
            # and it could lose the answer (Python's http.client sends the whole body before
            # it reads): read the rest and drop it, as nginx does, for at most LINGER
            # seconds and while it does not go LINGER_IDLE seconds silent (the frontend's
            # sweep), then go on as after any answer. (A client that waits for 100 Continue
            # and got a final answer sends no body: closed below.)
            self.lingering = request
            self.linger_until = self.since + LINGER
            body.discard()
            return
        if not request.keep_alive or (body is not None and not body.done) or self.closed or \
                self.frontend.closing or (self.eof and not self.queue):
            # An unread request body cannot be skipped safely: close instead.
            self.close()
        elif self.queue:
            self._dispatch()

    def _reject(self, exc: ProtocolError) -> None:
        """Answer a request that cannot be parsed, then close (nothing after it can be trusted)."""
        if self._body is not None:
            self._body.fail(ConnectionResetError(f"malformed request body: {exc}"))
            self._body = None
        parsing, self._parsing = self._parsing, None
        if parsing is not None and parsing in self.queue:
            self.queue.remove(parsing)  # its head parsed, then it broke: never answer it
        if self.busy or self.queue or self.lingering is not None:
            # Mid-body in a request being answered, or already answered: no second answer.
            self.abort()
            return
        log.info("awstoken: %d for a malformed request from %s: %s", exc.status,
                 self.remote or "-", exc)
        if self.transport is not None and not self.closed:
            status = exc.status
            body = f"{exc}\n".encode()
            self.transport.write(encode_head(f"HTTP/1.1 {status} {reason(status)}", [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))), ("Connection", "close")]) + body)
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def answer(self, request: Request, status: int, reason_: str,
               headers: list[tuple[str, str]], body: bytes, *, framing: bool = True) -> None:
        """A whole answer to ``request`` in one write: its Content-Length (unless ``framing``
        is off: the head of a HEAD answer keeps the upstream's), no body where HTTP has none
        (HEAD, 1xx, 204, 304), and the connection's fate (close, or keep-alive for 1.0)."""
        head_only = request.method == "HEAD" or status in (204, 304) or status < 200
        if framing and status not in (204, 304) and status >= 200:
            headers.append(("Content-Length", str(len(body))))
        if not request.keep_alive:
            headers.append(("Connection", "close"))
        elif request.version == "1.0":
            headers.append(("Connection", "keep-alive"))
        self.response_started = True
        data = encode_head(f"HTTP/1.1 {status} {reason_}", headers)
        self.write(data if head_only else data + body)
        self.sent = 0 if head_only else len(body)

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _lost_message(self) -> str:
        return "the client closed the connection"

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

