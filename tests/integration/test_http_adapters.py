"""The httpx, requests and aiohttp adapters against a real pypiserver checking Basic auth.

A real Keeper rotates the token ``pypi`` (Basic ``alice:<password>``) from a password file.
Rotating the password means rewriting pypiserver's htpasswd (which it re-reads when its
mtime changes) and the password file together: the stored token then goes stale, pypiserver
answers 403, and the adapter must ask for one refresh and retry with the new token.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import awstoken
from awstoken import FileStorage, Keeper, MemoryStorage, TokenUnavailableError

from ..fixtures.ports import free_port
from ..fixtures.pypiserver import PypiServer, run_pypiserver, write_htpasswd

httpx = pytest.importorskip("httpx")
requests = pytest.importorskip("requests")
aiohttp = pytest.importorskip("aiohttp")

import awstoken.aiohttp  # noqa: E402
import awstoken.httpx  # noqa: E402
import awstoken.requests  # noqa: E402

# A minimal sdist: pypiserver stores any file whose name parses as a package.
SDIST = ("demo-1.0.tar.gz", b"\x1f\x8b\x08\x00" + b"not really a tarball" * 10)


@dataclass
class Index:
    """pypiserver plus a keeper rotating its password as the token ``pypi``."""

    server: PypiServer
    keeper: Keeper
    password_file: Path
    fetches: list[str]

    @property
    def simple(self) -> str:
        return f"{self.server.url}/simple/"

    def rotate_password(self, password: str) -> None:
        """Change the server's password and the token source's answer together.

        A token fetched less than the rotator's minimum gap ago is taken as fresh (a refusal
        of it is final), so first let that gap (0.05 s here) pass since the last refresh.
        """
        record = self.keeper.record("pypi")
        if record is not None:
            _wait(lambda: time.time() - record.refreshed_at > 0.06)
        write_htpasswd(self.server.htpasswd, {"alice": password})
        self.password_file.write_text(password)

    def generation(self) -> int:
        record = self.keeper.record("pypi")
        return 0 if record is None else record.generation

    def uploaded(self) -> list[str]:
        return sorted(p.name for p in self.server.packages.iterdir())


def _index(server: PypiServer, tmp_path: Path, storage: awstoken.Storage) -> Iterator[Index]:
    password_file = tmp_path / "password"
    password_file.write_text("initial-password")
    fetches: list[str] = []

    def source() -> str:
        password = password_file.read_text()
        if password == "broken":
            raise awstoken.SourceError("the token service is down")
        fetches.append(password)
        return password

    keeper = Keeper(storage)
    keeper.rotate("pypi", source, awstoken.basic_auth("alice"), min_refresh_gap=0.05)
    index = Index(server, keeper, password_file, fetches)
    try:
        _wait(lambda: keeper.token("pypi") is not None)
        yield index
    finally:
        keeper.stop()
        storage.close()


@pytest.fixture
def index(pypiserver: PypiServer, tmp_path: Path) -> Iterator[Index]:
    yield from _index(pypiserver, tmp_path, FileStorage(tmp_path / "store", poll=0.1))


@pytest.fixture
def memory_index(pypiserver: PypiServer, tmp_path: Path) -> Iterator[Index]:
    yield from _index(pypiserver, tmp_path, MemoryStorage())


@pytest.fixture
def redirecting_index(tmp_path: Path) -> Iterator[tuple[Index, str]]:
    """An index whose unknown projects redirect to another origin with other credentials.

    Yields the index and the URL of an unknown project on it.
    """
    other = tmp_path / "other"
    other.mkdir()
    write_htpasswd(other / "htpasswd", {"bob": "bobs-password"})
    (other / "packages").mkdir()
    with run_pypiserver(other / "htpasswd", other / "packages") as elsewhere:
        packages = tmp_path / "packages"
        packages.mkdir()
        write_htpasswd(tmp_path / "htpasswd", {"alice": "initial-password"})
        # localhost and 127.0.0.1 are different origins: clients treat it as another host.
        fallback = f"http://localhost:{elsewhere.port}/simple/"
        with run_pypiserver(tmp_path / "htpasswd", packages, fallback_url=fallback) as server:
            for index in _index(server, tmp_path, MemoryStorage()):
                yield index, f"{server.url}/simple/not-here/"


def _wait(predicate: object, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def _upload_body() -> tuple[bytes, str]:
    """A multipart upload as bytes (httpx only replays bodies it has in memory)."""
    request = httpx.Request("POST", "http://x/", data={":action": "file_upload"},
                            files={"content": SDIST})
    return request.read(), request.headers["content-type"]


def _stream() -> Iterator[bytes]:
    body, _ = _upload_body()
    yield body


# -- httpx -------------------------------------------------------------------------------------


def test_httpx_sends_the_current_token(index: Index) -> None:
    with httpx.Client(auth=awstoken.httpx.TokenAuth("pypi", keeper=index.keeper)) as client:
        assert client.get(index.simple).status_code == 200
    # Without the adapter the same server refuses: the 200 above is the token's doing.
    assert httpx.get(index.simple).status_code == 401


def test_httpx_refreshes_once_and_retries_after_a_rejection(index: Index) -> None:
    auth = awstoken.httpx.TokenAuth("pypi", keeper=index.keeper)
    with httpx.Client(auth=auth) as client:
        index.rotate_password("second-password")
        response = client.get(index.simple)
        assert response.status_code == 200
        assert [r.status_code for r in response.history] == [403]
        assert index.fetches == ["initial-password", "second-password"]
        # The next request uses the new token at once.
        again = client.get(index.simple)
        assert again.status_code == 200
        assert again.history == []


def test_httpx_replays_an_upload_body(index: Index) -> None:
    body, content_type = _upload_body()
    with httpx.Client(auth=awstoken.httpx.TokenAuth("pypi", keeper=index.keeper)) as client:
        index.rotate_password("second-password")
        response = client.post(index.server.url + "/", content=body,
                               headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    assert index.uploaded() == ["demo-1.0.tar.gz"]


def test_httpx_does_not_replay_a_streamed_body_but_asks_for_a_refresh(index: Index) -> None:
    _, content_type = _upload_body()
    with httpx.Client(auth=awstoken.httpx.TokenAuth("pypi", keeper=index.keeper)) as client:
        index.rotate_password("second-password")
        response = client.post(index.server.url + "/", content=_stream(),
                               headers={"content-type": content_type})
        assert response.status_code == 403
        assert response.history == []
        _wait(lambda: index.generation() == 2)  # the refresh was asked for and happened
        assert client.get(index.simple).status_code == 200
    assert index.uploaded() == []


def test_httpx_multipart_files_are_streamed_so_not_replayed(index: Index) -> None:
    with httpx.Client(auth=awstoken.httpx.TokenAuth("pypi", keeper=index.keeper)) as client:
        index.rotate_password("second-password")
        response = client.post(index.server.url + "/", data={":action": "file_upload"},
                               files={"content": SDIST})
        assert response.status_code == 403
        _wait(lambda: index.generation() == 2)
        # Built and read first, the same upload is replayable.
        index.rotate_password("third-password")
        request = client.build_request("POST", index.server.url + "/",
                                       data={":action": "file_upload"}, files={"content": SDIST})
        request.read()
        assert client.send(request).status_code == 200
    assert index.uploaded() == ["demo-1.0.tar.gz"]


def test_httpx_async_refreshes_and_retries(index: Index) -> None:
    async def main() -> tuple[int, list[int]]:
        auth = awstoken.httpx.TokenAuth("pypi", keeper=index.keeper)
        async with httpx.AsyncClient(auth=auth) as client:
            assert (await client.get(index.simple)).status_code == 200
            index.rotate_password("second-password")
            response = await client.get(index.simple)
            return response.status_code, [r.status_code for r in response.history]

    assert asyncio.run(main()) == (200, [403])
    assert index.generation() == 2


def test_httpx_never_sends_a_request_without_a_token(index: Index) -> None:
    # Nothing listens on this port: had the request been sent, httpx would fail to connect.
    url = f"http://127.0.0.1:{free_port()}/simple/"
    auth = awstoken.httpx.TokenAuth("missing", keeper=index.keeper)
    with pytest.raises(TokenUnavailableError, match=r"'missing'.*never fetched"):
        httpx.get(url, auth=auth)

    async def main() -> None:
        async with httpx.AsyncClient(auth=auth) as client:
            await client.get(url)

    with pytest.raises(TokenUnavailableError, match="request was not sent"):
        asyncio.run(main())


def test_httpx_gives_up_when_the_refresh_fails(index: Index,
                                              caplog: pytest.LogCaptureFixture) -> None:
    auth = awstoken.httpx.TokenAuth("pypi", keeper=index.keeper, refresh_timeout=60)
    index.rotate_password("broken")  # the server changes, the source now fails
    with caplog.at_level(logging.WARNING, logger="awstoken"):
        response = httpx.get(index.simple, auth=auth)
    assert response.status_code == 403
    assert "the refresh failed" in caplog.text
    assert "no new token came" not in caplog.text  # it did not sit out the whole minute
    assert "initial-password" not in caplog.text


def test_httpx_waits_a_bounded_time_for_a_new_token(index: Index,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    # No rotator runs anywhere (this process's is stopped): the refresh asked for never
    # comes, and the wait ends at refresh_timeout.
    index.rotate_password("second-password")
    index.keeper.stop()
    auth = awstoken.httpx.TokenAuth("pypi", keeper=index.keeper, refresh_timeout=0.3,
                                    min_refresh_gap=0)
    with caplog.at_level(logging.WARNING, logger="awstoken"):
        response = httpx.get(index.simple, auth=auth)
    assert response.status_code == 403
    assert "no new token came within 0.3s" in caplog.text
    assert index.generation() == 1


def test_a_refusal_of_a_token_younger_than_the_refresh_gap_is_final_at_once(
        index: Index, caplog: pytest.LogCaptureFixture) -> None:
    # The rotator would not refresh again within its gap: nothing to wait for, for any of
    # the three adapters; the refusal comes back at once, unretried.
    index.keeper.rotators["pypi"].schedule = awstoken.Schedule(min_refresh_gap=3600)
    index.rotate_password("second-password")
    with caplog.at_level(logging.DEBUG, logger="awstoken"):
        assert httpx.get(index.simple, auth=awstoken.httpx.TokenAuth(
            "pypi", keeper=index.keeper, refresh_timeout=60)).status_code == 403
        assert requests.get(index.simple, auth=awstoken.requests.TokenAuth(
            "pypi", keeper=index.keeper, refresh_timeout=60), timeout=30).status_code == 403

        async def with_aiohttp() -> int:
            middleware = awstoken.aiohttp.TokenMiddleware("pypi", keeper=index.keeper,
                                                          refresh_timeout=60)
            async with aiohttp.ClientSession(middlewares=(middleware,)) as session, \
                    session.get(index.simple) as response:
                return int(response.status)
        assert asyncio.run(with_aiohttp()) == 403
    assert caplog.text.count("to a token fetched less than 3600s ago; not retrying") == 3
    assert "no new token came" not in caplog.text
    assert index.generation() == 1


def test_the_default_keeper_is_used_when_none_is_given() -> None:
    auth = awstoken.httpx.TokenAuth("pypi")
    assert auth._token.keeper is awstoken.default_keeper()


# -- requests ----------------------------------------------------------------------------------


def test_requests_refreshes_once_and_retries(memory_index: Index) -> None:
    index = memory_index
    with requests.Session() as session:
        session.auth = awstoken.requests.TokenAuth("pypi", keeper=index.keeper)
        assert session.get(index.simple, timeout=10).status_code == 200
        index.rotate_password("second-password")
        response = session.get(index.simple, timeout=10)
        assert response.status_code == 200
        assert [r.status_code for r in response.history] == [403]
        assert index.generation() == 2


def test_requests_replays_uploads_from_bytes_and_files(index: Index, tmp_path: Path) -> None:
    auth = awstoken.requests.TokenAuth("pypi", keeper=index.keeper)
    index.rotate_password("second-password")
    response = requests.post(index.server.url + "/", data={":action": "file_upload"},
                             files={"content": SDIST}, auth=auth, timeout=10)
    assert response.status_code == 200, response.text
    # A raw file body is replayed from where it started.
    index.rotate_password("third-password")
    body, content_type = _upload_body()
    fh = io.BytesIO(b"ignored prefix" + body.replace(b"demo-1.0", b"demo-2.0"))
    fh.seek(len(b"ignored prefix"))
    response = requests.post(index.server.url + "/", data=fh, auth=auth, timeout=10,
                             headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    assert [r.status_code for r in response.history] == [403]
    assert index.uploaded() == ["demo-1.0.tar.gz", "demo-2.0.tar.gz"]


def test_requests_does_not_replay_a_generator_body(index: Index) -> None:
    _, content_type = _upload_body()
    auth = awstoken.requests.TokenAuth("pypi", keeper=index.keeper)
    index.rotate_password("second-password")
    response = requests.post(index.server.url + "/", data=_stream(), auth=auth, timeout=10,
                             headers={"content-type": content_type})
    assert response.status_code == 403
    _wait(lambda: index.generation() == 2)
    assert index.uploaded() == []


def test_requests_never_sends_a_request_without_a_token(index: Index) -> None:
    auth = awstoken.requests.TokenAuth("missing", keeper=index.keeper)
    with pytest.raises(TokenUnavailableError, match="never fetched"):
        requests.get(f"http://127.0.0.1:{free_port()}/", auth=auth, timeout=10)


# -- aiohttp -----------------------------------------------------------------------------------


def test_aiohttp_middleware_refreshes_once_and_retries(index: Index) -> None:
    async def main() -> list[tuple[int, int]]:
        middleware = awstoken.aiohttp.TokenMiddleware("pypi", keeper=index.keeper)
        seen = []
        async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
            async with session.get(index.simple) as response:
                seen.append((response.status, index.generation()))
            index.rotate_password("second-password")
            async with session.get(index.simple) as response:
                await response.read()
                seen.append((response.status, index.generation()))
            body, content_type = _upload_body()
            index.rotate_password("third-password")
            async with session.post(index.server.url + "/", data=body,
                                    headers={"content-type": content_type}) as response:
                seen.append((response.status, index.generation()))
        return seen

    assert asyncio.run(main()) == [(200, 1), (200, 2), (200, 3)]
    assert index.uploaded() == ["demo-1.0.tar.gz"]


def test_aiohttp_form_upload_is_replayed(index: Index) -> None:
    async def main() -> int:
        middleware = awstoken.aiohttp.TokenMiddleware("pypi", keeper=index.keeper)
        form = aiohttp.FormData()
        form.add_field(":action", "file_upload")
        form.add_field("content", SDIST[1], filename=SDIST[0])
        async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
            index.rotate_password("second-password")
            async with session.post(index.server.url + "/", data=form) as response:
                return int(response.status)

    assert asyncio.run(main()) == 200
    assert index.uploaded() == ["demo-1.0.tar.gz"]


def test_aiohttp_replays_a_seekable_file(index: Index) -> None:
    async def main() -> int:
        middleware = awstoken.aiohttp.TokenMiddleware("pypi", keeper=index.keeper)
        body, content_type = _upload_body()
        async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
            index.rotate_password("second-password")
            async with session.post(index.server.url + "/", data=io.BytesIO(body),
                                    headers={"content-type": content_type}) as response:
                return int(response.status)

    assert asyncio.run(main()) == 200
    assert index.generation() == 2
    assert index.uploaded() == ["demo-1.0.tar.gz"]


def test_aiohttp_does_not_replay_a_streamed_body(index: Index) -> None:
    async def chunks() -> object:
        body, _ = _upload_body()
        yield body

    async def main() -> int:
        middleware = awstoken.aiohttp.TokenMiddleware("pypi", keeper=index.keeper)
        _, content_type = _upload_body()
        async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
            index.rotate_password("second-password")
            async with session.post(index.server.url + "/", data=chunks(),
                                    headers={"content-type": content_type}) as response:
                return int(response.status)

    assert asyncio.run(main()) == 403
    _wait(lambda: index.generation() == 2)
    assert index.uploaded() == []


def test_aiohttp_token_goes_only_to_the_named_origins(index: Index) -> None:
    async def main() -> tuple[int, int]:
        middleware = awstoken.aiohttp.TokenMiddleware(
            "pypi", keeper=index.keeper, origins=[f"http://localhost:{index.server.port}"])
        async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
            # Same server, other origin (127.0.0.1 is not localhost): no token, so 401.
            async with session.get(index.simple) as response:
                other = response.status
            async with session.get(f"http://localhost:{index.server.port}/simple/") as response:
                named = response.status
        return other, named

    assert asyncio.run(main()) == (401, 200)
    with pytest.raises(awstoken.AwstokenError, match="origin"):
        awstoken.aiohttp.TokenMiddleware("pypi", origins=["localhost:8080"])


def test_aiohttp_never_sends_a_request_without_a_token(index: Index) -> None:
    async def main() -> None:
        middleware = awstoken.aiohttp.TokenMiddleware("missing", keeper=index.keeper)
        async with aiohttp.ClientSession(middlewares=(middleware,)) as session, \
                session.get(f"http://127.0.0.1:{free_port()}/"):
            pass

    with pytest.raises(TokenUnavailableError, match="never fetched"):
        asyncio.run(main())


def test_an_expired_token_is_reported_with_its_last_error(tmp_path: Path) -> None:
    storage = MemoryStorage()
    keeper = Keeper(storage)
    import time

    storage.write("old", awstoken.Token(value="Basic x", expires_at=time.time() - 30,
                                        refreshed_at=time.time() - 900, generation=3,
                                        error="token 'old': the token service is down",
                                        error_at=time.time() - 5, failures=4))
    auth = awstoken.requests.TokenAuth("old", keeper=keeper)
    with pytest.raises(TokenUnavailableError,
                       match=r"expired 3\ds ago; the last refresh failed: .*service is down"):
        requests.get(f"http://127.0.0.1:{free_port()}/", auth=auth, timeout=10)
    storage.close()


# -- redirects to another origin ---------------------------------------------------------------


def test_a_rejection_by_another_origin_after_a_redirect_triggers_no_refresh(
        redirecting_index: tuple[Index, str]) -> None:
    index, url = redirecting_index
    response = httpx.get(url, auth=awstoken.httpx.TokenAuth("pypi", keeper=index.keeper),
                         follow_redirects=True)
    assert [r.status_code for r in response.history] == [303]
    assert response.status_code == 401  # httpx dropped the token: the other host got none
    response = requests.get(url, auth=awstoken.requests.TokenAuth("pypi", keeper=index.keeper),
                            timeout=10)
    assert [r.status_code for r in response.history] == [303]
    assert response.status_code == 401
    assert index.keeper.storage.refresh_requested("pypi") == 0
    assert index.generation() == 1


def test_aiohttp_origins_keep_the_token_from_a_redirect_target(
        redirecting_index: tuple[Index, str]) -> None:
    index, url = redirecting_index

    async def get(middleware: awstoken.aiohttp.TokenMiddleware) -> int:
        async with aiohttp.ClientSession(middlewares=(middleware,)) as session, \
                session.get(url) as response:
            return int(response.status)

    origin = url.split("/simple/")[0]
    limited = awstoken.aiohttp.TokenMiddleware("pypi", keeper=index.keeper, origins=[origin])
    assert asyncio.run(get(limited)) == 401  # the other host got no token
    assert index.keeper.storage.refresh_requested("pypi") == 0
    # Without origins, aiohttp's per-hop middleware hands the token to the other host, which
    # refuses it (403): the documented reason to pass origins.
    unlimited = awstoken.aiohttp.TokenMiddleware("pypi", keeper=index.keeper, refresh_timeout=0)
    assert asyncio.run(get(unlimited)) == 403
