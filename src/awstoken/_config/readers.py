"""Readers of keys whose meaning depends on more than their own value.

Each is a :data:`~.reading.Reader` that a settings field declares, like the simple readers
of :mod:`.reading`; these also look at other keys of the same table (``format`` and
``basic_user`` exclude each other) or read sub-tables (``writes``, ``cache``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .._errors import AwstokenError
from .._sources.transforms import basic_auth, template, validate_value
from . import checks
from .reading import MISSING, Reader, Table, keys_of, kind, make, read_fields

T = TypeVar("T")


def _formats() -> tuple[str, ...]:
    # Imported when used: the formats module imports the settings (its TokenSettings).
    from .._rotation.formats import FORMATS

    return FORMATS


def file_format(table: Table, name: str) -> str | Any:
    """``writes[i].format``: one of the config-file formats (required)."""
    return table.choice(name, _formats(), required=True)


def token_format(table: Table, name: str) -> str | Any:
    """``format``: a header value with one ``{token}``; not with ``basic_user``."""
    fmt = table.string(name, expected='a format with one "{token}", like "Basic {token}"')
    if fmt is MISSING:
        return MISSING
    if "basic_user" in table.data:
        return table.error(name, "cannot be combined with basic_user (basic_user makes the "
                                 "header Basic base64(user:token)); remove one of them")
    try:
        template(fmt)
        validate_value(fmt.replace("{token}", "x"), "format")
    except AwstokenError as exc:
        return table.error(name, f'expected a format with one "{{token}}": {exc}')
    return fmt


def basic_user(table: Table, name: str) -> str | Any:
    """``basic_user``: a user name fit for Basic authentication."""
    user = table.string(name, expected="a user name")
    if user is MISSING:
        return MISSING
    try:
        basic_auth(user)
    except AwstokenError:
        return table.error(name, "expected a user name without ':' or control characters")
    return user


def targets_error(fmt: str, token: Table, url: object) -> str | None:
    """Why a file of format ``fmt`` would have no registry or URL to write, or None."""
    if url is not None:
        return None
    data = token.data
    if fmt == "docker-config":
        implied = data.get("source") == "ecr" and "registry_id" in data and "region" in data
        return None if "registries" in data or implied else (
            "needs registries = [...] on the token (or an ecr source with registry_id and region)")
    return None if "indexes" in data else "needs indexes = [...] on the token"


def sink_format(table: Table, name: str) -> str | Any:
    """``sink_format``: merge an entry into ``sink``, which must be there, as its targets."""
    if name not in table.data:
        return MISSING
    fmt = table.choice(name, _formats())
    if fmt is MISSING:
        return MISSING
    if "sink" not in table.data:
        return table.error(name, "needs sink = PATH (the file to merge the entry into)")
    problem = targets_error(fmt, table, None)
    return table.error(name, f"{fmt!r} {problem}") if problem else fmt


def token_listen(table: Table, name: str) -> Any:
    """``server.token_listen``: unix sockets (relative to the file) and loopback addresses."""
    return table.get(name, lambda value: checks.parse_token_listen(value, table.base_dir),
                     checks.ENDPOINT_EXPECTED)


def writes(cls: Callable[..., T]) -> Reader:
    """``writes = [{path, format, url}, ...]``: each entry read as a ``cls``."""
    def read(table: Table, name: str) -> tuple[T, ...] | Any:
        value = table.data.get(name)
        if value is None:
            return MISSING
        if not isinstance(value, list) or not value:
            return table.error(name, 'expected an array of tables like [{path = "~/.npmrc", '
                                     'format = "npmrc"}]')
        found = (_write(cls, table, f"{name}[{i}]", item) for i, item in enumerate(value))
        return tuple(item for item in found if item is not None)
    return read


def _write(cls: Callable[..., T], token: Table, key: str, item: object) -> T | None:
    if not isinstance(item, dict):
        token.error(key, f"expected a table, got {kind(item)}")
        return None
    sub = Table(token.report, token.key(key), item, token.base_dir)
    sub.unknown(keys_of(cls))
    values = read_fields(cls, sub)
    if "format" in values:
        problem = targets_error(values["format"], token, values.get("url"))
        if problem:
            sub.error("format", f"{values.pop('format')!r} {problem} (or url = ...)")
    return make(cls, values)


def cache(cls: Callable[..., T]) -> Reader:
    """``cache = "DIR"`` or ``cache = { path = "DIR", max_size = "10G" }``, as a ``cls``."""
    def read(table: Table, name: str) -> T | Any:
        if name not in table.data:
            return MISSING
        value = table.data[name]
        if isinstance(value, str):
            path = table.file_path(name)
            return MISSING if path is MISSING else cls(path=path)
        if not isinstance(value, dict):
            return table.error(name, 'expected a directory path or a table '
                                     f'{{ path = "DIR", max_size = "10G" }}, got {kind(value)}')
        sub = Table(table.report, table.key(name), value, table.base_dir)
        sub.unknown(keys_of(cls))
        found = make(cls, read_fields(cls, sub))
        return MISSING if found is None else found
    return read
