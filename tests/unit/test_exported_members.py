"""Each public module's ``__all__`` is exactly its public names, each one documented.

As httpx's tests/test_exported_members.py: a name added to a public module without being
listed (or listed and gone) fails here, so the curated surface stays curated.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
import sys
import types
import typing

import pytest

import awstoken

MODULES = ["awstoken", "awstoken.aws", "awstoken.config", "awstoken.storage", "awstoken.proxy",
           "awstoken.httpx", "awstoken.requests", "awstoken.aiohttp"]


def _root_objects(module: types.ModuleType) -> set[int]:
    """What ``awstoken`` itself exports (other modules may re-use it: ``ConfigError``)."""
    if module is awstoken:
        return set()
    return {id(getattr(awstoken, name)) for name in awstoken.__all__ if name != "__version__"}


def public_names(module: types.ModuleType) -> set[str]:
    """Names a reader of ``module`` sees as its own: not private, not a module, not one of
    ``awstoken``'s own exports; defined there (or below it), taken from a private awstoken
    module, or a type alias or constant; not what it imports from the standard library or a
    third party (``time``, ``Collection``, ``httpx``)."""
    root = _root_objects(module)
    names = set()
    for name in dir(module):
        if name.startswith("_") or name in ("annotations", "TYPE_CHECKING"):
            continue
        value = getattr(module, name)
        if isinstance(value, types.ModuleType) or id(value) in root:
            continue
        origin = getattr(value, "__module__", None)
        if (origin is None or typing.get_origin(value) is not None
                or origin == module.__name__ or origin.startswith(module.__name__ + ".")
                or (origin.startswith("awstoken.") and "._" in f".{origin.partition('.')[2]}")):
            names.add(name)
    return names


@pytest.mark.parametrize("module_name", MODULES)
def test_all_is_the_public_names(module_name: str) -> None:
    if module_name in ("awstoken.httpx", "awstoken.requests", "awstoken.aiohttp"):
        pytest.importorskip(module_name.split(".")[1])
    module = importlib.import_module(module_name)
    root = _root_objects(module)
    exported = {name for name in module.__all__
                if name != "__version__" and id(getattr(module, name)) not in root}
    assert public_names(module) == exported
    assert len(module.__all__) == len(set(module.__all__))


def _documented_alias(value_name: str, module: types.ModuleType) -> bool:
    """A type alias or constant has a ``#:`` comment right above its assignment or a string
    right below it (the two forms Sphinx reads)."""
    source = inspect.getsource(module)
    name = re.escape(value_name)
    return re.search(rf'^#:.*\n{name}\b|^{name}\b.*\n"""', source, re.MULTILINE) is not None


@pytest.mark.parametrize("module_name", MODULES)
def test_every_exported_name_is_documented(module_name: str) -> None:
    if module_name in ("awstoken.httpx", "awstoken.requests", "awstoken.aiohttp"):
        pytest.importorskip(module_name.split(".")[1])
    module = importlib.import_module(module_name)
    undocumented = []
    for name in module.__all__:
        if name == "__version__":
            continue
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            if not (value.__doc__ or "").strip():
                undocumented.append(name)
        elif not _documented_alias(name, importlib.import_module(_home(module, name))):
            undocumented.append(name)
    assert undocumented == []


def _home(module: types.ModuleType, name: str) -> str:
    """The awstoken module that assigns the alias or constant ``name`` that ``module`` exports."""
    assignment = re.compile(rf"^{re.escape(name)}\b\s*[:=]", re.MULTILINE)
    for candidate in [module.__name__, *sorted(sys.modules)]:
        if candidate.split(".")[0] == "awstoken" and assignment.search(
                inspect.getsource(sys.modules[candidate])):
            return candidate
    return module.__name__


def test_version_comes_from_the_package_metadata() -> None:
    assert awstoken.__version__ == importlib.metadata.version("awstoken")
    assert "__version__" in awstoken.__all__
    assert "__version__" in dir(awstoken)
