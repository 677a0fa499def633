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


def test_free_port_gives_a_bindable_port_and_never_the_same_twice_in_a_row() -> None:
    chosen = [ports.free_port() for _ in range(20)]
    assert len(set(chosen)) == len(chosen)
    for port in chosen:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


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
