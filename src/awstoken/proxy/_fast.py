"""The proxy's request path over ``_h1``.

Inbound check, route, token, upstream exchange (401/403 refresh and one retry, redirects
followed without the token), then the answer: small bodies in one write, index bodies
collected (bounded) and rewritten, everything else streamed as it arrives with flow
control both ways.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urljoin

from .._keeper import Keeper
from ._auth import InboundAuth
from ._h1 import (
    BodyStream,
    Chunk,
    ClientConnection,
    Origin,
    Pool,
    Request,
    UpstreamConnection,
    UpstreamError,
    http_date,
)
from ._h1 import encode_head as _encode_head
from ._h1 import reason as _reason
from ._headers import cross_host_pairs, request_header_pairs, response_header_pairs
from ._metrics import RouteMetrics
from ._policy import (
    MAX_REDIRECTS,
    REDIRECTS,
    SMALL_BODY,
    TokenRefresher,
    UpstreamFailure,
    error_body,
    refusal,
    unavailable_reason,
)
from ._rewrite import MAX_REWRITE_BYTES, decode, is_html, is_index, rewrite, rewrite_paths
from ._routes import Route, RouteTable

log = logging.getLogger("awstoken.proxy")
access_log = logging.getLogger("awstoken.access")

_FAILURE_STATUS = {"timeout": 504}


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class FastForwarder:
    """The request handler of the proxy listener (one call per request, on its connection)."""

    def __init__(self, *, routes: RouteTable, keeper: Keeper, pool: Pool, auth: InboundAuth,
                 metrics: RouteMetrics, access_log: bool = True,
                 refresh_wait: float = 15.0) -> None:
        self.routes = routes
        self.keeper = keeper
        self.pool = pool
        self.auth = auth
        self.metrics = metrics
        self.access_log = access_log
        self.refresher = TokenRefresher(keeper, wait=refresh_wait)
        self._origins: dict[str, Origin] = {}

    async def __call__(self, conn: ClientConnection, request: Request) -> None:
        started = time.monotonic()
        route: Route | None = None
        status = 499
        try:
            route, status = await self._handle(conn, request)
        finally:
            self.metrics.count(route.name if route is not None else "-", status)
            if self.access_log and access_log.isEnabledFor(logging.INFO):
                access_log.info('%s "%s %s" %d %d %.3f', conn.remote or "-", request.method,
                                request.target.split("?", 1)[0], status, conn.sent,
                                time.monotonic() - started)

    # -- small answers -------------------------------------------------------------------------

    def _send(self, conn: ClientConnection, request: Request, status: int,
              reason_: str, headers: list[tuple[str, str]], body: bytes, *,
              framing: bool = True) -> None:
        """A whole answer in one write (with its Content-Length unless ``framing`` is off)."""
        head_only = request.method == "HEAD" or status in (204, 304) or status < 200
        if framing and status not in (204, 304) and status >= 200:
            headers.append(("Content-Length", str(len(body))))
        if not request.keep_alive:
            headers.append(("Connection", "close"))
        elif request.version == "1.0":
            headers.append(("Connection", "keep-alive"))
        conn.response_started = True
        data = _encode_head(f"HTTP/1.1 {status} {reason_}", headers)
        conn.write(data if head_only else data + body)
        conn.sent = 0 if head_only else len(body)

    def _error(self, conn: ClientConnection, request: Request, path: str, status: int,
               message: str, extra: list[tuple[str, str]] | None = None) -> int:
        content_type, body = error_body(path, status, message)
        headers = [("Date", http_date()), ("Content-Type", content_type), *(extra or ())]
        self._send(conn, request, status, _reason(status), headers, body)
        return status

    # -- the request ---------------------------------------------------------------------------

    async def _handle(self, conn: ClientConnection, request: Request) -> tuple[Route | None, int]:
        raw = request.target
        path = raw.split("?", 1)[0]
        if not raw.startswith("/"):
            return None, self._error(conn, request, path, 400,
                                     "only origin-form request targets are served")
        reason = refusal(path, (1, 1), False)  # versions and framing: checked while parsing
        if reason is not None:
            request.keep_alive = False
            return None, self._error(conn, request, path, 400, reason)
        if self.auth.enabled:
            decision = await self.auth.check(conn.remote, _header(request.headers, "authorization"))
            if not decision.allowed:
                extra = [("WWW-Authenticate", decision.challenge)] if decision.challenge else None
                return None, self._error(conn, request, path, decision.status, decision.reason,
                                         extra)
        route = self.routes.match(path)
        if route is None:
            return None, self._error(conn, request, path, 404, "no route for this path")
        value = self.keeper.token(route.token)
        if value is None:
            self.metrics.unavailable.labels(route.name).inc()
            return route, self._error(conn, request, path, 503,
                                      unavailable_reason(self.keeper, route.token))
        try:
            return route, await self._forward(conn, request, route, value)
        except UpstreamFailure as exc:
            self.metrics.upstream_errors.labels(route.name, exc.kind).inc()
            log.warning("awstoken: route %s: %s", route.name, exc)
            if conn.response_started:
                conn.abort()
                return route, 502
            return route, self._error(conn, request, path, exc.status, str(exc))

    def _origin(self, url: str) -> Origin:
        origin = self._origins.get(url)
        if origin is None:
            if len(self._origins) > 1024:  # redirect targets are open-ended: stay bounded
                self._origins.clear()
            origin = self._origins[url] = Origin.parse(url)
        return origin

    async def _forward(self, conn: ClientConnection, request: Request, route: Route,
                       value: str) -> int:
        origin = self._origin(route.upstream_origin)
        target = route.upstream_target(request.target)
        headers = request_header_pairs(
            request.headers, token_header=route.header, client_ip=conn.remote, proto="http",
            host=request.host, drop=_FRAMING)
        body = request.body
        if body is not None and request.expect_continue:
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        began = time.monotonic()
        up = await self._exchange(request, origin, target, headers, (route.header, value))
        try:
            if up.status in (401, 403) and body is None:
                fresh = await self.refresher.fresh(route.token, value)
                if fresh is not None:
                    up.release()
                    log.info("awstoken: route %s: upstream answered %d; retrying once with the "
                             "refreshed token %r", route.name, up.status, route.token)
                    self.metrics.retries.labels(route.name).inc()
                    up = await self._exchange(request, origin, target, headers,
                                              (route.header, fresh))
            location = up.location if up.status in REDIRECTS else None
            if location is not None:
                current = origin.url + target
                there = urljoin(current, location)
                other = self._origin(_origin_of(there))
                if other.url != origin.url and route.redirects == "follow" and \
                        request.method in ("GET", "HEAD"):
                    up.release()
                    up = await self._follow(request, there, headers, route)
            self.metrics.observe(route.name, time.monotonic() - began)
            return await self._respond(conn, request, route, up)
        finally:
            up.release()

    async def _exchange(self, request: Request, origin: Origin, target: str,
                        headers: list[tuple[str, str]], token: tuple[str, str] | None,
                        *, with_body: bool = True) -> UpstreamConnection:
        """Send one request upstream and wait for the response head."""
        body = request.body if with_body else None
        lines = [("Host", origin.host_header), *headers]
        if token is not None:
            if "\r" in token[1] or "\n" in token[1]:
                raise UpstreamFailure(502, "token", "the token value contains a line break")
            lines.append(token)
        if body is not None:
            lines.append(("Transfer-Encoding", "chunked") if request.chunked else
                         ("Content-Length", str(request.length)))
        head = _encode_head(f"{request.method} {target} HTTP/1.1", lines)
        pool = self.pool
        for attempt in (1, 2):
            up = pool.take(origin) if attempt == 1 else None
            if up is None:
                try:
                    up = await pool.connect(origin)
                except UpstreamError as exc:
                    raise _failure(exc) from None
            reused = up.uses > 0
            up.start(head, head_only=request.method == "HEAD")
            if body is not None:
                up.pump = asyncio.ensure_future(_pump(body, up, request.chunked))
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

    async def _follow(self, request: Request, there: str, headers: list[tuple[str, str]],
                      route: Route) -> UpstreamConnection:
        """Fetch a redirect target on another host ourselves, never with the token."""
        clean = cross_host_pairs(headers, route.header)
        for _ in range(MAX_REDIRECTS):
            origin = self._origin(_origin_of(there))
            target = _target_of(there)
            up = await self._exchange(request, origin, target, clean, None, with_body=False)
            location = up.location if up.status in REDIRECTS else None
            if location is None:
                return up
            up.release()
            there = urljoin(there, location)
        raise UpstreamFailure(502, "redirects", f"more than {MAX_REDIRECTS} redirects from "
                              f"upstream for route {route.name}")

    # -- the answer ----------------------------------------------------------------------------

    async def _respond(self, conn: ClientConnection, request: Request, route: Route,
                       up: UpstreamConnection) -> int:
        status = up.status
        headers = response_header_pairs(up.headers)
        proxy_origin = f"http://{request.host or conn.local}"
        if up.location is not None:
            for i, (key, location) in enumerate(headers):
                if key.lower() == "location":
                    headers[i] = (key, route.rewrite_location(location, proxy_origin))
        reason_ = up.reason.decode("latin-1") or _reason(status)
        head_only = request.method == "HEAD" or status in (204, 304)
        length = up.length
        if head_only:
            # HEAD keeps the upstream's Content-Length (the size a GET would bring).
            if request.method == "HEAD" and length is not None and status not in (204, 304):
                headers.append(("Content-Length", str(length)))
            self._send(conn, request, status, reason_, headers, b"", framing=False)
            return status
        if status == 200 and is_index(up.content_type) and (length is None or
                                                         length <= MAX_REWRITE_BYTES):
            return await self._respond_index(conn, request, route, up, headers, proxy_origin)
        if (length is not None and length <= SMALL_BODY) or up.complete:
            if not up.complete:
                await self._collect(up, SMALL_BODY if length is None else length)
            self._send(conn, request, status, reason_, headers, up.take())
            return status
        return await self._stream(conn, request, up, status, reason_, headers, route, length)

    async def _collect(self, up: UpstreamConnection, wanted: int) -> None:
        try:
            await up.wait_buffered(wanted)
        except UpstreamError as exc:
            raise UpstreamFailure(502, "body", f"upstream {up.origin.host} failed while "
                                  f"sending the body ({exc})") from None

    async def _stream(self, conn: ClientConnection, request: Request, up: UpstreamConnection,
                      status: int, reason_: str, headers: list[tuple[str, str]], route: Route,
                      length: int | None, first: bytes = b"") -> int:
        if up.error is not None and not up.complete:
            # Broken before anything went to the client: it can still get a clean 502.
            raise UpstreamFailure(502, "body", str(up.error))
        chunked = length is None and request.version == "1.1"
        if length is not None:
            headers.append(("Content-Length", str(length)))
        elif chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        close = not request.keep_alive or (length is None and not chunked)
        if close:
            headers.append(("Connection", "close"))
            request.keep_alive = False
        elif request.version == "1.0":
            headers.append(("Connection", "keep-alive"))
        conn.response_started = True
        conn.write(_encode_head(f"HTTP/1.1 {status} {reason_}", headers))
        transport = conn.transport
        assert transport is not None

        if chunked:
            def sink(data: Chunk) -> None:
                if data:
                    transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
                    conn.sent += len(data)
        else:
            def sink(data: Chunk) -> None:
                transport.write(data)
                conn.sent += len(data)

        if first:
            sink(first)
        try:
            await up.stream_to(conn, sink)
        except UpstreamError as exc:
            # The status line is out: the only honest signal left is to cut the connection,
            # so the client sees a truncated body instead of a complete-looking one.
            self.metrics.upstream_errors.labels(route.name, "body").inc()
            log.warning("awstoken: route %s: upstream %s failed mid-body (%s); closing the "
                        "client connection", route.name, up.origin.host, exc)
            conn.abort()
            return status
        if chunked:
            conn.write(b"0\r\n\r\n")
        return status

    async def _respond_index(self, conn: ClientConnection, request: Request, route: Route,
                             up: UpstreamConnection, headers: list[tuple[str, str]],
                             proxy_origin: str) -> int:
        await self._collect(up, MAX_REWRITE_BYTES + 1)
        reason_ = up.reason.decode("latin-1") or _reason(up.status)
        if not up.complete:
            log.warning("awstoken: route %s: index body over %d bytes passed without URL "
                        "rewriting", route.name, MAX_REWRITE_BYTES)
            return await self._stream(conn, request, up, up.status, reason_, headers, route,
                                      up.length, up.take())
        body = up.take()
        encoding = _header(up.headers, "content-encoding") or ""
        try:
            plain = decode(body, encoding)
        except Exception:
            plain = None
        if plain is not None:
            content_type = up.content_type
            rewritten = rewrite(plain, route.upstream_base, route.public_base(proxy_origin))
            if route.strip_prefix and is_html(content_type):
                rewritten = rewrite_paths(rewritten, route.upstream_path, route.prefix)
            if rewritten != plain:
                body = rewritten
                headers = [(k, v) for k, v in headers if k.lower() != "content-encoding"]
        self._send(conn, request, up.status, reason_, headers, body)
        return up.status


_FRAMING = frozenset({"content-length"})


def _failure(exc: UpstreamError) -> UpstreamFailure:
    return UpstreamFailure(_FAILURE_STATUS.get(exc.kind, 502), exc.kind, str(exc))


def _origin_of(url: str) -> str:
    scheme, _, rest = url.partition("://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return f"{scheme.lower()}://{netloc.rpartition('@')[2]}"


def _target_of(url: str) -> str:
    _, _, rest = url.partition("://")
    rest = rest.split("#", 1)[0]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    target = rest[cut:]
    if not target.startswith("/"):
        target = "/" + target
    return target


async def _pump(body: BodyStream, up: UpstreamConnection, chunked: bool) -> None:
    """Copy a request body to the upstream with backpressure on both sides."""
    while data := await body.read():
        if chunked:
            up.write(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            up.write(data)
        await up.drain()
    if chunked:
        up.write(b"0\r\n\r\n")
