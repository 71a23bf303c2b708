"""What hubness correction adds to a silo's search: timed on a real data directory and index.

Used by ``scripts/bench.py``: the corpus vectors go into a real ``SiloData`` (SQLite docstore,
FAISS HNSW index as a live silo above its exact threshold), and each translated query is searched
the way ``SiloService`` does it — plain top-10, or ``corrected_search``: the top-``depth``
candidates with their stored vectors re-scored by ``HubnessCorrection`` (penalties computed on
first sight, then remembered), and only the kept ten read from the docstore.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from silobridge.adapters.hubness import HubnessCorrection
from silobridge.core.documents import Document
from silobridge.core.spaces import SpaceDescriptor
from silobridge.silo_agent.receiving.hubness_routes import (
    CENTRING_SAMPLE,
    corrected_search,
    sample_vectors,
)
from silobridge.silo_agent.store.data import SiloData
from silobridge.silo_agent.store.index import IndexSettings

FloatMatrix = npt.NDArray[np.float32]
K = 10
DEPTH = 100


@dataclasses.dataclass(frozen=True)
class HubnessTiming:
    queries: int
    documents: int
    plain_p50_us: float
    first_pass_p50_us: float  # penalties computed for candidates not seen before
    warm_p50_us: float  # every candidate's penalty remembered
    warm_p99_us: float

    @property
    def added_p50_ms(self) -> float:
        return (self.warm_p50_us - self.plain_p50_us) / 1000


def time_hubness(
    corpus: FloatMatrix, reference: npt.NDArray[np.generic], queries: FloatMatrix
) -> HubnessTiming:
    """Per-query search time without and with the correction, on one thread."""
    space = SpaceDescriptor("bench@00000000", "bench", corpus.shape[1], "0" * 16)
    with tempfile.TemporaryDirectory(prefix="silobridge-hubness-") as tmp:
        # HNSW, as a silo with more documents than the exact threshold serves.
        data = SiloData.open(Path(tmp), space, IndexSettings(exact_threshold=1))
        try:
            docs = [Document(f"d{i}", f"document {i}") for i in range(corpus.shape[0])]
            data.upsert(docs, corpus)
            data.rebuild_index()
            generation = data.primary
            correction = HubnessCorrection.for_documents(
                np.asarray(reference, dtype=np.float32),
                sample_vectors(data, generation, CENTRING_SAMPLE),
            )

            def plain(query: npt.NDArray[np.float32]) -> None:
                data.search_in(generation, query, K)

            def corrected(query: npt.NDArray[np.float32]) -> None:
                corrected_search(data, generation, query, K, DEPTH, correction)

            plain_us = _timed(plain, queries)
            first_us = _timed(corrected, queries)
            warm_us = _timed(corrected, queries)
        finally:
            data.close()
    return HubnessTiming(
        queries=queries.shape[0],
        documents=corpus.shape[0],
        plain_p50_us=statistics.median(plain_us),
        first_pass_p50_us=statistics.median(first_us),
        warm_p50_us=statistics.median(warm_us),
        warm_p99_us=float(np.percentile(warm_us, 99)),
    )


def _timed(step: object, queries: FloatMatrix) -> list[float]:
    assert callable(step)
    out = []
    for query in queries:
        started = time.perf_counter()
        step(np.ascontiguousarray(query, dtype=np.float32))
        out.append((time.perf_counter() - started) * 1e6)
    return out
