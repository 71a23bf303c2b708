"""``fit``: validate anchor pairs, tune and score on held-out anchors, refit on all anchors."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from silobridge.adapters.auto import select_candidate
from silobridge.adapters.base import (
    Adapter,
    FitConfig,
    heldout_ndcg,
    split_anchors,
    validated_anchors,
)
from silobridge.adapters.registry import refit_kind, tune_kind
from silobridge.core.errors import InvalidArgument

_DEFAULT_CONFIG = FitConfig()


def fit(
    source: npt.ArrayLike,
    target: npt.ArrayLike,
    config: FitConfig = _DEFAULT_CONFIG,
    *,
    progress: Callable[[str], None] | None = None,
) -> Adapter:
    """Fit an adapter of ``config.kind`` mapping ``source`` rows to ``target`` rows.

    ``source[i]`` and ``target[i]`` are the same anchor text embedded by the two models; rows
    are L2-normalised here if they are not. The anchors are split (seeded) into fit, tune and
    held-out parts: choices are made on tune, ``metrics["heldout_ndcg@10"]`` is measured on
    held-out (every other anchor's target joining as a distractor), and the returned adapter
    is refitted on all anchors with those choices. ``progress``, when given, is called with a
    short line before each step and with each held-out score (fitting can take minutes).
    """
    report = progress if progress is not None else _silent
    started = time.perf_counter()
    src, tgt = validated_anchors(source, target)
    if config.kind == "identity" and src.shape[1] != tgt.shape[1]:
        raise InvalidArgument(
            f"identity needs equal dimensions, got source {src.shape[1]} and target "
            f"{tgt.shape[1]}; choose procrustes, affine, mlp, local or auto instead"
        )
    split = split_anchors(src.shape[0], config.holdout_fraction, config.seed)
    if config.kind == "auto":
        tuned, score, scores = select_candidate(src, tgt, split, config, progress=report)
    else:
        report(f"tuning {config.kind}")
        fit_pair = (src[split.fit], tgt[split.fit])
        tuned = tune_kind(config.kind, fit_pair, (src[split.tune], tgt[split.tune]), config)
        others = tgt[np.concatenate([split.fit, split.tune])]
        score = heldout_ndcg(tuned, src[split.held], tgt[split.held], distractors=others)
        report(f"{tuned.kind} held-out nDCG@10 {score:.3f}")
        scores = {}
    report(f"refitting {tuned.kind} on all {src.shape[0]} anchors")
    adapter = refit_kind(tuned, src, tgt, config)
    adapter.metrics.update(scores)
    adapter.metrics["heldout_ndcg@10"] = score
    adapter.metrics["anchors"] = float(src.shape[0])
    adapter.metrics["heldout_anchors"] = float(split.held.shape[0])
    adapter.metrics["train_s"] = time.perf_counter() - started
    return adapter


def _silent(message: str) -> None:
    """The default progress sink: fitting says nothing unless asked."""
