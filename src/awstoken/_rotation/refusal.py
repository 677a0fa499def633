"""After an upstream refused a token (401/403): is a new token coming, and what is it?

One implementation for every front door that retries: the proxy (``awstoken serve``) and the
httpx, requests and aiohttp adapters all drive :class:`RefreshWait`, so they decide alike:

- a usable token other than the refused one is already stored: use it at once;
- the refused token was fetched (or a refresh failed) less than ``min_gap`` seconds ago: no
  refresh will run now (the rotator refreshes at most once per gap), and a token that fresh
  is not what the upstream objects to, so the refusal is final at once;
- otherwise ask for one refresh and wait at most ``wait`` seconds, stopping as soon as the
  refresh stores a new token (retry with it), stores the same token or fails (the refusal
  is final).

The proxy also drives it (status :data:`NO_TOKEN`) for a request that found no usable token
(``serve`` has just started and the first fetch is running, or the token expired): it waits
the same bounded time for the refresh instead of answering 503 at once, unless a refresh
failed within the gap.

:meth:`RefreshWait.poll` does one (possibly blocking) storage read; callers on an event loop
run it in a thread and sleep between polls asynchronously.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .rotator import DEFAULT_MIN_REFRESH_GAP

if TYPE_CHECKING:
    from .keeper import Keeper

log = logging.getLogger("awstoken")

#: How long a refused request waits, at most, for a refresh it asked for.
DEFAULT_REFRESH_WAIT = 5.0
#: The ``status`` of a wait for a request that found no usable token at all (not a refusal):
#: ``sent`` is then "" (never a valid token), so any usable token ends the wait.
NO_TOKEN = 0
_FIRST_POLL = 0.01
_MAX_POLL = 0.2


def refresh_gap(keeper: Keeper, name: str, configured: float | None) -> float:
    """The minimum gap between refreshes of ``name``: the local rotator's when this process
    runs one (what will actually happen), else ``configured`` (the gap of the rotators in
    other processes), else the default."""
    rotator = keeper.rotators.get(name)
    if rotator is not None:
        return rotator.schedule.min_refresh_gap
    return DEFAULT_MIN_REFRESH_GAP if configured is None else configured


class RefreshWait:
    """One bounded wait for a token other than ``sent`` after a refusal with ``status``.

    Call :meth:`poll` until it returns None, sleeping the seconds it returns in between;
    then :attr:`value` is the token to retry with, or None when the refusal is final
    (:attr:`outcome` says why: ``"new"``, ``"fresh"``, ``"same"``, ``"failed"``,
    ``"timeout"``).
    """

    def __init__(self, keeper: Keeper, name: str, sent: str, status: int, *, wait: float,
                 min_gap: float | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.keeper = keeper
        self.name = name
        self.sent = sent
        self.status = status
        self.wait = wait
        self.min_gap = refresh_gap(keeper, name, min_gap)
        self.clock = clock
        self.monotonic = monotonic
        self.value: str | None = None
        self.outcome = ""
        self._since: float | None = None
        self._deadline = monotonic() + wait
        self._delay = _FIRST_POLL

    def poll(self) -> float | None:
        """Look once (a storage read); how long to sleep before looking again, or None."""
        record = self.keeper.record(self.name)  # authoritative; also refreshes the hot cache
        now = self.clock()
        # What the storage itself hands out, just refreshed by that read: its rule, expiry
        # margin included (a value that close to its expiry would expire on its way: CI saw
        # nginx send one just past it).
        value = self.keeper.token(self.name)
        if value is not None and value != self.sent:
            self._done("new", value)
            return None
        since = self._since
        if since is None:
            last = 0.0 if record is None else max(record.refreshed_at, record.error_at or 0.0)
            if record is not None and now - last < self.min_gap:
                self._done("fresh", None)
                return None
            self.keeper.request_refresh(self.name)
            self._since = since = now
        elif record is not None:
            if record.error_at is not None and record.error_at >= since:
                self._done("failed", None, record.error)
                return None
            if record.refreshed_at >= since:
                self._done("same", None)
                return None
        left = self._deadline - self.monotonic()
        if left <= 0:
            self._done("timeout", None)
            return None
        delay = min(self._delay, left)
        self._delay = min(self._delay * 2, _MAX_POLL)
        return delay

    def _done(self, outcome: str, value: str | None, error: str | None = None) -> None:
        self.outcome, self.value = outcome, value
        if self.status == NO_TOKEN:
            self._log_first(outcome, error)
        else:
            self._log_refusal(outcome, error)

    def _log_refusal(self, outcome: str, error: str | None) -> None:
        name, status = self.name, self.status
        if outcome == "new":
            log.info("awstoken: token %r: the server answered %d; retrying once with the new "
                     "token", name, status)
        elif outcome == "fresh":  # every refusal in the gap: not worth a line each at INFO
            log.debug("awstoken: token %r: the server answered %d to a token fetched less than "
                     "%gs ago; not retrying", name, status, self.min_gap)
        elif outcome == "same":
            log.warning("awstoken: token %r: the server answered %d and the refresh brought "
                        "the same token; not retrying", name, status)
        elif outcome == "failed":
            log.warning("awstoken: token %r: the server answered %d and the refresh failed: %s",
                        name, status, error)
        else:
            log.warning("awstoken: token %r: the server answered %d and no new token came "
                        "within %gs; not retrying", name, status, self.wait)

    def _log_first(self, outcome: str, error: str | None) -> None:
        # A request that found no usable token: the caller answers 503 with the reason
        # unless a token came; only the wait's end is worth a line.
        if outcome == "new":
            log.debug("awstoken: token %r: a request waited for the token and got it", self.name)
        elif outcome == "timeout":
            log.warning("awstoken: token %r: no usable token came within %gs of a request",
                        self.name, self.wait)
