"""The recipes of docs/recipes.md, run for real: docker login, pip.conf and .npmrc hooks."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import awstoken
from awstoken import CommandHook, FileSink, Keeper, MemoryStorage, Rotator

from ..fixtures.binaries import require_binary
from ..fixtures.docker_registry import run_registry
from ..fixtures.pypiserver import PypiServer, write_htpasswd

HOOKS = Path(__file__).resolve().parents[2] / "examples" / "hooks"


class Password:
    """The token source: whatever the test last set (the stand-in for an AWS token call)."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __call__(self) -> str:
        return self.value


def _rotator(source: Password, hooks: list[awstoken.RotateHook]) -> Rotator:
    return Keeper(MemoryStorage()).rotator("repo", source, on_rotate=hooks)


def test_docker_login_recipe(tmp_path: Path) -> None:
    docker = require_binary("docker")
    htpasswd = tmp_path / "htpasswd"
    write_htpasswd(htpasswd, {"AWS": "ecr-token-1"})
    docker_config = tmp_path / "docker"
    with run_registry(htpasswd, tmp_path / "registry") as registry:
        # With no docker daemon reachable, the docker CLI logs in client side: the registry
        # itself checks the password.
        hook = CommandHook(["env", f"DOCKER_CONFIG={docker_config}", "DOCKER_HOST=unix:///nonexistent",
                            docker, "login", "--username", "AWS", "--password-stdin",
                            registry.host], timeout=60)
        source = Password("ecr-token-1")
        rotator = _rotator(source, [hook])
        rotator.refresh()
        assert hook.stats.failures == 0, hook.stats.last_error
        auth = json.loads((docker_config / "config.json").read_text())["auths"][registry.host]
        assert base64.b64decode(auth["auth"]) == b"AWS:ecr-token-1"
        # A token the registry refuses: the hook fails, is counted, and the token stays.
        source.value = "ecr-token-rejected"
        token = rotator.refresh()
        assert rotator.storage.get("repo") == token.value == "ecr-token-rejected"
        assert hook.stats.failures == 1
        assert "exited with status 1" in (hook.stats.last_error or "")
        assert "ecr-token-rejected" not in (hook.stats.last_error or "")


def _wheel(directory: Path, name: str = "awstoken_probe", version: str = "1.0") -> Path:
    """A minimal, valid pure-Python wheel."""
    dist = f"{name}-{version}"
    path = directory / f"{dist}-py3-none-any.whl"
    files = {
        f"{name}/__init__.py": "",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: awstoken-tests\n"
                                   "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{f},,\n" for f in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for file, text in files.items():
            zf.writestr(file, text)
        zf.writestr(f"{dist}.dist-info/RECORD", record)
    return path


def _pip_download(conf: Path, home: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    # A private HOME hides the user's own pip.conf (extra indexes, find-links).
    env.update({"PIP_CONFIG_FILE": str(conf), "PIP_NO_INPUT": "1", "HOME": str(home),
                "XDG_CONFIG_HOME": str(home / ".config"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                           "--only-binary", ":all:", "-d", str(dest), "awstoken-probe==1.0"],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120, check=False)


def test_pip_conf_recipe_with_real_pip(pypiserver: PypiServer, tmp_path: Path) -> None:
    _wheel(pypiserver.packages)
    conf = tmp_path / "home" / ".config" / "pip" / "pip.conf"
    hook = CommandHook(["env", f"PIP_CONF={conf}", f"PIP_INDEX_BASE={pypiserver.url}/simple/",
                        "PIP_INDEX_USER=alice", str(HOOKS / "write-pip-conf")])
    source = Password("initial-password")
    rotator = _rotator(source, [hook])
    rotator.refresh()
    assert hook.stats.failures == 0, hook.stats.last_error
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    first = _pip_download(conf, tmp_path / "home", tmp_path / "d1")
    assert first.returncode == 0, first.stderr
    assert [p.name for p in (tmp_path / "d1").iterdir()] == ["awstoken_probe-1.0-py3-none-any.whl"]
    # Rotate: the server's password and the token change; the hook rewrites pip.conf.
    old = conf.read_text()
    write_htpasswd(pypiserver.htpasswd, {"alice": "second-password"})
    source.value = "second-password"
    rotator.refresh()
    assert "second-password" in conf.read_text()
    assert _pip_download(conf, tmp_path / "home", tmp_path / "d2").returncode == 0
    stale = tmp_path / "stale.conf"
    stale.write_text(old)
    assert _pip_download(stale, tmp_path / "home", tmp_path / "d3").returncode != 0
    assert [p.name for p in conf.parent.iterdir()] == ["pip.conf"]  # no temp file left


def test_npmrc_recipe_is_read_by_real_npm(tmp_path: Path) -> None:
    npm = require_binary("npm")
    npmrc = tmp_path / "npmrc"
    registry = "https://acme-111122223333.d.codeartifact.us-east-1.amazonaws.com/npm/main/"
    hook = CommandHook(["env", f"NPMRC={npmrc}", f"NPM_REGISTRY={registry}",
                        str(HOOKS / "write-npmrc")])
    _rotator(Password("ca-token-1"), [hook]).refresh()
    assert hook.stats.failures == 0, hook.stats.last_error
    assert stat.S_IMODE(npmrc.stat().st_mode) == 0o600
    key = "//acme-111122223333.d.codeartifact.us-east-1.amazonaws.com/npm/main/"
    assert npmrc.read_text() == f"registry={registry}\n{key}:_authToken=ca-token-1\n"
    env = {**os.environ, "HOME": str(tmp_path), "npm_config_cache": str(tmp_path / "cache")}
    got = subprocess.run([npm, "config", "get", "registry", "--userconfig", str(npmrc)], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    assert got.stdout.strip() == registry


def test_file_sink_recipe_feeds_password_stdin(tmp_path: Path) -> None:
    """The sink file works where a tool reads a password from a file or stdin."""
    sink = FileSink(tmp_path / "ecr-password", content="raw")
    _rotator(Password("ecr-token-1"), [sink]).refresh()
    with open(tmp_path / "ecr-password") as fh:
        out = subprocess.run(["cat"], stdin=fh, capture_output=True, text=True, check=True)
    assert out.stdout == "ecr-token-1"


@pytest.mark.parametrize("script", ["write-pip-conf", "write-npmrc"])
def test_recipe_scripts_refuse_to_run_unconfigured(script: str, tmp_path: Path) -> None:
    hook = CommandHook(["env", "-u", "PIP_INDEX_BASE", "-u", "NPM_REGISTRY", f"HOME={tmp_path}",
                        str(HOOKS / script)])
    with pytest.raises(awstoken.HookError, match="exited with status"):
        hook("repo", awstoken.Fetched("tok"), awstoken.Token(value="tok"))
    assert list(tmp_path.iterdir()) == []
