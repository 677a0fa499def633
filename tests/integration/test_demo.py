"""The README's run command: the offline demo of `awstoken serve` works and says so."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_attaches_the_token_through_a_real_serve_process() -> None:
    out = subprocess.run([sys.executable, "-m", "awstoken.demo"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(the registry itself, no credentials): HTTP 401" in out.stdout
    assert "(through awstoken, no credentials): HTTP 200" in out.stdout
    assert "the registry received  Authorization: Basic QVdTOmRlbW8tcGFzc3dvcmQ=" in out.stdout
    assert "exit status 0" in out.stdout
