"""The version comes from the installed metadata, read without importlib.metadata where that
gives the same answer (``_version.metadata_version``), and from importlib.metadata otherwise."""

from __future__ import annotations

import importlib.metadata
import zipfile
from pathlib import Path

import pytest

from awstoken._version import metadata_version, version


def test_version_is_the_installed_metadata() -> None:
    assert version() == importlib.metadata.version("awstoken")


def _importlib(paths: list[str]) -> str | None:
    found = next(iter(importlib.metadata.Distribution.discover(name="awstoken", path=paths)), None)
    return None if found is None else found.version


def _dist(where: Path, name: str, text: str, file: str = "METADATA") -> None:
    (where / name).mkdir(parents=True)
    (where / name / file).write_text(text)


META = "Metadata-Version: 2.4\nName: awstoken\nVersion: {}\nSummary: x\n\nVersion: 9.9 (the body)\n"


def test_reads_the_first_dist_info_on_the_path_as_importlib_does(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _dist(first, "awstoken_extra-7.0.dist-info", META.format("7.0"))  # another distribution
    _dist(first, "AWSToken-1.2.3.dist-info", META.format("1.2.3"))
    _dist(second, "awstoken-2.0.dist-info", META.format("2.0"))
    paths = [str(tmp_path / "missing"), str(first), str(second)]
    assert metadata_version(paths) == _importlib(paths) == "1.2.3"
    assert metadata_version([str(second), str(first)]) == "2.0"


def test_reads_egg_info_pkg_info(tmp_path: Path) -> None:
    _dist(tmp_path, "awstoken.egg-info", META.format("3.1"), file="PKG-INFO")
    assert metadata_version([str(tmp_path)]) == _importlib([str(tmp_path)]) == "3.1"


@pytest.mark.parametrize("case", ["zip first", "egg", "no version field", "nothing installed"])
def test_leaves_other_layouts_to_importlib_metadata(tmp_path: Path, case: str) -> None:
    """Where the cheap reader could answer differently it answers None (importlib decides)."""
    site = tmp_path / "site"
    _dist(site, "awstoken-5.0.dist-info", META.format("5.0"))
    paths = [str(site)]
    if case == "zip first":
        archive = tmp_path / "lib.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("awstoken-4.0.dist-info/METADATA", META.format("4.0"))
        paths = [str(archive), str(site)]
        assert _importlib(paths) == "4.0"
    elif case == "egg":
        _dist(tmp_path / "eggs", "awstoken-6.0-py3.11.egg/EGG-INFO", META.format("6.0"), file="PKG-INFO")
        paths = [str(tmp_path / "eggs"), str(site)]
    elif case == "no version field":
        (site / "awstoken-5.0.dist-info" / "METADATA").write_text("Name: awstoken\n\nVersion: 1\n")
    else:
        paths = [str(tmp_path / "empty")]
        assert _importlib(paths) is None
    assert metadata_version(paths) is None
