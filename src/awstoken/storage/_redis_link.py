"""The connection to Redis and what this process knows of its reachability.

Every operation goes through :meth:`RedisLink.call`, which turns failures into
StorageError (naming the redacted URL, never a secret) and marks an outage on the first
network failure. A watcher thread holds the pub/sub subscription, reconnects with capped
exponential backoff and jitter while Redis is away, and hands every message to the storage.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from .._errors import StorageError
from .._redact import redact_url, url_secrets

log = logging.getLogger("awstoken")


class RedisLink:
    """One redis-py client, the outage bookkeeping, and the pub/sub watcher thread.

    ``on_message(data)`` gets each message of ``channel``; ``on_connected()`` runs after
    every (re)subscription; ``crashed(exc)`` is told of an unexpected error, after which the
    watcher starts over on a fresh connection.
    """

    def __init__(self, url: str, *, password: str | None, username: str | None,
                 options: dict[str, Any], timeout: float, max_backoff: float, channel: str,
                 on_message: Callable[[object], None], on_connected: Callable[[], None],
                 crashed: Callable[[BaseException], None]) -> None:
        self._secrets = sorted({s for s in (password, *url_secrets(url)) if s}, key=len,
                               reverse=True)
        self.url = redact_url(url)
        self.timeout = timeout
        self.max_backoff = max_backoff
        self._channel = channel
        self._on_message = on_message
        self._on_connected = on_connected
        self._crashed = crashed
        self.outages = 0
        self.errors = 0
        self.client = self._connect(url, password=password, username=username, options=options)
        self._init_state()

    def _init_state(self) -> None:
        self._state = threading.Lock()
        self._down_since: float | None = None
        self.stopping = threading.Event()
        self._reconnect = threading.Event()
        self.watcher: threading.Thread | None = None

    def _connect(self, url: str, *, password: str | None, username: str | None,
                 options: dict[str, Any]) -> Any:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise StorageError("RedisStorage needs redis-py: pip install 'awstoken[redis]'") from None
        self._redis = redis
        self._net_errors: tuple[type[BaseException], ...] = (
            redis.ConnectionError, redis.TimeoutError, OSError)
        settings: dict[str, Any] = {
            "socket_timeout": self.timeout, "socket_connect_timeout": self.timeout,
            # Our own reconnection logic backs off; redis-py must not retry (and block) too.
            "retry": Retry(NoBackoff(), 0), "client_name": "awstoken",
        }
        no_verify = str(options.get("ssl_cert_reqs", "")).lower() in ("none", "0")
        if url.lower().startswith("rediss://") and not no_verify:
            # redis-py 5.x does not check the server's host name unless told to: an impostor
            # with any certificate from a trusted CA would get the password and the tokens.
            # (Given ssl_check_hostname in redis_options or the URL still wins.)
            settings["ssl_check_hostname"] = True
        if password is not None:
            settings["password"] = password
        if username is not None:
            settings["username"] = username
        settings.update(options)
        try:
            return redis.Redis.from_url(url, **settings)
        except (ValueError, TypeError) as exc:
            raise StorageError(f"RedisStorage: invalid Redis URL {self.url!r}: "
                               f"{self.scrub(str(exc))}") from None

    @property
    def connected(self) -> bool:
        """False while Redis is known to be unreachable."""
        return self._down_since is None

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _describe(self, exc: BaseException) -> str:
        text = self.scrub(str(exc)).strip()
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    def _unavailable(self) -> StorageError:
        since = self._down_since
        left = "" if since is None else f" for {time.monotonic() - since:.1f}s"
        return StorageError(f"Redis at {self.url} is unavailable{left}; reconnecting")

    def call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one Redis operation; translate its failures into StorageError (no secrets)."""
        if self._down_since is not None:
            raise self._unavailable()
        try:
            return func(*args, **kwargs)
        except self._net_errors as exc:
            self._mark_down(exc)
            raise StorageError(f"Redis at {self.url}: {what}: {self._describe(exc)}") from None
        except self._redis.RedisError as exc:
            with self._state:
                self.errors += 1
            raise StorageError(f"Redis at {self.url}: {what}: {self._describe(exc)}") from None

    def _mark_down(self, exc: BaseException) -> None:
        with self._state:
            self.errors += 1
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
                self.outages += 1
        if first:
            log.warning("awstoken: Redis at %s is unavailable (%s); serving cached tokens until "
                        "they expire, reconnecting", self.url, self._describe(exc))
        self._reconnect.set()

    def _mark_up(self) -> None:
        with self._state:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning("awstoken: Redis at %s is reachable again after %.1fs", self.url,
                        time.monotonic() - since)

    def _backoff(self, attempt: int) -> float:
        # Full jitter over a capped exponential: a fleet that lost Redis together does not
        # come back in lock step.
        cap = min(self.max_backoff, 0.05 * 2.0 ** min(attempt, 16))
        return cap / 2 + random.random() * cap / 2

    # -- watcher thread: pub/sub, reconnection ----------------------------------------------

    def start(self) -> None:
        self.watcher = threading.Thread(target=self._watch, name="awstoken-redis-watch",
                                        daemon=True)
        self.watcher.start()

    def _watch(self) -> None:
        # Bad data or a bug must not end the watcher for good: whatever escapes one round is
        # reported, and the loop starts over on a fresh connection.
        while not self.stopping.is_set():
            try:
                self._watch_once()
            except Exception as exc:  # noqa: BLE001 - the watcher thread must not die
                self._crashed(exc)
                if self.stopping.wait(self._backoff(4)):
                    return

    def _watch_once(self) -> None:
        attempt = 0
        pubsub: Any = None
        try:
            while not self.stopping.is_set():
                if pubsub is None:
                    if attempt and self.stopping.wait(self._backoff(attempt)):
                        return
                    try:
                        pubsub = self._subscribe()
                    except self._net_errors as exc:
                        self._mark_down(exc)
                        attempt += 1
                        continue
                    attempt = 0
                    self._reconnect.clear()
                    self._mark_up()
                    self._on_connected()
                try:
                    message = pubsub.get_message(timeout=0.25)
                except self._net_errors as exc:
                    message = None
                    self._mark_down(exc)
                if self._reconnect.is_set():
                    # Somebody saw Redis fail: probe again with a fresh connection.
                    self._close_pubsub(pubsub)
                    pubsub = None
                    attempt = 1
                elif message is not None and message.get("type") == "message":
                    self._on_message(message.get("data"))
        finally:
            self._close_pubsub(pubsub)

    def _subscribe(self) -> Any:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            # Connects (and authenticates) now: a refused or rejected connection raises here.
            pubsub.subscribe(self._channel)
        except BaseException:
            self._close_pubsub(pubsub)
            raise
        return pubsub

    @staticmethod
    def _close_pubsub(pubsub: Any) -> None:
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.close()

    def stop(self) -> None:
        """Stop the watcher (not the client: the storage closes it last)."""
        self.stopping.set()
        watcher = self.watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=5)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    def forked(self) -> None:
        """In a child after fork: the parent's watcher stays the parent's; start afresh."""
        self._init_state()
