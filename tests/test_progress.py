"""Progress bars of long commands: the total known up front, an ETA, and nothing in a pipe.

The ingest is the real command in a child process whose stderr is a pseudo-terminal, as a
person at a terminal runs it; the other checks use the shared helper on a terminal console.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import pty
import re
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console

from silobridge.audit.log import AuditLog
from silobridge.audit.verify import verify_log
from silobridge.core.cli_support import BYTES, progress_bar
from silobridge.evaluation.corpus import load_records
from silobridge.loadgen.cli import RunProgress
from silobridge.loadgen.session import AUTO_RATE_STEPS, EXTRA_STEPS, Plan
from silobridge.silo_agent.ingest import count_documents

from .conftest import SILOBRIDGE, Pki, write_silo_config

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def terminal() -> tuple[Console, io.StringIO]:
    screen = io.StringIO()
    return Console(file=screen, force_terminal=True, width=160), screen


def test_a_bar_shows_done_of_total_and_an_eta_on_a_terminal() -> None:
    console, screen = terminal()
    with progress_bar("ingest", total=10, unit="documents", console=console) as bar:
        assert bar.shown
        bar.update(7)
    shown = ANSI.sub("", screen.getvalue())
    assert "7/10 documents" in shown and "70%" in shown and "ETA" in shown


def test_bytes_show_as_sizes_and_a_stage_bar_has_no_eta() -> None:
    console, screen = terminal()
    with progress_bar("verifying", total=4 * 1024 * 1024, unit=BYTES, console=console) as bar:
        bar.update(1024 * 1024)
    assert "1.0/4.0 MiB" in ANSI.sub("", screen.getvalue())
    console, screen = terminal()
    with progress_bar("training", total=4, unit="stages", eta=False, console=console) as bar:
        bar.update(2, description="training: fit")
    shown = ANSI.sub("", screen.getvalue())
    assert "2/4 stages" in shown and "training: fit" in shown and "ETA" not in shown


def test_no_bar_in_a_pipe_or_with_json() -> None:
    piped = io.StringIO()
    with progress_bar("ingest", total=3, console=Console(file=piped)) as bar:
        assert not bar.shown
        bar.update(2)
    console, screen = terminal()
    with progress_bar("ingest", total=3, enabled=False, console=console) as bar:
        assert not bar.shown
        bar.update(2)
    assert piped.getvalue() == "" and screen.getvalue() == ""


def corpus(directory: Path) -> tuple[list[Path], int]:
    """Two corpus files with bad lines and a repeated id; how many documents they hold."""
    verses = load_records("kjv", limit=45)
    lines = [json.dumps({"id": v.id, "text": v.text}) for v in verses[:30]]
    lines.insert(5, "{not json")
    lines.insert(9, json.dumps({"id": verses[0].id, "text": "a repeated id: skipped"}))
    jsonl = directory / "part1.jsonl"
    jsonl.write_text("\n".join(lines) + "\n\n")
    table = directory / "part2.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "book"])
        for verse in verses[30:]:
            writer.writerow([verse.id, f"{verse.text}\nsecond line", "Gen"])  # quoted newlines
    return [jsonl, table], 45


def run_on_a_terminal(*args: str) -> tuple[int, str, str]:
    """The command with stderr on a pseudo-terminal: (exit code, stdout, the terminal's text)."""
    controller, child = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [*SILOBRIDGE, *args],
        stdout=subprocess.PIPE,
        stderr=child,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(child)
    chunks: list[bytes] = []

    def read() -> None:  # drained while it runs, or a full terminal buffer would block it
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO once the child has closed its end
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stdout, _ = process.communicate(timeout=240)
    reader.join(timeout=30)
    os.close(controller)
    return process.returncode, stdout.decode(), ANSI.sub("", b"".join(chunks).decode())


@pytest.mark.integration
def test_offline_ingest_knows_its_total_on_a_terminal(pki: Pki, tmp_path: Path) -> None:
    files, expected = corpus(tmp_path)
    assert count_documents(files) == expected
    config = write_silo_config(tmp_path / "silo", pki.silo, model="static-64")
    code, stdout, screen = run_on_a_terminal(
        "silo", "ingest", "--config", str(config), *map(str, files)
    )
    assert code == 0, stdout + screen
    assert f"ingested {expected} documents" in stdout
    assert f"{expected}/{expected} documents" in screen, screen
    assert "100%" in screen and "ETA" in screen
    assert "/?" not in screen  # the bar never lacked its total

    # In a pipe: the same ingest, and no bar at all.
    piped = subprocess.run(
        [*SILOBRIDGE, "silo", "ingest", "--config", str(config), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr
    assert f"{expected} unchanged" in piped.stdout
    assert "ETA" not in piped.stderr and "%" not in piped.stderr


def test_audit_verify_reports_the_bytes_read_up_to_the_whole_log(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    with AuditLog.open(tmp_path / "audit.log", key, checkpoint_every=100) as log:
        for number in range(9000):
            log.append(
                {"who": "spiffe://t/client/a", "rpc": "Search", "allowed": True, "n": number}
            )
    seen: list[int] = []
    report = verify_log(tmp_path / "audit.log", key.public_key(), progress=seen.append)
    assert report.ok, report.reason
    size = (tmp_path / "audit.log").stat().st_size
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == size


def test_bench_runs_bar_gives_back_the_steps_of_a_path_that_saturated() -> None:
    console, screen = terminal()
    plan = Plan(concurrency=[1, 8], rates=[], duration=1.0, warmup=0.0)
    per_path = 2 + len(AUTO_RATE_STEPS) + EXTRA_STEPS

    async def bench(runs: RunProgress) -> None:
        # Path a: both closed loops, then it saturates at its third open-loop rate.
        for mode, load in [("closed", 1), ("closed", 8), ("open", 5), ("open", 9), ("open", 14)]:
            await runs("a", mode, load, "before")
            await runs("a", mode, load, "after")
        await runs("b", "closed", 1, "before")
        assert runs.total == per_path + 5  # a's skipped rates are no longer counted
        await runs("b", "closed", 1, "after")

    with progress_bar("bench", unit="runs", console=console) as bar:
        runs = RunProgress(bar, plan, paths=2)
        assert runs.total == 2 * per_path
        asyncio.run(bench(runs))
        runs.finish()
    assert runs.total == runs.done == 6
    assert "6/6 runs" in ANSI.sub("", screen.getvalue())
