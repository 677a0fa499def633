"""Each console script's light paths import only what they need (bench/bench_startup.py has
the CPU figures; this test fails when a module-level import brings a heavy module back).

Each case runs the venv's real console script (its own code, executed as ``__main__`` in a
fresh interpreter, as the shebang would) and lists ``sys.modules`` at exit. Not timed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.fixtures.doors import basic, door, no_aws_env, store

ROOT = Path(__file__).resolve().parents[2]
#: Never on these paths: the proxy stack, TLS, the AWS SDK, redis-py, importlib.metadata.
NEVER = ("aiohttp", "prometheus_client", "uvloop", "httptools", "botocore", "redis", "ssl",
         "importlib.metadata", "email", "awstoken.proxy")
#: The configuration loader and what only a keeper or a fetching door uses.
LOADER = ("awstoken._config.load", "awstoken._config.settings", "tomllib")
KEEPER = ("awstoken._rotation.keeper", "awstoken._sources.command", "subprocess",
          "awstoken._config.hooks", "awstoken._rotation.formats")
REQUEST = json.dumps({"apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                      "kind": "CredentialProviderRequest", "image": "r.example/a:1"})
PASSWORD = "pw-startup"

#: (script, arguments, stdin, modules that must not be imported beyond NEVER, expected stdout)
CASES = {
    "awstoken --version": ("awstoken", ["--version"], "", (*LOADER, *KEEPER, "inspect"), "awstoken "),
    "awstoken --help": ("awstoken", ["--help"], "", (*LOADER, *KEEPER, "inspect"), "usage:"),
    "awstoken check": ("awstoken", ["check", "-c", "{config}"], "", ("awstoken._rotation.keeper",),
                       ": ok"),
    "awstoken get": ("awstoken", ["get", "-c", "{config}", "repo"], "", KEEPER, basic("aws", PASSWORD)),
    # status reads the schedule from the rotator module, which imports the command source.
    "awstoken status": ("awstoken", ["status", "-c", "{config}"], "",
                        ("awstoken._rotation.keeper", "awstoken._config.hooks",
                         "awstoken._rotation.formats"), "repo"),
    "docker helper get (fast path)": ("docker-credential-awstoken", ["get"], "r.example",
                                      (*LOADER, *KEEPER, "logging", "typing", "awstoken._config"),
                                      PASSWORD),
    "docker helper get (full path)": ("docker-credential-awstoken", ["-c", "{config}", "get"],
                                      "r.example", KEEPER, PASSWORD),
    "docker helper version": ("docker-credential-awstoken", ["version"], "", (*LOADER, *KEEPER),
                              "(awstoken) "),
    "kubelet plugin (fast path)": ("awstoken-kubelet-credential-provider", [], REQUEST,
                                   (*LOADER, *KEEPER, "logging", "typing", "awstoken._config"),
                                   PASSWORD),
    "kubelet plugin (full path)": ("awstoken-kubelet-credential-provider", ["-c", "{config}"],
                                   REQUEST, KEEPER, PASSWORD),
}

RUN = """\
import atexit, sys
def _dump():
    with open({out!r}, "w") as fh:
        fh.write("\\n".join(sorted(sys.modules)))
atexit.register(_dump)
sys.argv = [{script!r}, *{args!r}]
with open({script!r}) as fh:
    code = compile(fh.read(), {script!r}, "exec")
exec(code, {{"__name__": "__main__", "__file__": {script!r}}})
"""


def _modules(tmp: Path, script: str, args: list[str], stdin: str, env: dict[str, str],
             expect: str) -> set[str]:
    out = tmp / "modules.txt"
    code = RUN.format(out=str(out), script=door(script), args=args)
    got = subprocess.run([sys.executable, "-c", code], input=stdin, env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert got.returncode == 0, got.stderr
    assert expect in got.stdout
    return set(out.read_text().split())


def _imported(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules for name in names if m == name or m.startswith(name + "."))


@pytest.mark.parametrize("case", sorted(CASES))
def test_light_paths_import_only_what_they_need(tmp_path: Path, case: str) -> None:
    script, args, stdin, also_never, expect = CASES[case]
    config = tmp_path / "awstoken.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "tokens"}"\n[tokens.repo]\ncommand = "false"\n'
                      'basic_user = "aws"\nregistries = ["r.example"]\n')
    store(tmp_path / "tokens", "repo", basic("aws", PASSWORD))
    env = no_aws_env(tmp_path, config)
    if "fast path" in case:  # a full-path answer leaves the index the fast path reads
        full = case.replace("fast path", "full path")
        _modules(tmp_path, CASES[full][0], [a.format(config=config) for a in CASES[full][1]],
                 CASES[full][2], env, PASSWORD)
    modules = _modules(tmp_path, script, [a.format(config=config) for a in args], stdin, env, expect)
    assert _imported(modules, NEVER + also_never) == []
    if "fast path" in case:
        assert "awstoken._doors.fast" in modules  # the fast path, not another way round


def test_keyring_loading_the_backend_loads_no_configuration() -> None:
    """keyring imports every installed backend in each process that uses it (pip, twine,
    poetry), and asks ours last: importing it must not cost the loader."""
    pytest.importorskip("keyring")
    code = ("import sys, keyring.backend\n"
            "before = set(sys.modules)\n"
            "import awstoken._doors.keyring as door\n"
            "assert door.AwstokenKeyring().priority == door.PRIORITY\n"
            "print('\\n'.join(sorted(set(sys.modules) - before)))\n")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=False)
    assert got.returncode == 0, got.stderr
    added = set(got.stdout.split())  # what our backend adds to what keyring loaded already
    assert "awstoken._doors.keyring" in added
    assert _imported(added, NEVER + LOADER + KEEPER) == []


def test_the_cases_run_the_console_scripts_of_pyproject() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {case[0] for case in CASES.values()} == set(scripts)


def test_the_check_catches_a_heavy_import(tmp_path: Path) -> None:
    """The same check on a path that does load the loader and the keeper: they are seen."""
    config = tmp_path / "awstoken.toml"
    config.write_text('[storage]\ntype = "memory"\n[tokens.repo]\ncommand = ["printf", "x"]\n')
    modules = _modules(tmp_path, "awstoken", ["fetch", "-c", str(config), "repo"], "",
                       no_aws_env(tmp_path, config), "x")
    assert {"awstoken._config.load", "subprocess", "awstoken._sources.command"} <= set(
        _imported(modules, (*LOADER, *KEEPER)))
