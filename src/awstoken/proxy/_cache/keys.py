"""What the pull-through cache may hold: objects named by their digest or hash.

An OCI blob or manifest is named by the digest in its path (:func:`oci_key`); a package
file by the hash its index page or metadata gave for its URL (:class:`Learned`). Only such
content is cached, and its bytes are verified against that name while they stream.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit


@dataclass(frozen=True, slots=True)
class Key:
    """What an object is: ``kind`` (blobs, manifests, files), hash algorithm and hex digest.

    ``repo`` is the OCI repository it was asked for ("" for package files): a hit for a
    repository is served only once the upstream confirmed that repository has the digest.
    """

    kind: str
    algo: str
    hex: str
    repo: str = ""

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.algo}-{self.hex}"

    @property
    def digest(self) -> str:
        return f"{self.algo}:{self.hex}"


_OCI = re.compile(r"/v2/(?P<repo>[a-z0-9][a-z0-9._/-]{0,254})/(?P<kind>blobs|manifests)/"
                  r"sha256:(?P<hex>[0-9a-f]{64})")


def oci_key(upstream_target: str) -> Key | None:
    """The key of an OCI blob or manifest requested by digest (never by tag, never with a
    query), from the upstream request target."""
    if "?" in upstream_target or "/v2/" not in upstream_target:
        return None
    match = _OCI.search(upstream_target)
    if match is None or match.end() != len(upstream_target):
        return None
    repo = match.group("repo")
    if "//" in repo or repo.endswith("/") or ".." in repo:
        return None
    return Key(match.group("kind"), "sha256", match.group("hex"), repo)


# -- package files: hashes learned from index pages ------------------------------------------

_HREF = re.compile(rb"""href\s*=\s*["']([^"'#\s]+)#(sha256|sha512)=([0-9a-fA-F]{64,128})["']""")
_HEX_LEN = {"sha256": 64, "sha512": 128}


class Learned:
    """Hashes of package files, learned from the index pages this process forwarded.

    A PEP 503/691 simple page links each file with ``#sha256=``; npm metadata gives each
    tarball's ``dist.integrity`` (sha512). The proxy sees the file's URL without that
    fragment, so the hash is remembered here, by route and upstream path, for ``ttl``
    seconds: the file is cached and served from cache only under a hash that an index
    fetched with the route's token named shortly before (pip and npm read the index
    first). Bounded: the oldest entries go first.
    """

    def __init__(self, *, ttl: float = 3600.0, limit: int = 200_000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._entries: OrderedDict[tuple[str, str], tuple[str, str, float]] = OrderedDict()

    def get(self, route: str, upstream_target: str) -> tuple[str, str] | None:
        entry = self._entries.get((route, upstream_target))
        if entry is None or entry[2] < time.monotonic() or not entry[0]:
            return None
        return entry[0], entry[1]

    def put(self, route: str, upstream_target: str, algo: str, hex_: str) -> None:
        key = (route, upstream_target)
        now = time.monotonic()
        hex_ = hex_.lower()
        old = self._entries.get(key)
        if old is not None and old[2] >= now and (old[0], old[1]) != (algo, hex_):
            # Two index pages name different hashes for one file (one of them may be a
            # package published to poison another's downloads): cache neither, so that
            # the file is proxied as it is instead of failing verification.
            algo = hex_ = ""
        self._entries[key] = (algo, hex_, now + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def learn(self, route: str, page_url: str, origins: tuple[str, ...], body: bytes,
              to_target: Any) -> int:
        """Remember the hashed links of one index ``body`` fetched from ``page_url``.

        Only links to one of ``origins`` count (the upstream's, or the proxy's own when the
        upstream built its URLs from forwarded headers); ``to_target(origin, path)`` maps
        such a link to the upstream request target. Returns how many were learned.
        """
        count = 0
        for url, algo, hex_ in _hashed_links(body):
            absolute = urljoin(page_url, url)
            parts = urlsplit(absolute)
            origin = f"{parts.scheme}://{parts.netloc}"
            if origin not in origins or len(hex_) != _HEX_LEN[algo]:
                continue
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            target = to_target(origin, path)
            if target is not None:
                self.put(route, target, algo, hex_)
                count += 1
        return count


def _hashed_links(body: bytes) -> Iterator[tuple[str, str, str]]:
    """(url, algo, hex) for each file link with a hash in an HTML or JSON index body."""
    head = body[:1].lstrip() or body.lstrip()[:1]
    if head == b"{":
        try:
            doc = json.loads(body)
        except ValueError:
            return
        if isinstance(doc, dict):
            yield from _json_links(doc)
        return
    for match in _HREF.finditer(body):
        yield (html.unescape(match.group(1).decode("latin-1")), match.group(2).decode(),
               match.group(3).decode().lower())


def _json_links(doc: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    files = doc.get("files")
    if isinstance(files, list):  # PEP 691
        yield from _pep691_links(files)
    versions = doc.get("versions")
    if isinstance(versions, dict):  # npm metadata (full or abbreviated)
        yield from _npm_links(versions)


def _pep691_links(files: list[Any]) -> Iterator[tuple[str, str, str]]:
    for item in files:
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            hashes = item.get("hashes")
            if isinstance(hashes, dict) and isinstance(hashes.get("sha256"), str):
                yield item["url"], "sha256", hashes["sha256"].lower()


def _npm_links(versions: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for version in versions.values():
        dist = version.get("dist") if isinstance(version, dict) else None
        if not isinstance(dist, dict) or not isinstance(dist.get("tarball"), str):
            continue
        integrity = dist.get("integrity")
        if isinstance(integrity, str):
            hex_ = _sha512_of(integrity)
            if hex_ is not None:
                yield dist["tarball"], "sha512", hex_


def _sha512_of(integrity: str) -> str | None:
    """The hex sha512 of a subresource-integrity string (the first valid one), or None."""
    for part in integrity.split():
        algo, _, b64 = part.partition("-")
        if algo == "sha512":
            try:
                return base64.b64decode(b64.split("?", 1)[0], validate=True).hex()
            except ValueError:
                continue
    return None


__all__ = ["Key", "Learned", "oci_key"]
