"""Request policy: error bodies, upstream failures, token refresh after a refusal."""

from __future__ import annotations

import asyncio
import json
import logging

from .._errors import AwstokenError
from .._rotation.keeper import Keeper
from .._rotation.refusal import DEFAULT_REFRESH_WAIT, RefreshWait
from ._routes import has_dot_segment

log = logging.getLogger("awstoken.proxy")

REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10
#: Small bodies of known length are read whole and sent in one write.
SMALL_BODY = 64 * 1024
_DOCKER_CODES = {400: "UNSUPPORTED", 401: "UNAUTHORIZED", 403: "DENIED", 404: "NAME_UNKNOWN",
                 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "UNAVAILABLE"}


class UpstreamFailure(Exception):
    """The upstream could not be reached or did not answer in time."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


def error_body(path: str, status: int, message: str) -> tuple[str, bytes]:
    """``(content_type, body)`` of a short error: Docker registry JSON under ``/v2``, text elsewhere."""
    if path == "/v2" or path.startswith("/v2/"):
        body = json.dumps({"errors": [{"code": _DOCKER_CODES.get(status, "UNKNOWN"),
                                       "message": message, "detail": None}]})
        return "application/json; charset=utf-8", body.encode()
    return "text/plain; charset=utf-8", (message + "\n").encode()


def refusal(path: str, version: tuple[int, int], transfer_encoding: bool) -> str | None:
    """Why a parsed request must not be forwarded (answer 400 and close), or None.

    HTTP/0.9 is not served; Transfer-Encoding in HTTP/1.0 is faulty framing (RFC 9112
    6.1); dot segments (raw or percent-encoded) would let upstreams resolve the path
    outside the route's prefix or base path with the token attached.
    """
    if version < (1, 0):
        return "HTTP/0.9 requests are not served"
    if version < (1, 1) and transfer_encoding:
        return "Transfer-Encoding in an HTTP/1.0 request"
    if has_dot_segment(path):
        return "dot segments ('.', '..', '%2e') are not allowed in the path"
    return None


def unavailable_reason(keeper: Keeper, name: str) -> str:
    """Why a route's token cannot be used (never the value)."""
    try:
        record = keeper.record(name)
    except AwstokenError:
        record = None
    if record is not None and record.value is not None:
        text = f"token {name!r} has expired and could not be refreshed yet"
    else:
        text = f"token {name!r} is not available yet"
    if record is not None and record.error:
        # The record's error names no secret (the rotator masks it before storing).
        error = record.error.removeprefix(f"token {name!r}: ")
        text += f" (refresh failed {record.failures} time(s) in a row; last error: {error})"
    return text


class TokenRefresher:
    """After an upstream 401/403: one shared wait per refused token (single flight).

    Concurrent refusals of the same token value share one :class:`RefreshWait` (the same
    decision as the client adapters'); its storage reads run in a thread, so a slow storage
    (Redis) never stalls the event loop.
    """

    def __init__(self, keeper: Keeper, *, wait: float = DEFAULT_REFRESH_WAIT,
                 min_gap: float | None = None) -> None:
        self.keeper = keeper
        self.wait = wait
        self.min_gap = min_gap
        self._waits: dict[tuple[str, str], asyncio.Future[str | None]] = {}

    def fresh(self, name: str, old: str, status: int) -> asyncio.Future[str | None]:
        """A future for the token to retry with after ``old`` was refused, or None (final).

        Starts the wait (asking for a refresh when one may help) at once, so callers can
        do other work (finish reading a request body) before awaiting it.
        """
        key = (name, old)
        waiter = self._waits.get(key)
        if waiter is None:
            waiter = asyncio.ensure_future(self._wait(name, old, status))
            self._waits[key] = waiter
            waiter.add_done_callback(lambda _: self._waits.pop(key, None))
        return waiter

    async def _wait(self, name: str, old: str, status: int) -> str | None:
        wait = RefreshWait(self.keeper, name, old, status, wait=self.wait, min_gap=self.min_gap)
        try:
            while (delay := await asyncio.to_thread(wait.poll)) is not None:
                await asyncio.sleep(delay)
        except AwstokenError as exc:
            log.warning("awstoken: token %r: cannot look for a refreshed token: %s", name, exc)
            return None
        return wait.value
