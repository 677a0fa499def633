"""Leadership of token names in Redis: leases with fencing numbers, renewed by one thread.

The leases of one :class:`~awstoken.storage.RedisStorage` are kept by a :class:`Leadership`,
which reaches Redis only through the callables it is given (so the storage keeps one place
for outage bookkeeping) and reads time from an injectable clock (so tests need not sleep).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .._errors import AwstokenError

log = logging.getLogger("awstoken")

Call = Callable[..., Any]

# Server time in milliseconds (Redis 5+ replicates script effects, so TIME is allowed).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Takes a free lease and gives it the next fencing number. KEYS: lease, fence, record.
# ARGV: owner, lease ms. The fence hash keeps the last number (n) and until when its holder
# may still believe it leads (until, server ms). Returns {0, pttl} when somebody holds the
# lease; else {1, fence, wait ms, record exists}, where wait is how long the previous holder
# may still believe it leads, or -1 when that is unknown (the history was lost with the
# data: FLUSHALL, an empty restart); a lost history restarts the numbers from the server
# clock in ms, above every number handed out before.
_ACQUIRE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('PTTL', KEYS[1])}
end
""" + _NOW + """
local last = tonumber(redis.call('HGET', KEYS[2], 'n'))
local fence = now
local wait = -1
if last then
  fence = math.max(last + 1, 1)
  local untl = tonumber(redis.call('HGET', KEYS[2], 'until')) or 0
  wait = math.max(untl - now, 0)
end
redis.call('HSET', KEYS[2], 'n', string.format('%d', fence),
           'until', string.format('%d', now + tonumber(ARGV[2])))
return {1, fence, wait, redis.call('EXISTS', KEYS[3])}
"""

# Renews a lease if it is still ours. KEYS: lease, fence. ARGV: owner, lease ms, channel,
# name. Returns 1 when renewed. A lease that vanished is never taken back (a follower may
# have taken it and be waiting for us to stop): we stop, say so in the history, and tell
# the followers that it is free.
_RENEW = """
local cur = redis.call('GET', KEYS[1])
""" + _NOW + """
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[2], 'until', string.format('%d', now + tonumber(ARGV[2])))
  return 1
end
if not cur then
  if not redis.call('HGET', KEYS[2], 'n') then
    redis.call('HSET', KEYS[2], 'n', string.format('%d', now))
  end
  redis.call('HSET', KEYS[2], 'until', string.format('%d', now))
  redis.call('PUBLISH', ARGV[3], '!' .. ARGV[4])
end
return 0
"""

# Deletes a lease only if it is still ours, and tells the followers it is free.
# KEYS: lease, fence. ARGV: owner, channel, name.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
""" + _NOW + """
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'until', string.format('%d', now))
  redis.call('PUBLISH', ARGV[2], '!' .. ARGV[3])
  return 1
end
return 0
"""

def lease_clock() -> float:
    # CLOCK_BOOTTIME keeps counting while the host is suspended, like the wall clock Redis
    # expires keys with; CLOCK_MONOTONIC would let a resumed host believe it still leads.
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return time.clock_gettime(boottime)
    return time.monotonic()



class RedisLease:
    """Leadership of one token name; ``held()`` never touches the network.

    ``fence`` is the lease's fencing number: every record written under it carries it, and
    Redis refuses a record from an older lease over one from a newer lease.
    """

    def __init__(self, keeper: Leadership, name: str, owner: str, deadline: float,
                 fence: int, ready_at: float) -> None:
        self._keeper = keeper
        self.name = name
        self.owner = owner
        self.fence = fence
        self.deadline = deadline  # on the keeper's clock; moved forward by each renewal
        # Until then the previous holder may still believe it leads: the lease is kept and
        # renewed, but not handed to the rotator.
        self.ready_at = ready_at
        self._lost = False
        # Serialises renewal and release: a renewal still in flight after release() could
        # otherwise act for a process that no longer leads.
        self.io = threading.Lock()

    def __repr__(self) -> str:
        return (f"<RedisLease {self.name!r} owner={self.owner!r} fence={self.fence} "
                f"held={self.held()}>")

    def held(self) -> bool:
        if self._lost:
            return False
        if self._keeper.clock() >= self.deadline:
            self.lose("its lease could not be renewed in time")
            return False
        return True

    def confirm(self) -> bool:
        """Renew now (one round trip) and say whether this process still leads.

        The last check before running the source: a lease key that vanished (deleted,
        evicted, FLUSHALL, which sends no keyspace event) is noticed at once, not at the
        next periodic renewal. If Redis does not answer, the local deadline decides.
        """
        with self.io:
            if self.held():
                self._keeper.renew(self)
        return self.held()

    def lose(self, why: str) -> None:
        """Stop leading (once), saying why."""
        if not self._lost:
            self._lost = True
            log.warning("awstoken: token %r: this process stops leading: %s", self.name, why)
        self._keeper.forget(self)

    def release(self) -> None:
        with self.io:
            if self._lost:
                return
            self._lost = True
            self._keeper.release(self)


class Leadership:
    """The leases of one storage, the thread that renews them, and what followers know.

    ``call(what, script_or_func, ...)`` runs one Redis operation (raising AwstokenError on
    failure), ``key(kind, name)`` names a key, ``connected()`` says whether Redis is up,
    ``knows(name)`` whether this process holds a record of ``name``, ``crashed()`` counts
    an unexpected error of the renewal thread.
    """

    def __init__(self, *, client: Any, call: Call, key: Callable[[str, str], str],
                 channel: str, lease: float, margin: float, owner_prefix: str,
                 connected: Callable[[], bool], knows: Callable[[str], bool],
                 crashed: Callable[[], None], clock: Callable[[], float] = lease_clock) -> None:
        self._call = call
        self._key = key
        self._channel = channel
        self.lease = lease
        self.margin = margin
        self.owner_prefix = owner_prefix
        self._connected = connected
        self._knows = knows
        self._crashed = crashed
        self.clock = clock
        self._scripts = {name: client.register_script(src) for name, src in
                         (("acquire", _ACQUIRE), ("renew", _RENEW), ("release", _RELEASE))}
        self._state = threading.Lock()
        self._leases: dict[int, RedisLease] = {}
        self._pending: dict[str, RedisLease] = {}  # taken, waiting for the previous leader
        self._free_at: dict[str, float] = {}  # a follower's next look at a lease
        self._wakers: dict[str, list[Callable[[], None]]] = {}
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def _lease_ms(self) -> int:
        return math.ceil(self.lease * 1000)

    def held(self, name: str) -> RedisLease | None:
        """The lease of ``name`` this process holds now, if any."""
        with self._state:
            leases = [lease for lease in self._leases.values() if lease.name == name]
        return next((lease for lease in leases if lease.held()), None)

    def all(self) -> list[RedisLease]:
        with self._state:
            return list(self._leases.values())

    def followed(self) -> list[str]:
        """Names whose lease a rotator of this process waits for."""
        with self._state:
            return list(self._wakers)

    def acquire(self, name: str) -> RedisLease | None:
        with self._state:
            pending = self._pending.get(name)
        if pending is not None:
            return self._ready(pending)
        owner = f"{self.owner_prefix}{uuid.uuid4().hex[:16]}"
        sent = self.clock()
        try:
            result = self._call("acquiring a lease", self._scripts["acquire"],
                                keys=[self._key("lease", name), self._key("fence", name),
                                      self._key("token", name)],
                                args=[owner, self._lease_ms])
        except AwstokenError as exc:
            if self._connected():  # an outage is logged once by the storage
                log.warning("awstoken: token %r: cannot take the lease: %s", name, exc)
            return None
        if not int(result[0]):
            # Somebody leads: look again when its lease would run out unless renewed (a
            # release or a vanished lease is announced sooner, see free()).
            pttl = int(result[1])
            with self._state:
                self._free_at[name] = sent + (pttl / 1000 if pttl > 0 else 0.0)
            return None
        fence, wait_ms, exists = (int(x) for x in result[1:4])
        if wait_ms < 0:
            # The history went with the data: whoever led before may believe it still does
            # for up to a lease. A fresh deployment (no record anywhere) need not wait.
            wait_ms = self._lease_ms if (exists or self._knows(name)) else 0
        lease = RedisLease(self, name, owner, sent + self.lease - self.margin, fence,
                           sent + wait_ms / 1000)
        with self._state:
            self._leases[id(lease)] = lease
            self._free_at.pop(name, None)
            if wait_ms:
                self._pending[name] = lease
            # Started before it is published, and never once closing: close() (another
            # thread) joins what it reads under this lock, and joining a thread not yet
            # started raises (seen on Python 3.12 in a test's teardown).
            if not self.stopping.is_set() and (self._thread is None
                                               or not self._thread.is_alive()):
                thread = threading.Thread(target=self._renew_all, daemon=True,
                                          name="awstoken-redis-lease")
                thread.start()
                self._thread = thread
        if wait_ms:
            log.info("awstoken: token %r: took the lease (fence %d); waiting %.1fs for the "
                     "previous leader to stop", name, fence, wait_ms / 1000)
            return None
        return lease

    def _ready(self, lease: RedisLease) -> RedisLease | None:
        """The waiting lease once its wait is over (None meanwhile or if it was lost)."""
        if not lease.held():
            with self._state:
                self._pending.pop(lease.name, None)
            return None
        if self.clock() < lease.ready_at:
            return None
        with self._state:
            self._pending.pop(lease.name, None)
        return lease

    def wait(self, name: str, default: float) -> float:
        """Seconds until this follower should try the lease of ``name`` again."""
        now = self.clock()
        with self._state:
            pending = self._pending.get(name)
            free_at = self._free_at.get(name)
        if pending is not None:
            return max(pending.ready_at - now, 0.0)
        if free_at is None or not self._connected():
            return default
        return min(max(free_at - now, 0.01), self.lease)

    def on_free(self, name: str, wake: Callable[[], None]) -> None:
        with self._state:
            callbacks = self._wakers.setdefault(name, [])
            if wake not in callbacks:
                callbacks.append(wake)

    def free(self, name: str) -> None:
        """The lease of ``name`` was released or found gone: wake its followers."""
        with self._state:
            self._free_at.pop(name, None)
            callbacks = list(self._wakers.get(name, ()))
        for wake in callbacks:
            wake()

    def _renew_all(self) -> None:
        every = self.lease / 4
        while not self.stopping.is_set():
            for lease in self.all():
                try:
                    with lease.io:
                        if lease.held():
                            self.renew(lease)
                except Exception:  # the lease thread must survive anything
                    self._crashed()
                    log.exception("awstoken: token %r: unexpected error renewing the lease",
                                  lease.name)
            self.wake.wait(every)
            self.wake.clear()

    def renew(self, lease: RedisLease) -> None:
        sent = self.clock()
        try:
            ok = self._call("renewing a lease", self._scripts["renew"],
                            keys=[self._key("lease", lease.name), self._key("fence", lease.name)],
                            args=[lease.owner, self._lease_ms, self._channel, lease.name])
        except AwstokenError as exc:
            # held() turns False at the deadline unless a later renewal succeeds.
            if self._connected():
                log.warning("awstoken: token %r: cannot renew the lease: %s", lease.name, exc)
            return
        if ok:
            lease.deadline = max(lease.deadline, sent + self.lease - self.margin)
        else:
            lease.lose("its lease is gone from Redis or held by another process")

    def forget(self, lease: RedisLease) -> None:
        with self._state:
            self._leases.pop(id(lease), None)
            if self._pending.get(lease.name) is lease:
                del self._pending[lease.name]

    def release(self, lease: RedisLease) -> None:
        self.forget(lease)
        try:
            self._call("releasing a lease", self._scripts["release"],
                       keys=[self._key("lease", lease.name), self._key("fence", lease.name)],
                       args=[lease.owner, self._channel, lease.name])
        except AwstokenError as exc:
            log.debug("awstoken: token %r: lease not released (it will expire): %s",
                      lease.name, exc)

    def close(self) -> None:
        """Release every lease and stop the renewal thread."""
        self.stopping.set()
        self.wake.set()
        for lease in self.all():
            lease.release()
        with self._state:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def forked(self) -> None:
        """In a child after fork: the parent's leases and thread stay the parent's."""
        self._state = threading.Lock()
        self._leases = {}
        self._pending = {}
        self._free_at = {}
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self._thread = None
