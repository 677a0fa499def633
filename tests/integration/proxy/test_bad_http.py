"""Hostile and malformed HTTP against the proxy: a 4xx, nothing forwarded, the proxy stays up.

Each request goes over a raw socket (no client library would send these). The stand-in
upstream records what reaches it: a refused request must not reach it at all, and a
smuggled second request must never appear there.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from awstoken import Keeper, MemoryStorage, Token
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.faults import open_fds, wait_until
from tests.fixtures.proxy import RunningProxy, Upstream, running_proxy

from .conftest import call

TOKEN = "Bearer bad-input-token-0123456789"
H = b"Host: x\r\n"

BAD_REQUESTS: dict[str, bytes] = {
    # request lines
    "garbage": b"GARBAGE\r\n\r\n",
    "bad-method-char": b"G<T /v2/x HTTP/1.1\r\n" + H + b"\r\n",
    "unknown-version": b"GET /v2/x HTTP/9.9\r\n" + H + b"\r\n",
    "http-0.9": b"GET /v2/x\r\n\r\n",
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "bare-lf": b"GET /v2/x HTTP/1.1\nHost: x\n\n",
    "tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),
    "uri-too-long": b"GET /v2/" + b"a" * 70_000 + b" HTTP/1.1\r\n" + H + b"\r\n",
    # request targets other than origin-form
    "absolute-form": b"GET http://evil.example/v2/x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    "connect": b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    "asterisk-form": b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n",
    # headers
    "header-without-colon": b"GET /v2/x HTTP/1.1\r\n" + H + b"Bad Header\r\n\r\n",
    "nul-in-header": b"GET /v2/x HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n",
    "obs-fold": b"GET /v2/x HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n",
    "space-before-colon": b"GET /v2/x HTTP/1.1\r\n" + H + b"Content-Length : 3\r\n\r\nabc",
    "duplicate-host": b"GET /v2/x HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "oversized-header": b"GET /v2/x HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    "oversized-header-block": b"GET /v2/x HTTP/1.1\r\n" + H + b"".join(
        b"X-%d: %s\r\n" % (i, b"b" * 900) for i in range(200)) + b"\r\n",
    # bodies and framing
    "cl-negative": b"POST /v2/x HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n",
    "cl-plus-sign": b"POST /v2/x HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc",
    "cl-not-a-number": b"POST /v2/x HTTP/1.1\r\n" + H + b"Content-Length: 1e3\r\n\r\n",
    "cl-duplicate-differing": b"POST /v2/x HTTP/1.1\r\n" + H +
        b"Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "cl-duplicate-equal": b"POST /v2/x HTTP/1.1\r\n" + H +
        b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "chunk-size-not-hex": b"POST /v2/x HTTP/1.1\r\n" + H +
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-mismatch": b"POST /v2/x HTTP/1.1\r\n" + H +
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nabc\r\n0\r\n\r\n",
    "chunk-bad-extension": b"POST /v2/x HTTP/1.1\r\n" + H +
        b'Transfer-Encoding: chunked\r\n\r\n3;ext="a\r\nabc\r\n0\r\n\r\n',
    "te-unknown-coding": b"POST /v2/x HTTP/1.1\r\n" + H +
        b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-chunked-not-last": b"POST /v2/x HTTP/1.1\r\n" + H +
        b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-in-http-1.0": b"POST /v2/x HTTP/1.0\r\n" + H +
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    # request smuggling: a second request hidden in the first one's body
    "smuggle-cl-te": b"POST /v2/x HTTP/1.1\r\n" + H +
        b"Content-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /v2/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    "smuggle-te-cl": b"POST /v2/x HTTP/1.1\r\n" + H +
        b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
        b"5c\r\nGET /v2/smuggled HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n",
    "smuggle-te-te": b"POST /v2/x HTTP/1.1\r\n" + H +
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
        b"0\r\n\r\nGET /v2/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    "smuggle-te-space": b"POST /v2/x HTTP/1.1\r\n" + H +
        b"Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n"
        b"0\r\n\r\nGET /v2/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
}

#: Path traversal in the prefix logic: refused before any route is looked at.
TRAVERSALS = [
    "/v2/../admin", "/v2/..", "/v2/a/../../admin", "/v2/./x", "/v2/%2e%2e/admin",
    "/v2/%2E%2e/admin", "/v2/.%2e/admin", "/v2/%2e./admin", "/v2/..%2fadmin",
    "/v2%2f..%2f..%2fadmin", "/v2/..%5cadmin", "/v2/..\\admin", "/npm/../../admin",
    "/npm/%2e%2e/%2e%2e/admin", "/npm/x/..?q=1",
]


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[RunningProxy]:
    storage = MemoryStorage()
    storage.write("ecr", Token(value=TOKEN))
    settings = Settings(
        server=ServerSettings(admin_listen=None, read_timeout=2.0),
        routes=(RouteSettings(prefix="/v2", upstream=upstream.url + "/base", token="ecr"),
                RouteSettings(prefix="/npm/", upstream=upstream.url + "/repo/npm", token="ecr",
                              strip_prefix=True)))
    with running_proxy(settings, Keeper(storage)) as running:
        yield running


def exchange(url: str, data: bytes, quiet: float = 0.2) -> bytes:
    """Send ``data`` and read what comes back until the proxy closes or goes quiet.

    No half-close: the proxy (rightly) treats a client that shut its side as gone.
    """
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        # The proxy may close early on an oversized head: its answer still counts.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                sock.settimeout(quiet)  # a smuggled second answer would follow at once
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def statuses(answer: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"^HTTP/\d\.\d (\d{3}) ", answer, re.M)]


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_malformed_and_smuggling_requests_are_refused(
        name: str, proxy: RunningProxy, upstream: Upstream,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    answer = exchange(proxy.url, BAD_REQUESTS[name])
    codes = statuses(answer)
    assert codes, answer[:200]
    assert all(400 <= code < 500 for code in codes), (codes, answer[:300])
    assert upstream.seen == []  # nothing reached the upstream, smuggled or not
    # The proxy logs a line, never a traceback (any client can send this).
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert call(proxy.url, "GET", "/v2/ok").status == 200


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_refused(path: str, proxy: RunningProxy, upstream: Upstream) -> None:
    answer = exchange(proxy.url, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert statuses(answer) == [400], answer[:200]
    assert b"dot segments" in answer
    assert upstream.seen == []


@pytest.mark.parametrize(("path", "forwarded"), [
    ("/v2//admin", "/base/v2//admin"),  # empty segments stay under the route's base path
    ("/npm//x", "/repo/npm//x"),
    ("/npm///evil.example/x", "/repo/npm///evil.example/x"),
    ("/v2/...", "/base/v2/..."),  # not a dot segment
    ("/v2/x?a=../../b", "/base/v2/x?a=../../b"),  # the query is not a path
])
def test_odd_but_harmless_paths_stay_under_the_upstream_base(
        path: str, forwarded: str, proxy: RunningProxy, upstream: Upstream) -> None:
    reply = call(proxy.url, "GET", path)
    assert reply.status == 200
    assert upstream.seen[-1]["raw_path"] == forwarded


def test_a_flood_of_bad_requests_leaves_no_descriptor_behind(proxy: RunningProxy) -> None:
    call(proxy.url, "GET", "/v2/warm-up")
    before = open_fds()
    for _ in range(3):
        for data in BAD_REQUESTS.values():
            exchange(proxy.url, data, quiet=0.01)
    assert call(proxy.url, "GET", "/v2/ok").status == 200
    assert wait_until(lambda: open_fds() <= before + 2), (open_fds(), before)


def test_admin_paths_are_not_served_on_the_proxy_listener(upstream: Upstream) -> None:
    storage = MemoryStorage()
    storage.write("ecr", Token(value=TOKEN))
    settings = Settings(routes=(RouteSettings(prefix="/v2", upstream=upstream.url, token="ecr"),))
    with running_proxy(settings, Keeper(storage)) as running:
        assert running.admin_url is not None
        for path in ("/metrics", "/readyz", "/healthz"):
            assert call(running.url, "GET", path).status == 404
            assert call(running.admin_url, "GET", path).status in (200, 503)
        # Both listeners are on loopback by default.
        assert urlsplit(running.admin_url).hostname == "127.0.0.1"
    assert ServerSettings().listen[0] == "127.0.0.1"
    admin_listen = ServerSettings().admin_listen
    assert admin_listen is not None
    assert admin_listen[0] == "127.0.0.1"
