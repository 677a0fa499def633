"""The stored token record."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from ._errors import StorageError

_FIELDS = ("value", "expires_at", "refreshed_at", "generation", "error", "error_at", "failures",
           "leader", "fence")


@dataclass(frozen=True, slots=True)
class Token:
    """One token as kept in storage.

    ``value`` is the final header value (after the transform). Times are Unix epoch seconds.
    ``error``/``error_at``/``failures`` describe the last failed refresh (never secret text);
    ``leader`` names the process (``host:pid``) that wrote the record; ``fence`` is the
    fencing number of the lease it was written under (0 where storage has none), so that a
    record from an older lease never replaces one from a newer lease.
    """

    value: str | None
    expires_at: float | None = None
    refreshed_at: float = 0.0
    generation: int = 0
    error: str | None = None
    error_at: float | None = None
    failures: int = 0
    leader: str | None = None
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
    def from_json(cls, data: bytes | str, where: str) -> Token:
        """Parse a stored record; ``where`` names it in the error."""
        try:
            raw: Any = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StorageError(f"{where}: not a valid token record ({exc.__class__.__name__})") from None
        if not isinstance(raw, dict):
            raise StorageError(f"{where}: not a valid token record (expected an object)")
        try:
            return cls(**{k: raw[k] for k in _FIELDS if k in raw})
        except TypeError:
            raise StorageError(f"{where}: not a valid token record (bad fields)") from None
