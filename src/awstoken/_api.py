"""The module-level API, line for line the one of ngx_aws_token, over a default Keeper."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._rotation.keeper import Keeper, SourceLike, TransformLike, _seconds
from ._rotation.rotator import RotateHook, Rotator
from .storage._base import Storage

_keeper = Keeper()
# The default storage's hot dict, bound once the storage exists: token() is one lookup.
_values: Mapping[str, str] = {}


def default_keeper() -> Keeper:
    """The Keeper behind the module-level functions."""
    return _keeper


def set_storage(storage: Storage) -> None:
    """Share tokens through ``storage`` (default: a FileStorage in the default directory)."""
    global _values
    _keeper.set_storage(storage)
    _values = storage.values


def set_interval(seconds: float) -> None:
    """Refresh every ``seconds`` (default 6 h); applies to later ``rotate`` calls."""
    _keeper.interval = _seconds(seconds, "interval")


def set_retry(seconds: float) -> None:
    """First retry after a failure waits ``seconds`` (default 30 s), then backs off."""
    _keeper.retry = _seconds(seconds, "retry")


def set_timeout(seconds: float) -> None:
    """Kill a command that runs longer than ``seconds`` (default 60 s)."""
    _keeper.timeout = _seconds(seconds, "timeout")


def create(command: SourceLike, transform: TransformLike = None) -> str:
    """Run ``command`` once and return ``transform(output)``, validated; nothing is stored."""
    return _keeper.create(command, transform)


def manage(name: str, command: SourceLike, transform: TransformLike = None) -> str:
    """Refresh ``name`` once into storage now; return the new value or raise."""
    return _keeper.manage(name, command, transform)


def rotate(name: str, command: SourceLike, transform: TransformLike = None, *,
           interval: float | None = None, retry: float | None = None,
           timeout: float | None = None, on_rotate: Sequence[RotateHook] = ()) -> Rotator:
    """Keep ``name`` fresh in the background: now, then every interval; return at once.

    Any number of processes may rotate the same name on a shared storage: one of them runs
    the command per refresh and all of them read the result.
    """
    global _values
    rotator = _keeper.rotate(name, command, transform, interval=interval, retry=retry,
                             timeout=timeout, on_rotate=on_rotate)
    _values = _keeper.storage.values
    return rotator


def token(name: str) -> str | None:
    """The current value of ``name``; None while there is none or once it has expired."""
    value = _values.get(name)
    if value is not None:
        return value
    return _token_slow(name)


def _token_slow(name: str) -> str | None:
    global _values
    storage = _keeper.storage
    _values = storage.values
    return storage.get(name)
