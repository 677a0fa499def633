"""A cache directory's usage and statistics, as ``awstoken cache`` shows them.

The counters live in ``DIR/stats.json``, summed by every process that uses the directory
(see ``Store.add_stats``); reading them never creates or changes anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from typing import Any

_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


STATS_FILE = "stats.json"
STATS = ("hits", "misses", "served_bytes", "fetched_bytes", "evictions", "verify_failures")


def parse_stats(data: bytes) -> dict[str, int]:
    """The counters of a ``stats.json`` (unknown or malformed entries are ignored)."""
    try:
        raw = json.loads(data or b"{}")
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if k in STATS and isinstance(v, int) and v >= 0}


def read_usage(path: str) -> dict[str, Any]:
    """What ``awstoken cache`` shows of one directory, without creating or changing it."""
    objects = count = 0
    try:
        with os.scandir(os.path.join(path, "objects")) as entries:
            for item in entries:
                with contextlib.suppress(OSError):
                    st = item.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        objects += st.st_size
                        count += 1
    except FileNotFoundError:
        pass
    try:
        fd = os.open(os.path.join(path, STATS_FILE), os.O_RDONLY | _OPEN_FLAGS)
        try:
            stats = parse_stats(os.pread(fd, 65536, 0))
        finally:
            os.close(fd)
    except OSError:
        stats = {}
    looked = stats.get("hits", 0) + stats.get("misses", 0)
    return {"path": path, "objects": count, "bytes": objects,
            **{name: stats.get(name, 0) for name in STATS},
            "hit_ratio": round(stats.get("hits", 0) / looked, 4) if looked else None}


__all__ = ["STATS", "STATS_FILE", "parse_stats", "read_usage"]
