"""The configuration file (TOML) to :class:`Settings`, validated before anything starts.

Every problem is reported as ``FILE: key.path: what was expected``; all problems of a file
are collected and raised together as one :class:`ConfigError` (one message per line).
Relative paths in the file are taken relative to the file's directory.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .._errors import AwstokenError, ConfigError
from .._logging import FORMATS, parse_level
from .._sources import jsonout as _jsonout
from .._sources.transforms import basic_auth, template, validate_value
from ..storage._base import check_name
from .settings import (
    Address,
    CacheSettings,
    FileWrite,
    RouteSettings,
    ServerSettings,
    Settings,
    SourceType,
    StorageSettings,
    StorageType,
    TokenSettings,
)

T = TypeVar("T")


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


#: A key that is absent, or present with a value that was already reported as an error.
MISSING: Any = _Missing()

# -- durations ---------------------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_EXAMPLE = 'a number of seconds or a string like "90s", "15m", "6h", "1d" or "1h30m"'


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``"90s"``, ``"15m"``, ``"6h"``, ``"1h30m"``.

    Raises ValueError (without echoing anything but the value's shape).
    """
    if isinstance(value, bool):
        raise ValueError("a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"{value!r}") from None
            units = [u for _, u in parts]
            if len(set(units)) != len(units):
                raise ValueError(f"{value!r} (a unit appears twice)") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError(_kind(value))
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} (not finite)")
    return seconds


# -- the error collector ---------------------------------------------------------------------


class _Report:
    """Collects messages ``FILE: key: problem`` for one file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.messages: list[str] = []

    def error(self, key: str, problem: str) -> Any:
        self.messages.append(f"{self.file}: {key}: {problem}" if key else f"{self.file}: {problem}")
        return MISSING

    def raise_if_any(self) -> None:
        if self.messages:
            raise ConfigError("\n".join(self.messages))


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _suggest(key: str, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Table:
    """One TOML table being read: typed getters that report into a :class:`_Report`."""

    def __init__(self, report: _Report, path: str, data: Mapping[str, Any],
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
                self.error(name, "unknown key" + _suggest(name, allowed))

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
            return self.error(name, f"expected {expected}, got {_kind(value)}{got}")

    # Typed getters ------------------------------------------------------------------------

    def string(self, name: str, *, required: bool = False, pattern: re.Pattern[str] | None = None,
               expected: str = "a non-empty string", show: bool = True) -> str | Any:
        def check(value: Any) -> str:
            if not isinstance(value, str) or not value:
                raise ValueError("empty" if value == "" else "")
            if pattern is not None and not pattern.fullmatch(value):
                raise ValueError(repr(value) if show else "")
            return value
        return self.get(name, check, expected, required=required)

    def boolean(self, name: str) -> bool | Any:
        def check(value: Any) -> bool:
            if not isinstance(value, bool):
                raise ValueError("")
            return value
        return self.get(name, check, "true or false")

    def integer(self, name: str, low: int, high: int | None = None, *,
                required: bool = False) -> int | Any:
        expected = (f"an integer from {low} to {high}" if high is not None
                    else f"an integer of at least {low}")

        def check(value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("")
            if value < low or (high is not None and value > high):
                raise ValueError(str(value))
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
            return self.error(name, f"expected a duration: {_DURATION_EXAMPLE}; got {exc}")
        if positive and seconds <= 0:
            return self.error(name, f"expected a positive duration, got {value!r}")
        if seconds < minimum:
            return self.error(name, f"expected at least {minimum:g} seconds, got {value!r}")
        if maximum is not None and seconds > maximum:
            return self.error(name, f"expected at most {maximum:g} seconds, got {value!r}")
        return seconds

    def choice(self, name: str, choices: tuple[str, ...], *, required: bool = False) -> str | Any:
        expected = " or ".join(repr(c) for c in choices)

        def check(value: Any) -> str:
            if not isinstance(value, str):
                raise ValueError("")
            if value not in choices:
                raise ValueError(repr(value) + _suggest(value, choices))
            return value
        return self.get(name, check, expected, required=required)

    def file_path(self, name: str, *, must_exist: bool = False) -> str | Any:
        value = self.string(name, expected="a file path")
        if value is MISSING:
            return MISSING
        path = Path(os.path.expanduser(value))
        if not path.is_absolute():
            path = self.base_dir / path
        if must_exist and not path.is_file():
            return self.error(name, f"expected an existing file, but {str(path)!r} is not one")
        return str(path)

    def sub(self, name: str) -> _Table | None:
        """The sub-table ``name`` (None when absent or not a table, reported)."""
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, dict):
            self.error(name, f"expected a table, got {_kind(value)}")
            return None
        return _Table(self.report, self.key(name), value, self.base_dir)


def _given(**values: Any) -> dict[str, Any]:
    """The keyword arguments whose values were given and valid."""
    return {k: v for k, v in values.items() if v is not MISSING}


# -- [storage] -------------------------------------------------------------------------------

_STORAGE_TYPES: tuple[StorageType, ...] = ("memory", "file", "redis")
_STORAGE_KEYS: dict[str, tuple[str, ...]] = {
    "memory": (),
    "file": ("path",),
    "redis": ("url", "password_env", "prefix", "lease", "ca_file", "cert_file", "key_file"),
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_EXPECTED = "the name of an environment variable (letters, digits and '_')"


def _storage(table: _Table | None) -> StorageSettings:
    if table is None:
        return StorageSettings()
    kind = table.choice("type", _STORAGE_TYPES)
    kind = "file" if kind is MISSING else kind
    elsewhere = {}
    for other, keys in _STORAGE_KEYS.items():
        for key in keys:
            if key not in _STORAGE_KEYS[kind]:
                elsewhere[key] = f"only used with type = {other!r} (this storage is {kind!r})"
    table.unknown(("type", *_STORAGE_KEYS[kind]), elsewhere)
    if kind == "file":
        path = table.string("path", expected="a directory path")
        if path is not MISSING:
            resolved = Path(os.path.expanduser(path))
            path = str(resolved if resolved.is_absolute() else table.base_dir / resolved)
        return StorageSettings(**_given(type=kind, path=path))
    if kind == "redis":
        url = table.get("url", _redis_url, "a redis://, rediss:// or unix:// URL", required=True)
        tls = {key: table.file_path(key, must_exist=True)
               for key in ("ca_file", "cert_file", "key_file")}
        for key, value in tls.items():
            if value is not MISSING and url is not MISSING and not url.startswith("rediss://"):
                tls[key] = table.error(key, "only used with a rediss:// URL (TLS)")
        if tls["key_file"] is not MISSING and tls["cert_file"] is MISSING:
            tls["key_file"] = table.error("key_file", "needs cert_file (the client certificate)")
        return StorageSettings(**_given(
            type=kind, url=url, **tls,
            password_env=table.string("password_env", pattern=_ENV_NAME, expected=_ENV_EXPECTED),
            prefix=table.string("prefix", pattern=re.compile(r"[^\s]{1,64}"),
                                expected="a key prefix (1 to 64 characters, no spaces)"),
            lease=table.duration("lease", minimum=1.0)))
    return StorageSettings(type="memory")


def _redis_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        # Never echo the URL: it may carry a password.
        raise ValueError("not a redis URL")
    return value


# -- [tokens.NAME] -----------------------------------------------------------------------------

_SOURCES: tuple[SourceType, ...] = ("command", "ecr", "ecr-public", "codeartifact", "eks", "rds")
_AWS_KEYS = ("region", "profile", "role_arn")
_SOURCE_KEYS: dict[str, tuple[str, ...]] = {
    "command": ("command", "token_path", "expiry_path"),
    "ecr": ("registry_id", *_AWS_KEYS),
    "ecr-public": _AWS_KEYS,
    "codeartifact": ("domain", "domain_owner", "duration", *_AWS_KEYS),
    "eks": ("cluster", *_AWS_KEYS),
    "rds": ("host", "port", "user", *_AWS_KEYS),
}
#: Keys every token accepts, whatever its source.
TOKEN_KEYS: tuple[str, ...] = ("source", "format", "basic_user", "interval", "retry", "timeout",
                                "sink", "sink_content", "sink_mode", "on_rotate", "hook_timeout",
                                "hook_env", "registries", "indexes", "sink_format", "writes")

_ACCOUNT = re.compile(r"\d{12}")
_ACCOUNT_EXPECTED = 'a 12-digit AWS account id as a string (quoted: "123456789012")'
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_DOMAIN = re.compile(r"[a-z][a-z0-9-]{0,48}[a-z0-9]")
_CLUSTER = re.compile(r"[0-9A-Za-z][A-Za-z0-9_-]{0,99}")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _token(report: _Report, name: str, table: _Table, aws_ok: bool) -> TokenSettings | None:
    try:
        check_name(name)
    except AwstokenError:
        report.error(table.path, "invalid token name: use 1 to 128 letters, digits, '_', '.' or "
                                 "'-', not starting with '.' or '-'")
        return None
    source: SourceType = cast(SourceType, table.choice("source", _SOURCES))
    if source is MISSING:
        if "source" in table.data:
            return None
        source = "command"
    if source != "command" and not aws_ok:
        table.error("source", f"source {source!r} needs botocore: pip install 'awstoken[aws]'")
    elsewhere: dict[str, str] = {}
    for other, keys in _SOURCE_KEYS.items():
        for key in keys:
            if key not in _SOURCE_KEYS[source]:
                elsewhere.setdefault(key, f"only used with source = {other!r} (this token's "
                                          f"source is {source!r})")
    table.unknown((*TOKEN_KEYS, *_SOURCE_KEYS[source]), elsewhere)
    options = _OPTION_READERS[source](table)
    if source != "command":
        options.update(_given(
            region=table.string("region", pattern=_REGION, expected='an AWS region like "us-east-1"'),
            profile=table.string("profile", expected="an AWS profile name"),
            role_arn=table.string("role_arn", pattern=_ROLE_ARN, expected="an IAM role ARN like "
                                  '"arn:aws:iam::123456789012:role/name"')))
    return TokenSettings(name=name, source=source, options=options, **_given(
        format=_format(table), basic_user=_basic_user(table), interval=table.duration("interval"),
        retry=table.duration("retry"), timeout=table.duration("timeout"),
        sink=table.file_path("sink"), sink_content=table.choice("sink_content", ("value", "raw")),
        sink_mode=table.get("sink_mode", _private_mode, _MODE_EXPECTED),
        on_rotate=table.get("on_rotate", _argv, "a non-empty list of strings (an argv, run "
                            "without a shell; the token arrives on stdin)"),
        hook_timeout=table.duration("hook_timeout"),
        hook_env=table.get("hook_env", _env_names, "a list of environment variable names"),
        registries=table.get("registries", _registries, 'an array of registry hosts like '
                             '["123456789012.dkr.ecr.us-east-1.amazonaws.com", "registry:5000"]'),
        indexes=table.get("indexes", _indexes, 'an array of index URLs like '
                          '["https://pypi.example.com/simple/"]'),
        sink_format=_sink_format(table),
        writes=_writes(table)))


def _env_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
            isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) for v in value):
        raise ValueError("")
    return tuple(value)


_FORMATS_EXPECTED = ('one of "docker-config", "pip-conf", "pypirc", "npmrc", "netrc"')


def _targets_error(fmt: str, table: _Table, url: object) -> str | None:
    """Why a file of format ``fmt`` would have no registry or URL to write, or None."""
    if url is not None:
        return None
    if fmt == "docker-config":
        opts = table.data
        implied = opts.get("source") == "ecr" and "registry_id" in opts and "region" in opts
        return None if "registries" in opts or implied else (
            "needs registries = [...] on the token (or an ecr source with registry_id and region)")
    return None if "indexes" in table.data else "needs indexes = [...] on the token"


def _sink_format(table: _Table) -> str | Any:
    if "sink_format" not in table.data:
        return MISSING
    from .._rotation.formats import FORMATS

    fmt = table.choice("sink_format", FORMATS)
    if fmt is MISSING:
        return MISSING
    if "sink" not in table.data:
        return table.error("sink_format", "needs sink = PATH (the file to merge the entry into)")
    problem = _targets_error(fmt, table, None)
    return table.error("sink_format", f"{fmt!r} {problem}") if problem else fmt


def _writes(table: _Table) -> tuple[FileWrite, ...] | Any:
    value = table.data.get("writes")
    if value is None:
        return MISSING
    from .._rotation.formats import FORMATS

    if not isinstance(value, list) or not value:
        return table.error("writes", 'expected an array of tables like [{path = "~/.npmrc", '
                                     'format = "npmrc"}]')
    writes = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            table.error(f"writes[{i}]", f"expected a table, got {_kind(item)}")
            continue
        sub = _Table(table.report, table.key(f"writes[{i}]"), item, table.base_dir)
        sub.unknown(("path", "format", "url"))
        path = sub.file_path("path")
        if "path" not in item:
            sub.error("path", "missing; expected a file path")
        fmt = sub.choice("format", FORMATS, required=True)
        url = sub.get("url", _write_url, "a registry host or an http(s) URL without credentials")
        if fmt is not MISSING:
            problem = _targets_error(fmt, table, None if url is MISSING else url)
            if problem:
                fmt = sub.error("format", f"{fmt!r} {problem} (or url = ...)")
        if path is not MISSING and fmt is not MISSING and not ("url" in item and url is MISSING):
            writes.append(FileWrite(path, fmt, None if url is MISSING else url))
    return tuple(writes)


def _write_url(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("")
    if "://" in value:
        return _indexes([value])[0]
    return _registries([value])[0]


_REGISTRY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(:\d{1,5})?")


def _registries(value: Any) -> tuple[str, ...]:
    """Registry hosts (``host`` or ``host:port``, as docker names them), lowercased."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError("")
    for item in value:
        if not _REGISTRY.fullmatch(item):
            raise ValueError(f"{item!r} is not a host or host:port (no scheme, no path)")
    return tuple(v.lower() for v in value)


def _indexes(value: Any) -> tuple[str, ...]:
    """Index URL prefixes (http or https, no credentials in them)."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError("")
    for item in value:
        parts = urllib.parse.urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{item!r} is not an http:// or https:// URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("a URL has credentials in it; awstoken supplies them")
    return tuple(value)


_MODE_EXPECTED = ('permissions like "0600" or "0640" (a string of octal digits, or 0o640), '
                  'with nothing for other users')


def _private_mode(value: Any) -> int:
    """File permissions from ``"0640"`` or ``0o640``; other users get nothing (it is a token)."""
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value):
        mode = int(value, 8)
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o777:
        mode = value
    else:
        raise ValueError(repr(value) if isinstance(value, str | int) else "")
    if mode & 0o007:
        raise ValueError(f"{mode:04o} gives other users access to a token")
    return mode


def _argv(value: Any) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and v for v in value)):
        raise ValueError("")
    return tuple(value)


def _format(table: _Table) -> str | Any:
    fmt = table.string("format", expected='a format with one "{token}", like "Basic {token}"')
    if fmt is MISSING:
        return MISSING
    if "basic_user" in table.data:
        return table.error("format", "cannot be combined with basic_user (basic_user makes the "
                                     "header Basic base64(user:token)); remove one of them")
    try:
        template(fmt)
        validate_value(fmt.replace("{token}", "x"), "format")
    except AwstokenError as exc:
        return table.error("format", f'expected a format with one "{{token}}": {exc}')
    return fmt


def _basic_user(table: _Table) -> str | Any:
    user = table.string("basic_user", expected="a user name")
    if user is MISSING:
        return MISSING
    try:
        basic_auth(user)
    except AwstokenError:
        return table.error("basic_user", "expected a user name without ':' or control characters")
    return user


def _command_options(table: _Table) -> dict[str, Any]:
    if "expiry_path" in table.data and "token_path" not in table.data:
        table.error("expiry_path", "needs token_path too (where the token is in the JSON output)")
    return _given(
        command=table.get("command", _command, "a command line (string) or an argv array of "
                          "non-empty strings" + ("" if "source" in table.data else
                                                 ", or a source = " + " | ".join(_SOURCES[1:])),
                          required=True),
        token_path=table.get("token_path", _path_check, "a JSON path like "
                             "'authorizationData[0].authorizationToken'"),
        expiry_path=table.get("expiry_path", _path_check, "a JSON path like "
                              "'authorizationData[0].expiresAt'"))


def _command(value: Any) -> str | tuple[str, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("empty")
        return value
    if isinstance(value, list) and value and all(isinstance(a, str) and a for a in value):
        return tuple(value)
    raise ValueError("")


def _path_check(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("")
    try:
        _jsonout.parse_path(value)
    except ConfigError:
        raise ValueError(repr(value)) from None
    return value


def _ecr_options(table: _Table) -> dict[str, Any]:
    return _given(registry_id=table.string("registry_id", pattern=_ACCOUNT,
                                           expected=_ACCOUNT_EXPECTED))


def _ecr_public_options(table: _Table) -> dict[str, Any]:
    return {}


def _codeartifact_options(table: _Table) -> dict[str, Any]:
    duration = table.duration("duration", positive=False)
    if duration is not MISSING and duration != 0 and not 900 <= duration <= 43200:
        duration = table.error("duration", "expected 0 (the role session's remaining time) or "
                                           f"15m to 12h, got {table.data['duration']!r}")
    elif duration is not MISSING and duration != int(duration):
        duration = table.error("duration", "expected a whole number of seconds")
    return _given(
        domain=table.string("domain", required=True, pattern=_DOMAIN,
                            expected="a CodeArtifact domain name (2 to 50 lowercase letters, "
                                     "digits and '-')"),
        domain_owner=table.string("domain_owner", pattern=_ACCOUNT, expected=_ACCOUNT_EXPECTED),
        duration=duration if duration is MISSING else int(duration))


def _eks_options(table: _Table) -> dict[str, Any]:
    return _given(cluster=table.string("cluster", required=True, pattern=_CLUSTER,
                                       expected="an EKS cluster name (letters, digits, '-', '_')"))


def _rds_options(table: _Table) -> dict[str, Any]:
    return _given(
        host=table.string("host", required=True, pattern=_HOST,
                          expected="a database host name (no scheme, no port)"),
        port=table.integer("port", 1, 65535, required=True),
        user=table.string("user", required=True, expected="a database user name"))


_OPTION_READERS: dict[str, Callable[[_Table], dict[str, Any]]] = {
    "command": _command_options,
    "ecr": _ecr_options,
    "ecr-public": _ecr_public_options,
    "codeartifact": _codeartifact_options,
    "eks": _eks_options,
    "rds": _rds_options,
}


def _tokens(report: _Report, table: _Table | None, aws_ok: bool) -> tuple[dict[str, TokenSettings],
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

SERVER_KEYS = ("listen", "workers", "admin_listen", "htpasswd", "bearer_tokens_env", "allow",
               "ca_file", "verify_tls", "connect_timeout", "read_timeout", "shutdown_timeout",
               "access_log", "token_listen", "token_socket_mode", "token_max_age",
               "token_secret_env", "engine", "log_level", "log_format", "public_url",
               "max_connections", "head_timeout", "keepalive_timeout", "token_hosts",
               "refresh_wait", "refresh_min_gap", "replay_max_bytes", "replay_spool_max_bytes",
               "max_index_bytes")
#: The request paths ``server.engine`` may name. The aiohttp request path was retired
#: (docs/benchmarks.md, "Why one engine"); the key stays so existing files keep loading.
ENGINES = ("fast",)
_LISTEN_EXPECTED = '"host:port", like "127.0.0.1:8080" or "[::1]:8080"'


def _engine(value: object) -> str:
    if value not in ENGINES:
        raise ValueError(repr(value))
    return "fast"


def parse_listen(value: object) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` to ``(host, port)``; raise ValueError."""
    if not isinstance(value, str):
        raise ValueError("")
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(repr(value))
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise ValueError(repr(value) + (" has no host" if sep else ""))
        if ":" in host:
            raise ValueError(f"{value!r}: put an IPv6 address in brackets")
        if not _HOST.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name or address")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not 0 to 65535")
    return host, int(port)


def _listen_or_off(value: object) -> tuple[str, int] | None:
    return None if value == "off" else parse_listen(value)


#: The longest unix socket path Linux accepts (sun_path is 108 bytes with the final NUL).
UNIX_PATH_MAX = 107
_ENDPOINT_EXPECTED = ('"unix:/path/to/token.sock" or a loopback "127.0.0.1:PORT" or '
                          '"[::1]:PORT", or an array of them')


def parse_token_listen(value: object, base_dir: Path) -> tuple[Address, ...]:
    """``server.token_listen``: unix sockets (``unix:PATH``) and loopback addresses only.

    Anyone who can connect to the token endpoint can read tokens, so it never binds a
    routable address; a relative socket path is taken relative to ``base_dir``.
    """
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("an empty array")
    addresses: list[Address] = []
    for item in items:
        address = _token_address(item, base_dir)
        if address in addresses:
            raise ValueError(f"{item!r} appears twice")
        addresses.append(address)
    return tuple(addresses)


def _token_address(value: object, base_dir: Path) -> Address:
    if not isinstance(value, str):
        raise ValueError("")
    if value.startswith("unix:"):
        raw = value.removeprefix("unix:")
        if not raw:
            raise ValueError(f"{value!r} has no path")
        path = Path(os.path.expanduser(raw))
        path = path if path.is_absolute() else base_dir / path
        if len(os.fsencode(str(path))) > UNIX_PATH_MAX:
            raise ValueError(f"the socket path {str(path)!r} is longer than {UNIX_PATH_MAX} "
                             "bytes, the limit for unix sockets")
        return str(path)
    host, port = parse_listen(value)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise ValueError(f"{host!r} is a name: give a loopback address such as 127.0.0.1 or "
                         "[::1] (or a unix socket)") from None
    if not loopback:
        raise ValueError(f"{host} is not a loopback address; whoever reaches the token "
                         "endpoint can read tokens: use a unix socket or 127.0.0.1")
    return host, port


def _networks(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("")
    nets = []
    for text in value:
        try:
            nets.append(str(ipaddress.ip_network(text, strict=True)))
        except ValueError as exc:
            hint = ""
            if "host bits set" in str(exc):
                hint = f"; did you mean {str(ipaddress.ip_network(text, strict=False))!r}?"
            raise ValueError(f"{text!r} is not a network{hint}") from None
    return tuple(nets)


def _server(table: _Table | None) -> ServerSettings:
    if table is None:
        return ServerSettings()
    table.unknown(SERVER_KEYS)
    listen = table.get("listen", parse_listen, _LISTEN_EXPECTED)
    admin_listen = table.get("admin_listen", _listen_or_off, _LISTEN_EXPECTED + ' or "off"')
    token_listen = table.get("token_listen", lambda v: parse_token_listen(v, table.base_dir),
                             _ENDPOINT_EXPECTED)
    if token_listen is not MISSING:
        defaults = ServerSettings()
        for key, other in (("listen", listen), ("admin_listen", admin_listen)):
            other = getattr(defaults, key) if other is MISSING else other
            if other is not None and other[1] != 0 and other in token_listen:
                token_listen = table.error("token_listen", f"{other[0]}:{other[1]} is also "
                                           f"server.{key}; the token endpoint needs a listener "
                                           "of its own")
                break
    return ServerSettings(**_given(
        listen=listen,
        workers=table.integer("workers", 1, 256),
        admin_listen=admin_listen,
        token_listen=token_listen,
        token_socket_mode=table.get("token_socket_mode", _private_mode, _MODE_EXPECTED),
        token_max_age=table.duration("token_max_age", positive=False, maximum=300.0),
        token_secret_env=table.string("token_secret_env", pattern=_ENV_NAME,
                                      expected=_ENV_EXPECTED),
        htpasswd=table.file_path("htpasswd", must_exist=True),
        bearer_tokens_env=table.string("bearer_tokens_env", pattern=_ENV_NAME,
                                       expected=_ENV_EXPECTED),
        allow=table.get("allow", _networks, 'an array of networks like ["10.0.0.0/8", "::1/128"]'),
        ca_file=table.file_path("ca_file", must_exist=True),
        verify_tls=table.boolean("verify_tls"),
        connect_timeout=table.duration("connect_timeout"),
        read_timeout=table.duration("read_timeout"),
        shutdown_timeout=table.duration("shutdown_timeout", positive=False),
        access_log=table.boolean("access_log"),
        engine=table.get("engine", _engine, "'fast' (the aiohttp request path was retired)"),
        log_level=table.get("log_level", _log_level, '"debug", "info", "warning", "error" or '
                            '"critical", optionally followed by ",LOGGER=LEVEL" parts'),
        log_format=table.choice("log_format", FORMATS),
        token_hosts=table.get("token_hosts", _host_names,
                              'an array of host names like ["awstoken"] or ["awstoken:8081"]'),
        max_connections=table.integer("max_connections", 1, 1_000_000),
        head_timeout=table.duration("head_timeout"),
        keepalive_timeout=table.duration("keepalive_timeout"),
        public_url=table.get("public_url", parse_public_url,
                             'the proxy\'s URL as clients know it, like "https://registry.example"'),
        refresh_wait=table.duration("refresh_wait", positive=False, maximum=300.0),
        refresh_min_gap=table.duration("refresh_min_gap", positive=False, maximum=3600.0),
        replay_max_bytes=table.integer("replay_max_bytes", 0, 1 << 30),
        replay_spool_max_bytes=table.integer("replay_spool_max_bytes", 0, 1 << 40),
        max_index_bytes=table.integer("max_index_bytes", 1024, 1 << 32),
    ))


def _log_level(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("")
    try:
        parse_level(value)
    except ConfigError as exc:
        raise ValueError(str(exc).removeprefix("log level ")) from None
    return value


_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def _host_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("")
    for name in value:
        if not _HOST_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a host name (with an optional port)")
    return tuple(name.lower() for name in value)


def parse_public_url(value: object) -> str:
    """``server.public_url``: ``http(s)://host[:port]``, nothing more; raise ValueError."""
    if not isinstance(value, str):
        raise ValueError("")
    parts = urllib.parse.urlsplit(value)
    try:
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(repr(value))
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{value!r}: give only scheme, host and port")
    return f"{parts.scheme}://{parts.netloc}"


# -- [[routes]] --------------------------------------------------------------------------------

ROUTE_KEYS = ("prefix", "upstream", "token", "header", "strip_prefix", "redirects",
              "follow_http", "follow_private", "cache")
CACHE_KEYS = ("path", "max_size")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)
_SIZE_EXPECTED = 'a number of bytes or a string like "500M", "10G" (powers of 1024)'


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like ``"500M"``, ``"10G"``, ``"1.5GiB"``."""
    if isinstance(value, bool):
        raise ValueError("a boolean")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError(repr(value))
        scale = 1024 ** " KMGT".index(match.group(2).upper() or " ")
        size = int(float(match.group(1)) * scale)
    else:
        raise ValueError(_kind(value))
    if size <= 0:
        raise ValueError(f"{value!r} (not positive)")
    return size


def _cache(table: _Table) -> CacheSettings | Any:
    """``cache = "DIR"`` or ``cache = { path = "DIR", max_size = "10G" }``."""
    if "cache" not in table.data:
        return MISSING
    value = table.data["cache"]
    if isinstance(value, str):
        path = table.file_path("cache")
        return MISSING if path is MISSING else CacheSettings(path=path)
    if not isinstance(value, dict):
        return table.error("cache", 'expected a directory path or a table '
                                    f'{{ path = "DIR", max_size = "10G" }}, got {_kind(value)}')
    sub = table.sub("cache")
    if sub is None:
        return MISSING
    sub.unknown(CACHE_KEYS)
    path = sub.file_path("path")
    if path is MISSING and "path" not in sub.data:
        return sub.error("path", "missing; expected the cache directory")
    max_size = sub.get("max_size", parse_size, _SIZE_EXPECTED)
    if path is MISSING:
        return MISSING
    return CacheSettings(path=path, max_size=None if max_size is MISSING else max_size)
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PREFIX = re.compile(r"/[^\s?#]*")


def _upstream(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(repr(value))
    if parts.username is not None or parts.password is not None:
        # Do not echo it: it holds credentials.
        raise ValueError("it has credentials in it; awstoken adds the token itself")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r} has a query or fragment")
    try:
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    return value


def _routes(report: _Report, value: object, token_names: set[str],
            base_dir: Path) -> tuple[RouteSettings, ...]:
    if not isinstance(value, list):
        report.error("routes", f"expected an array of tables ([[routes]]), got {_kind(value)}")
        return ()
    routes = []
    seen: dict[str, int] = {}
    for i, item in enumerate(value):
        path = f"routes[{i}]"
        if not isinstance(item, dict):
            report.error(path, f"expected a table, got {_kind(item)}")
            continue
        table = _Table(report, path, item, base_dir)
        table.unknown(ROUTE_KEYS)
        prefix = table.string("prefix", required=True, pattern=_PREFIX,
                              expected='a path prefix starting with "/", like "/v2/"')
        if prefix is not MISSING:
            norm = prefix.rstrip("/") or "/"
            if norm in seen:
                prefix = table.error("prefix", f"{prefix!r} duplicates the prefix of "
                                               f"routes[{seen[norm]}]")
            else:
                seen[norm] = i
        token = table.string("token", required=True, expected="the name of a [tokens.NAME] table")
        if token is not MISSING and token not in token_names:
            token = table.error("token", f"no [tokens.{token}] table in this file"
                                + _suggest(token, token_names))
        fields = _given(
            prefix=prefix,
            upstream=table.get("upstream", _upstream, "an http:// or https:// URL",
                               required=True),
            token=token,
            header=table.string("header", pattern=_HEADER,
                                expected='an HTTP header name like "Authorization"'),
            strip_prefix=table.boolean("strip_prefix"),
            redirects=table.choice("redirects", ("follow", "pass")),
            follow_http=table.boolean("follow_http"),
            follow_private=table.boolean("follow_private"),
            cache=_cache(table),
        )
        if all(k in fields for k in ("prefix", "upstream", "token")):
            routes.append(RouteSettings(**fields))
    return tuple(routes)


# -- the file ----------------------------------------------------------------------------------

TOP_KEYS = ("storage", "tokens", "server", "routes")


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
    """Validate configuration ``text``; ``file`` names it in messages."""
    report = _Report(file)
    try:
        raw = tomllib.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    root = _Table(report, "", raw, base_dir or Path.cwd())
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


__all__ = ["build_keeper", "build_source", "build_storage", "build_transform", "load", "loads",
           "parse_duration", "parse_listen", "parse_token_listen", "start_rotators"]
