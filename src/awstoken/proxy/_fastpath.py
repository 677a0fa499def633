"""The common request answered with callbacks over bytes: no coroutine, no task.

The common request is a GET or HEAD without a body, on a path that needs no normalising,
for a route without a cache, with a usable token in the storage's hot dict and an idle
pooled connection to the upstream, without inbound authentication. Its upstream request
head is built in one pass (the token's line cached per token value), sent on the pooled
connection, and the answer goes to the client from the upstream protocol's callbacks: the
upstream head passed through with only the hop-by-hop and framing edits, a small body in
one write, a large one streamed with flow control both ways.

Everything else falls over to the coroutine path of ``_fast`` cleanly: before anything is
sent (the request is not taken), or once the upstream's answer head shows an uncommon case
(401/403: refresh and retry; a redirect to follow; an index to rewrite), or when a pooled
connection failed before any answer (the request goes again on a new connection). Upstream
failures that the coroutine path answers with an error are answered the same way here.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

from ._answer import client_headers
from ._framing import body_sink
from ._h1 import ClientConnection, Origin, Request, UpstreamConnection, UpstreamError, reason
from ._h1 import encode_head as _encode_head
from ._headers import REQUEST_DROP, connection_tokens
from ._policy import REDIRECTS, SMALL_BODY, UpstreamFailure
from ._rewrite import accept_encoding, is_index
from ._routes import Route, needs_normalizing

if TYPE_CHECKING:
    from ._fast import FastForwarder

log = logging.getLogger("awstoken.proxy")

# Final: a compiled build (mypyc) reads these as constants, not from the module's dict.
# Stages of an exchange answered with callbacks (``_Job.stage``).
_HEAD: Final = 0
_COLLECT: Final = 1
_STREAM: Final = 2
_STREAM_CHUNKED: Final = 3
_REQUEST_DROP: Final = frozenset(name.encode() for name in REQUEST_DROP)
_FAILURE_STATUS: Final = {"timeout": 504}


class _Job:
    """One exchange answered with callbacks (``UpstreamConnection.job``): typed attributes,
    which a compiled build reads without a lookup (a tuple of them needs one per item)."""

    __slots__ = ("conn", "request", "reused", "route", "stage", "started", "value")

    def __init__(self, conn: ClientConnection, request: Request, route: Route, value: str,
                 started: float, reused: bool) -> None:
        self.conn = conn
        self.request = request
        self.route = route
        self.value = value
        self.stage = _HEAD
        self.started = started
        self.reused = reused


class FastPath:
    """Takes the common requests of one forwarder (``ClientConnection``'s fast handler)."""

    def __init__(self, forwarder: FastForwarder) -> None:
        self.fw = forwarder
        # Fixed for the forwarder's life (a reload builds a new one; the storage and inbound
        # authentication change only with a restart): looked up once, not per request.
        self._values = forwarder.keeper.storage.values
        self._auth = forwarder.auth.enabled
        self._token_lines: dict[tuple[str, str], bytes] = {}
        self._status_lines: dict[tuple[int, bytes], bytes] = {}
        #: Per route (by id: the route table keeps them): its origin and token field name.
        self._routes: dict[int, tuple[Origin, bytes]] = {}

    # -- taking a request ------------------------------------------------------------------

    def __call__(self, conn: ClientConnection, request: Request) -> bool:
        """Start answering ``request`` with callbacks; False to leave it to the coroutine."""
        if request.body is not None or (request.method != "GET" and request.method != "HEAD"):
            return False
        fw = self.fw
        target = request.target
        path = target.partition("?")[0] if "?" in target else target
        if self._auth or not path.startswith("/") or needs_normalizing(path):
            return False
        route = fw.routes.match(path)
        if route is None or route.cache is not None:
            return False
        value = self._values.get(route.token)
        if value is None:
            return False
        token_line = self._token_line(route.header, value)
        if token_line is None:
            return False  # the coroutine path refuses it with its error
        memo = self._routes.get(id(route))
        if memo is None:
            memo = self._routes[id(route)] = (
                fw.origin_for(route.upstream_origin),
                route.header.lower().encode("latin-1", "replace"))
        origin = memo[0]
        try:
            head = self._request_head(conn, request, route, origin.host_header, token_line,
                                      memo[1])
        except UnicodeEncodeError:  # a name the coroutine path fails on the same way
            return False
        if head is None:
            return False
        up = fw.pool.take(origin)
        if up is None:
            return False  # a new connection is made by the coroutine path
        started = time.monotonic()
        reused = up.uses > 0
        up.job = _Job(conn, request, route, value, started, reused)
        up.listener = self._progress
        conn.on_lost = up.poke  # the client left: _progress sees it closed
        up.start(head, request.method == "HEAD")
        return True

    def _token_line(self, name: str, value: str) -> bytes | None:
        """``name: value\\r\\n`` of the token, built once per token value (and header name)."""
        key = (name, value)
        line = self._token_lines.get(key)
        if line is None:
            if "\r" in value or "\n" in value:
                return None
            try:
                line = f"{name}: {value}\r\n".encode("latin-1")
            except UnicodeEncodeError:
                return None
            if len(self._token_lines) > 64:  # old generations: forget them
                self._token_lines.clear()
            self._token_lines[key] = line
        return line

    def _request_head(self, conn: ClientConnection, request: Request, route: Route,
                      host_header: str, token_line: bytes, token_key: bytes) -> bytes | None:
        """The upstream request head in one pass over the client's fields as received,
        byte for byte what the coroutine path sends (``FastForwarder.upstream_pairs``)."""
        fw = self.fw
        parts = [f"{request.method} {route.upstream_target(request.target)} HTTP/1.1\r\n"
                 f"Host: {host_header}\r\n".encode("latin-1")]
        prior: list[str] | None = None
        for name, value in request.raw:
            low = name.lower()
            if low in _REQUEST_DROP or low == token_key:
                if low == b"x-forwarded-for":
                    if prior is None:
                        prior = []
                    prior.append(value.decode("latin-1"))
                elif low == b"connection" and connection_tokens(
                        [("connection", value.decode("latin-1"))]) - REQUEST_DROP:
                    # It names fields to drop wherever they are: the general filter.
                    return self._general_head(conn, request, route, host_header, token_line)
                continue
            if low == b"accept-encoding":
                value = accept_encoding(value.decode("latin-1")).encode("latin-1")
            parts += (name, b": ", value, b"\r\n")
        if prior is None:
            # The same for every request of the connection: made once per connection.
            memo = conn.memo
            if memo is None or memo[0] is not self:
                memo = conn.memo = (self, _forwarded(None, conn.remote, fw.public_scheme,
                                                     fw.public_host or conn.local).encode("latin-1"))
            forwarded = memo[1]
        else:
            forwarded = _forwarded(prior, conn.remote, fw.public_scheme,
                                   fw.public_host or conn.local).encode("latin-1")
        parts += (forwarded, token_line, b"\r\n")
        return b"".join(parts)

    def _general_head(self, conn: ClientConnection, request: Request, route: Route,
                      host_header: str, token_line: bytes) -> bytes | None:
        pairs = self.fw.upstream_pairs(conn, request, route)
        try:
            head = _encode_head(f"{request.method} {route.upstream_target(request.target)} "
                                "HTTP/1.1", [("Host", host_header), *pairs])
        except UnicodeEncodeError:
            return None
        return head[:-2] + token_line + b"\r\n"

    # -- the upstream's answer -------------------------------------------------------------

    def _progress(self, up: UpstreamConnection) -> None:
        """An event of the exchange on ``up`` (head, body, end, failure, the client gone)."""
        job: _Job | None = up.job
        if job is None:
            return
        conn = job.conn
        try:
            if conn.closed:
                self._client_gone(up)
            elif up.error is not None and not up.complete:
                self._failed(up, up.error)
            else:
                self._step(up, conn, job.stage)
        except Exception:
            log.exception("awstoken: unexpected error while answering a request")
            conn.on_lost = None
            conn.abort()
            if up.job is not None:
                self._finish(up, 502)

    def _step(self, up: UpstreamConnection, conn: ClientConnection, stage: int) -> None:
        if stage == _HEAD:
            if up.head_done:
                self._head(up)
        elif up.complete:
            if stage == _COLLECT:
                self._send_whole(up)
                return
            if stage == _STREAM_CHUNKED:
                conn.write(b"0\r\n\r\n")
            self._finish(up, up.status)

    def _head(self, up: UpstreamConnection) -> None:
        job: _Job = up.job
        conn, request, route = job.conn, job.request, job.route
        fw = self.fw
        status = up.status
        if status == 401 or status == 403 or (
                status in REDIRECTS and up.location is not None and route.redirects == "follow") \
                or (status == 200 and not up.head_only and is_index(up.content_type)):
            self._fall_over(up, up)
            return
        fw.metrics.observe(route.name, time.monotonic() - job.started)
        if up.head_only or status == 204 or status == 304:
            # HEAD keeps the upstream's Content-Length (the size a GET would bring).
            length = up.length
            framing = b"Content-Length: %d\r\n" % length if request.method == "HEAD" and \
                length is not None and status != 204 and status != 304 else b""
            conn.response_started = True
            conn.write(self._response_head(conn, up, route, request, framing))
            conn.sent = 0
            self._finish(up, status)
        elif up.complete:
            self._send_whole(up)
        elif up.length is not None and up.length <= SMALL_BODY:
            job.stage = _COLLECT
        else:
            self._stream(up)

    def _send_whole(self, up: UpstreamConnection) -> None:
        job: _Job = up.job
        conn, request, route = job.conn, job.request, job.route
        body = up.take()
        conn.response_started = True
        conn.write(self._response_head(conn, up, route, request,
                                       b"Content-Length: %d\r\n" % len(body), body))
        conn.sent = len(body)
        self._finish(up, up.status)

    def _stream(self, up: UpstreamConnection) -> None:
        job: _Job = up.job
        conn, request = job.conn, job.request
        length = up.length
        chunked = length is None and request.version == "1.1"
        if length is not None:
            framing = b"Content-Length: %d\r\n" % length
        elif chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            request.keep_alive = False  # the end of the connection ends the body
            framing = b""
        conn.response_started = True
        conn.write(self._response_head(conn, up, job.route, request, framing))
        job.stage = _STREAM_CHUNKED if chunked else _STREAM
        up.attach(conn, body_sink(conn, chunked))

    def _response_head(self, conn: ClientConnection, up: UpstreamConnection, route: Route,
                       request: Request, framing: bytes, body: bytes = b"") -> bytes:
        """The status line, the upstream's fields but hop-by-hop and framing ones (``kept``,
        as received), ``framing``, Connection for the client, then ``body``: one join."""
        kept = up.kept
        parts = [self._status_line(up)]
        if kept is None or up.location is not None:
            parts.append(self._filtered_fields(conn, up, route))
        else:
            parts += kept
        parts.append(framing)
        if not request.keep_alive:
            parts.append(b"Connection: close\r\n")
        elif request.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if body:
            parts.append(body)
        return b"".join(parts)

    def _status_line(self, up: UpstreamConnection) -> bytes:
        key = (up.status, up.reason)
        line = self._status_lines.get(key)
        if line is None:
            status, phrase = key
            line = b"HTTP/1.1 %d %s\r\n" % (status, phrase or reason(status).encode("latin-1"))
            if len(self._status_lines) < 256:  # reason phrases come from upstreams: bounded
                self._status_lines[key] = line
        return line

    def _filtered_fields(self, conn: ClientConnection, up: UpstreamConnection,
                         route: Route) -> bytes:
        # The general filter: fields named in Connection dropped too, Location pointed back
        # at the proxy (as FastForwarder._respond does).
        pairs = client_headers(up, route, self.fw.proxy_origin(conn))
        return "".join(f"{k}: {v}\r\n" for k, v in pairs).encode("latin-1")

    # -- endings ---------------------------------------------------------------------------

    def _failed(self, up: UpstreamConnection, error: UpstreamError) -> None:
        job: _Job = up.job
        conn, request, route, stage = job.conn, job.request, job.route, job.stage
        fw = self.fw
        if stage == _HEAD:
            if job.reused and error.before_response:
                # A pooled connection the upstream closed while idle: the request once more
                # on a new connection (it has no body), by the coroutine path.
                self._fall_over(up, None)
                return
            failure = UpstreamFailure(_FAILURE_STATUS.get(error.kind, 502), error.kind,
                                      str(error))
        elif stage == _COLLECT:
            failure = UpstreamFailure(502, "body", f"upstream {up.origin.host} failed while "
                                      f"sending the body ({error})")
        else:
            # The status line is out: the only honest signal left is to cut the connection,
            # so the client sees a truncated body instead of a complete-looking one.
            fw.metrics.upstream_errors.labels(route.name, "body").inc()
            log.warning("awstoken: route %s: upstream %s failed mid-body (%s); closing the "
                        "client connection", route.name, up.origin.host, error)
            conn.on_lost = None
            conn.abort()
            self._finish(up, up.status)
            return
        self._finish(up, fw.failed(conn, request, route, failure))

    def _fall_over(self, up: UpstreamConnection, answered: UpstreamConnection | None) -> None:
        """Hand the request to the coroutine path, from ``answered``'s head or afresh."""
        job: _Job = up.job
        up.listener = None
        up.job = None
        if answered is None:
            up.release()
        job.conn.run(job.request, self.fw.resume(job.conn, job.request, job.route, job.value,
                                                 answered, job.started))

    def _finish(self, up: UpstreamConnection, status: int) -> None:
        job: _Job = up.job
        up.release()  # clears job and listener; back to the pool when the answer was whole
        request = job.request
        self.fw.record(job.conn, request, job.route, status, request.target, job.started)
        job.conn.done(request)

    def _client_gone(self, up: UpstreamConnection) -> None:
        """The client closed its connection while ``up`` answered it: abort the exchange
        (counted as 499, as the coroutine path counts a request cancelled that way)."""
        job: _Job = up.job
        up.release()
        request = job.request
        self.fw.record(job.conn, request, None, 499, request.target, job.started)
        job.conn.done(request)


def _forwarded(prior: list[str] | None, client_ip: str | None, proto: str, host: str) -> str:
    """The X-Forwarded-* lines (as ``request_header_pairs`` sets them)."""
    before = ", ".join(prior) if prior else ""
    if client_ip:
        lines = f"X-Forwarded-For: {before}, {client_ip}\r\n" if before else \
            f"X-Forwarded-For: {client_ip}\r\n"
    else:
        lines = f"X-Forwarded-For: {before}\r\n" if before else ""
    lines += f"X-Forwarded-Proto: {proto}\r\n"
    if host:
        lines += f"X-Forwarded-Host: {host}\r\n"
    return lines


__all__ = ["FastPath"]
