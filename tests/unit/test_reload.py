"""What a reload changes in place, and what waits for a restart."""

from __future__ import annotations

from dataclasses import replace

from awstoken._config.options import CommandOptions
from awstoken._config.reload import describe_changes, keep_restart_only
from awstoken._config.settings import RouteSettings, ServerSettings, Settings, StorageSettings, TokenSettings


def _settings(**server: object) -> Settings:
    return Settings(server=ServerSettings(**server),  # type: ignore[arg-type]
                    tokens={"a": TokenSettings("a", options=CommandOptions(command="echo a"))},
                    routes=(RouteSettings(prefix="/a", upstream="http://u", token="a"),))


def test_listener_and_storage_changes_wait_for_a_restart() -> None:
    old = _settings(listen=("127.0.0.1", 8080), access_log=True)
    new = replace(_settings(listen=("127.0.0.1", 9999), access_log=False),
                  storage=StorageSettings(path="/elsewhere"))
    merged, kept = keep_restart_only(old, new)
    assert merged.server.listen == ("127.0.0.1", 8080)  # kept
    assert merged.server.access_log is False  # applied
    assert merged.storage == old.storage
    assert kept == ["server.listen changed: it takes effect at the next restart",
                    "[storage] changed: it takes effect at the next restart"]


def test_changes_are_described_as_added_removed_changed() -> None:
    old = _settings()
    new = replace(old, tokens={"a": TokenSettings("a", options=CommandOptions(command="echo b")),
                               "c": TokenSettings("c", options=CommandOptions(command="echo c"))},
                  routes=(RouteSettings(prefix="/c", upstream="http://u", token="c"),))
    assert describe_changes(old, new, ["a"], ["a", "c"]) == ["routes: +/c -/a", "tokens: +c ~a"]
    assert describe_changes(old, old, ["a"], ["a"]) == ["routes: unchanged", "tokens: unchanged"]
