"""Config files kept fresh, read by their real clients across two rotations.

Each test starts from a file the user already has (unrelated entries, sometimes a mode of
their own), rotates the token twice (the server's password changes with it), and runs the
client that reads the file after each rotation.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from awstoken import FileStorage, Keeper, Rotator
from awstoken._config.build import build_source, build_transform
from awstoken._config.hooks import hooks_from_settings
from awstoken._config.load import loads
from awstoken._rotation.hooks import FileSink
from tests.fixtures.binaries import require_binary
from tests.fixtures.npm import PACKAGE, Npm, npm_env
from tests.fixtures.pypi import make_wheel, pip_env
from tests.fixtures.pypiserver import PypiServer, write_htpasswd
from tests.fixtures.registry import Registry, make_oci_layout


def _rotator(tmp: Path, toml: str, name: str) -> tuple[Rotator, Path]:
    """A rotator built from ``toml`` (a ``[tokens.NAME]`` table), its source reading a file."""
    password = tmp / "password"
    settings = loads(f'[tokens.{name}]\ncommand = ["cat", "{password}"]\n{toml}', base_dir=tmp)
    token = settings.tokens[name]
    keeper = Keeper(FileStorage(tmp / "tokens"))
    rotator = keeper.rotator(name, build_source(token), build_transform(token),
                             on_rotate=hooks_from_settings(token))
    return rotator, password


def _rotate(rotator: Rotator, password_file: Path, password: str) -> None:
    password_file.write_text(password)
    rotator.refresh()
    for hook in rotator.on_rotate:
        assert isinstance(hook, FileSink)
        assert hook.stats.failures == 0, hook.stats.last_error


def test_docker_config_json_read_by_skopeo(tmp_path: Path, docker_registry: Registry,
                                           skopeo: tuple[str, dict[str, str]]) -> None:
    binary, env = skopeo
    host = f"127.0.0.1:{docker_registry.port}"
    config_json = tmp_path / "docker" / "config.json"
    config_json.parent.mkdir()
    config_json.write_text(json.dumps({"auths": {"other.example": {"auth": "b3RoZXI6eA=="}},
                                       "psFormat": "table {{.ID}}"}))
    config_json.chmod(0o640)
    rotator, password = _rotator(tmp_path, f'basic_user = "AWS"\nregistries = ["{host}"]\n'
                                           f'sink = "{config_json}"\nsink_format = "docker-config"\n',
                                 "ecr")
    layout = tmp_path / "layout"
    make_oci_layout(layout, b"config file payload")
    for i, secret in enumerate(("first-password", "second-password")):
        docker_registry.set_password(secret)
        _rotate(rotator, password, secret)
        data = json.loads(config_json.read_text())
        assert data["auths"]["other.example"] == {"auth": "b3RoZXI6eA=="}
        assert data["psFormat"] == "table {{.ID}}"
        assert stat.S_IMODE(config_json.stat().st_mode) == 0o640  # the user's mode kept
        got = subprocess.run([binary, "copy", "--authfile", str(config_json), "--dest-tls-verify=false",
                              f"oci:{layout}:latest", f"docker://{host}/team/app:{i}"], env=env,
                             capture_output=True, text=True, timeout=120, check=False)
        assert got.returncode == 0, got.stderr
    assert sorted(p.name for p in config_json.parent.iterdir()) == ["config.json"]


def _pip_download(env: dict[str, str], tmp: Path, dest: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                           ":all:", "-d", str(tmp / dest), "awstoken-probe==1.0"], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                          check=False)


def test_pip_conf_read_by_pip(tmp_path: Path, pypiserver: PypiServer) -> None:
    make_wheel(pypiserver.packages, "awstoken_probe", "1.0")
    conf = tmp_path / "pip.conf"
    conf.write_text("# mine\n[global]\ntimeout = 30\nindex-url = https://pypi.org/simple/\n\n"
                    "[download]\nno-cache-dir = true\n")
    rotator, password = _rotator(tmp_path, f'basic_user = "alice"\nindexes = ["{pypiserver.url}/simple/"]\n'
                                           f'sink = "{conf}"\nsink_format = "pip-conf"\n', "pypi")
    env = {**pip_env(tmp_path), "PIP_CONFIG_FILE": str(conf)}
    for i, secret in enumerate(("pip-password-1", "pip-password-2")):
        write_htpasswd(pypiserver.htpasswd, {"alice": secret})
        _rotate(rotator, password, secret)
        text = conf.read_text()
        assert text.startswith("# mine\n") and "timeout = 30" in text and "no-cache-dir = true" in text
        got = _pip_download(env, tmp_path, f"d{i}")
        assert got.returncode == 0, got.stderr
    assert stat.S_IMODE(conf.stat().st_mode) == 0o644 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_netrc_read_by_pip_and_new_files_are_private(tmp_path: Path, pypiserver: PypiServer) -> None:
    make_wheel(pypiserver.packages, "awstoken_probe", "1.0")
    netrc = tmp_path / "netrc"  # does not exist yet: made 0600
    rotator, password = _rotator(tmp_path, f'basic_user = "alice"\nindexes = ["{pypiserver.url}/simple/"]\n'
                                           f'writes = [{{path = "{netrc}", format = "netrc"}}]\n', "pypi")
    env = {**pip_env(tmp_path), "NETRC": str(netrc), "PIP_INDEX_URL": f"{pypiserver.url}/simple/"}
    for i, secret in enumerate(("netrc-password-1", "netrc-password-2")):
        write_htpasswd(pypiserver.htpasswd, {"alice": secret})
        _rotate(rotator, password, secret)
        assert stat.S_IMODE(netrc.stat().st_mode) == 0o600
        if i == 0:
            netrc.write_text("machine other.example login me password keep\n" + netrc.read_text())
        got = _pip_download(env, tmp_path, f"d{i}")
        assert got.returncode == 0, got.stderr
    assert "machine other.example login me password keep" in netrc.read_text()


def test_pypirc_read_by_twine(tmp_path: Path, pypiserver: PypiServer) -> None:
    twine = Path(sys.executable).parent / "twine"
    if not twine.exists():
        pytest.skip("twine is not installed (pip install -r requirements-test.txt)")
    pypirc = tmp_path / "pypirc"
    pypirc.write_text("[distutils]\nindex-servers =\n    pypi\n\n[pypi]\nusername = __token__\n")
    rotator, password = _rotator(tmp_path, f'basic_user = "alice"\n'
                                           f'writes = [{{path = "{pypirc}", format = "pypirc", '
                                           f'url = "{pypiserver.url}/"}}]\n', "private")
    env = {k: v for k, v in pip_env(tmp_path).items() if not k.startswith("TWINE_")}
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    for i, secret in enumerate(("twine-password-1", "twine-password-2")):
        write_htpasswd(pypiserver.htpasswd, {"alice": secret})
        _rotate(rotator, password, secret)
        dist = tmp_path / f"dist{i}"
        dist.mkdir()
        wheel = make_wheel(dist, "awstoken_probe", f"{i + 1}.0")
        got = subprocess.run([str(twine), "upload", "--config-file", str(pypirc), "-r", "private",
                              "--non-interactive", "--disable-progress-bar", str(dist / wheel)],
                             env=env, capture_output=True, text=True, timeout=120, check=False)
        assert got.returncode == 0, got.stderr + got.stdout
        assert (pypiserver.packages / wheel).exists()
        assert secret not in got.stdout + got.stderr
    assert "username = __token__" in pypirc.read_text()


def _verdaccio_token(npm: Npm) -> str:
    """A fresh npm token from verdaccio (its tokens are what `_authToken` carries)."""
    body = json.dumps({"name": npm.user, "password": npm.password}).encode()
    basic = base64.b64encode(f"{npm.user}:{npm.password}".encode()).decode()
    request = urllib.request.Request(f"{npm.url}-/user/org.couchdb.user:{npm.user}", data=body,
                                     method="PUT", headers={"Content-Type": "application/json",
                                                            "Authorization": f"Basic {basic}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(json.loads(response.read())["token"])


def test_npmrc_read_by_npm(tmp_path: Path, verdaccio: Npm) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = npm_env(home)
    npmrc = home / ".npmrc"
    npmrc.write_text(f"registry={verdaccio.url}\n//other.example/:_authToken=keep-me\n")
    rotator, password = _rotator(tmp_path, f'indexes = ["{verdaccio.url}"]\nsink = "{npmrc}"\n'
                                           'sink_format = "npmrc"\n', "npm")
    tokens = []
    for _ in range(2):
        tokens.append(_verdaccio_token(verdaccio))
        _rotate(rotator, password, tokens[-1])
        got = subprocess.run([verdaccio.npm, "view", PACKAGE, "version"], env=env, cwd=home,
                             capture_output=True, text=True, timeout=120, check=False)
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == "1.0.0"
        lines = npmrc.read_text().splitlines()
        assert lines[:2] == [f"registry={verdaccio.url}", "//other.example/:_authToken=keep-me"]
        assert lines[2].endswith(f":_authToken={tokens[-1]}")
    assert tokens[0] != tokens[1]


def test_an_unparsable_file_is_left_untouched_with_a_clear_error(tmp_path: Path) -> None:
    require_binary("sh")
    config_json = tmp_path / "config.json"
    config_json.write_text("{ broken")
    rotator, password = _rotator(tmp_path, 'basic_user = "AWS"\nregistries = ["r.example"]\n'
                                           f'sink = "{config_json}"\nsink_format = "docker-config"\n',
                                 "ecr")
    password.write_text("pw-1")
    token = rotator.refresh()  # the token is stored; only the hook fails
    assert token.value is not None
    hook = rotator.on_rotate[0]
    assert isinstance(hook, FileSink)
    assert hook.stats.failures == 1
    error = hook.stats.last_error or ""
    assert "docker-config: not valid JSON (line 1)" in error and "left untouched" in error
    assert str(config_json) in error and "pw-1" not in error
    assert config_json.read_text() == "{ broken"


def test_a_symlinked_file_is_not_followed(tmp_path: Path) -> None:
    """The attack: a link planted at the path would make awstoken copy its target (another
    user's file) into a file of its own, or rewrite it."""
    target = tmp_path / "someone-elses-secrets"
    target.write_text("machine bank.example login victim password hunter2\n")
    netrc = tmp_path / "netrc"
    netrc.symlink_to(target)
    rotator, password = _rotator(tmp_path, 'basic_user = "aws"\nindexes = ["https://i.example/"]\n'
                                           f'sink = "{netrc}"\nsink_format = "netrc"\n', "pypi")
    password.write_text("pw-1")
    rotator.refresh()
    hook = rotator.on_rotate[0]
    assert isinstance(hook, FileSink)
    assert hook.stats.failures == 1
    assert "is a symbolic link; left untouched" in (hook.stats.last_error or "")
    assert netrc.is_symlink()
    assert target.read_text() == "machine bank.example login victim password hunter2\n"
