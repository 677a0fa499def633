"""Minimal forwarder: granian RSGI + pyreqwest (stack probe only). Run: python granian_pyreqwest.py PORT UP"""
import os
import sys
from typing import Any

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection", "host",
       "authorization", "content-length"}


class App:
    client: Any = None

    def __rsgi_init__(self, loop: Any) -> None:
        from pyreqwest.client import ClientBuilder
        self.client = ClientBuilder().follow_redirects(False).gzip(False).build()
        self.up = os.environ["UP"]

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        headers = [(k, v) for k, v in scope.headers.items() if k not in HOP]
        headers.append(("authorization", "Basic dG9rZW4="))
        url = self.up + scope.path + (("?" + scope.query_string) if scope.query_string else "")
        body = await proto()
        req = self.client.request(scope.method, url).headers(headers)
        if body:
            req = req.body_bytes(body)
        async with req.build_streamed() as up:
            out = [(k, v) for k, v in up.headers.items() if k not in HOP]
            reader = up.body_reader
            first = await reader.read_chunk()
            if first is None:
                proto.response_bytes(up.status, out, b"")
                return
            tr = proto.response_stream(up.status, out)
            await tr.send_bytes(bytes(first))
            while (chunk := await reader.read_chunk()) is not None:
                await tr.send_bytes(bytes(chunk))


app = App()

if __name__ == "__main__":
    from granian import Granian
    os.environ["UP"] = sys.argv[2]
    sys.path.insert(0, os.path.dirname(__file__))
    Granian("granian_pyreqwest:app", address="127.0.0.1", port=int(sys.argv[1]), interface="rsgi",
            workers=1, log_access=False, loop="uvloop").serve()
