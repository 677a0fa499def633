"""The proxy's request path over ``_h1``: the request side.

Inbound check, route, token, upstream exchange (401/403 refresh and one retry, redirects
followed without the token, see ``_redirects``; request bodies, see ``_request_body``), then
the answer (``_answer``): small bodies in one write, index bodies collected (bounded) and
rewritten, everything else streamed as it arrives with flow control both ways.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from .._rotation.keeper import Keeper
from .._rotation.refusal import DEFAULT_REFRESH_WAIT
from ._answer import Responder
from ._auth import InboundAuth
from ._cache.http import ProxyCache
from ._fastpath import FastPath
from ._h1 import BodyStream, ClientConnection, Origin, Pool, Request, UpstreamConnection, UpstreamError
from ._h1 import encode_head as _encode_head
from ._headers import cross_host_pairs, followed_response_pairs, header, request_header_pairs
from ._metrics import RouteMetrics
from ._policy import (
    MAX_REDIRECTS,
    REDIRECTS,
    SMALL_BODY,
    TokenRefresher,
    UpstreamFailure,
)
from ._redirects import check_peer, origin_of, redirect_url, target_of
from ._replay import REPLAY_MAX_BYTES, REPLAY_SPOOL_MAX_BYTES, BodyRecorder
from ._request_body import finish_recording, pump, pump_replay
from ._rewrite import MAX_INDEX_BYTES, accept_encoding
from ._routes import PathRefused, Route, RouteTable, needs_normalizing, normalize_path

log = logging.getLogger("awstoken.proxy")
access_log = logging.getLogger("awstoken.access")

_FAILURE_STATUS: Final = {"timeout": 504}
#: The methods registries and package indexes use. Anything else is refused with 405, never
#: forwarded: an upstream that echoes TRACE would hand the token to the client.
METHODS: Final = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
ALLOW: Final = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


class FastForwarder(Responder):
    """The request handler of the proxy listener (one call per request, on its connection)."""

    def __init__(self, *, routes: RouteTable, keeper: Keeper, pool: Pool, auth: InboundAuth,
                 metrics: RouteMetrics, access_log: bool = True,
                 refresh_wait: float = DEFAULT_REFRESH_WAIT, refresh_min_gap: float | None = None,
                 refresher: TokenRefresher | None = None,
                 replay_max_bytes: int = REPLAY_MAX_BYTES,
                 replay_spool_max_bytes: int = REPLAY_SPOOL_MAX_BYTES,
                 max_index_bytes: int = MAX_INDEX_BYTES, public_url: str | None = None,
                 cache: ProxyCache | None = None) -> None:
        self.routes = routes
        #: What Location headers and index bodies name as the proxy (None: the address each
        #: client connected to). Never the client's Host header: behind a shared cache, a
        #: forged Host would poison what other users get.
        self.public_url = public_url.rstrip("/") if public_url else None
        # X-Forwarded-Proto/Host for upstreams that build absolute URLs: the same public name.
        scheme, _, netloc = (self.public_url or "http://").partition("://")
        self.public_scheme, self.public_host = scheme, netloc
        #: The proxy's own listening ports (proxy, admin, token endpoint): followed
        #: redirects never connect back to them (see ProxyServer.start).
        self.own_ports: set[int] = set()
        self.keeper = keeper
        self.pool = pool
        self.auth = auth
        self.metrics = metrics
        self.access_log = access_log
        #: Shared with the token endpoint when the server passes its own (one wait per token).
        self.refresher = refresher or TokenRefresher(keeper, wait=refresh_wait,
                                                     min_gap=refresh_min_gap)
        self.replay_max_bytes = replay_max_bytes
        self.replay_spool_max_bytes = replay_spool_max_bytes
        self.max_index_bytes = max_index_bytes
        self.cache = cache
        self._origins: dict[str, Origin] = {}
        #: Takes the common requests with callbacks (see ``_fastpath``).
        self.fast = FastPath(self)

    async def __call__(self, conn: ClientConnection, request: Request) -> None:
        started = time.monotonic()
        route: Route | None = None
        status = 499
        raw_target = request.target  # as received (routing may normalise request.target)
        try:
            route, status = await self._handle(conn, request)
        finally:
            self.record(conn, request, route, status, raw_target, started)

    def record(self, conn: ClientConnection, request: Request, route: Route | None,
               status: int, raw_target: str, started: float) -> None:
        """Count an answered request (499: the client left first) and log it."""
        self.metrics.count(route.name if route is not None else "-", status)
        if self.access_log and access_log.isEnabledFor(logging.INFO):
            access_log.info('%s "%s %s" %d %d %.3f', conn.remote or "-", request.method,
                            _printable(raw_target.split("?", 1)[0]), status, conn.sent,
                            time.monotonic() - started)

    async def resume(self, conn: ClientConnection, request: Request, route: Route, value: str,
                     up: UpstreamConnection | None, started: float) -> None:
        """Go on as a coroutine with a request begun with callbacks (see ``_fastpath``):
        from its upstream answer's head (``up``: a refusal, a redirect to follow, an index to
        rewrite), or from the start on a new connection (None: a pooled connection failed
        before any answer)."""
        status = 499
        try:
            try:
                if up is None:
                    status = await self._forward(conn, request, route, value, fresh=True)
                else:
                    origin = up.origin
                    target = route.upstream_target(request.target)
                    headers = self.upstream_pairs(conn, request, route)
                    status = await self._after_head(conn, request, route, origin, target,
                                                    headers, value, up, None, started)
            except UpstreamFailure as exc:
                status = self.failed(conn, request, route, exc)
        finally:
            self.record(conn, request, route, status, request.target, started)

    # -- the request ---------------------------------------------------------------------------

    async def _handle(self, conn: ClientConnection, request: Request) -> tuple[Route | None, int]:
        path, refused = self._check_target(conn, request)
        if refused:
            return None, refused
        if self.auth.enabled:
            decision = await self.auth.check(conn.remote, header(request.headers, "authorization"))
            if not decision.allowed:
                extra = [("WWW-Authenticate", decision.challenge)] if decision.challenge else None
                return None, self._error(conn, request, path, decision.status, decision.reason,
                                         extra)
        route = self.routes.match(path)
        if route is None:
            return None, self._error(conn, request, path, 404, "no route for this path")
        # The storage's hot dict answers without a lock or I/O; anything else (a name not
        # cached yet, an expired one, a Redis read) runs in a thread: never on the loop.
        value = self.keeper.storage.values.get(route.token)
        if value is None:
            # The first fetch may be running (serve listens before its sources finish):
            # wait for it a bounded time, shared by every request for this token.
            value = await self.refresher.usable(route.token)
        if value is None:
            self.metrics.unavailable.labels(route.name).inc()
            reason = await self.refresher.reason(route.token)
            return route, self._error(conn, request, path, 503, reason)
        try:
            return route, await self._forward(conn, request, route, value)
        except UpstreamFailure as exc:
            return route, self.failed(conn, request, route, exc, path)

    def failed(self, conn: ClientConnection, request: Request, route: Route,
               exc: UpstreamFailure, path: str | None = None) -> int:
        """Count, log and answer an upstream failure (cut the connection when the answer
        had begun); the status counted."""
        self.metrics.upstream_errors.labels(route.name, exc.kind).inc()
        log.warning("awstoken: route %s: %s", route.name, exc)
        if conn.response_started:
            conn.abort()
            return 502
        if path is None:
            path = request.target.partition("?")[0]
        return self._error(conn, request, path, exc.status, str(exc))

    def _check_target(self, conn: ClientConnection, request: Request) -> tuple[str, int]:
        """The request's path (normalised); with a status when it was refused (answered)."""
        raw = request.target
        path, sep, query = raw.partition("?")
        if not raw.startswith("/"):
            return path, self._error(conn, request, path, 400,
                                     "only origin-form request targets are served")
        if request.method not in METHODS:
            request.keep_alive = False
            return path, self._error(conn, request, path, 405,
                                     f"method {request.method} is not served",
                                     [("Allow", ALLOW)])
        if needs_normalizing(path):  # only paths with '%', ';', '\\' or a dot segment pay for this
            try:
                normal = normalize_path(path)
                self.routes.route_for(normal)
            except PathRefused as exc:
                request.keep_alive = False
                return path, self._error(conn, request, path, 400, str(exc))
            if normal != path:
                path = normal
                request.target = normal + sep + query
        return path, 0

    def origin_for(self, url: str) -> Origin:
        origin = self._origins.get(url)
        if origin is None:
            if len(self._origins) > 1024:  # redirect targets are open-ended: stay bounded
                self._origins.clear()
            origin = self._origins[url] = Origin.parse(url)
        return origin

    def upstream_pairs(self, conn: ClientConnection, request: Request,
                       route: Route) -> list[tuple[str, str]]:
        """The client's header fields for the upstream (no Host, no token, no framing)."""
        headers = request_header_pairs(
            request.headers, token_header=route.header, client_ip=conn.remote,
            proto=self.public_scheme, host=self.public_host or conn.local, drop=_FRAMING)
        for i, (key, offered) in enumerate(headers):
            if key.lower() == "accept-encoding":
                # Only what this process can decode: an index answer must be rewritten.
                headers[i] = (key, accept_encoding(offered))
        return headers

    async def _forward(self, conn: ClientConnection, request: Request, route: Route,
                       value: str, *, cached: bool = False, fresh: bool = False) -> int:
        if self.cache is not None and route.cache is not None and not cached:
            # Hits are answered there; misses come back here with cached=True.
            return await self.cache.forward(self, conn, request, route, value)
        origin = self.origin_for(route.upstream_origin)
        target = route.upstream_target(request.target)
        headers = self.upstream_pairs(conn, request, route)
        body = request.body
        if body is not None and request.expect_continue:
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.expect_continue = False  # told to send it: the body comes (see done())
        recorder = None if body is None else BodyRecorder.for_length(
            request.length, memory_max=self.replay_max_bytes,
            spool_max=self.replay_spool_max_bytes)
        began = time.monotonic()
        try:
            up = await self._exchange(request, origin, target, headers, (route.header, value),
                                      recorder=recorder, fresh=fresh)
            return await self._after_head(conn, request, route, origin, target, headers, value,
                                          up, recorder, began)
        finally:
            if recorder is not None:
                recorder.close()

    async def _after_head(self, conn: ClientConnection, request: Request, route: Route,
                          origin: Origin, target: str, headers: list[tuple[str, str]],
                          value: str, up: UpstreamConnection, recorder: BodyRecorder | None,
                          began: float) -> int:
        """From the upstream's answer head on: a refusal (refresh and retry), a redirect to
        follow, then the answer to the client."""
        try:
            if up.status in (401, 403):
                up = await self._after_refusal(request, route, origin, target, headers,
                                               value, up, recorder)
            location = up.location if up.status in REDIRECTS else None
            if location is not None and route.redirects == "follow" and \
                    request.method in ("GET", "HEAD"):
                there = redirect_url(origin.url + target, location, route)
                if self.origin_for(origin_of(there)).url != origin.url:
                    up.release()
                    up = await self._follow(request, there, headers, route)
            self.metrics.observe(route.name, time.monotonic() - began)
            return await self._respond(conn, request, route, up)
        finally:
            up.release()

    async def _after_refusal(self, request: Request, route: Route, origin: Origin, target: str,
                             headers: list[tuple[str, str]], value: str,
                             up: UpstreamConnection,
                             recorder: BodyRecorder | None) -> UpstreamConnection:
        """An upstream 401/403 to the token: ask for a refresh whatever the request, and send
        it once more with a new token when its body (if any) was recorded whole.

        The refusal itself is kept (bounded) so the client gets it unchanged when no new
        token comes; a request whose body could not be kept still waits for the refresh, so
        that the client's own retry carries the new token.
        """
        fresh = self.refresher.fresh(route.token, value, up.status)
        replayable = request.body is None
        if request.body is not None:
            if not up.complete:
                await self._collect(up, SMALL_BODY)
            pump, up.pump = up.pump, None
            if not up.complete:
                # A refusal too big to hold: it goes to the client, streamed, after the refresh.
                up.pump = pump
                await fresh
                return up
            if pump is not None:
                replayable = await finish_recording(pump, up, recorder)
        new = await fresh
        if new is None or not replayable:
            return up
        log.info("awstoken: route %s: upstream answered %d; retrying once with the refreshed "
                 "token %r", route.name, up.status, route.token)
        self.metrics.retries.labels(route.name).inc()
        up.release()
        return await self._exchange(request, origin, target, headers, (route.header, new),
                                    replay=recorder)

    async def _exchange(self, request: Request, origin: Origin, target: str,
                        headers: list[tuple[str, str]], token: tuple[str, str] | None,
                        *, with_body: bool = True, recorder: BodyRecorder | None = None,
                        replay: BodyRecorder | None = None,
                        check: Callable[[UpstreamConnection], None] | None = None,
                        fresh: bool = False) -> UpstreamConnection:
        """Send one request upstream and wait for the response head.

        The body comes from the client (copied into ``recorder`` on the way), or from
        ``replay``, a recorder that holds a whole body already sent once. ``check`` sees the
        connection before a byte of the request goes out (followed redirects: its peer).
        """
        body = request.body if with_body and replay is None else None
        head = _upstream_head(request, origin, target, headers, token, body, replay)
        for attempt in (1, 2):
            up = await self._connection(origin, attempt == 1 and not fresh, check)
            reused = up.uses > 0
            up.start(head, head_only=request.method == "HEAD")
            if replay is not None:
                up.pump = asyncio.ensure_future(pump_replay(replay, up))
            elif body is not None:
                up.pump = asyncio.ensure_future(pump(body, up, request.chunked, recorder))
            try:
                while not up.head_done:
                    if up.error is not None:
                        raise up.error
                    await up.event()
                return up
            except UpstreamError as exc:
                up.release()
                # A pooled connection the upstream closed while idle: once more on a new one,
                # when the request can be replayed (nothing of an answer arrived).
                if attempt == 1 and reused and exc.before_response and body is None:
                    continue
                raise _failure(exc) from None
            except BaseException:
                up.release()
                raise
        raise AssertionError("unreachable")

    async def _connection(self, origin: Origin, pooled: bool,
                          check: Callable[[UpstreamConnection], None] | None,
                          ) -> UpstreamConnection:
        """A pooled connection (when ``pooled``) or a new one, seen by ``check``."""
        up = self.pool.take(origin) if pooled else None
        if up is None:
            try:
                up = await self.pool.connect(origin)
            except UpstreamError as exc:
                raise _failure(exc) from None
        if check is not None:
            try:
                check(up)  # before a byte of the request goes out
            except UpstreamFailure:
                up.abort()
                raise
        return up

    async def _follow(self, request: Request, there: str, headers: list[tuple[str, str]],
                      route: Route) -> UpstreamConnection:
        """Fetch a redirect target on another host ourselves, never with the token.

        Each hop must be https (unless the route sets ``follow_http``), and the address
        actually connected to (not the name: DNS rebinding) must be public (unless the route
        sets ``follow_private``) and never one of the proxy's own listeners. The answer's
        headers are filtered: a redirect target sets no cookies or awstoken headers.
        """
        clean = cross_host_pairs(headers, route.header)

        def check(up: UpstreamConnection) -> None:
            check_peer(up, route, self.own_ports)

        for _ in range(MAX_REDIRECTS):
            origin = self.origin_for(origin_of(there))
            if not origin.tls and not route.follow_http:
                raise UpstreamFailure(502, "redirects", f"route {route.name}: redirect to "
                                      f"plain http://{origin.host_header} refused (the route "
                                      "does not set follow_http)")
            target = target_of(there)
            up = await self._exchange(request, origin, target, clean, None, with_body=False,
                                      check=check)
            location = up.location if up.status in REDIRECTS else None
            if location is None:
                up.headers = followed_response_pairs(up.headers)
                return up
            up.release()
            there = redirect_url(there, location, route)
        raise UpstreamFailure(502, "redirects", f"more than {MAX_REDIRECTS} redirects from "
                              f"upstream for route {route.name}")


_FRAMING: Final = frozenset({"content-length"})


def _upstream_head(request: Request, origin: Origin, target: str,
                   headers: list[tuple[str, str]], token: tuple[str, str] | None,
                   body: BodyStream | None, replay: BodyRecorder | None) -> bytes:
    """The request head for the upstream: Host, the filtered headers, the token, framing."""
    lines = [("Host", origin.host_header), *headers]
    if token is not None:
        if "\r" in token[1] or "\n" in token[1]:
            raise UpstreamFailure(502, "token", "the token value contains a line break")
        lines.append(token)
    if replay is not None:
        lines.append(("Content-Length", str(replay.size)))
    elif body is not None:
        lines.append(("Transfer-Encoding", "chunked") if request.chunked else
                     ("Content-Length", str(request.length)))
    return _encode_head(f"{request.method} {target} HTTP/1.1", lines)


def _failure(exc: UpstreamError) -> UpstreamFailure:
    return UpstreamFailure(_FAILURE_STATUS.get(exc.kind, 502), exc.kind, str(exc))


def _printable(text: str) -> str:
    """``text`` for a log line: control and non-ASCII characters, and the quote that ends
    the field, as ``\\xNN`` escapes, so a request target cannot forge or break lines."""
    if text.isascii() and text.isprintable() and '"' not in text:
        return text
    return "".join(c if " " <= c < "\x7f" and c != '"' else f"\\x{ord(c):02x}" for c in text)
