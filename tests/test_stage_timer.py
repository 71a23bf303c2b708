"""Stage timings: what the live benchmark's breakdown reads from every server process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from silobridge.core.stage_timer import ENV_VAR, StageTimings


def test_stages_add_up_only_when_enabled() -> None:
    on, off = StageTimings(enabled=True), StageTimings(enabled=False)
    for timings in (on, off):
        for _ in range(3):
            with timings.stage("search"):
                pass
        timings.add("hop", 0.5, count=2)
    assert off.snapshot() == {}
    snapshot = on.snapshot()
    assert snapshot["search"]["count"] == 3
    assert snapshot["search"]["seconds"] >= 0
    assert snapshot["hop"] == {"count": 2, "seconds": 0.5}


def test_a_process_writes_its_file_at_exit(tmp_path: Path) -> None:
    script = (
        "from silobridge.core.stage_timer import TIMINGS, start_writer\n"
        "start_writer('silo-kjv')\n"
        "with TIMINGS.stage('silo: search'):\n    pass\n"
    )
    env = {**os.environ, ENV_VAR: str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    written = json.loads((tmp_path / "silo-kjv.json").read_text())
    assert written["process"] == "silo-kjv"
    assert written["stages"]["silo: search"]["count"] == 1
