"""``awstoken cache -c FILE``: each route's cache directory, its size and hit ratio.

Reads the directories only (the objects and the ``stats.json`` that every serving
process adds its counters to every few seconds); never creates or changes anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._common import add_config_argument, load_settings

NAME = "cache"
HELP = "show each route's pull-through cache: objects, size, cap, hits, misses, hit ratio"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object, for machines")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def run(args: argparse.Namespace) -> int:
    from ..proxy._cache.usage import read_usage

    settings = load_settings(args)
    rows: list[dict[str, Any]] = []
    for route in settings.routes:
        if route.cache is None:
            continue
        row = read_usage(route.cache.path)
        rows.append({"route": route.prefix, "max_size": route.cache.max_size, **row})
    if args.json:
        json.dump({"config": settings.path, "caches": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not rows:
        sys.stdout.write("no route has a cache (add cache = \"DIR\" to a [[routes]] entry)\n")
        return 0
    header = ("ROUTE", "PATH", "OBJECTS", "SIZE", "MAX", "HITS", "MISSES", "HIT RATIO",
              "VERIFY FAILURES")
    lines = [header]
    for row in rows:
        ratio = "-" if row["hit_ratio"] is None else f"{row['hit_ratio'] * 100:.1f}%"
        lines.append((row["route"], row["path"], str(row["objects"]), _size(row["bytes"]),
                      _size(row["max_size"]), str(row["hits"]), str(row["misses"]), ratio,
                      str(row["verify_failures"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        sys.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                         .rstrip() + "\n")
    return 0
