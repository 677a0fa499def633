"""Summing Prometheus text expositions of several worker processes into one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.parser import text_string_to_metric_families


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value)}.0"
    return repr(value)


def merge_exposition(texts: Iterable[str], *, skip: Sequence[str] = ()) -> str:
    """One exposition for several workers' (``texts``, in worker order).

    - counters, histogram buckets, sums and counts: summed over workers;
    - ``*_created`` (the classic text format exposes a counter's or histogram's creation
      time as a gauge family of its own): the earliest, since the merged series exists
      from the first worker's start; summing timestamps gave nonsense (3.59e9 for two);
    - any other gauge: kept per worker, with a ``worker`` label (``"0"``, ``"1"``...):
      a sum of per-process levels is rarely what they mean.

    Families whose name starts with one of ``skip`` are left out (the parent reports
    token and storage metrics itself).
    """
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for worker, text in enumerate(texts):
        for family in text_string_to_metric_families(text):
            if family.name.startswith(tuple(skip)):
                continue
            _, _, samples = families.setdefault(family.name, (family.type, family.documentation, {}))
            for sample in family.samples:
                labels = sample.labels
                earliest = sample.name.endswith("_created")
                if family.type in ("gauge", "unknown") and not earliest:
                    labels = {**labels, "worker": str(worker)}
                key = (sample.name, tuple(sorted(labels.items())))
                old = samples.get(key)
                if old is None:
                    samples[key] = sample.value
                else:
                    samples[key] = min(old, sample.value) if earliest else old + sample.value
    lines: list[str] = []
    for name, (kind, doc, samples) in families.items():
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")
        for (sample_name, pairs), value in samples.items():
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
            lines.append(f"{sample_name}{{{rendered}}} {_number(value)}" if rendered
                         else f"{sample_name} {_number(value)}")
    return "\n".join(lines) + ("\n" if lines else "")
