"""The admin listener: /healthz, /readyz, /metrics, on its own (loopback by default) address.

Endpoints are a plain ``{path: handler}`` table (:attr:`AdminApp.endpoints`). Nothing here
ever reads out a token value or a storage password: the token endpoint for nginx
(``_token_endpoint``) has listeners of its own, since the admin address may be reachable
from other hosts.

``/readyz`` answers 200 while every token is present and unexpired *in this process*, which
is what the proxy serves from. With Redis storage that stays true through a Redis outage
(the local cache serves until each token's own expiry), so a load balancer keeps sending
traffic to hosts that can still answer; the outage shows in the ``storage`` part of the
answer and in the ``awstoken_storage_*`` metrics, which is where alerts belong.

Reading a record may cost a Redis round trip (bounded by the storage's timeout), so both
``/readyz`` and ``/metrics`` do their reading in a worker thread, never on the event loop
that forwards requests.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .._rotation.keeper import Keeper
from ._h1 import ClientConnection, Request
from ._local import Answer, request_path
from ._metrics import storage_health

Endpoint = Callable[[], Awaitable[Answer]]
MetricsSource = Callable[[], Awaitable[bytes]]


def token_status(keeper: Keeper, names: Iterable[str]) -> tuple[bool, dict[str, object]]:
    """Readiness of every token: present and unexpired. Values are never included."""
    now = time.time()
    ready = True
    report: dict[str, object] = {}
    for name in sorted(set(names)):
        try:
            record = keeper.record(name)
        except Exception as exc:  # noqa: BLE001  a probe answers whatever a storage plugin raises
            ready = False
            report[name] = {"ready": False, "error": f"cannot read the record: {type(exc).__name__}"}
            continue
        usable = record is not None and record.usable(now) and keeper.token(name) is not None
        ready &= usable
        entry: dict[str, object] = {"ready": usable}
        if record is not None:
            if record.value is not None:
                entry["age_seconds"] = round(now - record.refreshed_at, 3)
            if record.expires_at is not None:
                entry["expires_in_seconds"] = round(record.expires_at - now, 3)
            entry["generation"] = record.generation
            if record.failures:
                entry["failures"] = record.failures
                entry["error"] = record.error
        else:
            entry["error"] = "no token yet"
        report[name] = entry
    return ready, report


class AdminApp:
    """The admin request handler (a ``_local`` application)."""

    def __init__(self, keeper: Keeper, token_names: Iterable[str], registry: CollectorRegistry,
                 *, extra_metrics: MetricsSource | None = None) -> None:
        self.keeper = keeper
        self.token_names = tuple(token_names)
        self.registry = registry
        self.extra_metrics = extra_metrics
        self.endpoints: dict[str, Endpoint] = {
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/metrics": self.metrics,
        }

    async def __call__(self, conn: ClientConnection, request: Request) -> Answer:
        if request.method not in ("GET", "HEAD"):
            return Answer.text(405, "method not allowed\n", [("Allow", "GET, HEAD")])
        handler = self.endpoints.get(request_path(request))
        if handler is None:
            return Answer.text(404, "not found\n")
        return await handler()

    async def healthz(self) -> Answer:
        return Answer.text(200, "ok\n")

    async def readyz(self) -> Answer:
        ready, report = await asyncio.to_thread(token_status, self.keeper, self.token_names)
        answer: dict[str, object] = {"ready": ready, "tokens": report}
        health = storage_health(self.keeper.storage)
        if health is not None:
            # Informational: readiness depends on the tokens this process holds, not on Redis.
            answer["storage"] = health.as_dict()
        return Answer(200 if ready else 503, (json.dumps(answer, indent=1) + "\n").encode(),
                      [("Content-Type", "application/json; charset=utf-8")])

    async def metrics(self) -> Answer:
        body = await asyncio.to_thread(generate_latest, self.registry)
        if self.extra_metrics is not None:
            body += await self.extra_metrics()
        return Answer(200, body, [("Content-Type", CONTENT_TYPE_LATEST)])
