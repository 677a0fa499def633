"""Merging one credential entry into the config files users already have."""

from __future__ import annotations

import base64
import configparser
import io
import json
import netrc

import pytest

from awstoken._rotation.formats import Entry, FormatError, merge

E = Entry("repo", ("https://pypi.example/simple/",), "aws", "tok%:@/ 1")
D = Entry("ecr", ("reg.example:5000", "reg2.example"), "AWS", "pw-1")


def test_docker_config_keeps_everything_else() -> None:
    old = json.dumps({"auths": {"other.example": {"auth": "eA=="}}, "credsStore": "pass",
                      "proxies": {"default": {"httpProxy": "x"}}})
    new = json.loads(merge("docker-config", old, D))
    assert new["auths"]["other.example"] == {"auth": "eA=="}
    assert new["credsStore"] == "pass" and new["proxies"] == {"default": {"httpProxy": "x"}}
    assert base64.b64decode(new["auths"]["reg.example:5000"]["auth"]) == b"AWS:pw-1"
    assert new["auths"]["reg2.example"] == new["auths"]["reg.example:5000"]
    again = json.loads(merge("docker-config", json.dumps(new), Entry("ecr", D.targets, "AWS", "pw-2")))
    assert base64.b64decode(again["auths"]["reg2.example"]["auth"]) == b"AWS:pw-2"
    assert json.loads(merge("docker-config", None, D))["auths"].keys() == {"reg.example:5000",
                                                                          "reg2.example"}


@pytest.mark.parametrize("old", ["{not json", "[]", '{"auths": []}'])
def test_docker_config_unparsable(old: str) -> None:
    with pytest.raises(FormatError, match="docker-config"):
        merge("docker-config", old, D)


def _ini(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return parser


def test_pip_conf_replaces_index_url_and_keeps_the_rest() -> None:
    old = ("# my pip config\n[global]\ntimeout = 60\nindex_url = https://old/simple/\n"
           "    continued-junk\nextra-index-url = https://extra/simple/\n\n[install]\nuser = true\n")
    new = merge("pip-conf", old, E)
    parser = _ini(new)
    assert parser.get("global", "index-url") == \
        "https://aws:tok%25%3A%40%2F%201@pypi.example/simple/"
    assert not parser.has_option("global", "index_url")
    assert parser.get("global", "timeout") == "60"
    assert parser.get("global", "extra-index-url") == "https://extra/simple/"
    assert parser.get("install", "user") == "true"
    assert new.startswith("# my pip config\n") and "continued-junk" not in new
    assert _ini(merge("pip-conf", None, E)).get("global", "index-url").startswith("https://aws:")
    assert _ini(merge("pip-conf", "[install]\nuser = true\n", E)).get("install", "user") == "true"


def test_pypirc_adds_a_repository_section() -> None:
    old = "[distutils]\nindex-servers =\n    pypi\n    other\n\n[pypi]\nusername = __token__\n"
    new = merge("pypirc", old, E)
    parser = _ini(new)
    assert parser.get("distutils", "index-servers").split() == ["pypi", "other", "repo"]
    assert parser.get("pypi", "username") == "__token__"
    assert (parser.get("repo", "repository"), parser.get("repo", "username"),
            parser.get("repo", "password")) == ("https://pypi.example/simple/", "aws", "tok%:@/ 1")
    twice = merge("pypirc", new, Entry("repo", E.targets, "aws", "second"))
    assert _ini(twice).get("repo", "password") == "second"
    assert _ini(twice).get("distutils", "index-servers").split() == ["pypi", "other", "repo"]


@pytest.mark.parametrize("fmt", ["pip-conf", "pypirc"])
def test_ini_unparsable(fmt: str) -> None:
    with pytest.raises(FormatError, match=f"{fmt}: not a valid INI"):
        merge(fmt, "no section header\n", E)


def test_npmrc() -> None:
    entry = Entry("npm", ("https://npm.example/npm/main/",), "aws", "npm-tok")
    old = "registry=https://npm.example/npm/main/\n//other/:_authToken=keep\n; comment\n"
    new = merge("npmrc", old, entry)
    assert new == old + "//npm.example/npm/main/:_authToken=npm-tok\n"
    again = merge("npmrc", new, Entry("npm", entry.targets, "aws", "npm-tok-2"))
    assert again == old + "//npm.example/npm/main/:_authToken=npm-tok-2\n"
    with pytest.raises(FormatError, match="npmrc"):
        merge("npmrc", "a=b\0", entry)


def _netrc(text: str) -> netrc.netrc:
    parser = netrc.netrc.__new__(netrc.netrc)
    parser.hosts, parser.macros = {}, {}
    parser._parse("t", io.StringIO(text), False)  # type: ignore[attr-defined]
    return parser


def test_netrc() -> None:
    old = ("# mine\nmachine a.example login me password secret\n"
           "machine pypi.example\n  login old\n  password old-pw\n"
           "macdef init\nmachine pypi.example fake\n\ndefault login anon password x\n")
    new = merge("netrc", old, E)
    parsed = _netrc(new)
    assert parsed.hosts["pypi.example"] == ("aws", "", "tok%:@/ 1")
    assert parsed.hosts["a.example"] == ("me", "", "secret")
    assert parsed.hosts["default"] == ("anon", "", "x")
    assert "macdef init\nmachine pypi.example fake\n" in new and new.startswith("# mine\n")
    assert _netrc(merge("netrc", None, E)).hosts["pypi.example"][2] == "tok%:@/ 1"
    with pytest.raises(FormatError, match="netrc: cannot parse"):
        merge("netrc", "machine a.example colour blue\n", E)


def test_config_errors_name_the_key() -> None:
    from awstoken import ConfigError
    from awstoken._config.load import loads

    cases = {
        'sink_format = "npmrc"\nindexes = ["https://n/"]\n': r"tokens\.t\.sink_format: needs sink",
        'sink = "f"\nsink_format = "docker-config"\n': r"tokens\.t\.sink_format: 'docker-config' "
                                                      r"needs registries",
        'sink = "f"\nsink_format = "npmrc"\n': r"tokens\.t\.sink_format: 'npmrc' needs indexes",
        'sink = "f"\nsink_format = "nprmc"\n': r"did you mean 'npmrc'",
        'writes = [{path = "f", format = "netrc"}]\n': r"tokens\.t\.writes\[0\]\.format: 'netrc' "
                                                       r"needs indexes",
        'writes = [{format = "netrc", url = "https://h/"}]\n': r"writes\[0\]\.path: missing",
        'writes = [{path = "f", format = "netrc", url = "https://u:p@h/"}]\n':
            r"writes\[0\]\.url: .*credentials",
        'writes = [{path = "f", format = "netrc", color = 1, url = "https://h/"}]\n':
            r"writes\[0\]\.color: unknown key",
        'writes = "f"\n': r"tokens\.t\.writes: expected an array",
    }
    for body, pattern in cases.items():
        with pytest.raises(ConfigError, match=pattern):
            loads(f'[tokens.t]\ncommand = "x"\n{body}')
    ok = loads('[tokens.t]\ncommand = "x"\nwrites = [{path = "/f", format = "netrc", '
               'url = "https://h/"}, {path = "/g", format = "docker-config", url = "r:5000"}]\n')
    assert [(w.path, w.format, w.url) for w in ok.tokens["t"].writes] == [
        ("/f", "netrc", "https://h/"), ("/g", "docker-config", "r:5000")]
