"""Token storages: where records live and how one leader per token is elected."""

from ._base import BaseStorage, Lease, Storage
from .file import FileStorage
from .memory import MemoryStorage
from .redis import RedisStorage  # imports redis-py only when a RedisStorage is created

__all__ = ["BaseStorage", "FileStorage", "Lease", "MemoryStorage", "RedisStorage", "Storage"]
