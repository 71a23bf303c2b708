"""The refinement's label-free guard on real models and the asymmetric built-in set: a map that
hurts (fitted without its pull towards the identity) is refused, without a label; the default
one is let through. Labels are used here only to show that the refused map does hurt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from silobridge.adapters import FitConfig, fit
from silobridge.adapters.refinement import (
    DEFAULT_LAMBDA,
    GUARD_TARGETS_TENSOR,
    GUARD_TRANSLATED_TENSOR,
    apply_refinement,
    check_refinement,
    fit_refinement,
    guard_tensors,
)
from silobridge.evaluation.anchors import resolve_anchor_sources
from silobridge.evaluation.cache import EmbeddingCache, embed_cached
from silobridge.evaluation.datasets import PYDOC_HEADINGS, load_builtin
from silobridge.evaluation.metrics import mean_ndcg
from silobridge.evaluation.runner import EvalSession
from silobridge.evaluation.search import top_k

SOURCE, TARGET = "minilm-l6", "minilm-l3-onnx"


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    dataset = load_builtin(PYDOC_HEADINGS, corpus_size=None, queries=300, seed=0)
    session = EvalSession(cache_dir=Path(tmp_path_factory.mktemp("cache")))
    try:
        source, target = session.embedder(SOURCE), session.embedder(TARGET)
        cache: EmbeddingCache = session.cache

        def embed(model_name: str, texts: list[str]) -> np.ndarray:
            model = source if model_name == SOURCE else target
            return embed_cached(model, texts, cache, label="test")

        anchors = list(resolve_anchor_sources(["mix"], [], dataset, 0)[0].take(2000))
        adapter = fit(embed(SOURCE, anchors), embed(TARGET, anchors), FitConfig("procrustes"))
        guard = guard_tensors(adapter.apply(embed(SOURCE, anchors)), embed(TARGET, anchors))
        return {
            "corpus": embed(TARGET, list(dataset.corpus_texts)),
            "native": embed(TARGET, list(dataset.query_texts)),
            "queries": adapter.apply(embed(SOURCE, list(dataset.query_texts))),
            "traffic": adapter.apply(embed(SOURCE, list(dataset.traffic_pool[:1400]))),
            "qrels": np.asarray(dataset.qrels, dtype=object),
            GUARD_TRANSLATED_TENSOR: guard[GUARD_TRANSLATED_TENSOR],
            GUARD_TARGETS_TENSOR: guard[GUARD_TARGETS_TENSOR],
        }
    finally:
        session.close()


def _ndcg(s: dict[str, np.ndarray], queries: np.ndarray) -> float:
    return mean_ndcg(top_k(queries, s["corpus"], 10), list(s["qrels"]))


def _verdict(s: dict[str, np.ndarray], lam: float):  # type: ignore[no-untyped-def]
    return check_refinement(
        s["traffic"], s["corpus"], s[GUARD_TRANSLATED_TENSOR], s[GUARD_TARGETS_TENSOR], lam=lam
    )


def test_a_refinement_that_hurts_the_asymmetric_set_is_refused(
    setting: dict[str, np.ndarray],
) -> None:
    weights = fit_refinement(setting["traffic"], setting["corpus"], lam=0.0)
    assert weights is not None
    before = _ndcg(setting, setting["queries"])
    after = _ndcg(setting, apply_refinement(weights, setting["queries"]))
    assert after < before - 0.1, (before, after)  # it hurts: shown with labels
    verdict = _verdict(setting, 0.0)  # decided without them
    assert not verdict.accepted, verdict.describe()
    assert "anchors' mean cosine fell" in verdict.reason


def test_the_default_refinement_keeps_the_anchors_and_is_let_through(
    setting: dict[str, np.ndarray],
) -> None:
    verdict = _verdict(setting, DEFAULT_LAMBDA)
    assert verdict.accepted, verdict.describe()
    assert abs(verdict.anchor_cosine[0] - verdict.anchor_cosine[1]) < 0.01
