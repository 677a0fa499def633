"""npm path: npm install through the proxy from verdaccio, tarballs included."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from awstoken import Command, Keeper, MemoryStorage, basic_auth
from awstoken._config.settings import RouteSettings, Settings
from tests.fixtures.npm import PACKAGE, Npm, npm_env
from tests.fixtures.proxy import running_proxy


def test_npm_install_through_proxy(tmp_path: Path, verdaccio: Npm) -> None:
    keeper = Keeper(MemoryStorage())
    keeper.rotate("npm", Command(["echo", verdaccio.password]), basic_auth("aws"))
    settings = Settings(routes=(RouteSettings(prefix="/npm/", upstream=verdaccio.url, token="npm",
                                              strip_prefix=True),))
    try:
        keeper.rotators["npm"].refresh()
        with running_proxy(settings, keeper) as proxy:
            project = tmp_path / "project"
            project.mkdir()
            (project / "package.json").write_text('{"name": "consumer", "version": "1.0.0"}')
            home = tmp_path / "home"
            home.mkdir()
            result = subprocess.run(
                [verdaccio.npm, "install", "--registry", f"{proxy.url}/npm/", PACKAGE],
                cwd=project, env=npm_env(home), capture_output=True, text=True, timeout=180,
                stdin=subprocess.DEVNULL)
            assert result.returncode == 0, result.stdout + result.stderr
            installed = project / "node_modules" / PACKAGE / "index.js"
            assert "hello from the demo package" in installed.read_text()
            lock = json.loads((project / "package-lock.json").read_text())
            resolved = lock["packages"][f"node_modules/{PACKAGE}"]["resolved"]
            assert resolved.startswith(f"{proxy.url}/npm/"), resolved
    finally:
        keeper.stop()
