"""Domain-aware public anchors: which texts of a public pool a silo's own corpus is close to.

A silo embeds a large public pool (synthetic strings and public sentences: no one's documents)
with its own model and scores each text by its mean cosine with the ``k`` nearest of its own
documents; it returns only the pool positions of its ``count`` best, in order. The coordinator
interleaves two silos' lists (``interleave_preferences``) into one pair's anchor set. An
adapter fitted on texts near both corpora maps their queries better (BENCHMARKS.md).

What a preference list reveals: which public texts lie near a silo's documents — a coarse
picture of its topics, never a document, a vector or a score (SECURITY.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from silobridge.core.errors import InvalidArgument

FloatVector = npt.NDArray[np.float32]
DEFAULT_K = 10
# Documents a silo compares the pool with at most (spread over its corpus): the scores of a
# large corpus are estimated on a sample, the cost stays bounded.
MAX_DOCUMENTS = 20_000
_BLOCK_ENTRIES = 16_000_000


def preference_scores(
    pool: npt.ArrayLike, documents: npt.ArrayLike, k: int = DEFAULT_K
) -> FloatVector:
    """Each pool text's mean cosine with its ``k`` nearest ``documents`` (rows: any norm)."""
    texts = _unit(pool, "pool")
    docs = _unit(documents, "documents")
    if texts.shape[1] != docs.shape[1]:
        raise InvalidArgument(
            f"pool vectors have {texts.shape[1]} dimensions, documents {docs.shape[1]}"
        )
    k = max(1, min(k, docs.shape[0]))
    out = np.empty(texts.shape[0], dtype=np.float32)
    step = max(1, _BLOCK_ENTRIES // docs.shape[0])
    for start in range(0, texts.shape[0], step):
        sims = texts[start : start + step] @ docs.T
        out[start : start + step] = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:].mean(1)
    return out


def preferred(scores: npt.ArrayLike, count: int) -> list[int]:
    """The positions of the ``count`` best scores, best first (ties: the lower position)."""
    values = np.asarray(scores, dtype=np.float64)
    if count < 1:
        raise InvalidArgument(f"count must be at least 1, got {count}")
    order = np.argsort(-values, kind="stable")
    return [int(i) for i in order[:count]]


def interleave_preferences(lists: Sequence[Sequence[int]], count: int, pool_size: int) -> list[int]:
    """One anchor list from several silos' preference lists: their first choices in turn,
    each position once, until ``count`` (fewer if the lists run out first).

    Every position must lie in ``[0, pool_size)``; a list that repeats a position is refused
    (a silo answers with distinct positions).
    """
    if count < 1:
        raise InvalidArgument(f"count must be at least 1, got {count}")
    for number, positions in enumerate(lists):
        if len(set(positions)) != len(positions):
            raise InvalidArgument(f"preference list {number} repeats a position")
        bad = [p for p in positions if not 0 <= p < pool_size]
        if bad:
            raise InvalidArgument(
                f"preference list {number} names position {bad[0]}, outside the pool of "
                f"{pool_size} texts"
            )
    chosen: list[int] = []
    seen: set[int] = set()
    cursors = [0] * len(lists)
    while len(chosen) < count and any(c < len(p) for c, p in zip(cursors, lists, strict=True)):
        for number, positions in enumerate(lists):
            while cursors[number] < len(positions) and positions[cursors[number]] in seen:
                cursors[number] += 1
            if cursors[number] < len(positions) and len(chosen) < count:
                position = positions[cursors[number]]
                seen.add(position)
                chosen.append(position)
                cursors[number] += 1
    return chosen


def spread_sample(count: int, size: int) -> npt.NDArray[np.int64]:
    """``size`` positions spread evenly over ``count`` (all of them when ``count <= size``)."""
    if count <= size:
        return np.arange(count, dtype=np.int64)
    return np.unique(np.linspace(0, count - 1, num=size).round().astype(np.int64))


def _unit(rows: npt.ArrayLike, name: str) -> npt.NDArray[np.float32]:
    array = np.asarray(rows, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise InvalidArgument(f"{name} must be a non-empty matrix, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InvalidArgument(f"{name} holds non-finite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    unit: npt.NDArray[np.float32] = array / np.maximum(norms, 1e-12)
    return unit
