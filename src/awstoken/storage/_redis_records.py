"""Token records in Redis: the fenced store script and the checks on what is read back."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable
from typing import Any

from .._errors import StorageError
from .._token import Token
from ._redis_lease import RedisLease

# Writes a record, fenced. KEYS: record, lease, fence history. ARGV: record, fence, generation, ttl ms (0:
# none), channel, name, owner ('' when the writer holds no lease), SHA-1 of a record known
# to be malformed ('' if none; that exact record is replaced whatever it claims).
# The writer leads if the lease holds its owner id right now. A record already there wins if
# it is newer: a higher fence (a later lease wrote it), or the same fence and a higher
# generation; and, unless the writer leads, also when it is the same (a record kept while
# Redis was away goes back only over an older one). A record that does not decode, or
# claims a fence above any handed out (planted), is replaced. The message announcing the
# record carries it, so followers need no GET.
# Returns {written (0/1), leads (0/1), record there when refused}.
_STORE = """
local leads = 0
if ARGV[7] ~= '' and redis.call('GET', KEYS[2]) == ARGV[7] then leads = 1 end
local cur = redis.call('GET', KEYS[1])
if cur and ARGV[8] ~= '' and redis.sha1hex(cur) == ARGV[8] then cur = false end
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' then
    local cf = tonumber(rec.fence) or 0
    local cg = tonumber(rec.generation) or 0
    local f = tonumber(ARGV[2])
    local g = tonumber(ARGV[3])
    local n = tonumber(redis.call('HGET', KEYS[3], 'n'))
    if n and cf > n then
      cf, cg = -1, -1
    end
    if cf > f or (cf == f and cg > g) or (leads == 0 and cf == f and cg == g) then
      return {0, leads, cur}
    end
  end
end
if ARGV[4] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', ARGV[5], ARGV[6] .. '\\n' .. ARGV[1])
return {1, leads}
"""

#: A record larger than this is malformed (an ECR header is about 4 KB).
_MAX_RECORD = 64 * 1024


def _check_record(record: Token, now: float, where: str) -> None:
    """Raise StorageError unless ``record`` has the types the cache and the rotator use."""
    try:
        numbers = (record.refreshed_at, record.expires_at, record.error_at)
        if any(isinstance(x, bool) or not isinstance(x, int | float) for x in numbers
               if x is not None) or not math.isfinite(record.refreshed_at):
            raise TypeError
        for count in (record.generation, record.fence, record.failures):
            if isinstance(count, bool) or not isinstance(count, int):
                raise TypeError
        for text in (record.value, record.error, record.leader):
            if text is not None and not isinstance(text, str):
                raise TypeError
        if record.value is not None and any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F
                                            for c in record.value):
            raise ValueError
        record.usable(now)
    except (TypeError, ValueError, OverflowError):
        raise StorageError(f"{where}: not a valid token record (bad field types or "
                           "values)") from None


class RecordIO:
    """Records in and out of Redis: the fenced store script, and the check of what is read.

    A malformed record is treated as absent: logged once per distinct record (through
    ``log_once``), counted in :attr:`bad_records`, and remembered so that the next write
    replaces exactly that record whatever fence or generation it claims.
    """

    def __init__(self, *, client: Any, call: Callable[..., Any], key: Callable[[str, str], str],
                 channel: str, url: str, expiry_grace: float, clock: Callable[[], float],
                 held: Callable[[str], RedisLease | None],
                 log_once: Callable[..., None]) -> None:
        self._script = client.register_script(_STORE)
        self._client = client
        self._call = call
        self._key = key
        self._channel = channel
        self._url = url
        self._grace = expiry_grace
        self._clock = clock
        self._held = held
        self._log_once = log_once
        self._lock = threading.Lock()
        self._bad: dict[str, bytes] = {}  # the malformed record last seen, per name
        self.bad_records = 0

    def forked(self) -> None:
        """In a child after fork: the lock may have been held by a thread left behind."""
        self._lock = threading.Lock()

    def ttl_ms(self, token: Token) -> int:
        """How long Redis keeps the record: the token's life plus the grace (0: no expiry)."""
        if token.expires_at is None:
            return 0
        return max(1, math.ceil((max(token.expires_at - self._clock(), 0.0) + self._grace)
                                * 1000))

    def get(self, name: str) -> bytes | None:
        raw: bytes | None = self._call("reading a record", self._client.get,
                                       self._key("token", name))
        return raw

    def parse(self, name: str, raw: bytes) -> Token | None:
        """The record in ``raw``, or None (treated as absent) when it is malformed."""
        where = f"token {name!r} in Redis at {self._url}"
        try:
            if len(raw) > _MAX_RECORD:
                raise StorageError(f"{where}: not a valid token record ({len(raw)} bytes)")
            record = Token.from_json(raw, where=where)
            _check_record(record, self._clock(), where)
        except StorageError as exc:
            sha = hashlib.sha1(raw, usedforsecurity=False).hexdigest()
            with self._lock:
                first = self._bad.get(name) != raw
                self._bad[name] = raw
                if first:
                    self.bad_records += 1
            # Once per distinct bad record, however often it is read or planted again.
            self._log_once(f"bad:{name}", sha, "awstoken: %s (treated as absent)", exc)
            return None
        with self._lock:
            self._bad.pop(name, None)
        return record

    def _bad_sha(self, name: str) -> str:
        with self._lock:
            bad = self._bad.get(name)
        return "" if bad is None else hashlib.sha1(bad, usedforsecurity=False).hexdigest()

    def write(self, name: str, token: Token, raw: bytes) -> bytes | None:
        """Run the fenced store script; None when ``raw`` was written, else what is there.

        A lease this process believed it held, but Redis says is gone, is lost at once.
        """
        lease = self._held(name)
        result = self._call(
            "writing a record", self._script,
            keys=[self._key("token", name), self._key("lease", name), self._key("fence", name)],
            args=[raw, token.fence, token.generation, self.ttl_ms(token), self._channel, name,
                  "" if lease is None else lease.owner, self._bad_sha(name)])
        written, leads = int(result[0]), int(result[1])
        if lease is not None and not leads:
            lease.lose("its lease is gone from Redis or held by another process")
        if written:
            return None
        there: bytes = result[2]
        return there
