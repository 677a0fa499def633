"""The process around a server: event loop, signals, malloc and open-file tuning."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from ..._config.reload import TokenPlan
from ..._config.settings import Settings
from ..._errors import ConfigError

log = logging.getLogger("awstoken.proxy")


def _event_loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.Loop


def tune_malloc() -> None:
    """Keep freed body buffers in the heap instead of returning them to the kernel (glibc).

    A streamed body moves through buffers of a few hundred KiB. glibc serves those with
    fresh ``mmap`` pages (or trims them off the heap when freed), so every read page-faults
    its memory in again: measured here, that tripled the CPU per GiB streamed. A 4 MiB mmap
    threshold and a 16 MiB trim threshold keep them in the heap, reused. Process-wide, so
    only :func:`serve` (which owns its process) sets it; a no-op where there is no glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(_M_MMAP_THRESHOLD, 4 * 1024 * 1024)
    mallopt(_M_TRIM_THRESHOLD, 16 * 1024 * 1024)


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def raise_open_file_limit() -> None:
    """Raise the soft limit on open files to the hard one (each proxied request holds two
    sockets; the common soft limit of 1024 is reached by a few hundred idle clients)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20) if soft != resource.RLIM_INFINITY else soft
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("awstoken: cannot raise the open-file limit from %d to %d: %s", soft, hard,
                    exc)


def check_fd_budget(settings: Settings) -> None:
    """One warning when max_connections cannot be reached within the open-file limit."""
    try:
        import resource
    except ImportError:
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * settings.server.max_connections + 64  # client and upstream sockets, and more
    if soft != resource.RLIM_INFINITY and wanted > soft:
        log.warning("awstoken: server.max_connections = %d needs about %d open files, but the "
                    "limit is %d: raise it (systemd LimitNOFILE=) or lower max_connections",
                    settings.server.max_connections, wanted, soft)


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    factory = _event_loop_factory()
    runner = asyncio.Runner(loop_factory=factory) if factory else asyncio.Runner()
    with runner:
        return int(runner.run(main))


#: Called on SIGHUP: reads the configuration again and builds its rotators (not started).
Reload = Callable[[], TokenPlan]


class Control:
    """What ends the process: SIGTERM or SIGINT (logged as received), or a failure.

    SIGHUP runs ``on_hup`` (a reload) when given; without one it is logged and ignored,
    never the default action (which would end the process silently).
    """

    def __init__(self, on_hup: Callable[[], object] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.done = asyncio.Event()
        self.exit_code = 0
        self._on_hup = on_hup
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self._stop, signum)
        self.loop.add_signal_handler(signal.SIGHUP, self._hup)

    def _stop(self, signum: int) -> None:
        if not self.done.is_set():
            log.info("awstoken: %s received, shutting down", signal.Signals(signum).name)
        self.done.set()

    def _hup(self) -> None:
        if self._on_hup is None:
            log.warning("awstoken: SIGHUP received: nothing to reload (no configuration file)")
            return
        log.info("awstoken: SIGHUP received, reloading the configuration")
        self._on_hup()

    def fail(self, code: int) -> None:
        """Stop with ``code`` (the reason is already logged)."""
        if not self.done.is_set():
            self.exit_code = code
        self.done.set()

    def close(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.remove_signal_handler(signum)


def reload_failed(exc: ConfigError) -> None:
    log.error("awstoken: reload failed, still running the previous configuration: %s", exc)


def reloaded(settings: Settings, changes: list[str]) -> None:
    log.info("awstoken: configuration reloaded from %s (%s)", settings.path or "-",
             "; ".join(changes))


