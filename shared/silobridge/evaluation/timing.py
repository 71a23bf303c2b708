"""Timings a result reports: apply latency of an adapter per single query, and the machine."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from silobridge.core.errors import InvalidArgument
from silobridge.core.spaces import FloatMatrix

MIN_APPLY_CALLS = 10_000


def median_apply_us(adapter: Any, vectors: FloatMatrix, calls: int = MIN_APPLY_CALLS) -> float:
    """Median wall time of one ``adapter.apply_one`` on a single query vector, in microseconds."""
    singles = [np.ascontiguousarray(v) for v in vectors[: min(len(vectors), 512)]]
    if not singles:
        raise InvalidArgument("apply latency needs at least one query vector")
    apply_one = adapter.apply_one
    for vector in singles[:100]:  # warm caches and any lazy initialisation first
        apply_one(vector)
    timings = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    n = len(singles)
    for i in range(calls):
        vector = singles[i % n]
        started = clock()
        apply_one(vector)
        timings[i] = clock() - started
    return float(np.median(timings)) / 1000.0


def describe_machine() -> str:
    """CPU model, core count, OS and Python: enough to compare timings, no host name."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )
