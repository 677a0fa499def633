"""Index body rewriting: absolute upstream URLs in npm metadata and pip simple pages.

npm package metadata carries absolute tarball URLs, and some simple indexes link files
absolutely; without rewriting, clients would go to the upstream directly (and fail without
the token). Only index content types are considered, and only bodies up to a bound are
buffered for it; anything else streams through untouched.
"""

from __future__ import annotations

import re
import zlib

#: Content types whose bodies may carry absolute upstream URLs for clients to follow.
INDEX_TYPES = frozenset({
    "application/json",
    "application/vnd.npm.install-v1+json",
    "text/html",
    "application/vnd.pypi.simple.v1+html",
    "application/vnd.pypi.simple.v1+json",
})
#: Bigger index bodies are passed unchanged (npm metadata of huge packages reaches tens of MB).
MAX_REWRITE_BYTES = 64 * 1024 * 1024


def is_index(content_type: str | None) -> bool:
    """True when a response of this type may need rewriting."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() in INDEX_TYPES


def decode(body: bytes, encoding: str) -> bytes | None:
    """The identity form of ``body``; None for an encoding we do not rewrite (br, zstd)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)
    return None


def rewrite(body: bytes, upstream_base: str, public_base: str) -> bytes:
    """Replace absolute URLs under ``upstream_base`` (also JSON's ``\\/`` form) by ``public_base``."""
    old, new = upstream_base.encode(), public_base.encode()
    if old in body:
        body = _replace_bounded(body, old, new)
    old_json, new_json = old.replace(b"/", b"\\/"), new.replace(b"/", b"\\/")
    if old_json in body:
        body = _replace_bounded(body, old_json, new_json)
    return body


def _replace_bounded(body: bytes, old: bytes, new: bytes) -> bytes:
    # "http://host:80" must not match inside "http://host:8080": only rewrite where the
    # base ends at a path, query, fragment or quote boundary.
    out = bytearray()
    start = 0
    while True:
        i = body.find(old, start)
        if i < 0:
            out += body[start:]
            return bytes(out)
        end = i + len(old)
        nxt = body[end:end + 1]
        out += body[start:i]
        if nxt in (b"", b"/", b"?", b"#", b'"', b"'", b"\\", b"<", b" "):
            out += new
        else:
            out += old
        start = end


_HTML_TYPES = frozenset({"text/html", "application/vnd.pypi.simple.v1+html"})
_LINK = re.compile(rb"""((?:href|src)\s*=\s*["'])(/(?!/)[^"']*)""", re.IGNORECASE)


def is_html(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower() in _HTML_TYPES  # type: ignore[union-attr]


def rewrite_paths(body: bytes, upstream_path: str, public_prefix: str) -> bytes:
    """Map path-absolute links (``href="/packages/..."``) into a stripped route prefix.

    Simple indexes such as pypiserver link files path-absolutely; behind ``prefix = "/pypi"``
    with ``strip_prefix``, ``/packages/x`` must become ``/pypi/packages/x``.
    """
    base, prefix = upstream_path.encode(), public_prefix.rstrip("/").encode()

    def replace(match: re.Match[bytes]) -> bytes:
        path = match.group(2)
        if base and not (path == base or path.startswith(base + b"/")):
            return match.group(0)
        return match.group(1) + prefix + path[len(base):]

    return _LINK.sub(replace, body)
