"""The leak guard sees what processes print (issue 10): it can fail on a process's output."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.fixtures import processes, secrets


def _nested_guard() -> secrets.Guard:
    guard = secrets.Guard()
    secrets._current.append(guard)
    return guard


def test_captured_output_of_a_process_is_checked() -> None:
    guard = _nested_guard()
    try:
        processes.run(["sh", "-c", "echo 'refused: Bearer leaked-token-0001' >&2"])
        processes.issue("Bearer leaked-token-0001")
    finally:
        secrets._current.remove(guard)
    guard.settle()
    assert any("stderr of sh -c" in leak for leak in guard.leaks())


def test_a_log_file_and_values_known_at_teardown_are_checked(tmp_path: Path) -> None:
    guard = _nested_guard()
    run_log = tmp_path / "runs"
    try:
        proc = processes.start_logged(
            [sys.executable, "-c", f"open({str(run_log)!r}, 'w').write('made-token-0002');"
             "print('serving made-token-0002')"], tmp_path / "out.log")
        proc.wait(60)
        processes.issue_later(lambda: [run_log.read_text()])
    finally:
        secrets._current.remove(guard)
    guard.settle()
    assert any("output of" in leak for leak in guard.leaks())


def test_a_process_whose_stdout_is_a_token_by_design_is_not_flagged() -> None:
    guard = _nested_guard()
    try:
        processes.run(["echo", "Bearer printed-token-0003"], stdout_shows_tokens=True)
        processes.issue("Bearer printed-token-0003")
    finally:
        secrets._current.remove(guard)
    guard.settle()
    assert guard.leaks() == []


def test_the_proxys_error_answers_are_watched(leak_guard: secrets.Guard) -> None:
    # The guard once patched a module the proxy no longer has, and so watched no error answer.
    import pytest

    _answer = pytest.importorskip("awstoken.proxy._answer")  # where the proxy builds them
    leak_guard.issue("Bearer error-token-0004")
    _answer.error_body("/v2/x", 503, "refresh failed: Bearer error-token-0004")
    assert any("proxy 503 /v2/x" in leak for leak in leak_guard.leaks())
    leak_guard.exposed.clear()  # seen: this test leaked on purpose
