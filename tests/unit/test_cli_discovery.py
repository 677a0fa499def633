"""The command modules are found with os.listdir (pkgutil imports inspect for it): the same
names as ``pkgutil.iter_modules`` lists, in awstoken's packages and in odd layouts."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest

import awstoken
import awstoken._config
import awstoken.cli
import awstoken.storage
from awstoken._cli import _module_names


def _pkgutil(path: list[str]) -> set[str]:
    return {info.name for info in pkgutil.iter_modules(path)}


@pytest.mark.parametrize("package", [awstoken, awstoken.cli, awstoken._config, awstoken.storage])
def test_same_names_as_pkgutil_in_our_packages(package: object) -> None:
    path = list(package.__path__)  # type: ignore[attr-defined]
    assert _module_names(path) == _pkgutil(path)


def test_same_names_as_pkgutil_in_odd_layouts(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for name in ("plain.py", "compiled.pyc", "both.py", "both.pyc", "dotted.name.py",
                 "notes.txt", "__init__.py", "_private.py"):
        (one / name).parent.mkdir(exist_ok=True)
        (one / name).write_text("")
    for sub, init in (("pkg", "__init__.py"), ("sourceless", "__init__.pyc"), ("plain_dir", None),
                      ("__pycache__", None), ("dotted.dir", "__init__.py")):
        (one / sub).mkdir()
        if init:
            (one / sub / init).write_text("")
    two.mkdir()
    (two / "plain.py").write_text("")  # listed once
    (two / "second.py").write_text("")
    path = [str(one), str(two), str(tmp_path / "missing")]
    assert _module_names(path) == _pkgutil(path)
    assert _module_names(path) >= {"plain", "compiled", "both", "pkg", "sourceless", "second"}
