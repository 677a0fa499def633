"""The cache's pure parts: configuration, what may be cached, ranges, learned hashes."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from awstoken._config.load import loads, parse_size
from awstoken._config.settings import CacheSettings
from awstoken._errors import ConfigError
from awstoken.proxy._cache.keys import Key, Learned, oci_key
from awstoken.proxy._cache.serve import parse_range

HEX = "a" * 64
ROUTE = """
[tokens.ecr]
command = "echo x"

[[routes]]
prefix = "/v2/"
upstream = "https://registry.example"
token = "ecr"
"""


def test_cache_is_off_by_default() -> None:
    assert loads(ROUTE).routes[0].cache is None


def test_cache_as_a_path_or_a_table(tmp_path: Path) -> None:
    plain = loads(ROUTE + 'cache = "layers"\n', base_dir=tmp_path).routes[0].cache
    assert plain == CacheSettings(str(tmp_path / "layers"))
    table = loads(ROUTE + 'cache = { path = "/var/cache/awstoken", max_size = "10G" }\n')
    assert table.routes[0].cache == CacheSettings("/var/cache/awstoken", 10 * 1024 ** 3)


@pytest.mark.parametrize(("text", "problem"), [
    ("cache = 5", "routes[0].cache: expected a directory path or a table"),
    ('cache = { max_size = "1G" }', "routes[0].cache.path: missing"),
    ('cache = { path = "x", max_size = "lots" }', "routes[0].cache.max_size: expected a number"),
    ('cache = { path = "x", max_size = 0 }', "routes[0].cache.max_size"),
    ('cache = { path = "x", size = "1G" }', "routes[0].cache.size: unknown key"),
])
def test_bad_cache_settings_name_the_key(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="<config>: " + problem.replace("[", r"\[")
                       .replace("]", r"\]")):
        loads(ROUTE + text + "\n")


@pytest.mark.parametrize(("text", "size"), [
    (1000, 1000), ("500M", 500 * 1024 ** 2), ("10G", 10 * 1024 ** 3), ("1.5GiB", 1536 * 1024 ** 2),
    ("2k", 2048), ("64", 64)])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_only_digest_addresses_are_oci_keys() -> None:
    assert oci_key(f"/v2/team/app/blobs/sha256:{HEX}") == Key("blobs", "sha256", HEX, "team/app")
    assert oci_key(f"/base/v2/a/b/c/manifests/sha256:{HEX}") == \
        Key("manifests", "sha256", HEX, "a/b/c")
    for target in ("/v2/team/app/manifests/latest", f"/v2/team/app/blobs/sha256:{HEX}?x=1",
                   f"/v2/team/app/blobs/sha256:{HEX[:-1]}", f"/v2/team/app/blobs/sha512:{HEX}",
                   f"/v2/team/../app/blobs/sha256:{HEX}", f"/v2/Team/blobs/sha256:{HEX}",
                   f"/v2/team/app/blobs/uploads/sha256:{HEX}",
                   f"/v2/team/app/blobs/sha256:{HEX}/x", f"/v2//blobs/sha256:{HEX}"):
        assert oci_key(target) is None, target


@pytest.mark.parametrize(("header", "size", "expected"), [
    ("bytes=0-9", 100, (0, 9)), ("bytes=90-", 100, (90, 99)), ("bytes=-10", 100, (90, 99)),
    ("bytes=-500", 100, (0, 99)), ("bytes=50-500", 100, (50, 99)), ("bytes=100-", 100, False),
    ("bytes=100-200", 100, False), ("bytes=-0", 100, False), ("bytes=0-1,5-6", 100, None),
    ("items=0-1", 100, None), ("bytes=5-1", 100, None), ("bytes=x-1", 100, None),
    ("bytes=0", 100, None)])
def test_ranges(header: str, size: int, expected: object) -> None:
    assert parse_range(header, size) == expected


def test_hashes_are_learned_from_simple_pages_and_npm_metadata() -> None:
    learned = Learned()
    page = (b'<a href="../../packages/demo-1.0.whl#sha256=' + b"b" * 64 + b'">demo</a>'
            b'<a href="https://elsewhere.example/x.whl#sha256=' + b"c" * 64 + b'">x</a>'
            b'<a href="/packages/nohash.whl">n</a>')

    def same(origin: str, path: str) -> str:
        return path

    origins = ("https://up.example",)
    assert learned.learn("r", "https://up.example/simple/demo/", origins, page, same) == 1
    assert learned.get("r", "/packages/demo-1.0.whl") == ("sha256", "b" * 64)
    assert learned.get("r", "/x.whl") is None
    assert learned.get("other-route", "/packages/demo-1.0.whl") is None
    tarball = hashlib.sha512(b"tgz").digest()
    meta = json.dumps({"name": "p", "versions": {"1.0.0": {"dist": {
        "tarball": "https://up.example/p/-/p-1.0.0.tgz",
        "integrity": "sha512-" + base64.b64encode(tarball).decode()}}}}).encode()
    assert learned.learn("r", "https://up.example/p", origins, meta, same) == 1
    assert learned.get("r", "/p/-/p-1.0.0.tgz") == ("sha512", tarball.hex())
    pep691 = json.dumps({"files": [{"url": "f-1.tar.gz", "hashes": {"sha256": "d" * 64}}]})
    assert learned.learn("r", "https://up.example/simple/f/", origins, pep691.encode(), same) == 1
    assert learned.get("r", "/simple/f/f-1.tar.gz") == ("sha256", "d" * 64)


def test_learned_hashes_are_bounded_and_expire() -> None:
    learned = Learned(ttl=-1.0, limit=2)
    learned.put("r", "/a", "sha256", HEX)
    assert learned.get("r", "/a") is None  # expired at once
    learned = Learned(limit=2)
    for name in ("/a", "/b", "/c"):
        learned.put("r", name, "sha256", HEX)
    assert learned.get("r", "/a") is None and learned.get("r", "/c") is not None


def test_conflicting_hashes_for_one_file_disable_caching_it() -> None:
    learned = Learned()
    learned.put("r", "/packages/a.whl", "sha256", "b" * 64)
    learned.put("r", "/packages/a.whl", "sha256", "b" * 64)
    assert learned.get("r", "/packages/a.whl") == ("sha256", "b" * 64)
    learned.put("r", "/packages/a.whl", "sha256", "c" * 64)  # another page, another hash
    assert learned.get("r", "/packages/a.whl") is None
    learned.put("r", "/packages/a.whl", "sha256", "b" * 64)
    assert learned.get("r", "/packages/a.whl") is None  # until the entry expires
