"""The keyring backend with the real clients: pip (import and subprocess), uv, twine, poetry."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.doors import BIN, CountingSource, basic, no_aws_env, run_door, store
from tests.fixtures.pypi import make_wheel
from tests.fixtures.pypiserver import PypiServer, run_pypiserver, write_htpasswd

pytest.importorskip("keyring")


@pytest.fixture
def index(tmp_path: Path) -> Iterator[PypiServer]:
    """pypiserver with user ``aws`` (password ``index-password``) and one wheel."""
    packages = tmp_path / "packages"
    packages.mkdir()
    make_wheel(packages, "awstoken_probe", "1.0")
    htpasswd = tmp_path / "htpasswd"
    write_htpasswd(htpasswd, {"aws": "index-password"})
    with run_pypiserver(htpasswd, packages) as server:
        yield server


def _env(tmp: Path, index: PypiServer, source: CountingSource | None = None,
         stored: str | None = None) -> dict[str, str]:
    """A client environment: private HOME and config dirs, AWS unreachable, our config."""
    command = f'["{source.script}"]' if source else '"false"'
    config = tmp / "awstoken.toml"
    config.write_text(f'[storage]\npath = "{tmp / "tokens"}"\n\n[tokens.pypi]\ncommand = {command}\n'
                      f'basic_user = "aws"\nindexes = ["{index.url}/"]\n')
    if stored is not None:
        store(tmp / "tokens", "pypi", basic("aws", stored))
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = no_aws_env(tmp, config, {
        "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"), "XDG_CACHE_HOME": str(home / ".cache"),
        "PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1", "UV_NO_CONFIG": "1", "UV_CACHE_DIR": str(tmp / "uv-cache"),
        "UV_PYTHON_DOWNLOADS": "never"})
    for key in ("NETRC", "PYTHON_KEYRING_BACKEND", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL",
                "TWINE_USERNAME", "TWINE_PASSWORD", "TWINE_REPOSITORY_URL"):
        env.pop(key, None)
    return env


def _pip(env: dict[str, str], tmp: Path, url: str, provider: str,
         dest: str) -> subprocess.CompletedProcess[str]:
    return run_door([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                     "--index-url", url, "--keyring-provider", provider, "-d", str(tmp / dest),
                     "awstoken-probe==1.0"], env, timeout=120)


def test_keyring_cli_answers_only_configured_indexes(tmp_path: Path, index: PypiServer) -> None:
    env = _env(tmp_path, index, stored="index-password")
    keyring = str(BIN / "keyring")
    got = run_door([keyring, "get", f"{index.url}/simple/", "aws"], env)
    assert (got.returncode, got.stdout) == (0, "index-password\n"), got.stderr
    creds = run_door([keyring, "--mode", "creds", "get", f"{index.url}/simple/"], env)
    assert creds.stdout.splitlines() == ["aws", "index-password"], creds.stderr
    # Other URLs, look-alike hosts and other users get nothing; storing is refused.
    host, port = index.url.removeprefix("http://").split(":")
    for service, user in ((f"http://{host}:{int(port) + 1}/simple/", "aws"),
                          (f"https://{host}:{port}/simple/", "aws"),
                          (f"http://{host}.evil:{port}/simple/", "aws"),
                          (f"{index.url}/simple/", "alice")):
        miss = run_door([keyring, "get", service, user], env)
        assert (miss.returncode, miss.stdout) == (1, ""), service
    refused = run_door([keyring, "set", f"{index.url}/simple/", "aws"], env, "new\n")
    assert refused.returncode != 0 and "read-only" in refused.stderr


@pytest.mark.parametrize("provider", ["import", "subprocess"])
def test_pip_gets_the_token_from_the_keyring(tmp_path: Path, index: PypiServer, provider: str) -> None:
    env = _env(tmp_path, index, stored="index-password")
    if provider == "subprocess":
        # pip runs `keyring --mode=creds get URL` from PATH, but never the keyring of its own
        # environment's scripts directory: a keyring installed elsewhere (here: a link).
        other = tmp_path / "keyring-bin"
        other.mkdir()
        (other / "keyring").symlink_to(BIN / "keyring")
        env["PATH"] = f"{other}:{env['PATH']}"
    got = _pip(env, tmp_path, f"{index.url}/simple/", provider, "d1")
    assert got.returncode == 0, got.stderr + got.stdout
    assert [p.name for p in (tmp_path / "d1").iterdir()] == ["awstoken_probe-1.0-py3-none-any.whl"]
    assert "index-password" not in got.stdout + got.stderr
    # Without the keyring, the index refuses pip.
    refused = _pip(env, tmp_path, f"{index.url}/simple/", "disabled", "d2")
    assert refused.returncode != 0


def test_pip_without_a_keeper_fetches_once_and_follows_rotation(tmp_path: Path,
                                                                 index: PypiServer) -> None:
    source = CountingSource.make(tmp_path, "index-password", delay=0)
    env = _env(tmp_path, index, source=source)
    assert _pip(env, tmp_path, f"{index.url}/simple/", "import", "d1").returncode == 0
    assert _pip(env, tmp_path, f"{index.url}/simple/", "import", "d2").returncode == 0
    assert source.count == 1  # the first pip fetched as leader; the second read storage
    # A rotation by a keeper (here: a new record) is what the next pip gets.
    write_htpasswd(index.htpasswd, {"aws": "second-password"})
    store(tmp_path / "tokens", "pypi", basic("aws", "second-password"))
    got = _pip(env, tmp_path, f"{index.url}/simple/", "import", "d3")
    assert got.returncode == 0, got.stderr


def test_uv_with_the_keyring_subprocess(tmp_path: Path, index: PypiServer) -> None:
    uv = BIN / "uv"
    if not uv.exists():
        pytest.skip("uv is not installed (pip install -r requirements-test.txt)")
    env = _env(tmp_path, index, stored="index-password")
    url = index.url.replace("http://", "http://aws@") + "/simple/"

    def install(provider: str, target: str) -> subprocess.CompletedProcess[str]:
        return run_door([str(uv), "pip", "install", "--no-config", "--python", sys.executable,
                         "--target", str(tmp_path / target), "--no-deps", "--index-url", url,
                         "--keyring-provider", provider, "awstoken-probe==1.0"], env, timeout=120)

    assert install("disabled", "none").returncode != 0
    got = install("subprocess", "target")
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "target" / "awstoken_probe" / "__init__.py").exists()
    assert "index-password" not in got.stdout + got.stderr


def test_twine_uploads_with_the_keyring(tmp_path: Path, index: PypiServer) -> None:
    twine = BIN / "twine"
    if not twine.exists():
        pytest.skip("twine is not installed (pip install -r requirements-test.txt)")
    env = _env(tmp_path, index, stored="index-password")
    dist = tmp_path / "dist"
    dist.mkdir()
    wheel = make_wheel(dist, "awstoken_probe", "2.0")
    argv = [str(twine), "upload", "--non-interactive", "--disable-progress-bar",
            "--repository-url", f"{index.url}/", str(dist / wheel)]
    no_keyring = run_door(argv, {**env, "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"})
    assert no_keyring.returncode != 0 and not (index.packages / wheel).exists()
    got = run_door(argv, env, timeout=120)
    assert got.returncode == 0, got.stderr + got.stdout
    assert (index.packages / wheel).exists()
    assert "index-password" not in got.stdout + got.stderr


def test_poetry_installs_with_the_keyring(tmp_path: Path, index: PypiServer) -> None:
    poetry = BIN / "poetry"
    if not poetry.exists():
        pytest.skip("poetry is not installed (pip install -r requirements-test.txt)")
    env = _env(tmp_path, index, stored="index-password")
    env.update(POETRY_VIRTUALENVS_IN_PROJECT="true", POETRY_CACHE_DIR=str(tmp_path / "poetry-cache"),
               POETRY_CONFIG_DIR=str(tmp_path / "poetry-config"), POETRY_NO_INTERACTION="1",
               POETRY_VIRTUALENVS_OPTIONS_NO_PIP="true")
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "consumer"\nversion = "0.1"\nrequires-python = ">=3.11"\n'
        'dependencies = ["awstoken-probe==1.0"]\n\n'
        '[tool.poetry]\npackage-mode = false\n\n'
        f'[[tool.poetry.source]]\nname = "private"\nurl = "{index.url}/simple/"\n'
        'priority = "primary"\n')
    for argv in (["lock"], ["install", "--no-root"]):
        got = subprocess.run([str(poetry), *argv], cwd=project, env=env, capture_output=True,
                             text=True, timeout=300, check=False)
        assert got.returncode == 0, got.stderr + got.stdout
        assert "index-password" not in got.stdout + got.stderr
    probe = list((project / ".venv").glob("lib/python*/site-packages/awstoken_probe/__init__.py"))
    assert probe, os.listdir(project / ".venv")


def test_the_users_own_backend_comes_first(tmp_path: Path, index: PypiServer) -> None:
    env = _env(tmp_path, index, stored="index-password")
    code = ("import keyring\nfrom keyring.backend import KeyringBackend\n"
            "from keyring.credentials import SimpleCredential\n"
            "class Mine(KeyringBackend):\n    priority = 1\n"
            "    def get_password(self, s, u): return None\n"
            "    def get_credential(self, s, u):\n"
            "        return SimpleCredential('me', 'mine') if 'mine' in s else None\n"
            "    def set_password(self, s, u, p): pass\n    def delete_password(self, s, u): pass\n"
            f"print(keyring.get_credential('{index.url}/mine/', None).password)\n"
            f"print(keyring.get_credential('{index.url}/simple/', None).password)\n")
    got = run_door([sys.executable, "-c", code], env)
    assert got.stdout.splitlines() == ["mine", "index-password"], got.stderr
