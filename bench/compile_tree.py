"""Compile a copy of the source tree as the wheel's mypyc build hook does, for --src.

    python bench/compile_tree.py DEST [--src src]

Copies ``--src`` to ``DEST/src`` and compiles there, with mypyc, the modules that
``pyproject.toml``'s ``[tool.hatch.build.targets.wheel.hooks.mypyc] include`` lists (one
list for the wheel and the benchmarks). Prints ``DEST/src``: pass it to
``bench_callbacks.py --src`` or ``bench_proxy.py --src`` beside a plain tree. Takes about a
minute on one core; needs gcc and the Python headers.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compiled_modules() -> list[str]:
    """The paths (relative to the project) that the mypyc build hook compiles."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    hook = config["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["mypyc"]
    return [pattern.lstrip("/") for pattern in hook["include"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    args = parser.parse_args()
    if importlib.util.find_spec("setuptools") is None:  # mypyc builds with it; 3.12+ venvs lack it
        raise SystemExit(f"compile_tree: mypyc needs setuptools: {sys.executable} -m pip install "
                         "setuptools")
    dest: Path = args.dest.resolve()
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(args.src, dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    tree = dest / "src"
    modules = [module.removeprefix("src/") for module in compiled_modules()]
    # In the tree itself: mypyc builds in place (each .so beside its .py), with setuptools
    # reading no pyproject.toml there (ours configures hatchling).
    subprocess.run([sys.executable, "-m", "mypyc", *modules], cwd=tree, check=True,
                   env={"PATH": "/usr/bin:/bin"}, stdout=subprocess.DEVNULL)
    shutil.rmtree(tree / "build")
    print(tree)


if __name__ == "__main__":
    main()
