"""Picking a token and its expiry out of a command's JSON output.

Paths are the small subset of JMESPath that AWS CLI users write for this:
dotted keys and list indexes, e.g. ``authorizationData[0].authorizationToken``.
Expiries are epoch seconds (AWS CLI v1) or ISO 8601 (AWS CLI v2).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from .._errors import ConfigError

# One step: a key (letters, digits, _ and -), optionally followed by any number of [N].
_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)((?:\[-?\d+\])*)")
_INDEX = re.compile(r"\[(-?\d+)\]")

Step = str | int


class PathMissing(LookupError):
    """The path does not lead anywhere in the document; the message says where it stopped."""


def parse_path(path: object, what: str = "path") -> tuple[Step, ...]:
    """Parse ``a.b[0].c`` into ``("a", "b", 0, "c")``; raise :class:`ConfigError` if malformed."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{what} must be a non-empty string like "
                          "'authorizationData[0].authorizationToken'")
    steps: list[Step] = []
    for part in path.split("."):
        match = _STEP.fullmatch(part)
        if match is None:
            raise ConfigError(f"{what} {path!r} is not a path like "
                              "'authorizationData[0].authorizationToken' (keys separated by '.', "
                              "list indexes in brackets)")
        steps.append(match.group(1))
        steps.extend(int(i) for i in _INDEX.findall(match.group(2)))
    return tuple(steps)


def render(steps: tuple[Step, ...]) -> str:
    """The path text of ``steps`` (for messages)."""
    out = ""
    for step in steps:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def lookup(document: Any, steps: tuple[Step, ...]) -> Any:
    """Follow ``steps`` into ``document``; raise :class:`PathMissing` naming where it stopped."""
    node = document
    for i, step in enumerate(steps):
        here = render(steps[:i]) or "the document"
        if isinstance(step, int):
            if not isinstance(node, list):
                raise PathMissing(f"{here} is {kind(node)}, not a list")
            if not -len(node) <= step < len(node):
                raise PathMissing(f"{here} has {len(node)} item(s), no index {step}")
            node = node[step]
        else:
            if not isinstance(node, dict):
                raise PathMissing(f"{here} is {kind(node)}, not an object")
            if step not in node:
                raise PathMissing(f"{here} has no key {step!r}")
            node = node[step]
    return node


def parse_expiry(value: Any) -> float:
    """Epoch seconds from a number or numeric string (seconds) or an ISO 8601 string.

    A time without a zone is taken as UTC (the AWS CLI prints UTC). Raises ValueError.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError("not epoch seconds or an ISO 8601 time") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            seconds = moment.timestamp()
    else:
        raise ValueError(f"{kind(value)} is not a time")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("not a positive finite number of seconds")
    if seconds > 1e11:
        # Milliseconds since the epoch (some APIs print those): nothing expires in year 5138.
        seconds /= 1000.0
    return seconds


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
