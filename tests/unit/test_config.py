"""The configuration file: good files, a table of bad ones, and the builders."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from awstoken import Command, ConfigError, FileStorage, MemoryStorage
from awstoken._config.load import (
    build_keeper,
    build_source,
    build_storage,
    build_transform,
    load,
    loads,
    parse_duration,
    parse_listen,
    start_rotators,
)
from awstoken._config.options import CodeArtifactOptions, CommandOptions, ECROptions, RDSOptions
from awstoken._config.settings import RouteSettings, Settings, StorageSettings, TokenSettings
from awstoken.aws import ECR, EKS, RDS, CodeArtifact, ECRPublic

GOOD = """
[storage]
type = "file"
path = "state"

[tokens.ecr]
command = "aws ecr get-authorization-token --query 'authorizationData[*].authorizationToken' --output text"
format = "Basic {token}"
interval = "6h"
retry = "30s"
timeout = "60s"

[tokens.pypi]
source = "codeartifact"
domain = "my-domain"
domain_owner = "123456789012"
duration = "12h"
basic_user = "aws"

[tokens.registry]
source = "ecr"
registry_id = "123456789012"
region = "eu-west-1"
role_arn = "arn:aws:iam::123456789012:role/puller"

[tokens.public]
source = "ecr-public"

[tokens.k8s]
source = "eks"
cluster = "prod"
format = "Bearer {token}"
interval = "10m"

[tokens.db]
source = "rds"
host = "db.example.internal"
port = 5432
user = "app"
profile = "db"

[tokens.cli-json]
command = ["aws", "ecr", "get-authorization-token", "--output", "json"]
token_path = "authorizationData[0].authorizationToken"
expiry_path = "authorizationData[0].expiresAt"

[server]
listen = "[::1]:8443"
workers = 4
admin_listen = "off"
htpasswd = "users.htpasswd"
bearer_tokens_env = "AWSTOKEN_BEARERS"
allow = ["10.0.0.0/8", "::1/128"]
verify_tls = false
connect_timeout = 5
read_timeout = "2m"
shutdown_timeout = 0
access_log = false
engine = "fast"

[[routes]]
prefix = "/v2/"
upstream = "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"
token = "registry"
redirects = "pass"

[[routes]]
prefix = "/pypi/"
upstream = "https://my-domain-123456789012.d.codeartifact.us-east-1.amazonaws.com/pypi/r/"
token = "pypi"
strip_prefix = true
header = "Authorization"
"""


def write(tmp_path: Path, text: str, name: str = "awstoken.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_full_file_loads(tmp_path: Path) -> None:
    (tmp_path / "users.htpasswd").write_text("u:$2y$05$x\n")
    path = write(tmp_path, GOOD)
    settings = load(path)
    assert settings.path == str(path)
    assert settings.storage == StorageSettings(type="file", path=str(tmp_path / "state"))
    ecr = settings.tokens["ecr"]
    assert (ecr.source, ecr.format, ecr.interval, ecr.retry, ecr.timeout) == (
        "command", "Basic {token}", 6 * 3600, 30, 60)
    pypi = settings.tokens["pypi"]
    assert pypi == TokenSettings(name="pypi", options=CodeArtifactOptions(
        domain="my-domain", domain_owner="123456789012", duration=43200), basic_user="aws")
    assert pypi.source == "codeartifact"
    assert settings.tokens["registry"].options == ECROptions(
        registry_id="123456789012", region="eu-west-1",
        role_arn="arn:aws:iam::123456789012:role/puller")
    assert settings.tokens["db"].options == RDSOptions(host="db.example.internal", port=5432,
                                                       user="app", profile="db")
    assert settings.tokens["k8s"].interval == 600
    assert settings.tokens["cli-json"].options == CommandOptions(
        command=("aws", "ecr", "get-authorization-token", "--output", "json"),
        token_path="authorizationData[0].authorizationToken",
        expiry_path="authorizationData[0].expiresAt")
    server = settings.server
    assert server.listen == ("::1", 8443)
    assert server.admin_listen is None
    assert server.htpasswd == str(tmp_path / "users.htpasswd")
    assert server.allow == ("10.0.0.0/8", "::1/128")
    assert (server.workers, server.verify_tls, server.access_log) == (4, False, False)
    assert server.engine == "fast"
    assert (server.connect_timeout, server.read_timeout, server.shutdown_timeout) == (5, 120, 0)
    assert settings.routes == (
        RouteSettings(prefix="/v2/", upstream="https://123456789012.dkr.ecr.eu-west-1."
                      "amazonaws.com", token="registry", redirects="pass"),
        RouteSettings(prefix="/pypi/", upstream="https://my-domain-123456789012.d.codeartifact."
                      "us-east-1.amazonaws.com/pypi/r/", token="pypi", strip_prefix=True))


def test_security_keys_load(tmp_path: Path) -> None:
    settings = load(write(tmp_path, """
[tokens.ecr]
command = "x"
[server]
public_url = "https://registry.example:8443/"
max_connections = 100
head_timeout = "5s"
keepalive_timeout = "1m"
token_hosts = ["AwsToken", "awstoken.local:8081"]
[[routes]]
prefix = "/"
upstream = "http://10.0.0.5:5000"
token = "ecr"
follow_http = true
follow_private = true
"""))
    server = settings.server
    assert server.public_url == "https://registry.example:8443"
    assert (server.max_connections, server.head_timeout, server.keepalive_timeout) == (100, 5, 60)
    assert server.token_hosts == ("awstoken", "awstoken.local:8081")
    route = settings.routes[0]
    assert (route.follow_http, route.follow_private) == (True, True)
    assert RouteSettings(prefix="/", upstream="https://x", token="t").follow_private is False


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    settings = load(write(tmp_path, ""))
    assert settings.storage == StorageSettings()
    assert settings.tokens == {}
    assert settings.routes == ()


def test_token_endpoint_settings(tmp_path: Path) -> None:
    settings = load(write(tmp_path, """
[tokens.ecr]
command = "x"
sink = "run/ecr.header"
sink_mode = "0640"

[server]
token_listen = ["unix:run/token.sock", "127.0.0.1:9091", "[::1]:9091", "127.8.0.1:0"]
token_socket_mode = 0o600
token_max_age = "10s"
token_secret_env = "AWSTOKEN_TOKEN_SECRET"
"""))
    server = settings.server
    assert server.token_listen == (str(tmp_path / "run" / "token.sock"), ("127.0.0.1", 9091),
                                   ("::1", 9091), ("127.8.0.1", 0))
    assert (server.token_socket_mode, server.token_max_age, server.token_secret_env) == (
        0o600, 10.0, "AWSTOKEN_TOKEN_SECRET")
    token = settings.tokens["ecr"]
    assert (token.sink, token.sink_mode) == (str(tmp_path / "run" / "ecr.header"), 0o640)
    assert load(write(tmp_path, EP + "token_listen = "
                                "'unix:/run/t.sock'\ntoken_max_age = 0\n")).server.token_max_age == 0
    defaults = load(write(tmp_path, "")).server
    assert (defaults.token_listen, defaults.token_socket_mode, defaults.token_max_age,
            defaults.token_secret_env) == ((), 0o660, 5.0, None)


def test_redis_storage_settings(tmp_path: Path) -> None:
    settings = load(write(tmp_path, '[storage]\ntype = "redis"\nurl = "redis://127.0.0.1:6379/0"\n'
                                    'password_env = "REDIS_PASSWORD"\nprefix = "tok:"\n'
                                    'lease = "20s"\n'))
    assert settings.storage == StorageSettings(type="redis", url="redis://127.0.0.1:6379/0",
                                               password_env="REDIS_PASSWORD", prefix="tok:",
                                               lease=20.0)


@pytest.mark.parametrize(("text", "seconds"), [
    (90, 90.0), (1.5, 1.5), ("90s", 90.0), ("15m", 900.0), ("6h", 21600.0), ("1d", 86400.0),
    ("1h30m", 5400.0), ("1d2h3m4s", 93784.0), ("250ms", 0.25), ("2.5h", 9000.0), ("45", 45.0),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "6 hours", "h", "1h1h", "-5m", "1w", True, [1], "nan"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the message is checked through load below)
        parse_duration(text)


@pytest.mark.parametrize(("text", "address"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:8080", ("::1", 8080)),
    ("0.0.0.0:0", ("0.0.0.0", 0)), ("localhost:9090", ("localhost", 9090)),
    ("[2001:db8::1]:443", ("2001:db8::1", 443)),
])
def test_listen_addresses(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


EP = "[tokens.a]\ncommand = 'x'\n[server]\n"  # a file with a token, then [server] keys

# Each bad file: its text, the key path the message must name, and a fragment of what it says.
BAD: list[tuple[str, str, str, str]] = [
    ("toml-syntax", "[tokens.ecr\ncommand = 'x'\n", "", "not valid TOML: "),
    ("unknown-top", "[servr]\nlisten = '127.0.0.1:1'\n", "servr", "did you mean 'server'?"),
    ("storage-type", "[storage]\ntype = 'memroy'\n", "storage.type", "did you mean 'memory'?"),
    ("storage-key-of-other-type", "[storage]\ntype = 'memory'\npath = '/x'\n", "storage.path",
     "only used with type = 'file'"),
    ("redis-without-url", "[storage]\ntype = 'redis'\n", "storage.url", "missing; expected a "
     "redis://"),
    ("redis-bad-url", "[storage]\ntype = 'redis'\nurl = 'http://h'\n", "storage.url",
     "not a redis URL"),
    ("redis-bad-env", "[storage]\ntype = 'redis'\nurl = 'redis://h'\npassword_env = 'A-B'\n",
     "storage.password_env", "the name of an environment variable"),
    ("redis-lease", "[storage]\ntype = 'redis'\nurl = 'redis://h'\nlease = '0.5s'\n",
     "storage.lease", "at least 1 seconds"),
    ("tokens-not-table", "tokens = 3\n", "tokens", "expected a table, got an integer"),
    ("token-not-table", "[tokens]\necr = 'aws ecr'\n", "tokens.ecr", "expected a table, got a "
     "string"),
    ("bad-token-name", "[tokens.'-x']\ncommand = 'x'\n", "tokens.-x", "invalid token name"),
    ("no-command", "[tokens.ecr]\nformat = 'Basic {token}'\n", "tokens.ecr.command",
     "missing; expected a command line"),
    ("command-typo", "[tokens.ecr]\ncomand = 'x'\n", "tokens.ecr.comand",
     "did you mean 'command'?"),
    ("empty-command", "[tokens.ecr]\ncommand = '  '\n", "tokens.ecr.command", "(empty)"),
    ("command-array-of-ints", "[tokens.ecr]\ncommand = [1, 2]\n", "tokens.ecr.command",
     "argv array of non-empty strings"),
    ("unknown-source", "[tokens.a]\nsource = 'codeartefact'\n", "tokens.a.source",
     "did you mean 'codeartifact'?"),
    ("key-of-other-source", "[tokens.a]\nsource = 'ecr'\ndomain = 'd'\n", "tokens.a.domain",
     "only used with source = 'codeartifact'"),
    ("command-key-on-native", "[tokens.a]\nsource = 'eks'\ncluster = 'c'\ncommand = 'x'\n",
     "tokens.a.command", "only used with source = 'command'"),
    ("domain-owner-int", "[tokens.pypi]\nsource = 'codeartifact'\ndomain = 'd1'\n"
     "domain_owner = 123456789012\n", "tokens.pypi.domain_owner",
     "12-digit AWS account id as a string"),
    ("domain-missing", "[tokens.pypi]\nsource = 'codeartifact'\n", "tokens.pypi.domain",
     "missing; expected a CodeArtifact domain name"),
    ("duration-too-long", "[tokens.pypi]\nsource = 'codeartifact'\ndomain = 'd1'\n"
     "duration = '13h'\n", "tokens.pypi.duration", "15m to 12h"),
    ("duration-too-short", "[tokens.pypi]\nsource = 'codeartifact'\ndomain = 'd1'\n"
     "duration = 60\n", "tokens.pypi.duration", "15m to 12h"),
    ("format-and-basic-user", "[tokens.pypi]\nsource = 'codeartifact'\ndomain = 'd1'\n"
     "basic_user = 'aws'\nformat = 'Basic {token}'\n", "tokens.pypi.format",
     "cannot be combined with basic_user"),
    ("format-without-placeholder", "[tokens.a]\ncommand = 'x'\nformat = 'Basic token'\n",
     "tokens.a.format", "no '{token}' placeholder"),
    ("format-with-newline", "[tokens.a]\ncommand = 'x'\nformat = \"Basic {token}\\nX: y\"\n",
     "tokens.a.format", "control character"),
    ("basic-user-colon", "[tokens.a]\ncommand = 'x'\nbasic_user = 'a:b'\n",
     "tokens.a.basic_user", "without ':'"),
    ("interval-words", "[tokens.a]\ncommand = 'x'\ninterval = '6 hours'\n", "tokens.a.interval",
     'expected a duration: a number of seconds or a string like "90s"'),
    ("retry-zero", "[tokens.a]\ncommand = 'x'\nretry = 0\n", "tokens.a.retry",
     "expected a positive duration"),
    ("timeout-bool", "[tokens.a]\ncommand = 'x'\ntimeout = true\n", "tokens.a.timeout",
     "got a boolean"),
    ("interval-typo", "[tokens.a]\ncommand = 'x'\nintervall = 5\n", "tokens.a.intervall",
     "did you mean 'interval'?"),
    ("expiry-path-alone", "[tokens.a]\ncommand = 'x'\nexpiry_path = 'a.b'\n",
     "tokens.a.expiry_path", "needs token_path too"),
    ("bad-token-path", "[tokens.a]\ncommand = 'x'\ntoken_path = 'a..b'\n",
     "tokens.a.token_path", "a JSON path like"),
    ("bad-region", "[tokens.a]\nsource = 'ecr'\nregion = 'useast1'\n", "tokens.a.region",
     'an AWS region like "us-east-1"'),
    ("bad-role-arn", "[tokens.a]\nsource = 'ecr'\nrole_arn = 'arn:aws:iam::1:user/x'\n",
     "tokens.a.role_arn", "an IAM role ARN"),
    ("bad-registry-id", "[tokens.a]\nsource = 'ecr'\nregistry_id = '12345'\n",
     "tokens.a.registry_id", "12-digit AWS account id"),
    ("eks-no-cluster", "[tokens.a]\nsource = 'eks'\n", "tokens.a.cluster", "missing"),
    ("rds-port-string", "[tokens.a]\nsource = 'rds'\nhost = 'db'\nport = '5432'\nuser = 'u'\n",
     "tokens.a.port", "an integer from 1 to 65535, got a string"),
    ("rds-host-with-port", "[tokens.a]\nsource = 'rds'\nhost = 'db:5432'\nport = 5432\n"
     "user = 'u'\n", "tokens.a.host", "no scheme, no port"),
    ("listen-no-brackets", "[server]\nlisten = '::1:8080'\n", "server.listen",
     "put an IPv6 address in brackets"),
    ("listen-no-host", "[server]\nlisten = ':8080'\n", "server.listen", "has no host"),
    ("listen-bad-port", "[server]\nlisten = '127.0.0.1:99999'\n", "server.listen",
     "is not 0 to 65535"),
    ("admin-listen-word", "[server]\nadmin_listen = 'no'\n", "server.admin_listen", 'or "off"'),
    ("workers-zero", "[server]\nworkers = 0\n", "server.workers", "from 1 to 256"),
    ("allow-host-bits", "[server]\nallow = ['10.0.0.1/8']\n", "server.allow",
     "did you mean '10.0.0.0/8'?"),
    ("allow-string", "[server]\nallow = '10.0.0.0/8'\n", "server.allow",
     "an array of networks"),
    ("htpasswd-missing-file", "[server]\nhtpasswd = 'nope.htpasswd'\n", "server.htpasswd",
     "expected an existing file"),
    ("verify-tls-string", "[server]\nverify_tls = 'no'\n", "server.verify_tls",
     "expected true or false"),
    ("server-typo", "[server]\nread_timout = 5\n", "server.read_timout",
     "did you mean 'read_timeout'?"),
    ("routes-not-array", "[routes]\nprefix = '/'\n", "routes", "an array of tables"),
    ("route-unknown-token", "[tokens.ecr]\ncommand = 'x'\n[[routes]]\nprefix = '/v2/'\n"
     "upstream = 'https://r.example'\ntoken = 'ecrr'\n", "routes[0].token",
     "no [tokens.ecrr] table in this file; did you mean 'ecr'?"),
    ("route-prefix-no-slash", "[tokens.ecr]\ncommand = 'x'\n[[routes]]\nprefix = 'v2'\n"
     "upstream = 'https://r.example'\ntoken = 'ecr'\n", "routes[0].prefix",
     'starting with "/"'),
    ("route-upstream-scheme", "[tokens.ecr]\ncommand = 'x'\n[[routes]]\nprefix = '/'\n"
     "upstream = 'ftp://r.example'\ntoken = 'ecr'\n", "routes[0].upstream",
     "an http:// or https:// URL"),
    ("route-upstream-credentials", "[tokens.ecr]\ncommand = 'x'\n[[routes]]\nprefix = '/'\n"
     "upstream = 'https://u:secretpw@r.example'\ntoken = 'ecr'\n", "routes[0].upstream",
     "has credentials in it"),
    ("route-duplicate-prefix", "[tokens.ecr]\ncommand = 'x'\n[[routes]]\nprefix = '/v2/'\n"
     "upstream = 'https://a.example'\ntoken = 'ecr'\n[[routes]]\nprefix = '/v2'\n"
     "upstream = 'https://b.example'\ntoken = 'ecr'\n", "routes[1].prefix",
     "duplicates the prefix of routes[0]"),
    ("route-redirects", "[tokens.ecr]\ncommand = 'x'\n[[routes]]\nprefix = '/'\n"
     "upstream = 'https://r.example'\ntoken = 'ecr'\nredirects = 'folow'\n",
     "routes[0].redirects", "did you mean 'follow'?"),
    ("route-follow-http", "[tokens.ecr]\ncommand = 'x'\n[[routes]]\nprefix = '/'\n"
     "upstream = 'https://r.example'\ntoken = 'ecr'\nfollow_http = 'yes'\n",
     "routes[0].follow_http", "true or false"),
    ("server-public-url-path", EP + "public_url = 'https://r.example/v2'\n", "server.public_url",
     "only scheme, host and port"),
    ("server-public-url-scheme", EP + "public_url = 'ftp://r.example'\n", "server.public_url",
     "the proxy's URL as clients know it"),
    ("server-token-hosts", EP + "token_hosts = ['a b']\n", "server.token_hosts",
     "is not a host name"),
    ("server-max-connections", EP + "max_connections = 0\n", "server.max_connections",
     "an integer from 1"),
    ("server-head-timeout", EP + "head_timeout = 0\n", "server.head_timeout",
     "positive duration"),
    ("route-header", "[tokens.ecr]\ncommand = 'x'\n[[routes]]\nprefix = '/'\n"
     "upstream = 'https://r.example'\ntoken = 'ecr'\nheader = 'Auth orization'\n",
     "routes[0].header", "an HTTP header name"),
    ("route-missing-upstream", "[tokens.ecr]\ncommand = 'x'\n[[routes]]\nprefix = '/'\n"
     "token = 'ecr'\n", "routes[0].upstream", "missing"),
    ("sink-not-a-path", "[tokens.ecr]\ncommand = 'x'\nsink = 5\n", "tokens.ecr.sink",
     "expected a file path"),
    ("sink-content", "[tokens.ecr]\ncommand = 'x'\nsink = '/tmp/t'\nsink_content = 'raws'\n",
     "tokens.ecr.sink_content", "did you mean 'raw'?"),
    ("on-rotate-string", "[tokens.ecr]\ncommand = 'x'\non_rotate = 'docker login'\n",
     "tokens.ecr.on_rotate", "a non-empty list of strings"),
    ("on-rotate-empty", "[tokens.ecr]\ncommand = 'x'\non_rotate = []\n", "tokens.ecr.on_rotate",
     "a non-empty list of strings"),
    ("hook-timeout", "[tokens.ecr]\ncommand = 'x'\nhook_timeout = '0s'\n",
     "tokens.ecr.hook_timeout", "expected a positive duration"),
    ("hook-env-string", "[tokens.ecr]\ncommand = 'x'\nhook_env = 'DOCKER_CONFIG'\n",
     "tokens.ecr.hook_env", "a list of environment variable names"),
    ("hook-env-bad-name", "[tokens.ecr]\ncommand = 'x'\nhook_env = ['A=B']\n",
     "tokens.ecr.hook_env", "a list of environment variable names"),
    ("sink-mode-world-readable", "[tokens.ecr]\ncommand = 'x'\nsink = '/tmp/t'\n"
     "sink_mode = '0644'\n", "tokens.ecr.sink_mode", "0644 gives other users access to a token"),
    ("sink-mode-not-octal", "[tokens.ecr]\ncommand = 'x'\nsink = '/tmp/t'\nsink_mode = '0980'\n",
     "tokens.ecr.sink_mode", 'permissions like "0600"'),
    ("token-listen-public", EP + "token_listen = '0.0.0.0:9091'\n", "server.token_listen",
     "0.0.0.0 is not a loopback address"),
    ("token-listen-routable", EP + "token_listen = ['unix:/run/t.sock', '[2001:db8::1]:9091']\n",
     "server.token_listen", "2001:db8::1 is not a loopback address"),
    ("token-listen-name", EP + "token_listen = 'localhost:9091'\n", "server.token_listen",
     "'localhost' is a name: give a loopback address"),
    ("token-listen-int", EP + "token_listen = 9091\n", "server.token_listen",
     'expected "unix:/path/to/token.sock" or a loopback "127.0.0.1:PORT"'),
    ("token-listen-unix-empty", EP + "token_listen = 'unix:'\n", "server.token_listen",
     "has no path"),
    ("token-listen-unix-too-long", EP + "token_listen = 'unix:/" + "x" * 120 + "'\n",
     "server.token_listen", "longer than 107 bytes"),
    ("token-listen-twice", EP + "token_listen = ['127.0.0.1:9091', '127.0.0.1:9091']\n",
     "server.token_listen", "appears twice"),
    ("token-listen-is-admin", EP + "token_listen = '127.0.0.1:8479'\n", "server.token_listen",
     "127.0.0.1:8479 is also server.admin_listen"),
    ("token-listen-is-proxy", EP + "listen = '127.0.0.1:8081'\ntoken_listen = '127.0.0.1:8081'\n",
     "server.token_listen", "is also server.listen; the token endpoint needs a listener"),
    ("token-listen-without-tokens", "[server]\ntoken_listen = 'unix:/run/t.sock'\n",
     "server.token_listen", "no [tokens.NAME] table in this file"),
    ("token-socket-mode-world", EP + "token_socket_mode = '0666'\n", "server.token_socket_mode",
     "gives other users access"),
    ("token-socket-mode-bool", EP + "token_socket_mode = true\n", "server.token_socket_mode",
     "got a boolean"),
    ("token-max-age-long", EP + "token_max_age = '10m'\n", "server.token_max_age",
     "at most 300 seconds"),
    ("token-secret-env", EP + "token_secret_env = 'MY-SECRET'\n", "server.token_secret_env",
     "the name of an environment variable"),
    ("engine", "[server]\nengine = 'fastest'\n", "server.engine", "'fast'"),
    ("engine-retired", "[server]\nengine = 'aiohttp'\n", "server.engine",
     "the aiohttp request path was retired"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_files(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path = write(tmp_path, text, "bad.toml")
    with pytest.raises(ConfigError) as caught:
        load(path)
    lines = str(caught.value).splitlines()
    prefix = f"{path}: {key}: " if key else f"{path}: "
    matching = [line for line in lines if line.startswith(prefix)]
    assert matching, lines
    assert any(fragment in line for line in matching), lines


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = "\n".join(case[1] for case in BAD if case[0] in (
        "storage-type", "interval-typo", "workers-zero")).replace("[tokens.a]\n", "[tokens.a]\n")
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    keys = [line.split(": ")[1] for line in str(caught.value).splitlines()]
    assert keys == ["storage.type", "tokens.a.intervall", "server.workers"]


def test_secrets_in_the_file_are_not_echoed(tmp_path: Path) -> None:
    text = ("[storage]\ntype = 'redis'\nurl = 'http://:hunter2secret@h'\n[tokens.ecr]\n"
            "command = 'x'\n[[routes]]\nprefix = '/'\nupstream = 'https://u:hunter2secret@r.e'\n"
            "token = 'ecr'\n")
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    assert len(str(caught.value).splitlines()) == 2
    assert "hunter2secret" not in str(caught.value)


def test_an_unreadable_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read the configuration file: "
                                          "No such file"):
        load(tmp_path / "missing.toml")


def test_source_without_botocore_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import awstoken.aws

    monkeypatch.setattr(awstoken.aws, "botocore_available", lambda: False)
    with pytest.raises(ConfigError, match=r"tokens\.a\.source: source 'ecr' needs botocore"):
        loads("[tokens.a]\nsource = 'ecr'\n", file="c.toml")


# -- builders ----------------------------------------------------------------------------------


def test_build_storage_memory_and_file(tmp_path: Path) -> None:
    assert isinstance(build_storage(StorageSettings(type="memory")), MemoryStorage)
    storage = build_storage(StorageSettings(type="file", path=str(tmp_path / "s")))
    assert isinstance(storage, FileStorage)
    assert storage.path == tmp_path / "s"


def test_build_storage_redis_needs_its_password_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWSTOKEN_TEST_NO_SUCH_VAR", raising=False)
    with pytest.raises(ConfigError, match="AWSTOKEN_TEST_NO_SUCH_VAR is not set"):
        build_storage(StorageSettings(type="redis", url="redis://127.0.0.1:1",
                                      password_env="AWSTOKEN_TEST_NO_SUCH_VAR"))


def test_build_source_for_every_kind(tmp_path: Path) -> None:
    (tmp_path / "users.htpasswd").write_text("")
    settings = load(write(tmp_path, GOOD))
    sources = {name: build_source(token) for name, token in settings.tokens.items()}
    assert isinstance(sources["ecr"], Command)
    registry = sources["registry"]
    assert isinstance(registry, ECR)
    assert (registry.registry_id, registry.region, registry.role_arn, registry.timeout) == (
        "123456789012", "eu-west-1", "arn:aws:iam::123456789012:role/puller", 60.0)
    pypi = sources["pypi"]
    assert isinstance(pypi, CodeArtifact)
    assert (pypi.domain, pypi.domain_owner, pypi.duration) == ("my-domain", "123456789012", 43200)
    assert isinstance(sources["public"], ECRPublic)
    assert sources["public"].region == "us-east-1"
    assert isinstance(sources["k8s"], EKS)
    db = sources["db"]
    assert isinstance(db, RDS)
    assert (db.host, db.port, db.user, db.profile) == ("db.example.internal", 5432, "app", "db")
    cli_json = sources["cli-json"]
    assert isinstance(cli_json, Command)
    assert cli_json.token_path == "authorizationData[0].authorizationToken"


def test_build_transform() -> None:
    assert build_transform(TokenSettings(name="a")) ("t") == "t"
    assert build_transform(TokenSettings(name="a", format="Bearer {token}"))("t") == "Bearer t"
    assert build_transform(TokenSettings(name="a", basic_user="aws"))("t") == "Basic YXdzOnQ="


def test_build_keeper_and_start_rotators(tmp_path: Path) -> None:
    text = (f"[storage]\ntype = 'file'\npath = '{tmp_path / 'state'}'\n"
            "[tokens.one]\ncommand = 'echo one-token'\nformat = 'Bearer {token}'\n"
            "interval = '1h'\nretry = '5s'\ntimeout = '10s'\n"
            "[tokens.two]\ncommand = ['printf', '%s', 'two-token']\nbasic_user = 'aws'\n")
    settings = load(write(tmp_path, text))
    keeper = build_keeper(settings)
    assert isinstance(keeper.storage, FileStorage)
    rotators = start_rotators(settings, keeper)
    try:
        assert sorted(rotators) == ["one", "two"]
        assert rotators["one"].schedule.interval == 3600
        assert rotators["one"].schedule.retry == 5
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (keeper.token("one") and keeper.token("two")):
            time.sleep(0.05)
        assert keeper.token("one") == "Bearer one-token"
        assert keeper.token("two") == "Basic YXdzOnR3by10b2tlbg=="
    finally:
        keeper.stop()


def test_start_rotators_runs_the_hooks_of_each_token(tmp_path: Path) -> None:
    sink = tmp_path / "ecr.token"
    settings = Settings(storage=StorageSettings(type="memory"), tokens={
        "ecr": TokenSettings(name="ecr", options=CommandOptions(command="echo sink-token"),
                             format="Basic {token}", sink=str(sink))})
    keeper = build_keeper(settings)
    start_rotators(settings, keeper)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not sink.exists():
            time.sleep(0.05)
        assert sink.read_text().strip() == "Basic sink-token"
    finally:
        keeper.stop()


def test_sink_and_hook_keys_load_and_run(tmp_path: Path) -> None:
    hook_out = tmp_path / "hook-saw"
    text = ("[storage]\ntype = 'memory'\n"
            "[tokens.ecr]\ncommand = 'echo raw-token'\nformat = 'Basic {token}'\n"
            "sink = 'ecr.header'\nsink_content = 'value'\n"
            f"on_rotate = ['sh', '-c', 'cat > {hook_out}']\nhook_timeout = '5s'\n"
            "hook_env = ['DOCKER_CONFIG']\n")
    settings = load(write(tmp_path, text))
    token = settings.tokens["ecr"]
    assert token.hook_env == ("DOCKER_CONFIG",)
    assert token.sink == str(tmp_path / "ecr.header")  # relative to the config file
    assert token.on_rotate == ("sh", "-c", f"cat > {hook_out}")
    assert token.hook_timeout == 5
    keeper = build_keeper(settings)
    start_rotators(settings, keeper)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (hook_out.exists() and hook_out.read_text()):
            time.sleep(0.05)
        assert (tmp_path / "ecr.header").read_text() == "Basic raw-token"
        assert hook_out.read_text().strip() == "raw-token"
    finally:
        keeper.stop()
