"""``awstoken status -c FILE``: each configured token's state, never its value.

The leader is the process that holds the token's lease right now (Redis: the lease's owner
id; file: the holder of the lock file's flock, from /proc/locks; shown as ``host:pid``),
else the process that wrote the record. Whether it still runs: on this host, its pid is
checked; otherwise a held lease says it is alive (its owner renews or holds it), a storage
with no lease holder says nobody leads, and a storage that cannot tell leaves it unknown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import unicodedata
from typing import TYPE_CHECKING, Any

from .._duration import span
from .._errors import AwstokenError
from ._common import add_config_argument, load_settings

if TYPE_CHECKING:
    from .._config.settings import TokenSettings
    from .._token import Token
    from ..storage import Storage

NAME = "status"
HELP = ("show each configured token's generation, age, time to expiry, next refresh, leader "
        "(and whether it still runs), hook failures and last error (exit 1 when any token is "
        "missing or expired)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object, for machines")


def lease_holder(storage: Storage, name: str) -> str | None:
    """``host:pid`` of the process holding the lease of ``name``, where the storage tells.

    A storage with a ``leader(name)`` method does (RedisStorage, FileStorage). None when
    nobody holds it or the storage cannot be asked.
    """
    return _lease(storage, name)[0]


def _lease(storage: Storage, name: str) -> tuple[str | None, bool]:
    """``(lease_holder, known)``: known is False when the storage cannot tell (no lease
    owners, or unreachable), so a missing holder means nobody leads only when known."""
    leader = getattr(storage, "leader", None)
    if not callable(leader):
        return None, False
    try:
        owner = leader(name)
    except AwstokenError:
        return None, False
    if not isinstance(owner, str) or not owner:
        return None, True
    # Owner ids are host:pid:random (unique per lease); people want the process.
    host_pid = owner.rpartition(":")[0]
    return host_pid or owner, True


def leader_alive(leader: str | None, *, lease_held: bool, lease_known: bool) -> bool | None:
    """Whether the ``host:pid`` leader still runs: True, False (gone) or None (cannot tell).

    ``lease_known``: the storage tells lease owners (Redis); ``lease_held``: someone holds it.
    """
    import socket  # here: every command module is imported to build the parser (cli/__init__)

    host, _, pid = (leader or "").rpartition(":")
    if host and host == socket.gethostname() and pid.isdigit():
        return _pid_alive(int(pid))
    if lease_known:
        return lease_held
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return False
    return True


def next_refresh(token: TokenSettings | None, record: Token | None) -> float | None:
    """When the leader will next try to refresh (epoch seconds; without jitter, the earliest)."""
    if token is None:
        return None
    from .._rotation.rotator import Schedule  # not at module level: see run()

    schedule = Schedule(interval=token.interval, retry=token.retry)
    return schedule.due(record, time.time(), lambda: 0.0)


def describe(name: str, record: Token | None, now: float, *,
             lease_owner: str | None = None, lease_known: bool = False,
             token: TokenSettings | None = None) -> dict[str, Any]:
    """What status shows of one token: everything but the value.

    ``leader`` is ``lease_owner`` when given, else the record's writer (``written_by``).
    """
    leader = lease_owner or (record.leader if record is not None else None)
    alive = leader_alive(leader, lease_held=lease_owner is not None, lease_known=lease_known)
    due = next_refresh(token, record)
    common = {"leader": leader, "leader_alive": alive, "next_refresh_at": due,
              "next_refresh_in_seconds": None if due is None else round(max(due - now, 0.0), 1)}
    if record is None:
        return {"name": name, "usable": False, "generation": 0, "refreshed_at": None,
                "age_seconds": None, "expires_at": None, "expires_in_seconds": None,
                "written_by": None, "failures": 0, "error": None, "error_at": None,
                "hook_failures": 0, "hook_error": None, **common}
    return {
        "name": name,
        "usable": record.usable(now),
        "generation": record.generation,
        "refreshed_at": record.refreshed_at or None,
        "age_seconds": round(now - record.refreshed_at, 1) if record.value is not None else None,
        "expires_at": record.expires_at,
        "expires_in_seconds": (None if record.expires_at is None
                               else round(record.expires_at - now, 1)),
        "written_by": record.leader,
        "failures": record.failures,
        "error": record.error,
        "error_at": record.error_at,
        "hook_failures": record.hook_failures,
        "hook_error": record.hook_error,
        **common,
    }


def _leader(row: dict[str, Any]) -> str:
    if not row["leader"]:
        return "none" if row["leader_alive"] is False else "-"
    suffix = {True: "", False: " (gone)", None: " (unknown)"}[row["leader_alive"]]
    return f"{row['leader']}{suffix}"


def _next(row: dict[str, Any]) -> str:
    if row["next_refresh_in_seconds"] is None:
        return "-"
    if row["leader_alive"] is False:
        return "none (no leader)"
    return "now" if row["next_refresh_in_seconds"] <= 0 else span(row["next_refresh_in_seconds"])


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
    head = ("TOKEN", "STATE", "GEN", "AGE", "EXPIRES IN", "NEXT REFRESH", "LEADER", "FAILURES",
            "HOOK FAILURES", "LAST ERROR")
    lines = [head]
    for row in rows:
        state = "ok" if row["usable"] else ("expired" if row["generation"] else "missing")
        error = row["error"] or "-"
        if row["hook_error"]:
            error = (f"{row['error']}; " if row["error"] else "") + f"hook: {row['hook_error']}"
        lines.append((row["name"], state, str(row["generation"]), span(row["age_seconds"]),
                      span(row["expires_in_seconds"]), _next(row), printable(_leader(row)),
                      str(row["failures"]), str(row["hook_failures"]), printable(error)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
                     + "  " + line[-1] for line in lines)


def run(args: argparse.Namespace) -> int:
    # Imported here: every command module is imported to build the parser (see cli/__init__).
    from .._config.build import build_storage

    settings = load_settings(args)
    storage = build_storage(settings.storage)
    now = time.time()
    try:
        rows = []
        for name, token in settings.tokens.items():
            owner, known = _lease(storage, name)
            rows.append(describe(name, storage.read(name), now, lease_owner=owner,
                                 lease_known=known, token=token))
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
