"""Exact inner-product search in blocks, and re-ranking of candidates with another query vector."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from silobridge.core.errors import InvalidArgument
from silobridge.core.spaces import FloatMatrix

IntMatrix = npt.NDArray[np.int64]
# Queries scored per matrix product: bounds the (block, corpus) score matrix held in memory.
QUERY_BLOCK = 256


def top_k(queries: FloatMatrix, corpus: FloatMatrix, k: int) -> IntMatrix:
    """Corpus positions of the k best inner products per query, best first."""
    if queries.shape[1] != corpus.shape[1]:
        raise InvalidArgument(
            f"query dimension {queries.shape[1]} does not match corpus dimension {corpus.shape[1]}"
        )
    k = min(k, corpus.shape[0])
    out = np.zeros((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], QUERY_BLOCK):
        scores = queries[start : start + QUERY_BLOCK] @ corpus.T
        out[start : start + QUERY_BLOCK] = _best(scores, k)
    return out


def rerank(candidates: IntMatrix, queries: FloatMatrix, corpus: FloatMatrix, k: int) -> IntMatrix:
    """Re-order each query's candidate positions by inner product with ``queries`` and keep k."""
    k = min(k, candidates.shape[1])
    gathered = corpus[candidates]  # (n, depth, dim)
    scores = np.einsum("nd,ncd->nc", queries, gathered)
    picks = _best(scores, k)
    return np.take_along_axis(candidates, picks, axis=1)


def rerank_scored(candidates: IntMatrix, scores: npt.NDArray[np.float32], k: int) -> IntMatrix:
    """Re-order each row of ``candidates`` by the given ``scores`` (same shape) and keep k."""
    picks = _best(scores, min(k, candidates.shape[1]))
    return np.take_along_axis(candidates, picks, axis=1)


def _best(scores: npt.NDArray[np.float32], k: int) -> IntMatrix:
    # argpartition finds the top k without a full sort; a stable sort on (-score) then orders
    # them, breaking ties by position so runs are reproducible.
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    part = np.sort(part, axis=1)
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int64)
