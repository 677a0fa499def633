"""The cache under skopeo, against Debian's docker-registry: upstream requests counted in
the registry's own access log."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from awstoken import Keeper, MemoryStorage, basic_auth
from awstoken._config.settings import CacheSettings, RouteSettings, Settings
from tests.fixtures.docker_registry import Registry, run_registry
from tests.fixtures.proxy import running_proxy
from tests.fixtures.registry import write_htpasswd

PASSWORD = "registry-password"
_ACCESS = re.compile(r'"(GET|HEAD) (/v2/[^ ]+) HTTP/1\.1" (\d+)')


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def make_image(layout: Path, layers: list[bytes]) -> list[str]:
    """An OCI layout with one gzip'd tar layer per payload; returns every blob digest."""
    descriptors: list[dict[str, Any]] = []
    diff_ids: list[str] = []
    for i, payload in enumerate(layers):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            info = tarfile.TarInfo(f"file{i}.bin")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        diff_ids.append("sha256:" + hashlib.sha256(raw.getvalue()).hexdigest())
        digest, size = _blob(layout, gzip.compress(raw.getvalue(), mtime=0, compresslevel=1))
        descriptors.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": digest, "size": size})
    config, config_size = _blob(layout, json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode())
    manifest, manifest_size = _blob(layout, json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                   "size": config_size},
        "layers": descriptors}).encode())
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest,
        "size": manifest_size, "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    return [d["digest"] for d in descriptors] + [config]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    htpasswd = tmp_path / "htpasswd"
    write_htpasswd(htpasswd, "AWS", PASSWORD)
    with run_registry(htpasswd, tmp_path / "registry") as registry:
        yield registry


@pytest.fixture
def pushed(tmp_path: Path, registry: Registry,
           skopeo: tuple[str, dict[str, str]]) -> list[str]:
    binary, env = skopeo
    layout = tmp_path / "layout"
    blobs = make_image(layout, [os.urandom(n) for n in (1_500_000, 700_000, 90_000)])
    push = run([binary, "copy", "--dest-tls-verify=false", "--dest-creds", f"AWS:{PASSWORD}",
                f"oci:{layout}:latest", f"docker://{registry.host}/team/app:1"], env)
    assert push.returncode == 0, push.stderr
    return blobs


@pytest.fixture
def keeper() -> Iterator[Keeper]:
    keeper = Keeper(MemoryStorage())
    keeper.rotate("ecr", ["echo", PASSWORD], basic_auth("AWS"))
    for _ in range(200):
        if keeper.token("ecr"):
            break
        time.sleep(0.02)
    try:
        yield keeper
    finally:
        keeper.stop()


def blob_gets(registry: Registry) -> Counter[str]:
    """Successful upstream blob GETs by path, from the registry's access log."""
    counts: Counter[str] = Counter()
    for method, path, status in _ACCESS.findall(registry.log.read_text(errors="replace")):
        if method == "GET" and "/blobs/sha256:" in path and status == "200":
            counts[path] += 1
    return counts


def settings(registry: Registry, cache: Path) -> Settings:
    return Settings(routes=(RouteSettings(prefix="/", upstream=registry.url, token="ecr",
                                          cache=CacheSettings(str(cache))),))


def test_second_skopeo_pull_makes_no_upstream_blob_request(
        tmp_path: Path, registry: Registry, pushed: list[str], keeper: Keeper,
        skopeo: tuple[str, dict[str, str]]) -> None:
    binary, env = skopeo
    with running_proxy(settings(registry, tmp_path / "cache"), keeper, uvloop=True) as proxy:
        target = proxy.url.removeprefix("http://")
        for n in (1, 2):
            before = blob_gets(registry)
            pull = run([binary, "copy", "--src-tls-verify=false",
                        f"docker://{target}/team/app:1", f"dir:{tmp_path / f'pull{n}'}"], env)
            assert pull.returncode == 0, pull.stderr
            for digest in pushed:
                assert (tmp_path / f"pull{n}" / digest.removeprefix("sha256:")).exists()
            fetched = blob_gets(registry) - before
            if n == 1:
                assert sum(fetched.values()) == len(pushed), fetched
                # The next pull must find every object committed (renamed after the last byte).
                for _ in range(500):
                    if len(os.listdir(tmp_path / "cache" / "objects")) >= len(pushed):
                        break
                    time.sleep(0.01)
            else:
                assert fetched == Counter(), fetched


def test_eight_concurrent_cold_pulls_fetch_each_blob_once(
        tmp_path: Path, registry: Registry, pushed: list[str], keeper: Keeper,
        skopeo: tuple[str, dict[str, str]]) -> None:
    binary, env = skopeo
    with running_proxy(settings(registry, tmp_path / "cache"), keeper, uvloop=True) as proxy:
        target = proxy.url.removeprefix("http://")
        with ThreadPoolExecutor(8) as pool:
            pulls = [pool.submit(run, [binary, "copy", "--src-tls-verify=false",
                                       f"docker://{target}/team/app:1",
                                       f"dir:{tmp_path / f'pull{n}'}"], env) for n in range(8)]
            results = [p.result(300) for p in pulls]
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        fetched = blob_gets(registry)
        assert set(fetched) == {f"/v2/team/app/blobs/{d}" for d in pushed}
        assert all(count == 1 for count in fetched.values()), fetched


def test_blob_is_not_served_to_a_repository_without_it(
        tmp_path: Path, registry: Registry, pushed: list[str], keeper: Keeper,
        skopeo: tuple[str, dict[str, str]]) -> None:
    from .conftest import call

    binary, env = skopeo
    with running_proxy(settings(registry, tmp_path / "cache"), keeper) as proxy:
        target = proxy.url.removeprefix("http://")
        pull = run([binary, "copy", "--src-tls-verify=false", f"docker://{target}/team/app:1",
                    f"dir:{tmp_path / 'pull'}"], env)
        assert pull.returncode == 0, pull.stderr
        for _ in range(500):
            if len(os.listdir(tmp_path / "cache" / "objects")) >= len(pushed):
                break
            time.sleep(0.01)
        assert call(proxy.url, "GET", f"/v2/team/app/blobs/{pushed[0]}").status == 200
        other = call(proxy.url, "GET", f"/v2/other/repo/blobs/{pushed[0]}")
        assert other.status == 404
        assert call(proxy.url, "HEAD", f"/v2/other/repo/blobs/{pushed[0]}").status == 404
