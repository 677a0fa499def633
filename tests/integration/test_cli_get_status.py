"""`awstoken get` and `awstoken status` as real processes against a FileStorage."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import awstoken
from tests.fixtures.cli import run_cli


def config(tmp_path: Path) -> Path:
    path = tmp_path / "awstoken.toml"
    path.write_text(f"[storage]\ntype = 'file'\npath = '{tmp_path / 'store'}'\n"
                    "[tokens.ecr]\ncommand = 'echo x'\nformat = 'Basic {token}'\n"
                    "[tokens.pypi]\ncommand = 'echo y'\n")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, timeout=60)


def timed(*args: str) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Run the CLI; with the clock before and after, to bound the ages it prints."""
    before = time.time()
    done = run(*args)
    return done, before, time.time()


def within(shown: int, since: float, before: float, after: float) -> bool:
    """Whether ``shown`` seconds is an age of ``since`` the CLI could print between ``before``
    and ``after`` (whole seconds, however rounded): a loaded host may take seconds to start it."""
    return int(before - since) - 1 <= shown <= int(after - since) + 1


def test_get_prints_the_stored_value_or_says_why_not(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    missing = run("get", "-c", str(cfg), "ecr")
    assert missing.returncode == 1
    assert "token 'ecr': no token stored yet" in missing.stderr
    storage = awstoken.FileStorage(tmp_path / "store")
    now = time.time()
    storage.write("ecr", awstoken.Token("Basic c2VjcmV0", expires_at=now + 600, refreshed_at=now,
                                        generation=1, leader="h:1"))
    ok = run("get", "-c", str(cfg), "ecr")
    assert ok.returncode == 0 and ok.stdout == "Basic c2VjcmV0\n"
    storage.write("ecr", awstoken.Token("Basic c2VjcmV0", expires_at=now - 30, refreshed_at=now - 900,
                                        generation=1, error="token 'ecr': command 'x' exited "
                                        "with status 255", failures=3))
    expired, before, after = timed("get", "-c", str(cfg), "ecr")
    assert expired.returncode == 1
    ago = re.search(r"expired (\d+)s ago", expired.stderr)
    assert ago and within(int(ago[1]), now - 30, before, after), expired.stderr
    assert "status 255" in expired.stderr
    assert "c2VjcmV0" not in expired.stderr
    unknown = run("get", "-c", str(cfg), "nope")
    assert unknown.returncode == 1 and "no [tokens.nope] table (tokens: ecr, pypi)" in unknown.stderr
    storage.close()


def test_status_shows_state_without_values(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    storage = awstoken.FileStorage(tmp_path / "store")
    now = time.time()
    storage.write("ecr", awstoken.Token("Basic c2VjcmV0", expires_at=now + 3600, refreshed_at=now - 60,
                                        generation=4, leader="host-a:42"))
    table, before, after = timed("status", "-c", str(cfg))
    assert table.returncode == 1  # pypi is missing
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["TOKEN", "STATE", "GEN"]
    ecr = next(line for line in lines if line.startswith("ecr"))
    assert ecr.split()[:3] == ["ecr", "ok", "4"] and "host-a:42" in ecr
    age = re.search(r"\b(\d+)m(\d\d)s\b", ecr)  # refreshed 1m00s ago, give or take the CLI's start
    assert age and within(int(age[1]) * 60 + int(age[2]), now - 60, before, after), ecr
    assert next(line for line in lines if line.startswith("pypi")).split()[1] == "missing"
    as_json, before, after = timed("status", "-c", str(cfg), "--json")
    data = json.loads(as_json.stdout)
    by_name = {row["name"]: row for row in data["tokens"]}
    assert by_name["ecr"]["generation"] == 4 and by_name["ecr"]["usable"] is True
    left = by_name["ecr"]["expires_in_seconds"]
    assert within(3600 - left, now, before, after), left
    assert by_name["pypi"]["usable"] is False
    assert "c2VjcmV0" not in table.stdout + as_json.stdout
    storage.write("pypi", awstoken.Token("y", refreshed_at=now, generation=1))
    assert run("status", "-c", str(cfg)).returncode == 0
    storage.close()


def test_status_escapes_control_characters_read_from_storage(tmp_path: Path) -> None:
    # Whoever can write the storage writes the error and leader texts: an escape sequence
    # (clear screen, cursor up) or a newline must not reach the terminal raw.
    cfg = config(tmp_path)
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    now = time.time()
    planted = {"value": "Basic c2VjcmV0", "expires_at": now + 600, "refreshed_at": now,
               "generation": 2, "leader": "evil\x1b[2J\x1b[H:1",
               "error": "boom\nTOKEN  STATE  GEN\necr    ok     9\x1b[1A\x9b2K\u202e", "failures": 1,
               "error_at": now}
    (store / "ecr.json").write_text(json.dumps(planted))
    for extra in ([], ["--json"]):
        out = run("status", "-c", str(cfg), *extra)
        assert "\x1b" not in out.stdout and "\x9b" not in out.stdout
        assert "\u202e" not in out.stdout
        if not extra:
            assert len(out.stdout.splitlines()) == 3, out.stdout  # header, ecr, pypi
            assert "evil\\x1b[2J" in out.stdout and "boom\\x0aTOKEN" in out.stdout
        else:
            rows = json.loads(out.stdout)["tokens"]
            assert rows[0]["error"] == planted["error"] and rows[0]["leader"] == planted["leader"]
