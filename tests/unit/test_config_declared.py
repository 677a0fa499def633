"""Each setting is declared once, by its settings field: the loader, the code and the docs agree.

A key of the file exists only as a field whose metadata says how it is read; these tests
check that no field is left without its key, that docs/configuration.md documents exactly
the declared keys (with the declared defaults, where the docs give a TOML value), and that
a misspelled field is refused at once.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from awstoken import config
from awstoken._config.load import TOKEN_KEYS, TOP_KEYS
from awstoken._config.options import OPTIONS, AwsOptions, SourceOptions
from awstoken._config.reading import Report, Table, keys_of
from awstoken._config.reload import RESTART_ONLY
from awstoken._config.settings import (
    CacheSettings,
    FileWrite,
    RouteSettings,
    ServerSettings,
    Settings,
    StorageSettings,
    TokenSettings,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
TABLES: tuple[type[Any], ...] = (StorageSettings, TokenSettings, ServerSettings, RouteSettings,
                                 CacheSettings, FileWrite, *OPTIONS.values())
#: Fields that no key of their own sets: the table's name, what ``source`` selects, and the
#: storage ``type`` (read first: it decides which other keys are valid).
NOT_KEYS = {(TokenSettings, "name"), (TokenSettings, "options"), (StorageSettings, "type")}


@pytest.mark.parametrize("cls", TABLES, ids=lambda cls: cls.__name__)
def test_every_field_is_read_from_its_key(cls: type[Any]) -> None:
    unread = [f.name for f in dataclasses.fields(cls)
              if "read" not in f.metadata and (cls, f.name) not in NOT_KEYS]
    assert unread == []


def test_the_file_s_tables_are_the_settings_fields() -> None:
    assert TOP_KEYS == ("storage", "tokens", "server", "routes")
    assert TOKEN_KEYS[0] == "source"
    assert set(RESTART_ONLY) <= set(keys_of(ServerSettings))


def test_a_misspelled_field_is_refused_at_once() -> None:
    # mypy (strict, warn_unused_ignores) needs the ignore: the misspelling is a type error too.
    with pytest.raises(TypeError, match="intervall"):
        TokenSettings(name="a", intervall=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="registryid"):
        config.ECROptions(registryid="123456789012")  # type: ignore[call-arg]


def test_the_public_module_exports_the_loader_and_every_settings_class() -> None:
    assert set(config.__all__) == {
        "load", "loads", "build_keeper", "start_rotators", "ConfigError", "Settings",
        "StorageSettings", "TokenSettings", "ServerSettings", "RouteSettings", "CacheSettings",
        "FileWrite", "SourceOptions", "AwsOptions", *(cls.__name__ for cls in OPTIONS.values())}
    for name in config.__all__:
        assert getattr(config, name).__doc__, name
    assert config.Settings is Settings and config.AwsOptions is AwsOptions
    assert config.SourceOptions == SourceOptions
    settings = config.loads("[tokens.a]\nsource = 'eks'\ncluster = 'c1'\n", file="a.toml")
    assert settings.tokens["a"].options == config.EKSOptions(cluster="c1")


# -- docs/configuration.md -----------------------------------------------------------------------

_KEY = re.compile(r"`([a-z_]+)`")


def _doc_tables(columns: tuple[str, ...] = ("key", "meaning", "default"),
                ) -> dict[str, list[list[str]]]:
    """The rows of every table with these ``columns``, by the section they are in."""
    found: dict[str, list[list[str]]] = {}
    section, header = "", None
    for line in DOC.read_text().splitlines():
        if line.startswith(("## ", "### ")):
            title = line.lstrip("#").strip()
            section, header = title.split("`")[1] if title.startswith("`") else title, None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif tuple(header) == columns and not set(cells[0]) <= set("-: "):
            found.setdefault(section, []).append(cells)
    return found


def _documented(rows: list[list[str]]) -> list[str]:
    return [key for row in rows for key in _KEY.findall(row[0])]


def test_every_key_is_documented_once_and_every_documented_key_exists() -> None:
    tables = _doc_tables()
    assert sorted(_documented(tables["[storage]"])) == sorted(
        ("type", *keys_of(StorageSettings)))
    common = tables["[tokens.NAME]"]
    assert sorted(_documented(common)) == sorted(TOKEN_KEYS)
    assert sorted(_documented(tables["[server]"])) == sorted(keys_of(ServerSettings))
    assert sorted(_documented(tables["[[routes]]"])) == sorted(keys_of(RouteSettings))
    assert sorted(_documented(tables["cache"])) == sorted(keys_of(CacheSettings))
    writes = next(row for row in common if "`writes`" in row[0])
    assert all(f"{key} =" in writes[1] for key in keys_of(FileWrite))


def test_every_source_key_is_documented_for_its_sources() -> None:
    rows = _doc_tables(("key", "source", "meaning"))["[tokens.NAME]"]
    documented: dict[str, set[str]] = {source: set() for source in OPTIONS}
    for row in rows:
        sources = (_KEY.findall(row[1].replace("-", "_")) if "every native" not in row[1]
                   else [s.replace("-", "_") for s in OPTIONS if s != "command"])
        for source in sources:
            documented[source.replace("_", "-")].update(_KEY.findall(row[0]))
    assert documented == {source: set(keys_of(cls)) for source, cls in OPTIONS.items()}


def test_the_keys_a_reload_keeps_are_the_documented_ones() -> None:
    text = DOC.read_text()
    paragraph = text[text.index("SIGHUP makes"):].split("\n\n")[0]
    named = set(_KEY.findall(paragraph))
    assert named == set(RESTART_ONLY)
    assert "`[storage]`" in paragraph


def _defaults() -> list[tuple[type[Any], str, str]]:
    """(class, key, default cell) of each documented default that is one TOML value."""
    classes = {"[storage]": StorageSettings, "[tokens.NAME]": TokenSettings,
               "[server]": ServerSettings, "[[routes]]": RouteSettings}
    found = []
    for section, cls in classes.items():
        for row in _doc_tables()[section]:
            keys = _KEY.findall(row[0])
            cell = row[-1]
            if len(keys) == 1 and keys[0] in keys_of(cls) and re.fullmatch(r"`[^`]+`", cell):
                try:
                    tomllib.loads(f"v = {cell.strip('`')}")
                except tomllib.TOMLDecodeError:
                    continue  # prose, or a duration without quotes: not checked here
                found.append((cls, keys[0], cell.strip("`")))
    return found


@pytest.mark.parametrize(("cls", "key", "cell"), _defaults(),
                         ids=[f"{cls.__name__}.{key}" for cls, key, _ in _defaults()])
def test_documented_defaults_are_the_declared_ones(cls: type[Any], key: str, cell: str) -> None:
    value = tomllib.loads(f"v = {cell}")["v"]
    report = Report("doc")
    declared = next(f for f in dataclasses.fields(cls) if f.name == key)
    read = declared.metadata["read"](Table(report, "", {key: value}, Path("/")), key)
    assert report.messages == []
    assert read == declared.default


def test_the_public_module_imports_the_standard_library_only() -> None:
    code = ("import sys, awstoken.config; print([m for m in ('botocore', 'redis', 'aiohttp', "
            "'awstoken.proxy', 'awstoken.aws') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
