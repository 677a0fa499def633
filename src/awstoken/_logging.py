"""Logging of ``awstoken serve``: level, text or JSON lines, third-party loggers kept quiet.

Text lines are ``TIME LEVEL MESSAGE``; JSON lines are one object each with ``time`` (UTC,
ISO 8601), ``level``, ``logger`` and ``message`` (plus ``exception`` when there is one), for
log shippers. Messages are the same in both formats and never hold a token.

Libraries underneath (botocore, urllib3, aiohttp, asyncio) log at WARNING and above unless a
level is asked for them by name: ``--log-level debug,botocore=debug``. botocore's debug
output includes request and response bodies, which hold tokens: ask for it only to debug.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from ._errors import ConfigError

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")
#: Loggers of libraries awstoken uses, at WARNING unless named in the level option.
THIRD_PARTY = ("botocore", "boto3", "urllib3", "s3transfer", "aiohttp", "asyncio", "redis")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def parse_level(spec: str) -> tuple[int, dict[str, int]]:
    """``"info"`` or ``"info,botocore=debug"`` to (awstoken's level, {logger: level}).

    Raises ConfigError naming the bad part.
    """
    main: int | None = None
    others: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, level = part.rpartition("=")
        number = _level(level)
        if sep:
            if not name:
                raise ConfigError(f"log level {part!r}: no logger name before '='")
            others[name] = number
        else:
            main = number
    if main is None:
        raise ConfigError(f"log level {spec!r}: expected one of {', '.join(LEVELS)}")
    return main, others


def _level(text: str) -> int:
    name = text.strip().lower()
    if name not in LEVELS:
        raise ConfigError(f"log level {text!r}: expected one of {', '.join(LEVELS)}")
    return int(getattr(logging, name.upper()))


def setup(level: str = "info", fmt: str = "text", *, stream: TextIO | None = None) -> None:
    """Configure the root logger for a process that owns its logging (``awstoken serve``)."""
    if fmt not in FORMATS:
        raise ConfigError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    main, others = parse_level(level)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(main)
    quiet: Mapping[str, int] = {name: max(logging.WARNING, main) for name in THIRD_PARTY}
    for name, number in {**quiet, **others}.items():
        logging.getLogger(name).setLevel(number)
