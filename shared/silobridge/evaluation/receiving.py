"""Receiving-side steps measured by the harness: what a silo can do with what it already holds.

Hubness correction (CSLS, Conneau et al. 2018): translated vectors crowd around a few "hub"
documents that are near everything. Each document's hubness is its mean similarity to its
``k`` nearest vectors of a reference set in the silo's own space — here the adapter's translated
anchors, which every silo receiving through an adapter has (as the coordinator signs them into
the artifact: ``silobridge.adapters.hubness``) — and a candidate's score becomes
``2 cos(q, d) - r(d)`` (the query's own term is the same for all its candidates, so it does not
change the order). Only the index's top candidates are re-scored, as a silo would.

Local fit: a silo that runs the source model itself fits an affine map on a spread sample of its
own documents embedded by both models (no query, no label), as ``silo_agent/receiving/local_fit``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from silobridge.adapters.hubness import DEFAULT_K as HUBNESS_K
from silobridge.adapters.hubness import hubness, reference_from_translated
from silobridge.evaluation.search import IntMatrix, rerank_scored

__all__ = ["HUBNESS_K", "hubness", "hubness_rerank", "reference_from_translated"]

FloatMatrix = npt.NDArray[np.float32]
FloatVector = npt.NDArray[np.float32]


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


LOCAL_FIT_KIND = "affine"  # as the silo's own local fit (silo_agent/receiving/local_fit)


def local_fit_sample(count: int, size: int) -> npt.NDArray[np.int64]:
    """Corpus positions of a local fit: ``size`` documents spread evenly over ``count``."""
    return np.unique(np.linspace(0, count - 1, num=min(size, count)).round().astype(np.int64))
