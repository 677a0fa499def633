"""Helpers for the proxy tests: a raw HTTP client that keeps repeated headers."""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("httptools")


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def call(base: str, method: str, path: str, headers: list[tuple[str, str]] | None = None,
         body: bytes | None = None, timeout: float = 30) -> Reply:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        skip_host = any(k.lower() == "host" for k, _ in headers or [])
        conn.putrequest(method, path, skip_accept_encoding=True, skip_host=skip_host)
        for key, value in headers or []:
            conn.putheader(key, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, resp.getheaders(), data)
    finally:
        conn.close()
