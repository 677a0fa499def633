"""The request path: inbound check, route, token, upstream exchange, streamed answer.

Policy lives in ``_routes``/``_headers``/``_auth``; resources (the pooled client) in
``_upstream``; this module is the mechanics. Bodies stream both ways with backpressure;
only index bodies that may need URL rewriting are buffered (bounded).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .._keeper import Keeper
from ._auth import InboundAuth
from ._headers import CROSS_HOST_DROP, response_headers, upstream_request_headers
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
from ._upstream import Upstream

log = logging.getLogger("awstoken.proxy")
access_log = logging.getLogger("awstoken.access")

def error_response(path: str, status: int, message: str, *,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    """A short error: Docker registry JSON under ``/v2``, plain text elsewhere."""
    content_type, body = error_body(path, status, message)
    response = web.Response(status=status, body=body, headers=headers)
    response.headers["Content-Type"] = content_type
    return response


def _refuse(request: web.BaseRequest, path: str) -> web.Response | None:
    """A 400 for requests the parser lets through but a proxy must not forward."""
    reason = refusal(path, (request.version.major, request.version.minor),
                     "Transfer-Encoding" in request.headers)
    if reason is None:
        return None
    response = error_response(path, 400, reason)
    response.force_close()
    return response


class Forwarder:
    """The request handler of the proxy listener (an aiohttp low-level handler)."""

    def __init__(self, *, routes: RouteTable, keeper: Keeper, upstream: Upstream,
                 auth: InboundAuth, metrics: RouteMetrics, access_log: bool = True,
                 refresh_wait: float = 15.0) -> None:
        self.routes = routes
        self.keeper = keeper
        self.upstream = upstream
        self.auth = auth
        self.metrics = metrics
        self.access_log = access_log
        self.refresher = TokenRefresher(keeper, wait=refresh_wait)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        route: Route | None = None
        response: web.StreamResponse | None = None
        try:
            route, response = await self._handle(request)
            return response
        finally:
            status = response.status if response is not None else 499
            self.metrics.count(route.name if route is not None else "-", status)
            if self.access_log and access_log.isEnabledFor(logging.INFO):
                size = 0
                if response is not None:
                    # Streamed answers are written by now; small ones are sent after return.
                    size = response.body_length if response.prepared else (
                        0 if request.method == "HEAD" else response.content_length or 0)
                access_log.info('%s "%s %s" %d %d %.3f', request.remote or "-", request.method,
                                request.path, status, size, time.monotonic() - started)

    async def _handle(self, request: web.BaseRequest) -> tuple[Route | None, web.StreamResponse]:
        raw = request.raw_path
        path = raw.split("?", 1)[0]
        if not raw.startswith("/"):
            return None, error_response(path, 400, "only origin-form request targets are served")
        refusal = _refuse(request, path)
        if refusal is not None:
            return None, refusal
        if self.auth.enabled:
            decision = await self.auth.check(request.remote, request.headers.get("Authorization"))
            if not decision.allowed:
                extra = {"WWW-Authenticate": decision.challenge} if decision.challenge else None
                return None, error_response(path, decision.status, decision.reason, headers=extra)
        route = self.routes.match(path)
        if route is None:
            return None, error_response(path, 404, "no route for this path")
        value = self.keeper.token(route.token)
        if value is None:
            self.metrics.unavailable.labels(route.name).inc()
            # Reading the record may cost a storage round trip (Redis): off the event loop.
            reason = await asyncio.to_thread(unavailable_reason, self.keeper, route.token)
            return route, error_response(path, 503, reason)
        try:
            return route, await self._forward(request, route, raw, value)
        except UpstreamFailure as exc:
            self.metrics.upstream_errors.labels(route.name, exc.kind).inc()
            log.warning("awstoken: route %s: %s", route.name, exc)
            return route, error_response(path, exc.status, str(exc))

    # -- the exchange ----------------------------------------------------------------------

    async def _forward(self, request: web.BaseRequest, route: Route, raw: str,
                       value: str) -> web.StreamResponse:
        headers = upstream_request_headers(
            request.headers, token_header=route.header, client_ip=request.remote,
            proto=request.scheme, host=request.headers.get("Host"))
        headers[route.header] = value
        data: Any = None
        if request.body_exists:
            if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            data = request.content
        url = URL(route.upstream_url(raw), encoded=True)
        began = time.monotonic()
        up = await self._send(request.method, url, headers, data)
        try:
            if up.status in (401, 403) and data is None:
                fresh = await self.refresher.fresh(route.token, value)
                if fresh is not None:
                    up.release()
                    log.info("awstoken: route %s: upstream answered %d; retrying once with the "
                             "refreshed token %r", route.name, up.status, route.token)
                    self.metrics.retries.labels(route.name).inc()
                    headers[route.header] = fresh
                    up = await self._send(request.method, url, headers, None)
            if up.status in REDIRECTS and "Location" in up.headers:
                target = url.join(URL(up.headers["Location"], encoded=True))
                if target.origin() != url.origin() and route.redirects == "follow" and \
                        request.method in ("GET", "HEAD"):
                    up.release()
                    up = await self._follow(request.method, target, headers, route)
            self.metrics.observe(route.name, time.monotonic() - began)
            return await self._respond(request, route, up)
        finally:
            up.release()

    async def _send(self, method: str, url: URL, headers: CIMultiDict[str],
                    data: Any) -> aiohttp.ClientResponse:
        try:
            return await self.upstream.session.request(
                method, url, headers=headers, data=data, allow_redirects=False)
        except TimeoutError:
            raise UpstreamFailure(504, "timeout", f"upstream {url.host} did not answer in time") from None
        except aiohttp.ClientConnectorCertificateError:
            raise UpstreamFailure(502, "tls", f"upstream {url.host}: TLS certificate not "
                                  "trusted") from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamFailure(502, "connect", f"cannot connect to upstream {url.host}:"
                                  f"{url.port} ({exc.os_error.strerror or exc.os_error})") from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailure(502, "protocol", f"upstream {url.host}: "
                                  f"{type(exc).__name__}") from None

    async def _follow(self, method: str, target: URL, headers: CIMultiDict[str],
                      route: Route) -> aiohttp.ClientResponse:
        """Fetch a redirect target on another host ourselves, never with the token."""
        clean: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in headers.items() if k not in CROSS_HOST_DROP and k.lower() !=
            route.header.lower())
        for _ in range(MAX_REDIRECTS):
            up = await self._send(method, target, clean, None)
            if up.status not in REDIRECTS or "Location" not in up.headers:
                return up
            target = target.join(URL(up.headers["Location"], encoded=True))
            up.release()
        raise UpstreamFailure(502, "redirects", f"more than {MAX_REDIRECTS} redirects from "
                              f"upstream for route {route.name}")

    # -- the answer ------------------------------------------------------------------------

    async def _respond(self, request: web.BaseRequest, route: Route,
                       up: aiohttp.ClientResponse) -> web.StreamResponse:
        headers = response_headers(up.headers)
        proxy_origin = f"{request.scheme}://{request.host}"
        if "Location" in headers:
            headers["Location"] = route.rewrite_location(headers["Location"], proxy_origin)
        head = request.method == "HEAD" or up.status in (204, 304) or up.status < 200
        length = None if "Transfer-Encoding" in up.headers else up.content_length
        if not head and up.status == 200 and is_index(up.headers.get("Content-Type")) and (
                length is None or length <= MAX_REWRITE_BYTES):
            return await self._respond_index(request, route, up, headers, proxy_origin)
        if not head and length is not None and length <= SMALL_BODY:
            body = await self._read(up, route)
            return web.Response(status=up.status, reason=up.reason, headers=headers, body=body)
        response = web.StreamResponse(status=up.status, reason=up.reason, headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        if not head:
            await self._pump(request, up, response, route)
        await response.write_eof()
        return response

    async def _read(self, up: aiohttp.ClientResponse, route: Route) -> bytes:
        try:
            return await up.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamFailure(502, "body", f"upstream {up.url.host} failed while sending "
                                  f"the body ({type(exc).__name__})") from None

    async def _pump(self, request: web.BaseRequest, up: aiohttp.ClientResponse,
                    response: web.StreamResponse, route: Route, first: bytes = b"") -> None:
        """Copy the upstream body to the client with backpressure on both sides."""
        if first:
            await response.write(first)
        try:
            async for chunk in up.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
            if isinstance(exc, ConnectionResetError):
                raise  # the client went away: nothing more to do
            # The status line is out: the only honest signal left is to cut the connection,
            # so the client sees a truncated body instead of a complete-looking one.
            self.metrics.upstream_errors.labels(route.name, "body").inc()
            log.warning("awstoken: route %s: upstream %s failed mid-body (%s); closing the "
                        "client connection", route.name, up.url.host, type(exc).__name__)
            up.close()
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError from None

    async def _respond_index(self, request: web.BaseRequest, route: Route,
                             up: aiohttp.ClientResponse, headers: CIMultiDict[str],
                             proxy_origin: str) -> web.StreamResponse:
        buffer = bytearray()
        try:
            async for chunk in up.content.iter_any():
                buffer += chunk
                if len(buffer) > MAX_REWRITE_BYTES:
                    break
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamFailure(502, "body", f"upstream {up.url.host} failed while sending "
                                  f"the body ({type(exc).__name__})") from None
        if len(buffer) > MAX_REWRITE_BYTES:
            log.warning("awstoken: route %s: index body over %d bytes passed without URL "
                        "rewriting", route.name, MAX_REWRITE_BYTES)
            response = web.StreamResponse(status=up.status, reason=up.reason, headers=headers)
            await response.prepare(request)
            await self._pump(request, up, response, route, bytes(buffer))
            await response.write_eof()
            return response
        body = bytes(buffer)
        encoding = up.headers.get("Content-Encoding", "")
        try:
            plain = decode(body, encoding)
        except Exception:
            plain = None
        if plain is not None:
            rewritten = rewrite(plain, route.upstream_base, route.public_base(proxy_origin))
            if route.strip_prefix and is_html(up.headers.get("Content-Type")):
                rewritten = rewrite_paths(rewritten, route.upstream_path, route.prefix)
            if rewritten != plain:
                body = rewritten
                headers.popall("Content-Encoding", None)
        return web.Response(status=up.status, reason=up.reason, headers=headers, body=body)
