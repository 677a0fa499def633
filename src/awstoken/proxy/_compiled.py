"""Whether the proxy's request path runs compiled (mypyc) or as plain Python.

The wheel compiles the modules that ``pyproject.toml``'s mypyc build hook lists when it is
built with ``HATCH_BUILD_HOOK_ENABLE_MYPYC=true``; otherwise every module is plain Python
and behaves the same, only slower (docs/benchmarks.md, "Compiled request path").
"""

from __future__ import annotations

import importlib


def is_compiled(module: str) -> bool:
    """True when ``module`` (a dotted name) was loaded from an extension module."""
    path = getattr(importlib.import_module(module), "__file__", None) or ""
    return not path.endswith((".py", ".pyc"))


def request_path() -> str:
    """``"compiled"`` or ``"interpreted"``: how the client connection's module was loaded
    (the serve log says which, so a figure can be matched to the build that gave it)."""
    return "compiled" if is_compiled("awstoken.proxy._h1.inbound") else "interpreted"
