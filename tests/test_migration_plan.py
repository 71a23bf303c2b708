"""`silo migrate plan`: a real silo times a second real model on its own texts; nothing changes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from silobridge.core.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from silobridge.core.migration import MigrationPlan
from silobridge.rpc.silo_client import SiloClient

from .conftest import Pki, ServerThread, ingest_kjv, run_cli, write_silo_config
from .test_live_writes import ADMINS, _client_toml

pytestmark = pytest.mark.integration
DOCUMENTS = 60


@pytest.fixture
def silo(pki: Pki, tmp_path: Path, serve_silo: type[ServerThread]) -> ServerThread:
    config = write_silo_config(tmp_path / "silo", pki.silo, extra=ADMINS)
    ingest_kjv(config, DOCUMENTS)
    return serve_silo(config)


def test_the_plan_measures_the_new_model_and_changes_nothing(pki: Pki, silo: ServerThread) -> None:
    data = silo.service.data
    manifest, space = data.manifest, silo.service.space
    probe = np.ones(space.dimension, np.float32) / np.sqrt(space.dimension)
    before = data.search(probe, 5)

    async def run() -> MigrationPlan:
        async with SiloClient(silo.target, pki.home_client) as peer:
            return await peer.plan_migration("static-64", sample_size=32)

    plan = asyncio.run(run())
    assert (plan.current, plan.documents) == (space, DOCUMENTS)
    assert (plan.target.model_id, plan.target.dimension) == ("static-64", 64)
    assert plan.sample_documents == 30  # every 2nd of 60 documents: 32 asked, spread evenly
    assert plan.documents_per_second > 0
    assert plan.estimated_seconds == pytest.approx(DOCUMENTS / plan.documents_per_second)
    # An exact index below the HNSW threshold: one vector in the docstore, one (+ id) in it.
    assert plan.disk_bytes == DOCUMENTS * (64 * 4 + 64 * 4 + 8)
    assert (data.manifest, silo.service.space, data.count()) == (manifest, space, DOCUMENTS)
    assert data.search(probe, 5) == before


def test_a_plan_the_silo_cannot_make_is_refused_with_the_reason(
    pki: Pki, silo: ServerThread
) -> None:
    async def run() -> None:
        async with SiloClient(silo.target, pki.home_client) as peer:
            with pytest.raises(FailedPrecondition, match="nothing to migrate"):
                await peer.plan_migration("minilm-l3-onnx")
            with pytest.raises(InvalidArgument, match="no-such-model"):
                await peer.plan_migration("no-such-model")
            with pytest.raises(InvalidArgument, match="sample_size"):
                await peer.plan_migration("static-64", sample_size=100_000)
        async with SiloClient(silo.target, pki.other_client) as stranger:
            with pytest.raises(PermissionDenied, match="admin"):
                await stranger.plan_migration("static-64")

    asyncio.run(run())


def test_migrate_plan_from_the_command_line(pki: Pki, tmp_path: Path, silo: ServerThread) -> None:
    client = _client_toml(tmp_path / "alice", pki.home_client, silo.target)
    shown = run_cli("silo", "migrate", "plan", "--to", "static-64", "--client", str(client))
    assert shown.returncode == 0, shown.stderr
    assert f"documents to re-encode: {DOCUMENTS}" in shown.stdout
    assert "nothing was changed" in shown.stdout
    as_json = run_cli(
        "silo", "migrate", "plan", "--to", "static-64", "--client", str(client), "--json"
    )
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["documents"] == DOCUMENTS
    assert document["target"]["model_id"] == "static-64"
    refused = run_cli("silo", "migrate", "plan", "--to", "nope", "--client", str(client))
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT" in refused.stderr and "nope" in refused.stderr
