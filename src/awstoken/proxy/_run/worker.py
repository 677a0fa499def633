"""A proxy worker process (``server.workers > 1``): a fresh interpreter, never a fork.

Forking a process that runs threads (the rotators, the event loop's executor) copies
locks in whatever state another thread left them, and Python 3.12+ warns about it. So the
parent starts each worker as ``python -c BOOT`` and writes a pickled :class:`WorkerSpec` to
its standard input: the settings, how to open the storage, its metrics socket, the logging
configuration. The worker binds the proxy address (``SO_REUSEPORT``), prints ``ready`` on
its standard output (the parent's sign that the listener is bound) and serves until
SIGTERM. It only reads tokens: the parent keeps them fresh.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from ..._config.settings import Settings
from ..._errors import ConfigError
from ..._rotation.keeper import Keeper
from ...storage import FileStorage, Storage

log = logging.getLogger("awstoken.proxy")

#: How the worker opens the storage: ``("file", directory)`` or ``("settings", None)``
#: (build it from ``settings.storage``, as for Redis).
StorageSpec = tuple[str, str | None]


@dataclass(frozen=True)
class LoggingSpec:
    """The parent's logging: root level, its handlers' formatters, explicit logger levels."""

    level: int
    formatters: tuple[bytes, ...]
    levels: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, written by the parent to the worker's standard input."""

    settings: Settings
    storage: StorageSpec
    index: int
    metrics_socket: str
    parent: int
    logging: LoggingSpec


def worker_storage(keeper: Keeper, settings: Settings) -> StorageSpec:
    """How a worker opens the storage of ``keeper``; ConfigError when it cannot."""
    storage = keeper.storage
    if isinstance(storage, FileStorage):
        return ("file", str(storage.path))
    if settings.storage.type == "redis" and type(storage).__name__ == "RedisStorage":
        return ("settings", None)
    raise ConfigError(f"server.workers > 1 needs a storage shared by processes (file, or redis "
                      f"as configured in [storage]), not {storage!r}")


def logging_spec() -> LoggingSpec:
    """This process's logging configuration, for a worker to copy."""
    root = logging.getLogger()
    formatters: list[bytes] = []
    for handler in root.handlers:
        if handler.formatter is not None:
            try:
                formatters.append(pickle.dumps(handler.formatter))
            except Exception:  # noqa: BLE001  a formatter that cannot travel (any reason): the default
                formatters.append(pickle.dumps(None))
    levels = tuple((name, logger.level) for name, logger in logging.root.manager.loggerDict.items()
                   if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET)
    return LoggingSpec(root.level, tuple(formatters), levels)


def worker_command() -> list[str]:
    """The command line of a worker: this interpreter, importing this copy of awstoken."""
    import awstoken  # the package's own location, wherever this module sits inside it

    package_parent = str(Path(awstoken.__file__).resolve().parents[1])
    boot = (f"import sys; sys.path.insert(0, {package_parent!r}); "
            "from awstoken.proxy._run.worker import main; main()")
    return [sys.executable, "-c", boot]


def _setup_logging(spec: LoggingSpec) -> None:
    root = logging.getLogger()
    root.setLevel(spec.level)
    for raw in spec.formatters or (pickle.dumps(None),):
        handler = logging.StreamHandler(sys.stderr)
        try:
            formatter = pickle.loads(raw)  # noqa: S301 (our parent wrote it)
        except Exception:  # noqa: BLE001  a formatter that cannot be rebuilt here: the default
            formatter = None
        handler.setFormatter(formatter or logging.Formatter("%(asctime)s %(message)s"))
        root.addHandler(handler)
    for name, level in spec.levels:
        logging.getLogger(name).setLevel(level)


def _open_storage(spec: WorkerSpec) -> Storage:
    kind, where = spec.storage
    if kind == "file":
        assert where is not None
        return FileStorage(where)
    from ..._config.build import build_storage

    return build_storage(spec.settings.storage)


def die_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM to this process when its parent dies, even by SIGKILL.

    Otherwise orphaned workers would keep serving the port with nobody to restart, drain or
    stop them. Linux only (prctl PR_SET_PDEATHSIG); elsewhere nothing is done.
    """
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("awstoken: could not ask to be stopped with the parent (errno %d)",
                    ctypes.get_errno())
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    """The worker's entry point (see the module docstring)."""
    spec: WorkerSpec = pickle.load(sys.stdin.buffer)  # noqa: S301 (our parent wrote it)
    # The parent decides: SIGTERM stops a worker, SIGINT and SIGHUP (a terminal's, or a
    # signal sent to the whole group) do not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    die_with_parent(spec.parent)
    ready = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to the log, never into the parent's ready pipe
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _setup_logging(spec.logging)
    status = 1
    try:
        from .serve import serve_worker

        keeper = Keeper(_open_storage(spec))
        status = serve_worker(spec.settings, keeper, spec.metrics_socket, ready)
    except ConfigError as exc:
        print(f"awstoken: worker {spec.index}: {exc}", file=sys.stderr)
        status = 2
    except BaseException:
        log.exception("awstoken: worker %d crashed", spec.index)
    finally:
        sys.stderr.flush()
        os._exit(status)
