"""Redis URLs in messages: one place that knows where a URL's secrets are."""

from __future__ import annotations

import contextlib
import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

_SECRET_QUERY = re.compile(r"pass|secret|auth|token|key", re.IGNORECASE)


def _split_userinfo(url: str) -> tuple[str, str | None, str]:
    """``(scheme://, userinfo or None, rest)``. The userinfo runs to the *last* ``@`` before
    the host: a password may hold ``/``, ``?``, ``#`` or ``@``, which urllib's parser takes
    for the end of the authority, so that it would print the password as host or path."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", None, url
    at = rest.rfind("@")
    if at < 0:
        return scheme + sep, None, rest
    return scheme + sep, rest[:at], rest[at + 1:]


def redact_url(url: str) -> str:
    """``url`` with its password (and any secret-looking query value) replaced by ``***``.

    A user name without a password is hidden too: some clients put the password there.
    Every message that names a Redis URL goes through this one function.
    """
    head, userinfo, rest = _split_userinfo(url)
    if not head:
        return "<invalid URL>"
    netloc = ""
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@" if colon and not re.search(r"[/?#@]", user) else "***@"
    try:
        parts = urlsplit(head + rest)
    except ValueError:
        return f"{head}{netloc}<invalid URL>"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_QUERY.search(k) else v) for k, v in pairs],
                          safe="*/")
    # Built by hand: urlunsplit turns unix:///path into unix:/path.
    return (f"{parts.scheme}://{netloc}{parts.netloc}{parts.path}"
            + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else ""))


def _url_secrets(url: str) -> list[str]:
    """Secret text of ``url`` to scrub from foreign messages: the userinfo, its password,
    the pieces a URL parser would make of them, and secret-looking query values."""
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
                  if _SECRET_QUERY.search(k)]
    # Longest first: a piece never leaves the rest of a longer secret behind.
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)
