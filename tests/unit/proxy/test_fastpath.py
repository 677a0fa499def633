"""The callback path sends the same bytes as the coroutine path, both ways.

One request goes through the whole proxy request path (``FastForwarder`` over
``ClientConnection`` and a pooled ``UpstreamConnection``, each on a fake transport), once
with the fast handler and once without; the bytes that reach the upstream and the client
must be identical, for every kind of answer the fast path takes (small, chunked, HEAD,
204/304, streamed, Connection fields, Location) and those it hands over to the coroutine.
"""

from __future__ import annotations

import asyncio
import re
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from awstoken import Keeper, MemoryStorage, Token
from awstoken._config.settings import RouteSettings, ServerSettings
from awstoken.proxy._auth import InboundAuth
from awstoken.proxy._fast import FastForwarder
from awstoken.proxy._h1 import ClientConnection, Frontend, Origin, Pool, Request, UpstreamConnection
from awstoken.proxy._metrics import RouteMetrics
from awstoken.proxy._routes import RouteTable

from .fakes import FakeTransport, no_requests, run, settle

TOKEN = "Basic dG9rZW4="
BIG = 200 * 1024


def feed(conn: UpstreamConnection, data: bytes) -> None:
    while data:
        buffer = conn.get_buffer(-1)
        size = min(len(buffer), len(data))
        buffer[:size] = data[:size]
        conn.buffer_updated(size)
        data = data[size:]


async def exchange(request: bytes, answer: list[bytes], *, fast: bool,
                   redirects: str = "follow") -> tuple[bytes, bytes, int, int]:
    """(bytes sent upstream, bytes sent to the client, fast answers, coroutine answers)."""
    storage = MemoryStorage()
    storage.write("ecr", Token(value=TOKEN))
    routes = RouteTable([RouteSettings(prefix="/", upstream="http://up.example:8081",
                                       token="ecr", redirects=redirects)])  # type: ignore[arg-type]
    pool = Pool(ssl_context=ssl.create_default_context(), connect_timeout=5, read_timeout=30)
    up = UpstreamConnection(pool, Origin.parse("http://up.example:8081"))
    up_transport = FakeTransport(peer=("192.0.2.1", 8081))
    up_transport.set_protocol(up)
    up.connection_made(up_transport)
    up.uses = 1
    pool.all.add(up)
    pool.put(up)
    forwarder = FastForwarder(routes=routes, keeper=Keeper(storage), pool=pool,
                              auth=InboundAuth(ServerSettings()),
                              metrics=RouteMetrics(CollectorRegistry()), access_log=False)
    counts = {"fast": 0, "coroutine": 0}

    def fast_handler(conn, request):  # type: ignore[no-untyped-def]
        taken = forwarder.fast(conn, request)
        counts["fast" if taken else "coroutine"] += 1
        return taken

    async def handler(conn, request):  # type: ignore[no-untyped-def]
        if not fast:
            counts["coroutine"] += 1
        await forwarder(conn, request)

    frontend = Frontend(handler, fast=fast_handler if fast else None)
    client = frontend()
    client_transport = FakeTransport(peer=("198.51.100.7", 40000))
    client_transport.set_protocol(client)
    client.connection_made(client_transport)
    client.data_received(request)
    await settle(10)
    for piece in answer:
        feed(up, piece)
        await settle(10)
    await settle(10)
    sent_up = up_transport.take()
    await frontend.shutdown(0.1)
    await pool.close()
    return sent_up, client_transport.take(), counts["fast"], counts["coroutine"]


def both(request: bytes, answer: list[bytes], **options: str) -> tuple[bytes, bytes, int]:
    fast = run(lambda: exchange(request, answer, fast=True, **options))
    slow = run(lambda: exchange(request, answer, fast=False, **options))
    assert fast[0] == slow[0], "bytes sent upstream differ"
    # Error answers carry a Date: the two runs may fall on either side of a second.
    assert _undated(fast[1]) == _undated(slow[1]), "bytes sent to the client differ"
    assert slow[2] == 0
    return fast[0], fast[1], fast[2]


def _undated(data: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\nDate: -\r\n", data)


GET = b"GET /v2/x HTTP/1.1\r\nHost: proxy\r\nUser-Agent: t\r\n\r\n"


@pytest.mark.parametrize(("request_", "answer"), [
    (GET, [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"]),
    (GET, [b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\nX-A: 1\r\n"
           b"X-A: 2\r\n\r\nok"]),
    (GET, [b"HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"]),
    (GET, [b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\n", b"no\n"]),
    (GET, [b"HTTP/1.1 204 No Content\r\nX-B: 1\r\n\r\n"]),
    (GET, [b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n"]),
    (b"HEAD /v2/x HTTP/1.1\r\nHost: proxy\r\n\r\n",
     [b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nDocker-Content-Digest: sha256:x\r\n\r\n"]),
    (GET, [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG, b"a" * (BIG // 2),
           b"b" * (BIG // 2)]),
    (GET, [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
           b"%x\r\n%s\r\n" % (BIG, b"c" * BIG), b"0\r\n\r\n"]),
    (GET, [b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nContent-Length: 2\r\n"
           b"\r\nok"]),
    (GET, [b"HTTP/1.1 201 Created\r\nLocation: http://up.example:8081/v2/y\r\n"
           b"Content-Length: 0\r\n\r\n"]),
    (b"GET /v2/x?q=1 HTTP/1.1\r\nHost: proxy\r\nAccept-Encoding: gzip, sdch\r\n"
     b"X-Forwarded-For: 10.0.0.1\r\nAuthorization: Basic client\r\nConnection: keep-alive\r\n"
     b"Te: trailers\r\nExpect: nothing\r\n\r\n",
     [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]),
    (b"GET /v2/x HTTP/1.1\r\nHost: proxy\r\nConnection: x-hop\r\nX-Hop: 1\r\nX-Keep: 2\r\n\r\n",
     [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]),
    (b"GET /v2/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
     [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]),
    (b"GET /v2/x HTTP/1.0\r\n\r\n", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                                     b"%x\r\n%s\r\n" % (BIG, b"d" * BIG), b"0\r\n\r\n"]),
    (b"GET /v2/x HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n",
     [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]),
])
def test_the_callback_path_sends_what_the_coroutine_path_sends(request_: bytes,
                                                                answer: list[bytes]) -> None:
    sent_up, to_client, fast = both(request_, answer)
    assert fast == 1  # the callback path took it
    assert sent_up.endswith(b"Authorization: " + TOKEN.encode() + b"\r\n\r\n")
    assert b"Basic client" not in sent_up
    assert to_client.startswith(b"HTTP/1.1 ")


def test_a_redirect_to_follow_falls_over_to_the_coroutine_path_with_the_same_bytes() -> None:
    # Followed to an address that is not public: the coroutine path refuses it (502).
    answer = [b"HTTP/1.1 307 Temporary Redirect\r\nLocation: https://127.0.0.1:1/blob\r\n"
              b"Content-Length: 0\r\n\r\n"]
    _, to_client, fast = both(GET, answer)
    assert fast == 1
    assert to_client.startswith(b"HTTP/1.1 502 ")


def test_a_redirect_passed_through_points_back_at_the_proxy() -> None:
    answer = [b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://up.example:8081/v2/z\r\n"
              b"Content-Length: 0\r\n\r\n"]
    _, to_client, _ = both(GET, answer, redirects="pass")
    assert b"Location: http://127.0.0.1:8080/v2/z\r\n" in to_client


def test_an_index_answer_falls_over_and_is_rewritten_alike() -> None:
    body = b'{"tarball": "http://up.example:8081/pkg.tgz"}'
    answer = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
              % len(body) + body]
    _, to_client, _ = both(GET, answer)
    assert b"http://127.0.0.1:8080/pkg.tgz" in to_client


def test_an_upstream_that_breaks_mid_head_gets_the_same_error_answer() -> None:
    _, to_client, _ = both(GET, [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Header\r\n\r\n"])
    assert to_client.startswith(b"HTTP/1.1 502 ")


def test_uncommon_requests_are_left_to_the_coroutine_path() -> None:
    for request in (
            b"POST /v2/x HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\n\r\nhi",
            b"DELETE /v2/x HTTP/1.1\r\nHost: p\r\n\r\n",
            b"GET /v2/../x HTTP/1.1\r\nHost: p\r\n\r\n",
            b"GET http://up.example/ HTTP/1.1\r\nHost: p\r\n\r\n"):
        _, _, fast, slow = run(lambda r=request: exchange(  # type: ignore[misc]
            r, [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], fast=True))
        assert (fast, slow) == (0, 1), request


def _unconnected(remote: str | None) -> tuple[ClientConnection, Pool]:
    """A client connection that came from ``remote`` (None: a unix socket) and a pool,
    neither connected: the head builders read only the connection's addresses. (Made on a
    loop, as in the server: compiled, they cannot be half-made with ``__new__``.)"""
    async def made() -> tuple[ClientConnection, Pool]:
        return Frontend(no_requests)(), Pool(ssl_context=_SSL, connect_timeout=5, read_timeout=30)

    conn, pool = asyncio.run(made())
    conn.remote, conn.local = remote, "127.0.0.1:8080"
    return conn, pool


_SSL = ssl.create_default_context()


NAMES = ["Accept", "accept-encoding", "Authorization", "Connection", "X-Forwarded-For",
         "x-forwarded-proto", "X-Forwarded-Host", "Host", "Content-Length", "TE", "Expect",
         "Keep-Alive", "Upgrade", "Proxy-Authorization", "X-Token", "User-Agent", "Range",
         "X-Custom", "Trailer", "Cookie"]


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(st.tuples(
    st.sampled_from(NAMES).flatmap(lambda n: st.sampled_from([n, n.lower(), n.upper()])),
    st.one_of(st.sampled_from(["keep-alive", "close", "x-custom, te", "gzip, br, zstd, sdch",
                               "10.0.0.1", ""]),
              st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xff,
                                             blacklist_characters="\x7f"), max_size=12))),
    max_size=8), remote=st.sampled_from(["192.0.2.9", None]),
       header=st.sampled_from(["Authorization", "X-Token"]))
def test_the_one_pass_request_head_is_the_general_one(fields: list[tuple[str, str]],
                                                       remote: str | None, header: str) -> None:
    storage = MemoryStorage()
    routes = RouteTable([RouteSettings(prefix="/", upstream="https://up.example/base",
                                       token="ecr", header=header)])
    conn, pool = _unconnected(remote)  # the head is built, nothing is sent
    forwarder = FastForwarder(routes=routes, keeper=Keeper(storage), pool=pool,
                              auth=InboundAuth(ServerSettings()),
                              metrics=RouteMetrics(CollectorRegistry()), access_log=False)
    request = Request.of(method="GET", target="/v2/x?y=1", headers=fields, host="p")
    route = routes.routes[0]
    line = f"{header}: Basic t\r\n".encode()
    fast = forwarder.fast._request_head(conn, request, route, "up.example", line,
                                        header.lower().encode())
    general = forwarder.fast._general_head(conn, request, route, "up.example", line)
    assert fast == general


class Rig:
    """One client connection and one pooled upstream connection around a forwarder."""

    def __init__(self, *, read_timeout: float = 30) -> None:
        storage = MemoryStorage()
        storage.write("ecr", Token(value=TOKEN))
        routes = RouteTable([RouteSettings(prefix="/", upstream="http://up.example:8081",
                                           token="ecr")])
        self.pool = Pool(ssl_context=ssl.create_default_context(), connect_timeout=5,
                         read_timeout=read_timeout)
        self.up = UpstreamConnection(self.pool, Origin.parse("http://up.example:8081"))
        self.up_transport = FakeTransport(peer=("192.0.2.1", 8081))
        self.up_transport.set_protocol(self.up)
        self.up.connection_made(self.up_transport)
        self.pool.all.add(self.up)
        self.pool.put(self.up)
        self.metrics = RouteMetrics(CollectorRegistry())
        self.forwarder = FastForwarder(routes=routes, keeper=Keeper(storage), pool=self.pool,
                                       auth=InboundAuth(ServerSettings()), metrics=self.metrics,
                                       access_log=False)
        self.frontend = Frontend(self.forwarder, fast=self.forwarder.fast)
        self.client = self.frontend()
        self.client_transport = FakeTransport()
        self.client_transport.set_protocol(self.client)
        self.client.connection_made(self.client_transport)

    def counted(self) -> dict[tuple[str, str], int]:
        """Answers counted, by route and status class."""
        return {(route, f"{cls}xx"): n for route, by_class in self.metrics._requests.items()
                for cls, n in enumerate(by_class) if n}

    async def close(self) -> None:
        await self.frontend.shutdown(0.1)
        await self.pool.close()


def test_pipelined_requests_take_the_callback_path_in_order() -> None:
    async def main() -> None:
        rig = Rig()
        rig.client.data_received(GET.replace(b"/v2/x", b"/one") + GET.replace(b"/v2/x", b"/two"))
        assert rig.up_transport.take().startswith(b"GET /one ")  # the second waits its turn
        feed(rig.up, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
        assert rig.client_transport.take().endswith(b"\r\n\r\none")
        assert rig.up_transport.take().startswith(b"GET /two ")  # same pooled connection
        feed(rig.up, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
        assert rig.client_transport.take().endswith(b"\r\n\r\ntwo")
        assert rig.client.task is None  # no coroutine ran
        assert rig.counted() == {("/", "2xx"): 2}
        await rig.close()
    run(main)


def test_a_client_that_leaves_mid_answer_aborts_the_upstream_exchange() -> None:
    async def main() -> None:
        rig = Rig()
        rig.client.data_received(GET)
        feed(rig.up, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG + b"a" * 1000)
        assert rig.client_transport.take().startswith(b"HTTP/1.1 200 OK")  # streaming
        rig.client_transport.close()
        await settle()
        assert rig.up_transport.aborted  # never back to the pool mid-body
        assert rig.pool.take(rig.up.origin) is None
        assert rig.counted() == {("-", "4xx"): 1}  # 499, as the coroutine path counts it
        assert not rig.client.busy
        await rig.close()
    run(main)


def test_an_upstream_that_breaks_mid_body_cuts_the_client_connection() -> None:
    async def main() -> None:
        rig = Rig()
        rig.client.data_received(GET)
        feed(rig.up, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG + b"a" * 1000)
        rig.up_transport.close()  # the upstream goes away before the end of the body
        await settle()
        assert rig.client_transport.aborted  # a truncated body, never a complete-looking one
        assert rig.metrics.upstream_errors.labels("/", "body")._value.get() == 1
        await rig.close()
    run(main)


def test_an_upstream_that_does_not_answer_in_time_gets_a_504() -> None:
    async def main() -> None:
        rig = Rig(read_timeout=0.05)
        rig.client.data_received(GET)
        for _ in range(200):  # the read timer runs on the loop's clock: wait for its event
            if rig.client_transport.data:
                break
            await asyncio.sleep(0.01)
        assert rig.client_transport.take().startswith(b"HTTP/1.1 504 ")
        assert rig.up_transport.aborted
        assert rig.counted() == {("/", "5xx"): 1}
        await rig.close()
    run(main)
