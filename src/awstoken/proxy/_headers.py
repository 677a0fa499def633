"""Header policy: what goes upstream and what comes back (repeated headers are kept)."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy, istr

# RFC 9110 section 7.6.1 connection-specific fields, plus the old Proxy-Connection, and the
# framing fields the proxy sets itself (Content-Length is restored when known).
HOP_BY_HOP = frozenset(istr(h) for h in (
    "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
    "TE", "Trailer", "Transfer-Encoding", "Upgrade"))
_REQUEST_DROP = HOP_BY_HOP | {istr("Host"), istr("Authorization"), istr("Expect"),
                              istr("X-Forwarded-For"), istr("X-Forwarded-Proto"),
                              istr("X-Forwarded-Host")}
_RESPONSE_DROP = HOP_BY_HOP | {istr("Content-Length")}
# Headers that never follow a redirect to another host.
CROSS_HOST_DROP = frozenset(istr(h) for h in ("Authorization", "Cookie", "X-Forwarded-For",
                                              "X-Forwarded-Host", "X-Forwarded-Proto"))


def _connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    named: set[str] = set()
    for value in headers.getall("Connection", ()):
        named.update(t.strip().lower() for t in value.split(",") if t.strip())
    return named


def upstream_request_headers(headers: CIMultiDictProxy[str], *, token_header: str,
                             client_ip: str | None, proto: str, host: str | None) -> CIMultiDict[str]:
    """The client's headers for the upstream, without the token (see :func:`with_token`).

    Keeps every repeated header in order; drops hop-by-hop headers (also those the client
    named in ``Connection``), ``Host`` (the client library sets the upstream's), the client's
    own ``Authorization`` and the route's token header; sets X-Forwarded-For/Proto/Host.
    """
    named = _connection_tokens(headers)
    token_key = istr(token_header)
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        if key in _REQUEST_DROP or key == token_key or (named and key.lower() in named):
            continue
        out.add(key, value)
    prior = ", ".join(headers.getall("X-Forwarded-For", ()))
    if client_ip:
        out["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
    elif prior:
        out["X-Forwarded-For"] = prior
    out["X-Forwarded-Proto"] = proto
    if host:
        out["X-Forwarded-Host"] = host
    return out


def response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's response headers for the client: hop-by-hop removed, repeats kept."""
    named = _connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        if key in _RESPONSE_DROP or (named and key.lower() in named):
            continue
        out.add(key, value)
    return out
