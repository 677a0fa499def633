"""The stored token record."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from ._errors import AwstokenError, StorageError, TokenValueError
from ._sources.transforms import validate_value

_FIELDS = ("value", "expires_at", "refreshed_at", "generation", "error", "error_at", "failures",
           "leader", "hook_failures", "hook_error", "fence")

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid token name (letters, digits, ``_ . -``; at most 128)."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise AwstokenError(
            f"invalid token name {name!r}: use 1 to 128 letters, digits, '_', '.' or '-', "
            "not starting with '.' or '-'")
    return name


@dataclass(frozen=True, slots=True)
class Token:
    """One token as kept in storage.

    ``value`` is the final header value (after the transform). Times are Unix epoch seconds.
    ``error``/``error_at``/``failures`` describe the last failed refresh (never secret text);
    ``leader`` names the process (``host:pid``) that wrote the record. ``hook_failures``
    counts on-rotate hooks that failed in a row (0 after a rotation whose hooks all ran) and
    ``hook_error`` is the latest one's error (never secret text). ``fence`` is the fencing
    number of the lease it was written under (0 where storage has none), so that a record
    from an older lease never replaces one from a newer lease.
    """

    value: str | None
    expires_at: float | None = None
    refreshed_at: float = 0.0
    generation: int = 0
    error: str | None = None
    error_at: float | None = None
    failures: int = 0
    leader: str | None = None
    hook_failures: int = 0
    hook_error: str | None = None
    fence: int = 0

    def expired(self, now: float) -> bool:
        """True when the token has an expiry and ``now`` is at or past it."""
        return self.expires_at is not None and now >= self.expires_at

    def usable(self, now: float) -> bool:
        """True when there is a value and it is not expired at ``now``."""
        return self.value is not None and not self.expired(now)

    def with_failure(self, error: str, now: float, leader: str | None) -> Token:
        """This record with a failed refresh noted; the value is kept."""
        return replace(self, error=error, error_at=now, failures=self.failures + 1, leader=leader)

    def __repr__(self) -> str:
        # Never show the secret value, not even in a debugger or a log of the object.
        shown = "None" if self.value is None else "'***'"
        return (f"Token(value={shown}, expires_at={self.expires_at!r}, "
                f"refreshed_at={self.refreshed_at!r}, generation={self.generation}, "
                f"error={self.error!r}, failures={self.failures}, leader={self.leader!r})")

    def to_json(self) -> bytes:
        """Serialise for storage."""
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str, where: str, *, now: float | None = None) -> Token:
        """Parse and check a stored record; ``where`` names it in the error.

        A record is input like any other: whoever can write the storage writes it. Every
        field is checked (see :func:`check_record`) against ``now`` (default: the time now);
        a record that fails raises :class:`StorageError` naming the field, never its value.
        """
        try:
            raw: Any = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StorageError(f"{where}: not a valid token record ({exc.__class__.__name__})") from None
        if not isinstance(raw, dict):
            raise StorageError(f"{where}: not a valid token record (expected an object)")
        fields = {k: raw[k] for k in _FIELDS if k in raw}
        if "value" not in fields:
            raise StorageError(f"{where}: not a valid token record (no value field)")
        try:
            return check_record(cls(**fields), time.time() if now is None else now)
        except (TypeError, ValueError) as exc:
            raise StorageError(f"{where}: not a valid token record ({exc})") from None


#: The longest a stored token may stay valid, counted from now and from its refresh: no
#: source issues longer-lived tokens (ECR and CodeArtifact 12 h, STS at most 36 h). A longer
#: expiry is distrusted: it could pin a planted token for a whole fleet.
MAX_LIFETIME = 7 * 24 * 3600.0
#: How far in the future a stored time may lie (clocks of hosts sharing a storage differ).
MAX_CLOCK_SKEW = 300.0
#: Longest error text and leader name kept in a record.
MAX_ERROR = 4096
MAX_LEADER = 512
_MAX_COUNT = 2**63 - 1


def check_record(token: Token, now: float) -> Token:
    """Return ``token`` if every field is well-formed and plausible at ``now``.

    Raise ValueError (naming the field, never the value) otherwise: the value passes the
    header rules of a fresh token, times are finite numbers, counters non-negative integers,
    texts bounded strings; no time lies beyond ``now`` plus :data:`MAX_CLOCK_SKEW`, and no
    expiry beyond :data:`MAX_LIFETIME` after ``now`` or after the refresh.
    """
    if token.value is not None:
        try:
            validate_value(token.value, "value")
        except TokenValueError as exc:
            raise ValueError(str(exc)) from None
    _time(token.refreshed_at, "refreshed_at", now)
    _time(token.error_at, "error_at", now, optional=True)
    if _time(token.expires_at, "expires_at", now, optional=True, future=True):
        assert token.expires_at is not None
        horizon = now + MAX_LIFETIME
        if token.refreshed_at:
            horizon = min(horizon, token.refreshed_at + MAX_LIFETIME)
        if token.expires_at > horizon:
            raise ValueError(f"expires_at lies more than {MAX_LIFETIME / 86400:g} days after "
                             "the refresh or now, longer than any source issues")
    for name in ("generation", "failures", "hook_failures", "fence"):
        count = getattr(token, name)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= _MAX_COUNT:
            raise ValueError(f"{name} must be a non-negative integer")
    for name, limit in (("error", MAX_ERROR), ("hook_error", MAX_ERROR), ("leader", MAX_LEADER)):
        text = getattr(token, name)
        if text is not None and (not isinstance(text, str) or len(text) > limit):
            raise ValueError(f"{name} must be a string of at most {limit} characters")
    return token


def _time(value: object, name: str, now: float, *, optional: bool = False,
          future: bool = False) -> bool:
    """Check one time field; True when it holds a time."""
    if value is None and optional:
        return False
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"{name} must be a finite, non-negative number of epoch seconds")
    if not future and value > now + MAX_CLOCK_SKEW:
        raise ValueError(f"{name} lies {value - now:.0f}s in the future")
    return True
