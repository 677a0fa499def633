"""The proxy's request path over ``_h1``.

Inbound check, route, token, upstream exchange (401/403 refresh and one retry, redirects
followed without the token), then the answer: small bodies in one write, index bodies
collected (bounded) and rewritten, everything else streamed as it arrives with flow
control both ways.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

from .._errors import AwstokenError
from .._rotation.keeper import Keeper
from .._rotation.refusal import DEFAULT_REFRESH_WAIT
from ._auth import InboundAuth
from ._cache_http import ProxyCache
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
from ._headers import (
    cross_host_pairs,
    followed_response_pairs,
    request_header_pairs,
    response_header_pairs,
)
from ._metrics import RouteMetrics
from ._policy import (
    MAX_REDIRECTS,
    REDIRECTS,
    SMALL_BODY,
    TokenRefresher,
    UpstreamFailure,
    error_body,
    unavailable_reason,
)
from ._replay import REPLAY_MAX_BYTES, REPLAY_SPOOL_MAX_BYTES, BodyRecorder
from ._rewrite import (
    MAX_INDEX_BYTES,
    DecodeError,
    accept_encoding,
    decode,
    is_html,
    is_index,
    rewrite,
    rewrite_paths,
)
from ._routes import PathRefused, Route, RouteTable, needs_normalizing, normalize_path

log = logging.getLogger("awstoken.proxy")
access_log = logging.getLogger("awstoken.access")

_FAILURE_STATUS = {"timeout": 504}
#: The methods registries and package indexes use. Anything else is refused with 405, never
#: forwarded: an upstream that echoes TRACE would hand the token to the client.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
#: The longest redirect target followed (a Location is a URL, not a payload).
MAX_LOCATION = 8192


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class FastForwarder:
    """The request handler of the proxy listener (one call per request, on its connection)."""

    def __init__(self, *, routes: RouteTable, keeper: Keeper, pool: Pool, auth: InboundAuth,
                 metrics: RouteMetrics, access_log: bool = True,
                 refresh_wait: float = DEFAULT_REFRESH_WAIT, refresh_min_gap: float | None = None,
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
        self.refresher = TokenRefresher(keeper, wait=refresh_wait, min_gap=refresh_min_gap)
        self.replay_max_bytes = replay_max_bytes
        self.replay_spool_max_bytes = replay_spool_max_bytes
        self.max_index_bytes = max_index_bytes
        self.cache = cache
        self._origins: dict[str, Origin] = {}

    async def __call__(self, conn: ClientConnection, request: Request) -> None:
        started = time.monotonic()
        route: Route | None = None
        status = 499
        raw_target = request.target  # as received (routing may normalise request.target)
        try:
            route, status = await self._handle(conn, request)
        finally:
            self.metrics.count(route.name if route is not None else "-", status)
            if self.access_log and access_log.isEnabledFor(logging.INFO):
                access_log.info('%s "%s %s" %d %d %.3f', conn.remote or "-", request.method,
                                _printable(raw_target.split("?", 1)[0]), status, conn.sent,
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
        path, sep, query = raw.partition("?")
        if not raw.startswith("/"):
            return None, self._error(conn, request, path, 400,
                                     "only origin-form request targets are served")
        if request.method not in METHODS:
            request.keep_alive = False
            return None, self._error(conn, request, path, 405,
                                     f"method {request.method} is not served",
                                     [("Allow", ALLOW)])
        if needs_normalizing(path):  # only paths with '%', ';', '\\' or a dot segment pay for this
            try:
                normal = normalize_path(path)
                self.routes.route_for(normal)
            except PathRefused as exc:
                request.keep_alive = False
                return None, self._error(conn, request, path, 400, str(exc))
            if normal != path:
                path = normal
                request.target = normal + sep + query
        if self.auth.enabled:
            decision = await self.auth.check(conn.remote, _header(request.headers, "authorization"))
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
            value = await asyncio.to_thread(_token_or_none, self.keeper, route.token)
        if value is None:
            self.metrics.unavailable.labels(route.name).inc()
            reason = await asyncio.to_thread(unavailable_reason, self.keeper, route.token)
            return route, self._error(conn, request, path, 503, reason)
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
                       value: str, *, cached: bool = False) -> int:
        if self.cache is not None and route.cache is not None and not cached:
            # Hits are answered there; misses come back here with cached=True.
            return await self.cache.forward(self, conn, request, route, value)
        origin = self._origin(route.upstream_origin)
        target = route.upstream_target(request.target)
        headers = request_header_pairs(
            request.headers, token_header=route.header, client_ip=conn.remote,
            proto=self.public_scheme, host=self.public_host or conn.local, drop=_FRAMING)
        for i, (key, offered) in enumerate(headers):
            if key.lower() == "accept-encoding":
                # Only what this process can decode: an index answer must be rewritten.
                headers[i] = (key, accept_encoding(offered))
        body = request.body
        if body is not None and request.expect_continue:
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        recorder = None if body is None else BodyRecorder.for_length(
            request.length, memory_max=self.replay_max_bytes,
            spool_max=self.replay_spool_max_bytes)
        began = time.monotonic()
        try:
            up = await self._exchange(request, origin, target, headers, (route.header, value),
                                      recorder=recorder)
            try:
                if up.status in (401, 403):
                    up = await self._after_refusal(request, route, origin, target, headers,
                                                   value, up, recorder)
                location = up.location if up.status in REDIRECTS else None
                if location is not None and route.redirects == "follow" and \
                        request.method in ("GET", "HEAD"):
                    there = _redirect_url(origin.url + target, location, route)
                    if self._origin(_origin_of(there)).url != origin.url:
                        up.release()
                        up = await self._follow(request, there, headers, route)
                self.metrics.observe(route.name, time.monotonic() - began)
                return await self._respond(conn, request, route, up)
            finally:
                up.release()
        finally:
            if recorder is not None:
                recorder.close()

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
                replayable = await _finish_recording(pump, up, recorder)
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
                        ) -> UpstreamConnection:
        """Send one request upstream and wait for the response head.

        The body comes from the client (copied into ``recorder`` on the way), or from
        ``replay``, a recorder that holds a whole body already sent once. ``check`` sees the
        connection before a byte of the request goes out (followed redirects: its peer).
        """
        body = request.body if with_body and replay is None else None
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
            if check is not None:
                try:
                    check(up)  # before a byte of the request goes out
                except UpstreamFailure:
                    up.abort()
                    raise
            up.start(head, head_only=request.method == "HEAD")
            if replay is not None:
                up.pump = asyncio.ensure_future(_pump_replay(replay, up))
            elif body is not None:
                up.pump = asyncio.ensure_future(_pump(body, up, request.chunked, recorder))
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
        """Fetch a redirect target on another host ourselves, never with the token.

        Each hop must be https (unless the route sets ``follow_http``), and the address
        actually connected to (not the name: DNS rebinding) must be public (unless the route
        sets ``follow_private``) and never one of the proxy's own listeners. The answer's
        headers are filtered: a redirect target sets no cookies or awstoken headers.
        """
        clean = cross_host_pairs(headers, route.header)

        def check(up: UpstreamConnection) -> None:
            self._check_peer(up, route)

        for _ in range(MAX_REDIRECTS):
            origin = self._origin(_origin_of(there))
            if not origin.tls and not route.follow_http:
                raise UpstreamFailure(502, "redirects", f"route {route.name}: redirect to "
                                      f"plain http://{origin.host_header} refused (the route "
                                      "does not set follow_http)")
            target = _target_of(there)
            up = await self._exchange(request, origin, target, clean, None, with_body=False,
                                      check=check)
            location = up.location if up.status in REDIRECTS else None
            if location is None:
                up.headers = followed_response_pairs(up.headers)
                return up
            up.release()
            there = _redirect_url(there, location, route)
        raise UpstreamFailure(502, "redirects", f"more than {MAX_REDIRECTS} redirects from "
                              f"upstream for route {route.name}")

    def _check_peer(self, up: UpstreamConnection, route: Route) -> None:
        """Refuse a followed connection whose peer is the proxy itself or, unless the route
        allows it, not a public address."""
        peer = up.peer
        if peer is None:
            raise UpstreamFailure(502, "redirects", f"route {route.name}: redirect target "
                                  f"{up.origin.host}: peer address unknown, refused")
        address = _plain_address(peer[0])
        shown = f"{up.origin.host} ({address})"
        if peer[1] in self.own_ports and (address.is_loopback or address.is_unspecified or
                                          peer[0] == up.local_host):
            raise UpstreamFailure(502, "redirects", f"route {route.name}: redirect to "
                                  f"{shown} refused: it is this proxy's own listener")
        if not route.follow_private and not _public(address):
            raise UpstreamFailure(502, "redirects", f"route {route.name}: redirect to "
                                  f"{shown} refused: a loopback, private, link-local or "
                                  "otherwise non-public address (the route does not set "
                                  "follow_private)")

    def _proxy_origin(self, conn: ClientConnection) -> str:
        return self.public_url or f"http://{conn.local}"

    # -- the answer ----------------------------------------------------------------------------

    async def _respond(self, conn: ClientConnection, request: Request, route: Route,
                       up: UpstreamConnection) -> int:
        if self.cache is not None and route.cache is not None:
            cached = await self.cache.respond(conn, request, route, up)
            if cached is not None:
                return cached  # a verified miss, streamed to the client and the store
        status = up.status
        headers = response_header_pairs(up.headers)
        proxy_origin = self._proxy_origin(conn)
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
        if status == 200 and is_index(up.content_type):
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
        """Collect an index body (bounded), decode it, rewrite upstream URLs, send it whole.

        Never forwards it unrewritten: over ``max_index_bytes`` (compressed or decoded), in
        a coding that cannot be decoded, or corrupt, the client gets a 502 saying why.
        """
        limit = self.max_index_bytes
        if up.length is not None and up.length > limit:
            raise self._index_failure(route, up, f"its body is {up.length} bytes")
        await self._collect(up, limit + 1)
        if not up.complete:
            raise self._index_failure(route, up, f"its body is over {limit} bytes")
        reason_ = up.reason.decode("latin-1") or _reason(up.status)
        body = up.take()
        encoding = _header(up.headers, "content-encoding") or ""
        try:
            if len(body) > _DECODE_INLINE:
                # zlib, brotli and zstandard release the GIL: big bodies decode off the loop.
                plain = await asyncio.to_thread(decode, body, encoding, limit)
            else:
                plain = decode(body, encoding, limit)
        except DecodeError as exc:
            raise self._index_failure(route, up, str(exc)) from None
        if self.cache is not None and route.cache is not None:
            self.cache.learn(route, request, plain, proxy_origin)
        content_type = up.content_type
        rewritten = rewrite(plain, route.upstream_base, route.public_base(proxy_origin))
        if route.strip_prefix and is_html(content_type):
            rewritten = rewrite_paths(rewritten, route.upstream_path, route.prefix)
        if rewritten != plain:
            body = rewritten
            headers = [(k, v) for k, v in headers if k.lower() != "content-encoding"]
        self._send(conn, request, up.status, reason_, headers, body)
        return up.status

    def _index_failure(self, route: Route, up: UpstreamConnection, what: str) -> UpstreamFailure:
        return UpstreamFailure(502, "index", f"the index answer of upstream "
                               f"{up.origin.host} was not forwarded, since its URLs could not be "
                               f"rewritten: {what} (server.max_index_bytes = "
                               f"{self.max_index_bytes})")


#: Index bodies up to this size decode on the event loop (a thread hop costs more).
_DECODE_INLINE = 256 * 1024
_FRAMING = frozenset({"content-length"})


def _token_or_none(keeper: Keeper, name: str) -> str | None:
    try:
        return keeper.token(name)
    except AwstokenError as exc:  # storage unreadable (Redis away and nothing cached)
        log.warning("awstoken: token %r: cannot read the storage: %s", name, exc)
        return None


def _failure(exc: UpstreamError) -> UpstreamFailure:
    return UpstreamFailure(_FAILURE_STATUS.get(exc.kind, 502), exc.kind, str(exc))


def _printable(text: str) -> str:
    """``text`` for a log line: control and non-ASCII characters, and the quote that ends
    the field, as ``\\xNN`` escapes, so a request target cannot forge or break lines."""
    if text.isascii() and text.isprintable() and '"' not in text:
        return text
    return "".join(c if " " <= c < "\x7f" and c != '"' else f"\\x{ord(c):02x}" for c in text)


def _redirect_url(base: str, location: str, route: Route) -> str:
    """The absolute URL a Location names, or UpstreamFailure(502) when it is no usable URL."""
    def bad(why: str) -> UpstreamFailure:
        return UpstreamFailure(502, "redirects", f"route {route.name}: the upstream's redirect "
                               f"Location is {why}")

    if len(location) > MAX_LOCATION:
        raise bad(f"longer than {MAX_LOCATION} characters")
    if not location.isascii() or not location.isprintable() or " " in location:
        raise bad("not a URL (non-ASCII, space or control characters)")
    try:
        there = urljoin(base, location)
        parts = urlsplit(there)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        raise bad(f"malformed ({str(exc)[:80]})") from None
    if parts.scheme not in ("http", "https"):
        raise bad(f"not an http(s) URL (scheme {parts.scheme[:20]!r})")
    if not parts.hostname:
        raise bad("a URL without a host")
    return there


def _plain_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return embedded
    return address


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A globally routable unicast address (not loopback, private, link-local, shared,
    reserved, unspecified or multicast: 169.254.169.254 and fd00:ec2::254 included)."""
    return address.is_global and not (address.is_multicast or address.is_loopback or
                                      address.is_link_local or address.is_private or
                                      address.is_reserved or address.is_unspecified)


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


async def _pump(body: BodyStream, up: UpstreamConnection, chunked: bool,
                recorder: BodyRecorder | None) -> None:
    """Copy a request body to the upstream with backpressure on both sides.

    With a ``recorder`` the body is also copied there, and the copy goes on to the end of
    the body when the upstream stops taking it (it refused and closed, or the refusal was
    seen: ``recorder.detached``), so the request can be sent again.
    """
    sending = True
    while data := await body.read():
        if recorder is not None:
            await recorder.add(data)
            if recorder.detached or not sending:
                if recorder.overflow:
                    return
                continue
        if chunked:
            up.write(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            up.write(data)
        try:
            await up.drain()
        except ConnectionError:
            if recorder is None:
                raise
            sending = False
    if chunked and sending and (recorder is None or not recorder.detached):
        up.write(b"0\r\n\r\n")
    if recorder is not None:
        await recorder.finish()


async def _finish_recording(pump: asyncio.Task[None], up: UpstreamConnection,
                            recorder: BodyRecorder | None) -> bool:
    """The upstream refused a request with a body: stop sending the body, finish the copy.

    True when the whole body is recorded (the request can be sent again).
    """
    if not pump.done():
        # The rest must not go to an upstream that already said no: this connection is
        # closed (it cannot be reused mid-body) while the copy, if any, goes on to the end.
        up.abort()
        if recorder is None:
            pump.cancel()
            return False
        recorder.detached = True
        try:
            await asyncio.shield(pump)
        except asyncio.CancelledError:
            pump.cancel()
            raise
        except ConnectionError:
            return False
    elif pump.cancelled() or pump.exception() is not None:
        up.abort()  # the body went out incomplete: the connection cannot be reused
        return False
    return recorder is not None and not recorder.overflow


async def _pump_replay(recorder: BodyRecorder, up: UpstreamConnection) -> None:
    """Send a recorded body again."""
    async for data in recorder.read():
        up.write(data)
        await up.drain()
