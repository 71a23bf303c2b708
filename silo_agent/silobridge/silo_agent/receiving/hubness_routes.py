"""The hubness corrections a silo applies, one per (adapter, generation), built on first use.

Each is centred on a sample of the generation's own documents (``HubnessCorrection``) and
remembers per-document penalties, so a query pays only for candidates it is the first to see.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import numpy as np
import numpy.typing as npt

from silobridge.adapters.hubness import HubnessCorrection
from silobridge.core.hits import Hit
from silobridge.silo_agent.receiving.settings import ReceivingSettings
from silobridge.silo_agent.receiving.traffic import TrafficPool, TrafficPools
from silobridge.silo_agent.store.data import SiloData
from silobridge.silo_agent.store.generation import Generation

log = logging.getLogger(__name__)
# Documents sampled to centre the corrected scores on the uncorrected ones.
CENTRING_SAMPLE = 2_000
# What a correction's reference is, as the silo's audit lines name it ("hubness(traffic)").
ANCHORS, TRAFFIC = "anchors", "traffic"
# Corrections kept at once (each holds its reference and the penalties it computed).
MAX_CORRECTIONS = 16
# Documents read beyond k after re-scoring, in case one was deleted since the index search.
FETCH_SPARE = 5


class HubnessCorrections:
    """``corrections.get(adapter_id, source_space, reference, generation)`` -> one or None."""

    def __init__(self, settings: ReceivingSettings, data: SiloData) -> None:
        self.settings = settings
        self.data = data
        # Translated queries kept as the reference, where [receiving] traffic_pool allows.
        self.traffic = TrafficPools(
            settings.traffic_pool, settings.traffic_max_share, settings.traffic_lifetime_s
        )
        self._built: OrderedDict[tuple[str, str], HubnessCorrection | None] = OrderedDict()
        # Traffic corrections and the pool's ``added`` count they were built at.
        self._from_traffic: dict[tuple[str, str], tuple[HubnessCorrection | None, int]] = {}
        self._lock = threading.Lock()

    def get(
        self,
        adapter_id: str,
        source_space: str,
        reference: npt.NDArray[np.generic] | None,
        generation: Generation,
    ) -> HubnessCorrection | None:
        """The correction for queries through ``adapter_id`` into ``generation``, or None where
        the config turns it off for ``source_space`` or the artifact carries no reference. With
        a traffic pool of at least ``traffic_min`` queries from ``source_space``, the pool is
        the reference instead (rebuilt every ``traffic_refresh`` new queries)."""
        if not self.settings.hubness_for(source_space):
            return None
        pool_key = traffic_key(source_space, generation.space.space_id)
        pool = self.traffic.get(pool_key) if self.traffic.enabled else None
        if pool is not None and len(pool) >= self.settings.traffic_min:
            return self._traffic_correction(source_space, pool, generation)
        if reference is None:
            return None
        key = (adapter_id, generation.space.space_id)
        with self._lock:
            if key in self._built:
                self._built.move_to_end(key)
                return self._built[key]
            correction = self.build(adapter_id, reference, generation, ANCHORS)
            self._built[key] = correction
            while len(self._built) > MAX_CORRECTIONS:
                self._built.popitem(last=False)
            return correction

    def ready(
        self, adapter_id: str, source_space: str, has_reference: bool, generation: Generation
    ) -> bool:
        """Whether ``get`` would answer from what is built, without building anything now (a
        build samples the silo's documents: too long to run on the event loop)."""
        if not self.settings.hubness_for(source_space):
            return True
        pool_key = traffic_key(source_space, generation.space.space_id)
        pool = self.traffic.get(pool_key) if self.traffic.enabled else None
        with self._lock:
            if pool is not None and len(pool) >= self.settings.traffic_min:
                built = self._from_traffic.get((source_space, generation.space.space_id))
                return built is not None and pool.added - built[1] < self.settings.traffic_refresh
            return not has_reference or (adapter_id, generation.space.space_id) in self._built

    def remember(
        self,
        source_space: str,
        target_space: str,
        signer: str,
        translated: npt.NDArray[np.float32],
    ) -> None:
        """Keep a query translated from ``source_space`` into ``target_space`` in the traffic
        pool, if the silo keeps any (one pool per pair: a migrating silo answers in two)."""
        wanted = self.settings.hubness_for(source_space) or self.settings.refine
        if self.traffic.enabled and wanted:
            self.traffic.pool(traffic_key(source_space, target_space)).add(signer, translated)

    def _traffic_correction(
        self, source_space: str, pool: TrafficPool, generation: Generation
    ) -> HubnessCorrection | None:
        key = (source_space, generation.space.space_id)
        with self._lock:
            built = self._from_traffic.get(key)
            if built is None or pool.added - built[1] >= self.settings.traffic_refresh:
                label = f"traffic pool of {source_space}"
                built = (self.build(label, pool.snapshot(), generation, TRAFFIC), pool.added)
                self._from_traffic[key] = built
            return built[0]

    def build(
        self,
        adapter_id: str,
        reference: npt.NDArray[np.generic],
        generation: Generation,
        label: str,
    ) -> HubnessCorrection | None:
        dimension = generation.space.dimension
        if reference.ndim != 2 or reference.shape[1] != dimension or reference.shape[0] < 1:
            log.warning(
                "adapter %s carries a hubness reference of shape %s, not (n, %d): answering "
                "without hubness correction",
                adapter_id,
                reference.shape,
                dimension,
            )
            return None
        rows = np.asarray(reference, dtype=np.float32)
        if not np.isfinite(rows).all():
            log.warning("adapter %s carries a non-finite hubness reference: not used", adapter_id)
            return None
        sample = sample_vectors(self.data, generation, CENTRING_SAMPLE)
        correction = HubnessCorrection.for_documents(rows, sample, self.settings.hubness_k, label)
        # Every document's penalty, in the background: a query then pays only for documents
        # written since (the first sight of 100 candidates costs milliseconds).
        threading.Thread(
            target=_warm, args=(self.data, generation, correction), name="hubness-warm", daemon=True
        ).start()
        log.info(
            "hubness correction for adapter %s: %d reference vectors, k=%d, mean %.4f over %d "
            "documents",
            adapter_id,
            rows.shape[0],
            correction.k,
            correction.mean_hubness,
            sample.shape[0],
        )
        return correction


def traffic_key(source_space: str, target_space: str) -> str:
    """The traffic pool of queries translated from ``source_space`` into ``target_space``."""
    return f"{source_space}->{target_space}"


def sample_vectors(data: SiloData, generation: Generation, count: int) -> npt.NDArray[np.float32]:
    """Up to ``count`` of ``generation``'s stored vectors, spread evenly over its keys."""
    table = generation.slot.table
    with data.docstore.reading() as conn:
        total, low, high = conn.execute(
            f"SELECT COUNT(*), MIN(key), MAX(key) FROM {table}"  # noqa: S608
        ).fetchone()
        if not total:
            return np.zeros((0, generation.space.dimension), dtype=np.float32)
        step = max(1, -(-(int(high) - int(low) + 1) // count))  # rounded up: reaches the end
        blobs = [
            row[0]
            for row in conn.execute(
                f"SELECT vector FROM {table} WHERE (key - ?) % ? = 0 ORDER BY key LIMIT ?",  # noqa: S608
                (int(low), step, count),
            )
        ]
    flat = np.frombuffer(b"".join(blobs), dtype="<f4")
    return flat.reshape(len(blobs), generation.space.dimension).astype(np.float32)


def _warm(data: SiloData, generation: Generation, correction: HubnessCorrection) -> None:
    try:
        keys, vectors = data.docstore.all_vectors(generation.slot.table)
        correction.warm([int(key) for key in keys], vectors)
    except Exception:  # a background step: queries compute what it did not
        log.exception("warming the hubness penalties failed")


def corrected_search(
    data: SiloData,
    generation: Generation,
    vector: npt.NDArray[np.float32],
    k: int,
    depth: int,
    correction: HubnessCorrection,
) -> list[Hit]:
    """The top ``k`` of ``generation``'s top ``depth`` by the corrected score. Only the ``k``
    kept are read from the docstore: the candidates' keys and stored vectors come from the index."""
    query = data.checked_query(generation, vector)
    found = generation.search(query, depth)
    if not found:
        return []
    keys = [key for key, _ in found]
    scores = np.asarray([score for _, score in found], dtype=np.float32)
    vectors = generation.vectors_of(keys)
    if vectors is not None:  # an index that cannot give vectors back: uncorrected
        scores = correction.rescore(keys, vectors, scores)
    order = np.argsort(-scores, kind="stable")
    # A few more than k: a document deleted since the search is left out, not a hole.
    picked = [(keys[i], float(scores[i])) for i in order[: k + FETCH_SPARE]]
    docs = data.docstore.fetch(key for key, _ in picked)
    hits = [
        Hit(doc_id=docs[key].doc_id, score=score, fields=docs[key].metadata)
        for key, score in picked
        if key in docs
    ]
    return hits[:k]
