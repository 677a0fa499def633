"""`awstoken init` prints a starter file `check` accepts; `--help` points to the docs; the
default admin port is no common service's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from awstoken._cli import commands
from awstoken._config.settings import ServerSettings
from tests.fixtures.cli import awstoken_cli

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*awstoken_cli(), *args], capture_output=True, text=True, timeout=60,
                          check=False, stdin=subprocess.DEVNULL)


def test_init_prints_a_starter_file_that_check_accepts(tmp_path: Path) -> None:
    init = run("init")
    assert init.returncode == 0 and init.stderr == ""
    assert init.stdout.count("\n# ") >= 5  # commented
    config = tmp_path / "awstoken.toml"
    config.write_text(init.stdout)
    checked = run("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == ""  # and no insecure-setting warning
    assert "route /v2/ -> https://" in checked.stdout


@pytest.mark.parametrize("command", [None, *(m.NAME for m in commands())])
def test_help_points_to_the_configuration_reference(command: str | None) -> None:
    helped = run(*([command] if command else []), "--help")
    assert helped.returncode == 0
    assert "docs/configuration.md" in " ".join(helped.stdout.split())
    assert (ROOT / "docs" / "configuration.md").is_file()


def test_the_default_admin_port_is_no_common_services() -> None:
    address = ServerSettings().admin_listen
    assert address is not None
    port = address[1]
    # Prometheus (9090) and its exporters' allocated range (9091-9999), common web defaults.
    assert not 9090 <= port <= 9999
    assert port not in (80, 443, 3000, 5000, 8000, 8008, 8080, 8081, 8443, 8888)
    services = Path("/etc/services")
    if services.exists():
        taken = {line.split()[1] for line in services.read_text().splitlines()
                 if line.strip() and not line.startswith("#") and len(line.split()) > 1}
        assert f"{port}/tcp" not in taken
