"""Header policy: what goes upstream and what comes back (repeated headers are kept).

The policy works on ``(name, value)`` pairs in arrival order (:func:`request_header_pairs`,
:func:`response_header_pairs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

# RFC 9110 section 7.6.1 connection-specific fields, plus the old Proxy-Connection, and the
# framing fields the proxy sets itself (Content-Length is restored when known).
_HOP: Final = frozenset((
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade"))
_REQUEST_DROP: Final = _HOP | {"host", "authorization", "expect", "x-forwarded-for",
                               "x-forwarded-proto", "x-forwarded-host"}
_RESPONSE_DROP: Final = _HOP | {"content-length"}
#: Request fields the proxy never forwards as they are when it frames the request itself
#: (besides the route's token header and the fields a Connection field names).
REQUEST_DROP: Final = _REQUEST_DROP | {"content-length"}
# Headers that never follow a redirect to another host.
_CROSS_HOST_DROP: Final = frozenset(("authorization", "cookie", "x-forwarded-for",
                                     "x-forwarded-host", "x-forwarded-proto"))

# What a followed redirect target (S3 and the like: not the route's upstream) may say to the
# client: the body's description and caching. No cookies, no challenges, no Location, no
# headers awstoken gives a meaning to (X-Awstoken-*), nothing else.
_FOLLOWED_KEEP: Final = frozenset((
    "content-type", "content-length", "content-range", "content-encoding", "content-language",
    "content-disposition", "content-md5", "accept-ranges", "etag", "last-modified",
    "cache-control", "expires", "date", "age", "vary", "transfer-encoding", "connection"))

Pairs = list[tuple[str, str]]


def connection_tokens(pairs: Iterable[tuple[str, str]]) -> set[str]:
    named: set[str] = set()
    for key, value in pairs:
        if key.lower() == "connection":
            named.update(t.strip().lower() for t in value.split(",") if t.strip())
    return named


def request_header_pairs(pairs: Sequence[tuple[str, str]], *, token_header: str,
                         client_ip: str | None, proto: str, host: str | None,
                         drop: frozenset[str] = frozenset()) -> Pairs:
    """The client's headers for the upstream, without the token (the caller adds it).

    Keeps every repeated header in order; drops hop-by-hop headers (also those the client
    named in ``Connection``), ``Host`` (set for the upstream), the client's own
    ``Authorization`` and the route's token header, and any lower-case name in ``drop``;
    sets X-Forwarded-For/Proto/Host.
    """
    lows = [k.lower() for k, _ in pairs]
    named = connection_tokens(pairs) if "connection" in lows else None
    token_key = token_header.lower()
    out: Pairs = []
    prior: list[str] = []
    for (key, value), low in zip(pairs, lows, strict=True):
        if low in _REQUEST_DROP or low == token_key or low in drop or (named and low in named):
            if low == "x-forwarded-for":
                prior.append(value)
            continue
        out.append((key, value))
    before = ", ".join(prior)
    if client_ip:
        out.append(("X-Forwarded-For", f"{before}, {client_ip}" if before else client_ip))
    elif before:
        out.append(("X-Forwarded-For", before))
    out.append(("X-Forwarded-Proto", proto))
    if host:
        out.append(("X-Forwarded-Host", host))
    return out


def response_header_pairs(pairs: Sequence[tuple[str, str]]) -> Pairs:
    """The upstream's response headers for the client: hop-by-hop removed, repeats kept."""
    lows = [k.lower() for k, _ in pairs]
    if "connection" not in lows:
        return [pair for pair, low in zip(pairs, lows, strict=True) if low not in _RESPONSE_DROP]
    named = connection_tokens(pairs)
    return [pair for pair, low in zip(pairs, lows, strict=True)
            if not (low in _RESPONSE_DROP or low in named)]


def cross_host_pairs(pairs: Iterable[tuple[str, str]], token_header: str) -> Pairs:
    """Headers that may follow a redirect to another host: no token, cookies or X-Forwarded-*."""
    token_key = token_header.lower()
    return [(k, v) for k, v in pairs if (low := k.lower()) not in _CROSS_HOST_DROP
            and low != token_key]


def followed_response_pairs(pairs: Iterable[tuple[str, str]]) -> Pairs:
    """A followed redirect target's response headers, cut to what describes the body
    (framing headers stay for :func:`response_header_pairs` to handle)."""
    return [(k, v) for k, v in pairs if k.lower() in _FOLLOWED_KEEP]


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    """The first value of header ``name`` (lowercase) in ``headers``, or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
