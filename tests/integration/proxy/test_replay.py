"""Request bodies kept for one replay after an upstream 401/403: in memory, spooled, or not at
all (past ``replay_spool_max_bytes``), whether the upstream read the body or refused early."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest

from awstoken import FunctionSource, Keeper, MemoryStorage
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from awstoken.proxy._replay import BodyRecorder
from tests.fixtures.proxy import LoopThread, RunningProxy, Upstream, running_proxy

from .conftest import call

BODY = os.urandom(3 * 1024 * 1024 + 17)


@contextmanager
def _proxy(upstream_url: str, **server: float) -> Iterator[tuple[RunningProxy, Keeper]]:
    values = iter([f"Bearer {i}" for i in range(1, 10)])
    keeper = Keeper(MemoryStorage())
    keeper.rotate("t", FunctionSource(lambda: next(values)), min_refresh_gap=0.05)
    settings = Settings(server=ServerSettings(**server),  # type: ignore[arg-type]
                        routes=(RouteSettings(prefix="/", upstream=upstream_url, token="t"),))
    try:
        while (record := keeper.record("t")) is None or record.value is None:
            threading.Event().wait(0.01)
        while time.time() - record.refreshed_at <= 0.05:  # past the gap: "Bearer 1" may be refreshed
            threading.Event().wait(0.01)
        with running_proxy(settings, keeper) as proxy:
            yield proxy, keeper
    finally:
        keeper.stop()


def _put_chunked(base: str, path: str, body: bytes) -> tuple[int, bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        pieces = (body[i:i + 100_000] for i in range(0, len(body), 100_000))
        conn.request("PUT", path, body=pieces, encode_chunked=True)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("memory", [8 * 1024 * 1024, 64 * 1024], ids=["memory", "spooled"])
def test_refused_body_is_replayed_whole(upstream: Upstream, chunked: bool, memory: int) -> None:
    upstream.accept_tokens = {"Bearer 2"}
    with _proxy(upstream.url, replay_max_bytes=memory,
                replay_spool_max_bytes=8 * 1024 * 1024) as (proxy, _):
        if chunked:
            status, _ = _put_chunked(proxy.url, "/v2/x/blobs/uploads/1", BODY)
        else:
            status = call(proxy.url, "PUT", "/v2/x/blobs/uploads/1", body=BODY).status
    assert status == 200
    digest = hashlib.sha256(BODY).hexdigest()
    assert [(s["body_len"], s["body_sha256"]) for s in upstream.seen] == [(len(BODY), digest)] * 2


def test_body_past_the_bounds_is_not_replayed_but_refreshes(upstream: Upstream) -> None:
    upstream.accept_tokens = {"Bearer 2"}
    with _proxy(upstream.url, replay_max_bytes=64 * 1024,
                replay_spool_max_bytes=1024 * 1024) as (proxy, keeper):
        assert call(proxy.url, "PUT", "/up", body=BODY).status == 401
        record = keeper.record("t")
        assert record is not None and record.value == "Bearer 2"  # the client's retry works
        assert call(proxy.url, "PUT", "/up", body=BODY).status == 200
    assert [s["body_len"] for s in upstream.seen] == [len(BODY)] * 2


class _EarlyRefusal:
    """An upstream that answers 401 to the old token as soon as the head arrives, without
    reading the body, and closes (as Go's net/http does with an unread body); with the new
    token it reads the body and answers its SHA-256."""

    def __init__(self, *, keep_alive: bool = False) -> None:
        self.keep_alive = keep_alive
        self.loop = LoopThread()
        self.seen: list[tuple[str, int]] = []
        self.writers: set[asyncio.StreamWriter] = set()
        self.server = self.loop.run(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return False
        head = raw.decode("latin-1")
        if not head.startswith(("GET ", "PUT ", "POST ")):
            self.seen.append(("garbage", -2))  # the rest of an earlier body, read as a request
            return False
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:] if line)}
        token = headers.get("authorization", "")
        if token != "Bearer 2":
            self.seen.append((token, -1))
            close = b"" if self.keep_alive else b"Connection: close\r\n"
            writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n" + close +
                         b"\r\ndenied")
            await writer.drain()
            # Then discard the body, as servers do, so that closing never resets the answer
            # away; a proxy that stops sending it mid-way makes this fail (connection reset).
            try:
                await reader.readexactly(int(headers.get("content-length", "0")))
            except (asyncio.IncompleteReadError, ConnectionError):
                return False
            return self.keep_alive
        body = await reader.readexactly(int(headers["content-length"]))
        self.seen.append((token, len(body)))
        digest = hashlib.sha256(body).hexdigest().encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(digest), digest))
        await writer.drain()
        return self.keep_alive

    def close(self) -> None:
        async def shut() -> None:
            # Connections still open (keep-alive) are closed here, on their loop: left to the
            # garbage collector, Python 3.13 warns ("loop is closed", unclosed transport).
            self.server.close()
            for writer in list(self.writers):
                writer.close()
            for writer in list(self.writers):
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

        self.loop.run(shut())
        self.loop.close()


def test_early_refusal_mid_body_records_the_rest_and_replays() -> None:
    early = _EarlyRefusal()
    try:
        with _proxy(early.url, replay_max_bytes=64 * 1024,
                    replay_spool_max_bytes=8 * 1024 * 1024) as (proxy, _):
            reply = call(proxy.url, "PUT", "/v2/x/blobs/uploads/2", body=BODY)
    finally:
        early.close()
    assert reply.status == 200
    assert reply.body == hashlib.sha256(BODY).hexdigest().encode()
    assert early.seen == [("Bearer 1", -1), ("Bearer 2", len(BODY))]


def test_early_refusal_of_a_body_too_big_to_keep_never_reuses_the_half_sent_connection() -> None:
    # The upstream refuses at the head and keeps the connection open; the body is not kept
    # (bounds 0), so the refusal goes back, and that connection (half a body sent) must be
    # closed, not pooled: the client's retry goes on a fresh one and succeeds.
    early = _EarlyRefusal(keep_alive=True)
    try:
        with _proxy(early.url, replay_max_bytes=0, replay_spool_max_bytes=0,
                    read_timeout=5) as (proxy, _):
            first = call(proxy.url, "PUT", "/v2/x/blobs/uploads/3", body=BODY)
            second = call(proxy.url, "PUT", "/v2/x/blobs/uploads/3", body=BODY)
    finally:
        early.close()
    assert (first.status, second.status) == (401, 200)
    assert second.body == hashlib.sha256(BODY).hexdigest().encode()
    assert early.seen == [("Bearer 1", -1), ("Bearer 2", len(BODY))]


def test_spool_file_is_private_and_unlinked() -> None:
    async def main() -> tuple[int, int, bytes]:
        recorder = BodyRecorder(memory_max=10, spool_max=10 * 1024 * 1024)
        for _ in range(3):
            await recorder.add(b"x" * 600_000)
        await recorder.finish()
        assert recorder._file is not None
        info = os.fstat(recorder._file.fileno())
        data = b"".join([chunk async for chunk in recorder.read()])
        recorder.close()
        return info.st_mode & 0o777, info.st_nlink, data

    mode, links, data = asyncio.run(main())
    assert mode & 0o077 == 0
    assert links == 0  # no name anywhere: another local user cannot open it
    assert data == b"x" * 1_800_000
