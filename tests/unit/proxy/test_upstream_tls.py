"""``check_tls`` (serve's check before its workers start) refuses exactly what ``tls_context``
(each process's upstream context) refuses, with the same message, without the system CAs;
the pool makes that context at its first https upstream only."""

from __future__ import annotations

import asyncio
import functools
import ssl
from pathlib import Path

import pytest

from awstoken import ConfigError
from awstoken._config.settings import ServerSettings
from awstoken.proxy._h1 import Origin, Pool, UpstreamError
from awstoken.proxy._upstream import check_tls, tls_context

from .fakes import run


def _message(call: object, settings: ServerSettings) -> str | None:
    assert callable(call)
    try:
        call(settings)
    except ConfigError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("case", ["missing", "not pem", "off", "none"])
def test_check_tls_refuses_what_tls_context_refuses(tmp_path: Path, case: str) -> None:
    bad = tmp_path / "ca.pem"
    if case == "not pem":
        bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    settings = ServerSettings(ca_file=None if case == "none" else str(bad), verify_tls=case != "off")
    expected = _message(tls_context, settings)
    assert _message(check_tls, settings) == expected
    assert (expected is not None) == (case in ("missing", "not pem"))
    if expected is not None:
        assert expected.startswith(f"server.ca_file {str(bad)!r}: cannot load it (")


def test_the_pool_makes_its_tls_context_at_the_first_https_upstream_only() -> None:
    """Loading the system's CAs costs 40-60 ms of CPU per process: a pool of plain-HTTP
    upstreams never does it, and a pool of https ones does it once."""
    made: list[ssl.SSLContext] = []

    def make() -> ssl.SSLContext:
        made.append(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        return made[-1]

    async def main() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = Pool(ssl_context=make, connect_timeout=5, read_timeout=5)
        conn = await pool.connect(Origin.parse(f"http://127.0.0.1:{port}"))
        assert made == []
        conn.abort()
        assert pool.tls() is pool.tls() is made[0] and len(made) == 1
        await pool.close()
        server.close()
        await server.wait_closed()

    run(main)


def test_a_tls_context_that_cannot_be_made_later_fails_that_request_only(tmp_path: Path) -> None:
    """``ca_file`` is checked when serve starts; removed afterwards, the first https
    upstream's request fails as a TLS error naming the upstream (never a traceback)."""
    settings = ServerSettings(ca_file=str(tmp_path / "gone.pem"))

    async def main() -> None:
        pool = Pool(ssl_context=functools.partial(tls_context, settings), connect_timeout=5,
                    read_timeout=5)
        with pytest.raises(UpstreamError) as failed:
            await pool.connect(Origin.parse("https://upstream.example:8443"))
        assert failed.value.kind == "tls" and failed.value.before_response
        assert str(failed.value).startswith("upstream upstream.example: no TLS context (")
        assert "gone.pem" in str(failed.value)
        await pool.close()

    run(main)


def test_a_tls_context_that_cannot_be_made_is_not_tried_again_for_a_while(
        tmp_path: Path) -> None:
    """Each attempt loads the system's CAs on the event loop (40-60 ms): while ``ca_file`` is
    missing, connections fail with the same reason without a new attempt, for TLS_RETRY
    seconds; then the next connection tries again, and succeeds once the file is back."""
    import certifi

    ca_file = tmp_path / "ca.pem"
    settings = ServerSettings(ca_file=str(ca_file))
    calls: list[int] = []

    def make() -> ssl.SSLContext:
        calls.append(1)
        return tls_context(settings)

    async def main() -> None:
        pool = Pool(ssl_context=make, connect_timeout=5, read_timeout=5)
        origin = Origin.parse("https://upstream.example:8443")
        for _ in range(3):
            with pytest.raises(UpstreamError) as failed:
                await pool.connect(origin)
            assert "ca.pem" in str(failed.value) and failed.value.kind == "tls"
        assert len(calls) == 1
        ca_file.write_bytes(Path(certifi.where()).read_bytes())  # the file is back
        with pytest.raises(UpstreamError):  # still within the window
            await pool.connect(origin)
        assert len(calls) == 1
        assert pool._tls_failed is not None
        pool._tls_failed = (0.0, pool._tls_failed[1])  # the window has passed
        assert isinstance(pool.tls(), ssl.SSLContext) and len(calls) == 2
        assert pool.tls() is pool.tls() and len(calls) == 2
        await pool.close()

    run(main)
