"""MemoryStorage: tokens for one process."""

from __future__ import annotations

import threading
import time

from .._token import Token, check_name
from ._base import BaseStorage, Clock


class _MemoryLease:
    def __init__(self, lock: threading.Lock) -> None:
        self._lock: threading.Lock | None = lock

    def held(self) -> bool:
        return self._lock is not None

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()


class MemoryStorage(BaseStorage):
    """Keeps tokens in this process only. Useful for tests and single-process programs.

    Rotators in the same process still elect one leader per name.
    """

    def __init__(self, *, margin: float = 1.0, clock: Clock = time.time) -> None:
        super().__init__(poll=3600.0, margin=margin, clock=clock)
        self._leaders: dict[str, threading.Lock] = {}
        self._requests: dict[str, float] = {}

    def __repr__(self) -> str:
        return "MemoryStorage()"

    def _load(self, name: str) -> Token | None:
        return self._records.get(name)

    def _store(self, name: str, token: Token) -> None:
        pass  # _remember has already put it in _records, which is the store itself

    def _stale(self, name: str) -> bool:
        return False

    def acquire(self, name: str) -> _MemoryLease | None:
        check_name(name)
        with self._lock:
            lock = self._leaders.setdefault(name, threading.Lock())
        return _MemoryLease(lock) if lock.acquire(blocking=False) else None

    def request_refresh(self, name: str) -> None:
        self._requests[check_name(name)] = self.clock()

    def refresh_requested(self, name: str) -> float:
        return self._requests.get(name, 0.0)

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._leaders = {}
