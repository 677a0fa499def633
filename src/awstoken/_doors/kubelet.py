"""A kubelet image credential provider: ``awstoken kubelet-credential-provider``.

The kubelet runs the provider for each image that matches ``matchImages`` in its
``CredentialProviderConfig``, with a ``CredentialProviderRequest`` on stdin::

    {"apiVersion": "credentialprovider.kubelet.k8s.io/v1",
     "kind": "CredentialProviderRequest", "image": "HOST/repo:tag"}

and reads a ``CredentialProviderResponse`` on stdout::

    {"apiVersion": "credentialprovider.kubelet.k8s.io/v1",
     "kind": "CredentialProviderResponse", "cacheKeyType": "Registry",
     "cacheDuration": "5h45m0s", "auth": {"HOST": {"username": "AWS", "password": "..."}}}

The answer comes from storage (no AWS call, no AWS credentials on the node) for the
registries of the configuration file (``registries = [...]``, ECR sources and routes, as
for the docker credential helper). ``cacheDuration`` lasts until the token is due for
refresh (its interval, or the advisory window before its expiry), so the kubelet asks again
when a keeper has a new token, and never past the token's expiry. The response uses the
request's API version (v1, v1beta1 or v1alpha1: the same shapes). A miss exits 1 with the
reason on stderr; the kubelet logs it and pulls without credentials.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from .._duration import go_duration
from .._errors import AwstokenError
from .common import NotFound, credentials, load_settings, obtain, registry_token, remember
from .fast import (
    KUBELET_GROUP,
    KUBELET_VERSIONS,
    cache_seconds,
    image_registry,
)

if TYPE_CHECKING:  # the loader comes with load_settings()
    from .._config.settings import Settings

GROUP = KUBELET_GROUP
VERSIONS = KUBELET_VERSIONS
PROG = "awstoken kubelet-credential-provider"
#: The request is a few hundred bytes; refuse to read more than this.
MAX_REQUEST = 1 << 20


def parse_request(text: str) -> tuple[str, str]:
    """(apiVersion, image) of a CredentialProviderRequest; raise AwstokenError."""
    try:
        request: Any = json.loads(text)
    except ValueError:
        raise AwstokenError("the request on stdin is not JSON") from None
    if not isinstance(request, dict):
        raise AwstokenError("the request on stdin is not a JSON object")
    api = request.get("apiVersion")
    if api not in {f"{GROUP}/{v}" for v in VERSIONS}:
        raise AwstokenError(f"unsupported apiVersion {str(api)[:100]!r} (expected "
                            f"{GROUP}/v1, v1beta1 or v1alpha1)")
    if request.get("kind") != "CredentialProviderRequest":
        raise AwstokenError(f"unexpected kind {str(request.get('kind'))[:100]!r} (expected "
                            "CredentialProviderRequest)")
    image = request.get("image")
    if not isinstance(image, str) or not image.strip():
        raise AwstokenError("the request has no image")
    return str(api), image.strip()


def respond(settings: Settings, api: str, image: str, *,
            clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """The CredentialProviderResponse for ``image``; raise NotFound on a miss."""
    host = image_registry(image)
    name = registry_token(settings, host)
    answer = obtain(settings, name, clock=clock)
    user, password = credentials(answer.value, settings.tokens[name])
    token, record = settings.tokens[name], answer.record
    seconds = cache_seconds(record.refreshed_at, record.expires_at, token.interval, clock())
    remember(settings)
    return {"apiVersion": api, "kind": "CredentialProviderResponse", "cacheKeyType": "Registry",
            "cacheDuration": go_duration(seconds),
            "auth": {host: {"username": user, "password": password}}}


def main(config: str | None = None, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Answer one request; return the exit status."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    logging.getLogger("awstoken").addHandler(logging.NullHandler())
    logging.getLogger("awstoken").propagate = False
    try:
        api, image = parse_request(stdin.read(MAX_REQUEST))
        response = respond(load_settings(config), api, image)
    except NotFound as exc:
        print(f"{PROG}: not found: {exc}", file=stderr)
        return 1
    except AwstokenError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"{PROG}: {line}", file=stderr)
        return 1
    json.dump(response, stdout)
    print(file=stdout)
    return 0
