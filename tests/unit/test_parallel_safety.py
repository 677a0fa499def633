"""What keeps the suite safe to run in parallel (docs/testing.md): ports per xdist worker,
a private runtime directory per test."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from awstoken import FileStorage
from tests.fixtures import ports


def _slice_of(monkeypatch: pytest.MonkeyPatch, worker: int, count: int) -> range:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
    return ports._slice()


def test_each_worker_has_its_own_ports_below_the_ephemeral_range(
        monkeypatch: pytest.MonkeyPatch) -> None:
    slices = [_slice_of(monkeypatch, worker, 8) for worker in range(8)]
    taken = [port for each in slices for port in each]
    assert len(taken) == len(set(taken)), "two workers share a port"
    assert all(len(each) >= 64 for each in slices)
    assert min(taken) >= ports.FLOOR and max(taken) < ports._ephemeral_low()


def _listen(port: int, host: str = "127.0.0.1") -> socket.socket:
    """Bind and listen as every server here does (SO_REUSEADDR)."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def test_free_port_gives_a_port_a_server_can_listen_on_never_the_same_twice_in_a_row() -> None:
    chosen = [ports.free_port() for _ in range(20)]
    assert len(set(chosen)) == len(chosen)
    for port in chosen:
        with _listen(port), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    with _listen(ports.free_port(), "0.0.0.0"):  # the wildcard address too
        pass


def test_a_port_handed_out_stays_reserved_until_a_server_takes_it() -> None:
    """Between the choice and the server's bind, another suite's check (a plain bind) is
    refused and connections are refused too; the server then listens beside the
    reservation, and no second listener can join it."""
    port = ports.free_port()
    with socket.socket() as other, pytest.raises(OSError, match="in use"):
        other.bind(("127.0.0.1", port))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with _listen(port), pytest.raises(OSError, match="in use"):
        _listen(port).close()


def test_reservations_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "RESERVED_MAX", 3)
    chosen = [ports.free_port() for _ in range(5)]
    assert len(ports._reserved) == 3
    with socket.socket() as sock:  # the oldest was let go
        sock.bind(("127.0.0.1", chosen[0]))


def test_free_port_skips_a_port_something_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        port = ports._SLICE[ports._next % len(ports._SLICE)]
        held.bind(("127.0.0.1", port))
        assert ports.free_port() != port


def test_each_test_has_a_private_runtime_directory(private_runtime_dir: Path,
                                                  tmp_path: Path) -> None:
    assert os.environ["XDG_RUNTIME_DIR"] == str(private_runtime_dir)
    assert "AWSTOKEN_DIR" not in os.environ
    assert private_runtime_dir.stat().st_mode & 0o777 == 0o700
    assert not private_runtime_dir.is_relative_to(tmp_path)  # tmp_path stays the test's own
    assert FileStorage().path == private_runtime_dir / "awstoken"  # not /tmp/awstoken-UID


@pytest.mark.xdist_group("parallel-safety-self-check")
def test_an_xdist_group_mark_takes_effect(request: pytest.FixtureRequest) -> None:
    """Under ``--dist loadgroup`` the scheduler groups by the ``@group`` suffix of the test's
    id; without it the mark groups nothing, silently (tests/fixtures/xdist_groups.py)."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not on an xdist worker with --dist loadgroup")
    assert request.node.nodeid.endswith("@parallel-safety-self-check"), request.node.nodeid
