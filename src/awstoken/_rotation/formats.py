"""Config files kept fresh: merge one credential entry into a file the user already has.

Pure functions, no I/O: each takes the file's current text (None when it does not exist)
and the entry, and returns the new text with everything else kept (other entries, other
keys, comments where the format has them). A file that cannot be parsed raises
:class:`FormatError` (naming the format and the line, never a secret) and is left as it is
by the caller.

Formats: ``docker-config`` (``auths`` of docker's config.json, also read by skopeo, podman
and buildah), ``pip-conf`` (``index-url`` with credentials in ``[global]``), ``pypirc``
(a twine repository section), ``npmrc`` (``//host/path/:_authToken``), ``netrc``
(``machine host login user password token``).
"""

from __future__ import annotations

import base64
import configparser
import io
import json
import netrc
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from .._errors import HookError

FORMATS = ("docker-config", "pip-conf", "pypirc", "npmrc", "netrc")


class FormatError(HookError):
    """The existing file cannot be parsed in its format; it is left untouched."""


@dataclass(frozen=True, slots=True)
class Entry:
    """What to merge: where (``targets``: registry hosts or URLs) and the credentials."""

    name: str  # the token's name: the .pypirc section
    targets: tuple[str, ...]
    user: str
    password: str


def merge(fmt: str, old: str | None, entry: Entry) -> str:
    """The new text of a ``fmt`` file whose current text is ``old``."""
    try:
        merger = _MERGERS[fmt]
    except KeyError:
        raise FormatError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})") from None
    if not entry.targets:
        raise FormatError(f"{fmt}: no registry or URL to write an entry for")
    return merger(old or "", entry)


# -- docker config.json ------------------------------------------------------------------------


def _docker_config(old: str, entry: Entry) -> str:
    if old.strip():
        try:
            data = json.loads(old)
        except ValueError as exc:
            line = getattr(exc, "lineno", "?")
            raise FormatError(f"docker-config: not valid JSON (line {line})") from None
        if not isinstance(data, dict):
            raise FormatError("docker-config: not a JSON object")
    else:
        data = {}
    auths = data.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise FormatError('docker-config: "auths" is not an object')
    auth = base64.b64encode(f"{entry.user}:{entry.password}".encode()).decode()
    for host in entry.targets:
        auths[host] = {"auth": auth}
    # docker writes its config.json indented with tabs; do the same.
    return json.dumps(data, indent="\t") + "\n"


# -- INI files (pip.conf, .pypirc) ---------------------------------------------------------------

_SECTION = re.compile(r"\s*\[([^\]]+)\]\s*$")


def _check_ini(fmt: str, old: str) -> None:
    parser = configparser.RawConfigParser(strict=False)
    try:
        parser.read_string(old)
    except configparser.Error as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        raise FormatError(f"{fmt}: not a valid INI file{where}: {type(exc).__name__}") from None


def _set_ini(lines: list[str], section: str, key: str, value: str,
             aliases: tuple[str, ...] = ()) -> list[str]:
    """``lines`` with ``key = value`` set in ``[section]`` (replacing the key, its aliases
    and their continuation lines), the section appended when missing."""
    setting = f"{key} = {value}"
    out: list[str] = []
    found = False
    for name, block in _ini_blocks(lines):
        if name == section:
            # Every copy of the section loses the key; the first one gets the new setting,
            # where the key was or at its end.
            body, at = _without_keys(block[1:], {key, *aliases})
            if not found:
                body.insert(len(body) if at is None else at, setting)
            found = True
            block = [block[0], *body]
        out.extend(block)
    if not found:
        if out and out[-1].strip():
            out.append("")
        out.extend([f"[{section}]", setting])
    return out


def _ini_blocks(lines: list[str]) -> list[tuple[str | None, list[str]]]:
    """``lines`` cut at each section header: ``(section or None before the first, lines)``."""
    blocks: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in lines:
        match = _SECTION.match(line)
        if match:
            blocks.append((match.group(1).strip(), []))
        blocks[-1][1].append(line)
    return blocks


def _without_keys(body: list[str], names: set[str]) -> tuple[list[str], int | None]:
    """``body`` without the lines setting one of ``names`` (and their continuation lines),
    and where the first of them was (None when none was there)."""
    kept: list[str] = []
    at: int | None = None
    skipping = False
    for line in body:
        if skipping and line[:1] in (" ", "\t") and line.strip():
            continue  # a continuation of the value being replaced
        name = re.split(r"[=:]", line, maxsplit=1)[0].strip().lower()
        skipping = bool(line.strip()) and line[:1] not in (" ", "\t", "#", ";") and name in names
        if skipping:
            at = len(kept) if at is None else at
            continue
        kept.append(line)
    return kept, at


def _ini_lines(old: str) -> list[str]:
    return old.splitlines()


def _url_with_credentials(url: str, user: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = (f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@"
              f"{parts.netloc.rpartition('@')[2]}")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _pip_conf(old: str, entry: Entry) -> str:
    _check_ini("pip-conf", old)
    url = _url_with_credentials(entry.targets[0], entry.user, entry.password)
    # configparser would read "%" as interpolation in some readers: pip uses RawConfigParser.
    lines = _set_ini(_ini_lines(old), "global", "index-url", url, aliases=("index_url",))
    return "\n".join(lines) + "\n"


def _pypirc(old: str, entry: Entry) -> str:
    _check_ini("pypirc", old)
    parser = configparser.RawConfigParser(strict=False)
    parser.read_string(old)
    servers = parser.get("distutils", "index-servers", fallback="").split()
    if entry.name not in servers:
        servers.append(entry.name)
    lines = _set_ini(_ini_lines(old), "distutils", "index-servers",
                     "\n    " + "\n    ".join(servers) if len(servers) > 1 else servers[0])
    for key, value in (("repository", entry.targets[0]), ("username", entry.user),
                       ("password", entry.password)):
        lines = _set_ini(lines, entry.name, key, value)
    return "\n".join(lines) + "\n"


# -- .npmrc ------------------------------------------------------------------------------------


def _npm_key(url: str) -> str:
    parts = urllib.parse.urlsplit(url if "://" in url else "https://" + url)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return f"//{parts.netloc.rpartition('@')[2]}{path}:_authToken"


def _npmrc(old: str, entry: Entry) -> str:
    if "\0" in old:
        raise FormatError("npmrc: not a text file")
    keys = {_npm_key(url): url for url in entry.targets}
    out: list[str] = []
    done: set[str] = set()
    for line in old.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in keys:
            if key not in done:
                out.append(f"{key}={entry.password}")
                done.add(key)
            continue
        out.append(line)
    out.extend(f"{key}={entry.password}" for key in keys if key not in done)
    return "\n".join(out) + "\n"


# -- .netrc ------------------------------------------------------------------------------------

_NETRC_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\S+')


def _netrc_quote(text: str) -> str:
    if re.fullmatch(r'[^\s"\\#]+', text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _netrc(old: str, entry: Entry) -> str:
    if old.strip():
        _check_netrc(old)
    text = old
    for target in entry.targets:
        host = urllib.parse.urlsplit(target if "://" in target else "https://" + target).hostname
        if not host:
            raise FormatError(f"netrc: {target!r} has no host")
        text = _netrc_set(text, host, entry.user, entry.password)
    return text


def _check_netrc(old: str) -> None:
    """Parse ``old`` with the standard library's netrc parser (the judge of "parsable").

    Its public constructor reads files only: the user's other secrets are not copied to a
    temporary file for it; its parser is given the text (the same method in 3.11 to 3.13).
    """
    parser = netrc.netrc.__new__(netrc.netrc)
    parser.hosts, parser.macros = {}, {}
    try:
        parser._parse("netrc", io.StringIO(old), False)  # type: ignore[attr-defined]
    except netrc.NetrcParseError as exc:
        raise FormatError(f"netrc: cannot parse (line {exc.lineno}): {exc.msg}") from None


def _netrc_set(text: str, host: str, user: str, password: str) -> str:
    line = f"machine {host} login {_netrc_quote(user)} password {_netrc_quote(password)}\n"
    tokens = _netrc_tokens(text)
    for i, (start, word) in enumerate(tokens):
        if word == "machine" and i + 1 < len(tokens) and tokens[i + 1][1] == host:
            end = next((s for s, w in tokens[i + 2:] if w in ("machine", "default", "macdef")),
                       len(text))
            return text[:start] + line + text[end:]
    if text and not text.endswith("\n"):
        text += "\n"
    return text + line


def _netrc_tokens(text: str) -> list[tuple[int, str]]:
    """(offset, word) of each netrc token of ``text``, skipping comments and macro bodies."""
    found: list[tuple[int, str]] = []
    in_macro = False
    offset = 0
    for line in text.splitlines(keepends=True):
        if in_macro:
            in_macro = bool(line.strip())  # a macro body ends at an empty line
        elif not line.lstrip().startswith("#"):
            words = [(offset + m.start(), m.group()) for m in _NETRC_TOKEN.finditer(line)]
            found.extend(words)
            in_macro = any(word == "macdef" for _, word in words)
        offset += len(line)
    return found



_MERGERS: dict[str, Callable[[str, Entry], str]] = {
    "docker-config": _docker_config,
    "pip-conf": _pip_conf,
    "pypirc": _pypirc,
    "npmrc": _npmrc,
    "netrc": _netrc,
}
