"""``[storage] ca_file / cert_file / key_file`` reach redis-py: a rediss:// server signed by a
private CA and requiring client certificates, used from a configuration file alone (no
SSL_CERT_FILE), through the real CLI."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from awstoken import Token
from awstoken._config.build import build_storage
from awstoken._config.load import load
from tests.fixtures.binaries import require_binary
from tests.fixtures.cli import awstoken_cli
from tests.fixtures.ports import free_port
from tests.fixtures.redis import RedisServer


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_binary("openssl"), *args], cwd=cwd, check=True, capture_output=True)


def _signed(name: str, cn: str, ext: str, d: Path) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    (d / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
             cwd=d)


@pytest.fixture
def tls_redis(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[RedisServer, Path]]:
    d = tmp_path / "tls"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "2", "-subj", "/CN=awstoken test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _signed("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\n", d)
    _signed("client", "awstoken", "extendedKeyUsage=clientAuth\n", d)
    port = free_port()
    server = RedisServer(redis_server.binary, d, port=port, extra=[
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", "server.crt",
        "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt",
        "--tls-auth-clients", "yes"])
    server.scheme = "rediss"
    server.client_options = {"ssl_ca_certs": str(d / "ca.crt"),
                             "ssl_certfile": str(d / "client.crt"),
                             "ssl_keyfile": str(d / "client.key")}
    server.start()
    try:
        yield server, d
    finally:
        server.stop()


def _config(tmp_path: Path, url: str, keys: str) -> Path:
    path = tmp_path / "awstoken.toml"
    path.write_text(f'[storage]\ntype = "redis"\nurl = "{url}"\n{keys}'
                    '[tokens.t]\ncommand = "echo x"\n')
    return path


def _get(config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    return subprocess.run([*awstoken_cli(), "get", "-c", str(config), "t"], capture_output=True,
                          text=True, timeout=60, check=False, env=env, stdin=subprocess.DEVNULL)


def test_rediss_with_a_private_ca_and_a_client_certificate(
        tmp_path: Path, tls_redis: tuple[RedisServer, Path]) -> None:
    server, _ = tls_redis
    full = _config(tmp_path, server.url, 'ca_file = "tls/ca.crt"\ncert_file = "tls/client.crt"\n'
                                         'key_file = "tls/client.key"\n')
    storage = build_storage(load(full).storage)
    try:
        storage.write("t", Token("Bearer over-tls", refreshed_at=1.0, generation=1))
    finally:
        storage.close()
    got = _get(full)
    assert got.returncode == 0, got.stderr
    assert got.stdout == "Bearer over-tls\n"
    # Without the client certificate the server refuses; without the CA, so does the client.
    for keys in ('ca_file = "tls/ca.crt"\n', 'cert_file = "tls/client.crt"\n'
                                             'key_file = "tls/client.key"\n'):
        refused = _get(_config(tmp_path, server.url, keys))
        assert refused.returncode == 1
        assert "over-tls" not in refused.stdout + refused.stderr
        assert "Traceback" not in refused.stderr


def test_tls_keys_need_rediss(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("x")
    for url, problem in (("redis://127.0.0.1:9/0", "storage.ca_file: only used with a "
                                                   "rediss:// URL (TLS)"),
                         ("rediss://127.0.0.1:9/0", "storage.key_file: needs cert_file")):
        config = _config(tmp_path, url, 'ca_file = "ca.crt"\nkey_file = "ca.crt"\n')
        checked = subprocess.run([*awstoken_cli(), "check", "-c", str(config)],
                                 capture_output=True, text=True, timeout=60, check=False)
        assert checked.returncode == 2
        assert problem in checked.stderr
