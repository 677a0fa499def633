"""httpx authentication with a token kept by awstoken (``pip install 'awstoken[httpx]'``)::

    import httpx, awstoken.httpx
    client = httpx.Client(auth=awstoken.httpx.TokenAuth("codeartifact"))

Works with ``httpx.Client`` and ``httpx.AsyncClient`` (asyncio or trio).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Generator

try:
    import anyio
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("awstoken.httpx needs httpx: pip install 'awstoken[httpx]'") from exc

from . import _client

__all__ = ["TokenAuth"]


class TokenAuth(_client.HeaderAuth, httpx.Auth):
    """Put the current value of token ``name`` in ``header`` of every request.

    The value is read from the keeper's storage per request (``keeper.token(name)``; the
    default keeper is :func:`awstoken.default_keeper`); when there is no usable token the
    request is not sent and :class:`awstoken.TokenUnavailableError` is raised. On a response
    whose status is in ``retry_statuses`` (401, 403) it asks for one refresh, waits up to
    ``refresh_timeout`` seconds for a new value and retries the request once, if its body can
    be replayed (streamed bodies cannot: the rejection is returned as is).
    """

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        sent = self._token.value()
        request.headers[self._token.header] = sent
        response = yield request
        if not self._token.refused(response.status_code,
                                   response.request.headers.get(self._token.header), sent):
            return  # accepted, or rejected by another host (a redirect) that never saw the token
        if not _replayable(request):
            self._token.request_refresh(response.status_code)
            return
        response.read()  # frees the connection while we wait
        wait = self._token.wait_for_new(sent, response.status_code)
        while (delay := wait.poll()) is not None:
            time.sleep(delay)
        if wait.value is not None:
            request.headers[self._token.header] = wait.value
            yield request

    async def async_auth_flow(
            self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        sent = self._token.value()
        request.headers[self._token.header] = sent
        response = yield request
        if not self._token.refused(response.status_code,
                                   response.request.headers.get(self._token.header), sent):
            return  # accepted, or rejected by another host (a redirect) that never saw the token
        if not _replayable(request):
            await anyio.to_thread.run_sync(self._token.request_refresh, response.status_code)
            return
        await response.aread()
        wait = self._token.wait_for_new(sent, response.status_code)
        # Storage reads may block (a file, Redis): keep them off the event loop.
        while (delay := await anyio.to_thread.run_sync(wait.poll)) is not None:
            await anyio.sleep(delay)
        if wait.value is not None:
            request.headers[self._token.header] = wait.value
            yield request


def _replayable(request: httpx.Request) -> bool:
    # httpx loads non-streaming bodies (bytes, str, forms, JSON) into request.content at
    # construction; a streamed body (an iterator, a file) is never loaded and cannot be resent.
    try:
        request.content  # noqa: B018
    except httpx.RequestNotRead:
        return False
    return True
