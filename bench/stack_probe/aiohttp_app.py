"""Minimal forwarder: aiohttp web.Application + aiohttp ClientSession (stack probe only)."""
import asyncio
import sys

import aiohttp
import uvloop
from aiohttp import web

UP = sys.argv[2]
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection", "host",
       "authorization", "content-length"}


async def handler(request: web.Request) -> web.StreamResponse:
    session: aiohttp.ClientSession = request.app["s"]
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP]
    headers.append(("Authorization", "Basic dG9rZW4="))
    async with session.request(request.method, UP + request.path_qs, headers=headers,
                               allow_redirects=False, auto_decompress=False) as up:
        resp = web.StreamResponse(status=up.status)
        for k, v in up.headers.items():
            if k.lower() not in HOP:
                resp.headers.add(k, v)
        if up.content_length is not None:
            resp.content_length = up.content_length
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def main() -> None:
    app = web.Application()
    app.router.add_route("*", "/{p:.*}", handler)
    app["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1])).start()
    await asyncio.Event().wait()

uvloop.run(main())
