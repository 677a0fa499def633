"""What every HTTP client adapter does: put the current token on a request; on a 401/403, ask
for one refresh and wait a bounded time for a new value.

The adapters (``awstoken.httpx``, ``awstoken.requests``, ``awstoken.aiohttp``) only wire this
into their library's hooks, so the three behave the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

from ._api import default_keeper
from ._errors import AwstokenError, TokenUnavailableError
from ._keeper import Keeper
from .storage._base import check_name

log = logging.getLogger("awstoken")

DEFAULT_REFRESH_TIMEOUT = 10.0
DEFAULT_RETRY_STATUSES = frozenset({401, 403})
_FIRST_POLL = 0.02
_MAX_POLL = 0.25


class TokenHeader:
    """The token ``name`` of ``keeper`` as the value of ``header`` on outgoing requests.

    ``refresh_timeout`` bounds the wait for a new token after a rejected request; responses
    with a status in ``retry_statuses`` count as rejections.
    """

    def __init__(self, name: str, *, keeper: Keeper | None, header: str,
                 refresh_timeout: float, retry_statuses: Collection[int]) -> None:
        self.name = check_name(name)
        self.keeper = keeper if keeper is not None else default_keeper()
        if not isinstance(header, str) or not header or not header.isascii() or any(
                c in header for c in ":\r\n \t"):
            raise AwstokenError(f"invalid header name {header!r}")
        self.header = header
        if isinstance(refresh_timeout, bool) or not isinstance(refresh_timeout, int | float) or \
                refresh_timeout < 0:
            raise AwstokenError(f"refresh_timeout must be a number of seconds >= 0, not "
                                f"{refresh_timeout!r}")
        self.refresh_timeout = float(refresh_timeout)
        self.retry_statuses = frozenset(retry_statuses)

    def __repr__(self) -> str:
        return f"TokenHeader({self.name!r}, header={self.header!r})"

    def value(self) -> str:
        """The current value; raise :class:`TokenUnavailableError` (saying why) when none."""
        value = self.keeper.token(self.name)
        if value is None:
            raise TokenUnavailableError(self._why_unavailable())
        return value

    def _why_unavailable(self) -> str:
        try:
            record = self.keeper.record(self.name)
        except AwstokenError as exc:
            return f"no usable token {self.name!r}: the storage could not be read: {exc}"
        now = time.time()
        if record is None:
            reason = f"it was never fetched into {self.keeper.storage!r} (is a rotator running?)"
        elif record.value is None:
            reason = "no refresh has succeeded yet"
        elif record.expired(now):
            reason = f"it expired {now - (record.expires_at or now):.0f}s ago"
        else:
            reason = "it is about to expire and no fresh one is stored yet"
        if record is not None and record.error is not None:
            reason += f"; the last refresh failed: {record.error}"
        return f"no usable token {self.name!r}: {reason}; the request was not sent"

    def rejected(self, status: int) -> bool:
        return status in self.retry_statuses

    def request_refresh(self, status: int) -> None:
        """Ask for a refresh without waiting (the request cannot be replayed)."""
        log.warning("awstoken: token %r: the server answered %d; asked for a refresh (the "
                    "request body cannot be replayed, so the request is not retried)",
                    self.name, status)
        self.keeper.request_refresh(self.name)

    def wait_for_new(self, sent: str, status: int) -> RefreshWait:
        """Start waiting for a token other than ``sent``; drive it with ``poll``."""
        return RefreshWait(self, sent, status)


class RefreshWait:
    """One bounded wait for a value other than ``sent``, requesting a refresh if needed.

    Call :meth:`poll` until it returns None, sleeping the seconds it returns in between
    (with ``time.sleep`` or an async sleep); then :attr:`value` is the new token, or None
    when none came in time or the refresh failed.
    """

    def __init__(self, header: TokenHeader, sent: str, status: int) -> None:
        self._header = header
        self._sent = sent
        self._status = status
        self._since = time.time()
        self._deadline = time.monotonic() + header.refresh_timeout
        self._delay = _FIRST_POLL
        self._requested = False
        self.value: str | None = None

    def poll(self) -> float | None:
        """Look once; return how long to sleep before looking again, or None when done."""
        header, name = self._header, self._header.name
        record = header.keeper.record(name)  # authoritative read; also refreshes the hot cache
        now = time.time()
        if record is not None and record.usable(now) and record.value != self._sent:
            self.value = record.value
            log.info("awstoken: token %r: the server answered %d; retrying once with the new "
                     "token (generation %d)", name, self._status, record.generation)
            return None
        if self._requested and record is not None and record.error_at is not None and \
                record.error_at >= self._since:
            log.warning("awstoken: token %r: the server answered %d and the refresh failed: %s",
                        name, self._status, record.error)
            return None
        if not self._requested:
            header.keeper.request_refresh(name)
            self._requested = True
        left = self._deadline - time.monotonic()
        if left <= 0:
            log.warning("awstoken: token %r: the server answered %d and no new token came within "
                        "%gs; giving up on this request", name, self._status,
                        header.refresh_timeout)
            return None
        delay = min(self._delay, left)
        self._delay = min(self._delay * 2, _MAX_POLL)
        return delay
