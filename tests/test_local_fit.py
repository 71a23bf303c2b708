"""Local fit (``silo_agent/receiving/local_fit``): a silo that runs a querying side's model fits
its own in-domain adapter from it, keeps it, and serves that space only where its policy accepts
it. Real models (static-64 for the silo, minilm-l3-onnx for the querying side), a real data
directory; the route over mTLS is in ``test_consortium_e2e``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from silobridge.core.documents import Document
from silobridge.core.errors import FailedPrecondition
from silobridge.embedding.embedders import Embedder, load_embedder
from silobridge.evaluation.corpus import load_records
from silobridge.silo_agent.receiving.local_fit import LOCAL_FIT_DIR, fit_local, local_routes
from silobridge.silo_agent.routes import Route
from silobridge.silo_agent.store.data import SiloData

SAMPLE = 400


@pytest.fixture(scope="module")
def models() -> tuple[Embedder, Embedder]:
    return load_embedder("static-64"), load_embedder("minilm-l3-onnx")


@pytest.fixture
def data(tmp_path: Path, models: tuple[Embedder, Embedder]) -> Iterator[SiloData]:
    own, _ = models
    records = load_records("kjv")[::40]
    docs = [Document(r.id, r.text) for r in records]
    opened = SiloData.open(tmp_path / "data", own.space)
    opened.upsert(docs, own.embed([d.text for d in docs]))
    opened.rebuild_index()
    yield opened
    opened.close()


def test_the_local_fit_maps_the_querying_model_into_the_silo_and_is_kept(
    data: SiloData, models: tuple[Embedder, Embedder]
) -> None:
    own, querying = models
    fitted = fit_local(data, querying, sample_size=SAMPLE, batch_size=64)
    assert not fitted.reused and fitted.anchors == SAMPLE
    assert fitted.space == querying.space
    # A WEB verse embedded by the querying model finds its KJV verse through the fit.
    web = {r.id: r.text for r in load_records("web")}
    ids = [r.id for r in load_records("kjv")[::40]][::37][:12]
    vectors = querying.embed([web[i] for i in ids])
    queries = fitted.adapter.apply(vectors)
    found = sum(
        doc_id in {hit.doc_id for hit in data.search(np.asarray(q, dtype=np.float32), 10)}
        for doc_id, q in zip(ids, queries, strict=True)
    )
    assert found >= 9, found
    # Kept in the data directory: a restart reloads it instead of embedding again.
    assert (data.data_dir / LOCAL_FIT_DIR).is_dir()
    again = fit_local(data, querying, sample_size=SAMPLE, batch_size=64)
    assert again.reused
    # The route's hubness reference (the sample as the fit maps it) is kept with it.
    assert fitted.hubness_reference is not None and again.hubness_reference is not None
    assert fitted.hubness_reference.shape == (SAMPLE, own.dimension)
    assert np.array_equal(again.hubness_reference, fitted.hubness_reference)
    assert np.allclose(again.adapter.apply(vectors[:1]), fitted.adapter.apply(vectors[:1]))
    with pytest.raises(FailedPrecondition, match="own model"):
        fit_local(data, own, sample_size=SAMPLE, batch_size=64)


def test_a_space_the_policy_does_not_accept_gets_no_route(data: SiloData) -> None:
    assert _routes(data, ("minilm-l3-onnx",), accepts=False) == []
    [route] = _routes(data, ("minilm-l3-onnx",), accepts=True)
    assert route.local and route.generation is data.primary and route.adapter is not None
    assert route.hubness_reference is not None


def test_a_failing_local_model_is_skipped(data: SiloData) -> None:
    routes = _routes(data, ("onnx:/nonexistent/model", "minilm-l3-onnx"), accepts=True)
    assert [r.space.model_id for r in routes] == [load_embedder("minilm-l3-onnx").model_id]


def _routes(data: SiloData, specs: tuple[str, ...], *, accepts: bool) -> list[Route]:
    routes: list[Route] = []
    local_routes(
        data,
        specs,
        accepts=lambda _space: accepts,
        sample_size=SAMPLE,
        batch_size=64,
        threads=1,
        stop=threading.Event(),
        add_route=routes.append,
    )
    return routes
