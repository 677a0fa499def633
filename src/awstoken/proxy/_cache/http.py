"""The pull-through cache on the request path: hits, verified misses, confirmations.

``FastForwarder._forward`` hands cacheable routes to :meth:`ProxyCache.forward`, which
serves a hit (after the upstream confirmed the repository, see :meth:`_confirmed`) or
takes the object's lease and forwards; ``_respond`` then hands a 200 answer to a GET for
that object to :meth:`ProxyCache.respond`, which streams it to the client and to a
temporary file while hashing it, and sends the last piece only once the hash matched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter

from .._framing import body_sink, stream_framing
from .._h1 import (
    Chunk,
    ClientConnection,
    Request,
    UpstreamConnection,
    UpstreamError,
)
from .._h1 import encode_head as _encode_head
from .._h1 import reason as _reason
from .._headers import header, request_header_pairs, response_header_pairs
from .._policy import UpstreamFailure
from .._routes import Route, RouteTable
from .keys import Key, Learned, oci_key
from .serve import serve_entry
from .store import Fill, Store

if TYPE_CHECKING:
    from .._fast import FastForwarder

log = logging.getLogger("awstoken.proxy")

#: Seconds an upstream's "this repository has this digest" is trusted for cache hits.
CONFIRM_TTL = 300.0
_CONFIRM_LIMIT = 100_000
#: What :meth:`ProxyCache._hit` returns when the upstream did not confirm a cached object.
_REFUSED = -1


class _Counted:
    """A prometheus counter that also adds to the store's shared statistics."""

    def __init__(self, counter: Counter, name: str, cache: CacheMetrics) -> None:
        self.counter = counter
        self.name = name
        self.cache = cache

    def inc(self, route: str, amount: float = 1) -> None:
        self.counter.labels(route).inc(amount)
        pending = self.cache.pending.setdefault(route, {})
        pending[self.name] = pending.get(self.name, 0) + int(amount)


class CacheMetrics:
    """The cache's counters, by route: in ``/metrics``, and added every few seconds to
    each directory's ``stats.json`` (what ``awstoken cache`` reads)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pending: dict[str, dict[str, int]] = {}

        def counter(name: str, text: str) -> _Counted:
            return _Counted(Counter(f"awstoken_cache_{name}", text, ("route",),
                                    registry=registry), name, self)

        self.hits = counter("hits", "Requests answered from the cache.")
        self.misses = counter("misses", "Cacheable requests fetched from the upstream.")
        self.served_bytes = counter("served_bytes", "Body bytes sent from the cache.")
        self.fetched_bytes = counter("fetched_bytes", "Body bytes fetched from the upstream "
                                     "and stored after verification.")
        self.evictions = counter("evictions", "Objects evicted under max_size.")
        self.verify_failures = counter("verify_failures", "Upstream bodies whose hash did not "
                                       "match their address (not stored; the client's "
                                       "transfer was cut).")


class ProxyCache:
    """The caches of all routes of one process (stores shared by directory)."""

    def __init__(self, routes: RouteTable, registry: CollectorRegistry) -> None:
        self.stores: dict[str, Store] = {}
        by_path: dict[str, Store] = {}
        for route in routes.routes:
            if route.cache is None:
                continue
            path = os.path.abspath(route.cache.path)
            store = by_path.get(path)
            if store is None:
                store = by_path[path] = Store(path, route.cache.max_size,
                                              where=f"route {route.prefix!r} cache")
            elif route.cache.max_size is not None:
                store.max_size = min(store.max_size or route.cache.max_size,
                                     route.cache.max_size)
            self.stores[route.name] = store
        self.learned = Learned()
        self.metrics = CacheMetrics(registry)
        self._confirmations: dict[tuple[str, str, str], float] = {}
        self._fills: dict[int, tuple[Store, Key]] = {}
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    def for_routes(cls, routes: RouteTable, registry: CollectorRegistry) -> ProxyCache | None:
        if not any(route.cache is not None for route in routes.routes):
            return None
        return cls(routes, registry)

    def open(self) -> None:
        """Create or check every directory (ConfigError when one is not ours); start
        adding this process's counters to their statistics."""
        for store in set(self.stores.values()):
            store.open()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_every(5.0))

    async def _flush_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await asyncio.get_running_loop().run_in_executor(None, self.flush)

    def flush(self) -> None:
        """Add the counts since the last flush to each directory's ``stats.json``."""
        pending, self.metrics.pending = self.metrics.pending, {}
        by_store: dict[Store, dict[str, int]] = {}
        for route, counts in pending.items():
            store = self.stores.get(route)
            if store is not None:
                total = by_store.setdefault(store, {})
                for name, value in counts.items():
                    total[name] = total.get(name, 0) + value
        for store, counts in by_store.items():
            store.add_stats(counts)

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self.flush()
        for store in set(self.stores.values()):
            store.close()

    # -- keys ------------------------------------------------------------------------------

    def key(self, route: Route, target: str) -> Key | None:
        key = oci_key(target)
        if key is not None:
            return key
        learned = self.learned.get(route.name, target)
        if learned is None:
            return None
        return Key("files", learned[0], learned[1])

    def learn(self, route: Route, request: Request, body: bytes, proxy_origin: str) -> None:
        """Remember the file hashes named by an index page (see :class:`Learned`)."""
        if route.name not in self.stores:
            return
        page = route.upstream_url(request.target.split("?", 1)[0])

        def to_target(origin: str, path: str) -> str | None:
            if origin == route.upstream_origin:
                return path
            if origin == proxy_origin:
                base = route.prefix.rstrip("/") if route.strip_prefix else ""
                if not path.startswith(base + "/"):
                    return None
                return route.upstream_target(path)
            return None

        origins = (route.upstream_origin, proxy_origin)
        self.learned.learn(route.name, page, origins, body, to_target)

    # -- the request -----------------------------------------------------------------------

    async def forward(self, fw: FastForwarder, conn: ClientConnection, request: Request,
                      route: Route, value: str) -> int:
        """Serve ``request`` from the cache, or forward it (filling the cache on a miss)."""
        store = self.stores.get(route.name)
        method = request.method
        key = None
        if store is not None and request.body is None and method in ("GET", "HEAD"):
            key = self.key(route, route.upstream_target(request.target))
        if key is None or store is None:
            return await fw._forward(conn, request, route, value, cached=True)
        status = await self._hit(fw, conn, request, route, value, store, key)
        if status is not None and status != _REFUSED:
            return status
        # Nothing is written while the disk refuses (full, read-only): hits still are read.
        if status == _REFUSED or method != "GET" or not store.usable or \
                header(request.headers, "range") is not None:
            return await fw._forward(conn, request, route, value, cached=True)
        async with store.lease(key):
            # Another request may have filled it while this one waited for the lease.
            status = await self._hit(fw, conn, request, route, value, store, key)
            if status == _REFUSED:
                return await fw._forward(conn, request, route, value, cached=True)
            if status is not None:
                return status
            self.metrics.misses.inc(route.name)
            self._fills[id(request)] = (store, key)
            try:
                return await fw._forward(conn, request, route, value, cached=True)
            finally:
                self._fills.pop(id(request), None)

    async def _hit(self, fw: FastForwarder, conn: ClientConnection, request: Request,
                   route: Route, value: str, store: Store, key: Key) -> int | None:
        entry = store.get(key)
        if entry is None:
            return None
        try:
            if not await self._confirmed(fw, conn, request, route, value, key):
                return _REFUSED  # forwarded: the upstream's own answer goes to the client
            self.metrics.hits.inc(route.name)
            status = await serve_entry(conn, request, entry, key)
            self.metrics.served_bytes.inc(route.name, conn.sent)
            return status
        finally:
            entry.close()

    async def _confirmed(self, fw: FastForwarder, conn: ClientConnection, request: Request,
                         route: Route, value: str, key: Key) -> bool:
        """True when the upstream said, recently, that ``key.repo`` has this digest.

        Package files need no question here: their hash was learned from an index page
        fetched with the route's token moments before (see :class:`Learned`).
        """
        if not key.repo:
            return True
        remembered = (route.name, key.repo, key.name)
        now = time.monotonic()
        until = self._confirmations.get(remembered)
        if until is not None and until > now:
            return True
        if await self._ask_upstream(fw, conn, request, route, value):
            self.confirm(route, key)
            return True
        return False

    def confirm(self, route: Route, key: Key) -> None:
        if key.repo:
            if len(self._confirmations) >= _CONFIRM_LIMIT:
                self._confirmations.clear()
            self._confirmations[(route.name, key.repo, key.name)] = time.monotonic() + CONFIRM_TTL

    async def _ask_upstream(self, fw: FastForwarder, conn: ClientConnection,
                            request: Request, route: Route, value: str) -> bool:
        """A HEAD upstream with the token: does this repository have the object?"""
        head = Request.of(method="HEAD", target=request.target,
                          headers=[(k, v) for k, v in request.headers
                                   if k.lower() not in ("range", "if-range")],
                          host=request.host)
        origin = fw.origin_for(route.upstream_origin)
        target = route.upstream_target(request.target)
        headers = request_header_pairs(head.headers, token_header=route.header,
                                       client_ip=conn.remote, proto=fw.public_scheme,
                                       host=fw.public_host or conn.local)
        for attempt in (1, 2):
            try:
                up = await fw._exchange(head, origin, target, headers, (route.header, value))
            except UpstreamFailure:
                return False
            status = up.status
            up.release()
            if status in (401, 403) and attempt == 1:
                fresh = await fw.refresher.fresh(route.token, value, status)
                if fresh is None:
                    return False
                value = fresh
                continue
            # 200, or a redirect to storage (ECR, S3): the registry authorized the read.
            return status == 200 or status in (301, 302, 303, 307, 308)
        return False

    # -- a miss, filled --------------------------------------------------------------------

    async def respond(self, conn: ClientConnection, request: Request, route: Route,
                      up: UpstreamConnection) -> int | None:
        """Stream a cacheable 200 answer to the client and into the store; None when this
        answer is not to be cached (the caller answers as usual)."""
        pending = self._fills.pop(id(request), None)
        if pending is None or up.status != 200 or request.method != "GET":
            return None
        store, key = pending
        control = (header(up.headers, "cache-control") or "").lower()
        encoding = (header(up.headers, "content-encoding") or "identity").lower()
        if "no-store" in control or "private" in control or encoding != "identity":
            return None
        fill = store.begin(key, up.content_type or "application/octet-stream")
        if fill is None:
            return None
        try:
            status = await self._stream(conn, request, route, up, fill)
        except BaseException:
            fill.abandon()
            raise
        if fill.fd is None:
            return status  # the disk refused a write (logged), or the transfer broke
        if not fill.matches():
            fill.abandon()
            return status
        await asyncio.get_running_loop().run_in_executor(None, store.commit, fill)
        self.metrics.fetched_bytes.inc(route.name, fill.size)
        self.confirm(route, key)
        if store.max_size is not None:
            evicted, _ = await asyncio.get_running_loop().run_in_executor(None, store.evict)
            if evicted:
                self.metrics.evictions.inc(route.name, evicted)
        return status

    async def _stream(self, conn: ClientConnection, request: Request, route: Route,
                      up: UpstreamConnection, fill: Fill) -> int:
        if up.error is not None and not up.complete:
            raise UpstreamFailure(502, "body", str(up.error))
        status = up.status
        headers = response_header_pairs(up.headers)
        length = up.length
        chunked = stream_framing(request, headers, length)
        reason_ = up.reason.decode("latin-1") or _reason(status)
        conn.response_started = True
        conn.write(_encode_head(f"HTTP/1.1 {status} {reason_}", headers))
        to_client = body_sink(conn, chunked)
        bad = False

        def sink(data: Chunk) -> None:
            nonlocal bad
            if bad:
                return
            fill.write(data)
            if length is not None and fill.size >= length and not fill.matches():
                # The last piece stays here: the client's transfer fails short, as a
                # client checking the digest itself would have failed it.
                bad = True
                self._verify_failed(route, up, fill)
                fill.abandon()
                conn.abort()
                return
            to_client(data)

        broken = False
        try:
            await up.stream_to(conn, sink)
        except (UpstreamError, ConnectionError) as exc:
            broken = True
            if not bad:
                log.warning("awstoken: route %s: upstream %s failed mid-body (%s); closing the "
                            "client connection", route.name, up.origin.host, exc)
        if bad or broken or not fill.matches():
            if not bad and not broken:
                self._verify_failed(route, up, fill)
            fill.abandon()
            conn.abort()
            return status
        if chunked:
            conn.write(b"0\r\n\r\n")
        return status

    def _verify_failed(self, route: Route, up: UpstreamConnection, fill: Fill) -> None:
        self.metrics.verify_failures.inc(route.name)
        log.warning("awstoken: route %s: upstream %s sent %d bytes that do not match %s; not "
                    "cached, client connection cut", route.name, up.origin.host, fill.size,
                    fill.key.digest)


__all__ = ["CONFIRM_TTL", "CacheMetrics", "ProxyCache"]
