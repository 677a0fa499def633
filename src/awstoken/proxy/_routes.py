"""Routes: which upstream and token serve a request path, and how URLs map both ways."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from .._config.settings import CacheSettings, RouteSettings
from .._errors import AwstokenError, ConfigError
from .._token import check_name


@dataclass(frozen=True, slots=True)
class Route:
    """One compiled ``[[routes]]`` entry.

    ``upstream_origin`` is ``scheme://host[:port]`` and ``upstream_path`` the upstream's base
    path without a trailing slash ("" for none). Forwarding maps a proxy path ``p`` to
    ``upstream_path + p`` (or, with ``strip_prefix``, to ``upstream_path + p[len(prefix):]``);
    :meth:`public_base` gives the reverse mapping for Location headers and index bodies.
    """

    prefix: str
    upstream_origin: str
    upstream_path: str
    token: str
    header: str = "Authorization"
    strip_prefix: bool = False
    redirects: Literal["follow", "pass"] = "follow"
    tls: bool = True
    follow_http: bool = False
    follow_private: bool = False
    cache: CacheSettings | None = None

    @property
    def name(self) -> str:
        """The label used in metrics and logs."""
        return self.prefix

    @property
    def upstream_base(self) -> str:
        """``origin + base path``: absolute upstream URLs that start with it come back here."""
        return self.upstream_origin + self.upstream_path

    def upstream_url(self, raw_path: str) -> str:
        """The upstream URL for a proxy ``raw_path`` (path and query, still percent-encoded)."""
        return self.upstream_origin + self.upstream_target(raw_path)

    def upstream_target(self, raw_path: str) -> str:
        """The upstream request target (path and query) for a proxy ``raw_path``."""
        path = raw_path
        if self.strip_prefix:
            path = raw_path[len(self.prefix.rstrip("/")):]
            if not path.startswith("/"):
                path = "/" + path
        return self.upstream_path + path

    def public_base(self, proxy_origin: str) -> str:
        """What ``upstream_base`` becomes as seen by the client of the proxy."""
        return proxy_origin + (self.prefix.rstrip("/") if self.strip_prefix else "")

    def rewrite_location(self, location: str, proxy_origin: str) -> str:
        """Point a ``Location`` at the proxy when it points at this route's upstream."""
        base = self.upstream_base
        if location.startswith(base) and (len(location) == len(base) or location[len(base)] in "/?"):
            return self.public_base(proxy_origin) + location[len(base):]
        if self.strip_prefix and location.startswith("/"):
            # A path-absolute Location on the upstream: map it into the prefix.
            if self.upstream_path and location.startswith(self.upstream_path):
                location = location[len(self.upstream_path):] or "/"
            return self.prefix.rstrip("/") + location
        return location


def has_dot_segment(path: str) -> bool:
    """True when ``path`` has a ``.`` or ``..`` segment, raw or percent-encoded.

    Upstreams resolve dot segments (and some decode ``%2e``, ``%2f`` or ``\\`` first), so
    ``/v2/../admin`` would leave the route's prefix, or its upstream base path, with the
    token attached. Such paths are refused rather than normalised: no client needs them.
    """
    if "." not in path and "%" not in path and "\\" not in path:
        return False  # the common case, without decoding
    decoded = unquote(path)
    return any(segment in (".", "..") for segment in decoded.replace("\\", "/").split("/"))


class PathRefused(ValueError):
    """A request path that must not be forwarded (answer 400): the message says why."""


_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
#: How many rounds of percent-decoding an upstream might apply (double-decoding servers exist).
_DECODE_ROUNDS: Final = 4
_DOTS: Final = "dot segments ('.', '..', '%2e') are not allowed in the path"


def needs_normalizing(path: str) -> bool:
    """False for the common path (no '%', ';', '\\' or dot segment): used as is, no work."""
    return "%" in path or ";" in path or "/." in path or "\\" in path


def decodings(path: str) -> Iterable[str]:
    """``path`` percent-decoded once, twice... until it stops changing (bounded); each
    form must be valid UTF-8 (an overlong ``%c0%ae`` is a '.' to some decoders)."""
    current = path
    for _ in range(_DECODE_ROUNDS):
        if "%" not in current:
            return
        try:
            decoded = unquote_to_bytes(current).decode("utf-8")
        except UnicodeDecodeError:
            raise PathRefused("percent-encoded bytes in the path are not UTF-8 (overlong or "
                              "invalid sequences)") from None
        if decoded == current:
            return
        yield decoded
        current = decoded


def normalize_path(path: str) -> str:
    """The path to route and forward: percent-encoded unreserved characters decoded
    (RFC 3986 6.2.2.2: ``/v2/%73ecret`` is ``/v2/secret``), everything else as sent.

    Raise :class:`PathRefused` for paths an upstream could read differently from the
    proxy: dot segments in any decoding round (``%2e%2e``, ``%252e%252e``, ``%c0%ae``) or
    with a path parameter (``..;``, which servlet containers resolve as ``..``), ``;``
    path parameters, control characters, malformed percent-encodings.
    """
    if not needs_normalizing(path):
        return path
    if ";" in path:
        raise PathRefused("path parameters (';') are not allowed in the path")
    if _BAD_PERCENT.search(path):
        raise PathRefused("malformed percent-encoding in the path")
    for form in (path, *decodings(path)):
        if any(c < " " or c == "\x7f" for c in form):
            raise PathRefused("control characters are not allowed in the path")
        for segment in form.replace("\\", "/").split("/"):
            if segment.split(";", 1)[0] in (".", ".."):
                raise PathRefused(_DOTS)
    if "%" not in path:
        return path
    return _PERCENT.sub(_unreserved, path)


def _unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0)


def compile_route(settings: RouteSettings, index: int) -> Route:
    """Validate one route; errors name the route by index and prefix."""
    where = f"routes[{index}] (prefix {settings.prefix!r})"
    if not settings.prefix.startswith("/"):
        raise ConfigError(f"{where}: prefix must start with '/'")
    parts = urlsplit(settings.upstream)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: upstream must be an http:// or https:// URL, not "
                          f"{settings.upstream!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{where}: upstream must not carry a query, fragment or credentials")
    try:
        check_name(settings.token)
    except AwstokenError:
        raise ConfigError(f"{where}: invalid token name {settings.token!r}") from None
    if not settings.header or any(c in settings.header for c in " :\r\n\t"):
        raise ConfigError(f"{where}: invalid header name {settings.header!r}")
    if settings.redirects not in ("follow", "pass"):
        raise ConfigError(f"{where}: redirects must be 'follow' or 'pass'")
    default_port = 443 if parts.scheme == "https" else 80
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    origin = f"{parts.scheme}://{host}"
    if parts.port is not None and parts.port != default_port:
        origin += f":{parts.port}"
    return Route(prefix=settings.prefix, upstream_origin=origin,
                 upstream_path=parts.path.rstrip("/"), token=settings.token,
                 header=settings.header, strip_prefix=settings.strip_prefix,
                 redirects=settings.redirects, tls=parts.scheme == "https",
                 follow_http=settings.follow_http, follow_private=settings.follow_private,
                 cache=settings.cache)


class RouteTable:
    """Routes by prefix; the longest matching prefix wins."""

    def __init__(self, routes: Iterable[RouteSettings]) -> None:
        compiled = [compile_route(r, i) for i, r in enumerate(routes)]
        seen: set[str] = set()
        for route in compiled:
            if route.prefix in seen:
                raise ConfigError(f"routes: prefix {route.prefix!r} appears twice")
            seen.add(route.prefix)
        self.routes = sorted(compiled, key=lambda r: len(r.prefix), reverse=True)

    def match(self, path: str) -> Route | None:
        """The route for ``path``: a prefix ending in '/' matches below it; otherwise the
        prefix must be the whole path or be followed by '/' or '?'."""
        for route in self.routes:
            prefix = route.prefix
            if path.startswith(prefix) and (
                    prefix.endswith("/") or len(path) == len(prefix) or path[len(prefix)] in "/?"):
                return route
        return None

    def route_for(self, path: str) -> Route | None:
        """:meth:`match` for a path :func:`normalize_path` returned: the route must be the
        same for every decoding of the path (an encoded '/' must not move a request from
        one route to another upstream's), else :class:`PathRefused`."""
        route = self.match(path)
        if "%" in path:
            for form in decodings(path):
                if self.match(form) is not route:
                    raise PathRefused("an encoded '/' in the path would select another route")
        return route
