"""The version of awstoken, read once from the installed package's metadata.

pyproject.toml is the one place it is written; the installed distribution's metadata
(``awstoken-VERSION.dist-info/METADATA``) is where it is read. ``importlib.metadata`` finds
that file by walking ``sys.path``, and importing it costs 13-20 ms of CPU (email, zipfile,
csv, pathlib): more than the rest of ``awstoken --version`` and of a credential door's
``version``. So the plain case, a ``.dist-info`` or ``.egg-info`` directory in a directory
on ``sys.path``, is read here the same way with ``os.listdir``; anything else (a zip archive
on the path before the metadata, an egg, a file without a ``Version`` field) is left to
``importlib.metadata``, which also answers when nothing is installed.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable

#: What a source tree that was never installed reports (no package metadata to read).
UNKNOWN = "0+unknown"
DISTRIBUTION = "awstoken"


@functools.cache
def version() -> str:
    """The installed distribution's version, e.g. ``"0.1.0.dev0"``."""
    found = metadata_version(sys.path)
    return found if found is not None else _importlib_version()


def _importlib_version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version(DISTRIBUTION)
    except PackageNotFoundError:
        return UNKNOWN


def metadata_version(paths: Iterable[str]) -> str | None:
    """The ``Version`` of the first awstoken metadata directory on ``paths``, as
    ``importlib.metadata`` finds it; None where that lookup could differ (let it answer)."""
    for entry in paths:
        try:
            names = os.listdir(entry or ".")
        except NotADirectoryError:
            return None  # a zip archive: importlib.metadata looks inside
        except OSError:
            continue  # missing, as importlib.metadata skips it
        for name in names:
            found = _match(entry or ".", name)
            if found is not None:
                return found or None
    return None


def _match(directory: str, name: str) -> str | None:
    """The version in ``name`` if it is awstoken's metadata; "" when it is but cannot be
    read here; None when it is another distribution's."""
    low = name.lower()
    if low.endswith(".egg"):
        return "" if low.partition("-")[0] == DISTRIBUTION else None
    if not low.endswith((".dist-info", ".egg-info")):
        return None
    if low.rpartition(".")[0].partition("-")[0] != DISTRIBUTION:
        return None
    file = "METADATA" if low.endswith(".dist-info") else "PKG-INFO"
    try:
        with open(os.path.join(directory, name, file), encoding="utf-8") as fh:
            return _header(fh, "Version") or ""
    except (OSError, UnicodeDecodeError):
        return ""


def _header(lines: Iterable[str], field: str) -> str | None:
    """The value of ``field`` in an RFC 822 header block (up to the first empty line)."""
    prefix = field.lower() + ":"
    for line in lines:
        if not line.strip():
            return None
        if line.lower().startswith(prefix):
            return line[len(prefix):].strip()
    return None
