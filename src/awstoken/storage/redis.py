"""RedisStorage: tokens shared by every process of a fleet, through one Redis.

Layout under ``prefix`` (default ``awstoken:``)::

    <prefix>token:<name>     the record (JSON), expiring with the token (plus ``expiry_grace``)
    <prefix>lease:<name>     leadership: the owner id (``host:pid:random``), expiring after ``lease``
    <prefix>fence:<name>     lease history: the last fencing number (n) and until when its
                             holder may believe it leads (until, server ms)
    <prefix>refresh:<name>   the latest refresh request (epoch seconds)
    <prefix>events           pub/sub: ``name\\nrecord`` for each record written, ``!name``
                             when a lease is released or found gone

Reads never wait on the network on the hot path: every process keeps the usable values in the
``values`` dict of :class:`~awstoken.storage.BaseStorage`. A watcher thread listens on the
events channel and takes each new record from the message itself (about a millisecond); the
cache thread also revalidates every known record (and the leases this process follows) with
one ``MGET`` every ``poll`` seconds, which catches anything a dropped subscription missed.

Leadership is a lease: ``SET NX PX`` with a unique owner id and a fencing number, renewed by
a thread of the owner (compare-and-``PEXPIRE`` in one Lua script) and released only by its
owner (compare-and-``DEL``). The owner keeps a local deadline on a clock that does not stop
while the host sleeps: ``lease - lease_margin`` after it *sent* the last successful acquire
or renewal, so ``held()`` turns False before Redis can let anybody else in, whether the
owner hangs, loses Redis or is frozen. Safety does not rest on that timing alone:

- every write runs in a Lua script that checks the lease and compares fencing numbers, so a
  record written under an older lease never replaces one written under a newer lease;
- a lease that vanished (FLUSHALL, an empty restart) is never taken back by its old owner,
  and whoever takes it with the history lost waits one lease before leading;
- a follower tries the lease when it would run out unless renewed, or when told it is free.

When Redis is unavailable, every process keeps serving its cached values until they expire,
counts the outage (:attr:`RedisStorage.outages`), logs it once, and reconnects with capped
exponential backoff and jitter. On reconnection it writes back a record it could not store
only if Redis holds nothing newer (else drops it), and a record missing from Redis (or
malformed there) is written back by any process that still holds a usable copy.

Where each part lives: this module is the cache and its sync with Redis; ``_redis_lease``
the leases; ``_redis_records`` the fenced store script and the checks on what is read;
``_redis_link`` the connection, outage bookkeeping and pub/sub watcher; ``awstoken._redact``
the redaction of URLs in messages.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from .._errors import AwstokenError, StorageError
from .._token import Token, check_name
from ._base import DEFAULT_MARGIN, BaseStorage, Clock, log
from ._redis_lease import Leadership, RedisLease
from ._redis_lease import lease_clock as _lease_clock
from ._redis_link import RedisLink
from ._redis_records import RecordIO

__all__ = ["RedisStorage"]

#: How long a refresh request is kept (it only matters until the next refresh).
_REQUEST_TTL_MS = 24 * 3600 * 1000

def _positive(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise StorageError(f"RedisStorage: {what} must be a positive number of seconds, "
                           f"not {value!r}")
    return float(value)


class RedisStorage(BaseStorage):
    """Tokens in Redis (or Valkey), shared by every process on every host; one leader each.

    ``url`` is a redis-py URL: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://``
    for TLS, or ``unix:///path/to/socket[?db=N]``. ``password`` overrides the one in the URL
    (keep it out of config files). Neither ever appears in logs, errors or ``repr``.

    ``lease`` is how long leadership lasts without renewal; the owner renews it every
    ``lease / 4`` seconds and gives it up locally ``lease_margin`` (default ``lease / 5``)
    before Redis could hand it to another process. ``poll`` is the period of the safety-net
    revalidation (new tokens normally arrive by pub/sub within milliseconds). ``timeout``
    bounds every network call made by background threads. ``max_backoff`` caps the delay
    between reconnection attempts. Records expire in Redis ``expiry_grace`` seconds after
    the token does, so the last error stays visible for status. ``redis_options`` go to
    ``redis.Redis.from_url`` unchanged (``ssl_ca_certs``, ``ssl_certfile``, ...; for
    ``rediss://`` the server's host name is checked unless ``ssl_check_hostname`` is given).
    ``lease_clock`` (seconds, monotonic, counting through suspend) times the lease's local
    deadline; tests inject one to move time without sleeping.

    :attr:`outages` counts the times Redis became unreachable, :attr:`errors` the failed
    operations, :attr:`bad_records` the malformed records read (each treated as absent),
    :attr:`restarts` the background threads restarted after an unexpected error, and
    :attr:`connected` says whether it is reachable now (for metrics and ``/readyz``).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "awstoken:",
        lease: float = 15.0,
        password: str | None = None,
        username: str | None = None,
        lease_margin: float | None = None,
        poll: float = 5.0,
        margin: float = DEFAULT_MARGIN,
        timeout: float = 1.0,
        max_backoff: float = 2.0,
        expiry_grace: float = 60.0,
        redis_options: Mapping[str, Any] | None = None,
        clock: Clock = time.time,
        lease_clock: Clock | None = None,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise StorageError("RedisStorage: the url must be a non-empty string")
        self.prefix = prefix
        self.lease = _positive(lease, "lease")
        self.lease_margin = self.lease / 5 if lease_margin is None else float(lease_margin)
        if not 0 <= self.lease_margin < self.lease:
            raise StorageError(f"RedisStorage: lease_margin ({self.lease_margin:g}s) must be "
                               f"at least 0 and below the lease ({self.lease:g}s)")
        self.timeout = _positive(timeout, "timeout")
        self.max_backoff = _positive(max_backoff, "max_backoff")
        self.expiry_grace = max(float(expiry_grace), 0.0)
        self._channel = f"{prefix}events"
        self._link = RedisLink(url, password=password, username=username,
                               options=dict(redis_options or {}), timeout=self.timeout,
                               max_backoff=self.max_backoff, channel=self._channel,
                               on_message=lambda data: self._on_event(data),
                               on_connected=self._catch_up, crashed=self._watcher_crashed)
        self.url = self._link.url
        self._client = self._link.client
        self._raw: dict[str, bytes | None] = {}  # what Redis held when we last looked
        self._unsaved: set[str] = set()  # written here, not yet in Redis
        # Stores in flight, per name: a record being stored is not "unsaved" yet (its own
        # notification can arrive before the store call returns; it must not be written
        # again, nor over whatever replaces it meanwhile).
        self._storing: dict[str, int] = {}
        self._leadership = Leadership(
            client=self._client, key=self._key, channel=self._channel,
            call=lambda *args, **kwargs: self._call(*args, **kwargs),  # patchable in tests
            lease=self.lease, margin=self.lease_margin,
            owner_prefix=f"{socket.gethostname()}:{os.getpid()}:",
            connected=lambda: self.connected, knows=self._knows, crashed=self._count_restart,
            clock=lease_clock or _lease_clock)
        self._io = RecordIO(
            client=self._client, key=self._key, channel=self._channel, url=self.url,
            call=lambda *args, **kwargs: self._call(*args, **kwargs),
            expiry_grace=self.expiry_grace, clock=lambda: self.clock(), held=self._held_lease,
            log_once=lambda *args, **kwargs: self._log_once(*args, **kwargs))
        self._seq: dict[str, int] = {}  # record messages seen, per name
        self._logged: dict[str, str] = {}
        self._state = threading.Lock()
        self.restarts = 0
        super().__init__(poll=_positive(poll, "poll"), margin=margin, clock=clock)
        self._link.start()

    def __repr__(self) -> str:
        return f"RedisStorage({self.url!r}, prefix={self.prefix!r})"

    # -- connection (see _redis_link) -------------------------------------------------------

    @property
    def connected(self) -> bool:
        """False while Redis is known to be unreachable."""
        return self._link.connected

    @property
    def outages(self) -> int:
        """Times Redis became unreachable."""
        return self._link.outages

    @property
    def errors(self) -> int:
        """Failed operations."""
        return self._link.errors

    @property
    def bad_records(self) -> int:
        """Malformed records read (each treated as absent)."""
        return self._io.bad_records

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{check_name(name)}"

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        return self._link.call(what, func, *args, **kwargs)

    def _watcher_crashed(self, exc: BaseException) -> None:
        self._count_restart()
        self._log_once("watcher", type(exc).__name__,
                       "awstoken: Redis watcher restarted after an unexpected error",
                       exc_info=True)

    # -- pub/sub messages and catching up --------------------------------------------------

    def _on_event(self, data: object) -> None:
        """One message: ``!name`` (the lease is free), ``name\\nrecord`` (a new record),
        or a bare ``name`` (an older writer: read the record)."""
        if not isinstance(data, bytes):
            return
        head, newline, raw = data.partition(b"\n")
        try:
            name = head.decode("ascii")
        except UnicodeDecodeError:
            return
        if name.startswith("!"):
            self._leadership.free(name[1:])
            return
        with self._lock:
            watched = name in self._records
        if not watched:
            return
        with self._lock:
            self._seq[name] = self._seq.get(name, 0) + 1
        try:
            self._sync(name, raw if newline else self._io.get(name))
        except AwstokenError as exc:
            log.debug("awstoken: token %r: could not reload after notification: %s", name, exc)

    def _catch_up(self) -> None:
        """After (re)connecting: store what could not be stored, reload everything, renew,
        and let followers try the leases (a leader may have gone meanwhile)."""
        self._leadership.wake.set()
        self._revalidate()
        for name in self._leadership.followed():
            self._leadership.free(name)

    def _log_once(self, key: str, kind: str, message: str, *args: object,
                  exc_info: bool = False) -> None:
        """Log ``message`` unless the same ``kind`` of trouble was just logged for ``key``."""
        with self._state:
            if self._logged.get(key) == kind:
                return
            self._logged[key] = kind
        log.warning(message, *args, exc_info=exc_info)

    # -- records ---------------------------------------------------------------------------

    def _held_lease(self, name: str) -> RedisLease | None:
        return self._leadership.held(name)

    def _knows(self, name: str) -> bool:
        with self._lock:
            return self._records.get(name) is not None

    def _load(self, name: str) -> Token | None:
        seq = self._seq.get(name, 0)
        return self._sync(name, self._io.get(name), seq)

    def _sync(self, name: str, raw: bytes | None, seq: int | None = None) -> Token | None:
        """Bring the local record of ``name`` in line with ``raw`` (just read from Redis).

        A record this process wrote but could not store goes to Redis if Redis holds nothing
        newer (else it is dropped); a record missing from Redis (or malformed there) is
        written back if this process still holds a usable copy. ``seq``: the number of
        messages about ``name`` seen when ``raw`` was asked for; if one arrived since, it
        is newer than ``raw`` (pub/sub overtakes a GET or MGET answer), and ``raw`` is
        ignored; so is a read answered while this process stores a record of ``name`` (it
        may predate that write: the write's answer or its notification decides).
        """
        with self._lock:
            local = self._records.get(name)
            storing = name in self._storing
            pending = name in self._unsaved and not storing
            known = self._raw.get(name, b"")
            overtaken = seq is not None and (storing or self._seq.get(name, 0) != seq)
        if ((raw is not None and raw == known) or overtaken) and not pending:
            return local
        record = None if raw is None else self._io.parse(name, raw)
        if local is not None and (pending or (record is None and local.usable(self.clock()))):
            mine = local.to_json()
            there = self._io.write(name, local, mine)
            with self._lock:
                self._unsaved.discard(name)
            if there is None:
                if not pending:
                    log.warning("awstoken: token %r was missing from Redis at %s; wrote back "
                                "this process's copy (generation %d)", name, self.url,
                                local.generation)
                raw, record = mine, local
            else:
                if pending:
                    log.warning("awstoken: token %r: dropped the record kept while Redis at "
                                "%s was away: Redis holds a newer one", name, self.url)
                raw, record = there, self._io.parse(name, there)
        with self._lock:
            if self._raw.get(name, b"") != raw or name not in self._records:
                self._raw[name] = raw
                self._remember(name, record)
            return self._records.get(name)

    def _stale(self, name: str) -> bool:
        # Records are kept current by notifications and the periodic MGET, never per read.
        return False

    def _revalidate(self) -> None:
        if not self.connected:
            return
        with self._lock:
            names = list(self._records)
        watched = {n for n in self._leadership.followed() if self._held_lease(n) is None}
        if not names and not watched:
            return
        keys = [self._key("token", n) for n in names]
        leases = sorted(watched)
        with self._lock:
            seqs = [self._seq.get(n, 0) for n in names]
        try:
            raws = self._call("revalidating records", self._client.mget,
                              keys + [self._key("lease", n) for n in leases])
        except AwstokenError as exc:
            log.debug("awstoken: could not revalidate: %s", exc)
            return
        for name, raw, seq in zip(names, raws, seqs, strict=False):
            try:
                self._sync(name, raw, seq)
            except AwstokenError as exc:
                self._log_once(f"revalidate:{name}", str(exc),
                               "awstoken: could not revalidate token %r: %s", name, exc)
            except Exception as exc:  # noqa: BLE001 - bad data must not end the cache thread
                self._log_once(f"revalidate:{name}", type(exc).__name__,
                               "awstoken: token %r: unexpected error revalidating", name,
                               exc_info=True)
        for name, owner in zip(leases, raws[len(names):], strict=True):
            if owner is None:  # vanished or expired without a word: a follower may lead
                self._leadership.free(name)

    def get(self, name: str) -> str | None:
        """The usable value of ``name``, or None. Only a name this process has never seen
        costs a network round trip (once); everything else is answered from memory."""
        value = self._values.get(name)
        if value is not None:
            return value
        check_name(name)
        with self._lock:
            seen = name in self._records
            record = self._records.get(name)
        if not seen:
            try:
                record = self.read(name)
            except AwstokenError:
                with self._lock:
                    if name not in self._records:
                        self._remember(name, None)  # the cache thread will look again
                return None
        now = self.clock()
        if record is None or record.value is None or (
                record.expires_at is not None and now >= record.expires_at - self.margin):
            return None
        return record.value

    def read(self, name: str) -> Token | None:
        """The record of ``name`` from Redis.

        While Redis is unavailable, the last record this process saw (if any): the leader
        keeps deciding on what it knows until its lease runs out.
        """
        check_name(name)
        try:
            return self._load(name)
        except StorageError:
            with self._lock:
                record = self._records.get(name)
            if record is None:
                raise
            return record

    def write(self, name: str, token: Token) -> None:
        check_name(name)
        token = self._stamp(name, token)
        with self._lock:
            # Memory first: if Redis is away, this process still serves the new token, and
            # the watcher stores it when Redis is back (if nothing newer is there by then).
            self._remember(name, token)
            self._unsaved.add(name)
            self._storing[name] = self._storing.get(name, 0) + 1
        try:
            self._store(name, token)
        finally:
            with self._lock:
                left = self._storing.pop(name) - 1
                if left:
                    self._storing[name] = left

    def _stamp(self, name: str, token: Token) -> Token:
        """``token`` with the fence it is written under: the lease's if this process leads,
        else that of the record it was made from (it then goes in only over an older one)."""
        lease = self._held_lease(name)
        if lease is not None:
            fence = lease.fence
        else:
            with self._lock:
                known = self._records.get(name)
            fence = max(token.fence, known.fence if known is not None else 0)
        return token if fence == token.fence else replace(token, fence=fence)

    def _store(self, name: str, token: Token) -> None:
        raw = token.to_json()
        there = self._io.write(name, token, raw)
        with self._lock:
            # Equal, not identical: the notification of this very write may have replaced
            # the local record with its own copy already.
            if self._records.get(name) == token:
                self._unsaved.discard(name)
        if there is None:
            with self._lock:
                if self._records.get(name) == token:
                    self._raw[name] = raw
            return
        # Redis holds a newer record (another leader was faster, or ours lapsed): adopt it.
        log.info("awstoken: token %r: Redis at %s already holds a newer record; using it",
                 name, self.url)
        self._sync(name, there)

    # -- leadership (see _redis_lease) ----------------------------------------------------

    def acquire(self, name: str) -> RedisLease | None:
        return self._leadership.acquire(check_name(name))

    def lease_wait(self, name: str, default: float) -> float:
        """Seconds until this follower should try the lease of ``name`` again: when the lease
        it saw would run out unless renewed (a release or a vanished lease wakes the waiters
        registered with :meth:`on_lease_free` sooner), or ``default`` if unknown."""
        return self._leadership.wait(name, default)

    def on_lease_free(self, name: str, wake: Callable[[], None]) -> None:
        """Call ``wake`` when the lease of ``name`` is released or found gone."""
        self._leadership.on_free(check_name(name), wake)

    def leader(self, name: str) -> str | None:
        """The owner id (``host:pid:random``) of the lease of ``name``, or None."""
        raw = self._call("reading a lease", self._client.get, self._key("lease", name))
        return None if raw is None else bytes(raw).decode(errors="replace")

    def _count_restart(self) -> None:
        with self._state:
            self.restarts += 1

    # -- refresh requests ------------------------------------------------------------------

    def request_refresh(self, name: str) -> None:
        self._call("requesting a refresh", self._client.set, self._key("refresh", name),
                   repr(self.clock()), px=_REQUEST_TTL_MS)

    def refresh_requested(self, name: str) -> float:
        try:
            raw = self._call("reading a refresh request", self._client.get,
                             self._key("refresh", name))
        except AwstokenError:
            return 0.0
        try:
            return float(raw) if raw is not None else 0.0
        except ValueError:
            return 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._link.stopping.set()
        self._leadership.close()
        super().close()
        self._link.stop()
        self._link.close()

    def _after_fork_in_child(self) -> None:
        # The parent's leases, threads and pub/sub connection stay the parent's; redis-py
        # gives the child fresh pooled connections by itself.
        super()._after_fork_in_child()
        self._leadership.forked()
        self._io.forked()
        self._leadership.owner_prefix = f"{socket.gethostname()}:{os.getpid()}:"
        self._state = threading.Lock()
        self._link.forked()
        self._link.start()
