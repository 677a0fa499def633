"""The Keeper: rotators over one storage, and the module-level API of ngx_aws_token."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from .._errors import AwstokenError
from .._sources.command import DEFAULT_TIMEOUT, Fetched, Source, as_source
from .._sources.transforms import Transform, as_transform
from .._token import Token, check_name
from ..storage import FileStorage
from ..storage._base import Storage
from .rotator import DEFAULT_MIN_REFRESH_GAP, RotateHook, Rotator, Schedule, fetch_value

SourceLike = Source | str | Sequence[str] | Callable[[], "str | Fetched"]
TransformLike = Transform | str | None


def _seconds(value: float, what: str) -> float:
    seconds = value.total_seconds() if hasattr(value, "total_seconds") else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise AwstokenError(f"{what} must be a positive number of seconds, not {value!r}")
    return float(seconds)


class Keeper:
    """Rotators sharing one storage and one set of defaults.

    The module-level functions (``awstoken.rotate`` and friends) use a default Keeper; create
    your own for programs that want no module state.
    """

    def __init__(self, storage: Storage | None = None, *, interval: float = 6 * 3600.0,
                 retry: float = 30.0, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._storage = storage
        self.interval = _seconds(interval, "interval")
        self.retry = _seconds(retry, "retry")
        self.timeout = _seconds(timeout, "timeout")
        self._rotators: dict[str, Rotator] = {}
        self._lock = threading.RLock()

    @property
    def storage(self) -> Storage:
        """The storage (created on first use: a FileStorage in the default directory)."""
        if self._storage is None:
            with self._lock:
                if self._storage is None:
                    self._storage = FileStorage()
        return self._storage

    def set_storage(self, storage: Storage) -> None:
        """Use ``storage`` from now on; running rotators move to it."""
        with self._lock:
            self._storage = storage
            for rotator in self._rotators.values():
                running = rotator.running
                rotator.stop()
                rotator.storage = storage
                if running:
                    rotator.start()

    def rotator(self, name: str, source: SourceLike, transform: TransformLike = None, *,
                interval: float | None = None, retry: float | None = None,
                timeout: float | None = None, on_rotate: Sequence[RotateHook] = (),
                min_refresh_gap: float | None = None) -> Rotator:
        """Build (without starting) a rotator with this keeper's storage and defaults."""
        schedule = Schedule(interval=_seconds(self.interval if interval is None else interval,
                                              "interval"),
                            retry=_seconds(self.retry if retry is None else retry, "retry"),
                            min_refresh_gap=(DEFAULT_MIN_REFRESH_GAP if min_refresh_gap is None
                                             else float(min_refresh_gap)))
        src = as_source(source, timeout=_seconds(self.timeout if timeout is None else timeout,
                                                 "timeout"))
        return Rotator(check_name(name), src, as_transform(transform), self.storage,
                       schedule=schedule, on_rotate=on_rotate)

    def create(self, source: SourceLike, transform: TransformLike = None) -> str:
        """Run the source once and return the validated header value; raise on failure.

        Nothing is stored.
        """
        src = as_source(source, timeout=self.timeout)
        return fetch_value("create", src, as_transform(transform))[1]

    def manage(self, name: str, source: SourceLike, transform: TransformLike = None) -> str:
        """Refresh ``name`` once into storage now; return the new value or raise."""
        rotator = self._rotators.get(name) or self.rotator(name, source, transform)
        token = rotator.refresh()
        assert token.value is not None
        return token.value

    def rotate(self, name: str, source: SourceLike, transform: TransformLike = None, *,
               interval: float | None = None, retry: float | None = None,
               timeout: float | None = None, on_rotate: Sequence[RotateHook] = (),
               min_refresh_gap: float | None = None) -> Rotator:
        """Keep ``name`` fresh in the background (one leader across processes); return at once.

        Calling it again for the same name replaces the previous rotator.
        """
        rotator = self.rotator(name, source, transform, interval=interval, retry=retry,
                               timeout=timeout, on_rotate=on_rotate,
                               min_refresh_gap=min_refresh_gap)
        with self._lock:
            old = self._rotators.pop(name, None)
            if old is not None:
                old.stop()
            self._rotators[name] = rotator
        return rotator.start()

    def remove(self, name: str) -> None:
        """Stop keeping ``name`` fresh (its stored record stays); nothing when not rotated."""
        with self._lock:
            rotator = self._rotators.pop(name, None)
        if rotator is not None:
            rotator.stop()

    def token(self, name: str) -> str | None:
        """The current value of ``name``, or None when there is none or it has expired."""
        return self.storage.get(name)

    def record(self, name: str) -> Token | None:
        """The full stored record of ``name`` (for status output)."""
        return self.storage.read(check_name(name))

    def request_refresh(self, name: str) -> None:
        """Ask whichever process leads ``name`` to refresh it soon (rate-limited)."""
        self.storage.request_refresh(check_name(name))
        rotator = self._rotators.get(name)
        if rotator is not None:
            rotator.wake()

    @property
    def rotators(self) -> dict[str, Rotator]:
        return dict(self._rotators)

    def stop(self) -> None:
        """Stop every rotator and release leadership."""
        with self._lock:
            rotators, self._rotators = list(self._rotators.values()), {}
        for rotator in rotators:
            rotator.stop()

