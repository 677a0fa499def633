"""Whether the proxy's request path runs compiled (mypyc) or as plain Python.

The wheel compiles the modules that ``pyproject.toml``'s mypyc build hook lists when it is
built with ``HATCH_BUILD_HOOK_ENABLE_MYPYC=true``; otherwise every module is plain Python
and behaves the same, only slower (docs/benchmarks.md, "Compiled request path").
"""

from __future__ import annotations

import importlib
import warnings

#: What Python 3.12+ says when mypyc's compiled coroutines throw an exception into the
#: future they await with the three-argument ``throw()`` (mypyc/mypyc#1214, open).
MYPYC_THROW_WARNING = r"the \(type, exc, tb\) signature of throw\(\) is deprecated"


def is_compiled(module: str) -> bool:
    """True when ``module`` (a dotted name) was loaded from an extension module."""
    path = getattr(importlib.import_module(module), "__file__", None) or ""
    return not path.endswith((".py", ".pyc"))


def request_path() -> str:
    """``"compiled"`` or ``"interpreted"``: how the client connection's module was loaded
    (the serve log says which, so a figure can be matched to the build that gave it)."""
    return "compiled" if is_compiled("awstoken.proxy._h1.inbound") else "interpreted"


def quiet_mypyc_throw() -> None:
    """Ignore :data:`MYPYC_THROW_WARNING` when the request path runs compiled.

    The warning is about mypyc's generated C, not about code anyone can change here; under
    ``-W error`` it would replace the exception being thrown (a connection reset would
    surface as a DeprecationWarning). Our own code never calls ``throw()``.
    """
    if request_path() == "compiled":
        warnings.filterwarnings("ignore", message=MYPYC_THROW_WARNING,
                                category=DeprecationWarning)
