"""Durations as text: for people (``awstoken status``) and for Go (the kubelet's cache time).

Standard library only and nothing imported: the credential doors use it.
"""

from __future__ import annotations


def _hms(seconds: int) -> tuple[int, int, int]:
    hours, rest = divmod(seconds, 3600)
    return (hours, *divmod(rest, 60))


def span(seconds: float | None) -> str:
    """``"1h05m"``, ``"3m07s"``, ``"-12s"``, or ``"-"`` for None: the two largest units."""
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    hours, minutes, secs = _hms(int(abs(seconds)))
    if hours:
        return f"{sign}{hours}h{minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m{secs:02d}s"
    return f"{sign}{secs}s"


def go_duration(seconds: float) -> str:
    """A Go ``time.Duration`` string (``"5h45m0s"``, ``"0s"``) for whole seconds."""
    hours, minutes, secs = _hms(max(int(seconds), 0))
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
