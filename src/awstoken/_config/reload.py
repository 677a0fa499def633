"""Reloading a configuration (``awstoken serve`` on SIGHUP): what may change, what changed.

Routes, tokens and request settings change in place; what needs its listeners or its
storage reopened (listen addresses, workers, engine, upstream TLS and timeouts, storage)
keeps its running value until a restart, and the reload says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .._rotation.keeper import Keeper
from .._rotation.rotator import RotateHook
from .._sources.command import Source
from .._sources.transforms import Transform
from .hooks import hooks_from_settings
from .settings import ServerSettings, Settings, TokenSettings

#: ``[server]`` keys that take effect only at a restart (declared by their fields).
RESTART_ONLY = tuple(f.name for f in dataclasses.fields(ServerSettings)
                     if f.metadata.get("restart"))



def keep_restart_only(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """``new`` with the running values of what needs a restart; one line per such change."""
    kept: list[str] = []
    server = new.server
    for key in RESTART_ONLY:
        if getattr(old.server, key) != getattr(new.server, key):
            kept.append(f"server.{key} changed: it takes effect at the next restart")
            server = dataclasses.replace(server, **{key: getattr(old.server, key)})
    if old.storage != new.storage:
        kept.append("[storage] changed: it takes effect at the next restart")
    return dataclasses.replace(new, server=server, storage=old.storage), kept


def _diff(old: Iterable[str], new: Iterable[str], changed: Iterable[str]) -> str:
    before, after = set(old), set(new)
    parts = [f"+{n}" for n in sorted(after - before)] + [f"-{n}" for n in sorted(before - after)]
    parts += [f"~{n}" for n in sorted(changed)]
    return " ".join(parts) if parts else "unchanged"


def describe_changes(old: Settings, new: Settings, old_names: Iterable[str],
                     new_names: Iterable[str]) -> list[str]:
    """One line for routes and one for tokens: ``+added -removed ~changed``."""
    old_routes = {r.prefix: r for r in old.routes}
    new_routes = {r.prefix: r for r in new.routes}
    changed_routes = [p for p in new_routes if p in old_routes and old_routes[p] != new_routes[p]]
    changed_tokens = [n for n in new.tokens if n in old.tokens and old.tokens[n] != new.tokens[n]]
    lines = [f"routes: {_diff(old_routes, new_routes, changed_routes)}",
             f"tokens: {_diff(old_names, new_names, changed_tokens)}"]
    if old.server != new.server:
        lines.append("[server] request settings changed")
    return lines


Built = tuple[TokenSettings, Source, Transform, list[RotateHook]]


@dataclass
class TokenPlan:
    """The rotators that ``settings.tokens`` describes, built (validated) but not started."""

    settings: Settings
    built: Mapping[str, Built] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: Settings) -> TokenPlan:
        """Build every source, transform and hook; raise ConfigError before anything runs."""
        from .build import build_source, build_transform

        return cls(settings, {name: (token, build_source(token), build_transform(token),
                                     hooks_from_settings(token))
                              for name, token in settings.tokens.items()})

    def start(self, keeper: Keeper) -> None:
        """Start every rotator (the first time)."""
        self.apply(keeper, None)

    def apply(self, keeper: Keeper, previous: Settings | None) -> None:
        """Make ``keeper`` rotate these tokens: start new ones, replace changed ones (a changed
        source fetches at once), stop removed ones. Unchanged rotators keep running."""
        before: Mapping[str, TokenSettings] = previous.tokens if previous is not None else {}
        for name in before:
            if name not in self.built:
                keeper.remove(name)
        for name, (token, source, transform, hooks) in self.built.items():
            old = before.get(name)
            if old == token and name in keeper.rotators:
                continue
            rotator = keeper.rotate(name, source, transform, interval=token.interval,
                                    retry=token.retry, timeout=token.timeout, on_rotate=hooks,
                                    min_refresh_gap=self.settings.server.refresh_min_gap)
            if old is not None and _changes_value(old, token):
                # The stored token is the old source's: this process refreshes at once when
                # it leads (the operator asked; min_refresh_gap is for refusals), and asks
                # the leader elsewhere in a fleet otherwise.
                rotator.refresh_soon()
                keeper.request_refresh(name)


def _changes_value(old: TokenSettings, new: TokenSettings) -> bool:
    """Whether the token itself changes (its source, options or transform): fetch at once."""
    return (old.options, old.format, old.basic_user) != (new.options, new.format, new.basic_user)
