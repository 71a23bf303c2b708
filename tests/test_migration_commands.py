"""Migration commands on a real silo: dual writes, refusals, the command line."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from silobridge.core.documents import Document
from silobridge.core.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from silobridge.core.migration import MigrationCommand, MigrationState, MigrationStatus
from silobridge.core.queries import SiloQuery
from silobridge.core.vectors import WireVector
from silobridge.embedding.embedders import load_embedder
from silobridge.evaluation.corpus import load_records
from silobridge.rpc.silo_client import SiloClient

from .conftest import Pki, ServerThread, ingest_kjv, run_cli, write_silo_config
from .test_live_writes import ADMINS, _batches, _client_toml

pytestmark = pytest.mark.integration
DOCUMENTS = 120
NEW_MODEL = "static-64"  # a real static embedding model: fast enough for many small tests


@pytest.fixture
def silo(pki: Pki, tmp_path: Path, serve_silo: type[ServerThread]) -> ServerThread:
    config = write_silo_config(tmp_path / "silo", pki.silo, extra=ADMINS)
    ingest_kjv(config, DOCUMENTS)
    return serve_silo(config)


def _run(
    silo: ServerThread, pki: Pki, command: MigrationCommand, **options: object
) -> MigrationStatus:
    async def run() -> MigrationStatus:
        async with SiloClient(silo.target, pki.home_client) as peer:
            return await peer.control_migration(command, timeout=300, **options)  # type: ignore[arg-type]

    return asyncio.run(run())


def _ready(silo: ServerThread, pki: Pki) -> MigrationStatus:
    deadline = time.monotonic() + 120
    while (status := _run(silo, pki, MigrationCommand.STATUS)).state is not MigrationState.READY:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    return status


def _search(silo: ServerThread, pki: Pki, vector: np.ndarray, space_id: str) -> list[str]:
    async def run() -> list[str]:
        async with SiloClient(silo.target, pki.home_client) as peer:
            query = SiloQuery(WireVector.of(vector), k=3, source_space=space_id)
            return [hit.doc_id for hit in await peer.search(query, timeout=30)]

    return asyncio.run(run())


def test_writes_during_a_migration_land_in_both_spaces_and_deletes_leave_both(
    pki: Pki, silo: ServerThread
) -> None:
    old, new = load_embedder("minilm-l3-onnx"), load_embedder(NEW_MODEL)
    _run(silo, pki, MigrationCommand.START, to_model=NEW_MODEL, sample_size=64, cpu_share=1.0)
    _ready(silo, pki)
    text = load_records("web")[20_000].text
    added = Document("live-during-migration", text, {"book": "live"})

    async def write_and_delete(delete: bool) -> None:
        async with SiloClient(silo.target, pki.home_client) as peer:
            if delete:
                await peer.delete_documents([added.doc_id], timeout=30)
            else:
                [receipt] = [r async for r in peer.write_documents(_batches([added]), timeout=60)]
                assert receipt.inserted == 1

    asyncio.run(write_and_delete(delete=False))
    # Embedded by both models at once: found natively in each space, and the journal still
    # counts every document as re-encoded (the new one was written in the new space too).
    assert _search(silo, pki, old.embed([text])[0], old.space.space_id)[0] == added.doc_id
    assert _search(silo, pki, new.embed([text])[0], new.space.space_id)[0] == added.doc_id
    status = _run(silo, pki, MigrationCommand.STATUS)
    assert (status.state, status.reencoded, status.documents) == (
        MigrationState.READY,
        DOCUMENTS + 1,
        DOCUMENTS + 1,
    )
    asyncio.run(write_and_delete(delete=True))
    assert added.doc_id not in _search(silo, pki, old.embed([text])[0], old.space.space_id)
    assert added.doc_id not in _search(silo, pki, new.embed([text])[0], new.space.space_id)


def test_commands_out_of_order_are_refused_with_what_to_do(pki: Pki, silo: ServerThread) -> None:
    with pytest.raises(FailedPrecondition, match="no migration is under way"):
        _run(silo, pki, MigrationCommand.CUTOVER)
    with pytest.raises(FailedPrecondition, match="nothing to migrate"):
        _run(silo, pki, MigrationCommand.START, to_model="minilm-l3-onnx")
    with pytest.raises(InvalidArgument, match="no-such-model"):
        _run(silo, pki, MigrationCommand.START, to_model="no-such-model")
    with pytest.raises(InvalidArgument, match="cpu_share"):
        _run(silo, pki, MigrationCommand.START, to_model=NEW_MODEL, cpu_share=2.0)
    _run(silo, pki, MigrationCommand.START, to_model=NEW_MODEL, sample_size=64, cpu_share=0.01)
    with pytest.raises(FailedPrecondition, match="under way"):
        _run(silo, pki, MigrationCommand.START, to_model=NEW_MODEL)
    with pytest.raises(FailedPrecondition, match="not re-encoded yet"):
        _run(silo, pki, MigrationCommand.CUTOVER)
    with pytest.raises(FailedPrecondition, match="needs it cut_over"):
        _run(silo, pki, MigrationCommand.FINISH)
    paused = _run(silo, pki, MigrationCommand.PAUSE)
    assert paused.state is MigrationState.PAUSED
    with pytest.raises(FailedPrecondition, match="needs it reencoding"):
        _run(silo, pki, MigrationCommand.PAUSE)
    assert _run(silo, pki, MigrationCommand.ROLLBACK).state is MigrationState.NONE
    data_dir = silo.service.config.data_dir
    assert not (data_dir / "index-next").exists() and not (data_dir / "migration").exists()

    async def stranger() -> None:
        async with SiloClient(silo.target, pki.other_client) as peer:
            await peer.control_migration(MigrationCommand.STATUS, timeout=30)

    with pytest.raises(PermissionDenied, match="admin"):
        asyncio.run(stranger())


def test_migrate_commands_from_the_command_line(
    pki: Pki, tmp_path: Path, silo: ServerThread
) -> None:
    client = str(_client_toml(tmp_path / "alice", pki.home_client, silo.target))

    def cli(*args: str) -> dict[str, object]:
        shown = run_cli("silo", "migrate", *args, "--client", client, "--json")
        assert shown.returncode == 0, shown.stderr
        body: dict[str, object] = json.loads(shown.stdout)
        return body

    assert cli("status")["state"] == "none"
    started = cli("start", "--to", NEW_MODEL, "--sample", "64", "--cpu-share", "1")
    assert started["state"] in ("reencoding", "ready")
    assert started["target"]["model_id"] == NEW_MODEL  # type: ignore[index]
    watched = run_cli("silo", "migrate", "status", "--watch", "--client", client)
    assert watched.returncode == 0, watched.stderr
    assert "state: ready" in watched.stdout and f"{DOCUMENTS} / {DOCUMENTS}" in watched.stdout
    assert cli("cutover")["state"] == "cut_over"
    assert cli("rollback")["state"] == "none"
    refused = run_cli("silo", "migrate", "finish", "--client", client)
    assert refused.returncode == 1
    assert "FAILED_PRECONDITION" in refused.stderr and "start one first" in refused.stderr
