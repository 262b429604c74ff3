"""Sampling and reporting: every figure is a ratio against a yardstick of the same run.

A figure is measured as R repeats (at least 3). In each repeat every method is timed
in interleaved samples (one call of each, in a shuffled order, then again), so drift and
noise hit the figure and its yardstick alike, and the repeat's figure is the ratio of
their medians. The figure printed is the median of the repeats' ratios, with their min
and max as its spread.
"""

from __future__ import annotations

import random
import statistics
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

Spread = dict[str, float]


def spread(values: list[float]) -> Spread:
    """min, median and max of *values*."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def interleaved(calls: dict[str, Callable[[], object]], samples: int,
                repeats: int) -> dict[str, list[float]]:
    """Per method, the median time of one call (microseconds) in each repeat."""
    clock = time.perf_counter_ns
    names = list(calls)
    for call in calls.values():
        call()  # warm: caches, lock files, first-use checks
    medians: dict[str, list[float]] = {name: [] for name in names}
    shuffle = random.Random(1).shuffle  # an order, not a secret
    for _ in range(repeats):
        times: dict[str, list[int]] = {name: [] for name in names}
        pairs = [(calls[name], times[name].append) for name in names]
        for _ in range(samples):
            shuffle(pairs)  # no method always runs after the same one (cache effects)
            for call, record in pairs:
                start = clock()
                call()
                record(clock() - start)
        for name in names:
            medians[name].append(statistics.median(times[name]) / 1000)
    return medians


def ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Per-repeat ratios of two methods measured in the same repeats."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def figure(key: str, label: str, yardstick: str, values: list[float], *,
           target: float | None = None, at_least: bool = False, limit: str = "",
           absolute: dict[str, list[float]] | None = None, unit: str = "us") -> dict:
    """One reported figure: its ratio spread, target and verdict (median of repeats)."""
    stats = spread(values)
    if target is None:
        status = "-"
    elif at_least:
        status = "PASS" if stats["median"] >= target else "MISS"
    else:
        status = "PASS" if stats["median"] <= target else "MISS"
    return {
        "key": key, "label": label, "yardstick": yardstick, "ratio": stats,
        "repeats": len(values), "target": target,
        "target_op": ">=" if at_least else "<=", "status": status, "limit": limit,
        "absolute": {name: spread(v) for name, v in (absolute or {}).items()},
        "unit": unit,
    }


def print_table(python: str, figures: list[dict]) -> None:
    """The figures of one interpreter as a table: ratio spread, target, verdict."""
    print(f"\npython {python}")
    print(f"  {'figure':<66} {'min':>6} {'median':>7} {'max':>6}  {'target':>8}  verdict")
    for item in figures:
        stats = item["ratio"]
        target = "" if item["target"] is None else f"{item['target_op']} {item['target']:g}"
        print(f"  {item['label']:<66} {stats['min']:6.2f} {stats['median']:7.2f} "
              f"{stats['max']:6.2f}  {target:>8}  {item['status']}")
        print(f"      vs {item['yardstick']}")
        for name, values in item["absolute"].items():
            print(f"      {name}: median {values['median']:.1f} {item['unit']} "
                  f"(min {values['min']:.1f}, max {values['max']:.1f})")
