"""Hubness correction for translated queries: a receiving silo's re-scoring of its candidates.

Translated query vectors crowd around a few "hub" documents that are near everything, so the
same hubs top many unrelated queries. CSLS (Conneau et al., 2018) corrects for it: a document's
hubness ``r(d)`` is its mean cosine with its ``k`` nearest vectors of a *reference* set in the
silo's own space (vectors that stand in for queries, such as the adapter's translated anchors),
and candidates are ordered by ``cos(q, d) - r(d) / 2`` (half of CSLS's ``2 cos - r(q) - r(d)``;
the query's own term is the same for all its candidates).

The score a silo returns is ``cos(q, d) - (r(d) - mean_r) / 2``, with ``mean_r`` the mean
hubness over (a sample of) the silo's documents: the order is CSLS's, and the scores stay on the
scale of a cosine, centred where the uncorrected ones are, so the coordinator's calibrated merge
of several silos' lists is not skewed towards or against a silo that corrects.

The reference travels inside the signed adapter artifact as the tensor ``REFERENCE_TENSOR``
(public anchors translated by the adapter itself, as float16, bounded by ``MAX_REFERENCE_BYTES``).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence

import numpy as np
import numpy.typing as npt

from silobridge.core.errors import InvalidArgument

FloatMatrix = npt.NDArray[np.float32]
FloatVector = npt.NDArray[np.float32]

# Tensors whose names start with this travel in an artifact beside the adapter's own weights;
# they are for the receiving silo and are never passed to the adapter's constructor.
RECEIVING_PREFIX = "receiving."
REFERENCE_TENSOR = RECEIVING_PREFIX + "hubness_reference"
# An artifact travels in one gRPC message (8 MiB): the reference takes at most half of that.
MAX_REFERENCE_BYTES = 4 * 1024 * 1024
DEFAULT_K = 10
# Penalties are remembered per document; beyond this many the memory is cleared and refilled.
MAX_CACHED = 2_000_000
_BLOCK = 2048


def reference_from_translated(translated: npt.ArrayLike, seed: int = 0) -> npt.NDArray[np.float16]:
    """A hubness reference from translated anchors: unit rows, a seeded sample within the byte
    budget, stored as float16 (half the bytes; cosines change by < 1e-3)."""
    rows = np.asarray(translated, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] < 1 or rows.shape[1] < 1:
        raise InvalidArgument("a hubness reference needs a non-empty matrix of vectors")
    if not np.isfinite(rows).all():
        raise InvalidArgument("a hubness reference must hold finite values only")
    budget = max(1, MAX_REFERENCE_BYTES // (2 * rows.shape[1]))
    if rows.shape[0] > budget:
        picked = np.random.default_rng(seed).choice(rows.shape[0], size=budget, replace=False)
        rows = rows[np.sort(picked)]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if not (norms > 0).all():
        raise InvalidArgument("a hubness reference must not hold zero vectors")
    unit: npt.NDArray[np.float16] = (rows / norms).astype(np.float16)
    return unit


def hubness(documents: npt.ArrayLike, reference: npt.ArrayLike, k: int = DEFAULT_K) -> FloatVector:
    """Each document's mean similarity to its ``k`` nearest reference vectors."""
    docs = np.asarray(documents, dtype=np.float32)
    ref = np.asarray(reference, dtype=np.float32)
    if docs.ndim != 2 or ref.ndim != 2 or ref.shape[0] < 1 or docs.shape[1] != ref.shape[1]:
        raise InvalidArgument("hubness needs reference vectors of the documents' dimension")
    if k < 1:
        raise InvalidArgument(f"hubness k must be at least 1, got {k}")
    k = min(k, ref.shape[0])
    out = np.empty(docs.shape[0], dtype=np.float32)
    for start in range(0, docs.shape[0], _BLOCK):
        sims = docs[start : start + _BLOCK] @ ref.T
        top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
        out[start : start + _BLOCK] = top.mean(axis=1)
    return out


class HubnessCorrection:
    """Re-scores one route's candidates; remembers each document's penalty.

    A penalty is remembered with a digest of the vector it was computed from, so a document
    rewritten under the same id is recomputed rather than served stale. Safe to share between
    the threads that run searches (a lost race recomputes the same value).
    """

    def __init__(
        self, reference: npt.ArrayLike, mean_hubness: float, k: int = DEFAULT_K, label: str = ""
    ) -> None:
        ref = np.asarray(reference, dtype=np.float32)
        if ref.ndim != 2 or ref.shape[0] < 1:
            raise InvalidArgument("a hubness correction needs a non-empty reference matrix")
        if not np.isfinite(mean_hubness):
            raise InvalidArgument("the mean hubness must be finite")
        self.reference = np.ascontiguousarray(ref)
        self.k = k
        self.mean_hubness = float(mean_hubness)
        # What the reference is ("anchors", "traffic"): named in the silo's audit lines.
        self.label = label
        self._penalties: dict[Hashable, tuple[int, float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_documents(
        cls, reference: npt.ArrayLike, sample: npt.ArrayLike, k: int = DEFAULT_K, label: str = ""
    ) -> HubnessCorrection:
        """A correction whose scores are centred on ``sample`` (the silo's own documents)."""
        rows = np.asarray(sample, dtype=np.float32)
        mean = float(hubness(rows, reference, k).mean()) if rows.shape[0] else 0.0
        return cls(reference, mean, k, label)

    @property
    def dimension(self) -> int:
        return int(self.reference.shape[1])

    def rescore(
        self, doc_ids: Sequence[Hashable], vectors: npt.ArrayLike, scores: npt.ArrayLike
    ) -> FloatVector:
        """``scores[i] - (r(doc i) - mean_r) / 2`` for candidates with these stored vectors
        (``doc_ids``: anything that names a document for good, such as its index key)."""
        rows = np.asarray(vectors, dtype=np.float32)
        raw = np.asarray(scores, dtype=np.float32)
        if rows.shape != (len(doc_ids), self.dimension) or raw.shape != (len(doc_ids),):
            raise InvalidArgument("one vector and one score per candidate, in the reference space")
        penalties = self.penalties(doc_ids, rows)
        return (raw - 0.5 * (penalties - self.mean_hubness)).astype(np.float32)

    def penalties(self, doc_ids: Sequence[Hashable], vectors: FloatMatrix) -> FloatVector:
        out = np.empty(len(doc_ids), dtype=np.float32)
        digests = [hash(row.tobytes()) for row in vectors]
        missing: list[int] = []
        for i, (doc_id, digest) in enumerate(zip(doc_ids, digests, strict=True)):
            known = self._penalties.get(doc_id)
            if known is not None and known[0] == digest:
                out[i] = known[1]
            else:
                missing.append(i)
        if missing:
            fresh = hubness(vectors[missing], self.reference, self.k)
            out[missing] = fresh
            with self._lock:
                if len(self._penalties) + len(missing) > MAX_CACHED:
                    self._penalties.clear()
                for i, value in zip(missing, fresh.tolist(), strict=True):
                    self._penalties[doc_ids[i]] = (digests[i], value)
        return out

    def warm(self, doc_ids: Sequence[Hashable], vectors: npt.ArrayLike) -> None:
        """Compute and remember the penalties of these documents ahead of their queries."""
        rows = np.asarray(vectors, dtype=np.float32)
        for start in range(0, len(doc_ids), _BLOCK):
            self.penalties(doc_ids[start : start + _BLOCK], rows[start : start + _BLOCK])
