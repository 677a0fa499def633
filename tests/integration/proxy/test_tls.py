"""HTTPS upstreams (as ECR and S3 are): verified against a custom CA, hostname checked."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from awstoken import Keeper, MemoryStorage, Token
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.ports import free_port
from tests.fixtures.proxy import LoopThread, running_proxy

from .conftest import call

x509 = pytest.importorskip("cryptography.x509")


def _pki(directory: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``names`` (DNS names or IP addresses)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "awstoken test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          # Python 3.13 verifies strictly (VERIFY_X509_STRICT): a CA needs keyUsage and a
          # subject key identifier, a certificate it signs an authority key identifier.
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[Any] = []  # x509.GeneralName (x509 is imported only when installed)
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


@contextmanager
def https_upstream(cert: Path, key: Path) -> Iterator[tuple[int, list[dict[str, str]]]]:
    from aiohttp import web

    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append({**request.headers, ":raw_path": request.raw_path})
        if request.path == "/redirect":
            return web.Response(status=307, headers={"Location": request.query["to"]})
        if request.path == "/big":
            return web.Response(body=b"b" * 3_000_000)
        return web.Response(text=f"tls ok {request.path}")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    loop = LoopThread()
    port = free_port()

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        return runner

    runner = loop.run(start())
    try:
        yield port, seen
    finally:
        loop.run(runner.cleanup())
        loop.close()


def _keeper() -> Keeper:
    storage = MemoryStorage()
    storage.write("ecr", Token(value="Bearer tls-token"))
    return Keeper(storage)


def test_https_upstream_verified_with_custom_ca(tmp_path: Path) -> None:
    ca, cert, key = _pki(tmp_path, ["localhost", "127.0.0.1"])
    with https_upstream(cert, key) as (port, seen):
        settings = Settings(server=ServerSettings(ca_file=str(ca)), routes=(
            RouteSettings(prefix="/", upstream=f"https://localhost:{port}", token="ecr"),))
        with running_proxy(settings, _keeper()) as proxy:
            for _ in range(3):  # pooled TLS connections are reused
                reply = call(proxy.url, "GET", "/v2/")
                assert (reply.status, reply.body) == (200, b"tls ok /v2/")
            assert call(proxy.url, "GET", "/big").body == b"b" * 3_000_000
        assert seen[0]["Authorization"] == "Bearer tls-token"
        assert seen[0]["Host"] == f"localhost:{port}"
        # Without the CA the same upstream is refused, never used unverified.
        plain = Settings(server=ServerSettings(connect_timeout=2.0), routes=settings.routes)
        with running_proxy(plain, _keeper()) as proxy:
            reply = call(proxy.url, "GET", "/v2/")
            assert reply.status == 502
            assert b"TLS" in reply.body or b"certificate" in reply.body
        assert len(seen) == 4


def test_https_hostname_checked(tmp_path: Path) -> None:
    ca, cert, key = _pki(tmp_path, ["other.example"])
    with https_upstream(cert, key) as (port, seen):
        settings = Settings(server=ServerSettings(ca_file=str(ca), connect_timeout=2.0), routes=(
            RouteSettings(prefix="/", upstream=f"https://localhost:{port}", token="ecr"),))
        with running_proxy(settings, _keeper()) as proxy:
            assert call(proxy.url, "GET", "/v2/").status == 502
        assert seen == []
        unverified = Settings(server=ServerSettings(verify_tls=False), routes=settings.routes)
        with running_proxy(unverified, _keeper()) as proxy:
            assert call(proxy.url, "GET", "/v2/").status == 200


def test_redirect_to_https_followed_without_token(tmp_path: Path) -> None:
    ca, cert, key = _pki(tmp_path, ["localhost", "127.0.0.1"])
    with https_upstream(cert, key) as (first, seen_first), \
            https_upstream(cert, key) as (second, seen_second):
        target = f"https://127.0.0.1:{second}/bucket/blob?X-Amz-Signature=a%2Fb"
        settings = Settings(server=ServerSettings(ca_file=str(ca)), routes=(
            RouteSettings(prefix="/", upstream=f"https://localhost:{first}", token="ecr",
                          follow_private=True),))  # the S3 stand-in is on loopback
        with running_proxy(settings, _keeper()) as proxy:
            from urllib.parse import quote

            reply = call(proxy.url, "GET", f"/redirect?to={quote(target, safe='')}")
            assert (reply.status, reply.body) == (200, b"tls ok /bucket/blob")
        assert seen_first[0]["Authorization"] == "Bearer tls-token"
        assert "Authorization" not in seen_second[0]
        assert seen_second[0][":raw_path"] == "/bucket/blob?X-Amz-Signature=a%2Fb"  # as signed
        assert seen_second[0]["Host"] == f"127.0.0.1:{second}"
