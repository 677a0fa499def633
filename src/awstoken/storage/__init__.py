"""Token storages: where records live and how one leader per token is elected."""

from ._base import BaseStorage, Lease, Storage
from .file import FileStorage
from .memory import MemoryStorage

__all__ = ["BaseStorage", "FileStorage", "Lease", "MemoryStorage", "Storage"]
