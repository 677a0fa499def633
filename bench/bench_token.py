"""The read path: ``awstoken.token(name)`` against a plain dict lookup, in one run.

Run: .venv/bin/python bench/bench_token.py
Each figure is the best of 7 repeats of 1,000,000 calls (timeit), in nanoseconds per call.
"""

from __future__ import annotations

import tempfile
import timeit

import awstoken

N = 1_000_000
REPEAT = 7


def best(stmt: str, env: dict[str, object]) -> float:
    return min(timeit.repeat(stmt, globals=env, number=N, repeat=REPEAT)) / N * 1e9


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        storage = awstoken.FileStorage(tmp)
        awstoken.set_storage(storage)
        awstoken.manage("ecr", ["echo", "QVdTOnBhc3N3b3Jk"], "Basic {token}")
        plain = {"ecr": "Basic QVdTOnBhc3N3b3Jk"}
        env: dict[str, object] = {"plain": plain, "token": awstoken.token, "storage": storage}
        assert awstoken.token("ecr") == plain["ecr"]
        rows = [
            ("dict lookup d[name] (baseline)", best("plain['ecr']", env)),
            ("awstoken.token(name), FileStorage", best("token('ecr')", env)),
            ("FileStorage.get(name)", best("storage.get('ecr')", env)),
        ]
        storage.close()
        memory = awstoken.MemoryStorage()
        awstoken.set_storage(memory)
        awstoken.manage("ecr", ["echo", "QVdTOnBhc3N3b3Jk"], "Basic {token}")
        rows.append(("awstoken.token(name), MemoryStorage", best("token('ecr')", env)))
        awstoken.default_keeper().stop()
    base = rows[0][1]
    print(f"{'what':40} {'ns/call':>8} {'x dict':>7}")
    for label, ns in rows:
        print(f"{label:40} {ns:8.1f} {ns / base:7.2f}")


if __name__ == "__main__":
    main()
