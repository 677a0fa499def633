"""Docker registry path: skopeo pulls through the proxy with no credentials of its own."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from awstoken import Command, FileStorage, Keeper, basic_auth
from awstoken._config.settings import RouteSettings, Settings
from tests.fixtures.proxy import running_proxy
from tests.fixtures.registry import Registry, make_oci_layout


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_skopeo_pull_through_proxy_survives_password_rotation(
        tmp_path: Path, docker_registry: Registry, skopeo: tuple[str, dict[str, str]]) -> None:
    binary, env = skopeo
    layout = tmp_path / "layout"
    layer = make_oci_layout(layout, b"layer payload " * 50_000)
    push = run([binary, "copy", "--dest-tls-verify=false", "--dest-creds", "AWS:first-password",
                f"oci:{layout}:latest", f"docker://127.0.0.1:{docker_registry.port}/team/app:1"], env)
    assert push.returncode == 0, push.stderr

    password_file = tmp_path / "password"
    password_file.write_text("first-password\n")
    keeper = Keeper(FileStorage(tmp_path / "tokens"))
    keeper.rotate("ecr", Command(["cat", str(password_file)]), basic_auth("AWS"),
                  min_refresh_gap=0.2)
    settings = Settings(routes=(RouteSettings(prefix="/", upstream=docker_registry.url, token="ecr"),))
    try:
        for _ in range(100):
            if keeper.token("ecr"):
                break
            subprocess.run(["sleep", "0.05"], check=True)
        with running_proxy(settings, keeper) as proxy:
            target = proxy.url.removeprefix("http://")
            first = run([binary, "copy", "--src-tls-verify=false",
                         f"docker://{target}/team/app:1", f"dir:{tmp_path / 'pull1'}"], env)
            assert first.returncode == 0, first.stderr
            assert (tmp_path / "pull1" / layer.removeprefix("sha256:")).exists()

            # Rotate: upstream first, then the source; the proxy still holds the old token.
            # (Past the rotator's refresh gap first: a refusal of a token fetched less than
            # that ago is final, as no refresh would run.)
            record = keeper.record("ecr")
            assert record is not None
            while time.time() - record.refreshed_at <= 0.2:
                time.sleep(0.02)
            docker_registry.set_password("second-password")
            password_file.write_text("second-password\n")
            second = run([binary, "copy", "--src-tls-verify=false",
                          f"docker://{target}/team/app:1", f"dir:{tmp_path / 'pull2'}"], env)
            assert second.returncode == 0, second.stderr
            assert (tmp_path / "pull2" / layer.removeprefix("sha256:")).exists()
            assert keeper.rotators["ecr"].refreshes >= 2
    finally:
        keeper.stop()
