"""The supervisor of worker processes (``server.workers > 1``), apart from the protocols.

It starts N workers as fresh interpreters, restarts crashed ones, replaces them all on
reload (new ones first, then the old ones drain), serves the admin listener and the token
endpoint itself, and merges the workers' request metrics with its own token metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from ..._config.reload import keep_restart_only
from ..._config.settings import Settings
from ..._errors import ConfigError
from ..._rotation.keeper import Keeper
from .._admin import AdminApp
from .._prom import merge_exposition
from .._server import ProxyServer, check_reload
from .process import Control, Reload, reload_failed, reloaded, run_loop
from .worker import WorkerSpec, logging_spec, worker_command, worker_storage

log = logging.getLogger("awstoken.proxy")


#: A worker that has not bound its listener within this many seconds failed to start.
WORKER_START_TIMEOUT = 60.0


class WorkerFailed(Exception):
    def __init__(self, index: int, code: int) -> None:
        super().__init__(f"worker {index} could not start (exit status {code}; its message is "
                         "above)")
        self.code = code


class Worker:
    def __init__(self, index: int, proc: asyncio.subprocess.Process, socket: str) -> None:
        self.index = index
        self.proc = proc
        self.socket = socket


class Supervisor:
    """The parent of N workers: starts them as fresh processes, restarts crashed ones,
    replaces them all on reload, serves admin and the token endpoint, stops all.

    Workers are new interpreters (never forks of this process, which runs rotation
    threads): each opens the storage, binds the proxy address with ``SO_REUSEPORT`` and
    only reads tokens; this process keeps them fresh.
    """

    def __init__(self, settings: Settings, keeper: Keeper, *,
                 on_ready: Callable[[], object] | None, reload: Reload | None) -> None:
        self.settings = settings
        self.keeper = keeper
        self.storage = worker_storage(keeper, settings)
        self.on_ready = on_ready
        self.reload = reload
        self.dir = Path(tempfile.mkdtemp(prefix="awstoken-workers-"))
        self.workers: dict[int, Worker] = {}  # index -> the current worker
        self.retiring: set[Worker] = set()
        self.spawned = 0
        self.failures: list[float] = []
        self.stopping = False
        self._tasks: set[asyncio.Task[None]] = set()

    def run(self) -> int:
        try:
            return run_loop(self._main())
        finally:
            for path in self.dir.glob("*.sock"):
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                self.dir.rmdir()

    def _task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _main(self) -> int:
        server = ProxyServer(self.settings, self.keeper, admin=False)
        registry = server._admin_registry()
        server.admin = AdminApp(self.keeper, server.token_names, registry,
                                extra_metrics=self._worker_metrics)
        lock = asyncio.Lock()
        ready = False

        def on_hup() -> None:
            if ready:
                self._task(self._reload(server, lock))
            else:
                log.warning("awstoken: SIGHUP while starting: ignored")

        # Signals first: a SIGTERM while the workers start stops them all cleanly.
        self.control = control = Control(on_hup if self.reload is not None else None)
        try:
            if not await self._start(server, registry):
                return control.exit_code  # stopped while starting
            ready = True
            if self.on_ready is not None:
                self.on_ready()
            for worker in self.workers.values():
                self._task(self._keep(worker))
            await control.done.wait()
        finally:
            control.close()
            self.stopping = True
            await self._stop_workers([*self.workers.values(), *self.retiring])
            for task in list(self._tasks):
                task.cancel()
            await server.stop()  # the admin and token listeners (it never bound a proxy listener)
        return control.exit_code

    async def _start(self, server: ProxyServer, registry: CollectorRegistry) -> bool:
        """Bind the parent's listeners and start the workers; False when a signal came first."""
        try:
            await server.start_admin(server.admin)
            if server.with_token_endpoint:  # here, not in the workers: one socket, one owner
                await server.start_token_endpoint(registry)
            starting = asyncio.ensure_future(self._start_all(self.settings, self.workers))
            stopped = asyncio.ensure_future(self.control.done.wait())
            await asyncio.wait((starting, stopped), return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, WorkerFailed, ConfigError):
                    await starting
                return False
            starting.result()
        except OSError as exc:
            raise ConfigError(f"cannot listen: {exc.strerror}") from None
        except WorkerFailed as exc:
            raise ConfigError(str(exc)) from None
        return True

    async def _start_all(self, settings: Settings,
                         into: dict[int, Worker] | None = None) -> dict[int, Worker]:
        """Start ``server.workers`` workers; all bound, or none left running. Each one goes
        into ``into`` as soon as it is bound (its metrics count from then on)."""
        started: dict[int, Worker] = {} if into is None else into

        async def one(index: int) -> None:
            started[index] = await self._spawn(index, settings)

        try:
            results = await asyncio.gather(*(one(i) for i in range(settings.server.workers)),
                                           return_exceptions=True)
        except asyncio.CancelledError:
            await self._stop_workers(list(started.values()))
            started.clear()
            raise
        for result in results:
            if isinstance(result, BaseException):
                await self._stop_workers(list(started.values()))
                started.clear()
                raise result
        return started

    async def _spawn(self, index: int, settings: Settings) -> Worker:
        self.spawned += 1
        socket_path = str(self.dir / f"worker-{self.spawned}.sock")
        spec = WorkerSpec(settings=settings, storage=self.storage, index=index,
                          metrics_socket=socket_path, parent=os.getpid(),
                          logging=logging_spec())
        proc = await asyncio.create_subprocess_exec(
            *worker_command(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(pickle.dumps(spec))
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), WORKER_START_TIMEOUT)
        except TimeoutError:
            line = b""
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if line != b"ready\n":
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code = await proc.wait()
            raise WorkerFailed(index, code if code >= 0 else 128 - code)
        return Worker(index, proc, socket_path)

    def _failing(self) -> bool:
        now = time.monotonic()
        self.failures = [t for t in self.failures if now - t < 60] + [now]
        return len(self.failures) > 10

    async def _keep(self, worker: Worker) -> None:
        """Restart ``worker`` whenever it exits, unless stopping, retired or failing."""
        while True:
            code = await worker.proc.wait()
            if self.stopping or self.workers.get(worker.index) is not worker:
                self.retiring.discard(worker)
                return
            log.error("awstoken: worker %d (pid %d) exited with status %d; restarting it",
                      worker.index, worker.proc.pid, code)
            if code == 2 or self._failing():
                log.error("awstoken: workers keep failing; stopping")
                self.control.fail(1)
                return
            try:
                worker = await self._spawn(worker.index, self.settings)
            except WorkerFailed as exc:
                log.error("awstoken: %s", exc)
                if exc.code == 2 or self._failing():
                    log.error("awstoken: workers keep failing; stopping")
                    self.control.fail(1)
                    return
                continue
            if self.stopping:
                await self._stop_workers([worker])
                return
            self.workers[worker.index] = worker

    async def _reload(self, server: ProxyServer, lock: asyncio.Lock) -> None:
        """A new configuration: new workers with it, then the old ones drain and stop."""
        assert self.reload is not None
        async with lock:
            try:
                plan = await asyncio.to_thread(self.reload)
                check_reload(server, plan.settings)
                settings = keep_restart_only(self.settings, plan.settings)[0]
                fresh = await self._start_all(settings)
            except ConfigError as exc:
                reload_failed(exc)
                return
            except WorkerFailed as exc:
                reload_failed(ConfigError(str(exc)))
                return
            if self.stopping:
                await self._stop_workers(list(fresh.values()))
                return
            previous = server.settings
            changes = server.reload(plan.settings)
            self.settings = server.settings
            old, self.workers = list(self.workers.values()), fresh
            self.retiring.update(old)
            for worker in fresh.values():
                self._task(self._keep(worker))
            for worker in old:  # they finish their requests in flight, then exit
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(plan.apply, self.keeper, previous)
            reloaded(plan.settings, changes)

    async def _stop_workers(self, workers: list[Worker]) -> None:
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(w.proc.wait()) for w in workers]
        if waits:
            await asyncio.wait(waits, timeout=self.settings.server.shutdown_timeout + 5)
        for worker in workers:
            if worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
                await worker.proc.wait()

    async def _worker_metrics(self) -> bytes:
        texts: list[str] = []
        for worker in sorted(self.workers.values(), key=lambda w: w.index):
            try:
                texts.append(await asyncio.wait_for(_read_metrics(worker.socket), 2.0))
            except (OSError, TimeoutError, ValueError) as exc:
                log.warning("awstoken: cannot read metrics of worker %d: %s", worker.index,
                            exc if isinstance(exc, ValueError) else type(exc).__name__)
        return merge_exposition(texts, skip=_PARENT_FAMILIES).encode()


#: The most a worker's metrics answer may take (a scrape of thousands of routes is ~1 MiB).
_METRICS_MAX = 64 * 1024 * 1024


async def _read_metrics(path: str) -> str:
    """``GET /metrics`` on a worker's metrics socket. The worker is our own child, answering
    with the admin application (``Connection: close``, a Content-Length body): what comes
    back is checked, not parsed generously."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n")
        data = bytearray()
        while chunk := await reader.read(65536):
            data += chunk
            if len(data) > _METRICS_MAX:
                raise ValueError("the answer is too large")
    finally:
        writer.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or status[1] != "200":
        raise ValueError(f"the answer was {lines[0]!r}" if lines[0] else "no answer")
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip() != str(len(body)):
            raise ValueError("the answer was cut short")
    return body.decode("utf-8", "replace")


#: Reported by the parent itself: summing the workers' token ages or storage gauges would
#: make no sense (each worker sees the same tokens and the same Redis).
_PARENT_FAMILIES: Sequence[str] = ("awstoken_token_", "awstoken_storage_")


__all__ = ["Supervisor", "WorkerFailed"]
