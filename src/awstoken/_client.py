"""What every HTTP client adapter does: put the current token on a request; on a 401/403, ask
for one refresh and wait a bounded time for a new value (:mod:`awstoken._rotation.refusal`, shared with
the proxy).

The adapters (``awstoken.httpx``, ``awstoken.requests``, ``awstoken.aiohttp``) only wire this
into their library's hooks, so the three behave the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

from ._api import default_keeper
from ._errors import AwstokenError, TokenUnavailableError
from ._rotation.keeper import Keeper
from ._rotation.refusal import DEFAULT_REFRESH_WAIT, RefreshWait
from ._token import check_name

log = logging.getLogger("awstoken")

DEFAULT_REFRESH_TIMEOUT = DEFAULT_REFRESH_WAIT
DEFAULT_RETRY_STATUSES = frozenset({401, 403})


class TokenHeader:
    """The token ``name`` of ``keeper`` as the value of ``header`` on outgoing requests.

    ``refresh_timeout`` bounds the wait for a new token after a rejected request; responses
    with a status in ``retry_statuses`` count as rejections. ``min_refresh_gap`` is the
    leader's minimum gap between refreshes when no rotator runs in this process (default
    10 s): a token fetched more recently than that is not waited on (:mod:`awstoken._rotation.refusal`).
    """

    def __init__(self, name: str, *, keeper: Keeper | None, header: str,
                 refresh_timeout: float, retry_statuses: Collection[int],
                 min_refresh_gap: float | None = None) -> None:
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
        if min_refresh_gap is not None and (isinstance(min_refresh_gap, bool) or not isinstance(
                min_refresh_gap, int | float) or min_refresh_gap < 0):
            raise AwstokenError(f"min_refresh_gap must be a number of seconds >= 0, not "
                                f"{min_refresh_gap!r}")
        self.min_refresh_gap = None if min_refresh_gap is None else float(min_refresh_gap)
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

    def refused(self, status: int, sent_back: str | None, sent: str) -> bool:
        """True when a response refuses the token sent: its status is a rejection and its
        request carried ``sent`` (``sent_back``), not a redirect to a host that never saw it."""
        return self.rejected(status) and sent_back == sent

    def request_refresh(self, status: int) -> None:
        """Ask for a refresh without waiting (the request cannot be replayed)."""
        log.warning("awstoken: token %r: the server answered %d; asked for a refresh (the "
                    "request body cannot be replayed, so the request is not retried)",
                    self.name, status)
        self.keeper.request_refresh(self.name)

    def wait_for_new(self, sent: str, status: int) -> RefreshWait:
        """Start waiting for a token other than ``sent``; drive it with ``poll``."""
        return RefreshWait(self.keeper, self.name, sent, status, wait=self.refresh_timeout,
                           min_gap=self.min_refresh_gap)


class HeaderAuth:
    """What the httpx and requests ``TokenAuth`` share: their options and the token header."""

    def __init__(self, name: str, *, keeper: Keeper | None = None, header: str = "Authorization",
                 refresh_timeout: float = DEFAULT_REFRESH_TIMEOUT,
                 retry_statuses: Collection[int] = DEFAULT_RETRY_STATUSES,
                 min_refresh_gap: float | None = None) -> None:
        self._token = TokenHeader(name, keeper=keeper, header=header,
                                  refresh_timeout=refresh_timeout, retry_statuses=retry_statuses,
                                  min_refresh_gap=min_refresh_gap)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._token.name!r}, header={self._token.header!r})"
