"""Migrating a serving silo to another model: real servers, real mTLS, real models.

The silo holds KJV verses embedded by minilm-l3-onnx and moves to minilm-l6 while a client
keeps querying it in both spaces; every one of those queries must succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from silobridge.core.config import TlsFiles
from silobridge.core.migration import MigrationCommand, MigrationState, MigrationStatus
from silobridge.core.queries import SiloQuery
from silobridge.core.spaces import SpaceDescriptor
from silobridge.core.vectors import WireVector
from silobridge.embedding.embedders import Embedder, load_embedder
from silobridge.evaluation.corpus import load_records
from silobridge.rpc.silo_client import SiloClient

from .conftest import Pki, SiloProcess, ingest_kjv, write_silo_config
from .test_live_writes import ADMINS

pytestmark = pytest.mark.integration
DOCUMENTS = 240
NEW_MODEL = "minilm-l6"
QUERIES = 12


@pytest.fixture(scope="module")
def models() -> tuple[Embedder, Embedder]:
    return load_embedder("minilm-l3-onnx", threads=1), load_embedder(NEW_MODEL, threads=1)


@pytest.fixture(scope="module")
def queries(models: tuple[Embedder, Embedder]) -> tuple[np.ndarray, np.ndarray]:
    """WEB verses of the first KJV documents, embedded by the old and by the new model."""
    web = load_records("web", limit=DOCUMENTS)
    texts = [web[i].text for i in range(0, DOCUMENTS, DOCUMENTS // QUERIES)][:QUERIES]
    return models[0].embed(texts), models[1].embed(texts)


async def _control(
    target: str, tls: TlsFiles, command: MigrationCommand, **options: object
) -> MigrationStatus:
    async with SiloClient(target, tls) as peer:
        return await peer.control_migration(command, timeout=600, **options)  # type: ignore[arg-type]


def control(
    target: str, tls: TlsFiles, command: MigrationCommand, **options: object
) -> MigrationStatus:
    return asyncio.run(_control(target, tls, command, **options))


def search(
    target: str, tls: TlsFiles, vectors: np.ndarray, space: SpaceDescriptor
) -> list[list[tuple[str, float]]]:
    async def run() -> list[list[tuple[str, float]]]:
        async with SiloClient(target, tls) as peer:
            answers = []
            for vector in vectors:
                query = SiloQuery(WireVector.of(vector), k=5, source_space=space.space_id)
                hits = await peer.search(query, timeout=30)
                answers.append([(hit.doc_id, hit.score) for hit in hits])
            return answers

    return asyncio.run(run())


class Querier:
    """A client querying the silo in a loop, in both spaces, counting every failure."""

    def __init__(self, tls: TlsFiles, vectors: list[tuple[np.ndarray, SpaceDescriptor]]) -> None:
        self.tls, self.vectors = tls, vectors
        self.target = ""
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def running(self, target: str) -> Iterator[None]:
        self.target = target
        self._stop.clear()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._loop()), daemon=True)
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join(60)

    async def _loop(self) -> None:
        async with SiloClient(self.target, self.tls) as peer:
            i = 0
            while not self._stop.is_set():
                vector, space = self.vectors[i % len(self.vectors)]
                i += 1
                try:
                    hits = await peer.search(
                        SiloQuery(WireVector.of(vector), k=5, source_space=space.space_id),
                        timeout=30,
                    )
                    assert len(hits) == 5, hits
                    self.ok += 1
                except Exception as error:  # every failure is reported by the test
                    self.failures.append(f"{space.space_id}: {error!r}")
                await asyncio.sleep(0.02)


def wait_for(
    target: str, tls: TlsFiles, state: MigrationState, timeout: float = 300
) -> MigrationStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = control(target, tls, MigrationCommand.STATUS)
        if status.state is state:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.5)


def test_a_migration_from_start_to_finish_with_a_crash_and_a_rollback(
    pki: Pki,
    tmp_path: Path,
    processes: list[SiloProcess],
    models: tuple[Embedder, Embedder],
    queries: tuple[np.ndarray, np.ndarray],
) -> None:
    config = write_silo_config(tmp_path / "silo", pki.silo, extra=ADMINS)
    ingest_kjv(config, DOCUMENTS)
    old_space, new_space = models[0].space, models[1].space
    old_q, new_q = queries
    tls = pki.home_client
    silo = SiloProcess(config)
    processes.append(silo)
    before = search(silo.endpoint, tls, old_q, old_space)
    # Old-space queries are answered all along; new-space ones from start to rollback, and from
    # the second start on (in between, the silo rightly refuses them).
    old_client = Querier(tls, [(old_q[0], old_space), (old_q[1], old_space)])
    new_client = Querier(tls, [(new_q[0], new_space), (new_q[2], new_space)])

    # Start slowly (a small CPU share) so that the crash below lands mid re-encode.
    with old_client.running(silo.endpoint):
        started = control(
            silo.endpoint,
            tls,
            MigrationCommand.START,
            to_model=NEW_MODEL,
            sample_size=64,
            cpu_share=0.05,
        )
        assert started.state is MigrationState.REENCODING, started
        assert (started.source, started.target, started.primary) == (
            old_space,
            new_space,
            old_space,
        )
        assert started.anchors == 64 and 0 < started.adapter_agreement <= 1
        with new_client.running(silo.endpoint):
            # New-space queries are answered at once, through the provisional vectors.
            assert all(len(hits) == 5 for hits in search(silo.endpoint, tls, new_q, new_space))
            # Old-space queries still search the untouched old generation.
            assert search(silo.endpoint, tls, old_q, old_space) == before
            time.sleep(3)
            midway = control(silo.endpoint, tls, MigrationCommand.STATUS)
    assert 0 < midway.reencoded < DOCUMENTS, midway

    silo.proc.kill()  # kill -9 in the middle of the re-encode
    silo.proc.wait()
    silo = SiloProcess(config)
    processes.append(silo)
    with old_client.running(silo.endpoint):
        with new_client.running(silo.endpoint):
            _resume_and_cut_over(silo.endpoint, tls, midway, new_space)
            # New-space queries are native now: the answers a full re-index would give.
            native = search(silo.endpoint, tls, new_q, new_space)
            _assert_same_documents(native, _reindexed(models[1], new_q))
            # Old-space queries are still answered (from the old generation, unchanged).
            assert search(silo.endpoint, tls, old_q, old_space) == before

        back = control(silo.endpoint, tls, MigrationCommand.ROLLBACK)
        assert (back.state, back.primary, back.target) == (MigrationState.NONE, old_space, None)
        assert search(silo.endpoint, tls, old_q, old_space) == before  # exactly the old results

        control(silo.endpoint, tls, MigrationCommand.START, to_model=NEW_MODEL, sample_size=64)
        with new_client.running(silo.endpoint):
            wait_for(silo.endpoint, tls, MigrationState.READY)
            control(silo.endpoint, tls, MigrationCommand.CUTOVER)
            done = control(silo.endpoint, tls, MigrationCommand.FINISH)
            assert (done.state, done.primary) == (MigrationState.NONE, new_space), done
            _assert_same_documents(search(silo.endpoint, tls, new_q, new_space), native)
            # Old-space queries go through the silo's local adapter now.
            assert all(len(hits) == 5 for hits in search(silo.endpoint, tls, old_q, old_space))
    assert silo.terminate() == 0

    # silo.toml still names the old model: the silo serves the new one and says so.
    silo = SiloProcess(config)
    processes.append(silo)
    _assert_same_documents(search(silo.endpoint, tls, new_q, new_space), native)
    assert all(len(hits) == 5 for hits in search(silo.endpoint, tls, old_q, old_space))
    assert silo.terminate() == 0
    assert any("update silo.toml" in line for line in silo.output)
    for client in (old_client, new_client):
        assert client.failures == [] and client.ok > 0


def _resume_and_cut_over(
    target: str, tls: TlsFiles, midway: MigrationStatus, new_space: SpaceDescriptor
) -> None:
    resumed = control(target, tls, MigrationCommand.STATUS)
    assert resumed.state is MigrationState.REENCODING, resumed
    assert resumed.reencoded >= midway.reencoded  # nothing acknowledged was lost
    control(target, tls, MigrationCommand.RESUME, cpu_share=1.0)
    ready = wait_for(target, tls, MigrationState.READY)
    assert ready.reencoded == ready.documents == DOCUMENTS
    assert ready.retention_estimate == pytest.approx(1.0)

    cut = control(target, tls, MigrationCommand.CUTOVER)
    assert (cut.state, cut.primary) == (MigrationState.CUT_OVER, new_space), cut


def _reindexed(model: Embedder, vectors: np.ndarray) -> list[list[tuple[str, float]]]:
    """Exact top 5 over the corpus embedded from scratch by ``model`` (the full re-index)."""
    kjv = load_records("kjv", limit=DOCUMENTS)
    documents = model.embed([record.text for record in kjv])
    answers = []
    for scores in vectors @ documents.T:
        best = np.argsort(-scores, kind="stable")[:5]
        answers.append([(kjv[i].id, float(scores[i])) for i in best])
    return answers


def _assert_same_documents(
    got: list[list[tuple[str, float]]], want: list[list[tuple[str, float]]]
) -> None:
    for mine, theirs in zip(got, want, strict=True):
        # Equal scores (KJV repeats some verses word for word) may come in either order.
        assert [s for _, s in mine] == pytest.approx([s for _, s in theirs], abs=1e-4)
        assert {d for d, _ in mine} == {d for d, _ in theirs} or len({s for _, s in mine}) < 5
