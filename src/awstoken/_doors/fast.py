"""The credential helper's hit path in a few milliseconds: no TOML, no validation, no classes.

``docker pull`` runs the helper once per registry and a CI fleet runs thousands of pulls, so
the answer for a usable stored token must cost little more than starting Python. The full
path (``_docker_helper``: load and validate the configuration, map hosts, read storage, fetch
as the leader when needed) leaves an *index* after each answer: for the configuration file
(identified by its real path and its inode, size and times), the storage directory and the
token of each registry host. The next call checks that index against ``stat`` of the same
configuration file and, when nothing changed, reads the token's record straight from the
file storage. Anything else (no index, another file, a changed file, a record that is not
usable for :data:`MARGIN` more seconds, Redis storage) goes the full path.

The index lives in awstoken's private default directory (``$AWSTOKEN_DIR``,
``$XDG_RUNTIME_DIR/awstoken`` or ``/tmp/awstoken-UID``) and is trusted only when that
directory and the file belong to this user and nobody else can write them. It holds no
secret. Only the standard library's cheapest modules are imported here.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
import time
import zlib

from .._duration import go_duration

TYPE_CHECKING = False  # not from typing: importing it costs more than the whole answer
if TYPE_CHECKING:
    from typing import Any

#: As ``_doors.DOOR_MARGIN``: a token with less left goes the full path (which refreshes it).
MARGIN = 30.0
_VERSION = 1


def split(value: str, ecr: bool, basic_user: str | None) -> tuple[str, str]:
    """(user, password) from a stored header value; see ``_doors.credentials``."""
    scheme, _, rest = value.partition(" ")
    default_user = basic_user or ("AWS" if ecr else "aws")
    if scheme.lower() == "basic" and rest:
        pair = _b64_pair(rest.strip())
        if pair is not None:
            return pair
    if scheme.lower() == "bearer" and rest:
        return default_user, rest.strip()
    if ecr:
        pair = _b64_pair(value)
        if pair is not None:
            return pair
    return default_user, value


def _b64_pair(text: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user or not password or not decoded.isprintable():
        return None
    return user, password


def index_directory() -> str:
    """awstoken's default private directory (as ``storage.file.default_directory``)."""
    explicit = os.environ.get("AWSTOKEN_DIR")
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "awstoken")
    return os.path.join("/tmp", f"awstoken-{os.getuid()}")  # noqa: S108 (checked private below)


def _signature(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def index_path(config: str) -> tuple[str, str]:
    """(the config file's real path, its index file)."""
    real = os.path.realpath(config)
    name = f"doors-{zlib.crc32(real.encode()):08x}.json"
    return real, os.path.join(index_directory(), name)


def _private(st: os.stat_result) -> bool:
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _read_private(path: str) -> bytes | None:
    """The file's bytes if it and its directory are this user's and written by no one else."""
    try:
        if not _private(os.stat(os.path.dirname(path))):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not _private(os.fstat(fd)):
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(1 << 20)
    finally:
        os.close(fd)


def docker_get(server_url: str, config: str | None) -> dict[str, str] | None:
    """The helper's answer from the index and the stored record, or None (take the full path)."""
    try:
        found = _index_entry(config, _host(server_url))
        if found is None:
            return None
        index, entry = found
        name, ecr, basic_user, _ = entry
        record = _usable_record(index["storage"], name)
        if record is None:
            return None
        user, secret = split(str(record["value"]), bool(ecr), str(basic_user) if basic_user else None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return {"ServerURL": server_url, "Username": user, "Secret": secret}


def _index_entry(config: str | None, host: str) -> tuple[dict[str, Any], list[Any]] | None:
    """(the index, its entry for ``host``) when the index matches the configuration file."""
    config = config or os.environ.get("AWSTOKEN_CONFIG")
    if not config or not host:
        return None
    real, path = index_path(config)
    signature = _signature(real)
    raw = _read_private(path)
    if raw is None:
        return None
    index = json.loads(raw)
    if (index.get("version") != _VERSION or index.get("config") != real
            or index.get("signature") != signature):
        return None
    entry = index["registries"].get(host)
    return None if entry is None else (index, entry)


def _usable_record(directory: object, name: object) -> dict[str, Any] | None:
    if not isinstance(directory, str) or not isinstance(name, str):
        return None
    record = json.loads(_read_record(directory, name))
    value, expires_at = record.get("value"), record.get("expires_at")
    if not isinstance(value, str) or (expires_at is not None and time.time() + MARGIN >= expires_at):
        return None
    return dict(record)


def _read_record(directory: str, name: str) -> bytes:
    if "/" in name or name.startswith("."):
        raise ValueError(name)
    with open(os.path.join(directory, f"{name}.json"), "rb") as fh:
        return fh.read(1 << 20)


def _host(server_url: str) -> str:
    # The full path's registry_host() in cheap form; an unusual URL simply misses (full path).
    text = server_url.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    host = text.split("/", 1)[0].lower()
    if "@" in host or not host:
        return ""
    return host[:-4] if host.endswith(":443") else host


Entry = tuple[str, bool, "str | None", float]


def write_index(config: str, storage: str, registries: dict[str, Entry]) -> None:
    """Record what the full path found for ``config`` (best effort: never fails a door)."""
    try:
        real, path = index_path(config)
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.lstat(directory)
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            return  # not our private directory: write nothing a stranger could read or plant
        data = json.dumps({"version": _VERSION, "config": real, "signature": _signature(real),
                           "storage": storage,
                           "registries": {h: list(v) for h, v in registries.items()}}).encode()
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            os.unlink(tmp)
            raise
    except OSError:
        return


def docker_console() -> None:
    """``docker-credential-awstoken``: the index's answer for ``get`` when it has one."""
    args = sys.argv[1:]
    if args == ["get"]:
        server_url = sys.stdin.read().strip()
        answer = docker_get(server_url, None)
        if answer is not None:
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.exit(0)
        import io

        from .docker import main

        sys.exit(main(args, stdin=io.StringIO(server_url)))
    from .docker import main

    sys.exit(main(args))


# -- the kubelet credential provider ------------------------------------------------------------

#: As ``_rotator.DEFAULT_ADVISORY``: a keeper refreshes this long before expiry (at most a
#: third of the token's lifetime).
ADVISORY = 15 * 60.0
KUBELET_VERSIONS = ("v1", "v1beta1", "v1alpha1")
KUBELET_GROUP = "credentialprovider.kubelet.k8s.io"


def refresh_due(refreshed_at: float, expires_at: float | None, interval: float) -> float:
    """When a keeper refreshes the record (``Schedule.refresh_due`` with default windows)."""
    due = refreshed_at + interval
    if expires_at is not None:
        due = min(due, expires_at - min(ADVISORY, max(expires_at - refreshed_at, 0.0) / 3))
    return due


def cache_seconds(refreshed_at: float, expires_at: float | None, interval: float, now: float) -> float:
    """How long the kubelet may cache a token: until its refresh is due, or, when that has
    passed (no keeper running), until the door's margin before its expiry."""
    seconds = refresh_due(refreshed_at, expires_at, interval) - now
    if expires_at is not None:
        if seconds <= 0:
            seconds = expires_at - MARGIN - now
        seconds = min(seconds, expires_at - MARGIN - now)
    return max(seconds, 0.0)


def image_registry(image: str) -> str:
    """The registry host of an image reference (``HOST[:PORT]/repo[:tag][@digest]``)."""
    first, sep, _ = image.partition("/")
    if not sep or not ("." in first or ":" in first or first == "localhost"):
        return "docker.io"  # a Docker Hub short name ("nginx", "library/nginx")
    return first.lower()


def kubelet_response(request_text: str, config: str | None) -> dict[str, object] | None:
    """The CredentialProviderResponse from the index, or None (take the full path)."""
    try:
        request = json.loads(request_text)
        api = request.get("apiVersion")
        image = request.get("image")
        if (api not in [f"{KUBELET_GROUP}/{v}" for v in KUBELET_VERSIONS]
                or request.get("kind") != "CredentialProviderRequest"
                or not isinstance(image, str) or not image.strip()):
            return None
        host = image_registry(image.strip())
        found = _index_entry(config, host)
        if found is None:
            return None
        index, (name, ecr, basic_user, interval) = found
        record = _usable_record(index["storage"], name)
        if record is None:
            return None
        user, secret = split(str(record["value"]), bool(ecr), str(basic_user) if basic_user else None)
        expires_at = record.get("expires_at")
        seconds = cache_seconds(float(record.get("refreshed_at") or 0.0),
                                None if expires_at is None else float(expires_at),
                                float(interval), time.time())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return {"apiVersion": api, "kind": "CredentialProviderResponse", "cacheKeyType": "Registry",
            "cacheDuration": go_duration(seconds), "auth": {host: {"username": user, "password": secret}}}


def kubelet_console() -> None:
    """``awstoken-kubelet-credential-provider``: the index's answer when it has one."""
    request = sys.stdin.read(1 << 20)
    if sys.argv[1:] == []:
        answer = kubelet_response(request, None)
        if answer is not None:
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.exit(0)
    import io

    from .kubelet import main

    config = sys.argv[2] if sys.argv[1:2] in (["-c"], ["--config"]) and len(sys.argv) == 3 else None
    sys.exit(main(config, stdin=io.StringIO(request)))
