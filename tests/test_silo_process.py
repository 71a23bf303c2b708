"""The silo as a user runs it: `silobridge silo ingest/serve/query` as real processes over mTLS."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from silobridge.evaluation.corpus import load_records

from .conftest import Pki, write_silo_config

pytestmark = pytest.mark.integration

SILOBRIDGE = [sys.executable, "-m", "silobridge.cli"]
LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SILOBRIDGE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class SiloProcess:
    """`silobridge silo serve` in a child process; the bound port is read from its output."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [*SILOBRIDGE, "silo", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # blocks until the server says where it listens, or dies
            self.output.append(line)
            match = LISTENING.search(line)
            if match:
                self.endpoint = f"{match.group(1)}:{match.group(2)}"
                return
        raise AssertionError("silo exited before listening:\n" + "".join(self.output))

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        assert self.proc.stdout is not None
        self.output.extend(self.proc.stdout)
        self.proc.stdout.close()
        return code


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "kjv.jsonl"
    with path.open("w") as handle:
        for record in load_records("kjv")[::100]:
            handle.write(json.dumps({"id": record.id, "text": record.text}) + "\n")
    return path


@pytest.fixture
def processes() -> Iterator[list[SiloProcess]]:
    started: list[SiloProcess] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()
        if process.proc.stdout is not None:
            process.proc.stdout.close()


def query(pki: Pki, endpoint: str, text: str) -> list[str]:
    tls = pki.home_client
    result = run_cli(
        "silo",
        "query",
        "--endpoint",
        endpoint,
        "--cert",
        str(tls.cert),
        "--key",
        str(tls.key),
        "--ca",
        str(tls.ca),
        "--k",
        "5",
        "--json",
        text,
    )
    assert result.returncode == 0, result.stderr
    return [hit["doc_id"] for hit in json.loads(result.stdout)]


def test_restart_serves_the_same_results_and_refuses_another_model(
    pki: Pki, tmp_path: Path, small_corpus: Path, processes: list[SiloProcess]
) -> None:
    config = write_silo_config(tmp_path / "silo", pki.silo, model="minilm-l3-onnx")
    ingest = run_cli("silo", "ingest", "--config", str(config), str(small_corpus))
    assert ingest.returncode == 0, ingest.stderr
    assert "311 new" in ingest.stdout

    first = SiloProcess(config)
    processes.append(first)
    before = query(pki, first.endpoint, "God made the sky and the land")
    assert len(before) == 5
    assert first.terminate() == 0, "".join(first.output)  # SIGTERM is a graceful, clean stop

    second = SiloProcess(config)
    processes.append(second)
    assert query(pki, second.endpoint, "God made the sky and the land") == before
    assert second.terminate() == 0

    # Same data directory, another model: refused with both fingerprints named.
    other = write_silo_config(
        tmp_path / "other", pki.silo, model="static-64", data_dir=tmp_path / "silo" / "data"
    )
    refused = run_cli("silo", "serve", "--config", str(other), timeout=120)
    assert refused.returncode == 1
    message = " ".join(refused.stderr.split())
    assert "fingerprint" in message
    assert "minilm-l3-onnx" in message and "static-64" in message
