"""The silo as a user runs it: `silobridge silo ingest/serve/query` as real processes over mTLS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from silobridge.evaluation.corpus import load_records

from .conftest import Pki, SiloProcess, run_cli, write_silo_config

pytestmark = pytest.mark.integration


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "kjv.jsonl"
    with path.open("w") as handle:
        for record in load_records("kjv")[::100]:
            handle.write(json.dumps({"id": record.id, "text": record.text}) + "\n")
    return path


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
