"""Pure proxy policy: route matching and URL mapping, header filtering, index rewriting."""

from __future__ import annotations

import gzip
import subprocess
import sys

import pytest

pytest.importorskip("aiohttp")

from awstoken import ConfigError
from awstoken._config.settings import RouteSettings
from awstoken.proxy._headers import request_header_pairs, response_header_pairs
from awstoken.proxy._prom import merge_exposition
from awstoken.proxy._rewrite import DecodeError, decode, rewrite, rewrite_paths
from awstoken.proxy._routes import RouteTable


def test_core_import_does_not_load_http_stack() -> None:
    code = "import sys, awstoken; print(any(m.split('.')[0] in ('aiohttp', 'prometheus_client', " \
           "'awstoken.proxy') or m.startswith('awstoken.proxy') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_route_mapping_and_location_rewrite() -> None:
    table = RouteTable([
        RouteSettings(prefix="/", upstream="https://1.dkr.ecr.us-east-1.amazonaws.com", token="ecr"),
        RouteSettings(prefix="/npm/", upstream="https://d-1.d.codeartifact.us-east-1.amazonaws.com"
                      "/npm/repo/", token="ca", strip_prefix=True),
    ])
    npm = table.match("/npm/lodash")
    assert npm is not None and npm.token == "ca"
    assert npm.upstream_url("/npm/lodash?x=1") == \
        "https://d-1.d.codeartifact.us-east-1.amazonaws.com/npm/repo/lodash?x=1"
    assert npm.rewrite_location("https://d-1.d.codeartifact.us-east-1.amazonaws.com/npm/repo/a/-/a.tgz",
                                "http://p:1") == "http://p:1/npm/a/-/a.tgz"
    assert npm.rewrite_location("https://other.example/x", "http://p:1") == "https://other.example/x"
    ecr = table.match("/v2/app/blobs/sha256:ab")
    assert ecr is not None and ecr.token == "ecr"
    assert ecr.upstream_url("/v2/") == "https://1.dkr.ecr.us-east-1.amazonaws.com/v2/"
    assert ecr.rewrite_location("https://1.dkr.ecr.us-east-1.amazonaws.com/v2/x", "http://p") == "http://p/v2/x"


@pytest.mark.parametrize(("route", "message"), [
    (RouteSettings(prefix="v2", upstream="https://x", token="t"), "must start with '/'"),
    (RouteSettings(prefix="/", upstream="ftp://x", token="t"), "http:// or https://"),
    (RouteSettings(prefix="/", upstream="https://u:p@x", token="t"), "credentials"),
    (RouteSettings(prefix="/", upstream="https://x", token="bad name"), "invalid token name"),
    (RouteSettings(prefix="/", upstream="https://x", token="t", header="X Bad"), "invalid header"),
])
def test_bad_routes_are_config_errors(route: RouteSettings, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RouteTable([route])


def test_request_headers_policy() -> None:
    incoming = [
        ("Accept", "a"), ("Accept", "b"), ("Host", "proxy"), ("Authorization", "Basic x"),
        ("Connection", "close, X-Private"), ("X-Private", "1"), ("Upgrade", "h2c"),
        ("Content-Length", "3")]
    out = request_header_pairs(incoming, token_header="Authorization", client_ip="10.0.0.1",
                               proto="http", host="proxy")
    names = {k.lower() for k, _ in out}

    def values(name: str) -> list[str]:
        return [v for k, v in out if k.lower() == name.lower()]
    assert values("Accept") == ["a", "b"]
    assert not names & {"authorization", "host", "x-private", "upgrade"}
    assert values("Content-Length") == ["3"]
    assert values("X-Forwarded-For") == ["10.0.0.1"]
    upstream = [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Transfer-Encoding", "chunked"),
                ("Keep-Alive", "5")]
    back = response_header_pairs(upstream)
    assert [v for k, v in back if k == "Set-Cookie"] == ["a=1", "b=2"]
    assert not {k.lower() for k, _ in back} & {"transfer-encoding", "keep-alive"}


def test_rewrite_only_whole_base_urls() -> None:
    body = (b'{"a":"http://up:80/x.tgz","b":"http://up:8080/y","c":"http:\\/\\/up:80\\/z",'
            b'"d":"http://up:80"}')
    out = rewrite(body, "http://up:80", "http://proxy/npm")
    assert b'"http://proxy/npm/x.tgz"' in out
    assert b'"http://up:8080/y"' in out
    assert b'"http:\\/\\/proxy\\/npm\\/z"' in out
    assert b'"d":"http://proxy/npm"' in out


def test_rewrite_paths_and_decode() -> None:
    html = b'<a href="/packages/p.whl#sha256=1">p</a><a href="//cdn/x">x</a><a href="rel">r</a>'
    assert rewrite_paths(html, "", "/pypi/") == \
        b'<a href="/pypi/packages/p.whl#sha256=1">p</a><a href="//cdn/x">x</a><a href="rel">r</a>'
    assert rewrite_paths(b'<a href="/base/f">', "/base", "/p") == b'<a href="/p/f">'
    assert rewrite_paths(b'<a href="/other/f">', "/base", "/p") == b'<a href="/other/f">'
    assert decode(gzip.compress(b"hello"), "gzip") == b"hello"
    with pytest.raises(DecodeError, match="cannot be decoded"):
        decode(b"x", "compress")


def test_merge_exposition_keeps_the_earliest_created_and_gauges_per_worker() -> None:
    one = ('# HELP x_total d\n# TYPE x_total counter\nx_total{route="/"} 3.0\n'
           '# HELP x_created d\n# TYPE x_created gauge\nx_created{route="/"} 1700000002.5\n'
           '# HELP g d\n# TYPE g gauge\ng 5.0\n')
    two = one.replace("1700000002.5", "1700000001.0").replace("g 5.0", "g 7.0")
    merged = merge_exposition([one, two])
    assert 'x_total{route="/"} 6.0' in merged
    assert 'x_created{route="/"} 1700000001.0' in merged
    assert 'g{worker="0"} 5.0' in merged and 'g{worker="1"} 7.0' in merged


def test_merge_exposition_sums_workers() -> None:
    one = '# HELP c_total help\n# TYPE c_total counter\nc_total{route="/"} 2.0\n'
    two = ('# HELP c_total help\n# TYPE c_total counter\nc_total{route="/"} 3.0\n'
           '# HELP awstoken_token_usable u\n# TYPE awstoken_token_usable gauge\n'
           'awstoken_token_usable{token="x"} 1.0\n')
    merged = merge_exposition([one, two], skip=("awstoken_token_",))
    assert 'c_total{route="/"} 5.0' in merged
    assert "awstoken_token_usable" not in merged


# -- followed redirects: which peer addresses are public -----------------------------------------


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.1", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1",
    "169.254.169.254", "fe80::1", "fd00:ec2::254", "fc00::1", "0.0.0.0", "::", "224.0.0.1",
    "ff02::1", "255.255.255.255", "240.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "2001::1", "fe80::1%eth0"])
def test_non_public_peers_are_not_followed(address: str) -> None:
    from awstoken.proxy._redirects import plain_address as _plain_address
    from awstoken.proxy._redirects import public as _public

    assert not _public(_plain_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "52.95.110.1", "2606:4700::1111",
                                     "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_peers_are(address: str) -> None:
    from awstoken.proxy._redirects import plain_address as _plain_address
    from awstoken.proxy._redirects import public as _public

    assert _public(_plain_address(address))
