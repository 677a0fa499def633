"""Token storages: where records live and how one leader per token is elected."""

from typing import TYPE_CHECKING, Any

from ._base import BaseStorage, Lease, Storage
from .file import FileStorage
from .memory import MemoryStorage

if TYPE_CHECKING:
    from .redis import RedisStorage


def __getattr__(name: str) -> Any:
    # The redis module (and redis-py, when a RedisStorage is created) loads on first use:
    # processes on file storage (the credential doors) never pay for it.
    if name == "RedisStorage":
        from .redis import RedisStorage

        return RedisStorage
    raise AttributeError(f"module 'awstoken.storage' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "RedisStorage"})


__all__ = ["BaseStorage", "FileStorage", "Lease", "MemoryStorage", "RedisStorage", "Storage"]
