"""Token records in Redis: the fenced store script and the checks on what is read back."""

from __future__ import annotations

import math

from .._errors import StorageError
from .._token import Token

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
