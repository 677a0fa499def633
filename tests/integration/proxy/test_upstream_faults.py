"""Upstream faults: resets, silence, slow heads and bodies, bodies cut short or mis-framed.

A raw-socket upstream misbehaves on purpose, path by path. Each fault costs the client of
that request only (an error status, or a connection cut when the status line was already
sent), concurrent requests succeed, and afterwards the proxy holds no more descriptors
than before.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from awstoken import Keeper, MemoryStorage, Token
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.faults import open_fds, wait_until
from tests.fixtures.proxy import RunningProxy, running_proxy

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _reset(conn: socket.socket) -> None:
    # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _trickle(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    for byte in b"abcde":
        time.sleep(0.15)
        conn.sendall(bytes([byte]))


def _big_then_cut(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"y" * 300_000)
    time.sleep(0.05)
    _reset(conn)


def _after(seconds: float, conn: socket.socket, data: bytes) -> None:
    time.sleep(seconds)
    conn.sendall(data)


def _then_stall(conn: socket.socket, data: bytes) -> None:
    conn.sendall(data)
    time.sleep(2)


BEHAVIOURS: dict[str, Callable[[socket.socket], None]] = {
    "/ok": lambda c: c.sendall(OK),
    "/reset": _reset,
    "/close": lambda c: c.close(),
    "/half-head": lambda c: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Le"),
    "/garbage-head": lambda c: c.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"),
    "/short-body": lambda c: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten.."),
    "/bad-chunked": lambda c: c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                        b"5\r\nhello\r\nzz\r\n"),
    "/big-then-reset": _big_then_cut,
    "/slow-head": lambda c: _after(0.6, c, OK),
    "/trickle": _trickle,
    "/stall-head": lambda c: time.sleep(2),
    "/stall-body": lambda c: _then_stall(c, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
                                         + b"z" * 1000),
}


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn: socket.socket = self.request
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        path = data.split(b" ", 2)[1].decode()
        with contextlib.suppress(OSError):
            BEHAVIOURS[path](conn)


@pytest.fixture
def bad_upstream() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def proxy(bad_upstream: str) -> Iterator[RunningProxy]:
    storage = MemoryStorage()
    storage.write("ecr", Token(value="Bearer upstream-faults-token-0123"))
    settings = Settings(server=ServerSettings(admin_listen=None, read_timeout=1.0,
                                              connect_timeout=1.0),
                        routes=(RouteSettings(prefix="/", upstream=bad_upstream, token="ecr"),))
    with running_proxy(settings, Keeper(storage)) as running:
        yield running


def fetch(url: str, path: str) -> tuple[int | None, bytes | str]:
    """(status, body) or (status or None, the error the client saw)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    status = None
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        status = resp.status
        return status, resp.read()
    except (http.client.HTTPException, OSError) as exc:
        return status, type(exc).__name__
    finally:
        conn.close()


#: Faults: the client of that request sees an error status, or (when the status line was
#: already sent) a cut connection. Slow but working upstreams: the full answer.
FAULTS = ["/reset", "/close", "/half-head", "/garbage-head", "/short-body", "/stall-head",
          "/bad-chunked", "/big-then-reset", "/stall-body"]
SLOW = {"/slow-head": b"ok", "/trickle": b"abcde"}  # slower than usual, within read_timeout


def check_outcome(path: str, status: int | None, body: bytes | str) -> None:
    if path in SLOW:
        assert (status, body) == (200, SLOW[path])
    elif isinstance(body, str):  # the connection was cut under a started answer
        assert status == 200, (status, body)
    else:
        assert status in (502, 504), (status, body)
        assert body.startswith(b"upstream 127.0.0.1")


@pytest.mark.parametrize("path", FAULTS + sorted(SLOW))
def test_each_fault_costs_only_its_own_request(path: str, proxy: RunningProxy) -> None:
    assert fetch(proxy.url, "/ok") == (200, b"ok")  # warm the pool
    before = open_fds()
    with ThreadPoolExecutor(4) as pool:
        faulty = [pool.submit(fetch, proxy.url, path) for _ in range(3)]
        # The raw upstream closes after each answer: these also meet stale pooled sockets.
        fine = [pool.submit(fetch, proxy.url, "/ok") for _ in range(20)]
        for future in faulty:
            check_outcome(path, *future.result())
        assert [f.result() for f in fine] == [(200, b"ok")] * 20
    assert fetch(proxy.url, "/ok") == (200, b"ok")
    # Both sides of every failed exchange are closed: no descriptor is left behind.
    assert wait_until(lambda: open_fds() <= before + 2, timeout=5), (open_fds(), before)
