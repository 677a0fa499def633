"""Server lifecycle: listeners, graceful shutdown, and worker processes.

One process (``workers = 1``) runs the proxy listener, the admin listener, the token
endpoint's listeners (nginx ``auth_request``) and the keeper's rotators in one event loop.
With ``workers = N > 1`` the parent forks N workers that each bind the proxy address with
``SO_REUSEPORT`` (the kernel spreads connections) and share the token storage (only one
process leads each token); the parent serves the admin listener and the token endpoint and
sums the workers' request metrics, which each worker exposes on a private unix socket.

A configuration without ``[[routes]]`` but with ``server.token_listen`` runs no proxy
listener at all: one process serves the token endpoint (and the admin listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from .._errors import ConfigError
from .._keeper import Keeper
from .._settings import Settings
from ..storage import MemoryStorage
from ._admin import AdminApp
from ._auth import InboundAuth
from ._fast import FastForwarder
from ._h1 import Frontend, Pool
from ._metrics import RouteMetrics, StorageCollector, TokenCollector
from ._prom import merge_exposition
from ._routes import RouteTable
from ._token_endpoint import TokenEndpoint, TokenListeners, load_secret
from ._upstream import tls_context

log = logging.getLogger("awstoken.proxy")

def token_names(settings: Settings, routes: RouteTable) -> list[str]:
    """Every token the server depends on; routes must name configured tokens."""
    used = {route.token for route in routes.routes}
    if settings.tokens:
        missing = sorted(used - set(settings.tokens))
        if missing:
            raise ConfigError(f"routes use tokens that are not configured: {', '.join(missing)}")
    return sorted(used | set(settings.tokens))


def check_something_to_serve(settings: Settings) -> None:
    """Raise ConfigError when the settings configure no routes, no token endpoint and no
    tokens (tokens alone make a keeper: it keeps them fresh for the credential doors)."""
    if not settings.routes and not settings.server.token_listen and not settings.tokens:
        raise ConfigError("nothing to serve: configure [tokens.NAME] (a keeper for the "
                          "credential helpers), [[routes]] (the proxy) or server.token_listen "
                          "(the token endpoint for nginx auth_request)")


class ProxyServer:
    """The server of one process: proxy listener (when there are routes), optional admin
    listener and token endpoint, upstream pool.

    ``await start()`` binds; ``await stop()`` stops accepting, lets in-flight requests finish
    for up to ``server.shutdown_timeout`` seconds, cancels the rest and closes upstream
    connections. Usable directly from asyncio code and tests; :func:`serve` wraps it.
    """

    def __init__(self, settings: Settings, keeper: Keeper, *, reuse_port: bool = False,
                 admin: bool = True, metrics_socket: str | None = None,
                 token_endpoint: bool = True) -> None:
        check_something_to_serve(settings)
        self.settings = settings
        self.keeper = keeper
        self.routes = RouteTable(settings.routes)
        self.with_proxy = bool(self.routes.routes)
        self.token_names = token_names(settings, self.routes)
        self.auth = InboundAuth(settings.server)
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = RouteMetrics(self.registry)
        self.tls = tls_context(settings.server)  # also validates the TLS settings
        self._pool: Pool | None = None
        self._frontend: Frontend | None = None
        self.reuse_port = reuse_port
        self.with_admin = admin and settings.server.admin_listen is not None
        self.metrics_socket = metrics_socket
        # One process: request and token metrics on one registry. Workers expose theirs for
        # the parent, which reports token metrics itself (see _Supervisor).
        self.registry.register(TokenCollector(keeper, self.token_names))
        self.registry.register(StorageCollector(keeper.storage))
        self.admin = AdminApp(keeper, self.token_names, self.registry)
        self.with_token_endpoint = token_endpoint and bool(settings.server.token_listen)
        self.token_secret = load_secret(settings.server) if self.with_token_endpoint else None
        self.token_listeners: TokenListeners | None = None
        self._aux: list[web.Server] = []
        self._listeners: list[asyncio.Server] = []
        self._aux_listeners: list[asyncio.Server] = []
        self._stopped = False

    def _admin_registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=True)
        registry.register(TokenCollector(self.keeper, self.token_names))
        registry.register(StorageCollector(self.keeper.storage))
        return registry

    @property
    def address(self) -> tuple[str, int]:
        """The bound proxy address (useful with port 0)."""
        if not self._listeners:
            raise RuntimeError("no proxy listener: no [[routes]] configured")
        name = self._listeners[0].sockets[0].getsockname()
        return str(name[0]), int(name[1])

    @property
    def admin_address(self) -> tuple[str, int] | None:
        for server in self._aux_listeners:
            name = server.sockets[0].getsockname()
            if isinstance(name, tuple):
                return str(name[0]), int(name[1])
        return None

    @property
    def token_addresses(self) -> list[str | tuple[str, int]]:
        """The token endpoint's bound addresses: socket paths and ``(host, port)``."""
        return self.token_listeners.addresses if self.token_listeners is not None else []

    async def start(self) -> None:
        """Bind the listeners (the proxy's, the admin's, the token endpoint's, the worker
        metrics socket)."""
        loop = asyncio.get_running_loop()
        if self.with_proxy:
            host, port = self.settings.server.listen
            server = self.settings.server
            self._pool = Pool(ssl_context=self.tls, connect_timeout=server.connect_timeout,
                              read_timeout=server.read_timeout)
            self._frontend = factory = Frontend(FastForwarder(
                routes=self.routes, keeper=self.keeper, pool=self._pool, auth=self.auth,
                metrics=self.metrics, access_log=server.access_log))
            try:
                self._listeners.append(await loop.create_server(
                    factory, host, port, reuse_port=self.reuse_port or None, backlog=1024))
            except OSError as exc:
                raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        if self.with_token_endpoint:
            await self.start_token_endpoint(self.registry)
        if self.with_admin:
            await self.start_admin(self.admin)
        if self.metrics_socket is not None:
            # A worker's own metrics for the parent to merge: this process's routes only.
            worker_admin = AdminApp(self.keeper, self.token_names, self.registry)
            aux = web.Server(worker_admin, access_log=None)
            self._aux.append(aux)
            self._aux_listeners.append(await loop.create_unix_server(aux, self.metrics_socket))
        if self.with_proxy:
            log.info("awstoken: proxy listening on http://%s:%d (%d routes)", *self.address[:2],
                     len(self.routes.routes))

    async def start_token_endpoint(self, registry: CollectorRegistry) -> None:
        """Bind the token endpoint's listeners (``server.token_listen``)."""
        endpoint = TokenEndpoint(self.keeper, self.token_names, secret=self.token_secret,
                                 max_age=self.settings.server.token_max_age, registry=registry)
        self.token_listeners = TokenListeners(endpoint, self.settings.server)
        await self.token_listeners.start()

    async def start_admin(self, admin: AdminApp) -> None:
        """Bind the admin listener for ``admin`` (TCP ``server.admin_listen``)."""
        address = self.settings.server.admin_listen
        if address is None:
            return
        aux = web.Server(admin, access_log=None)
        self._aux.append(aux)
        self._aux_listeners.append(await asyncio.get_running_loop().create_server(
            aux, address[0], address[1]))
        log.info("awstoken: admin listening on http://%s:%d", *address)

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests (bounded), close upstream connections."""
        if self._stopped:
            return
        self._stopped = True
        for server in self._listeners:
            server.close()
        if self._frontend is not None:
            await self._frontend.shutdown(self.settings.server.shutdown_timeout)
        for server in self._aux_listeners:
            server.close()
        for aux in self._aux:
            await aux.shutdown(1.0)
        if self.token_listeners is not None:
            await self.token_listeners.stop()
        if self._pool is not None:
            await self._pool.close()
        for server in (*self._listeners, *self._aux_listeners):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)


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


def _run(main: asyncio.Future[int] | object) -> int:
    factory = _event_loop_factory()
    runner = asyncio.Runner(loop_factory=factory) if factory else asyncio.Runner()
    with runner:
        return int(runner.run(main))  # type: ignore[arg-type]


async def _wait_for_signal() -> int:
    stop = asyncio.Event()
    received: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stop.wait()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)
    log.info("awstoken: %s received, shutting down", signal.Signals(received[0]).name)
    return received[0]


async def _serve_one(settings: Settings, keeper: Keeper, *, reuse_port: bool = False,
                     admin: bool = True, metrics_socket: str | None = None) -> int:
    server = ProxyServer(settings, keeper, reuse_port=reuse_port, admin=admin,
                         metrics_socket=metrics_socket, token_endpoint=not reuse_port)
    try:
        await server.start()
    except OSError as exc:
        await server.stop()
        raise ConfigError(f"cannot listen: {exc.strerror}") from None
    except ConfigError:
        await server.stop()
        raise
    try:
        await _wait_for_signal()
    finally:
        await server.stop()
    return 0


def serve(settings: Settings, keeper: Keeper) -> int:
    """Run the proxy until SIGTERM or SIGINT; return the exit status.

    The caller builds ``keeper`` and starts its rotators (``awstoken serve`` does both from
    the configuration file). Raises :class:`awstoken.ConfigError` for unusable settings.
    """
    # Validate everything once, before any fork, so errors reach the user once.
    check_something_to_serve(settings)
    RouteTable(settings.routes)
    InboundAuth(settings.server)
    tls_context(settings.server)
    load_secret(settings.server)
    workers = settings.server.workers
    tune_malloc()
    if workers < 1:
        raise ConfigError(f"server.workers must be at least 1, not {workers}")
    if not settings.routes:
        if workers > 1:
            log.info("awstoken: no [[routes]]: one process serves the token endpoint "
                     "(server.workers applies to the proxy)")
        return _run(_serve_one(settings, keeper))
    if workers == 1:
        return _run(_serve_one(settings, keeper))
    if isinstance(keeper.storage, MemoryStorage):
        raise ConfigError("server.workers > 1 needs a storage shared by processes "
                          "(file or redis), not memory")
    return _Supervisor(settings, keeper).run()


class _Supervisor:
    """The parent of N workers: forks them, restarts crashed ones, serves admin, stops all."""

    def __init__(self, settings: Settings, keeper: Keeper) -> None:
        self.settings = settings
        self.keeper = keeper
        self.dir = Path(tempfile.mkdtemp(prefix="awstoken-workers-"))
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False

    def socket_path(self, index: int) -> str:
        return str(self.dir / f"worker-{index}.sock")

    def spawn(self, index: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path(index))
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; SIGTERM stops us
                _die_with_parent(parent)
                status = _run(_serve_one(self.settings, self.keeper, reuse_port=True, admin=False,
                                         metrics_socket=self.socket_path(index)))
            except ConfigError as exc:
                print(f"awstoken: worker {index}: {exc}", file=sys.stderr)
                status = 2
            except BaseException:
                log.exception("awstoken: worker %d crashed", index)
            finally:
                os._exit(status)
        self.children[pid] = index

    def run(self) -> int:
        for index in range(self.settings.server.workers):
            self.spawn(index)
        try:
            return _run(self._main())
        finally:
            self._terminate_all()
            for path in self.dir.glob("*.sock"):
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                self.dir.rmdir()

    async def _main(self) -> int:
        server = ProxyServer(self.settings, self.keeper, admin=False)
        registry = server._admin_registry()
        admin = AdminApp(self.keeper, server.token_names, registry,
                         extra_metrics=self._worker_metrics)
        try:
            await server.start_admin(admin)
            if server.with_token_endpoint:  # here, not in the workers: one socket, one owner
                await server.start_token_endpoint(registry)
        except OSError as exc:
            await server.stop()
            raise ConfigError(f"cannot listen: {exc.strerror}") from None
        except ConfigError:
            await server.stop()
            raise
        reaper = asyncio.create_task(self._reap())
        try:
            signum = await _wait_for_signal()
        finally:
            self.stopping = True
            reaper.cancel()
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        await self._wait_children(self.settings.server.shutdown_timeout + 5)
        await server.stop()  # the admin and token listeners (it never bound a proxy listener)
        return 0 if signum in (signal.SIGTERM, signal.SIGINT) else 1

    async def _reap(self) -> None:
        failures: list[float] = []
        while not self.stopping:
            await asyncio.sleep(0.2)
            for pid in list(self.children):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == 0 or self.stopping:
                    continue
                index = self.children.pop(pid)
                code = os.waitstatus_to_exitcode(status)
                log.error("awstoken: worker %d (pid %d) exited with status %d; restarting it",
                          index, pid, code)
                now = time.monotonic()
                failures = [t for t in failures if now - t < 60] + [now]
                if code == 2 or len(failures) > 10:
                    log.error("awstoken: workers keep failing; stopping")
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                self.spawn(index)

    async def _wait_children(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.children and time.monotonic() < deadline:
            for pid in list(self.children):
                with contextlib.suppress(ChildProcessError):
                    done, _ = os.waitpid(pid, os.WNOHANG)
                    if done == 0:
                        continue
                self.children.pop(pid, None)
            await asyncio.sleep(0.05)

    def _terminate_all(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()

    async def _worker_metrics(self) -> bytes:
        texts: list[str] = []
        for index in sorted(self.children.values()):
            path = self.socket_path(index)
            try:
                connector = aiohttp.UnixConnector(path=path)
                async with aiohttp.ClientSession(connector=connector) as session, session.get(
                        "http://worker/metrics", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    texts.append(await resp.text())
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("awstoken: cannot read metrics of worker %d: %s", index,
                            type(exc).__name__)
        return merge_exposition(texts, skip=_PARENT_FAMILIES).encode()


#: Reported by the parent itself: summing the workers' token ages or storage gauges would
#: make no sense (each worker sees the same tokens and the same Redis).
_PARENT_FAMILIES: Sequence[str] = ("awstoken_token_", "awstoken_storage_")

__all__ = ["ProxyServer", "serve"]


def _die_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM to this worker when its parent dies, even by SIGKILL.

    Otherwise orphaned workers would keep serving the port with nobody to restart, drain or
    stop them. Linux only (prctl PR_SET_PDEATHSIG); elsewhere nothing is done.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("awstoken: could not ask to be stopped with the parent (errno %d)",
                    ctypes.get_errno())
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)

