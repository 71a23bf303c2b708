"""Wall time per stage of a request, per process: what the live benchmark's breakdown reads.

Off unless ``SILOBRIDGE_STAGE_TIMINGS`` names a directory. Then every process that calls
``start_writer`` writes ``<dir>/<process>.json`` once a second and at exit:
``{"process": str, "pid": int, "cpu_seconds": float, "stages": {name: {"count": int,
"seconds": float}}}``, totals
since start (a reader takes differences between two snapshots). A stage costs two
``perf_counter`` calls and a lock when on, one attribute test when off.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import threading
import time
from pathlib import Path
from types import TracebackType

ENV_VAR = "SILOBRIDGE_STAGE_TIMINGS"
WRITE_EVERY_S = 1.0
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class StageTimings:
    """Counts and total seconds per stage name; thread-safe."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._totals: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float, count: int = 1) -> None:
        if not self.enabled:
            return
        with self._lock:
            entry = self._totals.get(name)
            if entry is None:
                self._totals[name] = [float(count), seconds]
            else:
                entry[0] += count
                entry[1] += seconds

    def stage(self, name: str) -> _Stage:
        """``with TIMINGS.stage("silo.search"): ...`` adds the block's wall time."""
        return _Stage(self, name)

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {
                name: {"count": int(count), "seconds": seconds}
                for name, (count, seconds) in sorted(self._totals.items())
            }


class _Stage:
    __slots__ = ("_name", "_started", "_timings")

    def __init__(self, timings: StageTimings, name: str) -> None:
        self._timings = timings
        self._name = name
        self._started = 0.0

    def __enter__(self) -> None:
        if self._timings.enabled:
            self._started = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timings.enabled:
            self._timings.add(self._name, time.perf_counter() - self._started)


TIMINGS = StageTimings(enabled=bool(os.environ.get(ENV_VAR)))


def start_writer(process: str) -> Path | None:
    """Write this process's timings under ``$SILOBRIDGE_STAGE_TIMINGS`` (if set) every second
    and at exit; returns the file's path, or ``None`` when timings are off."""
    directory = os.environ.get(ENV_VAR)
    if not directory:
        return None
    path = Path(directory) / f"{_SAFE.sub('_', process)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        payload = {
            "process": process,
            "pid": os.getpid(),
            # CPU time of the whole process: per query, what a busy machine cannot blur.
            "cpu_seconds": time.process_time(),
            "stages": TIMINGS.snapshot(),
        }
        partial = path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(payload))
        partial.replace(path)

    def loop() -> None:
        while True:
            time.sleep(WRITE_EVERY_S)
            write()

    threading.Thread(target=loop, name="stage-timings", daemon=True).start()
    atexit.register(write)
    write()
    return path
