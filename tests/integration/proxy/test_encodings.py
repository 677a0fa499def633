"""Index rewriting under every content encoding, with real clients and compressing fronts.

verdaccio and pypiserver sit behind caddy (``encode zstd gzip``: it compresses whatever the
client offered, zstd first) and the proxy in front of caddy must rewrite npm metadata and
simple pages whatever came back. Clients: npm, pnpm 9, yarn classic, yarn 4; pip, uv,
poetry. One verdaccio, one pypiserver, one caddy each and one proxy per module.

Fronts that ignore Accept-Encoding (answer br, zstd or gzip unasked), corrupt bodies,
unknown codings and decompression bombs use a stand-in upstream.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from awstoken import Command, Keeper, MemoryStorage, basic_auth
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.binaries import in_ci, require_binary
from tests.fixtures.caddy import caddy_front
from tests.fixtures.npm import PACKAGE, Npm, npm_env, verdaccio_server
from tests.fixtures.proxy import RunningProxy, aiohttp_server, running_proxy
from tests.fixtures.pypi import make_wheel, pip_env
from tests.fixtures.pypiserver import PypiServer, run_pypiserver, write_htpasswd

from .conftest import call

brotli = pytest.importorskip("brotli")
zstandard = pytest.importorskip("zstandard")


def _js_client(name: str) -> Path:
    cache = os.environ.get("AWSTOKEN_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "awstoken-test")
    path = Path(cache) / "js-clients" / "node_modules" / name
    if not path.exists():
        message = f"{name} is not installed (run tests/peers/install-js-clients.sh)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


# -- npm world: verdaccio behind caddy --------------------------------------------------------


@pytest.fixture(scope="module")
def npm_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Npm, RunningProxy]]:
    work = tmp_path_factory.mktemp("npm-world")
    with verdaccio_server(work) as registry, caddy_front(registry.url, work / "caddy") as front:
        keeper = Keeper(MemoryStorage())
        keeper.rotate("npm", Command(["echo", registry.password]), basic_auth("aws"))
        settings = Settings(routes=(RouteSettings(prefix="/npm/", upstream=front, token="npm",
                                                  strip_prefix=True),))
        try:
            keeper.rotators["npm"].refresh()
            with running_proxy(settings, keeper) as proxy:
                yield registry, proxy
        finally:
            keeper.stop()


def _project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "consumer", "version": "1.0.0"}')
    home = tmp_path / "home"
    home.mkdir()
    env = npm_env(home)
    env.update(YARN_CACHE_FOLDER=str(tmp_path / "yarn-cache"), YARN_ENABLE_TELEMETRY="0",
               COREPACK_ENABLE_STRICT="0", YARN_IGNORE_PATH="1")
    return project, env


def _npm(registry: Npm, url: str, project: Path, tmp_path: Path) -> list[str]:
    return [registry.npm, "install", "--registry", url, PACKAGE]


def _pnpm(registry: Npm, url: str, project: Path, tmp_path: Path) -> list[str]:
    pnpm = _js_client(".bin/pnpm")
    return [str(pnpm), "add", PACKAGE, f"--registry={url}", f"--store-dir={tmp_path / 'store'}",
            "--reporter=append-only"]


def _yarn_classic(registry: Npm, url: str, project: Path, tmp_path: Path) -> list[str]:
    yarn = _js_client("yarn/bin/yarn.js")  # not .bin/yarn: yarn 4's package claims it too
    return [require_binary("node"), str(yarn), "add", PACKAGE, "--registry", url,
            "--non-interactive",
            "--cache-folder", str(tmp_path / "yarn-cache")]


def _yarn_berry(registry: Npm, url: str, project: Path, tmp_path: Path) -> list[str]:
    yarn = _js_client("@yarnpkg/cli-dist/bin/yarn.js")
    (project / ".yarnrc.yml").write_text(
        f'npmRegistryServer: "{url}"\n'
        'unsafeHttpWhitelist: ["127.0.0.1"]\n'
        "nodeLinker: node-modules\n"
        "enableGlobalCache: false\n"
        "enableTelemetry: false\n"
        "npmMinimalAgeGate: 0\n")  # yarn 4 quarantines freshly published packages otherwise
    (project / "yarn.lock").write_text("")
    node = require_binary("node")
    return [node, str(yarn), "add", PACKAGE]


# One worker runs every client against the module's one verdaccio (xdist_group): the
# registry starts once, not once per worker.
@pytest.mark.xdist_group("encodings-npm")
@pytest.mark.parametrize("client", [_npm, _pnpm, _yarn_classic, _yarn_berry],
                         ids=["npm", "pnpm", "yarn-classic", "yarn-berry"])
def test_npm_clients_install_through_a_compressing_front(
        tmp_path: Path, npm_proxy: tuple[Npm, RunningProxy],
        client: Callable[[Npm, str, Path, Path], list[str]]) -> None:
    registry, proxy = npm_proxy
    project, env = _project(tmp_path)
    url = f"{proxy.url}/npm/"
    argv = client(registry, url, project, tmp_path)
    result = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    installed = project / "node_modules" / PACKAGE / "index.js"
    assert "hello from the demo package" in installed.read_text()


# -- Python world: pypiserver behind caddy ----------------------------------------------------


@pytest.fixture(scope="module")
def pypi_proxy(tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[PypiServer, RunningProxy, str]]:
    work = tmp_path_factory.mktemp("pypi-world")
    packages = work / "packages"
    packages.mkdir()
    wheel = make_wheel(packages)
    htpasswd = work / "htpasswd"
    write_htpasswd(htpasswd, {"aws": "pypi-token"})
    with run_pypiserver(htpasswd, packages) as index, caddy_front(index.url, work / "caddy") as front:
        keeper = Keeper(MemoryStorage())
        keeper.rotate("pypi", Command(["echo", "pypi-token"]), basic_auth("aws"))
        settings = Settings(routes=(RouteSettings(prefix="/pypi/", upstream=front, token="pypi",
                                                  strip_prefix=True),))
        try:
            keeper.rotators["pypi"].refresh()
            with running_proxy(settings, keeper) as proxy:
                yield index, proxy, wheel
        finally:
            keeper.stop()


def _tool(name: str) -> str:
    path = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -r requirements-test.txt)")
    return path


def _pip(url: str, tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--index-url", f"{url}simple/",
            "-d", str(tmp_path / "out"), "demo-pkg"]


def _uv(url: str, tmp_path: Path) -> list[str]:
    return [_tool("uv"), "pip", "install", "--no-deps", "--no-cache", "--python", sys.executable,
            "--target", str(tmp_path / "out"), "--index-url", f"{url}simple/", "demo-pkg"]


def _poetry(url: str, tmp_path: Path) -> list[str]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "consumer"\nversion = "1.0"\nrequires-python = ">=3.9"\n'
        'dependencies = ["demo-pkg"]\n'
        "[tool.poetry]\npackage-mode = false\n"
        f'[[tool.poetry.source]]\nname = "proxy"\nurl = "{url}simple/"\npriority = "primary"\n')
    return [_tool("poetry"), "lock", "--no-interaction", "--directory", str(project)]


@pytest.mark.xdist_group("encodings-pypi")  # one pypiserver and caddy, as for npm above
@pytest.mark.parametrize("client", [_pip, _uv, _poetry], ids=["pip", "uv", "poetry"])
def test_python_clients_resolve_through_a_compressing_front(
        tmp_path: Path, pypi_proxy: tuple[PypiServer, RunningProxy, str],
        client: Callable[[str, Path], list[str]]) -> None:
    _, proxy, wheel = pypi_proxy
    env = pip_env(tmp_path)
    env.update(POETRY_CACHE_DIR=str(tmp_path / "poetry-cache"), UV_NO_CONFIG="1",
               POETRY_VIRTUALENVS_CREATE="false")
    result = subprocess.run(client(f"{proxy.url}/pypi/", tmp_path), env=env, capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    if client is _poetry:
        lock = (tmp_path / "project" / "poetry.lock").read_text()
        assert wheel in lock and 'name = "demo-pkg"' in lock
    elif client is _pip:
        assert (tmp_path / "out" / wheel).exists()
    else:
        assert (tmp_path / "out" / "demo_pkg" / "__init__.py").exists()


# -- fronts that ignore Accept-Encoding, corrupt bodies, bombs ----------------------------------

_META_TEMPLATE = '{"name":"pkg","versions":{"1.0.0":{"dist":{"tarball":"%s/pkg/-/pkg-1.0.0.tgz"}}}}'


def _compress(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.compress(data)
    if coding == "deflate":
        return zlib.compress(data)
    if coding == "br":
        return bytes(brotli.compress(data))
    if coding == "zstd":
        return bytes(zstandard.ZstdCompressor().compress(data))
    raise AssertionError(coding)


def _bomb(coding: str, size: int) -> bytes:
    """``size`` zero bytes compressed, never held whole, and cheaply: after a flush, each
    further MiB of zeros compresses to the same bytes (the window holds only zeros), so
    that block is compressed once and repeated (compressing 512 MiB of zeros took seconds
    of CPU per coding)."""
    piece, count = b"\0" * (1 << 20), size >> 20
    if coding == "gzip":
        deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        blocks = [deflater.compress(piece) + deflater.flush(zlib.Z_FULL_FLUSH) for _ in range(3)]
        crc = 0
        for _ in range(count):
            crc = zlib.crc32(piece, crc)
        # An empty last block (fixed Huffman: BFINAL, BTYPE 01, end of block), then the
        # trailer: CRC-32 and length of the whole uncompressed body.
        tail = b"\x03\x00" + struct.pack("<II", crc, size & 0xFFFFFFFF)
    elif coding == "br":
        compressor = brotli.Compressor(quality=5)
        blocks = [bytes(compressor.process(piece)) + bytes(compressor.flush()) for _ in range(3)]
        tail = bytes(compressor.finish())  # brotli has no length or checksum to match
    else:
        zstd = zstandard.ZstdCompressor(level=3).compressobj()  # no content size, no checksum
        blocks = [zstd.compress(piece) + zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
                  for _ in range(3)]
        tail = zstd.flush()
    assert blocks[1] == blocks[2], f"{coding}: a flushed MiB of zeros did not repeat"
    return blocks[0] + blocks[1] * (count - 1) + tail


@pytest.fixture(scope="module")
def unasked() -> Iterator[tuple[str, dict[str, tuple[bytes, str]]]]:
    """An upstream answering ``/meta/<name>`` with a stored body and Content-Encoding,
    whatever the request's Accept-Encoding."""
    from aiohttp import web

    bodies: dict[str, tuple[bytes, str]] = {}

    async def handle(request: web.Request) -> web.Response:
        body, coding = bodies[request.path.removeprefix("/meta/")]
        headers = {"Content-Encoding": coding} if coding else {}
        return web.Response(body=body, headers=headers, content_type="application/json")

    with aiohttp_server(handle) as url:
        yield url, bodies


def _front_proxy(url: str, **server: Any) -> Any:
    keeper = Keeper(MemoryStorage())
    keeper.storage.write("t", __import__("awstoken").Token(value="Bearer t", expires_at=4e9))
    settings = Settings(server=ServerSettings(**server),
                        routes=(RouteSettings(prefix="/", upstream=url, token="t"),))
    return running_proxy(settings, keeper)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "gzip, br"])
def test_an_unasked_encoding_is_decoded_and_rewritten(
        unasked: tuple[str, dict[str, tuple[bytes, str]]], coding: str) -> None:
    url, bodies = unasked
    meta = (_META_TEMPLATE % url).encode()
    body = meta
    for layer in coding.split(", "):
        body = _compress(layer, body)
    name = coding.replace(", ", "-")
    bodies[name] = (body, coding)
    with _front_proxy(url) as proxy:
        # A client that offers nothing compressed still gets plain, rewritten JSON.
        reply = call(proxy.url, "GET", f"/meta/{name}", headers=[("Accept-Encoding", "identity")])
    assert reply.status == 200
    assert reply.header("Content-Encoding") is None
    tarball = json.loads(reply.body)["versions"]["1.0.0"]["dist"]["tarball"]
    assert tarball == f"{proxy.url}/pkg/-/pkg-1.0.0.tgz"


@pytest.mark.parametrize(("name", "body", "coding", "why"), [
    ("compress", b"\x1f\x9d\x90", "compress", "content coding 'compress' cannot be decoded"),
    ("corrupt-gzip", b"\x1f\x8b\x08\x00garbage", "gzip", "the gzip body is"),
    ("truncated-br", b"\x1b\xff\x00", "br", "br body"),
])
def test_an_undecodable_index_answer_is_a_502_with_the_reason(
        unasked: tuple[str, dict[str, tuple[bytes, str]]], name: str, body: bytes, coding: str,
        why: str) -> None:
    url, bodies = unasked
    bodies[name] = (body, coding)
    with _front_proxy(url) as proxy:
        reply = call(proxy.url, "GET", f"/meta/{name}")
    assert reply.status == 502
    assert why in reply.body.decode()
    assert "not forwarded, since its URLs could not be rewritten" in reply.body.decode()


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_a_decompression_bomb_is_refused_with_memory_bounded(
        unasked: tuple[str, dict[str, tuple[bytes, str]]], coding: str) -> None:
    url, bodies = unasked
    size = 512 << 20
    bodies[f"bomb-{coding}"] = (_bomb(coding, size), coding)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, this process's peak
    with _front_proxy(url, max_index_bytes=4 << 20) as proxy:
        reply = call(proxy.url, "GET", f"/meta/bomb-{coding}", headers=[("Accept-Encoding", "gzip")])
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert reply.status == 502
    assert f"the {coding} body inflates past {4 << 20} bytes" in reply.body.decode()
    assert grown < 64 << 10, f"peak RSS grew {grown} KiB for a {size >> 20} MiB bomb"


def test_an_index_answer_over_the_bound_is_a_502_not_an_unrewritten_body(
        unasked: tuple[str, dict[str, tuple[bytes, str]]]) -> None:
    url, bodies = unasked
    bodies["big"] = ((_META_TEMPLATE % url).encode() + b" " * (2 << 20), "")
    with _front_proxy(url, max_index_bytes=1 << 20) as proxy:
        reply = call(proxy.url, "GET", "/meta/big")
    assert reply.status == 502
    assert "max_index_bytes" in reply.body.decode()


def test_accept_encoding_upstream_offers_only_decodable_codings() -> None:
    from aiohttp import web

    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Encoding"))
        return web.Response(text="{}", content_type="application/json")

    with aiohttp_server(handle) as url, _front_proxy(url) as proxy:
        call(proxy.url, "GET", "/a", headers=[("Accept-Encoding", "gzip, compress, br, zstd, xz")])
        call(proxy.url, "GET", "/b", headers=[("Accept-Encoding", "compress")])
    assert seen == ["gzip, br, zstd", ""]
