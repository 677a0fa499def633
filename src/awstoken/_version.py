"""The version of awstoken, read once from the installed package's metadata.

pyproject.toml is the one place it is written. ``importlib.metadata`` is imported only when
the version is asked for: the credential doors (short processes started by docker, pip and the
kubelet) never pay for it unless asked ``version``.
"""

from __future__ import annotations

import functools

#: What a source tree that was never installed reports (no package metadata to read).
UNKNOWN = "0+unknown"


@functools.cache
def version() -> str:
    """The installed distribution's version, e.g. ``"0.1.0.dev0"``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("awstoken")
    except PackageNotFoundError:
        return UNKNOWN
