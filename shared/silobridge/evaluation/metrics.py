"""Ranking metrics at a cut-off: nDCG, Recall, MRR, ARR (overlap with native top-k), retention."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

IntMatrix = npt.NDArray[np.int64]


def ndcg_at_k(ranking: Sequence[int], relevance: Mapping[int, float], k: int = 10) -> float:
    """nDCG@k with linear gains (as trec_eval): sum grade / log2(rank + 1), over the ideal DCG."""
    if not relevance:
        return 0.0
    dcg = sum(
        relevance.get(int(doc), 0.0) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:k])
    )
    ideal = sorted(relevance.values(), reverse=True)[:k]
    idcg = sum(grade / math.log2(rank + 2) for rank, grade in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranking: Sequence[int], relevance: Mapping[int, float], k: int = 10) -> float:
    """Share of the relevant documents found in the top k."""
    if not relevance:
        return 0.0
    found = sum(1 for doc in ranking[:k] if int(doc) in relevance)
    return found / len(relevance)


def mrr_at_k(ranking: Sequence[int], relevance: Mapping[int, float], k: int = 10) -> float:
    """1 / rank of the first relevant document in the top k, else 0."""
    for rank, doc in enumerate(ranking[:k], start=1):
        if int(doc) in relevance:
            return 1.0 / rank
    return 0.0


def overlap_at_k(ranking: Sequence[int], reference: Sequence[int], k: int = 10) -> float:
    """|top-k of ranking ∩ top-k of reference| / k: one query's term of ARR@k."""
    return len({int(d) for d in ranking[:k]} & {int(d) for d in reference[:k]}) / k


def mean_ndcg(rankings: IntMatrix, qrels: Sequence[Mapping[int, float]], k: int = 10) -> float:
    return _mean([ndcg_at_k(list(r), q, k) for r, q in zip(rankings, qrels, strict=True)])


def mean_recall(rankings: IntMatrix, qrels: Sequence[Mapping[int, float]], k: int = 10) -> float:
    return _mean([recall_at_k(list(r), q, k) for r, q in zip(rankings, qrels, strict=True)])


def mean_mrr(rankings: IntMatrix, qrels: Sequence[Mapping[int, float]], k: int = 10) -> float:
    return _mean([mrr_at_k(list(r), q, k) for r, q in zip(rankings, qrels, strict=True)])


def arr_at_k(rankings: IntMatrix, native: IntMatrix, k: int = 10) -> float:
    """ARR@k: mean over queries of the overlap of the top k with the native top k."""
    return _mean([overlap_at_k(list(r), list(n), k) for r, n in zip(rankings, native, strict=True)])


def retention(adapted: float | None, native: float | None) -> float | None:
    """adapted / native, or None where either is missing or native is zero (no ratio exists)."""
    if adapted is None or native is None or native == 0:
        return None
    return adapted / native


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0
