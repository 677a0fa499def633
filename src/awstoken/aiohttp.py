"""aiohttp client middleware with a token kept by awstoken (``pip install 'awstoken[aiohttp]'``,
aiohttp 3.12 or newer, the first with client middlewares)::

    import aiohttp, awstoken.aiohttp
    async with aiohttp.ClientSession(
            middlewares=(awstoken.aiohttp.TokenMiddleware("codeartifact"),)) as session:
        ...

The middleware may also be given to a single request: ``session.get(url, middlewares=(mw,))``.

aiohttp runs client middlewares on every hop of a redirect chain, so a middleware would put
the token on a request redirected to another host (ECR sends blob downloads to S3, which
rejects them). Pass ``origins`` to name where the token may go; requests to anywhere else
pass through untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from yarl import URL

try:
    import aiohttp
    from aiohttp import ClientRequest, ClientResponse
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("awstoken.aiohttp needs aiohttp 3.12 or newer (client middlewares): "
                      "pip install 'awstoken[aiohttp]'") from exc

from . import _client
from ._errors import AwstokenError
from ._rotation.keeper import Keeper

__all__ = ["TokenMiddleware"]


class TokenMiddleware:
    """A client middleware putting the current value of token ``name`` in ``header``.

    The value is read from the keeper's storage per request (``keeper.token(name)``; the
    default keeper is :func:`awstoken.default_keeper`); when there is no usable token the
    request is not sent and :class:`awstoken.TokenUnavailableError` is raised. On a response
    whose status is in ``retry_statuses`` (401, 403) it asks for one refresh, waits up to
    ``refresh_timeout`` seconds for a new value and retries the request once, if its body can
    be replayed (bytes, text, forms, JSON, seekable files; not consumed async iterators).

    ``origins`` (``"https://host[:port]"`` strings) limits the token to those origins; the
    default puts it on every request the session sends, redirects to other hosts included.
    """

    def __init__(self, name: str, *, keeper: Keeper | None = None, header: str = "Authorization",
                 refresh_timeout: float = _client.DEFAULT_REFRESH_TIMEOUT,
                 retry_statuses: Collection[int] = _client.DEFAULT_RETRY_STATUSES,
                 min_refresh_gap: float | None = None,
                 origins: Collection[str] | None = None) -> None:
        self._token = _client.TokenHeader(name, keeper=keeper, header=header,
                                  refresh_timeout=refresh_timeout, retry_statuses=retry_statuses,
                                  min_refresh_gap=min_refresh_gap)
        self._origins = None if origins is None else frozenset(_origin(o) for o in origins)

    def __repr__(self) -> str:
        return f"TokenMiddleware({self._token.name!r}, header={self._token.header!r})"

    async def __call__(self, request: ClientRequest, handler: aiohttp.ClientHandlerType) -> ClientResponse:
        token = self._token
        if self._origins is not None and request.url.origin() not in self._origins:
            return await handler(request)
        sent = token.value()
        request.headers[token.header] = sent
        response = await handler(request)
        if not token.rejected(response.status):
            return response
        if not _replayable(request):
            await asyncio.to_thread(token.request_refresh, response.status)
            return response
        await response.read()  # frees the connection; the body stays readable if returned
        wait = token.wait_for_new(sent, response.status)
        # Storage reads may block (a file, Redis): keep them off the event loop.
        while (delay := await asyncio.to_thread(wait.poll)) is not None:
            await asyncio.sleep(delay)
        if wait.value is None:
            return response
        request.headers[token.header] = wait.value
        return await handler(request)


def _replayable(request: ClientRequest) -> bool:
    body = request.body
    if isinstance(body, bytes | bytearray):
        return True
    return isinstance(body, aiohttp.payload.Payload) and not body.consumed


def _origin(text: str) -> URL:
    url = URL(text)
    if not url.absolute or url.scheme not in ("http", "https"):
        raise AwstokenError(f"origin {text!r} must be an absolute http:// or https:// URL")
    return url.origin()
