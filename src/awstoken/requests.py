"""requests authentication with a token kept by awstoken (``pip install 'awstoken[requests]'``)::

    import requests, awstoken.requests
    session = requests.Session()
    session.auth = awstoken.requests.TokenAuth("codeartifact")
"""

from __future__ import annotations

import time
from typing import Any

try:
    import requests
    from requests.auth import AuthBase
    from requests.cookies import extract_cookies_to_jar
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("awstoken.requests needs requests: pip install 'awstoken[requests]'") from exc

from . import _client

__all__ = ["TokenAuth"]

_NOT_SEEKABLE = -1


class TokenAuth(_client.HeaderAuth, AuthBase):
    """Put the current value of token ``name`` in ``header`` of every request.

    The value is read from the keeper's storage per request (``keeper.token(name)``; the
    default keeper is :func:`awstoken.default_keeper`); when there is no usable token the
    request is not sent and :class:`awstoken.TokenUnavailableError` is raised. On a response
    whose status is in ``retry_statuses`` (401, 403) it asks for one refresh, waits up to
    ``refresh_timeout`` seconds for a new value and retries the request once, if its body can
    be replayed (bytes, text, forms, JSON, seekable files; not generators). The retried
    response carries the rejected one in ``history``.
    """

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        sent = self._token.value()
        request.headers[self._token.header] = sent
        position = _position(request.body)
        hook_state = {"sent": sent, "position": position}

        def on_response(response: requests.Response, **kwargs: Any) -> requests.Response:
            return self._handle(response, hook_state, **kwargs)

        request.register_hook("response", on_response)  # type: ignore[no-untyped-call]
        return request

    def _handle(self, response: requests.Response, state: dict[str, Any],
                **kwargs: Any) -> requests.Response:
        token = self._token
        request = response.request
        if not token.refused(response.status_code, request.headers.get(token.header),
                             state["sent"]):
            return response  # accepted, or rejected by a host (a redirect) that never saw the token
        position = state["position"]
        if position == _NOT_SEEKABLE:
            token.request_refresh(response.status_code)
            return response
        response.content  # noqa: B018 - read the body so the connection can be reused
        wait = token.wait_for_new(state["sent"], response.status_code)
        while (delay := wait.poll()) is not None:
            time.sleep(delay)
        if wait.value is None:
            return response
        response.close()
        retry = request.copy()
        if position is not None:
            retry.body.seek(position)  # type: ignore[union-attr]
        retry.headers[token.header] = wait.value
        # As requests' own HTTPDigestAuth does: carry cookies set by the rejection, send
        # through the same adapter (which runs no hooks, so this never retries twice).
        cookies = getattr(retry, "_cookies", None)
        if cookies is not None:
            extract_cookies_to_jar(cookies, request, response.raw)  # type: ignore[no-untyped-call]
            retry.prepare_cookies(cookies)
        again: requests.Response = response.connection.send(retry, **kwargs)
        again.history.append(response)
        again.request = retry
        return again


def _position(body: object) -> int | None:
    """None for a body that is resent as is; its offset for a seekable file; else -1."""
    if body is None or isinstance(body, bytes | str):
        return None
    tell = getattr(body, "tell", None)
    if tell is not None and getattr(body, "seek", None) is not None:
        try:
            return int(tell())
        except (OSError, ValueError):
            return _NOT_SEEKABLE
    return _NOT_SEEKABLE
