"""Request policy: error bodies, upstream failures, token refresh after a refusal."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from .._errors import AwstokenError
from .._keeper import Keeper
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
        return f"token {name!r} has expired and could not be refreshed yet"
    return f"token {name!r} is not available yet"


class TokenRefresher:
    """One refresh per token after an upstream 401/403, shared by concurrent requests."""

    def __init__(self, keeper: Keeper, *, wait: float = 15.0) -> None:
        self.keeper = keeper
        self.wait = wait
        self._refreshing: dict[str, asyncio.Future[str | None]] = {}

    async def fresh(self, name: str, old: str) -> str | None:
        """Ask for one refresh of ``name`` and wait (bounded) for a new value; single flight."""
        waiter = self._refreshing.get(name)
        if waiter is None or waiter.done():
            waiter = asyncio.ensure_future(self._request_and_wait(name, old))
            self._refreshing[name] = waiter
        return await asyncio.shield(waiter)

    async def _request_and_wait(self, name: str, old: str) -> str | None:
        try:
            # A request goes through the storage (a Redis SET): off the event loop, so a slow
            # or unreachable Redis never stalls other requests.
            await asyncio.to_thread(self.keeper.request_refresh, name)
        except AwstokenError as exc:
            log.warning("awstoken: token %r: cannot request a refresh: %s", name, exc)
            return None
        return await self._wait_change(name, old)

    async def _wait_change(self, name: str, old: str) -> str | None:
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            value = self.keeper.token(name)
            if value is not None and value != old:
                return value
            await asyncio.sleep(0.05)
        log.warning("awstoken: token %r: no new token within %.0fs after an upstream refusal",
                    name, self.wait)
        return None
