"""Bad input and failures: the proxy stays up, later requests succeed, nothing leaks."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from awstoken import Keeper, MemoryStorage, Token
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.proxy import RunningProxy, Upstream, running_proxy
from tests.fixtures.wait import wait_until

from .conftest import call


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[RunningProxy]:
    storage = MemoryStorage()
    storage.write("ecr", Token(value="Bearer t"))
    settings = Settings(server=ServerSettings(read_timeout=1.0, connect_timeout=1.0),
                        routes=(RouteSettings(prefix="/", upstream=upstream.url, token="ecr"),))
    with running_proxy(settings, Keeper(storage)) as running:
        yield running


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def raw_exchange(url: str, data: bytes, read: bool = True) -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(data)
        if not read:
            return b""
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_malformed_requests_get_400_and_proxy_stays_up(proxy: RunningProxy) -> None:
    before = open_fds()
    for garbage in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                    # Well-formed, refused by policy: the connection may stay open (closed
                    # here by the client's request, not by a 5 s read timeout).
                    b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n"
                    b"Connection: close\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64)):
        answer = raw_exchange(proxy.url, garbage)
        assert re.match(rb"HTTP/1\.[01] 400 ", answer) or answer == b"", answer[:80]
    assert call(proxy.url, "GET", "/echo").status == 200
    wait_until(lambda: open_fds() <= before + 2, what=f"open fds back to {before} + 2")


def test_client_disconnect_mid_stream(proxy: RunningProxy, upstream: Upstream) -> None:
    before = open_fds()
    for _ in range(5):
        parts = urlsplit(proxy.url)
        with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
            sock.sendall(b"GET /stream/500000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            received = sock.recv(65536)
            assert received.startswith(b"HTTP/1.1 200")
    assert call(proxy.url, "GET", "/echo").status == 200
    # Both sides of each abandoned exchange are closed, not left to a timeout.
    wait_until(lambda: open_fds() <= before + 2, what=f"open fds back to {before} + 2")


def test_upstream_dies_mid_stream(proxy: RunningProxy) -> None:
    answer = raw_exchange(proxy.url, b"GET /die HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: 10000000" in head
    assert 0 < len(body) < 10_000_000  # cut short, so the client knows the body is incomplete
    assert call(proxy.url, "GET", "/echo").status == 200


def test_upstream_never_answers_times_out(proxy: RunningProxy) -> None:
    before = open_fds()
    started = time.monotonic()
    reply = call(proxy.url, "GET", "/slow")
    assert reply.status == 504
    assert time.monotonic() - started < 10
    assert call(proxy.url, "GET", "/echo").status == 200
    wait_until(lambda: open_fds() <= before + 2, what=f"open fds back to {before} + 2")


def test_upstream_refusing_connections_is_502(upstream: Upstream) -> None:
    # Bound, never listening, held for the whole test: the port refuses connections, and
    # no other process (tests run in parallel) can start listening on it meanwhile.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
        storage = MemoryStorage()
        storage.write("ecr", Token(value="Bearer t"))
        settings = Settings(routes=(RouteSettings(prefix="/", upstream=dead, token="ecr"),))
        with running_proxy(settings, Keeper(storage)) as proxy:
            reply = call(proxy.url, "GET", "/v2/")
            assert reply.status == 502
            assert b"cannot connect to upstream" in reply.body


def test_tls_verified_by_default(tmp_path: Path) -> None:
    # A plain-TCP listener speaking no TLS stands in for an untrusted/broken TLS upstream.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        storage = MemoryStorage()
        storage.write("ecr", Token(value="Bearer t"))
        settings = Settings(server=ServerSettings(connect_timeout=1.0, read_timeout=1.0),
                            routes=(RouteSettings(prefix="/", upstream=f"https://127.0.0.1:{port}",
                                                  token="ecr"),))
        with running_proxy(settings, Keeper(storage)) as proxy:
            assert call(proxy.url, "GET", "/v2/").status in (502, 504)
    bad = replace(settings, server=ServerSettings(ca_file=str(tmp_path / "missing.pem")))
    from awstoken import ConfigError
    from awstoken.proxy import ProxyServer

    with pytest.raises(ConfigError, match="ca_file"):
        ProxyServer(bad, Keeper(MemoryStorage()))


def _rss_kib() -> int:
    match = re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text())
    assert match
    return int(match.group(1))


def test_large_body_streams_in_bounded_memory(proxy: RunningProxy) -> None:
    size = 256 * 1024 * 1024
    parts = urlsplit(proxy.url)
    before = _rss_kib()
    peak = before
    received = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"GET /stream/{size} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        header = b""
        while b"\r\n\r\n" not in header:
            header += sock.recv(65536)
        head, _, rest = header.partition(b"\r\n\r\n")
        received = len(rest)
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
            if received % (16 << 20) < (1 << 20):
                peak = max(peak, _rss_kib())
    assert f"Content-Length: {size}".encode() in head
    assert received == size
    assert peak - before < 64 * 1024, f"RSS grew by {(peak - before) // 1024} MiB"
