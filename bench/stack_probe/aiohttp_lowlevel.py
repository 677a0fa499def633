"""Minimal forwarder: aiohttp low-level web.Server + aiohttp ClientSession (stack probe only)."""
import asyncio
import sys

import aiohttp
import uvloop
from aiohttp import web

UP = sys.argv[2]
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection", "host",
       "authorization", "content-length"}
session: aiohttp.ClientSession


async def handler(request: web.BaseRequest) -> web.StreamResponse:
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
    global session
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
    server = web.Server(handler, access_log=None)
    loop = asyncio.get_running_loop()
    await loop.create_server(server, "127.0.0.1", int(sys.argv[1]))
    await asyncio.Event().wait()

uvloop.run(main())
