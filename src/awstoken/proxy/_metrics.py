"""Prometheus metrics: per-route traffic, per-token freshness, shared-storage health.

Never a token value, never a password (not even the storage URL).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .._rotation.hooks import HookStats
from .._rotation.keeper import Keeper
from ..storage import RedisStorage

# A tuple of any length: a compiled build (mypyc) would keep a fixed-length tuple of floats
# unboxed and box all fifteen again for each bisect_left() call.
_LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RouteMetrics:
    """Counters and histograms updated by the request path of one process.

    The per-request ones (requests by route and status class, upstream latency) are plain
    ints counted on the event loop and turned into metric families at scrape time (see
    :class:`_RouteCollector`): a prometheus-client child's ``inc``/``observe`` takes a lock
    and costs microseconds, which the request path pays on every request. The rare ones
    (retries, unavailable tokens, upstream errors) stay prometheus-client counters.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests: dict[str, list[int]] = {}  # per route: answers by status // 100
        self._latency: dict[str, list[float]] = {}  # per route: bucket counts..., sum
        registry.register(_RouteCollector(self))
        self.retries = Counter("awstoken_proxy_token_retries", "Requests retried after an "
                               "upstream 401/403 and a token refresh.", ("route",),
                               registry=registry)
        self.unavailable = Counter("awstoken_proxy_token_unavailable", "Requests refused with "
                                   "503 because the route's token was missing or expired.",
                                   ("route",), registry=registry)
        self.upstream_errors = Counter("awstoken_proxy_upstream_errors", "Upstream connection "
                                       "failures and timeouts.", ("route", "kind"),
                                       registry=registry)

    def count(self, route: str, status: int) -> None:
        """One answered request (``status`` 499 when the client went away first)."""
        # One lookup by the route's name (a str, its hash kept): a (route, class) key would be
        # a new tuple to hash on every request.
        counts = self._requests.get(route)
        if counts is None:
            counts = self._requests[route] = [0] * 10
        counts[status // 100 if 0 <= status < 1000 else 0] += 1

    def observe(self, route: str, seconds: float) -> None:
        """Time from sending a request upstream to its response head."""
        counts = self._latency.get(route)
        if counts is None:
            counts = self._latency[route] = [0.0] * (len(_LATENCY_BUCKETS) + 2)
        counts[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        counts[-1] += seconds


class _RouteCollector(Collector):
    """Exports :class:`RouteMetrics`' plain counters (same names as prometheus-client's)."""

    def __init__(self, metrics: RouteMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily("awstoken_proxy_requests", "Requests answered, by route "
                                       "and status class.", labels=("route", "status"))
        for route, by_class in sorted(self.metrics._requests.items()):
            for cls, value in enumerate(by_class):
                if value:
                    requests.add_metric([route, f"{cls}xx"], float(value))
        latency = HistogramMetricFamily("awstoken_proxy_upstream_seconds", "Time to the "
                                        "upstream's response headers.", labels=("route",))
        for route, counts in sorted(self.metrics._latency.items()):
            buckets: list[tuple[str, float]] = []
            running = 0.0
            for bound, count in zip((*_LATENCY_BUCKETS, float("inf")), counts, strict=False):
                running += count
                buckets.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
            latency.add_metric([route], buckets, counts[-1])
        yield requests
        yield latency


class TokenCollector(Collector):
    """Reads token records at scrape time (the values themselves are never read out)."""

    def __init__(self, keeper: Keeper, names: Iterable[str]) -> None:
        self.keeper = keeper
        self.names = tuple(sorted(set(names)))

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        # Without it, registering the collector would run collect(): storage reads (a Redis
        # round trip per token, or a hung one) at server construction.
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = time.time()
        usable = GaugeMetricFamily("awstoken_token_usable", "1 when the token is present and "
                                   "unexpired.", labels=("token",))
        age = GaugeMetricFamily("awstoken_token_age_seconds", "Seconds since the last "
                                "successful refresh.", labels=("token",))
        expiry = GaugeMetricFamily("awstoken_token_expires_in_seconds", "Seconds until the "
                                   "token expires (absent when the source gives no expiry).",
                                   labels=("token",))
        failing = GaugeMetricFamily("awstoken_token_consecutive_failures", "Failed refreshes "
                                    "in a row.", labels=("token",))
        last_error = GaugeMetricFamily("awstoken_token_last_failure_timestamp_seconds",
                                       "When the latest refresh failed (Unix time; absent "
                                       "before the first failure).", labels=("token",))
        next_try = GaugeMetricFamily("awstoken_token_next_refresh_seconds", "Seconds until "
                                     "this process next tries to refresh the token, backoff "
                                     "included (only in the process that leads it).",
                                     labels=("token",))
        refreshes = CounterMetricFamily("awstoken_token_refreshes", "Successful refreshes run "
                                        "by this process.", labels=("token",))
        failures = CounterMetricFamily("awstoken_token_refresh_failures", "Failed refreshes "
                                       "run by this process.", labels=("token",))
        hook_runs = CounterMetricFamily("awstoken_token_hook_runs", "On-rotate hook runs (sinks and "
                                        "commands) in this process.", labels=("token",))
        hook_failures = CounterMetricFamily("awstoken_token_hook_failures", "On-rotate hook runs that "
                                            "failed or timed out in this process.",
                                            labels=("token",))
        rotators = self.keeper.rotators
        for name in self.names:
            try:
                record = self.keeper.record(name)
            except Exception:  # noqa: BLE001  one unreadable record must not fail the scrape
                record = None
            ok = record is not None and record.usable(now)
            usable.add_metric([name], 1.0 if ok else 0.0)
            if record is not None and record.value is not None:
                age.add_metric([name], max(now - record.refreshed_at, 0.0))
                if record.expires_at is not None:
                    expiry.add_metric([name], record.expires_at - now)
            failing.add_metric([name], float(record.failures if record is not None else 0))
            if record is not None and record.error_at is not None:
                last_error.add_metric([name], record.error_at)
            rotator = rotators.get(name)
            due = rotator.next_attempt(record) if rotator is not None else None
            if due is not None:
                next_try.add_metric([name], max(due - now, 0.0))
            refreshes.add_metric([name], float(rotator.refreshes if rotator else 0))
            failures.add_metric([name], float(rotator.failures if rotator else 0))
            runs, failed = _hook_counts(rotator.on_rotate if rotator else ())
            hook_runs.add_metric([name], float(runs))
            hook_failures.add_metric([name], float(failed))
        yield from (usable, age, expiry, failing, last_error, next_try, refreshes, failures,
                    hook_runs, hook_failures)


def _hook_counts(hooks: Iterable[object]) -> tuple[int, int]:
    """Runs and failures of the hooks that count them (``HookStats``); others are not seen."""
    runs = failed = 0
    for hook in hooks:
        stats = getattr(hook, "stats", None)
        if isinstance(stats, HookStats):
            runs, failed = runs + stats.runs, failed + stats.failures
    return runs, failed


@dataclass(frozen=True, slots=True)
class StorageHealth:
    """How a storage shared over the network is doing, as this process sees it."""

    type: str
    connected: bool
    outages: int  # times it became unreachable
    errors: int  # failed operations (each failed call while reachable or becoming unreachable)
    bad_records: int = 0  # malformed records read (each treated as absent)
    restarts: int = 0  # background threads restarted after an unexpected error

    def as_dict(self) -> dict[str, object]:
        return {"type": self.type, "connected": self.connected, "outages": self.outages,
                "errors": self.errors, "bad_records": self.bad_records,
                "restarts": self.restarts}


def storage_health(storage: object) -> StorageHealth | None:
    """The health of ``storage`` when it lives across the network (Redis), else None.

    Reads counters only: never touches the network, so it is safe on the event loop.
    """
    if isinstance(storage, RedisStorage):
        return StorageHealth("redis", storage.connected, storage.outages, storage.errors,
                             storage.bad_records, storage.restarts)
    return None


class StorageCollector(Collector):
    """Exports :func:`storage_health` of the keeper's storage (nothing for local storages)."""

    def __init__(self, storage: object) -> None:
        self.storage = storage

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        health = storage_health(self.storage)
        if health is None:
            return
        connected = GaugeMetricFamily("awstoken_storage_connected", "1 while the shared "
                                      "storage is reachable; 0 during an outage (cached "
                                      "tokens are served meanwhile).", labels=("storage",))
        outages = CounterMetricFamily("awstoken_storage_outages", "Times the shared storage "
                                      "became unreachable.", labels=("storage",))
        errors = CounterMetricFamily("awstoken_storage_errors", "Failed operations on the "
                                     "shared storage.", labels=("storage",))
        bad = CounterMetricFamily("awstoken_storage_bad_records", "Malformed records read "
                                  "from the shared storage (each treated as absent).",
                                  labels=("storage",))
        restarts = CounterMetricFamily("awstoken_storage_thread_restarts", "Background "
                                       "threads of the storage restarted after an "
                                       "unexpected error.", labels=("storage",))
        connected.add_metric([health.type], 1.0 if health.connected else 0.0)
        outages.add_metric([health.type], float(health.outages))
        errors.add_metric([health.type], float(health.errors))
        bad.add_metric([health.type], float(health.bad_records))
        restarts.add_metric([health.type], float(health.restarts))
        yield from (connected, outages, errors, bad, restarts)
