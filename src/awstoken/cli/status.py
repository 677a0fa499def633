"""``awstoken status -c FILE``: each configured token's state, never its value.

The leader is the process that holds the token's lease right now where the storage can say
(Redis: the lease's owner id, shown as ``host:pid``), else the process that wrote the record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import unicodedata
from typing import Any

from .._build import build_storage
from .._errors import AwstokenError
from .._token import Token
from ..storage import Storage
from ._common import add_config_argument, load_settings

NAME = "status"
HELP = ("show each configured token's generation, age, time to expiry, leader and last error "
        "(exit 1 when any token is missing or expired)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object, for machines")


def lease_holder(storage: Storage, name: str) -> str | None:
    """``host:pid`` of the process holding the lease of ``name``, where the storage tells.

    Only a storage with a ``leader(name)`` method (RedisStorage) does; a FileStorage's flock
    has no readable owner. None when nobody holds it or the storage cannot be asked.
    """
    leader = getattr(storage, "leader", None)
    if not callable(leader):
        return None
    try:
        owner = leader(name)
    except AwstokenError:
        return None
    if not isinstance(owner, str) or not owner:
        return None
    # Owner ids are host:pid:random (unique per lease); people want the process.
    host_pid = owner.rpartition(":")[0]
    return host_pid or owner


def describe(name: str, record: Token | None, now: float, *,
             lease_owner: str | None = None) -> dict[str, Any]:
    """What status shows of one token: everything but the value.

    ``leader`` is ``lease_owner`` when given, else the record's writer (``written_by``).
    """
    if record is None:
        return {"name": name, "usable": False, "generation": 0, "refreshed_at": None,
                "age_seconds": None, "expires_at": None, "expires_in_seconds": None,
                "leader": lease_owner, "written_by": None, "failures": 0, "error": None,
                "error_at": None}
    return {
        "name": name,
        "usable": record.usable(now),
        "generation": record.generation,
        "refreshed_at": record.refreshed_at or None,
        "age_seconds": round(now - record.refreshed_at, 1) if record.value is not None else None,
        "expires_at": record.expires_at,
        "expires_in_seconds": (None if record.expires_at is None
                               else round(record.expires_at - now, 1)),
        "leader": lease_owner or record.leader,
        "written_by": record.leader,
        "failures": record.failures,
        "error": record.error,
        "error_at": record.error_at,
    }


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    sign, left = ("-" if seconds < 0 else ""), int(abs(seconds))
    hours, rest = divmod(left, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}h{minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m{secs:02d}s"
    return f"{sign}{secs}s"


def printable(text: str) -> str:
    """``text`` with control and format characters escaped (``\\x1b``, ``\\n``, ``\\u202e``).

    Text read from storage (errors, leader names) was written by whoever could write there:
    raw, an escape sequence could clear the terminal or a newline forge a line of output.
    """
    return "".join(_escape(ch) if unicodedata.category(ch) in _UNPRINTABLE else ch
                   for ch in text)


_UNPRINTABLE = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"))


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("TOKEN", "STATE", "GEN", "AGE", "EXPIRES IN", "LEADER", "FAILURES", "LAST ERROR")
    lines = [head]
    for row in rows:
        state = "ok" if row["usable"] else ("expired" if row["generation"] else "missing")
        lines.append((row["name"], state, str(row["generation"]), _span(row["age_seconds"]),
                      _span(row["expires_in_seconds"]), printable(row["leader"] or "-"),
                      str(row["failures"]), printable(row["error"] or "-")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
                     + "  " + line[-1] for line in lines)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    storage = build_storage(settings.storage)
    now = time.time()
    try:
        rows = [describe(name, storage.read(name), now, lease_owner=lease_holder(storage, name))
                for name in settings.tokens]
    finally:
        storage.close()
    if args.json:
        # ensure_ascii (the default, kept on purpose) escapes every control character.
        json.dump({"config": settings.path, "storage": settings.storage.type, "time": now,
                   "tokens": rows}, sys.stdout, indent=2, ensure_ascii=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(_table(rows) + "\n")
    return 0 if all(row["usable"] for row in rows) else 1
