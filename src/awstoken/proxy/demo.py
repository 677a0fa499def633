"""Offline demo of the proxy: ``python -m awstoken.proxy.demo``.

Starts a local stand-in for ECR that refuses requests without the right ``Authorization``,
keeps a token fresh from a command (a stand-in for ``aws ecr get-authorization-token``) in a
FileStorage, runs the proxy in front of the stand-in, and sends a request with no
credentials through it. No AWS account or network is needed.
"""

from __future__ import annotations

import asyncio
import base64
import sys
import tempfile

from aiohttp import ClientSession, web

from .. import FileStorage, Keeper, basic
from .._settings import RouteSettings, ServerSettings, Settings
from ._server import ProxyServer

PASSWORD = "demo-password"  # noqa: S105 (a stand-in, not a secret)
# Stands in for: aws ecr get-authorization-token --query 'authorizationData[0].authorizationToken'
COMMAND = f"printf 'AWS:{PASSWORD}' | base64"


async def _stand_in(request: web.Request) -> web.Response:
    expected = "Basic " + base64.b64encode(f"AWS:{PASSWORD}".encode()).decode()
    received = request.headers.get("Authorization")
    if received != expected:
        return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
    return web.json_response({"path": request.path, "authorization": received})


async def main() -> int:
    stand_in = web.Application()
    stand_in.router.add_get("/{tail:.*}", _stand_in)
    runner = web.AppRunner(stand_in, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream_port = runner.addresses[0][1]
    with tempfile.TemporaryDirectory(prefix="awstoken-demo-") as directory:
        keeper = Keeper(FileStorage(directory))
        keeper.rotate("ecr", COMMAND, basic)
        settings = Settings(
            server=ServerSettings(listen=("127.0.0.1", 0), admin_listen=None, access_log=False),
            routes=(RouteSettings(prefix="/", upstream=f"http://127.0.0.1:{upstream_port}",
                                  token="ecr"),))  # noqa: S106
        proxy = ProxyServer(settings, keeper)
        await proxy.start()
        try:
            for _ in range(200):
                if keeper.token("ecr"):
                    break
                await asyncio.sleep(0.05)
            host, port = proxy.address
            print(f"stand-in registry: http://127.0.0.1:{upstream_port} (401 without the token)")
            print(f"awstoken proxy:    http://{host}:{port}  token 'ecr' from: {COMMAND}")
            async with ClientSession() as client:
                async with client.get(f"http://127.0.0.1:{upstream_port}/v2/") as direct:
                    print(f"GET /v2/ directly, no credentials:     HTTP {direct.status}")
                async with client.get(f"http://{host}:{port}/v2/") as proxied:
                    body = await proxied.json()
                    print(f"GET /v2/ through the proxy, no credentials: HTTP {proxied.status}")
            attached = body.get("authorization", "")
            print(f"the upstream received: Authorization: {attached[:10]}... "
                  f"(AWS:{PASSWORD} in base64, attached by the proxy)")
            return 0 if proxied.status == 200 and attached else 1
        finally:
            await proxy.stop()
            keeper.stop()
            await runner.cleanup()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
