"""Receiving-side steps measured by the harness: what a silo can do with what it already holds.

Hubness correction (CSLS, Conneau et al. 2018): translated vectors crowd around a few "hub"
documents that are near everything. Each document's hubness is its mean similarity to its
``k`` nearest vectors of a reference set in the silo's own space — here the adapter's translated
anchors, which every silo receiving through an adapter has — and a candidate's score becomes
``2 cos(q, d) - r(d)`` (the query's own term is the same for all its candidates, so it does not
change the order). Only the index's top candidates are re-scored, as a silo would.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from silobridge.core.errors import InvalidArgument
from silobridge.evaluation.search import IntMatrix, rerank_scored

FloatMatrix = npt.NDArray[np.float32]
FloatVector = npt.NDArray[np.float32]
HUBNESS_K = 10
_BLOCK = 2048


def hubness(corpus: FloatMatrix, reference: FloatMatrix, k: int = HUBNESS_K) -> FloatVector:
    """Each document's mean similarity to its ``k`` nearest reference vectors."""
    if reference.shape[0] < 1 or corpus.shape[1] != reference.shape[1]:
        raise InvalidArgument("hubness needs reference vectors of the corpus's dimension")
    k = min(k, reference.shape[0])
    out = np.empty(corpus.shape[0], dtype=np.float32)
    for start in range(0, corpus.shape[0], _BLOCK):
        sims = corpus[start : start + _BLOCK] @ reference.T
        top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
        out[start : start + _BLOCK] = top.mean(axis=1)
    return out


def hubness_rerank(
    candidates: IntMatrix,
    queries: FloatMatrix,
    corpus: FloatMatrix,
    penalty: FloatVector,
    k: int,
) -> IntMatrix:
    """The top ``k`` of each query's candidates by ``2 q·d - penalty[d]``."""
    gathered = corpus[candidates]
    scores = 2.0 * np.einsum("nd,ncd->nc", queries, gathered) - penalty[candidates]
    return rerank_scored(candidates, scores.astype(np.float32), k)
