"""One process's server: the proxy listener, the admin listener, the token endpoint.

:class:`ProxyServer` binds the listeners of one process (the only one with ``workers = 1``,
each worker otherwise, see ``_run.supervisor``), swaps routes and request settings on reload, and
stops gracefully. ``_run.serve`` runs it in a process; ``_run.supervisor`` runs N of them.

A configuration without ``[[routes]]`` but with ``server.token_listen`` runs no proxy
listener at all: one process serves the token endpoint (and the admin listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable

from prometheus_client import CollectorRegistry

from .._config.reload import describe_changes, keep_restart_only
from .._config.settings import Settings
from .._config.validate import NOTHING_TO_SERVE
from .._errors import ConfigError
from .._rotation.keeper import Keeper
from ._admin import AdminApp
from ._auth import InboundAuth
from ._cache.http import ProxyCache
from ._cache.store import Store
from ._compiled import quiet_mypyc_throw, request_path
from ._fast import FastForwarder
from ._h1 import ClientConnection, Frontend, Pool, Request, close_listeners
from ._local import local_frontend
from ._metrics import RouteMetrics, StorageCollector, TokenCollector
from ._policy import TokenRefresher
from ._routes import RouteTable
from ._token_endpoint import TokenEndpoint, TokenListeners, load_secret
from ._upstream import check_tls, tls_context

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
        check_tls(settings.server)  # the context itself is made at the first https upstream
        self._pool: Pool | None = None
        self._frontend: Frontend | None = None
        self.reuse_port = reuse_port
        self.with_admin = admin and settings.server.admin_listen is not None
        self.metrics_socket = metrics_socket
        # One process: request and token metrics on one registry. Workers expose theirs for
        # the parent, which reports token metrics itself (see _run.supervisor.Supervisor).
        self._token_collector = TokenCollector(keeper, self.token_names)
        self.registry.register(self._token_collector)
        self.registry.register(StorageCollector(keeper.storage))
        self.admin = AdminApp(keeper, self.token_names, self.registry)
        self.with_token_endpoint = token_endpoint and bool(settings.server.token_listen)
        self.token_secret = load_secret(settings.server) if self.with_token_endpoint else None
        self.token_listeners: TokenListeners | None = None
        # One wait per token for the proxy's requests and the token endpoint's alike.
        self.refresher = TokenRefresher(keeper, wait=settings.server.refresh_wait,
                                        min_gap=settings.server.refresh_min_gap)
        self._fast: FastForwarder | None = None
        quiet_mypyc_throw()  # a compiled build's connection resets stay ConnectionResetError
        self._aux: list[Frontend] = []  # the admin listener's and the worker metrics socket's
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
            self._pool = Pool(ssl_context=functools.partial(tls_context, server),
                              connect_timeout=server.connect_timeout,
                              read_timeout=server.read_timeout)
            if self.cache is not None:
                self.cache.open()  # ConfigError when a cache directory is not ours
            self._fast = self._fast_forwarder()
            # Through _dispatch: a reload swaps the forwarder under open connections.
            self._frontend = factory = Frontend(
                self._dispatch, max_connections=server.max_connections,
                head_timeout=server.head_timeout, keepalive_timeout=server.keepalive_timeout,
                fast=self._fast.fast)
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
            aux = local_frontend(worker_admin, self.settings.server, "worker metrics")
            self._aux.append(aux)
            self._aux_listeners.append(await loop.create_unix_server(aux, self.metrics_socket))
        if self._fast is not None:
            self._fast.own_ports.update(self._own_ports())
        if self.with_proxy:
            log.info("awstoken: proxy listening on http://%s:%d (%d routes, request path %s)",
                     *self.address[:2], len(self.routes.routes), request_path())

    def _fast_forwarder(self) -> FastForwarder:
        assert self._pool is not None
        server = self.settings.server
        forwarder = FastForwarder(routes=self.routes, keeper=self.keeper, pool=self._pool,
                                  auth=self.auth, metrics=self.metrics,
                                  access_log=server.access_log, public_url=server.public_url,
                                  refresher=self.refresher,
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
        # Waits from now on (those in flight keep theirs).
        self.refresher.wait = settings.server.refresh_wait
        self.refresher.min_gap = settings.server.refresh_min_gap
        if self._fast is not None:
            self._fast = self._fast_forwarder()
            if self._frontend is not None:  # new requests take the new forwarder's fast path
                self._frontend.fast = self._fast.fast
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
                                 hosts=self.settings.server.token_hosts,
                                 refresher=self.refresher)
        self.token_listeners = TokenListeners(endpoint, self.settings.server)
        await self.token_listeners.start()

    async def start_admin(self, admin: AdminApp) -> None:
        """Bind the admin listener for ``admin`` (TCP ``server.admin_listen``)."""
        address = self.settings.server.admin_listen
        if address is None:
            return
        aux = local_frontend(admin, self.settings.server, "admin listener")
        self._aux.append(aux)
        self._aux_listeners.append(await asyncio.get_running_loop().create_server(
            aux, address[0], address[1]))
        log.info("awstoken: admin listening on http://%s:%d", *address)

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests (bounded), close upstream connections."""
        if self._stopped:
            return
        self._stopped = True
        await close_listeners(self._listeners)
        if self._frontend is not None:
            await self._frontend.shutdown(self.settings.server.shutdown_timeout)
        await close_listeners(self._aux_listeners)
        for aux in self._aux:
            await aux.shutdown(1.0)
        if self.token_listeners is not None:
            await self.token_listeners.stop()
        await self.refresher.close()  # waits whose requests are gone (a wait is bounded, not short)
        if self._pool is not None:
            await self._pool.close()
        if self.cache is not None:
            self.cache.close()
        for server in (*self._listeners, *self._aux_listeners):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)


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



def check_cache_directories(settings: Settings) -> None:
    """Create each route's cache directory, or refuse one that is not ours (ConfigError)."""
    for route in settings.routes:
        if route.cache is not None:
            store = Store(route.cache.path, None, where=f"route {route.prefix!r} cache")
            store.open()
            store.close()


__all__ = ["ProxyServer", "check_cache_directories", "check_reload", "check_something_to_serve",
           "token_names"]
