"""Redirects the proxy follows itself: the target URL, and where it may connect.

A followed redirect never carries the token. A Location must be a usable http(s) URL of
bounded length; the address actually connected to (not the name: DNS rebinding) must be
public unless the route sets ``follow_private``, and never one of the proxy's own listeners.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urljoin, urlsplit

from ._h1 import UpstreamConnection
from ._policy import UpstreamFailure
from ._routes import Route

#: The longest redirect target followed (a Location is a URL, not a payload).
MAX_LOCATION = 8192


def check_peer(up: UpstreamConnection, route: Route, own_ports: set[int]) -> None:
    """Refuse a followed connection whose peer is the proxy itself or, unless the route
    allows it, not a public address."""
    peer = up.peer
    if peer is None:
        raise UpstreamFailure(502, "redirects", f"route {route.name}: redirect target "
                              f"{up.origin.host}: peer address unknown, refused")
    address = plain_address(peer[0])
    shown = f"{up.origin.host} ({address})"
    if peer[1] in own_ports and (address.is_loopback or address.is_unspecified or
                                      peer[0] == up.local_host):
        raise UpstreamFailure(502, "redirects", f"route {route.name}: redirect to "
                              f"{shown} refused: it is this proxy's own listener")
    if not route.follow_private and not public(address):
        raise UpstreamFailure(502, "redirects", f"route {route.name}: redirect to "
                              f"{shown} refused: a loopback, private, link-local or "
                              "otherwise non-public address (the route does not set "
                              "follow_private)")


def redirect_url(base: str, location: str, route: Route) -> str:
    """The absolute URL a Location names, or UpstreamFailure(502) when it is no usable URL."""
    def bad(why: str) -> UpstreamFailure:
        return UpstreamFailure(502, "redirects", f"route {route.name}: the upstream's redirect "
                               f"Location is {why}")

    if len(location) > MAX_LOCATION:
        raise bad(f"longer than {MAX_LOCATION} characters")
    if not location.isascii() or not location.isprintable() or " " in location:
        raise bad("not a URL (non-ASCII, space or control characters)")
    try:
        there = urljoin(base, location)
        parts = urlsplit(there)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        raise bad(f"malformed ({str(exc)[:80]})") from None
    if parts.scheme not in ("http", "https"):
        raise bad(f"not an http(s) URL (scheme {parts.scheme[:20]!r})")
    if not parts.hostname:
        raise bad("a URL without a host")
    return there


def plain_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return embedded
    return address


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A globally routable unicast address (not loopback, private, link-local, shared,
    reserved, unspecified or multicast: 169.254.169.254 and fd00:ec2::254 included)."""
    return address.is_global and not (address.is_multicast or address.is_loopback or
                                      address.is_link_local or address.is_private or
                                      address.is_reserved or address.is_unspecified)


def origin_of(url: str) -> str:
    scheme, _, rest = url.partition("://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return f"{scheme.lower()}://{netloc.rpartition('@')[2]}"


def target_of(url: str) -> str:
    _, _, rest = url.partition("://")
    rest = rest.split("#", 1)[0]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    target = rest[cut:]
    if not target.startswith("/"):
        target = "/" + target
    return target


__all__ = ["MAX_LOCATION", "check_peer", "origin_of", "plain_address", "public", "redirect_url",
           "target_of"]
