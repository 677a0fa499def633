"""Answers made in this process, not forwarded: the admin listener and the token endpoint.

They are served by the proxy's own HTTP/1.1 server (``_h1``), so every listener of
``awstoken serve`` has the same parser, the same limits (request head size, head and
keep-alive timeouts, open connections) and the same refusals of smuggled or malformed
requests, and a ``serve`` process loads no second HTTP stack (aiohttp's import was most of
its start-up, and about 16 MiB of each process's memory).

An application is a coroutine from ``(connection, request)`` to an :class:`Answer`; this
module frames the answer (Date, Content-Length, keep-alive, no body for HEAD).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from .._config.settings import ServerSettings
from ._h1 import ClientConnection, Frontend, Request, http_date, reason

log = logging.getLogger("awstoken.proxy")

TEXT = "text/plain; charset=utf-8"


@dataclass(slots=True)
class Answer:
    """A whole answer: status, body and the fields that describe it."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def text(cls, status: int, text: str = "",
             headers: Iterable[tuple[str, str]] = ()) -> Answer:
        """A plain-text answer (no Content-Type when ``text`` is empty)."""
        fields = [("Content-Type", TEXT)] if text else []
        return cls(status, text.encode(), [*fields, *headers])


App = Callable[[ClientConnection, Request], Awaitable[Answer]]


def request_path(request: Request) -> str:
    """The request target's path, percent-decoded, without the query (origin-form or
    absolute-form)."""
    target = request.target
    path = target.partition("?")[0] if target.startswith("/") else urlsplit(target).path
    return unquote(path)


def local_frontend(app: App, settings: ServerSettings, name: str) -> Frontend:
    """A protocol factory for ``loop.create_server`` that answers every request with
    ``app``, with the limits ``settings`` gives the proxy listener (``name``: the listener,
    in log lines)."""

    async def handle(conn: ClientConnection, request: Request) -> None:
        try:
            answer = await app(conn, request)
        except Exception:
            log.exception("awstoken: unexpected error while answering %s %s", request.method,
                          request_path(request))
            answer = Answer.text(500, "internal error\n")
        conn.answer(request, answer.status, reason(answer.status),
                    [("Date", http_date()), *answer.headers], answer.body)

    return Frontend(handle, max_connections=settings.max_connections,
                    head_timeout=settings.head_timeout,
                    keepalive_timeout=settings.keepalive_timeout, name=name)


__all__ = ["TEXT", "Answer", "App", "local_frontend", "request_path"]
