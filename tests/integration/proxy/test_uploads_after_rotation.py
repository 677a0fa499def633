"""Uploads through the proxy right after the upstream's password and the token source change.

The proxy still holds the old token: the upload (a request with a body) is refused, the
refusal asks for a refresh, and the body, kept within ``[server] replay_max_bytes`` /
``replay_spool_max_bytes``, is sent once more with the new token. Real clients only: twine,
uv and poetry against pypiserver, npm against verdaccio, skopeo against docker-registry.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from awstoken import Command, FileStorage, Keeper, basic_auth
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.npm import Npm, npm_env
from tests.fixtures.proxy import RunningProxy, running_proxy
from tests.fixtures.pypi import make_wheel, pip_env
from tests.fixtures.pypiserver import PypiServer, write_htpasswd
from tests.fixtures.registry import Registry, make_oci_layout
from tests.fixtures.wait import wait_until

GAP = 0.2  # the rotator's minimum gap between refreshes


@contextmanager
def _proxy(tmp_path: Path, upstream: str, password: str, *, user: str, prefix: str = "/",
           server: ServerSettings | None = None) -> Iterator[tuple[RunningProxy, Keeper, Path]]:
    """The proxy in front of ``upstream``, its token read by a command from a file."""
    password_file = tmp_path / "password"
    password_file.write_text(password + "\n")
    keeper = Keeper(FileStorage(tmp_path / "tokens"))
    keeper.rotate("up", Command(["cat", str(password_file)]), basic_auth(user),
                  min_refresh_gap=GAP)
    settings = Settings(server=server or ServerSettings(),
                        routes=(RouteSettings(prefix=prefix, upstream=upstream, token="up",
                                              strip_prefix=prefix != "/"),))
    try:
        # The rotator's own first refresh (generation 1). A refresh() here as well made a
        # second one whenever the first had ended by then, as on a loaded machine.
        wait_until(lambda: keeper.token("up"), 60, "the first token")
        with running_proxy(settings, keeper) as proxy:
            yield proxy, keeper, password_file
    finally:
        keeper.stop()


def _rotated(keeper: Keeper, password_file: Path, set_upstream: Callable[[str], None],
             password: str) -> None:
    """Change the upstream's password, then the source's; the proxy keeps the old token.

    First let the rotator's minimum gap pass since its last refresh: a refusal of a token
    younger than that is final (no refresh would run).
    """
    record = keeper.record("up")
    assert record is not None
    while time.time() - record.refreshed_at <= GAP:
        threading.Event().wait(0.02)
    set_upstream(password)
    password_file.write_text(password + "\n")


def _generation(keeper: Keeper) -> int:
    record = keeper.record("up")
    return 0 if record is None else record.generation


def _run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL, **kw)


# -- PyPI uploads: twine, uv, poetry against pypiserver ------------------------------------------


def _twine(url: str, dist: Path, env: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "twine", "upload", "--non-interactive", "--disable-progress-bar",
            "--repository-url", url, "-u", "ignored", "-p", "ignored", str(dist)]


def _uv(url: str, dist: Path, env: dict[str, str]) -> list[str]:
    uv = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (pip install -r requirements-test.txt)")
    return [uv, "publish", "--publish-url", url, "--trusted-publishing", "never",
            "-u", "ignored", "-p", "ignored", str(dist)]


def _poetry(url: str, dist: Path, env: dict[str, str]) -> list[str]:
    poetry = shutil.which("poetry", path=os.path.dirname(sys.executable)) or shutil.which("poetry")
    if poetry is None:
        pytest.skip("poetry is not installed (pip install -r requirements-test.txt)")
    project = dist.parent.parent
    (project / "pyproject.toml").write_text(
        '[project]\nname = "demo-pkg"\nversion = "1.0"\n'
        '[build-system]\nrequires = ["poetry-core"]\nbuild-backend = "poetry.core.masonry.api"\n')
    env["POETRY_REPOSITORIES_PROXY_URL"] = url
    env["POETRY_HTTP_BASIC_PROXY_USERNAME"] = "ignored"
    env["POETRY_HTTP_BASIC_PROXY_PASSWORD"] = "ignored"
    return [poetry, "publish", "--no-interaction", "-r", "proxy", "--directory", str(project)]


@pytest.mark.parametrize("client", [_twine, _uv, _poetry], ids=["twine", "uv", "poetry"])
def test_pypi_upload_after_rotation_succeeds_first_time(
        tmp_path: Path, pypiserver: PypiServer,
        client: Callable[[str, Path, dict[str, str]], list[str]]) -> None:
    write_htpasswd(pypiserver.htpasswd, {"aws": "token-1"})
    dist = tmp_path / "project" / "dist"
    dist.mkdir(parents=True)
    wheel = make_wheel(dist)
    with _proxy(tmp_path, pypiserver.url, "token-1", user="aws", prefix="/pypi/") as (
            proxy, keeper, password_file):
        _rotated(keeper, password_file,
                 lambda p: write_htpasswd(pypiserver.htpasswd, {"aws": p}), "token-2")
        env = pip_env(tmp_path)
        result = _run(client(f"{proxy.url}/pypi/", dist / wheel, env), env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (pypiserver.packages / wheel).exists()
        assert _generation(keeper) == 2  # one refresh, asked for by the refused upload


def test_upload_too_big_to_keep_still_refreshes_so_the_retry_succeeds(
        tmp_path: Path, pypiserver: PypiServer) -> None:
    # Nothing may be kept for a replay: the refused upload goes back to twine (which fails),
    # but the refresh it asked for has happened, so twine's second attempt succeeds.
    write_htpasswd(pypiserver.htpasswd, {"aws": "token-1"})
    dist = tmp_path / "project" / "dist"
    dist.mkdir(parents=True)
    wheel = make_wheel(dist)
    server = ServerSettings(replay_max_bytes=0, replay_spool_max_bytes=0)
    with _proxy(tmp_path, pypiserver.url, "token-1", user="aws", prefix="/pypi/",
                server=server) as (proxy, keeper, password_file):
        _rotated(keeper, password_file,
                 lambda p: write_htpasswd(pypiserver.htpasswd, {"aws": p}), "token-2")
        env = pip_env(tmp_path)
        first = _run(_twine(f"{proxy.url}/pypi/", dist / wheel, env), env=env)
        assert first.returncode != 0
        assert "403" in first.stdout + first.stderr
        assert _generation(keeper) == 2
        second = _run(_twine(f"{proxy.url}/pypi/", dist / wheel, env), env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert (pypiserver.packages / wheel).exists()


# -- npm publish against verdaccio --------------------------------------------------------------


def test_npm_publish_after_rotation_succeeds_first_time(tmp_path: Path, verdaccio: Npm) -> None:
    from tests.fixtures.registry import write_htpasswd as write_bcrypt

    htpasswd = verdaccio.home / "htpasswd"
    with _proxy(tmp_path, verdaccio.url, verdaccio.password, user="aws", prefix="/npm/") as (
            proxy, keeper, password_file):
        def set_password(password: str) -> None:
            write_bcrypt(htpasswd, "aws", password)
            _wait_refused(f"{verdaccio.url}-/whoami", "aws", verdaccio.password)

        _rotated(keeper, password_file, set_password, "npm-token-2")
        package = tmp_path / "newpkg"
        package.mkdir()
        (package / "package.json").write_text(json.dumps(
            {"name": "awstoken-upload-pkg", "version": "2.0.0", "license": "MIT"}))
        (package / "index.js").write_text("module.exports = 2;\n" * 200)
        home = tmp_path / "home"
        home.mkdir()
        env = npm_env(home)
        registry = f"{proxy.url}/npm/"
        # npm will not publish without credentials of its own: dummy ones (the proxy drops them).
        dummy = base64.b64encode(b"ignored:ignored").decode()
        (home / ".npmrc").write_text(f"{registry.removeprefix('http:')}:_auth={dummy}\n")
        result = _run([verdaccio.npm, "publish", "--registry", registry], cwd=package, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert _generation(keeper) == 2
        shown = _run([verdaccio.npm, "view", "awstoken-upload-pkg", "version", "--registry",
                      registry], env=env)
        assert shown.stdout.strip() == "2.0.0", shown.stderr


def _wait_refused(url: str, user: str, password: str) -> None:
    """Until the upstream refuses ``password`` (verdaccio re-reads its htpasswd lazily)."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
            if b'"username":null' in body.replace(b" ", b"") or body.strip() == b"{}":
                return  # whoami answers without a user once the password no longer works
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                return
        threading.Event().wait(0.05)
    raise AssertionError(f"{url} still accepts the old password")


# -- skopeo push against docker-registry --------------------------------------------------------


def test_skopeo_push_after_rotation_succeeds_first_time(
        tmp_path: Path, docker_registry: Registry, skopeo: tuple[str, dict[str, str]]) -> None:
    binary, env = skopeo
    layout = tmp_path / "layout"
    make_oci_layout(layout, os.urandom(300_000))
    with _proxy(tmp_path, docker_registry.url, "first-password", user="AWS") as (
            proxy, keeper, password_file):
        _rotated(keeper, password_file, docker_registry.set_password, "second-password")
        target = proxy.url.removeprefix("http://")
        push = _run([binary, "copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
                     f"docker://{target}/team/app:2"], env=env)
        assert push.returncode == 0, push.stderr
        assert _generation(keeper) == 2
        pull = _run([binary, "copy", "--src-tls-verify=false", "--src-creds",
                     "AWS:second-password", f"docker://127.0.0.1:{docker_registry.port}/team/app:2",
                     f"dir:{tmp_path / 'pulled'}"], env=env)
        assert pull.returncode == 0, pull.stderr
