"""What one load run measured: latencies in, QPS and percentiles out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks.

    NaN for no values. Same definition as numpy's default, without numpy's import cost.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


@dataclass(frozen=True)
class Outcome:
    """The raw record of a run: latencies (seconds) of the answered queries, and the rest."""

    latencies: list[float]
    errors: int
    partial: int
    elapsed: float
    first_error: str = ""
    sent: int = 0  # queries sent while measuring, answered or not


@dataclass(frozen=True)
class RunRow:
    """One row of the report: a path, a load shape, and what it achieved."""

    path: str
    mode: str  # "closed" or "open"
    load: float  # concurrency (closed) or offered queries per second (open)
    queries: int
    qps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    partial: int
    first_error: str = ""
    sent: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(path: str, mode: str, load: float, outcome: Outcome) -> RunRow:
    latencies = outcome.latencies
    qps = len(latencies) / outcome.elapsed if outcome.elapsed > 0 else 0.0
    return RunRow(
        path=path,
        mode=mode,
        load=load,
        queries=len(latencies),
        qps=qps,
        p50_ms=percentile(latencies, 50) * 1000,
        p95_ms=percentile(latencies, 95) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        errors=outcome.errors,
        partial=outcome.partial,
        first_error=outcome.first_error,
        sent=outcome.sent,
    )
