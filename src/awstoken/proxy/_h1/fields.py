"""The upstream's response fields: which pass to a client as they are, and which the proxy
reads (framing, Content-Type, Location) or drops (hop-by-hop, RFC 9110 7.6.1)."""

from __future__ import annotations

from typing import Final

from .wire import HOP_BY_HOP

# What a response head's reader does with a field, by name: pass it on (noting two of
# them), or drop it (noting the framing ones).
PASS: Final = 0
TYPE: Final = 1
LOCATION: Final = 2
DROP: Final = 3
LENGTH: Final = 4
CHUNKED: Final = 5
CONNECTION: Final = 6
_BY_LOWER: Final = {
    **dict.fromkeys(HOP_BY_HOP, DROP), b"content-length": LENGTH,
    b"transfer-encoding": CHUNKED, b"connection": CONNECTION, b"content-type": TYPE,
    b"location": LOCATION}
# The kind of each name as received, learned: an upstream spells its names the same way in
# every answer, so one dict lookup replaces lower() and two set lookups per field. Bounded
# (names come from upstreams): past the bound a name is lower-cased each time.
KINDS: Final[dict[bytes, int]] = {}
KINDS_MAX: Final = 1024
KIND_NAME_MAX: Final = 64


def field_kind(name: bytes) -> int:
    """What a response head's reader does with the field ``name`` (``PASS``...)."""
    kind = KINDS.get(name)
    if kind is None:
        kind = _BY_LOWER.get(name.lower(), PASS)
        if len(KINDS) < KINDS_MAX and len(name) <= KIND_NAME_MAX:
            KINDS[name] = kind
    return kind


def names_others(value: bytes, fields: list[tuple[bytes, bytes]]) -> bool:
    """True when a Connection field names a field of the head that is not hop-by-hop
    already (``keep-alive`` and ``close`` commonly name none)."""
    if value == b"keep-alive" or value == b"close":
        return False
    named = {token.strip().lower() for token in value.split(b",")} - HOP_BY_HOP
    return bool(named) and any(name.lower() in named for name, _ in fields)
