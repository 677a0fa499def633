"""The answer side of the request path: what goes back to the client.

Small bodies in one write, index bodies collected (bounded), decoded and rewritten, the
rest streamed as it arrives (Content-Length kept, chunked otherwise) with flow control.
"""

from __future__ import annotations

import asyncio
import logging

from ._cache.http import ProxyCache
from ._framing import body_sink, stream_framing
from ._h1 import ClientConnection, Request, UpstreamConnection, UpstreamError, http_date
from ._h1 import encode_head as _encode_head
from ._h1 import reason as _reason
from ._headers import header, response_header_pairs
from ._metrics import RouteMetrics
from ._policy import SMALL_BODY, UpstreamFailure, error_body
from ._rewrite import DecodeError, decode, is_html, is_index, rewrite, rewrite_paths
from ._routes import Route

log = logging.getLogger("awstoken.proxy")

#: Index bodies up to this size decode on the event loop (a thread hop costs more).
_DECODE_INLINE = 256 * 1024


class Responder:
    """Answers for the forwarder (mixed into ``FastForwarder``, which sets the attributes)."""

    cache: ProxyCache | None
    metrics: RouteMetrics
    max_index_bytes: int
    public_url: str | None

    # -- small answers -------------------------------------------------------------------------

    def _error(self, conn: ClientConnection, request: Request, path: str, status: int,
               message: str, extra: list[tuple[str, str]] | None = None) -> int:
        content_type, body = error_body(path, status, message)
        headers = [("Date", http_date()), ("Content-Type", content_type), *(extra or ())]
        conn.answer(request, status, _reason(status), headers, body)
        return status


    def proxy_origin(self, conn: ClientConnection) -> str:
        return self.public_url or f"http://{conn.local}"

    # -- the answer ----------------------------------------------------------------------------

    async def _respond(self, conn: ClientConnection, request: Request, route: Route,
                       up: UpstreamConnection) -> int:
        if self.cache is not None and route.cache is not None:
            cached = await self.cache.respond(conn, request, route, up)
            if cached is not None:
                return cached  # a verified miss, streamed to the client and the store
        status = up.status
        proxy_origin = self.proxy_origin(conn)
        headers = client_headers(up, route, proxy_origin)
        reason_ = up.reason.decode("latin-1") or _reason(status)
        head_only = request.method == "HEAD" or status in (204, 304)
        length = up.length
        if head_only:
            # HEAD keeps the upstream's Content-Length (the size a GET would bring).
            if request.method == "HEAD" and length is not None and status not in (204, 304):
                headers.append(("Content-Length", str(length)))
            conn.answer(request, status, reason_, headers, b"", framing=False)
            return status
        if status == 200 and is_index(up.content_type):
            return await self._respond_index(conn, request, route, up, headers, proxy_origin)
        if (length is not None and length <= SMALL_BODY) or up.complete:
            if not up.complete:
                await self._collect(up, SMALL_BODY if length is None else length)
            conn.answer(request, status, reason_, headers, up.take())
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
        chunked = stream_framing(request, headers, length)
        conn.response_started = True
        conn.write(_encode_head(f"HTTP/1.1 {status} {reason_}", headers))
        sink = body_sink(conn, chunked)
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
        encoding = header(up.headers, "content-encoding") or ""
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
        conn.answer(request, up.status, reason_, headers, body)
        return up.status

    def _index_failure(self, route: Route, up: UpstreamConnection, what: str) -> UpstreamFailure:
        return UpstreamFailure(502, "index", f"the index answer of upstream "
                               f"{up.origin.host} was not forwarded, since its URLs could not be "
                               f"rewritten: {what} (server.max_index_bytes = "
                               f"{self.max_index_bytes})")


def client_headers(up: UpstreamConnection, route: Route,
                    proxy_origin: str) -> list[tuple[str, str]]:
    """The upstream's response headers for the client (Location pointed back at us)."""
    headers = response_header_pairs(up.headers)
    if up.location is not None:
        for i, (key, location) in enumerate(headers):
            if key.lower() == "location":
                headers[i] = (key, route.rewrite_location(location, proxy_origin))
    return headers


__all__ = ["Responder"]
