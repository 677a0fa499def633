"""The cache for package files: pip from pypiserver, npm from verdaccio, each twice.

A package file is cached under the hash its index named (``#sha256=`` in a simple page,
``dist.integrity`` in npm metadata), so the second install is answered from the cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from awstoken import Command, Keeper, MemoryStorage, basic_auth
from awstoken._config.settings import CacheSettings, RouteSettings, ServerSettings, Settings
from tests.fixtures.npm import PACKAGE, Npm, npm_env
from tests.fixtures.proxy import RunningProxy, running_proxy
from tests.fixtures.pypi import make_wheel, pip_env
from tests.fixtures.pypiserver import PypiServer, write_htpasswd

from .conftest import call


def cache_metric(proxy: RunningProxy, name: str) -> float:
    assert proxy.admin_url is not None
    text = call(proxy.admin_url, "GET", "/metrics").body.decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(f"awstoken_cache_{name}_total{{"))


def wait_objects(cache: Path, prefix: str) -> list[str]:
    for _ in range(500):
        names = [n for n in os.listdir(cache / "objects") if n.startswith(prefix)]
        if names:
            return names
        time.sleep(0.01)
    return []


def test_pip_twice_second_download_from_cache(tmp_path: Path, pypiserver: PypiServer) -> None:
    wheel = make_wheel(pypiserver.packages)
    write_htpasswd(pypiserver.htpasswd, {"aws": "codeartifact-token-1"})
    keeper = Keeper(MemoryStorage())
    keeper.rotate("codeartifact", Command(["echo", "codeartifact-token-1"]), basic_auth("aws"))
    cache = tmp_path / "cache"
    settings = Settings(
        server=ServerSettings(admin_listen=("127.0.0.1", 0)),
        routes=(RouteSettings(prefix="/pypi/", upstream=pypiserver.url, token="codeartifact",
                              strip_prefix=True, cache=CacheSettings(str(cache))),))
    try:
        keeper.rotators["codeartifact"].refresh()
        with running_proxy(settings, keeper) as proxy:
            for n in (1, 2):
                out = tmp_path / f"downloads{n}"
                result = subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--no-deps", "--index-url",
                     f"{proxy.url}/pypi/simple/", "-d", str(out), "demo-pkg"],
                    env=pip_env(tmp_path), capture_output=True, text=True, timeout=120,
                    stdin=subprocess.DEVNULL)
                assert result.returncode == 0, result.stdout + result.stderr
                assert (out / wheel).read_bytes() == (pypiserver.packages / wheel).read_bytes()
                if n == 1:
                    assert wait_objects(cache, "files-sha256-")
            assert cache_metric(proxy, "misses") == 1
            assert cache_metric(proxy, "hits") == 1
            assert cache_metric(proxy, "served_bytes") == (pypiserver.packages / wheel).stat().st_size
    finally:
        keeper.stop()


def test_npm_twice_second_tarball_from_cache(tmp_path: Path, verdaccio: Npm) -> None:
    keeper = Keeper(MemoryStorage())
    keeper.rotate("npm", Command(["echo", verdaccio.password]), basic_auth("aws"))
    cache = tmp_path / "cache"
    settings = Settings(
        server=ServerSettings(admin_listen=("127.0.0.1", 0)),
        routes=(RouteSettings(prefix="/npm/", upstream=verdaccio.url, token="npm",
                              strip_prefix=True, cache=CacheSettings(str(cache))),))
    try:
        keeper.rotators["npm"].refresh()
        with running_proxy(settings, keeper) as proxy:
            for n in (1, 2):
                project = tmp_path / f"project{n}"
                project.mkdir()
                (project / "package.json").write_text('{"name": "consumer", "version": "1.0.0"}')
                home = tmp_path / f"home{n}"  # its own npm cache: the tarball is fetched again
                home.mkdir()
                result = subprocess.run(
                    [verdaccio.npm, "install", "--registry", f"{proxy.url}/npm/", PACKAGE],
                    cwd=project, env=npm_env(home), capture_output=True, text=True, timeout=180,
                    stdin=subprocess.DEVNULL)
                assert result.returncode == 0, result.stdout + result.stderr
                installed = project / "node_modules" / PACKAGE / "index.js"
                assert "hello from the demo package" in installed.read_text()
                if n == 1:
                    assert wait_objects(cache, "files-sha512-")
            assert cache_metric(proxy, "misses") == 1
            assert cache_metric(proxy, "hits") == 1
    finally:
        keeper.stop()
