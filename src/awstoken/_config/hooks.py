"""What a ``[tokens.NAME]`` table asks to happen after each rotation, built from settings.

The glue between the configuration and the rotation's hooks: ``_rotation`` knows files,
formats and commands, not settings; this module turns a token's settings (its sink, its
``writes``, its ``on_rotate`` command) into those hooks.
"""

from __future__ import annotations

from collections.abc import Callable

from .._doors.common import credentials, token_registries
from .._rotation.formats import FORMATS, Entry, FormatError, merge
from .._rotation.hooks import CommandHook, FileSink
from .._rotation.rotator import RotateHook
from .._token import Token
from .settings import TokenSettings


def hooks_from_settings(token: TokenSettings) -> list[RotateHook]:
    """The on-rotate hooks a ``[tokens.NAME]`` table asks for: its sink, then its command.

    For the configuration builders; the loader has already checked the keys' types and
    reports errors by file and key.
    """
    hooks: list[RotateHook] = []
    if token.sink is not None:
        render = None
        if token.sink_format is not None:
            render = renderer(token, token.sink_format)
        hooks.append(FileSink(token.sink, content=token.sink_content, mode=token.sink_mode,
                              render=render))
    if token.writes:
        hooks.extend(FileSink(write.path, mode=token.sink_mode,
                              render=renderer(token, write.format, write.url))
                     for write in token.writes)
    if token.on_rotate is not None:
        hooks.append(CommandHook(token.on_rotate, timeout=token.hook_timeout,
                                 pass_env=token.hook_env))
    return hooks


def renderer(token: TokenSettings, fmt: str, url: str | None = None) -> Callable[[str | None, Token], str]:
    """A :class:`FileSink` ``render`` that merges ``token``'s credentials into a ``fmt`` file.

    The entry is for ``url`` when given, else the token's registries (docker-config) or
    index URLs (the others).
    """
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if url is not None:
        targets: tuple[str, ...] = (url,)
    elif fmt == "docker-config":
        targets = token_registries(token)
    else:
        targets = token.indexes

    def render(old: str | None, record: Token) -> str:
        if record.value is None:
            raise FormatError("the rotated record has no value")
        user, password = credentials(record.value, token)
        return merge(fmt, old, Entry(token.name, targets, user, password))

    return render
