"""The ``auto`` kind: tune every candidate, keep the one that scores best on held-out anchors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from silobridge.adapters.base import (
    Adapter,
    AnchorSplit,
    FitConfig,
    Float64Matrix,
    heldout_ndcg,
)
from silobridge.adapters.registry import tune_kind
from silobridge.core.errors import InvalidArgument


def select_candidate(
    source: Float64Matrix,
    target: Float64Matrix,
    split: AnchorSplit,
    config: FitConfig,
    *,
    progress: Callable[[str], None] | None = None,
) -> tuple[Adapter, float, dict[str, float]]:
    """The winning tuned adapter, its held-out nDCG@10, and every candidate's score by name.

    Every candidate is tuned on the same fit/tune split and scored on the same held-out rows,
    which none of them has seen (all other anchors' targets join as distractors). A later
    candidate (more flexible, by the default order) replaces the best so far only when it wins
    by more than ``config.auto_margin``: complexity has to pay for itself, because held-out
    anchors share the anchors' domain and not the silo's. ``identity`` is skipped where the
    dimensions differ. ``progress``, when given, hears of each candidate and its score.
    """
    pairs = {name: (source[rows], target[rows]) for name, rows in vars(split).items()}
    distractors = np.concatenate([pairs["fit"][1], pairs["tune"][1]])
    scores: dict[str, float] = {}
    best: tuple[float, Adapter] | None = None
    for kind in dict.fromkeys(config.auto_candidates):
        if kind == "identity" and source.shape[1] != target.shape[1]:
            continue
        if progress is not None:
            progress(f"tuning {kind}")
        tuned = tune_kind(kind, pairs["fit"], pairs["tune"], config)
        score = heldout_ndcg(tuned, *pairs["held"], distractors=distractors)
        scores[f"candidate_{kind}_ndcg@10"] = score
        if progress is not None:
            progress(f"{kind} held-out nDCG@10 {score:.3f}")
        if best is None or score > best[0] + config.auto_margin:
            best = (score, tuned)
    if best is None:
        raise InvalidArgument(
            f"no auto candidate in {config.auto_candidates} applies to "
            f"{source.shape[1]} -> {target.shape[1]} dimensions"
        )
    if progress is not None:
        progress(f"auto chose {best[1].kind} (held-out nDCG@10 {best[0]:.3f})")
    return best[1], best[0], scores
