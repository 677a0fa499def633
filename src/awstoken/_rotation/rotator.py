"""The Rotator: keeps one token fresh in storage, with one leader across processes.

Scheduling follows botocore's RefreshableCredentials: a token is refreshed at the earlier of
``refreshed_at + interval`` and the start of its *advisory* window before expiry. A failed
refresh keeps the previous token and retries after ``retry`` seconds, backing off
exponentially with jitter up to ``max_retry``; inside the *mandatory* window (close to
expiry) retries never wait longer than half the time left, and no backoff reaches past
the start of that window. Windows shrink for short-lived
tokens (a third and a sixth of the lifetime at most), so 15-minute tokens still refresh.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .._errors import AwstokenError, TokenExpiredError
from .._sources import mask as _mask
from .._sources.command import Fetched, Source
from .._sources.transforms import Transform, validate_value
from .._token import Token, check_name
from ..storage._base import Clock, Lease, Storage

log = logging.getLogger("awstoken")

DEFAULT_INTERVAL = 6 * 3600.0
DEFAULT_RETRY = 30.0
DEFAULT_ADVISORY = 15 * 60.0
DEFAULT_MANDATORY = 10 * 60.0
#: How often a follower checks whether the leader is gone (and the leader renews its lease).
DEFAULT_POLL = 1.0
#: A forced refresh (after an upstream 401/403) happens at most this often per token.
DEFAULT_MIN_REFRESH_GAP = 10.0

RotateHook = Callable[[str, Fetched, Token], object]
"""An on-rotate hook: called as ``hook(name, fetched, token)`` after each stored rotation."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """Timing options of a rotator; every duration is in seconds."""

    interval: float = DEFAULT_INTERVAL
    retry: float = DEFAULT_RETRY
    max_retry: float | None = None  # default: max(retry, 300)
    advisory: float = DEFAULT_ADVISORY
    mandatory: float = DEFAULT_MANDATORY
    jitter: float = 0.2  # each retry waits up to this fraction longer, to spread a fleet out
    poll: float = DEFAULT_POLL
    min_refresh_gap: float = DEFAULT_MIN_REFRESH_GAP

    def __post_init__(self) -> None:
        for field in ("interval", "retry", "poll"):
            value = getattr(self, field)
            if not isinstance(value, int | float) or value <= 0:
                raise AwstokenError(f"{field} must be a positive number of seconds, not {value!r}")
        if self.max_retry is not None and self.max_retry < self.retry:
            raise AwstokenError(f"max_retry ({self.max_retry}) must not be below retry "
                                f"({self.retry})")

    @property
    def retry_cap(self) -> float:
        return self.max_retry if self.max_retry is not None else max(self.retry, 300.0)

    def windows(self, record: Token) -> tuple[float, float]:
        """Advisory and mandatory window lengths for ``record``'s lifetime."""
        if record.expires_at is None:
            return 0.0, 0.0
        life = max(record.expires_at - record.refreshed_at, 0.0)
        return min(self.advisory, life / 3), min(self.mandatory, life / 6)

    def refresh_due(self, record: Token | None) -> float:
        """When the token in ``record`` should be refreshed (ignoring failures)."""
        if record is None or record.value is None:
            return 0.0
        due = record.refreshed_at + self.interval
        if record.expires_at is not None:
            due = min(due, record.expires_at - self.windows(record)[0])
        return due

    def retry_delay(self, failures: int, record: Token | None, now: float,
                    rand: Callable[[], float]) -> float:
        """How long to wait after the ``failures``-th failure in a row."""
        # The exponent is capped: 2.0 ** 1024 overflows (a long outage, or a stored count).
        delay: float = min(self.retry_cap, self.retry * 2.0 ** min(max(failures - 1, 0), 64))
        delay = min(self.retry_cap, delay * (1 + self.jitter * rand()))
        if record is not None and record.value is not None and record.expires_at is not None:
            left = record.expires_at - now
            if left > 0:
                # Never back off past the start of the mandatory window, and inside it wait
                # at most half the time left: keep trying while the old token still works.
                delay = min(delay, max(left - self.windows(record)[1], left / 2, 1.0))
        return delay

    def due(self, record: Token | None, now: float, rand: Callable[[], float]) -> float:
        """When the next refresh attempt should run."""
        due = self.refresh_due(record)
        if record is not None and record.failures and record.error_at is not None:
            due = max(due, record.error_at + self.retry_delay(record.failures, record,
                                                               record.error_at, rand))
        return due


def process_id() -> str:
    """``host:pid``, as recorded in the leader field."""
    return f"{socket.gethostname()}:{os.getpid()}"


_live: weakref.WeakSet[Rotator] = weakref.WeakSet()


class Rotator:
    """Keeps the token ``name`` fresh in ``storage``.

    Every process may run a rotator for the same name; only the holder of the storage's lease
    runs the source, the others read what it stores and take over when it is gone. Call
    :meth:`start` for a background daemon thread, or :meth:`step` to drive it yourself.
    """

    def __init__(
        self,
        name: str,
        source: Source,
        transform: Transform,
        storage: Storage,
        *,
        schedule: Schedule | None = None,
        clock: Clock = time.time,
        rand: Callable[[], float] = random.random,
        on_rotate: Sequence[RotateHook] = (),
    ) -> None:
        self.name = check_name(name)
        self.source = source
        self.transform = transform
        self.storage = storage
        self.schedule = schedule or Schedule()
        self.clock = clock
        self.rand = rand
        self.on_rotate = list(on_rotate)
        self.refreshes = 0  # successful refreshes run by this process
        self.failures = 0  # failed refreshes run by this process
        self._lease: Lease | None = None
        self._last_raw: str | None = None  # the raw token of this process's last fetch
        self._last_attempt = 0.0  # when this process last ran the source (clock time)
        self._init_threading()
        _live.add(self)

    def __repr__(self) -> str:
        return f"Rotator({self.name!r}, {self.source!r}, storage={self.storage!r})"

    def _init_threading(self) -> None:
        self._refresh_lock = threading.Lock()  # single flight within the process
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rand_due: tuple[int, float] | None = None
        # False until this process has tried a refresh since it became the leader: the
        # backoff stored in the record may be a previous leader's (a process that failed
        # and was restarted), which must not make a new leader without a usable token wait.
        self._tried_as_leader = False
        self._refresh_first = False  # refresh_soon(): at the next step as leader

    @property
    def leader(self) -> bool:
        """True while this process holds the lease for this token."""
        return self._lease is not None and self._lease.held()

    # -- running ---------------------------------------------------------------------------

    def start(self) -> Rotator:
        """Run in a daemon thread: refresh now if due, then on schedule."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"awstoken-rotate-{self.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread and give leadership up."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Make the thread look at the schedule now."""
        self._wake.set()

    def refresh_soon(self) -> None:
        """Refresh at this process's next step as leader, whatever the stored record's age
        and without ``min_refresh_gap``: the stored token was made by another configuration
        of this token (a reload that changed its source), not by this rotator's source."""
        self._refresh_first = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.step()
            except AwstokenError as exc:
                # Storage trouble (directory gone or not a directory, Redis refusing): say so
                # in one line and try again later; the cached token is served meanwhile.
                delay = self.schedule.retry
                log.error("awstoken: %s (trying again in %gs)", _describe(self.name, exc), delay)
            except Exception:  # the rotation thread must survive anything
                log.exception("awstoken: token %r: unexpected error in rotation", self.name)
                delay = self.schedule.retry
            self._wake.wait(delay)
            self._wake.clear()

    def step(self) -> float:
        """Do what is due now (become leader, refresh) and return seconds until next step."""
        poll = self.schedule.poll
        if not self.leader:
            self._lease = self.storage.acquire(self.name)
            if self._lease is None:
                # A follower: the storage's cache brings the leader's tokens.
                return self._follower_wait(poll)
            self._tried_as_leader = False
            log.info("awstoken: token %r: this process (%s) is now the leader", self.name,
                     process_id())
        now = self.clock()
        record = self.storage.read(self.name)
        due = self._due(record)
        if now >= due or self._refresh_first or self._forced(record, now):
            self._refresh_first = False
            self._refresh_locked(record)
            record = self.storage.read(self.name)
            now = self.clock()
            due = self._due(record)
        return max(min(due - now, poll), 0.0)

    def next_attempt(self, record: Token | None) -> float | None:
        """When this process will next try to refresh ``record`` (epoch seconds).

        None unless this process runs the rotation and leads the token. Cheap (no storage
        access): meant for metrics and status, with the record the caller already read.
        """
        if self._lease is None or not self.running:
            return None
        return self._due(record)

    def _due(self, record: Token | None) -> float:
        # Draw the jitter once per failure count, so repeated steps agree on the due time.
        failures = record.failures if record is not None else 0
        if self._rand_due is None or self._rand_due[0] != failures:
            self._rand_due = (failures, self.rand())
        fixed = self._rand_due[1]
        now = self.clock()
        if (self._lease is not None and not self._tried_as_leader
                and (record is None or not record.usable(now))):
            return 0.0  # a new leader with nothing to serve: try at once, then back off
        return self.schedule.due(record, now, lambda: fixed)

    def _forced(self, record: Token | None, now: float) -> bool:
        requested = self.storage.refresh_requested(self.name)
        if not requested:
            return False
        last = 0.0 if record is None else max(record.refreshed_at, record.error_at or 0.0)
        if last > now:
            # A stored time in the future (a planted record, a writer whose clock runs
            # ahead) must not stop refusals from forcing a refresh: rate-limit on this
            # process's own last attempt instead.
            last = self._last_attempt
        return requested > last and now - last >= self.schedule.min_refresh_gap

    # -- refreshing ------------------------------------------------------------------------

    def refresh(self) -> Token:
        """Fetch a new token now and store it; raise on failure (the old token stays).

        Runs in the caller's thread, regardless of leadership: use it for one-off refreshes.
        """
        with self._refresh_lock:
            record = self.storage.read(self.name)
            token = self._refresh(record, raise_errors=True)
            assert token is not None  # only a leader's refresh can be discarded
            return token

    def _refresh_locked(self, record: Token | None) -> None:
        with self._refresh_lock:
            # Re-checked at the last moment: reading the record may have blocked (a silent
            # network) past the lease's local deadline. A lease that can ask its storage
            # (Redis: a renewal) does, so that a lease gone from the storage is noticed now.
            lease = self._lease
            confirm = getattr(lease, "confirm", None)
            if lease is None or not (confirm() if confirm is not None else lease.held()):
                log.warning("awstoken: token %r: leadership was lost before the refresh; not "
                            "running the source", self.name)
                return
            self._tried_as_leader = True
            with _LeaseWatch(lease, self.source, self.name):
                self._refresh(record, raise_errors=False, as_leader=True)

    def _follower_wait(self, poll: float) -> float:
        # A storage that knows when the lease may be free (Redis: the lease's time to live,
        # and a message when it is released or found gone) spares followers a try per poll.
        notify = getattr(self.storage, "on_lease_free", None)
        wait = getattr(self.storage, "lease_wait", None)
        if notify is None or wait is None:
            return poll
        notify(self.name, self.wake)
        return float(wait(self.name, poll))

    def _refresh(self, record: Token | None, *, raise_errors: bool,
                 as_leader: bool = False) -> Token | None:
        started = self._last_attempt = self.clock()
        # A failing source may quote the current token in its error (a command's stderr):
        # mask it (the value, its raw token, the Basic password) wherever the error goes.
        known = (record.value if record is not None else None, self._last_raw)
        try:
            with _mask.masking(known):
                fetched, value = self.fetch()
        except Exception as exc:
            if as_leader and self._deposed():
                return record
            self.failures += 1
            message = _mask.mask(_describe(self.name, exc), known)
            base = record if record is not None else Token(value=None)
            failed = base.with_failure(message, self.clock(), process_id())
            log.warning("awstoken: %s (failure %d in a row; %s)", message, failed.failures,
                        "keeping the previous token" if base.usable(started) else "no usable token")
            self._write(failed)
            if raise_errors:
                if isinstance(exc, AwstokenError):
                    exc.args = (message,)  # same type and attributes, message names the token
                    raise
                raise AwstokenError(message) from None
            return failed
        if as_leader and self._deposed():
            return record
        self._last_raw = fetched.token
        now = self.clock()
        token = Token(value=value, expires_at=fetched.expires_at, refreshed_at=now,
                      generation=(record.generation if record is not None else 0) + 1,
                      leader=process_id())
        self._write(token)
        self.refreshes += 1
        left = "" if token.expires_at is None else f", expires in {token.expires_at - now:.0f}s"
        log.info("awstoken: token %r refreshed (generation %d%s)", self.name, token.generation, left)
        return self._run_hooks(fetched, token, record)

    def _deposed(self) -> bool:
        # The source can run for long (up to its timeout): a leader whose lease lapsed
        # meanwhile (hung, cut off from Redis) must not write over its successor's record.
        if self.leader:
            return False
        log.warning("awstoken: token %r: leadership was lost during the refresh; discarding "
                    "its result", self.name)
        return True

    def fetch(self) -> tuple[Fetched, str]:
        """Run the source and the transform; return the raw fetch and the validated value."""
        return fetch_value(self.name, self.source, self.transform, self.clock)

    def _write(self, token: Token) -> None:
        try:
            self.storage.write(self.name, token)
        except AwstokenError as exc:
            log.error("awstoken: token %r: could not store the record (serving it from memory): "
                      "%s", self.name, exc)

    def _run_hooks(self, fetched: Fetched, token: Token, previous: Token | None) -> Token:
        failed: list[str] = []
        for hook in self.on_rotate:
            try:
                hook(self.name, fetched, token)
            except Exception as exc:  # noqa: BLE001 - a user's hook must not stop the rotation
                failed.append(_describe(self.name, exc))
                log.error("awstoken: token %r: on-rotate hook %s failed: %s", self.name,
                          getattr(hook, "__name__", hook), failed[-1])
        if not failed:
            return token
        # Noted in the record, so `awstoken status` (another process) can show it.
        before = previous.hook_failures if previous is not None else 0
        token = replace(token, hook_failures=before + len(failed), hook_error=failed[-1])
        self._write(token)
        return token

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here and its lease belongs to the parent.
        was_running = self._thread is not None and not self._stop.is_set()
        self._lease = None
        self._init_threading()
        if was_running:
            self.start()


class _LeaseWatch:
    """While a leader runs the source: abandon the run (``source.cancel()``, which kills a
    command's process group) as soon as the lease is lost or its local deadline passes, so
    a run never outlives the lease. The storage renews the lease meanwhile."""

    EVERY = 0.05

    def __init__(self, lease: Lease, source: Source, name: str) -> None:
        self.lease = lease
        self.cancel = getattr(source, "cancel", None)
        self.name = name
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> _LeaseWatch:
        if self.cancel is not None:
            self.thread = threading.Thread(target=self._watch, daemon=True,
                                           name=f"awstoken-lease-watch-{self.name}")
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join()

    def _watch(self) -> None:
        while not self.done.wait(self.EVERY):
            if not self.lease.held():
                log.warning("awstoken: token %r: leadership lost while the source ran; "
                            "abandoning the run", self.name)
                assert self.cancel is not None
                self.cancel()
                return


def fetch_value(name: str, source: Source, transform: Transform,
                clock: Clock = time.time) -> tuple[Fetched, str]:
    """Run ``source`` and ``transform``; return the raw fetch and the validated header value.

    Raises when the source fails, the raw token or the value is malformed, or the token is
    already expired. Error messages name the token and never contain its value.
    """
    fetched = source.fetch()
    raw = validate_value(fetched.token.strip() if isinstance(fetched.token, str) else fetched.token,
                         f"token {name!r} (raw)")
    try:
        value = transform(raw)
    except Exception as exc:  # noqa: BLE001 - a user's callable: any failure, text withheld
        raise AwstokenError(f"token {name!r}: the transform raised {type(exc).__name__}") from None
    value = validate_value(value, f"token {name!r}")
    now = clock()
    if fetched.expires_at is not None and fetched.expires_at <= now:
        raise TokenExpiredError(_expired_message(name, fetched.expires_at, now))
    return Fetched(raw, fetched.expires_at), value


def _expired_message(name: str, expires_at: float, now: float) -> str:
    # A token expired on arrival is a wrong endpoint (a stand-in, a proxy replaying an old
    # answer) or a wrong clock here: say when it expired so the operator can tell which.
    def utc(seconds: float) -> str:
        try:
            return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))
        except (OverflowError, OSError, ValueError):
            return f"{seconds:.0f} (Unix time)"

    return (f"token {name!r}: the source returned a token that expired at {utc(expires_at)}, "
            f"{now - expires_at:.0f}s before this host's clock ({utc(now)}): check the "
            "endpoint the source talks to (AWS_ENDPOINT_URL, a proxy or stand-in answering old "
            "tokens) and this host's clock (NTP)")


def _describe(name: str, exc: BaseException) -> str:
    """An error message that names the token and never contains a token value."""
    if isinstance(exc, AwstokenError):
        text = str(exc)
        return text if text.startswith(f"token {name!r}") else f"token {name!r}: {text}"
    # A foreign exception's text may quote its input (the token): keep only its type.
    return f"token {name!r}: {type(exc).__name__}"


def _after_fork() -> None:
    for rotator in list(_live):
        rotator._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork)
