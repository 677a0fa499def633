"""The configuration file (TOML) to :class:`Settings`, validated before anything starts.

Every problem is reported as ``FILE: key.path: what was expected``; all problems of a file
are collected and raised together as one :class:`ConfigError` (one message per line).
Relative paths in the file are taken relative to the file's directory.

The keys of each table, and how each is read, are declared once, by the fields of the
settings classes (:mod:`.settings`, :mod:`.options`); this module reads the tables in order
and checks what involves several keys or tables (a route's token exists, the token endpoint
has a listener of its own).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .._errors import AwstokenError, ConfigError
from .._token import check_name
from .checks import parse_listen, parse_public_url, parse_size, parse_token_listen
from .options import OPTIONS, SOURCES, CommandOptions, SourceOptions, SourceType
from .reading import (
    MISSING,
    Report,
    Table,
    keys_of,
    kind,
    make,
    only_with,
    parse_duration,
    read_fields,
    suggest,
)
from .settings import (
    RouteSettings,
    ServerSettings,
    Settings,
    StorageSettings,
    StorageType,
    TokenSettings,
)

# -- [storage] -------------------------------------------------------------------------------

_STORAGE_TYPES: tuple[StorageType, ...] = ("memory", "file", "redis")


def _storage(table: Table | None) -> StorageSettings:
    if table is None:
        return StorageSettings()
    kind_ = cast(StorageType, table.choice("type", _STORAGE_TYPES))
    kind_ = "file" if kind_ is MISSING else kind_
    elsewhere = {key: f"only used with type = {types[0]!r} (this storage is {kind_!r})"
                 for key, types in only_with(StorageSettings).items() if kind_ not in types}
    table.unknown(("type", *keys_of(StorageSettings, kind_)), elsewhere)
    values = read_fields(StorageSettings, table, kind_)
    if kind_ == "redis":
        _redis_tls(table, values)
    return StorageSettings(type=kind_, **values)


def _redis_tls(table: Table, values: dict[str, Any]) -> None:
    """The TLS files go with a rediss:// URL, and a key with its certificate."""
    url = values.get("url")
    for key in ("ca_file", "cert_file", "key_file"):
        if key in values and url is not None and not url.startswith("rediss://"):
            del values[key]
            table.error(key, "only used with a rediss:// URL (TLS)")
    if "key_file" in values and "cert_file" not in values:
        del values["key_file"]
        table.error("key_file", "needs cert_file (the client certificate)")


# -- [tokens.NAME] -----------------------------------------------------------------------------

#: Keys every token accepts, whatever its source.
TOKEN_KEYS: tuple[str, ...] = ("source", *keys_of(TokenSettings))


def _source(table: Table, aws_ok: bool) -> SourceType | None:
    """The token's source (None when it is invalid, reported); unknown keys reported."""
    source = cast(SourceType, table.choice("source", SOURCES))
    if source is MISSING:
        if "source" in table.data:
            return None
        source = "command"
    if source != "command" and not aws_ok:
        table.error("source", f"source {source!r} needs botocore: pip install 'awstoken[aws]'")
    elsewhere: dict[str, str] = {}
    own = keys_of(OPTIONS[source])
    for other, cls in OPTIONS.items():
        for key in keys_of(cls):
            if key not in own:
                elsewhere.setdefault(key, f"only used with source = {other!r} (this token's "
                                          f"source is {source!r})")
    table.unknown((*TOKEN_KEYS, *own), elsewhere)
    return source


def _token(report: Report, name: str, table: Table, aws_ok: bool) -> TokenSettings | None:
    try:
        check_name(name)
    except AwstokenError:
        report.error(table.path, "invalid token name: use 1 to 128 letters, digits, '_', '.' or "
                                 "'-', not starting with '.' or '-'")
        return None
    source = _source(table, aws_ok)
    if source is None:
        return None
    cls = OPTIONS[source]
    if cls is CommandOptions and "expiry_path" in table.data and "token_path" not in table.data:
        table.error("expiry_path", "needs token_path too (where the token is in the JSON output)")
    options = cast(SourceOptions | None, make(cls, read_fields(cls, table)))
    values = read_fields(TokenSettings, table)
    return None if options is None else TokenSettings(name=name, options=options, **values)


def _tokens(report: Report, table: Table | None, aws_ok: bool) -> tuple[dict[str, TokenSettings],
                                                                        set[str]]:
    """The valid tokens, and every token name the file declares (valid or not)."""
    tokens: dict[str, TokenSettings] = {}
    if table is None:
        return tokens, set()
    for name in table.data:
        sub = table.sub(name)
        if sub is None:
            continue
        token = _token(report, name, sub, aws_ok)
        if token is not None:
            tokens[name] = token
    return tokens, set(table.data)


# -- [server] ----------------------------------------------------------------------------------


def _server(table: Table | None) -> ServerSettings:
    if table is None:
        return ServerSettings()
    table.unknown(keys_of(ServerSettings))
    server = ServerSettings(**read_fields(ServerSettings, table))
    for key, other in (("listen", server.listen), ("admin_listen", server.admin_listen)):
        if other is not None and other[1] != 0 and other in server.token_listen:
            table.error("token_listen", f"{other[0]}:{other[1]} is also server.{key}; the token "
                                        "endpoint needs a listener of its own")
            return dataclasses.replace(server, token_listen=())
    return server


# -- [[routes]] --------------------------------------------------------------------------------


def _routes(report: Report, value: object, token_names: set[str],
            base_dir: Path) -> tuple[RouteSettings, ...]:
    if not isinstance(value, list):
        report.error("routes", f"expected an array of tables ([[routes]]), got {kind(value)}")
        return ()
    routes = []
    seen: dict[str, int] = {}
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            report.error(f"routes[{i}]", f"expected a table, got {kind(item)}")
            continue
        table = Table(report, f"routes[{i}]", item, base_dir)
        table.unknown(keys_of(RouteSettings))
        values = read_fields(RouteSettings, table)
        _route_links(table, values, seen, token_names)
        route = make(RouteSettings, values)
        if route is not None:
            routes.append(route)
    return tuple(routes)


def _route_links(table: Table, values: dict[str, Any], seen: dict[str, int],
                 token_names: set[str]) -> None:
    """A route's prefix is its own, and its token is one of the file's."""
    prefix = values.get("prefix")
    if prefix is not None:
        norm = prefix.rstrip("/") or "/"
        if norm in seen:
            del values["prefix"]
            table.error("prefix", f"{prefix!r} duplicates the prefix of routes[{seen[norm]}]")
        else:
            seen[norm] = int(table.path.removeprefix("routes[").removesuffix("]"))
    token = values.get("token")
    if token is not None and token not in token_names:
        del values["token"]
        table.error("token", f"no [tokens.{token}] table in this file"
                    + suggest(token, token_names))


# -- the file ----------------------------------------------------------------------------------

TOP_KEYS = tuple(f.name for f in dataclasses.fields(Settings) if f.name != "path")


def _aws_ok(tokens: object) -> bool:
    """Whether botocore is there, asked only when a token has a native source: a file of
    command sources (a credential door's hot path) does not import awstoken.aws."""
    if not isinstance(tokens, dict) or all(
            not isinstance(t, dict) or t.get("source", "command") == "command"
            for t in tokens.values()):
        return True
    from ..aws import botocore_available

    return botocore_available()


def load(path: str | os.PathLike[str]) -> Settings:
    """Read and validate the configuration file at ``path``; raise :class:`ConfigError`.

    The error lists every problem found, one per line, each naming the file and the key.
    """
    file = os.fspath(path)
    try:
        data = Path(file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the configuration file: "
                          f"{exc.strerror or type(exc).__name__}") from None
    return loads(data, file=file, base_dir=Path(file).resolve().parent)


def loads(text: str | bytes, *, file: str = "<config>", base_dir: Path | None = None) -> Settings:
    """Validate configuration ``text``; ``file`` names it in messages, relative paths are
    taken relative to ``base_dir`` (default: the current directory)."""
    report = Report(file)
    try:
        raw = tomllib.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    root = Table(report, "", raw, base_dir or Path.cwd())
    root.unknown(TOP_KEYS)
    storage = _storage(root.sub("storage"))
    tokens, names = _tokens(report, root.sub("tokens"), _aws_ok(raw.get("tokens")))
    server = _server(root.sub("server"))
    routes = _routes(report, raw["routes"], names, root.base_dir) if "routes" in raw else ()
    if server.token_listen and not names:
        report.error("server.token_listen", "no [tokens.NAME] table in this file: the token "
                                            "endpoint would have nothing to serve")
    report.raise_if_any()
    return Settings(storage=storage, tokens=tokens, server=server, routes=routes, path=file)


# The builders live in build.py; re-exported (on first access, so that loading a file does
# not import the rotator, hooks and storages) so `from awstoken._config.load import build_*` works.
if TYPE_CHECKING:
    from .build import build_keeper, build_source, build_storage, build_transform, start_rotators

_BUILDERS = frozenset({"build_keeper", "build_source", "build_storage", "build_transform",
                       "start_rotators"})


def __getattr__(name: str) -> Any:
    if name in _BUILDERS:
        from . import build as _build

        return getattr(_build, name)
    raise AttributeError(f"module 'awstoken._config.load' has no attribute {name!r}")


__all__ = ["TOKEN_KEYS", "TOP_KEYS", "build_keeper", "build_source", "build_storage",
           "build_transform", "load", "loads", "parse_duration", "parse_listen",
           "parse_public_url", "parse_size", "parse_token_listen", "start_rotators"]
