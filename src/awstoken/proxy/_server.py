"""Server lifecycle: listeners, graceful shutdown, and worker processes.

One process (``workers = 1``) runs the proxy listener, the admin listener, the token
endpoint's listeners (nginx ``auth_request``) and the keeper's rotators in one event loop.
With ``workers = N > 1`` the parent starts N workers (fresh interpreters, see ``_worker``)
that each bind the proxy address with ``SO_REUSEPORT`` (the kernel spreads connections) and
read the tokens from the shared storage; the parent keeps the tokens fresh, serves the admin
listener and the token endpoint and sums the workers' request metrics, which each worker
exposes on a private unix socket. SIGHUP reloads the configuration (``reload``); with
workers, new ones start with it and the old ones drain and exit.

A configuration without ``[[routes]]`` but with ``server.token_listen`` runs no proxy
listener at all: one process serves the token endpoint (and the admin listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from .._config.reload import TokenPlan, describe_changes, keep_restart_only
from .._config.settings import Settings
from .._config.validate import NOTHING_TO_SERVE
from .._errors import ConfigError
from .._rotation.keeper import Keeper
from ._admin import AdminApp
from ._auth import InboundAuth
from ._cache import Store
from ._cache_http import ProxyCache
from ._fast import FastForwarder
from ._h1 import ClientConnection, Frontend, Pool, Request
from ._metrics import RouteMetrics, StorageCollector, TokenCollector
from ._prom import merge_exposition
from ._routes import RouteTable
from ._token_endpoint import TokenEndpoint, TokenListeners, load_secret
from ._upstream import tls_context
from ._worker import WorkerSpec, logging_spec, worker_command, worker_storage

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
        raise ConfigError(NOTHING_TO_SERVE)


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
        self.cache = ProxyCache.for_routes(self.routes, self.registry)
        self.tls = tls_context(settings.server)  # also validates the TLS settings
        self._pool: Pool | None = None
        self._frontend: Frontend | None = None
        self.reuse_port = reuse_port
        self.with_admin = admin and settings.server.admin_listen is not None
        self.metrics_socket = metrics_socket
        # One process: request and token metrics on one registry. Workers expose theirs for
        # the parent, which reports token metrics itself (see _Supervisor).
        self._token_collector = TokenCollector(keeper, self.token_names)
        self.registry.register(self._token_collector)
        self.registry.register(StorageCollector(keeper.storage))
        self.admin = AdminApp(keeper, self.token_names, self.registry)
        self.with_token_endpoint = token_endpoint and bool(settings.server.token_listen)
        self.token_secret = load_secret(settings.server) if self.with_token_endpoint else None
        self.token_listeners: TokenListeners | None = None
        self._fast: FastForwarder | None = None
        self._aux: list[web.Server] = []
        self._listeners: list[asyncio.Server] = []
        self._aux_listeners: list[asyncio.Server] = []
        self._stopped = False

    def _admin_registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=True)
        registry.register(self._token_collector)
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
            if self.cache is not None:
                self.cache.open()  # ConfigError when a cache directory is not ours
            self._fast = self._fast_forwarder()
            # Through _dispatch: a reload swaps the forwarder under open connections.
            self._frontend = factory = Frontend(
                self._dispatch, max_connections=server.max_connections,
                head_timeout=server.head_timeout, keepalive_timeout=server.keepalive_timeout)
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
        if self._fast is not None:
            self._fast.own_ports.update(self._own_ports())
        if self.with_proxy:
            log.info("awstoken: proxy listening on http://%s:%d (%d routes)", *self.address[:2],
                     len(self.routes.routes))

    def _fast_forwarder(self) -> FastForwarder:
        assert self._pool is not None
        server = self.settings.server
        forwarder = FastForwarder(routes=self.routes, keeper=self.keeper, pool=self._pool,
                                  auth=self.auth, metrics=self.metrics,
                                  access_log=server.access_log, public_url=server.public_url,
                                  refresh_wait=server.refresh_wait,
                                  refresh_min_gap=server.refresh_min_gap,
                                  replay_max_bytes=server.replay_max_bytes,
                                  replay_spool_max_bytes=server.replay_spool_max_bytes,
                                  max_index_bytes=server.max_index_bytes, cache=self.cache)
        if self._fast is not None:  # a reload: the listeners (our own ports) stay
            forwarder.own_ports.update(self._fast.own_ports)
        return forwarder

    def _dispatch(self, conn: ClientConnection, request: Request) -> Awaitable[None]:
        # Each request goes to the forwarder current when it starts: a request in flight
        # during a reload finishes with the configuration it started with.
        assert self._fast is not None
        return self._fast(conn, request)

    def reload(self, settings: Settings) -> list[str]:
        """Serve the routes, tokens and request settings of ``settings`` from the next request
        on; return what changed, one line each. Requests in flight finish as they started.

        Everything is validated first: on ConfigError nothing changed. Listeners, the engine,
        upstream TLS and timeouts and the storage stay as they are until a restart (each such
        change is named in the result).
        """
        check_something_to_serve(settings)
        routes = RouteTable(settings.routes)
        if bool(routes.routes) != self.with_proxy:
            raise ConfigError("adding the first [[routes]] or removing the last one needs a "
                              "restart (the proxy listener starts or stops)")
        caches = {r.prefix: r.cache for r in settings.routes if r.cache is not None}
        if caches != {r.prefix: r.cache for r in self.settings.routes if r.cache is not None}:
            raise ConfigError("adding, changing or removing a route's cache needs a restart "
                              "(its store is opened at start)")
        names = token_names(settings, routes)
        auth = InboundAuth(settings.server)
        secret = load_secret(settings.server) if self.with_token_endpoint else None
        settings, kept = keep_restart_only(self.settings, settings)
        changes = describe_changes(self.settings, settings, self.token_names, names) + kept
        # Nothing below can fail: apply.
        self.settings, self.routes, self.auth, self.token_names = settings, routes, auth, names
        if self._fast is not None:
            self._fast = self._fast_forwarder()
        self._token_collector.names = tuple(sorted(set(names)))
        self.admin.token_names = tuple(names)
        if self.token_listeners is not None:
            endpoint = self.token_listeners.handler
            endpoint.names, endpoint.secret = frozenset(names), secret
            endpoint.max_age = settings.server.token_max_age
        return changes

    def _own_ports(self) -> set[int]:
        """The TCP ports this server (or, for a worker, its parent) listens on."""
        server = self.settings.server
        ports = {address[1] for address in (server.listen, server.admin_listen)
                 if address is not None and address[1]}
        ports |= {address[1] for address in server.token_listen
                  if not isinstance(address, str) and address[1]}
        for listener in (*self._listeners, *self._aux_listeners):
            for sock in listener.sockets:
                name = sock.getsockname()
                if isinstance(name, tuple):
                    ports.add(int(name[1]))
        ports |= {address[1] for address in self.token_addresses if not isinstance(address, str)}
        return ports

    async def start_token_endpoint(self, registry: CollectorRegistry) -> None:
        """Bind the token endpoint's listeners (``server.token_listen``)."""
        endpoint = TokenEndpoint(self.keeper, self.token_names, secret=self.token_secret,
                                 max_age=self.settings.server.token_max_age, registry=registry,
                                 hosts=self.settings.server.token_hosts)
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
        if self.cache is not None:
            self.cache.close()
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


def _check_fd_budget(settings: Settings) -> None:
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


def _run(main: Coroutine[Any, Any, int]) -> int:
    factory = _event_loop_factory()
    runner = asyncio.Runner(loop_factory=factory) if factory else asyncio.Runner()
    with runner:
        return int(runner.run(main))


#: Called on SIGHUP: reads the configuration again and builds its rotators (not started).
Reload = Callable[[], TokenPlan]


class _Control:
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


def _reload_failed(exc: ConfigError) -> None:
    log.error("awstoken: reload failed, still running the previous configuration: %s", exc)


def _reloaded(settings: Settings, changes: list[str]) -> None:
    log.info("awstoken: configuration reloaded from %s (%s)", settings.path or "-",
             "; ".join(changes))


async def _bind(server: ProxyServer) -> None:
    try:
        await server.start()
    except OSError as exc:
        await server.stop()
        raise ConfigError(f"cannot listen: {exc.strerror}") from None
    except ConfigError:
        await server.stop()
        raise


async def _serve_one(settings: Settings, keeper: Keeper, *,
                     on_ready: Callable[[], object] | None = None,
                     reload: Reload | None = None) -> int:
    server = ProxyServer(settings, keeper)
    lock = asyncio.Lock()
    tasks: set[asyncio.Task[None]] = set()

    async def reload_once() -> None:
        assert reload is not None
        async with lock:
            try:
                plan = await asyncio.to_thread(reload)
                previous = server.settings
                changes = server.reload(plan.settings)
            except ConfigError as exc:
                _reload_failed(exc)
                return
            # Stopping a replaced rotator waits for its thread: off the event loop.
            await asyncio.to_thread(plan.apply, keeper, previous)
            _reloaded(plan.settings, changes)

    def on_hup() -> None:
        task = asyncio.ensure_future(reload_once())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    control = _Control(on_hup if reload is not None else None)
    try:
        await _bind(server)
        if on_ready is not None and not control.done.is_set():
            on_ready()  # every listener is bound: now the sources may run
        await control.done.wait()
    finally:
        control.close()
        for task in list(tasks):
            task.cancel()
        await server.stop()
    return control.exit_code


def check_cache_directories(settings: Settings) -> None:
    """Create each route's cache directory, or refuse one that is not ours (ConfigError)."""
    for route in settings.routes:
        if route.cache is not None:
            store = Store(route.cache.path, None, where=f"route {route.prefix!r} cache")
            store.open()
            store.close()


def serve_worker(settings: Settings, keeper: Keeper, metrics_socket: str,
                 ready: BinaryIO) -> int:
    """Run one worker's proxy listener (see ``_worker``); write ``ready`` once it is bound."""

    async def main() -> int:
        server = ProxyServer(settings, keeper, reuse_port=True, admin=False,
                             metrics_socket=metrics_socket, token_endpoint=False)
        await _bind(server)
        ready.write(b"ready\n")
        ready.close()
        control = _Control()
        try:
            await control.done.wait()
        finally:
            control.close()
            await server.stop()
        return control.exit_code

    return _run(main())


def serve(settings: Settings, keeper: Keeper, *, on_ready: Callable[[], object] | None = None,
          reload: Reload | None = None) -> int:
    """Run the proxy until SIGTERM or SIGINT; return the exit status.

    The caller builds ``keeper``. Every listener is bound before ``on_ready`` is called
    (``awstoken serve`` starts the rotators there, so that no source runs for a server that
    cannot start). On SIGHUP, ``reload`` (when given) reads the configuration again: routes,
    tokens and request settings change without dropping tokens or requests in flight; an
    invalid configuration is logged and the running one kept. Raises
    :class:`awstoken.ConfigError` for unusable settings or a listener that cannot bind.
    """
    # Validate everything once, before any worker starts, so errors reach the user once.
    check_something_to_serve(settings)
    token_names(settings, RouteTable(settings.routes))
    InboundAuth(settings.server)
    tls_context(settings.server)
    load_secret(settings.server)
    check_cache_directories(settings)
    workers = settings.server.workers
    tune_malloc()
    raise_open_file_limit()
    _check_fd_budget(settings)
    if workers < 1:
        raise ConfigError(f"server.workers must be at least 1, not {workers}")
    if not settings.routes:
        if workers > 1:
            log.info("awstoken: no [[routes]]: one process serves the token endpoint "
                     "(server.workers applies to the proxy)")
        return _run(_serve_one(settings, keeper, on_ready=on_ready, reload=reload))
    if workers == 1:
        return _run(_serve_one(settings, keeper, on_ready=on_ready, reload=reload))
    return _Supervisor(settings, keeper, on_ready=on_ready, reload=reload).run()


#: A worker that has not bound its listener within this many seconds failed to start.
WORKER_START_TIMEOUT = 60.0


class _WorkerFailed(Exception):
    def __init__(self, index: int, code: int) -> None:
        super().__init__(f"worker {index} could not start (exit status {code}; its message is "
                         "above)")
        self.code = code


class _Worker:
    def __init__(self, index: int, proc: asyncio.subprocess.Process, socket: str) -> None:
        self.index = index
        self.proc = proc
        self.socket = socket


class _Supervisor:
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
        self.workers: dict[int, _Worker] = {}  # index -> the current worker
        self.retiring: set[_Worker] = set()
        self.spawned = 0
        self.failures: list[float] = []
        self.stopping = False
        self._tasks: set[asyncio.Task[None]] = set()

    def run(self) -> int:
        try:
            return _run(self._main())
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
        self.control = control = _Control(on_hup if self.reload is not None else None)
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
                with contextlib.suppress(asyncio.CancelledError, _WorkerFailed, ConfigError):
                    await starting
                return False
            starting.result()
        except OSError as exc:
            raise ConfigError(f"cannot listen: {exc.strerror}") from None
        except _WorkerFailed as exc:
            raise ConfigError(str(exc)) from None
        return True

    async def _start_all(self, settings: Settings,
                         into: dict[int, _Worker] | None = None) -> dict[int, _Worker]:
        """Start ``server.workers`` workers; all bound, or none left running. Each one goes
        into ``into`` as soon as it is bound (its metrics count from then on)."""
        started: dict[int, _Worker] = {} if into is None else into

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

    async def _spawn(self, index: int, settings: Settings) -> _Worker:
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
            raise _WorkerFailed(index, code if code >= 0 else 128 - code)
        return _Worker(index, proc, socket_path)

    def _failing(self) -> bool:
        now = time.monotonic()
        self.failures = [t for t in self.failures if now - t < 60] + [now]
        return len(self.failures) > 10

    async def _keep(self, worker: _Worker) -> None:
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
            except _WorkerFailed as exc:
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
                _reload_failed(exc)
                return
            except _WorkerFailed as exc:
                _reload_failed(ConfigError(str(exc)))
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
            _reloaded(plan.settings, changes)

    async def _stop_workers(self, workers: list[_Worker]) -> None:
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
                connector = aiohttp.UnixConnector(path=worker.socket)
                async with aiohttp.ClientSession(connector=connector) as session, session.get(
                        "http://worker/metrics", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    texts.append(await resp.text())
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("awstoken: cannot read metrics of worker %d: %s", worker.index,
                            type(exc).__name__)
        return merge_exposition(texts, skip=_PARENT_FAMILIES).encode()


#: Reported by the parent itself: summing the workers' token ages or storage gauges would
#: make no sense (each worker sees the same tokens and the same Redis).
_PARENT_FAMILIES: Sequence[str] = ("awstoken_token_", "awstoken_storage_")


def check_reload(server: ProxyServer, settings: Settings) -> None:
    """Raise ConfigError when ``server.reload(settings)`` would."""
    check_something_to_serve(settings)
    routes = RouteTable(settings.routes)
    if bool(routes.routes) != server.with_proxy:
        raise ConfigError("adding the first [[routes]] or removing the last one needs a "
                          "restart (the proxy listener starts or stops)")
    token_names(settings, routes)
    InboundAuth(settings.server)
    if server.with_token_endpoint:
        load_secret(settings.server)


__all__ = ["ProxyServer", "serve"]
