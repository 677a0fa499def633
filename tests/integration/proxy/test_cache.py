"""The pull-through cache against a stand-in registry that counts what it is asked.

The stand-in answers ``/v2/<repo>/blobs/sha256:<hex>`` for the blobs it holds, per
repository (so a blob can be missing from one repository), can send wrong bytes for a
digest (tampering), and can hold a body back until the test lets it go.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from awstoken import Keeper, MemoryStorage
from awstoken._config.settings import CacheSettings, RouteSettings, ServerSettings, Settings
from tests.fixtures.proxy import RunningProxy, aiohttp_server, running_proxy
from tests.fixtures.wait import wait_until

from .conftest import Reply, call

TOKEN = "Bearer good-token"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"

if TYPE_CHECKING:
    from aiohttp import web


@dataclass
class Registry:
    url: str = ""
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    tampered: set[str] = field(default_factory=set)
    seen: Counter[tuple[str, str]] = field(default_factory=Counter)
    hold: threading.Event | None = None
    chunked: bool = False
    manifests: dict[str, bytes] = field(default_factory=dict)
    no_store: set[str] = field(default_factory=set)
    cut: set[str] = field(default_factory=set)

    def add(self, repo: str, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[(repo, digest)] = data
        return f"sha256:{digest}"

    def gets(self, path: str) -> int:
        return self.seen[("GET", path)]


@contextmanager
def stand_in_registry() -> Iterator[Registry]:
    from aiohttp import web

    state = Registry()

    async def handle(request: web.Request) -> web.StreamResponse:
        state.seen[(request.method, request.path)] += 1
        if request.headers.get("Authorization") != TOKEN:
            return web.Response(status=401)
        if "/manifests/sha256:" in request.path:
            body = state.manifests.get(request.path.rsplit(":", 1)[1])
            if body is None:
                return web.Response(status=404)
            return web.Response(body=body, content_type=MANIFEST_TYPE)
        parts = request.path.split("/blobs/sha256:")
        if len(parts) != 2:
            return web.Response(status=404)
        repo = parts[0].removeprefix("/v2/")
        data = state.blobs.get((repo, parts[1]))
        if data is None:
            return web.Response(status=404, text="blob unknown")
        return await _send_blob(state, request, parts[1], data)

    with aiohttp_server(handle) as url:
        state.url = url
        yield state


async def _send_blob(state: Registry, request: Any, digest: str, data: bytes) -> web.StreamResponse:
    """The blob as the registry's state says: tampered, uncacheable, chunked, cut, held."""
    from aiohttp import web

    if digest in state.tampered:
        data = data[:-1] + bytes([data[-1] ^ 1])
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                       "Docker-Content-Digest": f"sha256:{digest}"})
    if digest in state.no_store:
        resp.headers["Cache-Control"] = "no-store"
    if state.chunked:
        resp.enable_chunked_encoding()
    else:
        resp.content_length = len(data)
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    half = len(data) // 2
    await resp.write(data[:half])
    if digest in state.cut:
        assert request.transport is not None
        request.transport.close()  # half a body, then the connection is gone
        return resp
    if state.hold is not None:
        await asyncio.get_running_loop().run_in_executor(None, state.hold.wait, 30)
    await resp.write(data[half:])
    await resp.write_eof()
    return resp


def settings_for(registry: Registry, cache: Path, *, max_size: int | None = None,
                 htpasswd: str | None = None) -> Settings:
    return Settings(
        server=ServerSettings(admin_listen=("127.0.0.1", 0), htpasswd=htpasswd),
        routes=(RouteSettings(prefix="/v2/", upstream=registry.url, token="ecr",
                              cache=CacheSettings(str(cache), max_size)),))


@pytest.fixture
def keeper() -> Iterator[Keeper]:
    keeper = Keeper(MemoryStorage())
    keeper.rotate("ecr", ["echo", TOKEN])
    for _ in range(200):
        if keeper.token("ecr"):
            break
        time.sleep(0.02)
    try:
        yield keeper
    finally:
        keeper.stop()


@pytest.fixture
def registry() -> Iterator[Registry]:
    with stand_in_registry() as registry:
        yield registry


def objects(cache: Path, *, wait_for: int = 0) -> list[str]:
    """The object names in ``cache`` (waiting, bounded, until there are ``wait_for``: an
    object is renamed into place just after its last byte went to the client)."""
    for _ in range(500):
        names = sorted(os.listdir(cache / "objects")) if (cache / "objects").exists() else []
        if len(names) >= wait_for:
            break
        time.sleep(0.01)
    return names


def metric(proxy: RunningProxy, name: str) -> float:
    assert proxy.admin_url is not None
    text = call(proxy.admin_url, "GET", "/metrics").body.decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(f"awstoken_cache_{name}_total{{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_second_get_is_served_from_cache(tmp_path: Path, registry: Registry,
                                         keeper: Keeper) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = registry.add("team/app", data)
    path = f"/v2/team/app/blobs/{digest}"
    cache = tmp_path / "cache"
    with running_proxy(settings_for(registry, cache), keeper) as proxy:
        first = call(proxy.url, "GET", path)
        assert first.status == 200 and first.body == data
        assert objects(cache, wait_for=1) == [f"blobs-sha256-{digest[7:]}"]
        second = call(proxy.url, "GET", path)
        assert second.status == 200 and second.body == data
        assert second.header("Docker-Content-Digest") == digest
        assert registry.gets(path) == 1
        assert metric(proxy, "hits") == 1 and metric(proxy, "misses") == 1
        assert metric(proxy, "served_bytes") == len(data)
        assert metric(proxy, "fetched_bytes") == len(data)
    assert (cache / "objects").stat().st_mode & 0o777 == 0o700
    assert os.stat(cache / "objects" / objects(cache)[0]).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_range_and_head_on_a_hit(tmp_path: Path, registry: Registry, keeper: Keeper,
                                 uvloop: bool) -> None:
    data = bytes(range(256)) * 4096
    digest = registry.add("team/app", data)
    path = f"/v2/team/app/blobs/{digest}"
    cache = tmp_path / "cache"
    with running_proxy(settings_for(registry, cache), keeper, uvloop=uvloop) as proxy:
        assert call(proxy.url, "GET", path).body == data
        assert objects(cache, wait_for=1)
        head = call(proxy.url, "HEAD", path)
        assert head.status == 200 and head.header("Content-Length") == str(len(data))
        assert head.body == b""
        part = call(proxy.url, "GET", path, [("Range", "bytes=10-19")])
        assert part.status == 206 and part.body == data[10:20]
        assert part.header("Content-Range") == f"bytes 10-19/{len(data)}"
        tail = call(proxy.url, "GET", path, [("Range", "bytes=-5")])
        assert tail.status == 206 and tail.body == data[-5:]
        open_end = call(proxy.url, "GET", path, [("Range", f"bytes={len(data) - 3}-")])
        assert open_end.status == 206 and open_end.body == data[-3:]
        beyond = call(proxy.url, "GET", path, [("Range", f"bytes={len(data)}-")])
        assert beyond.status == 416
        assert beyond.header("Content-Range") == f"bytes */{len(data)}"
        assert registry.gets(path) == 1


def test_tampered_blob_is_not_cached_and_the_transfer_fails(tmp_path: Path, registry: Registry,
                                                           keeper: Keeper) -> None:
    data = os.urandom(2 * 1024 * 1024)
    digest = registry.add("team/app", data)
    registry.tampered.add(digest[7:])
    path = f"/v2/team/app/blobs/{digest}"
    cache = tmp_path / "cache"
    with running_proxy(settings_for(registry, cache), keeper) as proxy:
        for _ in range(2):
            with pytest.raises(http.client.IncompleteRead):
                call(proxy.url, "GET", path)
        assert objects(cache) == []
        assert os.listdir(cache / "tmp") == []
        assert metric(proxy, "verify_failures") == 2
        assert registry.gets(path) == 2  # nothing was served from the cache


def test_tampered_chunked_blob_never_gets_its_last_chunk(tmp_path: Path, registry: Registry,
                                                        keeper: Keeper) -> None:
    registry.chunked = True
    data = os.urandom(300_000)
    digest = registry.add("team/app", data)
    registry.tampered.add(digest[7:])
    cache = tmp_path / "cache"
    with running_proxy(settings_for(registry, cache), keeper) as proxy:
        with pytest.raises(http.client.IncompleteRead):
            call(proxy.url, "GET", f"/v2/team/app/blobs/{digest}")
        assert objects(cache) == []
        good = registry.add("team/app", b"fine" * 50_000)
        assert call(proxy.url, "GET", f"/v2/team/app/blobs/{good}").body == b"fine" * 50_000
        assert objects(cache, wait_for=1) == [f"blobs-sha256-{good[7:]}"]


def test_blob_cached_from_one_repository_is_not_served_for_another(
        tmp_path: Path, registry: Registry, keeper: Keeper) -> None:
    data = os.urandom(100_000)
    digest = registry.add("team/app", data)
    with running_proxy(settings_for(registry, tmp_path / "cache"), keeper) as proxy:
        assert call(proxy.url, "GET", f"/v2/team/app/blobs/{digest}").status == 200
        other = f"/v2/other/secret/blobs/{digest}"
        reply = call(proxy.url, "GET", other)
        assert reply.status == 404 and reply.body != data
        assert registry.seen[("HEAD", other)] == 1
        # Once the upstream has it for that repository too, the cache answers.
        registry.add("other/secret", data)
        assert call(proxy.url, "GET", other).body == data
        assert registry.seen[("HEAD", other)] == 2 and registry.gets(other) == 1
        # Confirmed: the next hit asks nothing upstream.
        assert call(proxy.url, "GET", other).body == data
        assert registry.seen[("HEAD", other)] == 2 and registry.gets(other) == 1


def test_inbound_auth_applies_to_hits(tmp_path: Path, registry: Registry, keeper: Keeper) -> None:
    bcrypt = pytest.importorskip("bcrypt")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("ci:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode() + "\n")
    digest = registry.add("team/app", b"layer" * 1000)
    path = f"/v2/team/app/blobs/{digest}"
    import base64

    good = [("Authorization", "Basic " + base64.b64encode(b"ci:pw").decode())]
    with running_proxy(settings_for(registry, tmp_path / "cache", htpasswd=str(htpasswd)),
                       keeper) as proxy:
        assert call(proxy.url, "GET", path, good).status == 200
        assert call(proxy.url, "GET", path).status == 401
        assert call(proxy.url, "HEAD", path).status == 401
        assert call(proxy.url, "GET", path, good).status == 200
        assert registry.gets(path) == 1


def test_concurrent_first_requests_fetch_once(tmp_path: Path, registry: Registry,
                                              keeper: Keeper) -> None:
    data = os.urandom(1024 * 1024)
    digest = registry.add("team/app", data)
    path = f"/v2/team/app/blobs/{digest}"
    registry.hold = threading.Event()
    with running_proxy(settings_for(registry, tmp_path / "cache"), keeper) as proxy:
        store = proxy.server.cache.stores["/v2/"]
        with ThreadPoolExecutor(8) as pool:
            replies = [pool.submit(call, proxy.url, "GET", path) for _ in range(8)]
            for _ in range(500):  # until all 8 are in: one fetching, seven waiting
                if store._lock_users.get(f"blobs-sha256-{digest[7:]}") == 8:
                    break
                time.sleep(0.01)
            registry.hold.set()
            results: list[Reply] = [r.result(30) for r in replies]
        assert all(r.status == 200 and r.body == data for r in results)
        assert registry.gets(path) == 1
        assert metric(proxy, "hits") == 7


def test_eviction_keeps_the_store_under_max_size(tmp_path: Path, registry: Registry,
                                                 keeper: Keeper) -> None:
    cache = tmp_path / "cache"
    digests = [registry.add("team/app", os.urandom(400_000)) for _ in range(4)]
    names = [f"blobs-sha256-{d[7:]}" for d in digests]
    with running_proxy(settings_for(registry, cache, max_size=1_000_000), keeper) as proxy:
        for i, digest in enumerate(digests):
            assert call(proxy.url, "GET", f"/v2/team/app/blobs/{digest}").status == 200
            for _ in range(500):
                if names[i] in objects(cache):
                    break
                time.sleep(0.01)
            if i == 1:
                # Recency by modification time: the first is the least recently used.
                past = time.time() - 3600
                os.utime(cache / "objects" / names[0], (past, past))
                os.utime(cache / "objects" / names[1], (past + 10, past + 10))
        for _ in range(500):
            if metric(proxy, "evictions") >= 2:
                break
            time.sleep(0.01)
        left = objects(cache)
        assert sum(os.path.getsize(cache / "objects" / n) for n in left) <= 1_000_000
        assert names[3] in left and names[0] not in left and names[1] not in left
        assert metric(proxy, "evictions") == 2
        assert sorted(os.listdir(cache / "locks")) == sorted([".evict", *left])


def test_full_disk_falls_back_to_uncached(tmp_path: Path, registry: Registry, keeper: Keeper,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """A 1 MiB tmpfs holds the cache: a 3 MiB blob cannot be stored, yet is served."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        data = os.urandom(3 * 1024 * 1024)
        digest = registry.add("team/app", data)
        small = registry.add("team/app", b"small" * 1000)
        cache = mount / "cache"
        with running_proxy(settings_for(registry, cache), keeper) as proxy:
            for _ in range(3):
                reply = call(proxy.url, "GET", f"/v2/team/app/blobs/{digest}")
                assert reply.status == 200 and reply.body == data
            assert objects(cache) == []
            assert os.listdir(cache / "tmp") == []
            assert call(proxy.url, "GET", f"/v2/team/app/blobs/{small}").status == 200
        lines = [r for r in caplog.records if "unusable" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_symlink_planted_in_the_store_is_not_followed(tmp_path: Path, registry: Registry,
                                                      keeper: Keeper) -> None:
    data = b"real layer" * 1000
    digest = registry.add("team/app", data)
    cache = tmp_path / "cache"
    secret = tmp_path / "secret"
    secret.write_text("not for clients")
    with running_proxy(settings_for(registry, cache), keeper) as proxy:
        os.symlink(secret, cache / "objects" / f"blobs-sha256-{digest[7:]}")
        reply = call(proxy.url, "GET", f"/v2/team/app/blobs/{digest}")
        assert reply.status == 200 and reply.body == data
        assert objects(cache, wait_for=1)
        stored = cache / "objects" / f"blobs-sha256-{digest[7:]}"
        for _ in range(500):
            if not stored.is_symlink():
                break
            time.sleep(0.01)
        assert not stored.is_symlink() and secret.read_text() == "not for clients"
        assert call(proxy.url, "GET", f"/v2/team/app/blobs/{digest}").body == data
        assert registry.gets(f"/v2/team/app/blobs/{digest}") == 1


def test_cache_directory_of_another_user_is_refused(tmp_path: Path, registry: Registry,
                                                    keeper: Keeper) -> None:
    from awstoken._errors import ConfigError

    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o770)  # noqa: S103 (the point: a group can write it)
    with pytest.raises(ConfigError, match="mode 0700"), \
            running_proxy(settings_for(registry, cache), keeper):
        pass


def test_sigkill_mid_write_leaves_nothing_visible(tmp_path: Path, registry: Registry) -> None:
    """``awstoken serve -c FILE`` killed while an object is half written: no object appears,
    and the restarted proxy drops the orphan temporary file and caches the object."""
    from tests.fixtures.cli import awstoken_cli
    from tests.fixtures.ports import free_port, wait_for_port

    data = os.urandom(4 * 1024 * 1024)
    digest = registry.add("team/app", data)
    path = f"/v2/team/app/blobs/{digest}"
    cache = tmp_path / "cache"
    port, admin = free_port(), free_port()
    config = tmp_path / "awstoken.toml"
    config.write_text(f"""
[storage]
type = "memory"

[tokens.ecr]
command = "echo good-token"
format = "Bearer {{token}}"

[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"

[[routes]]
prefix = "/v2/"
upstream = "{registry.url}"
token = "ecr"
cache = {{ path = "cache", max_size = "1G" }}
""")

    def serve() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([*awstoken_cli(), "serve", "-c", str(config)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            # Both listeners (the admin one may come after the proxy's), then the token.
            wait_for_port(port)
            wait_for_port(admin)
            wait_until(lambda: call(f"http://127.0.0.1:{admin}", "GET", "/readyz").status == 200,
                       30, "serve ready")
        except BaseException:
            proc.kill()  # never leave a serve process behind for a later test to trip on
            proc.wait(10)
            raise
        return proc

    registry.hold = threading.Event()
    proc = serve()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        assert len(response.read(1024 * 1024)) == 1024 * 1024  # half is on its way
        for _ in range(500):  # the temporary file has what was sent so far
            written = [os.path.getsize(cache / "tmp" / n) for n in os.listdir(cache / "tmp")]
            if written and written[0] >= len(data) // 2:
                break
            time.sleep(0.01)
        assert written and written[0] >= len(data) // 2
        proc.kill()
        proc.wait(10)
        conn.close()
        assert objects(cache) == []
        assert len(os.listdir(cache / "tmp")) == 1  # the orphan, invisible to readers
        registry.hold.set()
        proc = serve()
        reply = call(f"http://127.0.0.1:{port}", "GET", path)
        assert reply.status == 200 and reply.body == data
        assert objects(cache, wait_for=1) == [f"blobs-sha256-{digest[7:]}"]
        assert os.listdir(cache / "tmp") == []
        assert call(f"http://127.0.0.1:{port}", "GET", path).body == data
        assert registry.gets(path) == 2
    finally:
        registry.hold.set()
        proc.kill()
        proc.wait(10)


def test_awstoken_cache_shows_size_and_hit_ratio(tmp_path: Path, registry: Registry,
                                                 keeper: Keeper,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from awstoken._cli import main

    data = os.urandom(200_000)
    digest = registry.add("team/app", data)
    cache = tmp_path / "cache"
    with running_proxy(settings_for(registry, cache, max_size=10 * 1024 * 1024),
                       keeper) as proxy:
        for _ in range(4):
            assert call(proxy.url, "GET", f"/v2/team/app/blobs/{digest}").body == data
            objects(cache, wait_for=1)
    config = tmp_path / "awstoken.toml"
    config.write_text(f"""
[tokens.ecr]
command = "echo x"

[[routes]]
prefix = "/v2/"
upstream = "{registry.url}"
token = "ecr"
cache = {{ path = "cache", max_size = "10M" }}
""")
    capsys.readouterr()
    assert main(["cache", "-c", str(config), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["caches"][0]
    assert shown["objects"] == 1 and shown["bytes"] > len(data)
    assert (shown["hits"], shown["misses"], shown["hit_ratio"]) == (3, 1, 0.75)
    assert shown["max_size"] == 10 * 1024 * 1024
    assert main(["cache", "-c", str(config)]) == 0
    table = capsys.readouterr().out
    assert "75.0%" in table and "10.0 MiB" in table


def test_manifest_by_digest_is_cached_with_its_media_type(tmp_path: Path, registry: Registry,
                                                          keeper: Keeper) -> None:
    manifest = b'{"schemaVersion": 2, "mediaType": "' + MANIFEST_TYPE.encode() + b'"}'
    digest = hashlib.sha256(manifest).hexdigest()
    registry.manifests[digest] = manifest
    path = f"/v2/team/app/manifests/sha256:{digest}"
    cache = tmp_path / "cache"
    with running_proxy(settings_for(registry, cache), keeper) as proxy:
        assert call(proxy.url, "GET", path).body == manifest
        assert objects(cache, wait_for=1) == [f"manifests-sha256-{digest}"]
        hit = call(proxy.url, "GET", path)
        assert hit.body == manifest and hit.header("Content-Type") == MANIFEST_TYPE
        assert hit.header("Docker-Content-Digest") == f"sha256:{digest}"
        assert registry.gets(path) == 1
        # By tag: never cached.
        assert call(proxy.url, "GET", "/v2/team/app/manifests/latest").status == 404
        assert call(proxy.url, "GET", "/v2/team/app/manifests/latest").status == 404
        assert registry.gets("/v2/team/app/manifests/latest") == 2


def test_workers_share_one_fetch(tmp_path: Path, registry: Registry) -> None:
    """Two worker processes of ``awstoken serve``: 8 concurrent first requests, spread by
    the kernel over both, make one upstream fetch (flock across processes)."""
    from tests.fixtures.cli import awstoken_cli
    from tests.fixtures.ports import free_port, wait_for_port

    data = os.urandom(2 * 1024 * 1024)
    digest = registry.add("team/app", data)
    path = f"/v2/team/app/blobs/{digest}"
    port, admin = free_port(), free_port()
    config = tmp_path / "awstoken.toml"
    config.write_text(f"""
[storage]
type = "file"
path = "{tmp_path / 'tokens'}"

[tokens.ecr]
command = "echo good-token"
format = "Bearer {{token}}"

[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
workers = 2

[[routes]]
prefix = "/v2/"
upstream = "{registry.url}"
token = "ecr"
cache = "cache"
""")
    registry.hold = threading.Event()
    proc = subprocess.Popen([*awstoken_cli(), "serve", "-c", str(config)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        wait_for_port(admin)
        # Ready once every worker is bound and the token is stored (sources start only then):
        # a request before that would get a 503, not test the shared fetch.
        for _ in range(600):
            if call(f"http://127.0.0.1:{admin}", "GET", "/readyz").status == 200:
                break
            time.sleep(0.05)
        with ThreadPoolExecutor(8) as pool:
            replies = [pool.submit(call, f"http://127.0.0.1:{port}", "GET", path)
                       for _ in range(8)]
            for _ in range(1000):
                if registry.gets(path):
                    break
                time.sleep(0.01)
            registry.hold.set()
            results = [r.result(60) for r in replies]
        assert all(r.status == 200 and r.body == data for r in results)
        assert registry.gets(path) == 1
    finally:
        registry.hold.set()
        proc.terminate()
        proc.wait(30)


def test_awstoken_serve_refuses_a_cache_directory_open_to_others(tmp_path: Path) -> None:
    from tests.fixtures.cli import awstoken_cli
    from tests.fixtures.ports import free_port

    cache = tmp_path / "shared"
    cache.mkdir()
    os.chmod(cache, 0o1777)  # noqa: S103 (the point: anyone can plant files in it)
    config = tmp_path / "awstoken.toml"
    config.write_text(f"""
[tokens.ecr]
command = "echo good-token"

[server]
listen = "127.0.0.1:{free_port()}"
admin_listen = "127.0.0.1:{free_port()}"
workers = 2

[[routes]]
prefix = "/v2/"
upstream = "http://127.0.0.1:9"
token = "ecr"
cache = "shared"
""")
    done = subprocess.run([*awstoken_cli(), "serve", "-c", str(config)], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 1, done.stderr
    assert f"cache directory {str(cache)!r} must be owned by this user" in done.stderr
    assert "mode 1777" in done.stderr and "Traceback" not in done.stderr


def test_no_store_and_broken_bodies_are_not_cached(tmp_path: Path, registry: Registry,
                                                   keeper: Keeper) -> None:
    private = registry.add("team/app", os.urandom(300_000))
    registry.no_store.add(private[7:])
    broken = registry.add("team/app", os.urandom(3 * 1024 * 1024))
    registry.cut.add(broken[7:])
    cache = tmp_path / "cache"
    with running_proxy(settings_for(registry, cache), keeper) as proxy:
        for _ in range(2):
            assert call(proxy.url, "GET", f"/v2/team/app/blobs/{private}").status == 200
            with pytest.raises(http.client.IncompleteRead):
                call(proxy.url, "GET", f"/v2/team/app/blobs/{broken}")
        assert registry.gets(f"/v2/team/app/blobs/{private}") == 2
        assert registry.gets(f"/v2/team/app/blobs/{broken}") == 2
        assert objects(cache) == [] and os.listdir(cache / "tmp") == []
        assert metric(proxy, "verify_failures") == 0


@pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_hits_on_one_keep_alive_connection(tmp_path: Path, registry: Registry, keeper: Keeper,
                                           uvloop: bool) -> None:
    """sendfile writes past the transport: the connection must stay usable after it."""
    data = os.urandom(5 * 1024 * 1024)
    digest = registry.add("team/app", data)
    path = f"/v2/team/app/blobs/{digest}"
    cache = tmp_path / "cache"
    with running_proxy(settings_for(registry, cache), keeper, uvloop=uvloop) as proxy:
        assert call(proxy.url, "GET", path).body == data
        objects(cache, wait_for=1)
        port = int(proxy.url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for method, headers, expected in (
                    ("GET", {}, data), ("HEAD", {}, b""), ("GET", {"Range": "bytes=7-"}, data[7:]),
                    ("GET", {}, data), ("GET", {"Range": "bytes=0-0"}, data[:1])):
                conn.request(method, path, headers=headers)
                response = conn.getresponse()
                assert response.read() == expected
        finally:
            conn.close()
        assert registry.gets(path) == 1


def test_read_only_disk_falls_back_to_uncached(tmp_path: Path, registry: Registry,
                                               keeper: Keeper,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """The cache's tmpfs remounted read-only under a running proxy: answers stay whole."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        first = registry.add("team/app", os.urandom(500_000))
        second = registry.add("team/app", os.urandom(500_000))
        cache = mount / "cache"
        with running_proxy(settings_for(registry, cache), keeper) as proxy:
            assert call(proxy.url, "GET", f"/v2/team/app/blobs/{first}").status == 200
            objects(cache, wait_for=1)
            # "mount point is busy" while the proxy still has the object's file open for
            # writing (it appears before it is closed): once under load. Try again.
            wait_until(lambda: subprocess.run(["mount", "-o", "remount,ro", str(mount)],
                                              capture_output=True).returncode == 0,
                       10, f"{mount} remounted read-only")
            for _ in range(3):
                reply = call(proxy.url, "GET", f"/v2/team/app/blobs/{second}")
                assert reply.status == 200 and len(reply.body) == 500_000
            # What was cached before is still served from the read-only disk.
            assert call(proxy.url, "GET", f"/v2/team/app/blobs/{first}").status == 200
            assert registry.gets(f"/v2/team/app/blobs/{first}") == 1
            assert registry.gets(f"/v2/team/app/blobs/{second}") == 3
        lines = [r for r in caplog.records if "unusable" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
    finally:
        subprocess.run(["umount", str(mount)], check=False)
