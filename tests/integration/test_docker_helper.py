"""docker-credential-awstoken as docker, skopeo and the kubelet run it: a real process each call."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from awstoken import FileStorage
from tests.fixtures.binaries import require_binary
from tests.fixtures.doors import CountingSource, basic, door, no_aws_env, run_door, store
from tests.fixtures.ports import free_port
from tests.fixtures.processes import stop
from tests.fixtures.redis import RedisServer
from tests.fixtures.registry import Registry, make_oci_layout

ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
NOT_FOUND = "credentials not found in native keychain\n"


def _config(tmp: Path, body: str) -> Path:
    config = tmp / "awstoken.toml"
    config.write_text(f'[storage]\npath = "{tmp / "tokens"}"\n\n{body}')
    return config


def _ecr_config(tmp: Path) -> Path:
    return _config(tmp, '[tokens.ecr]\nsource = "ecr"\nregistry_id = "123456789012"\n'
                        'region = "us-east-1"\nformat = "Basic {token}"\n')


def _command_config(tmp: Path, source: CountingSource, registry: str, **extra: str) -> Path:
    lines = "".join(f"{k} = {v}\n" for k, v in extra.items())
    return _config(tmp, f'[tokens.repo]\ncommand = ["{source.script}"]\nbasic_user = "AWS"\n'
                        f'registries = ["{registry}"]\n{lines}')


def test_get_serves_the_stored_ecr_token_with_aws_unreachable(tmp_path: Path) -> None:
    pytest.importorskip("botocore")
    config = _ecr_config(tmp_path)
    store(tmp_path / "tokens", "ecr", basic("AWS", "ecr-password-1"))
    env = no_aws_env(tmp_path, config)
    for url in (ECR, f"https://{ECR}", f"https://{ECR}/v2/"):
        got = run_door([door("docker-credential-awstoken"), "get"], env, url)
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout) == {"ServerURL": url, "Username": "AWS",
                                          "Secret": "ecr-password-1"}
        assert got.stderr == ""
    listed = run_door([door("docker-credential-awstoken"), "list"], env)
    assert json.loads(listed.stdout) == {ECR: "AWS"}
    assert "ecr-password-1" not in listed.stdout + listed.stderr


def test_version_store_and_erase(tmp_path: Path) -> None:
    env = no_aws_env(tmp_path, _ecr_config(tmp_path))
    version = run_door([door("docker-credential-awstoken"), "version"], env)
    assert version.returncode == 0 and "awstoken" in version.stdout
    for action in ("store", "erase"):
        got = run_door([door("docker-credential-awstoken"), action], env,
                       json.dumps({"ServerURL": ECR, "Username": "AWS", "Secret": "x"}))
        assert got.returncode == 1
        assert got.stdout == "not implemented\n"
        assert "read-only" in got.stderr
    bad = run_door([door("docker-credential-awstoken"), "fetch"], env)
    assert bad.returncode == 1 and "usage" in bad.stderr


def test_unknown_and_look_alike_registries_get_nothing(tmp_path: Path) -> None:
    """The attack: hosts that contain, extend or hide the configured one get no token."""
    source = CountingSource.make(tmp_path, "pw")
    config = _command_config(tmp_path, source, "registry.example.com")
    store(tmp_path / "tokens", "repo", basic("AWS", "pw"))
    env = no_aws_env(tmp_path, config)
    for url in ("registry.example.com.evil.net", "evil.net/registry.example.com",
                "https://registry.example.com@evil.net/", "registry.example.com:5000",
                "xregistry.example.com", "", "registry.example.com\n\nevil"):
        got = run_door([door("docker-credential-awstoken"), "get"], env, url)
        assert (got.returncode, got.stdout) == (1, NOT_FOUND), url
        assert "pw" not in got.stderr.replace("pwd", "")
    assert source.count == 0


def test_a_miss_says_why_on_stderr_and_never_leaks(tmp_path: Path) -> None:
    source = CountingSource.make(tmp_path, "pw", delay=0, fail=True)
    config = _command_config(tmp_path, source, "registry.example.com")
    env = no_aws_env(tmp_path, config)
    got = run_door([door("docker-credential-awstoken"), "get"], env, "registry.example.com")
    assert (got.returncode, got.stdout) == (1, NOT_FOUND)
    assert "token 'repo'" in got.stderr and "exit" in got.stderr
    assert "Traceback" not in got.stderr
    # The failure is recorded and backed off: a second call within the retry does not run
    # the source again, and still says why.
    again = run_door([door("docker-credential-awstoken"), "get"], env, "registry.example.com")
    assert (again.returncode, again.stdout) == (1, NOT_FOUND)
    assert "failure 1 in a row" in again.stderr
    assert source.count == 1


def test_a_bad_config_is_an_error_not_a_miss(tmp_path: Path) -> None:
    config = _config(tmp_path, '[tokens.repo]\ncommand = "true"\nregistries = ["https://x/"]\n')
    got = run_door([door("docker-credential-awstoken"), "get"], no_aws_env(tmp_path, config), "x")
    assert got.returncode == 1 and got.stdout == ""
    assert "tokens.repo.registries" in got.stderr and "Traceback" not in got.stderr


def test_burst_of_50_without_a_daemon_makes_one_source_call(tmp_path: Path) -> None:
    source = CountingSource.make(tmp_path, "burst-password", delay=1.0)
    config = _command_config(tmp_path, source, "registry.example.com")
    env = no_aws_env(tmp_path, config)
    procs = [subprocess.Popen([door("docker-credential-awstoken"), "get"], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(50)]
    # Every process gets its request before any answer is read: they run at once (calling
    # communicate() one by one would feed and finish them one after the other).
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("registry.example.com")
        proc.stdin.close()
    results = []
    for proc in procs:
        assert proc.stdout is not None and proc.stderr is not None
        results.append((proc.stdout.read(), proc.stderr.read()))  # a few lines each
        proc.wait(timeout=120)
        proc.stdout.close()
        proc.stderr.close()
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert json.loads(out)["Secret"] == "burst-password"
    assert source.count == 1


def test_with_a_keeper_daemon_the_helper_never_runs_the_source(tmp_path: Path) -> None:
    source = CountingSource.make(tmp_path, "daemon-password", delay=0)
    config = _command_config(tmp_path, source, "registry.example.com")
    config.write_text(config.read_text() + '\n[server]\nadmin_listen = "off"\n')
    env = no_aws_env(tmp_path, config)
    keeper = subprocess.Popen([door("awstoken"), "serve"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        storage = FileStorage(tmp_path / "tokens")
        deadline = time.monotonic() + 30
        while storage.get("repo") is None and keeper.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        storage.close()
        assert keeper.poll() is None, keeper.stderr.read() if keeper.stderr else ""
        for _ in range(5):
            got = run_door([door("docker-credential-awstoken"), "get"], env, "registry.example.com")
            assert got.returncode == 0, got.stderr
            assert json.loads(got.stdout)["Secret"] == "daemon-password"
        assert source.count == 1  # the daemon's one refresh
    finally:
        stop(keeper)
        if keeper.stderr:
            keeper.stderr.close()


def test_skopeo_pushes_and_pulls_with_the_helper(
        tmp_path: Path, docker_registry: Registry, skopeo: tuple[str, dict[str, str]]) -> None:
    binary, env = skopeo
    host = f"127.0.0.1:{docker_registry.port}"
    source = CountingSource.make(tmp_path, "first-password", delay=0)
    config = _command_config(tmp_path, source, host)
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"credHelpers": {host: "awstoken"}}))
    env = {**no_aws_env(tmp_path, config), "HOME": env["HOME"],
           "XDG_RUNTIME_DIR": env["XDG_RUNTIME_DIR"]}
    layout = tmp_path / "layout"
    layer = make_oci_layout(layout, b"helper payload " * 1000)

    def skopeo_run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_door([binary, *args], env, timeout=120)

    push = skopeo_run("copy", "--authfile", str(authfile), "--dest-tls-verify=false",
                      f"oci:{layout}:latest", f"docker://{host}/team/app:1")
    assert push.returncode == 0, push.stderr
    pull = skopeo_run("copy", "--authfile", str(authfile), "--src-tls-verify=false",
                      f"docker://{host}/team/app:1", f"dir:{tmp_path / 'pull'}")
    assert pull.returncode == 0, pull.stderr
    assert (tmp_path / "pull" / layer.removeprefix("sha256:")).exists()
    assert source.count == 1
    # Without the helper skopeo has no credentials: the registry refuses it.
    (tmp_path / "none.json").write_text("{}")
    refused = skopeo_run("inspect", "--authfile", str(tmp_path / "none.json"), "--tls-verify=false",
                         f"docker://{host}/team/app:1")
    assert refused.returncode != 0


def test_ecr_route_implies_the_registry(tmp_path: Path) -> None:
    port = free_port()  # chosen here, not at collection: xdist workers must collect one name
    config = _config(tmp_path, '[tokens.ecr]\ncommand = "false"\nformat = "Basic {token}"\n\n'
                               f'[[routes]]\nprefix = "/"\nupstream = "https://{ECR}"\ntoken = "ecr"\n'
                               f'[server]\nlisten = "127.0.0.1:{port}"\n')
    store(tmp_path / "tokens", "ecr", basic("AWS", "from-route"))
    got = run_door([door("docker-credential-awstoken"), "get"], no_aws_env(tmp_path, config), ECR)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["Secret"] == "from-route"


def _imports_config(env: dict[str, str], url: str) -> tuple[bool, subprocess.CompletedProcess[str]]:
    """Run the helper with -X importtime: did it take the full path (load the config)?"""
    got = run_door([sys.executable, "-X", "importtime", door("docker-credential-awstoken"), "get"],
                   env, url)
    return "awstoken._config.load" in got.stderr, got


def test_the_fast_path_answers_from_the_index_and_follows_config_changes(tmp_path: Path) -> None:
    source = CountingSource.make(tmp_path, "pw", delay=0)
    config = _command_config(tmp_path, source, "registry.example.com")
    store(tmp_path / "tokens", "repo", basic("AWS", "fast-pw"))
    env = no_aws_env(tmp_path, config)
    full, first = _imports_config(env, "registry.example.com")
    assert full and first.returncode == 0
    index = next((tmp_path / "awstoken-dir").glob("doors-*.json"))
    assert stat.S_IMODE(index.stat().st_mode) == 0o600
    assert "fast-pw" not in index.read_text()  # the index holds no secret
    fast, second = _imports_config(env, "https://registry.example.com/v2/")
    assert not fast and second.returncode == 0
    assert json.loads(second.stdout) == {"ServerURL": "https://registry.example.com/v2/",
                                         "Username": "AWS", "Secret": "fast-pw"}
    # A rotated record is what the fast path reads next.
    store(tmp_path / "tokens", "repo", basic("AWS", "rotated-pw"))
    assert json.loads(_imports_config(env, "registry.example.com")[1].stdout)["Secret"] == "rotated-pw"
    # The configuration changes: the index no longer matches it, the full path answers.
    config.write_text(config.read_text().replace('"registry.example.com"', '"other.example.com"'))
    full, gone = _imports_config(env, "registry.example.com")
    assert full and (gone.returncode, gone.stdout) == (1, NOT_FOUND)
    full, moved = _imports_config(env, "other.example.com")
    assert full and json.loads(moved.stdout)["Secret"] == "rotated-pw"
    assert not _imports_config(env, "other.example.com")[0]
    # A record inside the door's margin of expiry goes the full path (which refreshes it).
    store(tmp_path / "tokens", "repo", basic("AWS", "old-pw"), lifetime=10)
    full, refreshed = _imports_config(env, "other.example.com")
    assert full and json.loads(refreshed.stdout)["Secret"] == "pw"
    assert source.count == 1


def test_an_index_others_can_write_is_not_trusted(tmp_path: Path) -> None:
    """The attack: someone who can write the index could point a host at their token."""
    config = _command_config(tmp_path, CountingSource.make(tmp_path, "pw"), "registry.example.com")
    store(tmp_path / "tokens", "repo", basic("AWS", "real-pw"))
    env = no_aws_env(tmp_path, config)
    assert _imports_config(env, "registry.example.com")[1].returncode == 0
    index = next((tmp_path / "awstoken-dir").glob("doors-*.json"))
    for file, mode in ((index, 0o622), (index.parent, 0o777)):
        file.chmod(mode)
        full, got = _imports_config(env, "registry.example.com")
        assert full and json.loads(got.stdout)["Secret"] == "real-pw"
        file.chmod(0o600 if file == index else 0o700)
    # A symlinked index is not followed either.
    target = tmp_path / "planted.json"
    target.write_text(index.read_text())
    index.unlink()
    index.symlink_to(target)
    full, got = _imports_config(env, "registry.example.com")
    assert full and json.loads(got.stdout)["Secret"] == "real-pw"


@pytest.mark.parametrize("tool", ["buildah", "podman"])
def test_buildah_and_podman_pull_with_the_helper(
        tmp_path: Path, docker_registry: Registry, skopeo: tuple[str, dict[str, str]],
        tool: str, short_dir: Path) -> None:
    binary_path = require_binary(tool)
    binary, skopeo_env = skopeo
    host = f"127.0.0.1:{docker_registry.port}"
    layout = tmp_path / "layout"
    make_oci_layout(layout, b"buildah payload " * 100)
    push = run_door([binary, "copy", "--dest-tls-verify=false", "--dest-creds", "AWS:first-password",
                     f"oci:{layout}:latest", f"docker://{host}/team/app:1"], skopeo_env, timeout=120)
    assert push.returncode == 0, push.stderr
    source = CountingSource.make(tmp_path, "first-password", delay=0)
    config = _command_config(tmp_path, source, host)
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"credHelpers": {host: "awstoken"}}))
    env = {**no_aws_env(tmp_path, config), "HOME": skopeo_env["HOME"],
           "XDG_RUNTIME_DIR": skopeo_env["XDG_RUNTIME_DIR"]}
    storage = ["--root", str(tmp_path / "buildah-root"), "--runroot", str(short_dir),
               "--storage-driver", "vfs"]
    got = run_door([binary_path, *storage, "pull", "--authfile", str(authfile), "--tls-verify=false",
                    f"{host}/team/app:1"], env, timeout=180)
    assert got.returncode == 0, got.stderr
    assert source.count == 1


def test_the_docker_cli_reads_the_helper_without_a_daemon(tmp_path: Path) -> None:
    """docker login asks the helper first; with no daemon it stops after showing the user."""
    docker = require_binary("docker")
    source = CountingSource.make(tmp_path, "cli-password", delay=0)
    config = _command_config(tmp_path, source, "registry.example.com")
    docker_config = tmp_path / "docker"
    docker_config.mkdir()
    (docker_config / "config.json").write_text(
        json.dumps({"credHelpers": {"registry.example.com": "awstoken"}}))
    env = no_aws_env(tmp_path, config, {"DOCKER_CONFIG": str(docker_config),
                                        "DOCKER_HOST": "unix:///nonexistent"})
    login = run_door([docker, "login", "registry.example.com"], env)
    assert "Authenticating with existing credentials... [Username: AWS]" in login.stdout + login.stderr
    assert "cli-password" not in login.stdout + login.stderr
    assert source.count == 1
    logout = run_door([docker, "logout", "registry.example.com"], env)
    assert logout.returncode == 0 and "read-only" in logout.stderr


def test_redis_storage_burst_makes_one_source_call(tmp_path: Path, redis_server: RedisServer) -> None:
    """Shared storage across hosts: the doors lead through Redis's lease, as keepers do."""
    pytest.importorskip("redis")
    source = CountingSource.make(tmp_path, "redis-password", delay=1.0)
    config = tmp_path / "awstoken.toml"
    config.write_text(f'[storage]\ntype = "redis"\nurl = "{redis_server.url}"\n\n'
                      f'[tokens.repo]\ncommand = ["{source.script}"]\nbasic_user = "AWS"\n'
                      'registries = ["registry.example.com"]\n')
    env = no_aws_env(tmp_path, config)
    procs = [subprocess.Popen([door("docker-credential-awstoken"), "get"], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(10)]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("registry.example.com")
        proc.stdin.close()
    for proc in procs:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait(timeout=120)
        proc.stdout.close()
        proc.stderr.close()
        assert proc.returncode == 0, err
        assert json.loads(out)["Secret"] == "redis-password"
    assert source.count == 1
    assert not list((tmp_path / "awstoken-dir").glob("doors-*.json"))  # no fast path on Redis
