"""``awstoken serve``: a streaming reverse proxy that attaches tokens to forwarded requests.

Needs the ``awstoken[proxy]`` extra (prometheus-client, bcrypt, httptools; uvloop when
available). ``import awstoken`` never imports this package.

    from awstoken.proxy import serve
    serve(settings, keeper)     # blocks until SIGTERM/SIGINT

:class:`ProxyServer` runs the same inside an existing event loop; :class:`TokenEndpoint` is
the handler of the token endpoint for nginx ``auth_request`` (``server.token_listen``).
"""

from ._admin import AdminApp, token_status
from ._run.serve import serve
from ._server import ProxyServer
from ._token_endpoint import TokenEndpoint

__all__ = ["AdminApp", "ProxyServer", "TokenEndpoint", "serve", "token_status"]
