"""Each public module's ``__all__`` is exactly its public names, each one documented.

As httpx's tests/test_exported_members.py: a name added to a public module without being
listed (or listed and gone) fails here, so the curated surface stays curated.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
import types
import typing

import pytest

import awstoken

MODULES = ["awstoken", "awstoken.aws", "awstoken.storage", "awstoken.proxy", "awstoken.httpx",
           "awstoken.requests", "awstoken.aiohttp"]


def public_names(module: types.ModuleType) -> set[str]:
    """Names a reader of ``module`` sees as its own: not private, not a module, defined there
    (or, for a package, in one of its modules), or a type alias or constant it assigns; not
    what it imports from the standard library, a third party or another awstoken module."""
    names = set()
    package = module.__name__ + "." if hasattr(module, "__path__") else None
    for name in dir(module):
        if name.startswith("_") or name in ("annotations", "TYPE_CHECKING"):
            continue
        value = getattr(module, name)
        if isinstance(value, types.ModuleType):
            continue
        origin = getattr(value, "__module__", None)
        if (origin is None or origin == module.__name__ or typing.get_origin(value) is not None
                or (package is not None and origin.startswith(package))):
            names.add(name)
    return names


@pytest.mark.parametrize("module_name", MODULES)
def test_all_is_the_public_names(module_name: str) -> None:
    if module_name in ("awstoken.httpx", "awstoken.requests", "awstoken.aiohttp"):
        pytest.importorskip(module_name.split(".")[1])
    module = importlib.import_module(module_name)
    exported = set(module.__all__) - {"__version__"}
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
    """The module that defines the alias ``name`` that ``module`` exports."""
    lazy: dict[str, str] = getattr(module, "_LAZY", {})
    where = lazy.get(name)
    return importlib.util.resolve_name(where, module.__name__) if where else module.__name__


def test_version_comes_from_the_package_metadata() -> None:
    assert awstoken.__version__ == importlib.metadata.version("awstoken")
    assert "__version__" in awstoken.__all__
    assert "__version__" in dir(awstoken)
