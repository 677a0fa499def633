"""Checks of single values: each takes a TOML value, returns the setting, or raises ValueError.

A ValueError's text is shown after "got <kind>"; it may quote the value only where the value
cannot hold a secret (URLs with credentials are never echoed).
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from .._logging import parse_level
from .._sources import jsonout as _jsonout
from .reading import kind

#: Where a listener binds: ``(host, port)`` for TCP, or a unix socket's absolute path.
Address = tuple[str, int] | str

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENV_EXPECTED = "the name of an environment variable (letters, digits and '_')"
ACCOUNT = re.compile(r"\d{12}")
ACCOUNT_EXPECTED = 'a 12-digit AWS account id as a string (quoted: "123456789012")'
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
DOMAIN = re.compile(r"[a-z][a-z0-9-]{0,48}[a-z0-9]")
CLUSTER = re.compile(r"[0-9A-Za-z][A-Za-z0-9_-]{0,99}")
HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def redis_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        # Never echo the URL: it may carry a password.
        raise ValueError("not a redis URL")
    return value



def env_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
            isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) for v in value):
        raise ValueError("")
    return tuple(value)



def write_url(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("")
    if "://" in value:
        return indexes([value])[0]
    return registries([value])[0]


_REGISTRY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(:\d{1,5})?")


def registries(value: Any) -> tuple[str, ...]:
    """Registry hosts (``host`` or ``host:port``, as docker names them), lowercased."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError("")
    for item in value:
        if not _REGISTRY.fullmatch(item):
            raise ValueError(f"{item!r} is not a host or host:port (no scheme, no path)")
    return tuple(v.lower() for v in value)


def indexes(value: Any) -> tuple[str, ...]:
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


MODE_EXPECTED = ('permissions like "0600" or "0640" (a string of octal digits, or 0o640), '
                  'with nothing for other users')


def private_mode(value: Any) -> int:
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


def argv(value: Any) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and v for v in value)):
        raise ValueError("")
    return tuple(value)

def command(value: Any) -> str | tuple[str, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("empty")
        return value
    if isinstance(value, list) and value and all(isinstance(a, str) and a for a in value):
        return tuple(value)
    raise ValueError("")


def path_check(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("")
    try:
        _jsonout.parse_path(value)
    except ConfigError:
        raise ValueError(repr(value)) from None
    return value


ENGINES = ("fast",)
LISTEN_EXPECTED = '"host:port", like "127.0.0.1:8080" or "[::1]:8080"'


def engine(value: object) -> str:
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
        if not HOST.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name or address")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not 0 to 65535")
    return host, int(port)


def listen_or_off(value: object) -> tuple[str, int] | None:
    return None if value == "off" else parse_listen(value)


#: The longest unix socket path Linux accepts (sun_path is 108 bytes with the final NUL).
UNIX_PATH_MAX = 107
ENDPOINT_EXPECTED = ('"unix:/path/to/token.sock" or a loopback "127.0.0.1:PORT" or '
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


def networks(value: object) -> tuple[str, ...]:
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


def log_level(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("")
    try:
        parse_level(value)
    except ConfigError as exc:
        raise ValueError(str(exc).removeprefix("log level ")) from None
    return value


_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def host_names(value: object) -> tuple[str, ...]:
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


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)
SIZE_EXPECTED = 'a number of bytes or a string like "500M", "10G" (powers of 1024)'


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
        raise ValueError(kind(value))
    if size <= 0:
        raise ValueError(f"{value!r} (not positive)")
    return size


HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
PREFIX = re.compile(r"/[^\s?#]*")


def upstream(value: object) -> str:
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


