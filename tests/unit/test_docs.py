"""Every code block in README.md and docs/*.md runs (or is checked), so the docs cannot drift.

- ``python`` blocks run, each in a fresh interpreter, in a temporary directory with
  ``AWSTOKEN_DIR`` there, ``/run/awstoken`` redirected into it, and a stand-in ``aws`` on
  PATH that fails (offline): an example's names, imports and calls are real; no token is
  fetched, no hook or sink runs. A block
  preceded by ``<!-- continues -->`` runs after the previous block of its file (a fragment).
  A block preceded by ``<!-- not-run: REASON -->`` is only compiled; the reasons are listed by
  :func:`test_blocks_that_do_not_run_are_counted_and_say_why`.
- ``toml`` blocks that look like awstoken configurations load with the configuration loader;
  whole configurations (tokens with routes or a token endpoint) also pass ``check``'s
  preflight, with every environment variable they name set and missing paths allowed.
- ``sh`` blocks: every ``awstoken COMMAND`` names a real command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from awstoken._cli import commands
from awstoken._config.load import loads
from awstoken._config.validate import problems
from awstoken._errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"<!--\s*(not-run|continues)\s*:?\s*(.*?)\s*-->")


@dataclass
class Block:
    file: Path
    line: int
    lang: str
    code: str
    mark: str | None = None  # "not-run" or "continues"
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found: list[Block] = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            fence = FENCE.match(lines[i])
            if fence is None:
                i += 1
                continue
            start, lang = i, fence.group(1)
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            mark = MARK.search(before)
            found.append(Block(path, start + 1, lang, "\n".join(lines[start + 1:end]) + "\n",
                               mark.group(1) if mark else None, mark.group(2) if mark else ""))
            i = end + 1
    return found


ALL = blocks()
PYTHON = [b for b in ALL if b.lang == "python"]
CONFIG_HINT = re.compile(r"^\s*\[(\[routes\]|tokens\.|server\]|storage\])", re.M)
TOML = [b for b in ALL if b.lang == "toml" and CONFIG_HINT.search(b.code)]
SHELL = [b for b in ALL if b.lang in ("sh", "bash", "shell", "console")]


def _program(block: Block) -> str:
    """The block's code, after the blocks it continues."""
    if block.mark != "continues":
        return block.code
    same = [b for b in PYTHON if b.file == block.file and b.line < block.line]
    if not same:
        raise AssertionError(f"{block.id}: 'continues' but no python block before it")
    return _program(same[-1]) + block.code


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    aws = bin_dir / "aws"
    aws.write_text("#!/bin/sh\necho 'aws: offline (documentation test)' >&2\nexit 255\n")
    aws.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS", "AWSTOKEN"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", AWSTOKEN_DIR=str(tmp_path / "t"),
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWSTOKEN_REDIS_PASSWORD="docs-test",
               PYTHONWARNINGS="ignore")
    return env


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.id)
def test_python_blocks_run(block: Block, sandbox: dict[str, str], tmp_path: Path) -> None:
    code = _program(block).replace("/run/awstoken", str(tmp_path / "run-awstoken"))
    compile(code, block.id, "exec")
    if block.mark == "not-run":
        return
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=sandbox,
                          capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{block.id} failed:\n{done.stderr[-2000:]}"


def test_blocks_that_do_not_run_are_counted_and_say_why() -> None:
    skipped = [b for b in PYTHON if b.mark == "not-run"]
    for block in skipped:
        assert block.reason, f"{block.id}: <!-- not-run: REASON --> needs a reason"
    report = "\n".join(f"  {b.id}: {b.reason}" for b in skipped)
    print(f"\n{len(PYTHON) - len(skipped)} python blocks run, {len(skipped)} not run:\n{report}")
    assert len(PYTHON) - len(skipped) >= len(skipped), "most examples must run"


def _names_env(text: str) -> dict[str, str]:
    return dict.fromkeys(re.findall(r'_env\s*=\s*"([A-Za-z_][A-Za-z0-9_]*)"', text), "docs-test")


@pytest.mark.parametrize("block", TOML, ids=lambda b: b.id)
def test_toml_configurations_load_and_pass_check(block: Block, tmp_path: Path) -> None:
    if block.mark == "not-run":
        return
    try:
        settings = loads(block.code, file=block.id, base_dir=tmp_path)
    except ConfigError as exc:
        # Files the example names (htpasswd, CA bundles) exist where it is deployed, not here.
        real = [line for line in str(exc).splitlines() if "expected an existing file" not in line]
        assert not real, "\n".join(real)
        return
    whole = settings.tokens and (settings.routes or settings.server.token_listen)
    if not whole:
        return  # a fragment of a file: its keys and types are checked above
    found = problems(settings, environ=_names_env(block.code))
    real = [p for p in found if "does not exist" not in p]
    assert not real, "\n".join(real)


@pytest.mark.parametrize("block", SHELL, ids=lambda b: b.id)
def test_shell_blocks_name_real_commands(block: Block) -> None:
    known = {module.NAME for module in commands()}
    for name in re.findall(r"(?:^|[\s;&|(`/])awstoken[ \t]+([a-z][\w-]*)", block.code, re.M):
        assert name in known, f"{block.id}: `awstoken {name}` is not a command ({known})"


def test_the_harness_finds_blocks() -> None:
    # The recipes became configuration (TOML) where the credential doors replaced hooks.
    assert len(PYTHON) >= 8 and len(TOML) >= 10 and SHELL


def test_every_metric_is_documented() -> None:
    names: set[str] = set()
    for path in (ROOT / "src" / "awstoken").rglob("*.py"):
        names.update(re.findall(r'"(awstoken_[a-z_]*[a-z])"', path.read_text()))
    prefixes = {n for n in names if any(o != n and o.startswith(n + "_") for o in names)}
    doc = (ROOT / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"`(awstoken_[a-z_]+)`", doc))
    missing = [n for n in sorted(names - prefixes)
               if n not in documented and f"{n}_total" not in documented]
    assert not missing, f"metrics not in docs/metrics.md: {missing}"
