"""Index body rewriting: absolute upstream URLs in npm metadata and pip simple pages.

npm package metadata carries absolute tarball URLs, and some simple indexes link files
absolutely; without rewriting, clients would go to the upstream directly (and fail without
the token). Only index content types are considered; anything else streams through
untouched.

Index bodies are decoded whatever their content encoding: gzip and deflate (zlib), br
(Google's ``brotli`` bindings, 1.2 or newer: the first with a bound on the output) and zstd
(``zstandard``), both in the ``proxy`` extra. Every decoder stops at a bound
(``[server] max_index_bytes``), so a small answer that would inflate to gigabytes (a
decompression bomb) is refused without being held. Requests go upstream offering only the
encodings this process can decode (:func:`accept_encoding`); a front that ignores that and
answers in another encoding gets a 502 with the reason, never a silently unrewritten body.
"""

from __future__ import annotations

import functools
import re
import zlib
from types import ModuleType


def _optional(name: str) -> ModuleType | None:
    try:
        return __import__(name)
    except ImportError:  # pragma: no cover - depends on the environment
        return None


_brotli = _optional("brotli")
_zstd = _optional("zstandard")
if _brotli is not None and not hasattr(_brotli, "Decompressor"):  # pragma: no cover
    _brotli = None  # another package named brotli, without a bounded decoder

#: Content types whose bodies may carry absolute upstream URLs for clients to follow.
INDEX_TYPES = frozenset({
    "application/json",
    "application/vnd.npm.install-v1+json",
    "text/html",
    "application/vnd.pypi.simple.v1+html",
    "application/vnd.pypi.simple.v1+json",
})
#: Default of ``[server] max_index_bytes``: the largest index body, compressed or decoded,
#: the proxy holds to rewrite (npm metadata of huge packages reaches tens of MB).
MAX_INDEX_BYTES = 64 * 1024 * 1024
MAX_REWRITE_BYTES = MAX_INDEX_BYTES  # the former name

#: Content codings this process can decode, in the order they are offered upstream.
#: What the decoders raise for a corrupt body (the libraries' own error classes).
_CORRUPT: tuple[type[Exception], ...] = (zlib.error, ValueError, EOFError, *(
    error for error in (getattr(_brotli, "error", None), getattr(_zstd, "ZstdError", None))
    if isinstance(error, type) and issubclass(error, Exception)))

DECODABLE: tuple[str, ...] = ("gzip", "deflate") + (("br",) if _brotli is not None else ()) + \
    (("zstd",) if _zstd is not None else ())
_ALIASES = {"x-gzip": "gzip"}


class DecodeError(Exception):
    """An index body that cannot be decoded (unknown coding, corrupt, over the bound)."""


@functools.lru_cache(maxsize=256)  # asked for every answer; upstreams use a few types
def is_index(content_type: str | None) -> bool:
    """True when a response of this type may need rewriting."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() in INDEX_TYPES


@functools.lru_cache(maxsize=256)
def accept_encoding(value: str) -> str:
    """A client's ``Accept-Encoding`` limited to the codings this process decodes.

    Keeps the client's order and weights; ``identity`` and ``*`` become the decodable list
    as needed. Empty when nothing the client offered is decodable (the upstream then answers
    uncompressed).
    """
    kept: list[str] = []
    for item in value.split(","):
        coding = item.split(";", 1)[0].strip().lower()
        if coding == "*":
            params = item.strip()[1:]  # ";q=0.1" stays with every coding it stands for
            named = {k.split(";", 1)[0].strip().lower() for k in value.split(",")}
            kept.extend(c + params for c in DECODABLE if c not in named)
        elif _ALIASES.get(coding, coding) in DECODABLE or coding == "identity":
            kept.append(item.strip())
    return ", ".join(kept)


def decode(body: bytes, encoding: str, limit: int = MAX_INDEX_BYTES) -> bytes:
    """The identity form of ``body`` sent with ``Content-Encoding: encoding``.

    Several codings (``gzip, br``) are undone in reverse order. Raise :class:`DecodeError`
    for a coding not decodable here, a corrupt body, or one that inflates past ``limit``.
    """
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        body = _decode_one(body, _ALIASES.get(coding, coding), limit)
    if len(body) > limit:
        raise DecodeError(f"the body is over {limit} bytes")
    return body


def _decode_one(body: bytes, coding: str, limit: int) -> bytes:
    if coding == "identity":
        return body
    try:
        if coding == "gzip":
            return _zlib(body, 16 + zlib.MAX_WBITS, limit)
        if coding == "deflate":
            try:
                return _zlib(body, zlib.MAX_WBITS, limit)
            except zlib.error:  # "deflate" sent raw, without the zlib wrapper (common)
                return _zlib(body, -zlib.MAX_WBITS, limit)
        if coding == "br" and _brotli is not None:
            return _br(body, limit)
        if coding == "zstd" and _zstd is not None:
            return _zstandard(body, limit)
    except DecodeError:
        raise
    except _CORRUPT as exc:
        raise DecodeError(f"the {coding} body is corrupt ({exc.__class__.__name__})") from None
    hint = {"br": " (install the brotli package)",
            "zstd": " (install the zstandard package)"}.get(coding, "")
    raise DecodeError(f"content coding {coding!r} cannot be decoded here{hint}")


def _too_big(coding: str, limit: int) -> DecodeError:
    return DecodeError(f"the {coding} body inflates past {limit} bytes")


def _zlib(body: bytes, wbits: int, limit: int) -> bytes:
    coding = "gzip" if wbits > zlib.MAX_WBITS else "deflate"
    out = bytearray()
    data = body
    while data:
        inflater = zlib.decompressobj(wbits)
        out += inflater.decompress(data, limit + 1 - len(out))
        if len(out) > limit or inflater.unconsumed_tail:
            raise _too_big(coding, limit)
        if not inflater.eof:
            raise DecodeError(f"the {coding} body is truncated")
        data = inflater.unused_data if wbits > zlib.MAX_WBITS else b""  # gzip members
    return bytes(out)


def _br(body: bytes, limit: int) -> bytes:
    assert _brotli is not None
    inflater = _brotli.Decompressor()
    out = inflater.process(body, output_buffer_limit=limit + 1)
    if len(out) > limit or not inflater.can_accept_more_data():
        raise _too_big("br", limit)
    if not inflater.is_finished():
        raise DecodeError("the br body is truncated")
    return bytes(out)


def _zstandard(body: bytes, limit: int) -> bytes:
    assert _zstd is not None
    reader = _zstd.ZstdDecompressor().stream_reader(body, read_across_frames=True)
    out = bytearray()
    while len(out) <= limit and (piece := reader.read(min(1 << 20, limit + 1 - len(out)))):
        out += piece
    if len(out) > limit:
        raise _too_big("zstd", limit)
    return bytes(out)


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
