"""The Storage protocol and the local hot cache every storage builds on.

The read path (``awstoken.token(name)``) runs on every proxied request, so each storage keeps
a plain ``dict`` of the values that are usable right now (``values``). A small daemon thread
per storage keeps that dict honest: it evicts each value ``margin`` seconds before its expiry
and, for shared storages, revalidates from the backing store every ``poll`` seconds. The hot
path is therefore one dict lookup: no clock read, no syscall, no lock.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from .._errors import AwstokenError
from .._token import Token, check_name

log = logging.getLogger("awstoken")

Clock = Callable[[], float]

#: A value leaves the hot cache this many seconds before it expires, so a request that picks
#: it up still has time to reach the upstream, and a late cache thread is never late enough
#: to serve an expired token.
DEFAULT_MARGIN = 1.0

@runtime_checkable
class Lease(Protocol):
    """Leadership for one token name, held by one process at a time."""

    def held(self) -> bool:
        """True while this process is still the leader (renewing the lease if needed)."""
        ...

    def release(self) -> None:
        """Give leadership up (only if still ours)."""
        ...


@runtime_checkable
class Storage(Protocol):
    """Where token records live, shared by the processes that use the same storage."""

    @property
    def values(self) -> Mapping[str, str]:
        """Values usable right now, for the hot read path (read-only view)."""
        ...

    def get(self, name: str) -> str | None:
        """The usable value of ``name``, or None: cheap, from the local cache when possible."""
        ...

    def read(self, name: str) -> Token | None:
        """The current record of ``name`` from the backing store."""
        ...

    def write(self, name: str, token: Token) -> None:
        """Store a record (atomically); raise :class:`awstoken.StorageError` on failure."""
        ...

    def acquire(self, name: str) -> Lease | None:
        """Try to become the leader for ``name`` without blocking; None if someone else is."""
        ...

    def request_refresh(self, name: str) -> None:
        """Ask the leader of ``name`` (in whatever process) to refresh it soon."""
        ...

    def refresh_requested(self, name: str) -> float:
        """When a refresh of ``name`` was last requested (epoch seconds; 0 if never)."""
        ...

    def close(self) -> None:
        """Stop background work and release resources."""
        ...


_live: weakref.WeakSet[BaseStorage] = weakref.WeakSet()


class BaseStorage(ABC):
    """Hot cache and cache thread shared by the built-in storages.

    Subclasses implement ``_load`` (the authoritative read), ``_store`` and ``_stale``
    (cheap "has the backing record changed since I loaded it?"), plus leadership.
    """

    def __init__(self, *, poll: float = 1.0, margin: float = DEFAULT_MARGIN,
                 clock: Clock = time.time) -> None:
        self._values: dict[str, str] = {}
        self._records: dict[str, Token | None] = {}
        self._deadlines: list[tuple[float, str, int]] = []  # (evict at, name, generation)
        # Records this process wrote that the backing store refused (read-only, removed):
        # newer than what the store holds, so reads prefer them until a newer record lands.
        self._unstored: dict[str, Token] = {}
        self._revalidate_errors: dict[str, str] = {}
        self.poll = poll
        self.margin = margin
        self.clock = clock
        self._init_threading()
        _live.add(self)

    def _init_threading(self) -> None:
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- read path -------------------------------------------------------------------------

    @property
    def values(self) -> Mapping[str, str]:
        return self._values

    def get(self, name: str) -> str | None:
        value = self._values.get(name)
        if value is not None:
            return value
        try:
            record = self._cached_record(name)
        except AwstokenError as exc:
            # The hot path never raises for storage trouble (a directory this process cannot
            # read, Redis away): no token, and one log line per distinct error.
            self._read_failed(name, exc)
            return None
        # The same margin as the hot dict: a value this close to expiry is not handed out.
        if record is not None and record.usable(self.clock() + self.margin):
            return record.value
        return None

    def _read_failed(self, name: str, exc: AwstokenError) -> None:
        with self._lock:
            if self._revalidate_errors.get(name) == str(exc):
                return
            self._revalidate_errors[name] = str(exc)
        log.warning("awstoken: cannot read token %r: %s", name, exc)

    def read(self, name: str) -> Token | None:
        with self._lock:
            return self._refresh_from_store(name)

    def _cached_record(self, name: str) -> Token | None:
        with self._lock:
            if name in self._records and not self._stale(name):
                return self._records[name]
            return self._refresh_from_store(name)

    def _refresh_from_store(self, name: str) -> Token | None:
        record = self._load(name)
        unstored = self._unstored.get(name)
        if unstored is not None:
            if record is None or unstored.generation >= record.generation:
                record = unstored  # the store still holds an older record than ours
            else:
                del self._unstored[name]  # another process stored a newer one
        if record is None:
            cached = self._records.get(name)
            if cached is not None and cached.usable(self.clock() + self.margin):
                # The store lost the record (directory removed, cleaned up, flushed): no
                # token was revoked, so keep serving ours until it expires. The caller (a
                # leader's rotator) still learns that the store has none, and refreshes.
                return None
        self._remember(name, record)
        return record

    def _remember(self, name: str, record: Token | None) -> None:
        """Put ``record`` into the local caches (caller holds the lock)."""
        self._records[name] = record
        now = self.clock()
        if record is not None and record.value is not None and (
                record.expires_at is None or now < record.expires_at - self.margin):
            self._values[name] = record.value
            if record.expires_at is not None:
                heapq.heappush(self._deadlines,
                               (record.expires_at - self.margin, name, record.generation))
        else:
            self._values.pop(name, None)
        self._ensure_thread()
        self._wake.notify()

    # -- write path ------------------------------------------------------------------------

    def write(self, name: str, token: Token) -> None:
        check_name(name)
        with self._lock:
            # The in-memory copy is updated first: if the backing store fails (directory
            # removed, read-only, Redis away), this process still serves the new token, and
            # later reads return it rather than the older record the store still holds (a
            # leader that re-read the old record would refresh again at once, in a loop).
            self._remember(name, token)
            try:
                self._store(name, token)
            except AwstokenError:
                self._unstored[name] = token
                raise
            self._unstored.pop(name, None)

    # -- cache thread ----------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name=f"awstoken-{type(self).__name__}",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        next_poll = time.monotonic() + self.poll
        while True:
            with self._lock:
                if self._closed:
                    return
                self._evict_due()
                wait = next_poll - time.monotonic()
                if self._deadlines:
                    wait = min(wait, self._deadlines[0][0] - self.clock())
                if wait > 0:
                    self._wake.wait(wait)
                if self._closed:
                    return
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.poll
                self._revalidate()

    def _evict_due(self) -> None:
        now = self.clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, name, generation = heapq.heappop(self._deadlines)
            record = self._records.get(name)
            if record is not None and record.generation == generation:
                self._values.pop(name, None)

    def _revalidate(self) -> None:
        with self._lock:
            names = list(self._records)
        for name in names:
            try:
                with self._lock:
                    if self._stale(name):
                        self._refresh_from_store(name)
            except AwstokenError as exc:
                # Keep serving what we have until it expires; say why we could not revalidate,
                # once per distinct error rather than on every poll.
                if self._revalidate_errors.get(name) != str(exc):
                    self._revalidate_errors[name] = str(exc)
                    log.warning("awstoken: could not revalidate token %r (serving the cached "
                                "value until it expires): %s", name, exc)
                continue
            except Exception:  # a cache thread must never die
                log.exception("awstoken: unexpected error revalidating token %r", name)
                continue
            if self._revalidate_errors.pop(name, None) is not None:
                log.info("awstoken: token %r: storage readable again", name)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _after_fork_in_child(self) -> None:
        # Locks may have been held by a thread that does not exist in the child; the cache
        # thread is gone too. Start clean, keeping the cached records.
        self._init_threading()
        if self._records:
            self._ensure_thread()

    # -- what subclasses provide -----------------------------------------------------------

    @abstractmethod
    def _load(self, name: str) -> Token | None:
        """Read the record from the backing store."""

    @abstractmethod
    def _store(self, name: str, token: Token) -> None:
        """Write the record to the backing store."""

    @abstractmethod
    def _stale(self, name: str) -> bool:
        """Cheaply tell whether the backing record may differ from the cached one."""

    @abstractmethod
    def acquire(self, name: str) -> Lease | None:
        """Try to become the leader for ``name``."""

    @abstractmethod
    def request_refresh(self, name: str) -> None:
        """Ask the leader to refresh ``name``."""

    @abstractmethod
    def refresh_requested(self, name: str) -> float:
        """Epoch seconds of the latest refresh request for ``name``."""


def _after_fork() -> None:
    for storage in list(_live):
        storage._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork)
