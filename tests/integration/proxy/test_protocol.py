"""HTTP/1.1 edge cases at the byte level: pipelining, framing, 1xx, Connection: close,
request smuggling defenses, flow control."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from awstoken import Keeper, MemoryStorage, Token
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.proxy import RunningProxy, Upstream, raw_upstream, running_proxy

from .conftest import call


def settings_for(url: str, **server: object) -> Settings:
    return Settings(server=ServerSettings(read_timeout=5.0, connect_timeout=2.0, **server),  # type: ignore[arg-type]
                    routes=(RouteSettings(prefix="/", upstream=url, token="ecr"),))


def keeper() -> Keeper:
    storage = MemoryStorage()
    storage.write("ecr", Token(value="Bearer t"))
    return Keeper(storage)


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[RunningProxy]:
    with running_proxy(settings_for(upstream.url), keeper()) as running:
        yield running


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


class Reader:
    """Reads HTTP/1.1 responses off a socket, one at a time, honouring their framing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        self.buffer += data
        return bool(data)

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise EOFError("connection closed mid-body")
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise EOFError("connection closed")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def response(self, *, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise EOFError("connection closed before a response")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        if head_request or status in (204, 304) or status < 200:
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._line().split(b";")[0], 16):
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            assert self._line() == b""
            return status, headers, body
        if "content-length" in headers:
            return status, headers, self._take(int(headers["content-length"]))
        while self._fill():
            pass
        body, self.buffer = self.buffer, b""
        return status, headers, body


def test_pipelined_requests_answered_in_order(proxy: RunningProxy, upstream: Upstream) -> None:
    with connect(proxy.url) as sock:
        sock.sendall(b"".join(f"GET /echo?n={i} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                              for i in range(5)))
        reader = Reader(sock)
        paths = [json.loads(reader.response()[2])["raw_path"] for _ in range(5)]
    assert paths == [f"/echo?n={i}" for i in range(5)]


def test_pipelined_upload_then_get(proxy: RunningProxy, upstream: Upstream) -> None:
    body = os.urandom(300_000)
    with connect(proxy.url) as sock:
        sock.sendall(f"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                     + body + b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        first = json.loads(reader.response()[2])
        second = json.loads(reader.response()[2])
    assert first["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert second["raw_path"] == "/after"


def test_chunked_upload_streams_through(proxy: RunningProxy, upstream: Upstream) -> None:
    parts = [os.urandom(n) for n in (1, 70_000, 5, 300_000)]
    wire = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts) + b"0\r\n\r\n"
    with connect(proxy.url) as sock:
        sock.sendall(b"POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + wire)
        status, _, answer = Reader(sock).response()
    assert status == 200
    record = json.loads(answer)
    assert record["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


def expected_chunked(size: int) -> bytes:
    """What the stand-in upstream's ``/chunked/N`` sends."""
    out, sent = b"", 0
    while sent < size:
        part = bytes([65 + (sent // 1000) % 26]) * min(7919, size - sent)
        out += part
        sent += len(part)
    return out


def test_chunked_response_to_http11_and_http10(proxy: RunningProxy) -> None:
    size = 123_457
    with connect(proxy.url) as sock:
        sock.sendall(f"GET /chunked/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, headers, body = Reader(sock).response()
    assert status == 200 and body == expected_chunked(size)
    assert headers.get("transfer-encoding") == "chunked" or headers.get("content-length") == str(size)
    with connect(proxy.url) as sock:  # HTTP/1.0 has no chunked coding: length or close
        sock.sendall(f"GET /chunked/{size} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        status, headers, body = Reader(sock).response()
    assert status == 200 and len(body) == size
    assert "transfer-encoding" not in headers
    assert body == expected_chunked(size)


def test_connection_close_is_honoured(proxy: RunningProxy) -> None:
    with connect(proxy.url) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reader = Reader(sock)
        status, headers, _ = reader.response()
        assert status == 200
        assert headers.get("connection", "").lower() == "close"
        sock.settimeout(5)
        assert sock.recv(10) == b""  # the proxy closed its side


def test_head_has_length_and_no_body_then_keepalive_continues(proxy: RunningProxy,
                                                              tmp_path: Path) -> None:
    (tmp_path / "upstream-files" / "blob").write_bytes(b"z" * 5000)
    with connect(proxy.url) as sock:
        sock.sendall(b"HEAD /file/blob HTTP/1.1\r\nHost: x\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        status, headers, _ = reader.response(head_request=True)
        assert status == 200 and headers["content-length"] == "5000"
        status, _, body = reader.response()
        assert status == 200 and json.loads(body)["raw_path"] == "/echo"


def test_expect_100_continue(proxy: RunningProxy, upstream: Upstream) -> None:
    with connect(proxy.url) as sock:
        sock.sendall(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        reader = Reader(sock)
        status, _, _ = reader.response()
        assert status == 100
        sock.sendall(b"data")
        status, _, body = reader.response()
    assert status == 200 and json.loads(body)["body_len"] == 4
    assert not any(k.lower() == "expect" for k, _ in upstream.seen[-1]["headers"])


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n Folded: header\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
], ids=["cl-and-te", "te-not-chunked", "cl-twice", "cl-negative", "obs-fold", "nul-in-value"])
def test_smuggling_shapes_rejected(proxy: RunningProxy, upstream: Upstream,
                                   request_bytes: bytes) -> None:
    with connect(proxy.url) as sock:
        sock.sendall(request_bytes)
        sock.settimeout(5)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), answer[:100]
    assert upstream.seen == []
    assert call(proxy.url, "GET", "/echo").status == 200


def test_invalid_chunk_framing_never_reaches_upstream_whole(proxy: RunningProxy,
                                                            upstream: Upstream) -> None:
    with connect(proxy.url) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\nzz\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert answer == b"" or re.match(rb"HTTP/1\.[01] (4\d\d|502) ", answer), answer[:100]
    assert not any(s["raw_path"] == "/smuggled" for s in upstream.seen)
    assert not any(s["raw_path"] == "/x" and s["body_len"] == 5 for s in upstream.seen)
    assert call(proxy.url, "GET", "/echo").status == 200


@pytest.mark.parametrize("fields", [[b"v" * 70_000], [b"v" * 8000] * 20], ids=["one-big", "many"])
def test_oversized_request_head_is_4xx(proxy: RunningProxy, upstream: Upstream,
                                       fields: list[bytes]) -> None:
    with connect(proxy.url) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-Big-%d: %s\r\n" % (i, value) for i, value in enumerate(fields)) + b"\r\n")
        sock.settimeout(5)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert re.match(rb"HTTP/1\.[01] (400|431) ", answer), answer[:100]
    assert upstream.seen == []


def test_upstream_interim_1xx_skipped() -> None:
    def answer(head: bytes) -> tuple[bytes, bool]:
        return (b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nfinal", False)

    with raw_upstream(answer) as (url, _), running_proxy(settings_for(url), keeper()) as proxy:
        reply = call(proxy.url, "GET", "/x")
        assert reply.status == 200
        assert reply.body == b"final"
        assert reply.header("X-Final") == "yes"


def test_upstream_closing_after_each_answer_is_not_an_error() -> None:
    def answer(head: bytes) -> tuple[bytes, bool]:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True  # closes, no header says so

    with raw_upstream(answer) as (url, seen), running_proxy(settings_for(url), keeper()) as proxy:
        for _ in range(5):
            reply = call(proxy.url, "GET", "/x")
            assert (reply.status, reply.body) == (200, b"ok")
            time.sleep(0.05)
        assert len(seen) == 5


def test_upstream_eof_delimited_body_and_bad_framing() -> None:
    def answer(head: bytes) -> tuple[bytes, bool]:
        if head.startswith(b"GET /eof"):
            return b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + b"e" * 200_000, True
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nnot-hex\r\n", True

    with raw_upstream(answer) as (url, _), running_proxy(settings_for(url), keeper()) as proxy:
        with connect(proxy.url) as sock:
            sock.sendall(b"GET /eof HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = Reader(sock).response()
        assert status == 200 and body == b"e" * 200_000
        bad = call(proxy.url, "GET", "/bad")
        assert bad.status == 502
        assert call(proxy.url, "GET", "/eof").status == 200


def _rss_kib() -> int:
    match = re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text())
    assert match
    return int(match.group(1))


def test_slow_client_pauses_the_upstream(proxy: RunningProxy) -> None:
    """A client that stops reading must not make the proxy buffer the whole body."""
    size = 400 * 1024 * 1024
    before = _rss_kib()
    with connect(proxy.url) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"GET /stream/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        time.sleep(2.0)  # not reading: the proxy must stop reading the upstream too
        grown = _rss_kib() - before
        received = len(first)
        sock.settimeout(30)
        while received < 20 * 1024 * 1024:  # and it goes on when the client reads again
            chunk = sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
    assert grown < 48 * 1024, f"RSS grew by {grown // 1024} MiB while the client was not reading"


def _fetch_twice_stalling(url: str, data: bytes) -> None:
    with connect(url) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(b"GET /file/random HTTP/1.1\r\nHost: x\r\n\r\n")
            while b"\r\n\r\n" not in reader.buffer:
                assert reader._fill()
            head, _, rest = reader.buffer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert f"content-length: {len(data)}".encode() in head.lower()
            parts, received = [rest], len(rest)
            while received < len(data):
                if len(parts) % 64 == 0:
                    time.sleep(0.05)  # stall: the proxy's writes to us queue up meanwhile
                chunk = sock.recv(min(256 * 1024, len(data) - received))
                assert chunk
                parts.append(chunk)
                received += len(chunk)
            reader.buffer = b""
            assert hashlib.sha256(b"".join(parts)).digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_large_body_intact_through_stalling_clients(tmp_path: Path, upstream: Upstream,
                                                     loop: str) -> None:
    """Random bytes to two clients at once that read in bursts with stalls, twice each on
    one connection: every byte arrives in order although the proxy's client-side writes are
    left pending (uvloop keeps a view of what it could not send yet: the read buffer, shared
    by the upstream connections, must not be refilled under it) and its parser restarts."""
    data = os.urandom(24 * 1024 * 1024)
    (tmp_path / "upstream-files" / "random").write_bytes(data)
    with running_proxy(settings_for(upstream.url), keeper(), uvloop=loop == "uvloop") as proxy, \
            ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(_fetch_twice_stalling, proxy.url, data) for _ in range(2)]:
            done.result(timeout=120)


@pytest.mark.parametrize("size", [100_000, 8 * 1024 * 1024])
def test_a_refused_upload_reaches_a_client_that_sends_all_before_reading(
        upstream: Upstream, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """The standard library's clients (urllib.request, http.client) send the whole body,
    then read. The proxy refuses at the head (inbound credentials, 401): it reads the rest
    of the body and drops it, so the client gets its 401 and can use the same connection
    again. (Closing at once reset the connection under them: an error, not the 401.)"""
    import http.client
    import urllib.error
    import urllib.request

    monkeypatch.setenv("AWSTOKEN_TEST_INBOUND", "inbound-secret")
    settings = settings_for(upstream.url, bearer_tokens_env="AWSTOKEN_TEST_INBOUND")
    body = b"x" * size
    with running_proxy(settings, keeper()) as running:
        put = urllib.request.Request(f"{running.url}/upload", data=body, method="PUT",
                                     headers={"Authorization": "Bearer wrong"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(put, timeout=30)
        assert refused.value.code == 401
        refused.value.close()  # it holds the connection
        parts = urlsplit(running.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        try:
            for method, path, auth in (("PUT", "/upload", "wrong"), ("PUT", "/upload", "wrong"),
                                       ("GET", "/after", "inbound-secret")):
                conn.request(method, path, body=body if method == "PUT" else None,
                             headers={"Authorization": f"Bearer {auth}"})
                reply = conn.getresponse()
                reply.read()
                assert reply.status == (401 if method == "PUT" else 200)
                sock = conn.sock
                assert sock is not None  # kept open: the next request goes on it
        finally:
            conn.close()
        assert [seen["raw_path"] for seen in upstream.seen] == ["/after"]
