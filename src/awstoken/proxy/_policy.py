"""Request policy: error bodies, upstream failures, waits for a token (refused or missing)."""

from __future__ import annotations

import asyncio
import json
import logging

from .._errors import AwstokenError
from .._rotation.keeper import Keeper
from .._rotation.refusal import DEFAULT_REFRESH_WAIT, NO_TOKEN, RefreshWait
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
    """One shared, bounded wait per token, for every request path of a process.

    Two kinds of request wait on a refresh (the same decision as the client adapters', see
    :class:`RefreshWait`): a request whose token the upstream refused (401/403), and a request
    that found no usable token at all (``serve`` listens before its first fetch ends, or the
    token expired), on the proxy listener or on the token endpoint. Concurrent waits for the
    same token (and refused value) share one :class:`RefreshWait`, so they cost one refresh
    and one poll loop; its storage reads run in a thread, so a slow storage (Redis) never
    stalls the event loop. Each caller awaits its own shield of the shared wait: a request
    cancelled while it waits (its client went away) leaves the wait running for the others.
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
        do other work (finish reading a request body) before awaiting it. ``old`` "" with
        ``status`` :data:`NO_TOKEN`: a wait for any usable token.
        """
        key = (name, old)
        waiter = self._waits.get(key)
        if waiter is None:
            waiter = asyncio.ensure_future(self._wait(name, old, status))
            self._waits[key] = waiter
            waiter.add_done_callback(lambda _: self._waits.pop(key, None))
        # Cancelling the caller (its client left) must not cancel the wait others share.
        return asyncio.shield(waiter)

    async def usable(self, name: str) -> str | None:
        """The usable token of ``name`` for a request that did not find it in the storage's
        hot dict: a storage read (in a thread), else the shared wait for a refresh (at most
        ``wait`` seconds; none when a refresh failed less than the gap ago). None: no token
        came; :meth:`reason` says why."""
        value = await asyncio.to_thread(token_or_none, self.keeper, name)
        if value is None:
            value = await self.fresh(name, "", NO_TOKEN)
        return value

    async def reason(self, name: str) -> str:
        """Why ``name`` has no usable token (:func:`unavailable_reason`, read in a thread)."""
        return await asyncio.to_thread(unavailable_reason, self.keeper, name)

    def waiting(self, name: str) -> bool:
        """Whether a wait for ``name`` is in flight."""
        return any(key[0] == name for key in self._waits)

    async def close(self) -> None:
        """Cancel the waits still in flight (at shutdown, once no request awaits them), and
        return once they have ended, so nothing of theirs outlives the server's stop."""
        waiters = list(self._waits.values())
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        self._waits.clear()

    async def _wait(self, name: str, old: str, status: int) -> str | None:
        wait = RefreshWait(self.keeper, name, old, status, wait=self.wait, min_gap=self.min_gap)
        try:
            while (delay := await asyncio.to_thread(wait.poll)) is not None:
                await asyncio.sleep(delay)
        except AwstokenError as exc:
            log.warning("awstoken: token %r: cannot look for a refreshed token: %s", name, exc)
            return None
        return wait.value


def token_or_none(keeper: Keeper, name: str) -> str | None:
    """``keeper.token(name)``; None (logged) when the storage cannot be read (Redis away
    and nothing cached). Blocking: call it in a thread."""
    try:
        return keeper.token(name)
    except AwstokenError as exc:
        log.warning("awstoken: token %r: cannot read the storage: %s", name, exc)
        return None
