"""How a TOML table is read: the error collector, typed getters, and the field declarations.

Each settings dataclass declares its keys once, as fields whose metadata holds the reader
(:func:`setting` for a key with a default, :func:`required` for one without). The loader
reads a table with :func:`read_fields` and rejects any key the class does not declare, so a
key exists in exactly one place: its field. Readers report problems into a :class:`Report`
(``FILE: key.path: problem``) and return :data:`MISSING` for a key that is absent or bad.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .._errors import ConfigError

T = TypeVar("T")


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


#: A key that is absent, or present with a value that was already reported as an error.
MISSING: Any = _Missing()

# -- durations ---------------------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
DURATION_EXAMPLE = 'a number of seconds or a string like "90s", "15m", "6h", "1d" or "1h30m"'


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``"90s"``, ``"15m"``, ``"6h"``, ``"1h30m"``.

    Raises ValueError (without echoing anything but the value's shape).
    """
    if isinstance(value, bool):
        raise ValueError("a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _duration_text(value)
    else:
        raise ValueError(kind(value))
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} (not finite)")
    return seconds


def _duration_text(value: str) -> float:
    text = value.strip().replace(" ", "")
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r}")
    units = [u for _, u in parts]
    if len(set(units)) != len(units):
        raise ValueError(f"{value!r} (a unit appears twice)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


# -- the error collector ---------------------------------------------------------------------


class Report:
    """Collects messages ``FILE: key: problem`` for one file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.messages: list[str] = []

    def error(self, key: str, problem: str) -> Any:
        """Record a problem; return :data:`MISSING` (the value to use instead)."""
        self.messages.append(f"{self.file}: {key}: {problem}" if key else f"{self.file}: {problem}")
        return MISSING

    def raise_if_any(self) -> None:
        if self.messages:
            raise ConfigError("\n".join(self.messages))


_KINDS: tuple[tuple[type, str], ...] = ((bool, "a boolean"), (int, "an integer"),
                                        (float, "a float"), (str, "a string"),
                                        (list, "an array"), (dict, "a table"))


def kind(value: object) -> str:
    """What a TOML value is, in words ("an integer"): never the value itself."""
    return next((name for cls, name in _KINDS if isinstance(value, cls)), "a date/time")


def suggest(key: str, allowed: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``allowed``, or ``""``."""
    close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class Table:
    """One TOML table being read: typed getters that report into a :class:`Report`."""

    def __init__(self, report: Report, path: str, data: Mapping[str, Any],
                 base_dir: Path) -> None:
        self.report = report
        self.path = path
        self.data = data
        self.base_dir = base_dir

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, problem: str) -> Any:
        return self.report.error(self.key(name), problem)

    def unknown(self, allowed: Iterable[str], elsewhere: Mapping[str, str] | None = None) -> None:
        """Report keys that are not in ``allowed`` (``elsewhere`` says where others belong)."""
        allowed = set(allowed)
        for name in self.data:
            if name in allowed:
                continue
            if elsewhere and name in elsewhere:
                self.error(name, f"not valid here: {elsewhere[name]}")
            else:
                self.error(name, "unknown key" + suggest(name, allowed))

    def get(self, name: str, check: Callable[[Any], T], expected: str, *,
            required: bool = False) -> T | Any:
        """The value of ``name`` passed through ``check`` (which raises ValueError)."""
        if name not in self.data:
            return self.error(name, f"missing; expected {expected}") if required else MISSING
        value = self.data[name]
        try:
            return check(value)
        except ValueError as exc:
            detail = str(exc)
            got = f" ({detail})" if detail else ""
            return self.error(name, f"expected {expected}, got {kind(value)}{got}")

    def string(self, name: str, *, required: bool = False, pattern: re.Pattern[str] | None = None,
               expected: str = "a non-empty string", show: bool = True) -> str | Any:
        def check(value: Any) -> str:
            if not isinstance(value, str) or not value:
                raise ValueError("empty" if value == "" else "")
            if pattern is not None and not pattern.fullmatch(value):
                raise ValueError(repr(value) if show else "")
            return value
        return self.get(name, check, expected, required=required)

    def duration(self, name: str, *, minimum: float = 0.0, positive: bool = True,
                 maximum: float | None = None) -> float | Any:
        if name not in self.data:
            return MISSING
        value = self.data[name]
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            return self.error(name, f"expected a duration: {DURATION_EXAMPLE}; got {exc}")
        if positive and seconds <= 0:
            return self.error(name, f"expected a positive duration, got {value!r}")
        if seconds < minimum:
            return self.error(name, f"expected at least {minimum:g} seconds, got {value!r}")
        if maximum is not None and seconds > maximum:
            return self.error(name, f"expected at most {maximum:g} seconds, got {value!r}")
        return seconds

    def choice(self, name: str, choices: tuple[str, ...], *, required: bool = False) -> str | Any:
        def check(value: Any) -> str:
            if not isinstance(value, str):
                raise ValueError("")
            if value not in choices:
                raise ValueError(repr(value) + suggest(value, choices))
            return value
        return self.get(name, check, " or ".join(repr(c) for c in choices), required=required)

    def file_path(self, name: str, *, must_exist: bool = False, required: bool = False,
                  expected: str = "a file path") -> str | Any:
        value = self.string(name, expected=expected, required=required)
        if value is MISSING:
            return MISSING
        path = Path(os.path.expanduser(value))
        if not path.is_absolute():
            path = self.base_dir / path
        if must_exist and not path.is_file():
            return self.error(name, f"expected an existing file, but {str(path)!r} is not one")
        return str(path)

    def sub(self, name: str) -> Table | None:
        """The sub-table ``name`` (None when absent or not a table, reported)."""
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, dict):
            self.error(name, f"expected a table, got {kind(value)}")
            return None
        return Table(self.report, self.key(name), value, self.base_dir)


# -- readers: what a field's metadata holds ----------------------------------------------------

#: Reads key ``name`` of a table: its value, or MISSING (absent, or reported as bad).
Reader = Callable[[Table, str], Any]


def string(*, pattern: re.Pattern[str] | None = None, expected: str = "a non-empty string",
           required: bool = False) -> Reader:
    """A non-empty string, matching ``pattern`` when given."""
    return lambda table, name: table.string(name, pattern=pattern, expected=expected,
                                            required=required)


def boolean() -> Reader:
    """``true`` or ``false``."""
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError("")
        return value
    return lambda table, name: table.get(name, check, "true or false")


def integer(low: int, high: int | None = None, *, required: bool = False) -> Reader:
    """An integer from ``low`` to ``high`` (no upper bound when None)."""
    expected = (f"an integer from {low} to {high}" if high is not None
                else f"an integer of at least {low}")

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("")
        if value < low or (high is not None and value > high):
            raise ValueError(str(value))
        return value
    return lambda table, name: table.get(name, check, expected, required=required)


def duration(*, minimum: float = 0.0, positive: bool = True,
             maximum: float | None = None) -> Reader:
    """Seconds, from a number or a string like ``"15m"`` (see :func:`parse_duration`)."""
    return lambda table, name: table.duration(name, minimum=minimum, positive=positive,
                                              maximum=maximum)


def choice(*choices: str, required: bool = False) -> Reader:
    """One of ``choices`` (a near miss gets "did you mean")."""
    return lambda table, name: table.choice(name, choices, required=required)


def file_path(*, must_exist: bool = False, required: bool = False,
              expected: str = "a file path") -> Reader:
    """A path, relative to the configuration file's directory, ``~`` expanded."""
    return lambda table, name: table.file_path(name, must_exist=must_exist, required=required,
                                               expected=expected)


def value(check: Callable[[Any], Any], expected: str, *, required: bool = False) -> Reader:
    """Whatever ``check`` makes of the value (it raises ValueError, whose text is shown)."""
    return lambda table, name: table.get(name, check, expected, required=required)


# -- declarations ------------------------------------------------------------------------------


def setting(default: T, read: Reader, *, only: tuple[str, ...] = (), restart: bool = False) -> T:
    """A field read from the TOML key of its name; ``default`` when the key is absent.

    ``only``: the kinds of table it belongs to (``[storage]`` types), when not all.
    ``restart``: a reload (SIGHUP) keeps the running value; it takes effect at a restart.
    """
    return dataclasses.field(default=default, metadata={"read": read, "only": only,
                                                        "restart": restart})


def read_by(read: Reader, *, only: tuple[str, ...] = ()) -> Mapping[str, Any]:
    """The metadata of a field without a default: ``field(metadata=read_by(...))``."""
    return {"read": read, "only": only}


@functools.cache
def _readers(cls: Any, kind_: str | None) -> tuple[tuple[str, Reader], ...]:
    """(key, reader) of each key ``cls`` declares (for ``kind_``), in field order; cached,
    as a class's fields do not change."""
    return tuple((f.name, f.metadata["read"]) for f in dataclasses.fields(cls)
                 if "read" in f.metadata
                 and (kind_ is None or not f.metadata["only"] or kind_ in f.metadata["only"]))


def keys_of(cls: Any, kind_: str | None = None) -> tuple[str, ...]:
    """The TOML keys ``cls`` declares (those used with ``kind_``, when given)."""
    return tuple(name for name, _ in _readers(cls, kind_))


def only_with(cls: Any) -> dict[str, tuple[str, ...]]:
    """Each key declared for some kinds only, with those kinds."""
    return {f.name: f.metadata["only"] for f in dataclasses.fields(cls) if f.metadata.get("only")}


def read_fields(cls: Any, table: Table, kind_: str | None = None) -> dict[str, Any]:
    """The declared keys of ``cls`` present in ``table`` and valid, by field name."""
    values: dict[str, Any] = {}
    for name, read in _readers(cls, kind_):
        got = read(table, name)
        if got is not MISSING:
            values[name] = got
    return values


@functools.cache
def _required(cls: Any) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls)
                     if f.init and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)


def make(cls: Callable[..., T], values: Mapping[str, Any]) -> T | None:
    """``cls(**values)``, or None when a field without a default has no value (reported)."""
    return cls(**values) if _required(cls) <= values.keys() else None
