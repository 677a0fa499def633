"""The inbound HTTP/1.1 protocol (client connections) over a fake transport.

Framing, smuggling refusals, pipelining order, keep-alive and flow control, in
milliseconds: bytes go to ``data_received``, answers are read from the transport.
"""

from __future__ import annotations

import asyncio

import pytest

from awstoken.proxy._h1 import HIGH_WATER, MAX_HEAD, ClientConnection, Frontend, Request
from awstoken.proxy._h1.wire import LINGER, LINGER_IDLE

from .fakes import FakeTransport, run, settle


class Recorder:
    """A handler that records requests (and their bodies) and answers each one."""

    def __init__(self, *, read_body: bool = True) -> None:
        self.requests: list[Request] = []
        self.bodies: list[bytes] = []
        self.read_body = read_body
        self.hold: asyncio.Event | None = None  # answers wait for it when set
        self.started = 0
        self.finished = 0

    async def __call__(self, conn: ClientConnection, request: Request) -> None:
        self.started += 1
        self.requests.append(request)
        body = b""
        if request.body is not None and self.read_body:
            while piece := await request.body.read():
                body += piece
        self.bodies.append(body)
        if self.hold is not None:
            await self.hold.wait()
        answer = f"#{len(self.requests)} {request.method} {request.target}".encode()
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        self.finished += 1


def connect(handler: Recorder, **options: float) -> tuple[Frontend, ClientConnection,
                                                          FakeTransport]:
    frontend = Frontend(handler, **options)  # type: ignore[arg-type]
    conn = frontend()
    transport = FakeTransport()
    transport.set_protocol(conn)
    conn.connection_made(transport)
    return frontend, conn, transport


async def _stop(frontend: Frontend) -> None:
    await frontend.shutdown(0.1)


def test_content_length_body_is_framed() -> None:
    async def main() -> None:
        handler = Recorder()
        frontend, conn, transport = connect(handler)
        conn.data_received(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        await settle()
        assert handler.bodies == [b"hello"]
        request = handler.requests[0]
        assert (request.method, request.target, request.length, request.chunked) == \
            ("POST", "/up", 5, False)
        assert transport.take().endswith(b"#1 POST /up")
        assert not transport.closing  # kept alive
        await _stop(frontend)
    run(main)


def test_chunked_body_is_framed_and_trailers_are_dropped() -> None:
    async def main() -> None:
        handler = Recorder()
        frontend, conn, _ = connect(handler)
        conn.data_received(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Smuggled: 1\r\n\r\n")
        await settle()
        assert handler.bodies == [b"hello world"]
        request = handler.requests[0]
        assert request.chunked and request.length is None
        assert all(name.lower() != "x-smuggled" for name, _ in request.headers)
        await _stop(frontend)
    run(main)


def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    async def main() -> None:
        handler = Recorder()
        handler.hold = asyncio.Event()
        frontend, conn, transport = connect(handler)
        conn.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
                           b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n"
                           b"GET /three HTTP/1.1\r\nHost: a\r\n\r\n")
        assert conn.busy and len(conn.queue) == 2  # the first is answered, two wait
        await settle()
        assert handler.started == 1  # the next one waits for this answer
        assert transport.take() == b""
        conn.data_received(b"GET /four HTTP/1.1\r\nHost: a\r\n\r\n")
        assert not transport.reading  # a request parsed while one is answered: paused again
        handler.hold.set()
        await settle(20)
        out = transport.take()
        assert handler.finished == 4
        assert out.index(b"#1 GET /one") < out.index(b"#2 GET /two") < \
            out.index(b"#3 GET /three") < out.index(b"#4 GET /four")
        assert transport.reading  # read again once the queue is empty
        await _stop(frontend)
    run(main)


@pytest.mark.parametrize(("wire", "status"), [
    # Smuggling: both framings in one request.
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", 400),
    # Transfer-Encoding whose last coding is not chunked.
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    # Two differing Content-Length values.
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    # A chunk size that is not hex.
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n", 400),
    # Transfer-Encoding in HTTP/1.0.
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    # HTTP/1.1 without Host, and with two.
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    # A space before the colon (header name smuggling).
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", 400),
    # A head over the bound.
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * MAX_HEAD + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
])
def test_bad_framing_is_refused_and_the_connection_closed(wire: bytes, status: int) -> None:
    async def main() -> None:
        handler = Recorder()
        frontend, conn, transport = connect(handler)
        conn.data_received(wire)
        await settle()
        assert handler.started == 0  # never answered, never forwarded
        out = transport.take()
        assert out.startswith(b"HTTP/1.1 %d " % status), out[:80]
        assert b"Connection: close\r\n" in out
        assert transport.closing
        await _stop(frontend)
    run(main)


def test_a_bad_chunk_after_a_good_request_cuts_the_connection_without_answering_it() -> None:
    async def main() -> None:
        handler = Recorder()
        handler.hold = asyncio.Event()
        frontend, conn, transport = connect(handler)
        conn.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        await settle()
        conn.data_received(b"POST /two HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"zz\r\n")
        await settle()
        # The first request is being answered: nothing more can be trusted, nothing more sent.
        assert transport.aborted
        assert handler.started == 1
        await _stop(frontend)
    run(main)


def test_keep_alive_resets_the_connection_state_between_requests() -> None:
    async def main() -> None:
        handler = Recorder()
        frontend, conn, transport = connect(handler)
        conn.data_received(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        await settle()
        assert transport.take().endswith(b"#1 POST /a")
        assert not conn.busy and not conn.in_head
        conn.sent = 99
        conn.response_started = True
        conn.data_received(b"GET /b HTTP/1.1\r\nHost: b\r\n\r\n")
        assert conn.busy and not conn.queue  # parsed and started at once
        await settle()
        assert transport.take().endswith(b"#2 GET /b")
        second = handler.requests[1]
        assert (second.host, second.body, second.length) == ("b", None, None)
        assert conn.sent == 0 and conn.response_started is False  # reset for each request
        assert not transport.closing
        conn.data_received(b"GET /c HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n")
        await settle()
        assert transport.take().endswith(b"#3 GET /c")
        assert transport.closing  # Connection: close ends it after the answer
        await _stop(frontend)
    run(main)


def test_http10_closes_unless_keep_alive_is_asked() -> None:
    async def main() -> None:
        handler = Recorder()
        frontend, conn, transport = connect(handler)
        conn.data_received(b"GET /a HTTP/1.0\r\n\r\n")
        await settle()
        assert handler.requests[0].keep_alive is False
        assert transport.closing
        frontend2, conn2, transport2 = connect(handler)
        conn2.data_received(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        await settle()
        assert handler.requests[1].keep_alive is True
        assert not transport2.closing
        await _stop(frontend)
        await _stop(frontend2)
    run(main)


def test_a_body_over_high_water_pauses_the_client_until_it_is_read() -> None:
    async def main() -> None:
        handler = Recorder(read_body=False)
        handler.hold = asyncio.Event()
        frontend, conn, transport = connect(handler)
        size = HIGH_WATER + 10
        conn.data_received(b"PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        conn.data_received(b"x" * (HIGH_WATER // 2))
        assert transport.reading
        conn.data_received(b"x" * (HIGH_WATER // 2))
        assert not transport.reading  # the peer's bytes wait in the kernel, not here
        await settle()
        body = handler.requests[0].body
        assert body is not None
        got = 0
        while got < HIGH_WATER // 2 + 1:
            got += len(await body.read())
        assert transport.reading  # resumed once under half the mark
        await _stop(frontend)
    run(main)


def test_a_client_that_closes_mid_body_fails_the_body_read() -> None:
    async def main() -> None:
        handler = Recorder(read_body=False)
        handler.hold = asyncio.Event()  # still answering: the body is the handler's to read
        frontend, conn, _ = connect(handler)
        conn.data_received(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        await settle()
        body = handler.requests[0].body
        assert body is not None
        assert await body.read() == b"abc"
        conn.connection_lost(None)
        with pytest.raises(ConnectionResetError):
            await body.read()
        handler.hold.set()
        await _stop(frontend)
    run(main)


def test_a_body_its_answer_did_not_need_is_read_and_dropped_then_the_connection_kept() -> None:
    """A refusal answered before the body ended: the rest of the body is read and dropped
    (even past HIGH_WATER, never buffered), then the next request is answered on the same
    connection. Closing at once reset clients that send the whole body before reading."""
    async def main() -> None:
        handler = Recorder(read_body=False)
        frontend, conn, transport = connect(handler)
        size = 3 * HIGH_WATER
        conn.data_received(b"PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\nxx" % size)
        await settle()
        assert bytes(transport.data).startswith(b"HTTP/1.1 200 OK")  # answered, body unread
        assert conn.lingering is not None and not transport.closing
        body = handler.requests[0].body
        assert body is not None
        for _ in range(3):
            conn.data_received(b"x" * (HIGH_WATER - 1))
            assert transport.reading  # dropped as it comes: nothing held, nothing paused
        conn.data_received(b"x" + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        await settle()
        assert body.done and body.received == size and conn.lingering is None
        assert [r.target for r in handler.requests] == ["/big", "/next"]
        assert bytes(transport.data).count(b"HTTP/1.1 200 OK") == 2  # one answer each
        assert not transport.closing
        await _stop(frontend)
    run(main)


@pytest.mark.parametrize(("head", "rest"), [
    # Connection: close: the body is read to its end, then the connection closes.
    (b"PUT /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 6\r\n\r\nab",
     b"cdef"),
    # A malformed chunk in a body being dropped: closed, never a second answer.
    (b"PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
     b"zz\r\n"),
])
def test_a_dropped_body_ends_in_one_answer_and_a_close(head: bytes, rest: bytes) -> None:
    async def main() -> None:
        handler = Recorder(read_body=False)
        frontend, conn, transport = connect(handler)
        conn.data_received(head)
        await settle()
        assert conn.lingering is not None and not transport.closing
        conn.data_received(rest)
        await settle()
        assert transport.closing or transport.aborted
        assert bytes(transport.data).count(b"HTTP/1.1") == 1
        await _stop(frontend)
    run(main)


def test_a_client_waiting_for_100_continue_is_closed_after_a_final_answer() -> None:
    # It was sent no 100 Continue: it sends no body, and none can be waited for.
    async def main() -> None:
        handler = Recorder(read_body=False)
        frontend, conn, transport = connect(handler)
        conn.data_received(b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                           b"Content-Length: 5\r\n\r\n")
        await settle()
        assert transport.closing and conn.lingering is None
        await _stop(frontend)
    run(main)


async def _dropping_a_chunked_body() -> tuple[Frontend, ClientConnection, FakeTransport]:
    """A chunked upload answered before its body came: the connection lingers."""
    frontend, conn, transport = connect(Recorder(read_body=False))
    conn.data_received(b"PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    await settle()
    assert conn.lingering is not None
    return frontend, conn, transport


def test_a_client_that_keeps_sending_a_dropped_body_is_closed_after_linger() -> None:
    async def main() -> None:
        frontend, conn, transport = await _dropping_a_chunked_body()
        conn.linger_until -= LINGER  # as if it had trickled chunks for LINGER seconds
        conn.data_received(b"1\r\nx\r\n")  # and still does
        frontend._sweep()
        assert transport.closing
        await _stop(frontend)
    run(main)


def test_a_dropped_body_that_trickles_is_read_and_a_silent_one_is_closed() -> None:
    """Inside LINGER, a client that goes on sending is kept; one that sends nothing for
    LINGER_IDLE seconds (its upload stalled, and timed out) is closed, as nginx's
    lingering_timeout does, rather than held for the whole LINGER."""
    async def main() -> None:
        frontend, conn, transport = await _dropping_a_chunked_body()
        conn.since -= LINGER_IDLE - 0.5
        conn.data_received(b"1\r\nx\r\n")  # a chunk: active again
        frontend._sweep()
        assert conn.lingering is not None and not transport.closing
        conn.since -= LINGER_IDLE  # then silent for LINGER_IDLE
        frontend._sweep()
        assert transport.closing
        assert bytes(transport.data).count(b"HTTP/1.1") == 1
        await _stop(frontend)
    run(main)


def test_write_pause_holds_drain_and_resume_wakes_it_and_the_peer() -> None:
    async def main() -> None:
        frontend, conn, _ = connect(Recorder())
        resumed: list[bool] = []
        conn.on_resume = lambda: resumed.append(True)
        conn.pause_writing()  # the client's socket buffer is full
        drain = asyncio.ensure_future(conn.drain())
        await settle()
        assert not drain.done()
        conn.resume_writing()
        await settle()
        assert drain.done() and drain.exception() is None
        assert resumed == [True]  # the upstream feeding this client reads again
        conn.pause_writing()
        lost = asyncio.ensure_future(conn.drain())
        await settle()
        conn.connection_lost(None)
        await settle()
        assert isinstance(lost.exception(), ConnectionResetError)
        await _stop(frontend)
    run(main)


def test_the_write_buffer_limit_is_zero() -> None:
    async def main() -> None:
        frontend, _, transport = connect(Recorder())
        # Paused as soon as a write is left pending: read-ahead stays in the kernel.
        assert transport.limits == (0, 0)
        await _stop(frontend)
    run(main)


def test_over_max_connections_a_client_gets_503_and_is_closed() -> None:
    async def main() -> None:
        handler = Recorder()
        frontend, _, first = connect(handler, max_connections=1)
        conn = frontend()
        second = FakeTransport()
        conn.connection_made(second)
        assert second.take().startswith(b"HTTP/1.1 503 ")
        assert second.closing and not first.closing
        await _stop(frontend)
    run(main)


def test_an_upgrade_with_a_body_is_refused_and_without_one_answered_then_closed() -> None:
    async def main() -> None:
        handler = Recorder()
        frontend, conn, transport = connect(handler)
        conn.data_received(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                           b"Upgrade: websocket\r\n\r\n")
        await settle()
        assert transport.take().endswith(b"#1 GET /ws")
        assert handler.requests[0].keep_alive is False and transport.closing
        frontend2, conn2, transport2 = connect(handler)
        conn2.data_received(b"POST /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                            b"Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhello")
        await settle()
        assert transport2.take().startswith(b"HTTP/1.1 400 ")
        assert handler.started == 1
        await _stop(frontend)
        await _stop(frontend2)
    run(main)


def test_eof_after_a_request_answers_it_then_closes() -> None:
    async def main() -> None:
        handler = Recorder()
        handler.hold = asyncio.Event()
        frontend, conn, transport = connect(handler)
        conn.data_received(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        await settle()
        assert conn.eof_received() is True  # keep our side open for the answer
        assert not transport.closing
        handler.hold.set()
        await settle()
        assert transport.take().endswith(b"#1 GET /a")
        assert transport.closing
        await _stop(frontend)
    run(main)
