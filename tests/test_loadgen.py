"""The load generator (``silobridge bench live``) against a small real consortium: a real
coordinator and two real silos (static-64) in-process over mutual TLS; and its percentiles."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from silobridge.cli import app
from silobridge.client.config import load_client_config
from silobridge.core.config import TlsFiles
from silobridge.loadgen.runner import closed_loop, open_loop
from silobridge.loadgen.session import LiveBench, Plan
from silobridge.loadgen.stats import RunRow, percentile
from silobridge.security.pki.ca import issue_certificate

from .conftest import (
    CONSORTIUM,
    CoordinatorThread,
    Pki,
    ServerThread,
    ingest_kjv,
    register_silo,
    write_client_config,
    write_coordinator_config,
    write_silo_config,
)


def _issue(pki: Pki, root: Path, name: str) -> TlsFiles:
    files = issue_certificate(
        pki.ca,
        root / "certs" / name,
        role="silo",
        name=name,
        org="bible",
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
    )
    return TlsFiles(cert=files.cert, key=files.key, ca=files.ca_cert)


@pytest.fixture(scope="module")
def client_toml(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("loadgen")
    silos: dict[str, ServerThread] = {}
    certificates = {name: _issue(pki, root, name) for name in ("a", "b")}
    for name, count in (("a", 60), ("b", 40)):
        config = write_silo_config(root / name, certificates[name], model="static-64", name=name)
        ingest_kjv(config, count)
        silos[name] = ServerThread(config)
    spiffe = f"spiffe://{CONSORTIUM}"
    coordinator = CoordinatorThread(
        write_coordinator_config(
            root / "coordinator",
            pki.coordinator,
            f"""
[policy]
register = ["{spiffe}/silo/*"]
list = ["{spiffe}/client/*"]
rate_per_second = 100000.0
burst = 100000
[policy.query]
"*" = ["{spiffe}/client/*"]
""",
        )
    )

    for name, silo in silos.items():
        register_silo(coordinator.target, silo.target, certificates[name])
    try:
        yield write_client_config(
            root / "client.toml",
            pki.home_client,
            coordinator=coordinator.target,
            home_silo=silos["a"].target,
            home_silo_name="a",
        )
    finally:
        coordinator.stop()
        for silo in silos.values():
            silo.stop()


@pytest.mark.integration
def test_every_path_answers_without_errors_and_signing_is_clocked(client_toml: Path) -> None:
    plan = Plan(
        concurrency=(1, 4), rates=(20.0,), duration=1.0, warmup=0.2, path_warmup=0.3, settle=0.1
    )
    seen: list[tuple[str, str, float, str]] = []

    async def hook(path: str, mode: str, load: float, when: str) -> None:
        seen.append((path, mode, load, when))

    async def main() -> tuple[list[RunRow], dict[str, Any]]:
        async with LiveBench(load_client_config(client_toml)) as bench:
            await bench.prepare(
                ["light of the world", "the lord is my shepherd"] * 5, silos=["b"], direct=True
            )
            rows = await bench.run(plan, hook)
            batches = await bench.batches(4, 2, plan, silos=["b"])
            return [*rows, batches], bench.signing_row()

    rows, signing = asyncio.run(main())
    paths = {row.path for row in rows}
    assert paths == {"direct", "federated:b", "federated:all(2)", "batch of 4:b"}
    assert len(rows) == 3 * 3 + 1
    # The batch row counts queries: four per call.
    assert rows[-1].queries % 4 == 0 and rows[-1].load == 2
    for row in rows:
        assert row.queries > 0, row
        assert row.errors == 0, row
        assert row.partial == 0, row
        assert row.qps > 0
        assert row.p50_ms <= row.p95_ms <= row.p99_ms
    assert signing["count"] > 0 and signing["mean_us"] > 0
    assert len(seen) == 2 * (len(rows) - 1) and seen[0][3] == "before"  # no hook for batches


@pytest.mark.integration
def test_the_command_prints_a_table_and_writes_json_rows(client_toml: Path, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "live",
            "--config",
            str(client_toml),
            "--texts",
            "8",
            "--concurrency",
            "2",
            "--rates",
            "10",
            "--duration",
            "1",
            "--warmup",
            "0.1",
            "--path-warmup",
            "0.2",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "live load" in result.output and "QuerySigner" in result.output
    report = json.loads(out.read_text())
    assert set(report) == {"rows", "signing"}
    assert {r["path"] for r in report["rows"]} == {"federated:all(2)"}
    assert [(r["mode"], r["load"]) for r in report["rows"]] == [("closed", 2.0), ("open", 10.0)]
    assert set(report["rows"][0]) >= {
        "path",
        "qps",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "errors",
        "partial",
        "queries",
    }


def test_an_open_loop_counts_latency_from_the_scheduled_send() -> None:
    """A server that takes 50 ms per query, one at a time, cannot keep 100/s: queueing shows."""
    lock = asyncio.Lock()

    async def slow(_: int) -> bool:
        async with lock:
            await asyncio.sleep(0.05)
        return True

    outcome = asyncio.run(open_loop(slow, 100.0, 0.5, poisson=False))
    assert outcome.errors == 0 and len(outcome.latencies) in (50, 51)
    assert outcome.sent == len(outcome.latencies)
    assert max(outcome.latencies) > 1.0  # the last waited behind ~49 others


def test_a_closed_loop_counts_errors_and_partial_answers() -> None:
    async def flaky(number: int) -> bool:
        await asyncio.sleep(0)
        if number % 3 == 0:
            raise RuntimeError("boom")
        return number % 3 == 1

    outcome = asyncio.run(closed_loop(flaky, 2, 0.2, 0.0))
    assert outcome.errors > 0 and outcome.partial > 0 and outcome.latencies
    assert outcome.first_error == "RuntimeError: boom"


finite = st.floats(min_value=0, max_value=1e4, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=200), st.floats(min_value=0, max_value=100))
def test_percentiles_match_numpy_and_stay_in_range(values: list[float], q: float) -> None:
    got = percentile(values, q)
    assert min(values) <= got <= max(values)
    assert math.isclose(got, float(np.percentile(values, q)), rel_tol=1e-9, abs_tol=1e-9)
    assert percentile(list(reversed(values)), q) == got


@given(st.lists(finite, min_size=1, max_size=200))
def test_percentiles_are_monotone_in_q(values: list[float]) -> None:
    assert percentile(values, 50) <= percentile(values, 95) <= percentile(values, 99)
    assert percentile(values, 0) == min(values) and percentile(values, 100) == max(values)
    assert math.isnan(percentile([], 50))
