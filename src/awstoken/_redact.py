"""Redaction of secrets in text meant for people: URLs with credentials in them.

Generic on purpose (any scheme): every message that names a URL (Redis storage, upstreams,
``awstoken check``) goes through :func:`redact_url` first, and foreign messages that may quote
a URL (redis-py's) are scrubbed of :func:`url_secrets`.
"""

from __future__ import annotations

import contextlib
import re
from urllib.parse import parse_qsl, unquote, urlsplit

REDACTED = "***"
#: Query parameters whose values are hidden: any name that looks like a secret's. Hiding a
#: harmless value (``ssl_keyfile``) costs nothing; showing a secret one is a leak.
_SECRET_NAME = re.compile(r"pass|secret|auth|token|key", re.IGNORECASE)
_SECRET_QUERY = re.compile(r"([?&;][^=&;#]*(?:pass|secret|auth|token|key)[^=&;#]*=)[^&;]*",
                           re.IGNORECASE)
#: Query parameters that are passwords (redis-py accepts ``?password=``), for
#: :func:`url_has_password`: the insecure-settings check names exactly these.
_PASSWORD_PARAMS = re.compile(r"(?i)[?&;](?:password|passwd|pass|secret|token|auth)=")


def _split_userinfo(url: str) -> tuple[str, str | None, str]:
    """``(scheme://, userinfo or None, rest)``; ``scheme://`` is empty when there is none.

    The userinfo runs to the *last* ``@``: a password may hold ``/``, ``?``, ``#`` or ``@``,
    which URL parsers take for the end of the authority (and would print as host or path).
    """
    scheme, sep, rest = url.partition("://")
    head = scheme + sep if sep else ""
    rest = rest if sep else url
    at = rest.rfind("@")
    if at < 0:
        return head, None, rest
    return head, rest[:at], rest[at + 1:]


def redact_url(url: str) -> str:
    """``url`` with its whole userinfo and every secret-looking query value replaced.

    ``redis://user:pw@host:6379/0`` becomes ``redis://***@host:6379/0``: the user name goes
    too (some clients put the password there). Everything up to the *last* ``@`` counts as
    userinfo, so a password holding ``/``, ``?``, ``#`` or ``@`` is never shown in part; at
    worst a host is hidden with it. A query value runs to the next ``&`` or ``;`` (a ``#``
    inside it is hidden too).
    """
    head, userinfo, rest = _split_userinfo(url)
    shown = rest if userinfo is None else f"{REDACTED}@{rest}"
    return head + _SECRET_QUERY.sub(r"\1" + REDACTED, shown)


def url_has_password(url: str) -> bool:
    """True when ``url`` carries a password (in its userinfo or as a password query value)."""
    _, userinfo, _ = _split_userinfo(url)
    if userinfo is not None and ":" in userinfo:
        return bool(userinfo.partition(":")[2])
    return bool(_PASSWORD_PARAMS.search(url))


def url_secrets(url: str) -> list[str]:
    """Secret text of ``url`` to scrub from foreign messages, longest first: the userinfo,
    its password, the pieces a URL parser would make of them, secret-looking query values."""
    _, userinfo, rest = _split_userinfo(url)
    found: list[str] = []
    if userinfo is not None:
        password = userinfo.partition(":")[2]
        found += [userinfo, password, unquote(password), *re.split(r"[/?#@:]", userinfo)]
        if re.search(r"[/?#@]", userinfo):
            # What a URL parser makes of it: the password split into host, path, fragment.
            with contextlib.suppress(ValueError):
                parts = urlsplit(url)
                found += [parts.netloc, parts.path, parts.query, parts.fragment]
    with contextlib.suppress(ValueError):
        found += [v for k, v in parse_qsl(urlsplit("x://" + rest).query)
                  if _SECRET_NAME.search(k)]
    # Longest first: a piece never leaves the rest of a longer secret behind.
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)
