"""The upstream HTTP/1.1 protocol (one pooled connection) over a fake transport.

Responses are fed the way a ``BufferedProtocol`` receives them (into the pool's read
buffer); the tests check response framing, keep-alive and pooling, and flow control
between the upstream and a client connection.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest

from awstoken.proxy._h1 import (
    HIGH_WATER,
    ClientConnection,
    Frontend,
    Origin,
    Pool,
    Request,
    UpstreamConnection,
    UpstreamError,
)
from awstoken.proxy._h1 import fields as response_fields

from .fakes import FakeTransport, run, settle


def upstream(pool: Pool | None = None) -> tuple[Pool, UpstreamConnection, FakeTransport]:
    pool = pool or Pool(ssl_context=ssl.create_default_context(), connect_timeout=5,
                        read_timeout=30)
    conn = UpstreamConnection(pool, Origin.parse("http://up.example:8081"))
    transport = FakeTransport(peer=("192.0.2.1", 8081))
    transport.set_protocol(conn)
    conn.connection_made(transport)
    pool.all.add(conn)
    return pool, conn, transport


def feed(conn: UpstreamConnection, data: bytes) -> None:
    """Deliver ``data`` as the event loop would to a BufferedProtocol (in reads of the
    buffer's size at most)."""
    while data:
        buffer = conn.get_buffer(-1)
        size = min(len(buffer), len(data))
        buffer[:size] = data[:size]
        conn.buffer_updated(size)
        data = data[size:]


def client() -> tuple[Frontend, ClientConnection, FakeTransport]:
    async def handler(conn: ClientConnection, request: Request) -> None:
        raise AssertionError("not used")
    frontend = Frontend(handler)
    conn = frontend()
    transport = FakeTransport()
    transport.set_protocol(conn)
    conn.connection_made(transport)
    return frontend, conn, transport


def test_the_request_head_goes_out_and_a_content_length_answer_is_framed() -> None:
    async def main() -> None:
        pool, conn, transport = upstream()
        conn.start(b"GET /v2/ HTTP/1.1\r\nHost: up.example:8081\r\n\r\n", head_only=False)
        assert transport.take() == b"GET /v2/ HTTP/1.1\r\nHost: up.example:8081\r\n\r\n"
        feed(conn, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                   b"X-Twice: 1\r\nX-Twice: 2\r\n\r\nhel")
        assert conn.head_done and not conn.complete
        assert (conn.status, conn.reason, conn.length, conn.content_type) == \
            (200, b"OK", 5, "text/plain")
        assert [v for k, v in conn.headers if k == "X-Twice"] == ["1", "2"]  # repeats kept
        feed(conn, b"lo")
        assert conn.complete and conn.take() == b"hello"
        conn.release()
        assert pool.take(conn.origin) is conn  # kept alive, pooled
        await pool.close()
    run(main)


@pytest.mark.parametrize("spelling", [str.lower, str.upper, str.title, lambda s: "".join(
    c.upper() if i % 2 else c for i, c in enumerate(s))])
def test_framing_and_hop_by_hop_fields_are_found_however_an_upstream_spells_them(
        spelling: Any) -> None:
    """The kind of each field name is learned per spelling (fields.KINDS): every spelling
    of a framing or hop-by-hop name is still dropped, and its meaning still read."""
    async def main() -> None:
        names = ["Content-Length", "Content-Type", "Location", "Connection", "Keep-Alive",
                 "Proxy-Authenticate", "Trailer", "Upgrade", "X-Kept"]
        values = ["3", "text/plain", "/next", "keep-alive", "timeout=5", "Basic", "X",
                  "h2c", "yes"]
        for _ in range(2):  # the second answer is read from what the first one taught
            pool, conn, _t = upstream()
            conn.start(b"GET / HTTP/1.1\r\n\r\n", head_only=False)
            fields = "".join(f"{spelling(n)}: {v}\r\n" for n, v in zip(names, values,
                                                                         strict=True))
            feed(conn, f"HTTP/1.1 200 OK\r\n{fields}\r\nabc".encode())
            assert (conn.length, conn.content_type, conn.location) == (3, "text/plain", "/next")
            assert b"".join(conn.kept or [b"None"]) == f"{spelling('Content-Type')}: text/plain\r\n" \
                f"{spelling('Location')}: /next\r\n{spelling('X-Kept')}: yes\r\n".encode()
            assert conn.complete and conn.take() == b"abc"
            await pool.close()
    run(main)


def test_an_upstream_inventing_names_cannot_grow_what_is_learned_past_its_bound() -> None:
    """Field names come from upstreams: the learned kinds stay bounded, in count and in the
    length of a name, and a name past the bound is still read right."""
    async def main() -> None:
        pool, conn, _t = upstream()
        for i in range(response_fields.KINDS_MAX // 100 + 2):
            conn.start(b"GET / HTTP/1.1\r\n\r\n", head_only=False)
            fields = b"".join(b"X-%d-%d: v\r\n" % (i, j) for j in range(100))
            feed(conn, b"HTTP/1.1 200 OK\r\n" + fields + b"X-" + b"n" * 200 +
                 b": v\r\nCoNtEnT-LeNgTh: 1\r\n\r\nz")
            assert conn.complete and conn.length == 1 and conn.take() == b"z"
            conn.release()
            assert pool.take(conn.origin) is conn
        assert len(response_fields.KINDS) <= response_fields.KINDS_MAX
        assert all(len(name) <= response_fields.KIND_NAME_MAX for name in response_fields.KINDS)
        await pool.close()
    run(main)


def test_a_chunked_answer_is_assembled_and_its_trailers_never_become_headers() -> None:
    async def main() -> None:
        pool, conn, _ = upstream()
        conn.start(b"GET / HTTP/1.1\r\n\r\n", head_only=False)
        feed(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n2\r\nde\r\n0\r\nSet-Cookie: x=1\r\n\r\n")
        assert conn.complete and conn.chunked and conn.length is None
        assert conn.take() == b"abcde"
        assert all(k.lower() != "set-cookie" for k, _ in conn.headers)
        await pool.close()
    run(main)


def test_a_head_answer_ends_at_its_head_whatever_its_content_length() -> None:
    async def main() -> None:
        pool, conn, _ = upstream()
        conn.start(b"HEAD /blob HTTP/1.1\r\n\r\n", head_only=True)
        feed(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        assert conn.complete and conn.length == 1000
        conn.release()
        assert pool.take(conn.origin) is conn
        # The next exchange on the same connection parses from a fresh state.
        conn.start(b"GET /x HTTP/1.1\r\n\r\n", head_only=False)
        assert not conn.head_done and not conn.complete and conn.status == 0
        feed(conn, b"HTTP/1.1 204 No Content\r\n\r\n")
        assert conn.complete and conn.status == 204
        await pool.close()
    run(main)


def test_interim_answers_are_skipped() -> None:
    async def main() -> None:
        pool, conn, _ = upstream()
        conn.start(b"PUT / HTTP/1.1\r\n\r\n", head_only=False)
        feed(conn, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        assert conn.status == 201 and conn.complete
        await pool.close()
    run(main)


def test_bytes_past_the_answer_make_the_connection_unusable() -> None:
    async def main() -> None:
        pool, conn, transport = upstream()
        conn.start(b"GET / HTTP/1.1\r\n\r\n", head_only=False)
        feed(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        feed(conn, b"okHTTP/1.1 200 OK\r\n")  # a smuggled second answer
        assert conn.complete and conn.take() == b"ok"
        conn.release()
        assert transport.aborted and pool.take(conn.origin) is None
        await pool.close()
    run(main)


def test_bytes_nobody_asked_for_abort_an_idle_connection() -> None:
    async def main() -> None:
        pool, conn, transport = upstream()
        feed(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert transport.aborted and conn.closed
        await pool.close()
    run(main)


@pytest.mark.parametrize("wire", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"NOT HTTP\r\n\r\n",
])
def test_a_malformed_answer_fails_the_exchange(wire: bytes) -> None:
    async def main() -> None:
        pool, conn, transport = upstream()
        conn.start(b"GET / HTTP/1.1\r\n\r\n", head_only=False)
        feed(conn, wire)
        assert isinstance(conn.error, UpstreamError)
        assert conn.error.kind in ("protocol", "body")
        assert transport.aborted
        await pool.close()
    run(main)


def test_a_close_before_any_answer_is_retryable_and_after_the_head_is_a_body_error() -> None:
    async def main() -> None:
        pool, conn, transport = upstream()
        conn.start(b"GET / HTTP/1.1\r\n\r\n", head_only=False)
        transport.close()
        await settle()
        assert conn.error is not None and conn.error.kind == "protocol"
        assert conn.error.before_response
        pool2, conn2, transport2 = upstream()
        conn2.start(b"GET / HTTP/1.1\r\n\r\n", head_only=False)
        feed(conn2, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
        transport2.close()
        await settle()
        assert conn2.error is not None and conn2.error.kind == "body"
        assert not conn2.error.before_response
        await pool.close()
        await pool2.close()
    run(main)


def test_an_unread_body_over_high_water_pauses_the_upstream_until_it_is_wanted() -> None:
    async def main() -> None:
        pool, conn, transport = upstream()
        conn.start(b"GET / HTTP/1.1\r\n\r\n", head_only=False)
        size = 3 * HIGH_WATER
        feed(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"x" * (HIGH_WATER // 4)
        for _ in range(4):
            feed(conn, b"%x\r\n%s\r\n" % (len(piece), piece))
        assert not transport.reading  # buffered up to the mark: the upstream waits
        waiting = asyncio.ensure_future(conn.wait_buffered(size))
        await settle()
        assert transport.reading  # a bigger wanted size reads on
        waiting.cancel()
        await pool.close()
    run(main)


def test_streaming_pauses_the_upstream_while_the_client_cannot_take_more() -> None:
    async def main() -> None:
        pool, up, up_transport = upstream()
        frontend, client_conn, _ = client()
        up.start(b"GET /blob HTTP/1.1\r\n\r\n", head_only=False)
        feed(up, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
        got: list[bytes] = []
        streaming = asyncio.ensure_future(up.stream_to(client_conn, lambda d: got.append(bytes(d))))
        await settle()
        assert up_transport.reading
        client_conn.pause_writing()  # the client's socket buffer is full
        feed(up, b"abc")
        assert got == [b"abc"]
        assert not up_transport.reading  # its bytes wait in the kernel, not in memory
        client_conn.resume_writing()  # drained: the upstream is read again
        assert up_transport.reading
        feed(up, b"def")
        await settle()
        assert streaming.done() and streaming.exception() is None
        assert b"".join(got) == b"abcdef"
        await pool.close()
        await frontend.shutdown(0.1)
    run(main)


def test_the_upstream_write_side_drains_and_fails_once_closed() -> None:
    async def main() -> None:
        pool, conn, transport = upstream()
        conn.start(b"PUT / HTTP/1.1\r\nContent-Length: 3\r\n\r\n", head_only=False)
        conn.pause_writing()
        drain = asyncio.ensure_future(conn.drain())
        await settle()
        assert not drain.done()
        conn.resume_writing()
        await settle()
        assert drain.done() and drain.exception() is None
        conn.pause_writing()
        lost = asyncio.ensure_future(conn.drain())
        await settle()
        transport.close()
        await settle()
        assert isinstance(lost.exception(), ConnectionResetError)
        await pool.close()
    run(main)


def _fed_in(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("read_size", [1 << 20, 4096, 7])
@pytest.mark.parametrize("fields", ["one big", "many small", "behind a 100 Continue"])
def test_an_upstream_head_over_the_bound_is_refused_however_it_comes(
        read_size: int, fields: str) -> None:
    """A hostile upstream cannot make the proxy hold more than MAX_HEAD bytes of head,
    whether in one read or trickled, in one field or in thousands of tiny ones."""
    from awstoken.proxy._h1 import MAX_HEAD
    if fields == "one big":
        block = b"X-Big: " + b"a" * MAX_HEAD + b"\r\n"
    else:
        block = b"a: b\r\n" * (MAX_HEAD // 6 + 1)
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" if fields == "behind a 100 Continue" else b""
    answer = interim + b"HTTP/1.1 200 OK\r\n" + block + b"Content-Length: 2\r\n\r\nok"

    async def main() -> None:
        pool, conn, transport = upstream()
        conn.start(b"GET / HTTP/1.1\r\nHost: up.example:8081\r\n\r\n", head_only=False)
        for piece in _fed_in(answer, read_size):
            if conn.closed:
                break
            feed(conn, piece)
            assert len(conn.raw) <= MAX_HEAD // 4  # never more fields than the bound holds
        assert conn.error is not None and "response head over" in str(conn.error)
        assert transport.aborted and not conn.complete
        await pool.close()
    run(main)


@pytest.mark.parametrize("read_size", [1 << 20, 4096, 7])
def test_an_upstream_head_just_under_the_bound_and_its_body_in_the_same_read_pass(
        read_size: int) -> None:
    from awstoken.proxy._h1 import MAX_HEAD
    status = b"HTTP/1.1 200 OK\r\n"
    framing = b"Content-Length: 5\r\n\r\n"
    filler = MAX_HEAD - len(status) - len(framing) - len(b"X-Fill: \r\n")
    answer = status + b"X-Fill: " + b"f" * filler + b"\r\n" + framing + b"hello"

    async def main() -> None:
        pool, conn, _ = upstream()
        conn.start(b"GET / HTTP/1.1\r\nHost: up.example:8081\r\n\r\n", head_only=False)
        for piece in _fed_in(answer, read_size):
            feed(conn, piece)
        assert conn.error is None and conn.complete and conn.take() == b"hello"
        assert conn.length == 5 and [k for k, _ in conn.raw] == [b"X-Fill", b"Content-Length"]
        await pool.close()
    run(main)
