"""Package index path: pip downloads through the proxy from a pypiserver that needs Basic auth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from awstoken import Command, Keeper, MemoryStorage, basic_auth
from awstoken._config.settings import RouteSettings, Settings
from tests.fixtures.proxy import running_proxy
from tests.fixtures.pypi import make_wheel, pip_env
from tests.fixtures.pypiserver import PypiServer, write_htpasswd


def test_pip_download_through_proxy(tmp_path: Path, pypiserver: PypiServer) -> None:
    wheel = make_wheel(pypiserver.packages)
    write_htpasswd(pypiserver.htpasswd, {"aws": "codeartifact-token-1"})
    keeper = Keeper(MemoryStorage())
    keeper.rotate("codeartifact", Command(["echo", "codeartifact-token-1"]), basic_auth("aws"))
    settings = Settings(routes=(RouteSettings(prefix="/pypi/", upstream=pypiserver.url,
                                              token="codeartifact", strip_prefix=True),))
    try:
        keeper.rotators["codeartifact"].refresh()
        with running_proxy(settings, keeper) as proxy:
            out = tmp_path / "downloads"
            result = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--index-url",
                 f"{proxy.url}/pypi/simple/", "-d", str(out), "demo-pkg"],
                env=pip_env(tmp_path), capture_output=True, text=True, timeout=120,
                stdin=subprocess.DEVNULL)
            assert result.returncode == 0, result.stdout + result.stderr
            assert (out / wheel).exists()
            # Without the proxy, the same index refuses pip (so the token did the work).
            direct = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--index-url",
                 f"{pypiserver.url}/simple/", "-d", str(tmp_path / "direct"), "demo-pkg"],
                env=pip_env(tmp_path), capture_output=True, text=True, timeout=120,
                stdin=subprocess.DEVNULL)
            assert direct.returncode != 0
    finally:
        keeper.stop()
