"""Redaction of secrets in text meant for people: URLs with credentials in them.

Generic on purpose (any scheme): every message that names a URL (Redis storage, upstreams)
goes through :func:`redact_url` first.
"""

from __future__ import annotations

import re

#: Query parameters whose values are secrets (redis-py accepts ``?password=``).
_SECRET_PARAMS = re.compile(r"(?i)([?&;](?:password|passwd|pass|secret|token|auth)=)[^&;#]*")
REDACTED = "***"


def redact_url(url: str) -> str:
    """``url`` with its userinfo (``user:password@``) and secret query values replaced.

    ``redis://:pw@host:6379/0`` becomes ``redis://***@host:6379/0``. Everything up to the
    *last* ``@`` counts as userinfo, so a password holding ``/``, ``?``, ``#`` or ``@`` (which
    URL parsers split in the wrong place) is never shown in part; at worst a host is hidden
    with it.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _SECRET_PARAMS.sub(r"\1" + REDACTED, url)
    at = rest.rfind("@")
    if at >= 0:
        rest = REDACTED + rest[at:]
    return f"{scheme}://" + _SECRET_PARAMS.sub(r"\1" + REDACTED, rest)


def url_has_password(url: str) -> bool:
    """True when ``url`` carries a password (in its userinfo or as a secret query value)."""
    _, sep, rest = url.partition("://")
    at = rest.rfind("@") if sep else -1
    if at >= 0 and ":" in rest[:at]:
        return bool(rest[:at].partition(":")[2])
    return bool(_SECRET_PARAMS.search(url))
